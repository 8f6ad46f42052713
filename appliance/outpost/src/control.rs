//! The local control socket: how `outpost queue` (and later `outpost status`) talk to the
//! running service, which alone holds the index. One JSON request per connection, one JSON
//! answer; the socket is `control.sock` in the data directory, readable by the service's
//! user and group only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use store::Store;
use store::outbox::{DeadLetter, QueueOp, QueueSummary};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Largest request accepted; requests are a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The appliance's state for people: archive, forwarding, versions, uptime.
    Status,
    /// Every destination's queue and state.
    Queue,
    /// A destination's dead letters.
    Dead {
        destination: String,
        limit: usize,
    },
    /// Make waiting entries due now and probe the destination now.
    Retry {
        destination: String,
    },
    /// Move dead letters back into the queue (all when `seqs` is empty).
    Resubmit {
        destination: String,
        seqs: Vec<u64>,
    },
    Pause {
        destination: String,
    },
    Resume {
        destination: String,
    },
}

/// One destination's row in `outpost queue`.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueRow {
    pub queue: QueueSummary,
    pub live: Option<LiveState>,
}

/// The forwarder's view of a destination.
#[derive(Debug, Serialize, Deserialize)]
pub struct LiveState {
    pub kind: String,
    pub state: String,
    pub since: u64,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Outside the delivery window: only STAT and high priority go now.
    pub outside_window: bool,
    /// On battery with the link down: only STAT and high priority go now.
    #[serde(default)]
    pub held_on_battery: bool,
    /// Storage Commitment reports keep failing to come (see `forward::DestinationStatus`).
    #[serde(default)]
    pub commitment_alert: Option<String>,
}

/// What `outpost status` shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// The operating system (`PRETTY_NAME` of os-release) and the kernel release, which a
    /// technician needs beside the appliance's own version.
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub kernel: String,
    /// Unix seconds when the service started, and seconds since.
    pub started_at: u64,
    pub uptime_s: u64,
    pub ae_title: String,
    pub listening: Vec<String>,
    pub data_dir: String,
    pub instances: u64,
    pub usage: Option<store::Usage>,
    /// The eviction watermarks, percent.
    pub high_watermark: u8,
    pub low_watermark: u8,
    pub destinations: Vec<QueueRow>,
    /// Critical: what start-up repair could not finish and kept for the next start (see
    /// `store::RepairAlert`), one sentence each.
    #[serde(default)]
    pub repair_alerts: Vec<String>,
    /// RAID, data volume, SMART, UPS and alerts (see `hardware::Snapshot`); kept as JSON so
    /// the client needs no copy of every reading's type.
    pub hardware: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Status(Box<Status>),
    Queue(Vec<QueueRow>),
    Dead(Vec<(u64, DeadLetter)>),
    Done(String),
    Error(String),
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
    pub hardware: Arc<std::sync::Mutex<crate::hardware::Snapshot>>,
    pub destinations: Vec<String>,
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
            let read =
                tokio::task::spawn_blocking(move || (store.instance_count(), store.usage())).await;
            let (instances, usage) = match read {
                Ok((Ok(n), usage)) => (n, usage.ok()),
                Ok((Err(e), _)) => return Response::Error(e.to_string()),
                Err(e) => return Response::Error(e.to_string()),
            };
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
                usage,
                high_watermark: id.high_watermark,
                low_watermark: id.low_watermark,
                destinations: rows,
                repair_alerts: id.repair_alerts.clone(),
                hardware: serde_json::to_value(&*control.hardware.lock().expect("snapshot lock"))
                    .unwrap_or_default(),
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
                Ok(d) => Response::Dead(d),
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
            queue: summary,
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
