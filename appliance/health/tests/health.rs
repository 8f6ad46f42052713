//! Integration tests of the health crate: md fixtures captured from a real kernel and written by
//! hand, smartctl JSON, smartctl run through fake scripts, and statvfs on a temporary directory.

// A crate root's `mod` finds files beside it (tests/raid.rs, which cargo would also build as a
// test binary of its own), so the submodules under tests/health/ are named by path.
#[path = "health/raid.rs"]
mod raid;
#[path = "health/smart.rs"]
mod smart;
#[path = "health/volume.rs"]
mod volume;

use std::path::PathBuf;

/// `appliance/health/tests/fixtures`.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A sysfs tree for the stack "ext4 on LUKS (dm-0) on md0p1, md0 built on vdb and vdc",
/// and a stray md127 the volume does not use.
#[test]
fn the_arrays_under_the_data_volume_are_found_through_sysfs() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let devices = root.path().join("devices/virtual/block");
    let md0 = devices.join("md0");
    std::fs::create_dir_all(md0.join("md")).unwrap();
    std::fs::create_dir_all(md0.join("md0p1")).unwrap();
    std::fs::write(md0.join("md0p1/partition"), "1\n").unwrap();
    std::fs::create_dir_all(md0.join("slaves")).unwrap();
    let disks = root.path().join("devices/pci/block");
    for d in ["vdb", "vdc"] {
        std::fs::create_dir_all(disks.join(d)).unwrap();
        symlink(disks.join(d), md0.join("slaves").join(d)).unwrap();
    }
    let dm = devices.join("dm-0");
    std::fs::create_dir_all(dm.join("slaves")).unwrap();
    symlink(md0.join("md0p1"), dm.join("slaves/md0p1")).unwrap();
    std::fs::create_dir_all(devices.join("md127/md")).unwrap();
    let by_number = root.path().join("dev/block");
    std::fs::create_dir_all(&by_number).unwrap();
    symlink(&dm, by_number.join("253:0")).unwrap();
    symlink(devices.join("md127"), by_number.join("9:127")).unwrap();
    symlink(disks.join("vdb"), by_number.join("254:16")).unwrap();

    let arrays = health::volume::md_arrays_of_device(253, 0, &by_number);
    assert_eq!(arrays.as_deref(), Some(&["md0".to_string()][..]));
    assert_eq!(
        health::volume::md_arrays_of_device(9, 127, &by_number),
        Some(vec!["md127".to_string()])
    );
    assert_eq!(
        health::volume::md_arrays_of_device(254, 16, &by_number),
        Some(vec![])
    );
    // A device sysfs does not know: nobody can tell.
    assert_eq!(health::volume::md_arrays_of_device(1, 1, &by_number), None);

    // The disks at the bottom of the stack, through the partition, LUKS and the array.
    assert_eq!(
        health::volume::disks_of_device(253, 0, &by_number),
        Some(vec!["vdb".to_string(), "vdc".to_string()])
    );
    assert_eq!(
        health::volume::disks_of_device(254, 16, &by_number),
        Some(vec!["vdb".to_string()])
    );
    assert_eq!(health::volume::disks_of_device(1, 1, &by_number), None);

    // The kernel's count of requests in flight ("reads writes") names the member that hangs.
    std::fs::write(disks.join("vdb/inflight"), "       0        0\n").unwrap();
    std::fs::write(disks.join("vdc/inflight"), "       1       17\n").unwrap();
    assert_eq!(health::volume::writes_in_flight("vdb", &disks), Some(0));
    assert_eq!(health::volume::writes_in_flight("vdc", &disks), Some(17));
    assert_eq!(health::volume::writes_in_flight("vdd", &disks), None);
}

/// The device number of a real path resolves in this machine's sysfs when its file system
/// sits on a block device (the decoding of `st_dev` is the kernel's).
#[test]
fn a_real_volume_resolves_through_this_machines_sysfs() {
    use std::os::unix::fs::MetadataExt;
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dev = std::fs::metadata(here).unwrap().dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = std::path::Path::new("/sys/dev/block");
    let found = health::volume::md_arrays_under(here, sys);
    if major == 0 {
        // An anonymous device (overlay, btrfs, tmpfs): sysfs cannot say.
        assert_eq!(found, None);
    } else {
        assert!(sys.join(format!("{major}:{minor}")).exists());
        let arrays = found.expect("a block device sysfs knows");
        // This machine's kernel has no md driver, so its volume is on no array.
        if !std::path::Path::new("/proc/mdstat").exists() {
            assert!(arrays.is_empty(), "{arrays:?}");
        }
    }
}
