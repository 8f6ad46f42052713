//! The data volume: statvfs numbers are plausible, and a bad path is named in the error.

use health::volume::{self, Volume};

#[test]
fn a_temporary_directory_has_plausible_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let v = volume::sample(dir.path()).unwrap();
    assert_eq!(v.path, dir.path());
    assert!(v.total_bytes > 0, "{v:?}");
    assert!(v.available_bytes <= v.total_bytes, "{v:?}");
    assert!(!v.read_only, "{v:?}");
    let used = v.used_percent();
    assert!((0.0..=100.0).contains(&used), "{used}");
    if v.total_inodes > 0 {
        let free = v.free_inode_percent().unwrap();
        assert!((0.0..=100.0).contains(&free), "{free}");
    }
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-mounted");
    let error = volume::sample(&missing).unwrap_err().to_string();
    assert!(error.contains(&missing.display().to_string()), "{error}");
    assert!(error.contains("mounted"), "{error}");
}

#[test]
fn no_inode_count_is_not_out_of_inodes() {
    // btrfs reports f_files = 0: it allocates inodes as it goes.
    let btrfs = Volume {
        path: "/data".into(),
        total_bytes: 1000,
        available_bytes: 250,
        total_inodes: 0,
        free_inodes: 0,
        read_only: false,
    };
    assert_eq!(btrfs.free_inode_percent(), None);
    assert_eq!(btrfs.used_percent(), 75.0);
    let ext4 = Volume {
        total_inodes: 200,
        free_inodes: 50,
        ..btrfs.clone()
    };
    assert_eq!(ext4.free_inode_percent(), Some(25.0));
    let empty = Volume {
        total_bytes: 0,
        available_bytes: 0,
        ..btrfs
    };
    assert_eq!(empty.used_percent(), 0.0);
}
