//! The audit trail: an append-only file of JSON lines, one per event, with fields after the
//! DICOM audit messages of PS3.15 A.5 (event, outcome, when, calling and called AE, peer
//! address, patient ID, study UID, instance count).
//!
//! Events are handed to a writer thread so that no caller ever waits on the disk; the thread
//! appends each line with one `write` and syncs the file at most once a second, and on close.
//! Later issues add logins and operator actions to the same trail.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tracing::error;

/// What happened (PS3.15 A.5.1 event types, in Outpost's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    ApplicationStart,
    ApplicationStop,
    ConfigurationLoaded,
    AssociationAccepted,
    AssociationRejected,
    InstancesStored,
    Query,
    Retrieve,
    /// Files of instances with a confirmed upstream copy were deleted to free space (the
    /// index entries stay; PS3.15 "DICOM Instances Deleted" in spirit, the data lives on
    /// upstream).
    InstancesEvicted,
    /// The health policy raised an alert about the hardware (RAID, disks, UPS, space).
    AlertRaised,
    /// The condition behind an alert is over.
    AlertCleared,
    /// The appliance powered itself off on the UPS's word.
    PowerOff,
    /// A person acted on the archive through `outpost` (the detail says what).
    OperatorAction,
}

/// PS3.15 Event Outcome Indicator, in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    MinorFailure,
    SeriousFailure,
}

/// One audit event. Fields that do not apply stay `None` and are left out of the line.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub outcome: Outcome,
    pub when: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calling_ae: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub called_ae: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    /// A sentence for people: why a rejection, what a query asked, where a retrieval went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    pub fn new(event: EventKind, outcome: Outcome) -> Event {
        Event {
            event,
            outcome,
            when: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            calling_ae: None,
            called_ae: None,
            peer: None,
            patient_id: None,
            study_uid: None,
            instances: None,
            detail: None,
        }
    }

    pub fn association(mut self, calling: &str, called: &str, peer: impl ToString) -> Event {
        self.calling_ae = Some(calling.trim().to_string());
        self.called_ae = Some(called.trim().to_string());
        self.peer = Some(peer.to_string());
        self
    }

    pub fn patient(mut self, id: &str) -> Event {
        self.patient_id = Some(id.to_string());
        self
    }

    pub fn study(mut self, uid: &str) -> Event {
        self.study_uid = Some(uid.to_string());
        self
    }

    pub fn instances(mut self, n: u64) -> Event {
        self.instances = Some(n);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = Some(detail.into());
        self
    }
}

enum Msg {
    Event(Box<Event>),
    Close(mpsc::Sender<()>),
}

/// A handle on the audit trail; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
}

#[derive(Debug)]
pub struct OpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot open the audit trail {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for OpenError {}

impl Audit {
    /// Opens (creating if needed) the trail at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Audit, OpenError> {
        let err = |source| OpenError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let (tx, rx) = mpsc::channel();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(file, &path, rx))
            .map_err(err)?;
        Ok(Audit { tx })
    }

    /// Records an event; never blocks on the disk.
    pub fn record(&self, event: Event) {
        let _ = self.tx.send(Msg::Event(Box::new(event)));
    }

    /// Writes and syncs everything recorded so far.
    pub fn close(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn write_loop(mut file: File, path: &Path, rx: mpsc::Receiver<Msg>) {
    let mut dirty_since: Option<Instant> = None;
    loop {
        let wait = dirty_since.map_or(Duration::from_secs(3600), |t| {
            Duration::from_secs(1).saturating_sub(t.elapsed())
        });
        match rx.recv_timeout(wait) {
            Ok(Msg::Event(event)) => {
                let mut line = serde_json::to_vec(&event).expect("events serialize");
                line.push(b'\n');
                if let Err(e) = file.write_all(&line) {
                    error!(file = %path.display(), error = %e, "cannot append to the audit trail");
                }
                dirty_since.get_or_insert_with(Instant::now);
            }
            Ok(Msg::Close(done)) => {
                let _ = file.sync_data();
                dirty_since = None;
                let _ = done.send(());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = file.sync_data() {
                    error!(file = %path.display(), error = %e, "cannot sync the audit trail");
                }
                dirty_since = None;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = file.sync_data();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        audit.record(
            Event::new(EventKind::InstancesStored, Outcome::Success)
                .association("CT1 ", "OUTPOST", "10.0.0.5:4000")
                .patient("PID1")
                .study("1.2.3")
                .instances(300),
        );
        audit.record(
            Event::new(EventKind::AssociationRejected, Outcome::MinorFailure)
                .detail("calling AE not known"),
        );
        audit.close();
        // Reopening appends rather than truncating.
        let again = Audit::open(&path).unwrap();
        again.record(Event::new(EventKind::ApplicationStart, Outcome::Success));
        again.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["event"], "instances-stored");
        assert_eq!(lines[0]["calling_ae"], "CT1");
        assert_eq!(lines[0]["instances"], 300);
        assert_eq!(lines[1]["outcome"], "minor-failure");
        assert!(lines[1].get("patient_id").is_none());
        assert_eq!(lines[2]["event"], "application-start");
    }
}
