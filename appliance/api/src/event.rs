//! What the running appliance says happened, in one closed enum: whoever listens (the log
//! today, the panel's live dashboard and metrics later) sees every trigger in one place.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Everything is bound and running; the service manager was told READY.
    Started { detail: String },
    /// The hardware policy raised an alert.
    AlertRaised { alert: policy::Alert },
    /// An alert's condition is over.
    AlertCleared { alert: policy::Alert },
    /// New instances are refused (with why), or accepted again (`None`).
    IngestHeld { reason: Option<String> },
    /// The destinations whose routine forwarding waits (on battery, link down); empty when
    /// it resumes.
    ForwardingHeld { destinations: Vec<String> },
    /// The cache evicted confirmed instances.
    Evicted {
        instances: u64,
        studies: u64,
        bytes: u64,
    },
    /// The policy decided to power off (the UPS is running out).
    PowerOffRequested { reason: String },
    /// The appliance began to stop, and why.
    Stopping { reason: String },
}
