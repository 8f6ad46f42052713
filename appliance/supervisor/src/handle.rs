//! The one dispatcher: every [`Request`], from the control socket or any other face, is
//! answered here, by [`Handler::handle`] (which `Running::handle` calls). What a request may
//! change it changes through the store's and the forwarder's own APIs, and records operator
//! actions in the audit trail; every refusal is an [`ApiError`].

use std::sync::Arc;

use api::{ApiError, ArchiveAlert, QuarantineResolution, QueueRow, Request, Response, Status};
use store::Store;
use store::outbox::{HeldCorrection, QueueOp, RecallMismatch, StalledClaim};

use crate::wire;

/// Answers requests; cheap to clone, one per face (the control socket, later the panel).
#[derive(Clone)]
pub struct Handler(pub(crate) Arc<Core>);

/// What the dispatcher acts on.
pub(crate) struct Core {
    pub store: Store,
    pub forwarder: Option<Arc<forward::Forwarder>>,
    pub hardware: Arc<std::sync::Mutex<api::Hardware>>,
    pub destinations: Vec<String>,
    /// Where operator actions are recorded.
    pub audit: audit::Audit,
    /// The panel's users, for the setup link while no administrator exists.
    pub accounts: accounts::Accounts,
    /// Facts about the running service that do not change.
    pub identity: Identity,
}

/// The running service's fixed facts, for `outpost status`.
pub(crate) struct Identity {
    pub started_at: u64,
    pub ae_title: String,
    pub listening: Vec<String>,
    pub data_dir: String,
    pub high_watermark: u8,
    pub low_watermark: u8,
    /// Critical: what start-up repair could not finish (each kept for the next start).
    pub repair_alerts: Vec<String>,
    /// The free-space floor below which ingest is refused.
    pub min_free_bytes: u64,
    /// The admin panel's address and certificate, when it runs.
    pub panel: Option<api::Panel>,
}

/// A store error as the API answers it: a full volume is "try later" (503), anything else
/// the archive's own words.
fn archive(e: store::StoreError) -> ApiError {
    match e {
        store::StoreError::IndexFull => ApiError::ArchiveFull(e.to_string()),
        other => ApiError::Archive(other.to_string()),
    }
}

/// A blocking task that did not finish (it panicked, or the runtime is stopping).
fn internal(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(e.to_string())
}

impl Handler {
    /// Answers one request. Refusals and failures become `Response::Error` through
    /// [`ApiError::answer`].
    pub async fn handle(&self, request: Request) -> Response {
        match self.0.answer(request).await {
            Ok(r) => r,
            Err(e) => e.into(),
        }
    }

    /// Answers one request, a refusal as the typed [`ApiError`]: the panel answers it
    /// with the HTTP status [`ApiError::answer`] decides.
    pub async fn answer(&self, request: Request) -> Result<Response, ApiError> {
        self.0.answer(request).await
    }
}

impl Core {
    fn check_destination(&self, d: &str) -> Result<(), ApiError> {
        if self.destinations.iter().any(|n| n == d) {
            Ok(())
        } else {
            Err(ApiError::UnknownDestination {
                name: d.to_string(),
                known: self.destinations.clone(),
            })
        }
    }

    async fn apply(&self, op: QueueOp, done: String) -> Result<Response, ApiError> {
        self.store.outbox_apply(vec![op]).await.map_err(archive)?;
        Ok(Response::Done(done))
    }

    fn wake(&self, destination: &str) {
        if let Some(f) = &self.forwarder {
            f.wake(destination);
        }
    }

    async fn answer(&self, request: Request) -> Result<Response, ApiError> {
        match request {
            Request::Status => self.status().await,
            Request::Queue => Ok(Response::Queue(self.queue_rows().await?)),
            Request::Dead { destination, limit } => {
                self.check_destination(&destination)?;
                let d = self
                    .store
                    .dead_letters(&destination, limit)
                    .map_err(archive)?;
                Ok(Response::Dead(
                    d.into_iter().map(wire::dead_letter).collect(),
                ))
            }
            Request::Retry { destination } => {
                self.check_destination(&destination)?;
                let r = self
                    .apply(
                        QueueOp::RetryNow {
                            destination: destination.clone(),
                        },
                        format!("{destination}: waiting entries are due now"),
                    )
                    .await;
                self.wake(&destination);
                r
            }
            Request::Resubmit { destination, seqs } => {
                self.check_destination(&destination)?;
                // Say exactly what will move: a number that is no dead letter (never was, or
                // was resubmitted already) is refused rather than silently skipped.
                let what = if seqs.is_empty() {
                    let s = self.store.outbox_summary(&destination).map_err(archive)?;
                    if s.dead == 0 {
                        return Err(ApiError::NothingToResubmit { destination });
                    }
                    format!("{} dead letter(s)", s.dead)
                } else {
                    let present = self
                        .store
                        .dead_letters_present(&destination, &seqs)
                        .map_err(archive)?;
                    let missing: Vec<u64> = seqs
                        .iter()
                        .filter(|s| !present.contains(s))
                        .copied()
                        .collect();
                    if !missing.is_empty() {
                        return Err(ApiError::NoSuchDeadLetter {
                            destination,
                            seqs: missing,
                        });
                    }
                    format!("{} dead letter(s)", present.len())
                };
                self.apply(
                    QueueOp::Resubmit {
                        destination: destination.clone(),
                        seqs,
                    },
                    format!("{destination}: {what} queued again"),
                )
                .await
            }
            Request::Pause { destination } => {
                self.check_destination(&destination)?;
                self.apply(
                    QueueOp::Pause {
                        destination: destination.clone(),
                        paused: true,
                    },
                    format!("{destination}: paused; instances keep being queued"),
                )
                .await
            }
            Request::Resume { destination } => {
                self.check_destination(&destination)?;
                let r = self
                    .apply(
                        QueueOp::Pause {
                            destination: destination.clone(),
                            paused: false,
                        },
                        format!("{destination}: resumed"),
                    )
                    .await;
                self.wake(&destination);
                r
            }
            Request::Corrections => {
                let h = self.store.held_corrections().map_err(archive)?;
                Ok(Response::Corrections(
                    h.iter().map(wire::held_correction).collect(),
                ))
            }
            Request::ReleaseCorrections {
                destination,
                sops,
                all,
            } => self.release_corrections(destination, sops, all).await,
            Request::ReleaseClaim { destination } => self.release_claim(destination).await,
            Request::Quarantine => {
                let store = self.store.clone();
                let held = tokio::task::spawn_blocking(move || store.quarantined())
                    .await
                    .map_err(internal)?
                    .map_err(archive)?;
                Ok(Response::Quarantine(
                    held.iter().map(wire::quarantine_row).collect(),
                ))
            }
            Request::ResolveQuarantine { seq, resolution } => {
                self.resolve_quarantine(seq, resolution).await
            }
        }
    }

    /// `outpost status`: the archive, its queues, the hardware, the service's facts.
    async fn status(&self) -> Result<Response, ApiError> {
        let rows = self.queue_rows().await?;
        let store = self.store.clone();
        let configured = self.destinations.clone();
        let (instances, usage, (held, mismatches, stalled, quarantined)) =
            tokio::task::spawn_blocking(move || {
                let archive = (
                    store.held_corrections()?,
                    store.recall_mismatches()?,
                    store.stalled_claims(&configured)?,
                    store.quarantine_count()?,
                );
                Ok::<_, store::StoreError>((store.instance_count()?, store.usage().ok(), archive))
            })
            .await
            .map_err(internal)?
            .map_err(archive)?;
        let archive_alerts = archive_alerts(
            &held,
            &mismatches,
            &stalled,
            quarantined,
            usage.as_ref(),
            self.identity.high_watermark,
            self.identity.min_free_bytes,
            self.store.index_full(),
        );
        let id = &self.identity;
        let now = store::layout::unix_now();
        Ok(Response::Status(Box::new(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            os: os_name(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_string())
                .unwrap_or_default(),
            started_at: id.started_at,
            uptime_s: now.saturating_sub(id.started_at),
            ae_title: id.ae_title.clone(),
            listening: id.listening.clone(),
            data_dir: id.data_dir.clone(),
            instances,
            usage: usage.map(wire::usage),
            high_watermark: id.high_watermark,
            low_watermark: id.low_watermark,
            destinations: rows,
            repair_alerts: id.repair_alerts.clone(),
            hardware: self.hardware.lock().expect("snapshot lock").clone(),
            held_corrections: held.len() as u64,
            held_correction_bytes: held.iter().map(|h| h.bytes).sum(),
            recall_mismatches: mismatches.into_iter().map(wire::recall_mismatch).collect(),
            stalled_claims: stalled.into_iter().map(wire::stalled_claim).collect(),
            quarantined,
            archive_alerts,
            panel: id.panel.clone(),
            setup_link: self
                .accounts
                .setup_token()
                .map(|t| format!("/setup?token={t}")),
        })))
    }

    /// `outpost queue release-corrections`: the chosen held corrections count as confirmed
    /// by the destinations that acknowledged them. Asking for one that is not held is
    /// refused, so nobody waits for an eviction that will not happen.
    async fn release_corrections(
        &self,
        destination: Option<String>,
        sops: Vec<String>,
        all: bool,
    ) -> Result<Response, ApiError> {
        if all != sops.is_empty() {
            return Err(ApiError::ChooseCorrections);
        }
        let held = self.store.held_corrections().map_err(archive)?;
        let by_destination = |h: &HeldCorrection| {
            destination
                .as_ref()
                .is_none_or(|d| h.destinations.iter().any(|x| x == d))
        };
        let chosen: Vec<&HeldCorrection> = if all {
            held.iter().filter(|h| by_destination(h)).collect()
        } else {
            let missing: Vec<String> = sops
                .iter()
                .filter(|s| {
                    !held
                        .iter()
                        .any(|h| &h.sop_instance_uid == *s && by_destination(h))
                })
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(ApiError::NoSuchCorrection {
                    sops: missing,
                    destination,
                });
            }
            held.iter()
                .filter(|h| sops.contains(&h.sop_instance_uid))
                .collect()
        };
        if chosen.is_empty() {
            return Err(ApiError::NoCorrections { destination });
        }
        let uids: Vec<String> = chosen.iter().map(|h| h.sop_instance_uid.clone()).collect();
        let studies: std::collections::BTreeSet<&str> =
            chosen.iter().map(|h| h.study_uid.as_str()).collect();
        let n = uids.len();
        let first = uids[0].clone();
        self.store
            .release_corrections(uids)
            .await
            .map_err(archive)?;
        let what = format!(
            "released {n} held correction(s) of {} study(ies) (first {first}){}: their acknowledgements now confirm them, so they may be evicted",
            studies.len(),
            destination
                .as_ref()
                .map(|d| format!(" acknowledged by {d}"))
                .unwrap_or_default()
        );
        self.audit.record(
            audit::Event::new(audit::EventKind::OperatorAction, audit::Outcome::Success)
                .instances(n as u64)
                .detail(format!("outpost queue release-corrections: {what}")),
        );
        Ok(Response::Done(what))
    }

    /// `outpost queue release-claim`: the instances that wait in vain for `destination`'s
    /// confirmation stop waiting for it.
    async fn release_claim(&self, destination: String) -> Result<Response, ApiError> {
        let c = self
            .store
            .release_claim(&destination, &self.destinations)
            .await
            .map_err(archive)?;
        if c.instances == 0 {
            return Err(if c.configured {
                ApiError::NoStalledClaim { destination }
            } else {
                ApiError::NoClaim {
                    destination,
                    configured: self.destinations.clone(),
                }
            });
        }
        let what = format!(
            "{destination}: {} instance(s) ({}) no longer wait for its confirmation{}; {} of them go nowhere else and stay local",
            c.instances,
            api::show::bytes(c.bytes),
            if c.configured {
                " (its dead letters stay listed)"
            } else {
                ""
            },
            c.sole
        );
        self.audit.record(
            audit::Event::new(audit::EventKind::OperatorAction, audit::Outcome::Success)
                .instances(c.instances)
                .detail(format!("outpost queue release-claim: {what}")),
        );
        Ok(Response::Done(what))
    }

    /// Every configured destination's queue, with the forwarder's live view of it.
    async fn queue_rows(&self) -> Result<Vec<QueueRow>, ApiError> {
        let live = self
            .forwarder
            .as_ref()
            .map(|f| f.status())
            .unwrap_or_default();
        let mut rows = Vec::new();
        for name in &self.destinations {
            let store = self.store.clone();
            let n = name.clone();
            let summary = tokio::task::spawn_blocking(move || store.outbox_summary(&n))
                .await
                .map_err(internal)?
                .map_err(archive)?;
            let live = live.iter().find(|s| &s.name == name).map(wire::live_state);
            rows.push(QueueRow {
                queue: wire::queue_summary(summary),
                live,
            });
        }
        Ok(rows)
    }

    /// `outpost quarantine assign|split|delete`: applies the decision and records it in the
    /// audit trail with both patients, since the trail is where a wrong assignment is
    /// traced later.
    async fn resolve_quarantine(
        &self,
        seq: u64,
        resolution: QuarantineResolution,
    ) -> Result<Response, ApiError> {
        let done = match resolution {
            QuarantineResolution::Assign => self
                .store
                .resolve_quarantine(seq, store::Resolution::Assign)
                .await
                .map(|held| (held, None)),
            QuarantineResolution::Delete => self
                .store
                .resolve_quarantine(seq, store::Resolution::Delete)
                .await
                .map(|held| (held, None)),
            QuarantineResolution::Split => self
                .store
                .split_quarantined(seq)
                .await
                .map(|s| (s.held.clone(), Some(s))),
        };
        let (held, split) = match done {
            Ok(d) => d,
            Err(store::QuarantineError::NotHeld(n)) => return Err(ApiError::NotQuarantined(n)),
            Err(e) => return Err(ApiError::Archive(e.to_string())),
        };
        let row = wire::quarantine_row(&held);
        let (what, audited_study) = match (resolution, &split) {
            (QuarantineResolution::Split, Some(s)) => (
                format!(
                    "quarantine number {seq}: {} (PatientID \"{}\", naming study {} of patient \"{}\") filed as SOP Instance UID {} in a study of its own patient: Study Instance UID {}, Series Instance UID {}; it is found, retrieved and forwarded like any other now",
                    row.sop_instance_uid,
                    row.patient_id,
                    row.study_uid,
                    row.study_patient_id,
                    s.sop_instance_uid,
                    s.study_uid,
                    s.series_uid
                ),
                s.study_uid.clone(),
            ),
            (QuarantineResolution::Delete, _) => (
                format!(
                    "quarantine number {seq}: {} (PatientID \"{}\", naming study {} of patient \"{}\") deleted; its file goes after the next checkpoint",
                    row.sop_instance_uid, row.patient_id, row.study_uid, row.study_patient_id
                ),
                row.study_uid.clone(),
            ),
            _ => (
                format!(
                    "quarantine number {seq}: {} (PatientID \"{}\") filed under study {} of patient \"{}\"; it is found, retrieved and forwarded like any other now",
                    row.sop_instance_uid, row.patient_id, row.study_uid, row.study_patient_id
                ),
                row.study_uid.clone(),
            ),
        };
        self.audit.record(
            audit::Event::new(audit::EventKind::OperatorAction, audit::Outcome::Success)
                .patient(&row.patient_id)
                .study(&audited_study)
                .instances(1)
                .detail(format!("outpost quarantine {}: {what}", resolution.word())),
        );
        Ok(Response::Done(what))
    }
}

/// The share of the room between the high watermark and the free-space floor that
/// unevictable instances may take before `outpost status` warns: beyond it, eviction can no
/// longer keep the archive off the floor for long.
const STALLED_WARN_SHARE: f64 = 0.25;

/// The archive alerts for `outpost status`: held corrections (warning), recall mismatches
/// (error), instances held in quarantine (warning: nobody sees them until resolved), and
/// instances that wait on a destination that never confirms (listed always, a
/// warning once they take more than [`STALLED_WARN_SHARE`] of the room above the high
/// watermark).
pub fn archive_alerts(
    held: &[HeldCorrection],
    mismatches: &[(String, RecallMismatch)],
    stalled: &[StalledClaim],
    quarantined: u64,
    usage: Option<&store::Usage>,
    high_watermark: u8,
    min_free_bytes: u64,
    index_full: bool,
) -> Vec<ArchiveAlert> {
    let mut out = Vec::new();
    if index_full {
        out.push(ArchiveAlert {
            severity: "error".into(),
            message: "The data volume filled up under the index: new instances are refused with 0xA700 and queries show the archive as of its last checkpoint. Free space (studies with a confirmed upstream copy are evicted automatically; otherwise check forwarding, or what else writes to the volume) and the archive takes instances again by itself, nothing acknowledged lost.".into(),
        });
    }
    if quarantined > 0 {
        out.push(ArchiveAlert {
            severity: "warning".into(),
            message: format!(
                "{quarantined} instance(s) held in quarantine: their Patient ID disagrees with the patient their study (or SOP Instance UID) is held under, so nobody can find, retrieve or receive them. Check which patient they belong to (`outpost quarantine list`), then `outpost quarantine assign N` to file one under its study's patient, `outpost quarantine split N` to file it as a study of its own patient, or `outpost quarantine delete N`."
            ),
        });
    }
    if !mismatches.is_empty() {
        let first: Vec<&str> = mismatches.iter().take(3).map(|(s, _)| s.as_str()).collect();
        out.push(ArchiveAlert {
            severity: "error".into(),
            message: format!(
                "{} recalled instance(s) differ from the copy that was evicted (first: {}): the upstream archive holds another version, so a correction may exist nowhere now. Compare with the upstream archive, send the correct version again (`outpost status --json` lists them all), and set `overwrites` only for destinations that replace their copies.",
                mismatches.len(),
                first.join(", ")
            ),
        });
    }
    if !held.is_empty() {
        let bytes: u64 = held.iter().map(|h| h.bytes).sum();
        out.push(ArchiveAlert {
            severity: "warning".into(),
            message: format!(
                "{} corrected instance(s) ({}) stay local: their destinations acknowledged the correction without that proving they replaced their copy. Check the destination holds the corrected version, then `outpost queue release-corrections --all` (`outpost queue corrections` lists them).",
                held.len(),
                api::show::bytes(bytes)
            ),
        });
    }
    // The room eviction has before ingest reaches the floor: from the high watermark up to
    // capacity minus the floor.
    let headroom = usage.map(|u| {
        u.capacity_bytes
            .saturating_sub(min_free_bytes)
            .saturating_sub(u.capacity_bytes / 100 * u64::from(high_watermark))
    });
    for c in stalled {
        let over = headroom.is_none_or(|h| c.bytes as f64 > h as f64 * STALLED_WARN_SHARE);
        let why = if c.configured {
            format!("{} dead-lettered them", c.destination)
        } else {
            format!(
                "{} is no longer a configured destination (removed or renamed)",
                c.destination
            )
        };
        let fix = if c.configured {
            format!(
                "resubmit them once the cause is fixed (`outpost queue dead {0}`, `outpost queue resubmit {0}`), or give up on {0} for them: `outpost queue release-claim {0}`",
                c.destination
            )
        } else {
            format!(
                "configure it again, or give up on it: `outpost queue release-claim {}`",
                c.destination
            )
        };
        let sole = if c.sole > 0 {
            format!(
                "; {} of them go nowhere else and stay local even then",
                c.sole
            )
        } else {
            String::new()
        };
        out.push(ArchiveAlert {
            severity: if over { "warning" } else { "info" }.into(),
            message: format!(
                "{} instance(s) ({}) are never evicted because they wait for a confirmation from {} that will not come: {why}. {}{sole}.{}",
                c.instances,
                api::show::bytes(c.bytes),
                c.destination,
                capitalise(&fix),
                match headroom {
                    Some(h) if over => format!(
                        " That is more than {:.0}% of the {} between the high watermark and the free-space floor.",
                        STALLED_WARN_SHARE * 100.0,
                        api::show::bytes(h)
                    ),
                    _ => String::new(),
                }
            ),
        });
    }
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `PRETTY_NAME` from os-release, or "" when there is none.
fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}
