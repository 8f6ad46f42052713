//! Integration tests of the forwarder, speaking real protocols to real servers on 127.0.0.1.

// A crate root's `mod` finds files beside it (tests/stow.rs, which cargo would also build as a
// test binary of its own), so the submodules under tests/forward/ are named by path.
#[path = "forward/cache.rs"]
mod cache;
#[path = "forward/dicom.rs"]
mod dicom;
#[path = "forward/stow.rs"]
mod stow;
#[path = "forward/support.rs"]
mod support;
