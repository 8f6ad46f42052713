//! The one error type of the health crate, with messages that name the input and the fix.

use std::path::PathBuf;

/// Why a health reading could not be taken at all.
///
/// A reading that merely finds something wrong (a failed disk, a degraded array) is not an
/// error; it is a value. These variants are for inputs that cannot be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A file or directory that exists could not be read.
    #[error("cannot read {path}: {source}; check that the service may read it")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `/proc/mdstat` (or a copy of it) is not in the format the kernel writes.
    #[error(
        "{path} line {line} is not in the /proc/mdstat format ({reason}); \
         if this is a copy, re-capture it with `cat /proc/mdstat`"
    )]
    Mdstat {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// `statvfs` failed on the data volume.
    #[error(
        "cannot read the file system at {path}: {source}; \
         check that the data volume is mounted and the configured path exists"
    )]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// A document that should be `smartctl -j` output is not.
    #[error(
        "{origin} is not smartctl JSON output ({reason}); \
         it should be what `smartctl -j -a <device>` prints (smartmontools 7.0 or later)"
    )]
    SmartJson { origin: String, reason: String },
    /// smartctl could not be started at all.
    #[error("cannot run {program}: {source}; install smartmontools or correct the configured path")]
    SmartctlSpawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// smartctl ran but did not finish in time, so it was killed.
    #[error(
        "{program} did not finish reading {device} within {seconds} s and was stopped; \
         the disk may be hanging, check the kernel log for I/O errors"
    )]
    SmartctlTimeout {
        program: PathBuf,
        device: String,
        seconds: u64,
    },
    /// smartctl ran but reports that the command itself failed (exit status bits 0 or 1),
    /// so its output says nothing about the disk.
    #[error(
        "smartctl could not read {device} (exit status {status}: {message}); \
         check the device name and that the service may open it"
    )]
    SmartctlFailed {
        device: String,
        status: i32,
        message: String,
    },
}

impl HealthError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> HealthError {
        HealthError::Read {
            path: path.into(),
            source,
        }
    }
}
