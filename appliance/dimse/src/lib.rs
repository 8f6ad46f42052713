//! The DIMSE message layer that dicom-rs lacks, on top of dicom-ul 0.10's upper layer.
//!
//! [`command`] encodes and decodes command sets, [`status`] names the status codes,
//! [`channel`] turns an association's PDUs into whole commands and streamed data set
//! fragments and builds outgoing P-DATA PDUs itself. This crate knows nothing of storage,
//! queries or configuration: services are written on top of it by the `scp` crate.

pub mod channel;
pub mod command;
pub mod status;

pub use channel::{Channel, DimseError, Incoming, Link};
pub use command::{Command, CommandError, CommandField};
pub use status::{Status, StatusKind};

/// Verification SOP Class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Storage Commitment Push Model SOP Class, and its well-known SOP Instance.
pub const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";
/// Patient Root Query/Retrieve Information Model - FIND, MOVE, GET.
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";
pub const PATIENT_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.1.2";
pub const PATIENT_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.1.3";
/// Study Root Query/Retrieve Information Model - FIND, MOVE, GET.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
