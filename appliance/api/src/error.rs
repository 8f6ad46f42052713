//! The one error type a request can fail with, and how each is answered: one exhaustive
//! `match` gives the HTTP status (for the panel) beside the message the control socket sends.

/// Why a request was refused or failed. Messages name the input and, where there is one,
/// the command that lists or fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request could not be read at all.
    #[error("not a control request: {0}")]
    NotARequest(String),
    /// A destination name that is not configured.
    #[error("{name:?} is not a configured destination; known: {}", list_or_none(.known))]
    UnknownDestination { name: String, known: Vec<String> },
    /// `resubmit` with no numbers on a destination without dead letters.
    #[error("{destination} has no dead letters to resubmit")]
    NothingToResubmit { destination: String },
    /// `resubmit --seq N` naming numbers that are no dead letters (now).
    #[error("{destination} has no dead letter numbered {}; `outpost queue dead {destination}` lists them", join(.seqs))]
    NoSuchDeadLetter { destination: String, seqs: Vec<u64> },
    /// `release-corrections` needs either UIDs or `--all`, not both, not neither.
    #[error("name the corrections to release with --sop UID, or give --all")]
    ChooseCorrections,
    /// `release-corrections --sop` naming UIDs that are not held (by that destination).
    #[error("no held correction {}{}; `outpost queue corrections` lists them", .sops.join(", "), by(.destination))]
    NoSuchCorrection {
        sops: Vec<String>,
        destination: Option<String>,
    },
    /// `release-corrections --all` with nothing held (by that destination).
    #[error("no held corrections{}", by(.destination))]
    NoCorrections { destination: Option<String> },
    /// `release-claim` on a configured destination no instance waits for in vain.
    #[error(
        "no instance waits in vain for {destination}: it has no dead-lettered instances unconfirmed"
    )]
    NoStalledClaim { destination: String },
    /// `release-claim` on a name no instance waits for and no destination has.
    #[error("no instance waits for {destination:?}; configured destinations: {}", .configured.join(", "))]
    NoClaim {
        destination: String,
        configured: Vec<String>,
    },
    /// A quarantine number that holds nothing.
    #[error(
        "no instance is held under quarantine number {0}; `outpost quarantine list` lists those held"
    )]
    NotQuarantined(u64),
    /// The archive refuses changes for now: its volume filled up under the index.
    #[error("{0}")]
    ArchiveFull(String),
    /// The archive failed to answer (its own message, which names the file or the fix).
    #[error("{0}")]
    Archive(String),
    /// A task of the service failed while answering (a panic, a cancelled task).
    #[error("the service failed while answering: {0}")]
    Internal(String),
}

/// How one [`ApiError`] is answered on each face.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status the panel answers with.
    pub http_status: u16,
    /// The text the control socket sends (`{"error": ...}`) and the panel shows.
    pub message: String,
}

impl ApiError {
    /// The answer to this error, decided here and nowhere else. No `_` arm: a new variant
    /// does not compile until someone decides how it is answered.
    pub fn answer(&self) -> Answer {
        let http_status = match self {
            // 4xx: the request is at fault, or asks for what is not there.
            ApiError::NotARequest(_) => 400,
            ApiError::UnknownDestination { .. }
            | ApiError::NoSuchDeadLetter { .. }
            | ApiError::NoSuchCorrection { .. }
            | ApiError::NotQuarantined(_) => 404,
            ApiError::NothingToResubmit { .. }
            | ApiError::NoCorrections { .. }
            | ApiError::NoStalledClaim { .. }
            | ApiError::NoClaim { .. } => 409,
            ApiError::ChooseCorrections => 422,
            // 5xx: the appliance could not do it.
            ApiError::Archive(_) | ApiError::Internal(_) => 500,
            ApiError::ArchiveFull(_) => 503,
        };
        Answer {
            http_status,
            message: self.to_string(),
        }
    }

    /// The HTTP status alone.
    pub fn http_status(&self) -> u16 {
        self.answer().http_status
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn join(seqs: &[u64]) -> String {
    seqs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn by(destination: &Option<String>) -> String {
    destination
        .as_ref()
        .map(|d| format!(" acknowledged by {d}"))
        .unwrap_or_default()
}
