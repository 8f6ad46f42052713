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
