//! The md sysfs reader: `/sys/block/<mdN>/md/*`, as described in the kernel's
//! `Documentation/admin-guide/md.rst`.
//!
//! Every attribute is optional. Inactive arrays lack the redundancy attributes (`degraded`,
//! `sync_action`, ...), raid0 and linear never have them, and a fixture may carry only some
//! files, so a file that is missing or unreadable just leaves its field `None`.

use std::path::Path;

/// What sysfs says about one array.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SysfsArray {
    pub level: Option<String>,
    pub raid_disks: Option<u32>,
    pub layout: Option<u32>,
    pub array_state: Option<String>,
    pub degraded: Option<u32>,
    pub sync_action: Option<String>,
    pub sync_completed: Option<SyncCompleted>,
    pub sync_speed_kib_s: Option<u64>,
    pub members: Vec<SysfsMember>,
}

/// The `sync_completed` attribute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SyncCompleted {
    /// `none`: no sync thread is running.
    None,
    /// `delayed`: a sync thread exists but waits for another array's sync on the same disks.
    Delayed,
    /// `done / total`, in 512-byte sectors.
    Sectors { done: u64, total: u64 },
}

/// One `dev-<name>` directory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SysfsMember {
    pub device: String,
    pub state: Vec<String>,
    pub slot: Option<u32>,
    pub errors: Option<u64>,
}

/// Reads `<sysfs_block>/<name>/md`; `None` when that directory does not exist.
pub(crate) fn read(sysfs_block: &Path, name: &str) -> Option<SysfsArray> {
    let md = sysfs_block.join(name).join("md");
    if !md.is_dir() {
        return None;
    }
    let mut array = SysfsArray {
        level: attr(&md, "level").filter(|l| !l.is_empty()),
        // While a reshape changes the disk count this reads `new (old)`; the new count is
        // the one the array is heading for and the one `degraded` is counted against.
        raid_disks: attr(&md, "raid_disks").and_then(|v| first_number(&v)),
        layout: attr(&md, "layout").and_then(|v| first_number(&v)),
        array_state: attr(&md, "array_state").filter(|s| !s.is_empty()),
        degraded: attr(&md, "degraded").and_then(|v| v.parse().ok()),
        sync_action: attr(&md, "sync_action").filter(|s| !s.is_empty()),
        sync_completed: attr(&md, "sync_completed").and_then(|v| sync_completed(&v)),
        sync_speed_kib_s: attr(&md, "sync_speed").and_then(|v| v.parse().ok()),
        members: Vec::new(),
    };
    if let Ok(entries) = std::fs::read_dir(&md) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(device) = file_name.to_str().and_then(|n| n.strip_prefix("dev-")) else {
                // `rdN` entries are symlinks to the same `dev-*` directories; reading both
                // would list every active member twice.
                continue;
            };
            let dir = entry.path();
            array.members.push(SysfsMember {
                device: device.to_string(),
                state: attr(&dir, "state")
                    .map(|s| {
                        s.split(',')
                            .map(str::trim)
                            .filter(|w| !w.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                slot: attr(&dir, "slot").and_then(|v| v.parse().ok()),
                errors: attr(&dir, "errors").and_then(|v| v.parse().ok()),
            });
        }
    }
    // Slot order first, then spares and failed members by name, so the result does not depend
    // on the order the directory happens to list.
    array.members.sort_by(|a, b| {
        (a.slot.is_none(), a.slot, &a.device).cmp(&(b.slot.is_none(), b.slot, &b.device))
    });
    Some(array)
}

/// Reads one attribute, trimmed. Missing and unreadable files are both `None`: sysfs answers
/// some reads with an error depending on the array's state, and that must not fail a sample.
fn attr(dir: &Path, name: &str) -> Option<String> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "md sysfs attribute unreadable");
            None
        }
    }
}

fn first_number(text: &str) -> Option<u32> {
    text.split_whitespace().next()?.parse().ok()
}

fn sync_completed(text: &str) -> Option<SyncCompleted> {
    match text {
        "none" => Some(SyncCompleted::None),
        "delayed" => Some(SyncCompleted::Delayed),
        _ => {
            let (done, total) = text.split_once('/')?;
            Some(SyncCompleted::Sectors {
                done: done.trim().parse().ok()?,
                total: total.trim().parse().ok()?,
            })
        }
    }
}
