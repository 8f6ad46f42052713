//! The local control socket: how `outpost queue`, `outpost quarantine` and `outpost status`
//! talk to the running service, which alone holds the index. One JSON request per connection, one JSON
//! answer; the socket is `control.sock` in the data directory, readable by the service's
//! user and group only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use store::Store;
use store::outbox::{HeldCorrection, QueueOp, RecallMismatch, StalledClaim};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Largest request accepted; requests are a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

pub use api::{ArchiveAlert, LiveState, QuarantineResolution, QueueRow, Request, Response, Status};

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
                human_bytes(bytes)
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
                human_bytes(c.bytes),
                c.destination,
                capitalise(&fix),
                match headroom {
                    Some(h) if over => format!(
                        " That is more than {:.0}% of the {} between the high watermark and the free-space floor.",
                        STALLED_WARN_SHARE * 100.0,
                        human_bytes(h)
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

pub(crate) fn human_bytes(n: u64) -> String {
    const G: f64 = 1e9;
    const M: f64 = 1e6;
    if n as f64 >= G {
        format!("{:.1} GB", n as f64 / G)
    } else {
        format!("{:.1} MB", n as f64 / M)
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

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// What the control socket acts on.
pub struct Control {
    pub store: Store,
    pub forwarder: Option<Arc<forward::Forwarder>>,
    pub hardware: Arc<std::sync::Mutex<api::Hardware>>,
    pub destinations: Vec<String>,
    /// Where the release commands are recorded.
    pub audit: audit::Audit,
    /// Facts about the running service that do not change.
    pub identity: Identity,
}

/// The running service's fixed facts, for `outpost status`.
pub struct Identity {
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
}

/// Binds the socket, replacing one a previous run left behind (the index lock already
/// guarantees no other service runs on this data directory).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot restrict the control socket {}", path.display()))?;
    Ok(listener)
}

pub async fn run(listener: UnixListener, control: Arc<Control>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &control).await {
                debug!(error = %e, "control request failed");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, control: &Control) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, control).await,
        Err(e) => Response::Error(format!("not a control request: {e}")),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

async fn handle(request: Request, control: &Control) -> Response {
    let known = |d: &str| control.destinations.iter().any(|n| n == d);
    let unknown = |d: &str| {
        Response::Error(format!(
            "{d:?} is not a configured destination; known: {}",
            if control.destinations.is_empty() {
                "none".to_string()
            } else {
                control.destinations.join(", ")
            }
        ))
    };
    let apply = |op: QueueOp, done: String| async move {
        match control.store.outbox_apply(vec![op]).await {
            Ok(()) => Response::Done(done),
            Err(e) => Response::Error(e.to_string()),
        }
    };
    match request {
        Request::Status => {
            let rows = match queue_rows(control).await {
                Ok(r) => r,
                Err(e) => return Response::Error(e),
            };
            let store = control.store.clone();
            let configured = control.destinations.clone();
            let read = tokio::task::spawn_blocking(move || {
                let archive = (
                    store.held_corrections()?,
                    store.recall_mismatches()?,
                    store.stalled_claims(&configured)?,
                    store.quarantine_count()?,
                );
                Ok::<_, store::StoreError>((store.instance_count()?, store.usage().ok(), archive))
            })
            .await;
            let (instances, usage, (held, mismatches, stalled, quarantined)) = match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Response::Error(e.to_string()),
                Err(e) => return Response::Error(e.to_string()),
            };
            let archive_alerts = archive_alerts(
                &held,
                &mismatches,
                &stalled,
                quarantined,
                usage.as_ref(),
                control.identity.high_watermark,
                control.identity.min_free_bytes,
                control.store.index_full(),
            );
            let id = &control.identity;
            let now = store::layout::unix_now();
            Response::Status(Box::new(Status {
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
                usage: usage.map(crate::wire::usage),
                high_watermark: id.high_watermark,
                low_watermark: id.low_watermark,
                destinations: rows,
                repair_alerts: id.repair_alerts.clone(),
                hardware: control.hardware.lock().expect("snapshot lock").clone(),
                held_corrections: held.len() as u64,
                held_correction_bytes: held.iter().map(|h| h.bytes).sum(),
                recall_mismatches: mismatches
                    .into_iter()
                    .map(crate::wire::recall_mismatch)
                    .collect(),
                stalled_claims: stalled
                    .into_iter()
                    .map(crate::wire::stalled_claim)
                    .collect(),
                quarantined,
                archive_alerts,
            }))
        }
        Request::Queue => match queue_rows(control).await {
            Ok(rows) => Response::Queue(rows),
            Err(e) => Response::Error(e),
        },
        Request::Dead { destination, limit } => {
            if !known(&destination) {
                return unknown(&destination);
            }
            match control.store.dead_letters(&destination, limit) {
                Ok(d) => Response::Dead(d.into_iter().map(crate::wire::dead_letter).collect()),
                Err(e) => Response::Error(e.to_string()),
            }
        }
        Request::Retry { destination } => {
            if !known(&destination) {
                return unknown(&destination);
            }
            let r = apply(
                QueueOp::RetryNow {
                    destination: destination.clone(),
                },
                format!("{destination}: waiting entries are due now"),
            )
            .await;
            if let Some(f) = &control.forwarder {
                f.wake(&destination);
            }
            r
        }
        Request::Resubmit { destination, seqs } => {
            if !known(&destination) {
                return unknown(&destination);
            }
            // Say exactly what will move: a number that is no dead letter (never was, or was
            // resubmitted already) is refused rather than silently skipped.
            let what = if seqs.is_empty() {
                match control.store.outbox_summary(&destination) {
                    Ok(s) if s.dead == 0 => {
                        return Response::Error(format!(
                            "{destination} has no dead letters to resubmit"
                        ));
                    }
                    Ok(s) => format!("{} dead letter(s)", s.dead),
                    Err(e) => return Response::Error(e.to_string()),
                }
            } else {
                let present = match control.store.dead_letters_present(&destination, &seqs) {
                    Ok(p) => p,
                    Err(e) => return Response::Error(e.to_string()),
                };
                let missing: Vec<String> = seqs
                    .iter()
                    .filter(|s| !present.contains(s))
                    .map(u64::to_string)
                    .collect();
                if !missing.is_empty() {
                    return Response::Error(format!(
                        "{destination} has no dead letter numbered {}; `outpost queue dead {destination}` lists them",
                        missing.join(", ")
                    ));
                }
                format!("{} dead letter(s)", present.len())
            };
            apply(
                QueueOp::Resubmit {
                    destination: destination.clone(),
                    seqs,
                },
                format!("{destination}: {what} queued again"),
            )
            .await
        }
        Request::Corrections => match control.store.held_corrections() {
            Ok(h) => Response::Corrections(h.iter().map(crate::wire::held_correction).collect()),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::ReleaseCorrections {
            destination,
            sops,
            all,
        } => release_corrections(control, destination, sops, all).await,
        Request::ReleaseClaim { destination } => release_claim(control, destination).await,
        Request::Quarantine => {
            let store = control.store.clone();
            match tokio::task::spawn_blocking(move || store.quarantined()).await {
                Ok(Ok(held)) => {
                    Response::Quarantine(held.iter().map(crate::wire::quarantine_row).collect())
                }
                Ok(Err(e)) => Response::Error(e.to_string()),
                Err(e) => Response::Error(e.to_string()),
            }
        }
        Request::ResolveQuarantine { seq, resolution } => {
            resolve_quarantine(control, seq, resolution).await
        }
        Request::Pause { destination } => {
            if !known(&destination) {
                return unknown(&destination);
            }
            apply(
                QueueOp::Pause {
                    destination: destination.clone(),
                    paused: true,
                },
                format!("{destination}: paused; instances keep being queued"),
            )
            .await
        }
        Request::Resume { destination } => {
            if !known(&destination) {
                return unknown(&destination);
            }
            let r = apply(
                QueueOp::Pause {
                    destination: destination.clone(),
                    paused: false,
                },
                format!("{destination}: resumed"),
            )
            .await;
            if let Some(f) = &control.forwarder {
                f.wake(&destination);
            }
            r
        }
    }
}

/// `outpost queue release-corrections`: the chosen held corrections count as confirmed by
/// the destinations that acknowledged them. Asking for one that is not held is refused, so
/// nobody waits for an eviction that will not happen.
async fn release_corrections(
    control: &Control,
    destination: Option<String>,
    sops: Vec<String>,
    all: bool,
) -> Response {
    if all != sops.is_empty() {
        return Response::Error(
            "name the corrections to release with --sop UID, or give --all".into(),
        );
    }
    let held = match control.store.held_corrections() {
        Ok(h) => h,
        Err(e) => return Response::Error(e.to_string()),
    };
    let by_destination = |h: &HeldCorrection| {
        destination
            .as_ref()
            .is_none_or(|d| h.destinations.iter().any(|x| x == d))
    };
    let chosen: Vec<&HeldCorrection> = if all {
        held.iter().filter(|h| by_destination(h)).collect()
    } else {
        let missing: Vec<&str> = sops
            .iter()
            .filter(|s| {
                !held
                    .iter()
                    .any(|h| &h.sop_instance_uid == *s && by_destination(h))
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Response::Error(format!(
                "no held correction {}{}; `outpost queue corrections` lists them",
                missing.join(", "),
                destination
                    .as_ref()
                    .map(|d| format!(" acknowledged by {d}"))
                    .unwrap_or_default()
            ));
        }
        held.iter()
            .filter(|h| sops.contains(&h.sop_instance_uid))
            .collect()
    };
    if chosen.is_empty() {
        return Response::Error(match &destination {
            Some(d) => format!("no held corrections acknowledged by {d}"),
            None => "no held corrections".to_string(),
        });
    }
    let uids: Vec<String> = chosen.iter().map(|h| h.sop_instance_uid.clone()).collect();
    let studies: std::collections::BTreeSet<&str> =
        chosen.iter().map(|h| h.study_uid.as_str()).collect();
    let n = uids.len();
    let first = uids[0].clone();
    match control.store.release_corrections(uids).await {
        Ok(_) => {
            let what = format!(
                "released {n} held correction(s) of {} study(ies) (first {first}){}: their acknowledgements now confirm them, so they may be evicted",
                studies.len(),
                destination
                    .as_ref()
                    .map(|d| format!(" acknowledged by {d}"))
                    .unwrap_or_default()
            );
            control.audit.record(
                audit::Event::new(audit::EventKind::OperatorAction, audit::Outcome::Success)
                    .instances(n as u64)
                    .detail(format!("outpost queue release-corrections: {what}")),
            );
            Response::Done(what)
        }
        Err(e) => Response::Error(e.to_string()),
    }
}

/// `outpost queue release-claim`: the instances that wait in vain for `destination`'s
/// confirmation stop waiting for it.
async fn release_claim(control: &Control, destination: String) -> Response {
    match control
        .store
        .release_claim(&destination, &control.destinations)
        .await
    {
        Ok(c) if c.instances == 0 => Response::Error(if c.configured {
            format!(
                "no instance waits in vain for {destination}: it has no dead-lettered instances unconfirmed"
            )
        } else {
            format!(
                "no instance waits for {destination:?}; configured destinations: {}",
                control.destinations.join(", ")
            )
        }),
        Ok(c) => {
            let what = format!(
                "{destination}: {} instance(s) ({}) no longer wait for its confirmation{}; {} of them go nowhere else and stay local",
                c.instances,
                human_bytes(c.bytes),
                if c.configured {
                    " (its dead letters stay listed)"
                } else {
                    ""
                },
                c.sole
            );
            control.audit.record(
                audit::Event::new(audit::EventKind::OperatorAction, audit::Outcome::Success)
                    .instances(c.instances)
                    .detail(format!("outpost queue release-claim: {what}")),
            );
            Response::Done(what)
        }
        Err(e) => Response::Error(e.to_string()),
    }
}

/// `outpost quarantine assign|delete`: applies the decision and records it in the audit
/// trail with both patients, since the trail is where a wrong assignment is traced later.
async fn resolve_quarantine(
    control: &Control,
    seq: u64,
    resolution: QuarantineResolution,
) -> Response {
    let done = match resolution {
        QuarantineResolution::Assign => control
            .store
            .resolve_quarantine(seq, store::Resolution::Assign)
            .await
            .map(|held| (held, None)),
        QuarantineResolution::Delete => control
            .store
            .resolve_quarantine(seq, store::Resolution::Delete)
            .await
            .map(|held| (held, None)),
        QuarantineResolution::Split => control
            .store
            .split_quarantined(seq)
            .await
            .map(|s| (s.held.clone(), Some(s))),
    };
    match done {
        Ok((held, split)) => {
            let row = crate::wire::quarantine_row(&held);
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
            control.audit.record(
                audit::Event::new(audit::EventKind::OperatorAction, audit::Outcome::Success)
                    .patient(&row.patient_id)
                    .study(&audited_study)
                    .instances(1)
                    .detail(format!("outpost quarantine {}: {what}", resolution.word())),
            );
            Response::Done(what)
        }
        Err(store::QuarantineError::NotHeld(n)) => Response::Error(format!(
            "no instance is held under quarantine number {n}; `outpost quarantine list` lists those held"
        )),
        Err(e) => Response::Error(e.to_string()),
    }
}

/// Every configured destination's queue, with the forwarder's live view of it.
async fn queue_rows(control: &Control) -> Result<Vec<QueueRow>, String> {
    let live = control
        .forwarder
        .as_ref()
        .map(|f| f.status())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for name in &control.destinations {
        let store = control.store.clone();
        let n = name.clone();
        let summary = tokio::task::spawn_blocking(move || store.outbox_summary(&n))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let live = live.iter().find(|s| &s.name == name).map(|s| LiveState {
            kind: s.kind.to_string(),
            state: format!("{:?}", s.state).to_lowercase(),
            since: s.since,
            last_error: s.last_error.clone(),
            delivered: s.delivered,
            retried: s.retried,
            dead_lettered: s.dead_lettered,
            outside_window: s.outside_window,
            held_on_battery: s.held_on_battery,
            commitment_alert: s.commitment_alert.clone(),
        });
        rows.push(QueueRow {
            queue: crate::wire::queue_summary(summary),
            live,
        });
    }
    Ok(rows)
}

/// Sends one request to the running service and returns its answer.
pub async fn call(path: &Path, request: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the running service at {} (is `outpost serve` running with this configuration, and may this user open its socket?)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await?;
    serde_json::from_str(&answer).context("the service's answer is not a control response")
}
