//! What the storage hardware says: md RAID arrays, the data volume, and SMART.
//!
//! Each module reads one kind of evidence and derives one plain verdict from it:
//!
//! - `raid` reads `/proc/mdstat`, the md sysfs tree and the optional `mdadm --detail` files a
//!   root helper writes, and derives a `RaidHealth` per array.
//! - `volume` asks `statvfs` how full the data volume is and whether it went read-only.
//! - `smart` reads `smartctl -j -a` output (from files a root helper writes, or by running
//!   smartctl itself) and derives a `Verdict` per disk.
//!
//! **Architecture Invariant:** this crate observes and never acts. It does not write to sysfs,
//! start scrubs, or decide what the appliance should do about a finding; the policy crate does.
//! The readers here are blocking (small file reads and one `statvfs`), except
//! `smart::run_smartctl`, so async callers wrap them in `spawn_blocking`.

mod error;
pub mod raid;
pub mod smart;
pub mod volume;

pub use error::HealthError;
