//! The data volume: how full it is, in bytes and inodes, and whether it went read-only.

use std::path::{Path, PathBuf};

use nix::sys::statvfs::{FsFlags, statvfs};

use crate::HealthError;

/// One `statvfs` reading of the file system holding `path`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Volume {
    pub path: PathBuf,
    pub total_bytes: u64,
    /// Bytes an unprivileged process may still write (`f_bavail`): blocks reserved for root
    /// are not available to the service, so they count as used.
    pub available_bytes: u64,
    /// Zero on file systems that allocate inodes dynamically (btrfs, some network file
    /// systems); see `free_inode_percent`.
    pub total_inodes: u64,
    /// Inodes an unprivileged process may still use (`f_favail`).
    pub free_inodes: u64,
    /// Mounted read-only (`ST_RDONLY`), for example after ext4 remounted itself read-only on
    /// an I/O error.
    pub read_only: bool,
}

/// Reads the file system holding `path`. Blocking; async callers use `spawn_blocking`.
pub fn sample(path: &Path) -> Result<Volume, HealthError> {
    let stat = statvfs(path).map_err(|source| HealthError::Statvfs {
        path: path.to_path_buf(),
        source,
    })?;
    // The counters are `c_ulong` or `fsblkcnt_t`, which are 32 bits wide on some ARM targets
    // and already u64 on x86-64, so the conversion is needed on one and useless on the other.
    #[allow(clippy::useless_conversion)]
    let (fragment, blocks, available, files, files_available) = (
        u64::from(stat.fragment_size()),
        u64::from(stat.blocks()),
        u64::from(stat.blocks_available()),
        u64::from(stat.files()),
        u64::from(stat.files_available()),
    );
    Ok(Volume {
        path: path.to_path_buf(),
        total_bytes: blocks.saturating_mul(fragment),
        available_bytes: available.saturating_mul(fragment),
        total_inodes: files,
        free_inodes: files_available,
        read_only: stat.flags().contains(FsFlags::ST_RDONLY),
    })
}

impl Volume {
    /// The share of the volume the service can no longer write, 0 to 100. Root-reserved
    /// blocks count as used, so this is higher than `df`'s Use% by the reserve. A volume
    /// reporting no size at all gives 0.
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        let used = self.total_bytes.saturating_sub(self.available_bytes);
        used as f64 * 100.0 / self.total_bytes as f64
    }

    /// The share of inodes still free, 0 to 100; `None` when the file system reports no inode
    /// count at all (btrfs), which means "no fixed limit", not "out of inodes".
    pub fn free_inode_percent(&self) -> Option<f64> {
        (self.total_inodes > 0).then(|| {
            self.free_inodes.min(self.total_inodes) as f64 * 100.0 / self.total_inodes as f64
        })
    }
}

/// The md arrays the file system holding `path` lives on, found through sysfs: the block
/// device of `path` (`/sys/dev/block/MAJOR:MINOR`), and what it is built on (`slaves/`,
/// through partitions, LUKS and LVM), down to every `md*` array. Empty when the volume is
/// on block devices but none is md; `None` when sysfs cannot tell which block device holds
/// it (btrfs and ZFS report an anonymous device, tmpfs and overlays have none).
pub fn md_arrays_under(path: &Path, sys_dev_block: &Path) -> Option<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    md_arrays_of_device(major, minor, sys_dev_block)
}

/// [`md_arrays_under`] for a device number.
pub fn md_arrays_of_device(major: u64, minor: u64, sys_dev_block: &Path) -> Option<Vec<String>> {
    Some(stack_of_device(major, minor, sys_dev_block)?.arrays)
}

/// The disks the file system holding `path` is written to in the end: the devices at the
/// bottom of its stack (below partitions, LUKS, LVM and md), such as `["sda", "sdb"]`. A
/// hung sync on the volume is a hung request on one of them. `None` when sysfs cannot tell
/// (as for [`md_arrays_under`]).
pub fn disks_under(path: &Path, sys_dev_block: &Path) -> Option<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    disks_of_device(major, minor, sys_dev_block)
}

/// [`disks_under`] for a device number.
pub fn disks_of_device(major: u64, minor: u64, sys_dev_block: &Path) -> Option<Vec<String>> {
    Some(stack_of_device(major, minor, sys_dev_block)?.disks)
}

/// Write requests a disk has issued and not yet completed, from
/// `<sys_block>/<disk>/inflight` ("reads writes"). On a failing disk of a mirror, its own
/// count stays up while the healthy member's drains: that names the disk that hangs.
pub fn writes_in_flight(disk: &str, sys_block: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(sys_block.join(disk).join("inflight")).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// What a block device is built on.
#[derive(Default)]
struct Stack {
    arrays: Vec<String>,
    disks: Vec<String>,
}

fn stack_of_device(major: u64, minor: u64, sys_dev_block: &Path) -> Option<Stack> {
    let node = std::fs::canonicalize(sys_dev_block.join(format!("{major}:{minor}"))).ok()?;
    let mut found = Stack::default();
    walk_stack(&node, &mut found, 0);
    for list in [&mut found.arrays, &mut found.disks] {
        list.sort();
        list.dedup();
    }
    Some(found)
}

fn walk_stack(node: &Path, found: &mut Stack, depth: usize) {
    // Stacks are a few levels deep (partition, LUKS, LVM, md); a loop in a broken sysfs
    // must not recurse for ever.
    if depth > 16 {
        return;
    }
    // A partition's directory sits inside its disk's: md0p1 lives in md0.
    let disk = if node.join("partition").exists() {
        node.parent().unwrap_or(node)
    } else {
        node
    };
    let name = disk.file_name().and_then(|n| n.to_str());
    if disk.join("md").is_dir()
        && let Some(name) = name
    {
        found.arrays.push(name.to_string());
    }
    let below: Vec<PathBuf> = std::fs::read_dir(disk.join("slaves"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::canonicalize(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if below.is_empty() {
        // Nothing below: a disk (or a virtual device with no parts, such as a loop device).
        if let Some(name) = name {
            found.disks.push(name.to_string());
        }
    }
    for b in below {
        walk_stack(&b, found, depth + 1);
    }
}
