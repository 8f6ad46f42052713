//! The typed API between the running appliance and whatever faces it: the control socket
//! (`outpost status`, `queue`, `quarantine`), and later the web panel. A [`Request`] goes to
//! `supervisor::Running::handle`, which answers a [`Response`]; failures are one
//! [`ApiError`] whose HTTP status and control-socket answer are decided in one `match`.
//! [`Event`]s are what the running appliance says happened, for whoever listens.
//!
//! No I/O here, and no dependency on a crate that does it as its job (the tidy test checks
//! the manifest): the archive's own types (queue summaries, dead letters) have their wire
//! twins in [`status`], so a change to the durable records never changes the API by
//! accident. The hardware readings are `health`, `ups` and `policy` types as they are.

mod error;
mod event;
mod request;
pub mod show;
pub mod status;

pub use error::{Answer, ApiError};
pub use event::Event;
pub use request::{QuarantineResolution, Request};
pub use status::{
    ArchiveAlert, DeadLetter, Hardware, HeldCorrection, LiveState, Panel, QuarantineRow,
    QueueEntry, QueueRow, QueueSummary, RecallMismatch, Section, StalledClaim, Status, UpsSection,
    Usage,
};

use serde::{Deserialize, Serialize};

/// The readings' types the status carries, from the crates that read them, so a face of
/// the appliance needs only this crate to read a [`Status`].
pub mod readings {
    pub use health::raid::{Array, RaidHealth};
    pub use health::smart::{Device, Verdict};
    pub use health::volume::Volume;
    pub use policy::{Alert, Severity};
    pub use ups::{Reading, UpsState};
}

/// The answer to one [`Request`]. On the control socket it is one JSON line, externally
/// tagged in kebab-case (`{"done": "..."}`, `{"error": "..."}`), which `outpost queue
/// --json` prints as it came.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Queue(Vec<QueueRow>),
    Dead(Vec<(u64, DeadLetter)>),
    Corrections(Vec<HeldCorrection>),
    Quarantine(Vec<QuarantineRow>),
    Done(String),
    /// An [`ApiError`]'s message (see [`ApiError::answer`]).
    Error(String),
}

impl From<ApiError> for Response {
    fn from(e: ApiError) -> Response {
        Response::Error(e.answer().message)
    }
}
