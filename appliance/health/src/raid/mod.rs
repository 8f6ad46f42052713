//! md software RAID: every array the kernel knows, and a health verdict derived from its view.
//!
//! Three sources describe an array, and each is modelled as what it is:
//!
//! - `/proc/mdstat` (module `mdstat`) lists the arrays, and gives a one-line status, member
//!   markers and a progress line. It names the arrays, so an array absent from it is not
//!   reported even if a stale `/sys/block/mdN` directory remains.
//! - sysfs (module `sysfs`) gives the kernel's exact state: `array_state`, `degraded`,
//!   `sync_action`, `sync_completed` and each member's state words and slot.
//! - mdadm files written by a root helper (module `mdadm`) are snapshots that may be old;
//!   they fill gaps only.
//!
//! Each field takes the most authoritative source that has it: sysfs, then mdstat, then mdadm.
//! mdstat alone is enough to derive a health verdict, so a copy of mdstat (or a kernel without
//! sysfs mounted) still works.

mod mdadm;
mod mdstat;
mod sysfs;

use std::path::PathBuf;

use crate::HealthError;
use mdadm::Mdadm;
use mdstat::{MdstatArray, MdstatSync};
use sysfs::{SyncCompleted, SysfsArray};

/// Where the RAID readings come from.
#[derive(Debug, Clone)]
pub struct RaidSources {
    /// Normally `/proc/mdstat`.
    pub mdstat: PathBuf,
    /// Normally `/sys/block`; array `mdN` is read from `<sysfs_block>/mdN/md`.
    pub sysfs_block: PathBuf,
    /// Where a root helper writes `<mdN>.export` (`mdadm --detail --export`) and `<mdN>.detail`
    /// (`mdadm --detail`). `None` skips mdadm entirely.
    pub mdadm_dir: Option<PathBuf>,
}

impl Default for RaidSources {
    fn default() -> RaidSources {
        RaidSources {
            mdstat: PathBuf::from("/proc/mdstat"),
            sysfs_block: PathBuf::from("/sys/block"),
            mdadm_dir: Some(PathBuf::from("/run/outpost-hw")),
        }
    }
}

/// Reads every md array.
///
/// A missing mdstat means the md driver is not loaded, so there are no arrays: that is
/// `Ok(empty)`, not an error. An mdstat that exists but cannot be read, or is not in the
/// kernel's format, is an error naming the path. Missing sysfs or mdadm files only leave the
/// fields they would have filled `None`. External-metadata containers (`super external:imsm`)
/// are skipped: they are inactive by design and the arrays inside them are reported instead.
///
/// This blocks on a few small file reads; async callers use `spawn_blocking`.
pub fn sample(sources: &RaidSources) -> Result<Vec<Array>, HealthError> {
    let text = match std::fs::read_to_string(&sources.mdstat) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(HealthError::read(&sources.mdstat, error)),
    };
    let arrays = mdstat::parse(&text, &sources.mdstat)?;
    Ok(arrays
        .into_iter()
        .filter(|md| !md.container)
        .map(|md| {
            let sys = sysfs::read(&sources.sysfs_block, &md.name);
            let mdadm = sources
                .mdadm_dir
                .as_deref()
                .map(|dir| mdadm::read(dir, &md.name))
                .unwrap_or_default();
            Array::assemble(md, sys, mdadm)
        })
        .collect())
}

/// One md array as the sources describe it, with its derived health.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Array {
    /// The kernel name, e.g. `md0`.
    pub name: String,
    /// The personality, e.g. `raid1`; a bare number such as `5` becomes `raid5`.
    pub level: Option<String>,
    /// The number of slots a complete array has (during a reshape, the new number).
    pub raid_disks: Option<u32>,
    /// sysfs `array_state` as read: `clean`, `active`, `active-idle`, `readonly`, `read-auto`,
    /// `write-pending`, `inactive`, `clear`, `broken`, ... Without sysfs, mdstat's `inactive`,
    /// `(read-only)` and `(auto-read-only)` give `inactive`, `readonly` and `read-auto`, and an
    /// active array leaves this `None` because mdstat does not say clean or active.
    pub array_state: Option<String>,
    /// How many slots lack an in-sync member (sysfs `degraded`, else mdstat's `[n/m]` as n-m).
    pub degraded: Option<u32>,
    /// sysfs `sync_action`: `idle`, `resync`, `recover`, `check`, `repair`, `reshape` or
    /// `frozen`. Without sysfs it is inferred from mdstat's progress line, where `repair`
    /// prints as `resync` and cannot be told apart.
    pub sync_action: Option<String>,
    /// Progress of the running sync, in 512-byte sectors whichever source gave it.
    pub sync_progress: Option<Progress>,
    pub sync_speed_kib_s: Option<u64>,
    /// Members in slot order, then spares and failed members; with mdstat alone, in the
    /// order of mdstat's descriptor numbers.
    pub members: Vec<Member>,
    /// mdstat's status, e.g. `[2/1] [U_]`.
    pub mdstat_status: Option<String>,
    /// The `State :` line of `mdadm --detail` when the helper wrote it, e.g.
    /// `clean, degraded, recovering`. It may be older than the other fields.
    pub mdadm_state: Option<String>,
    pub health: RaidHealth,
}

/// How far a resync, recovery, check or reshape has got.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Sectors (512 bytes) done.
    pub done: u64,
    /// Sectors the operation covers.
    pub total: u64,
    pub percent: f32,
    /// Minutes left, from mdstat's `finish=` or estimated from `sync_speed`.
    pub finish_min: Option<f32>,
}

/// One member device of an array.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The kernel name, e.g. `sdb1`.
    pub device: String,
    /// The slot it fills; `None` for spares and failed members, and when only mdstat was
    /// available (its `[n]` numbers are descriptor numbers, not slots).
    pub slot: Option<u32>,
    /// sysfs `dev-*/state` words (`in_sync`, `faulty`, `spare`, `write_mostly`, `blocked`,
    /// `write_error`, `want_replacement`, `replacement`, ...). Without sysfs, mdstat's
    /// markers give the same words: `(F)` faulty, `(S)` spare, `(W)` write_mostly,
    /// `(R)` replacement, `(J)` journal.
    pub state: Vec<String>,
    pub role: MemberRole,
    /// sysfs `errors`: read errors that were corrected or did not evict the member.
    pub errors: Option<u64>,
}

/// What a member is doing in its array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// In sync and serving data (also a journal device).
    Active,
    /// Kicked out after a fault; it holds no current data and should be replaced.
    Faulty,
    /// Working but not in a slot: a hot spare waiting for a failure.
    Spare,
    /// In a slot but not yet in sync: the target of a recovery or a replacement.
    Rebuilding,
    /// The sources do not say. Members of an array that is not running are `Unknown`, because
    /// the kernel has not placed them in slots and reports every one of them as a spare.
    Unknown,
}

/// The array's health, worst last so that `max` picks the worst of several arrays.
///
/// The rules, first match wins:
///
/// 1. **Failed** when the array cannot serve data: `array_state` is `inactive`, `clear` or
///    `broken` (mdstat `inactive` counts too), or more slots are missing than the level
///    survives. raid0 and linear survive 0 (a faulty member fails them too); raid1
///    survives `raid_disks - 1`; raid4 and raid5 survive 1; raid6 survives 2. For raid10,
///    which members can go depends on where the copies sit, so it is Failed only when loss
///    is certain: the survivors hold less than one copy of the data, that is
///    `degraded > raid_disks - ceil(raid_disks / copies)` with copies from the layout
///    (default 2). For 4 disks with 2 copies that is 3 missing; 2 missing is Degraded, since
///    the kernel keeps an array running only while every block still has a copy. Other
///    levels (multipath, ...) are never Failed by count.
/// 2. **Rebuilding** when a `recover` is running and it targets every missing slot (with
///    nothing missing, that is a copy onto a `replacement`), or a `resync` or `reshape` is
///    running on an array with nothing missing. Running means
///    `sync_completed` shows progress or `delayed` (or, without that file, mdstat shows a
///    progress line or `resync=DELAYED`): the kernel sets `sync_action` to `recover` for a
///    moment even when there is no spare to recover onto, which is not a rebuild.
/// 3. **Degraded** when any slot is missing (`degraded > 0`) and rule 2 did not apply,
///    including a resync or reshape on a degraded array and a recovery onto fewer spares
///    than there are missing slots.
/// 4. **Ok** otherwise. A `check` or `repair` scrub on a complete array is Ok; `sync_action`
///    and `sync_progress` still show it. A failed spare or a member marked
///    `want_replacement` leaves the array Ok but `describe_problem` mentions it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum RaidHealth {
    Ok,
    Rebuilding,
    Degraded,
    Failed,
}

impl Array {
    /// The members the kernel has kicked out after a fault.
    pub fn failed_members(&self) -> Vec<&Member> {
        self.members
            .iter()
            .filter(|m| m.role == MemberRole::Faulty)
            .collect()
    }

    /// A short plain sentence fragment for a technician, e.g.
    /// `degraded: 1 of 2 members missing; sdb1 failed` or
    /// `rebuilding onto sdd1, 42.0% done, about 12 min left`.
    ///
    /// `None` when nothing needs attention. An Ok array can still have something to say: a
    /// failed spare, a member the kernel wants replaced, or a read-only array.
    pub fn describe_problem(&self) -> Option<String> {
        let failed = names(self.failed_members());
        let rebuilding = names(
            self.members
                .iter()
                .filter(|m| m.role == MemberRole::Rebuilding)
                .collect(),
        );
        let missing = self.degraded.unwrap_or(0);
        let slots = self
            .raid_disks
            .map(|n| format!(" of {n}"))
            .unwrap_or_default();
        let mut text = match self.health {
            RaidHealth::Failed => {
                let state = self.array_state.as_deref().unwrap_or("");
                let mut text = match state {
                    "inactive" | "clear" => "failed: the array is not running".to_string(),
                    // raid0 and linear have no `degraded` count; the others do.
                    "broken" if missing == 0 => {
                        "failed: a member is missing and the level has no redundancy".to_string()
                    }
                    _ if missing > 0 => format!(
                        "failed: {missing}{slots} members missing, more than {} survives",
                        self.level.as_deref().unwrap_or("this level")
                    ),
                    _ => "failed: a member failed and the level has no redundancy".to_string(),
                };
                if !failed.is_empty() {
                    text.push_str(&format!("; {failed} failed"));
                }
                text
            }
            RaidHealth::Degraded => {
                let mut text = format!("degraded: {missing}{slots} members missing");
                if !failed.is_empty() {
                    text.push_str(&format!("; {failed} failed"));
                }
                if !rebuilding.is_empty() {
                    text.push_str(&format!("; rebuilding onto {rebuilding}"));
                    text.push_str(&self.progress_text());
                } else if let Some(action) = &self.sync_action
                    && self.sync_progress.is_some()
                {
                    // Only a sync with progress is running: `recover` alone can be the
                    // kernel's passing wish for a spare it does not have.
                    text.push_str(&format!("; {action} running"));
                    text.push_str(&self.progress_text());
                }
                text
            }
            RaidHealth::Rebuilding => {
                let action = self.sync_action.as_deref().unwrap_or("recover");
                let mut text = match action {
                    "resync" => "resyncing redundancy".to_string(),
                    "reshape" => "reshaping".to_string(),
                    _ if rebuilding.is_empty() => "rebuilding".to_string(),
                    _ => format!("rebuilding onto {rebuilding}"),
                };
                if self.sync_progress.is_none() {
                    // The kernel queues a sync behind another array's sync on the same disks.
                    text.push_str(", waiting to start");
                }
                text.push_str(&self.progress_text());
                text
            }
            RaidHealth::Ok => String::new(),
        };
        // Things worth a technician's attention that do not change the verdict.
        let mut notes = Vec::new();
        for member in &self.members {
            if member.role == MemberRole::Faulty && self.health == RaidHealth::Ok {
                notes.push(format!("spare {} failed", member.device));
            }
            if member.state.iter().any(|w| w == "want_replacement") {
                notes.push(format!("{} is marked for replacement", member.device));
            }
            if member.state.iter().any(|w| w == "blocked") {
                notes.push(format!(
                    "{} failed and writes to it are blocked",
                    member.device
                ));
            }
        }
        if self.array_state.as_deref() == Some("readonly") {
            notes.push("the array is read-only, writes fail".to_string());
        }
        for note in notes {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&note);
        }
        (!text.is_empty()).then_some(text)
    }

    /// `, 42.0% done, about 12 min left`, or nothing when there is no progress.
    fn progress_text(&self) -> String {
        let Some(progress) = &self.sync_progress else {
            return String::new();
        };
        let mut text = format!(", {:.1}% done", progress.percent);
        if let Some(minutes) = progress.finish_min {
            if minutes >= 90.0 {
                text.push_str(&format!(", about {:.1} h left", minutes / 60.0));
            } else {
                text.push_str(&format!(", about {:.0} min left", minutes.max(1.0)));
            }
        }
        text
    }

    /// Combines the three sources into one array and derives its health.
    fn assemble(md: MdstatArray, sys: Option<SysfsArray>, mdadm: Mdadm) -> Array {
        let sys = sys.unwrap_or_default();
        let level = sys
            .level
            .clone()
            .or_else(|| md.level.clone())
            .or_else(|| mdadm.level.clone())
            .map(|l| normalise_level(&l));
        // mdadm reports a disk count for an inactive array that is only the members it has
        // seen so far (`MD_DEVICES=1` for one member of a three-disk array), so it is used
        // only for running arrays.
        let raid_disks = sys
            .raid_disks
            .or(md.raid_disks)
            .or(mdadm.raid_disks.filter(|_| md.active));
        let array_state = sys.array_state.clone().or_else(|| {
            if !md.active {
                Some("inactive".to_string())
            } else {
                match md.read_only.as_deref() {
                    Some("read-only") => Some("readonly".to_string()),
                    Some("auto-read-only") => Some("read-auto".to_string()),
                    _ => None,
                }
            }
        });
        let degraded = sys.degraded.or_else(|| {
            md.raid_disks
                .zip(md.working)
                .map(|(disks, working)| disks.saturating_sub(working))
        });
        let sync_action = sys.sync_action.clone().or_else(|| match &md.sync {
            Some(MdstatSync::Running { kind, .. }) => Some(
                match kind.as_str() {
                    "recovery" => "recover",
                    other => other,
                }
                .to_string(),
            ),
            // mdstat prints `resync=DELAYED` whatever the queued sync is; with a slot missing
            // it can only be a recovery.
            Some(MdstatSync::Delayed) => Some(
                if degraded.unwrap_or(0) > 0 {
                    "recover"
                } else {
                    "resync"
                }
                .to_string(),
            ),
            // A pending resync waits for the first write; sysfs shows `idle` for it.
            Some(MdstatSync::Pending) | None => None,
        });
        let running = match sys.sync_completed {
            Some(SyncCompleted::Sectors { .. } | SyncCompleted::Delayed) => true,
            Some(SyncCompleted::None) => false,
            None => match &md.sync {
                Some(MdstatSync::Running { .. } | MdstatSync::Delayed) => true,
                Some(MdstatSync::Pending) => false,
                // Neither source says, so take `sync_action` at its word.
                None => sys
                    .sync_action
                    .as_deref()
                    .is_some_and(|a| !matches!(a, "idle" | "frozen")),
            },
        };
        let sync_speed_kib_s = sys.sync_speed_kib_s.or(match &md.sync {
            Some(MdstatSync::Running { speed_kib_s, .. }) => *speed_kib_s,
            _ => None,
        });
        let sync_progress = progress(&sys, &md, sync_speed_kib_s);
        let (members, targets) = if sys.members.is_empty() {
            members_from_mdstat(&md, &mdadm)
        } else {
            members_from_sysfs(&sys, md.active)
        };
        let copies = sys
            .layout
            .filter(|_| level.as_deref() == Some("raid10"))
            .map(raid10_copies)
            .or(md.copies)
            .unwrap_or(2);
        let mdstat_status = match (md.raid_disks, md.working, &md.slot_map) {
            (Some(disks), Some(working), Some(map)) => Some(format!("[{disks}/{working}] [{map}]")),
            (Some(disks), Some(working), None) => Some(format!("[{disks}/{working}]")),
            _ => None,
        };
        let mut array = Array {
            name: md.name,
            level,
            raid_disks,
            array_state,
            degraded,
            sync_action,
            sync_progress,
            sync_speed_kib_s,
            members,
            mdstat_status,
            mdadm_state: mdadm.state,
            health: RaidHealth::Ok,
        };
        array.health = derive_health(&array, running, targets, copies);
        array
    }
}

/// Applies the rules documented on `RaidHealth`. `running` says whether a sync thread really
/// exists; `targets` is how many members are being rebuilt, when the sources say.
fn derive_health(array: &Array, running: bool, targets: Option<u32>, copies: u32) -> RaidHealth {
    if array
        .array_state
        .as_deref()
        .is_some_and(|s| matches!(s, "inactive" | "clear" | "broken"))
    {
        return RaidHealth::Failed;
    }
    let level = array.level.as_deref().unwrap_or("");
    let missing = array.degraded.unwrap_or(0);
    if let Some(survives) = survivable(level, array.raid_disks, copies)
        && missing > survives
    {
        return RaidHealth::Failed;
    }
    if matches!(level, "raid0" | "linear")
        && array.members.iter().any(|m| m.role == MemberRole::Faulty)
    {
        return RaidHealth::Failed;
    }
    let action = array.sync_action.as_deref().unwrap_or("idle");
    match action {
        "recover" if running && targets.is_none_or(|t| t >= missing) => RaidHealth::Rebuilding,
        "resync" | "reshape" if running && missing == 0 => RaidHealth::Rebuilding,
        _ if missing > 0 => RaidHealth::Degraded,
        _ => RaidHealth::Ok,
    }
}

/// How many missing slots the level survives for certain; `None` when it cannot be said.
fn survivable(level: &str, raid_disks: Option<u32>, copies: u32) -> Option<u32> {
    match level {
        "raid0" | "linear" => Some(0),
        "raid1" => raid_disks.map(|n| n.saturating_sub(1)),
        "raid4" | "raid5" => Some(1),
        "raid6" => Some(2),
        // The survivors must hold at least one full copy of the data, which takes
        // ceil(n / copies) members; fewer than that and loss is certain.
        "raid10" => raid_disks.map(|n| n.saturating_sub(n.div_ceil(copies.max(1)))),
        _ => None,
    }
}

/// RAID10's `layout`: near copies in bits 0-7, far (or offset) copies in bits 8-15.
fn raid10_copies(layout: u32) -> u32 {
    let near = (layout & 0xff).max(1);
    let far = ((layout >> 8) & 0xff).max(1);
    near * far
}

/// `5` → `raid5`, `RAID1` → `raid1`; anything else as it is.
fn normalise_level(level: &str) -> String {
    let lower = level.trim().to_ascii_lowercase();
    if !lower.is_empty() && lower.chars().all(|c| c.is_ascii_digit()) {
        format!("raid{lower}")
    } else {
        lower
    }
}

fn progress(sys: &SysfsArray, md: &MdstatArray, speed_kib_s: Option<u64>) -> Option<Progress> {
    let mdstat_finish = match &md.sync {
        Some(MdstatSync::Running { finish_min, .. }) => *finish_min,
        _ => None,
    };
    if let Some(SyncCompleted::Sectors { done, total }) = sys.sync_completed
        && total > 0
    {
        let finish_min = mdstat_finish.or_else(|| {
            let speed = speed_kib_s.filter(|s| *s > 0)?;
            // Sectors are 512 bytes, so half a KiB each.
            Some(total.saturating_sub(done) as f32 / 2.0 / speed as f32 / 60.0)
        });
        return Some(Progress {
            done,
            total,
            percent: (done as f64 * 100.0 / total as f64) as f32,
            finish_min,
        });
    }
    if sys.sync_completed.is_some() {
        // sysfs says `none` or `delayed`; mdstat's line, if any, is from a moment earlier.
        return None;
    }
    match &md.sync {
        Some(MdstatSync::Running {
            percent,
            done_kib,
            total_kib,
            finish_min,
            ..
        }) if *total_kib > 0 => Some(Progress {
            done: done_kib * 2,
            total: total_kib * 2,
            percent: *percent,
            finish_min: *finish_min,
        }),
        _ => None,
    }
}

/// Members from sysfs, and how many are being rebuilt.
fn members_from_sysfs(sys: &SysfsArray, active: bool) -> (Vec<Member>, Option<u32>) {
    let members: Vec<Member> = sys
        .members
        .iter()
        .map(|m| {
            let has = |word: &str| m.state.iter().any(|w| w == word);
            let role = if has("faulty") {
                MemberRole::Faulty
            } else if !active {
                MemberRole::Unknown
            } else if has("in_sync") || has("journal") {
                MemberRole::Active
            } else if m.slot.is_some() {
                // In a slot but not in sync: recovery (or a replacement) is writing to it.
                MemberRole::Rebuilding
            } else if has("spare") {
                MemberRole::Spare
            } else {
                MemberRole::Unknown
            };
            Member {
                device: m.device.clone(),
                slot: m.slot,
                state: m.state.clone(),
                role,
                errors: m.errors,
            }
        })
        .collect();
    let targets = members
        .iter()
        .filter(|m| m.role == MemberRole::Rebuilding)
        .count();
    (members, u32::try_from(targets).ok())
}

/// Members from mdstat, using mdadm's device table to say which unmarked member is being
/// rebuilt; and how many are being rebuilt, when that can be counted.
fn members_from_mdstat(md: &MdstatArray, mdadm: &Mdadm) -> (Vec<Member>, Option<u32>) {
    let unmarked = |m: &&mdstat::MdstatMember| !(m.faulty || m.spare || m.replacement || m.journal);
    let in_sync = md
        .slot_map
        .as_deref()
        .map(|map| map.chars().filter(|c| *c == 'U').count())
        .or(md.working.and_then(|w| usize::try_from(w).ok()));
    let unmarked_count = md.members.iter().filter(unmarked).count();
    // mdstat marks neither a recovering member nor its slot, but its slot shows as `_`: more
    // unmarked members than `U`s means that many are being rebuilt.
    let excess = in_sync.map(|u| unmarked_count.saturating_sub(u));
    let replacements = md
        .members
        .iter()
        .filter(|m| m.replacement && !m.faulty)
        .count();
    let known = |name: &str| mdadm.devices.iter().find(|d| d.device == name);
    // When mdadm cannot say which members are rebuilding, a member added after the array was
    // built gets a descriptor number at or above raid_disks, so if exactly `excess` members
    // have such numbers they are the new ones. Otherwise the unmarked members stay Unknown
    // rather than risk naming the only good copy as the one being rebuilt.
    let guessed: Option<Vec<&str>> = match (excess, md.raid_disks) {
        (Some(excess), Some(disks)) if excess > 0 => {
            let late: Vec<&str> = md
                .members
                .iter()
                .filter(unmarked)
                .filter(|m| m.number >= disks)
                .map(|m| m.device.as_str())
                .collect();
            (late.len() == excess).then_some(late)
        }
        _ => None,
    };
    // The kernel prints members newest first; descriptor order reads more naturally.
    let mut ordered: Vec<&mdstat::MdstatMember> = md.members.iter().collect();
    ordered.sort_by_key(|m| m.number);
    let members = ordered
        .into_iter()
        .map(|m| {
            let from_mdadm = known(&m.device);
            let role = if m.faulty {
                MemberRole::Faulty
            } else if !md.active {
                MemberRole::Unknown
            } else if m.journal {
                MemberRole::Active
            } else if m.replacement {
                MemberRole::Rebuilding
            } else if m.spare {
                MemberRole::Spare
            } else if excess.unwrap_or(0) == 0 {
                MemberRole::Active
            } else if let Some(role) = from_mdadm.and_then(mdadm_role) {
                role
            } else if let Some(late) = &guessed {
                if late.contains(&m.device.as_str()) {
                    MemberRole::Rebuilding
                } else {
                    MemberRole::Active
                }
            } else {
                MemberRole::Unknown
            };
            let mut state = Vec::new();
            for (flag, word) in [
                (m.faulty, "faulty"),
                (m.spare, "spare"),
                (m.write_mostly, "write_mostly"),
                (m.replacement, "replacement"),
                (m.journal, "journal"),
            ] {
                if flag {
                    state.push(word.to_string());
                }
            }
            Member {
                device: m.device.clone(),
                slot: from_mdadm.and_then(|d| d.slot),
                state,
                role,
                errors: None,
            }
        })
        .collect();
    let targets = excess.and_then(|e| u32::try_from(e + replacements).ok());
    (members, targets)
}

/// The role `mdadm --detail`'s table gives an unmarked mdstat member, when it says. Export's
/// numeric `ROLE` does not say: a member being rebuilt already has its slot number there.
fn mdadm_role(device: &mdadm::MdadmDevice) -> Option<MemberRole> {
    let has = |word: &str| device.state.iter().any(|w| w == word);
    if has("rebuilding") {
        Some(MemberRole::Rebuilding)
    } else if has("active") && has("sync") {
        Some(MemberRole::Active)
    } else {
        None
    }
}

/// `sdb1 and sdc1`, `sdb1, sdc1 and sdd1`.
fn names(members: Vec<&Member>) -> String {
    let names: Vec<&str> = members.iter().map(|m| m.device.as_str()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}
