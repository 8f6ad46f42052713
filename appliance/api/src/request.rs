//! What a face of the appliance may ask of it.

use serde::{Deserialize, Serialize};

/// One request. On the control socket it is one JSON line tagged by `cmd` in kebab-case
/// (`{"cmd": "status"}`), the protocol `outpost` has always spoken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The appliance's state for people: archive, forwarding, hardware, versions, uptime.
    Status,
    /// Every destination's queue and state.
    Queue,
    /// A destination's dead letters.
    Dead { destination: String, limit: usize },
    /// Make waiting entries due now and probe the destination now.
    Retry { destination: String },
    /// Move dead letters back into the queue (all when `seqs` is empty).
    Resubmit { destination: String, seqs: Vec<u64> },
    /// Stop delivering to a destination; instances keep being queued.
    Pause { destination: String },
    /// Deliver to a paused destination again.
    Resume { destination: String },
    /// Overwritten instances kept local until a person releases them.
    Corrections,
    /// Release held corrections: those with the given SOP Instance UIDs, or all (`all`),
    /// optionally only those acknowledged by `destination`.
    ReleaseCorrections {
        destination: Option<String>,
        sops: Vec<String>,
        all: bool,
    },
    /// Stop waiting for a destination's confirmation of the instances it will not confirm.
    ReleaseClaim { destination: String },
    /// Instances held in quarantine (patient conflicts).
    Quarantine,
    /// A person's decision on one held instance.
    ResolveQuarantine {
        seq: u64,
        resolution: QuarantineResolution,
    },
}

/// What `outpost quarantine assign|split|delete` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineResolution {
    Assign,
    Split,
    Delete,
}

impl QuarantineResolution {
    /// The command's own word, for the audit trail.
    pub fn word(self) -> &'static str {
        match self {
            QuarantineResolution::Assign => "assign",
            QuarantineResolution::Split => "split",
            QuarantineResolution::Delete => "delete",
        }
    }
}
