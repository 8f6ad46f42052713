//! A destination's workers (take ready entries, deliver them, report how each ended) and its
//! prober (while the destination is down, checks every `probe_interval` whether it is back).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use store::Store;
use store::outbox::{QueueOp, Queued};
use store::query::Retrievable;
use store::settle::{Decision, settle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::classify::Verdict;
use crate::stow::StowClient;
use crate::{ForwardError, Settings, Shared, State, dicom, stow, tls};

/// How long an idle worker waits before looking at the queue again even without a signal
/// (a safety net; new entries and state changes wake it at once).
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// Most queue entries a worker looks at to find ready ones.
const SCAN_LIMIT: usize = 5_000;

/// Where "now" comes from: the system clock, or one a test moves by hand, so that backoff
/// can be tested without waiting.
#[derive(Clone, Debug)]
pub enum Clock {
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }
}

/// A bandwidth cap shared by a destination's workers: each send is given the moment its
/// bytes fit the rate after everything sent before it, and waits for it (virtual time, so
/// the average rate never exceeds the cap, however the sends interleave).
#[derive(Debug)]
pub(crate) struct Throttle {
    bytes_per_s: u64,
    next_free: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Throttle {
    pub fn new(bytes_per_s: u64) -> Throttle {
        Throttle {
            bytes_per_s: bytes_per_s.max(1),
            next_free: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next_free.lock().await;
            let now = tokio::time::Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// How instances travel to one destination.
pub(crate) enum Transport {
    Dicom(Box<dicom::DicomSender>),
    Web(StowClient),
}

/// How one delivery attempt of a batch ended: a verdict per item (`None`: not attempted,
/// because the destination went away first).
pub(crate) struct Attempt {
    pub verdicts: Vec<Option<Verdict>>,
    /// Storage Commitment requested for the delivered items at these indices.
    pub commitment: Option<Requested>,
}

/// A Storage Commitment transaction requested at the end of a delivery.
pub(crate) struct Requested {
    pub transaction_uid: String,
    pub indices: Vec<usize>,
    /// The report, when the destination sent it on the same association.
    pub report: Option<storescu::commitment::EventReport>,
}

impl Transport {
    pub fn new(d: &config::Destination, settings: &Settings) -> Result<Transport, ForwardError> {
        match &d.kind {
            config::DestinationKind::Dicom(dicom) => {
                let tls = tls::for_destination(d, dicom)?;
                Ok(Transport::Dicom(Box::new(dicom::DicomSender::new(
                    dicom.clone(),
                    tls,
                    settings,
                    d.timeout,
                ))))
            }
            config::DestinationKind::DicomWeb(web) => {
                let client = StowClient::new(stow::StowConfig {
                    url: web.url.clone(),
                    auth: match &web.auth {
                        config::WebAuth::None => stow::Auth::None,
                        config::WebAuth::Basic { username, password } => stow::Auth::Basic {
                            user: username.clone(),
                            password: password.clone(),
                        },
                        config::WebAuth::Bearer { token } => stow::Auth::Bearer {
                            token: token.clone(),
                        },
                        config::WebAuth::OAuth2 {
                            token_url,
                            client_id,
                            client_secret,
                            scope,
                        } => stow::Auth::OAuth2 {
                            token_url: token_url.clone(),
                            client_id: client_id.clone(),
                            client_secret: client_secret.clone(),
                            scope: scope.clone(),
                        },
                    },
                    ca_bundle: web.ca_bundle.clone(),
                    client_cert: web.client_certificate.clone(),
                    client_key: web.client_key.clone(),
                    proxy: web.proxy.clone(),
                    max_request_bytes: web.max_request_bytes,
                    max_request_instances: web.max_request_instances,
                    timeout: d.timeout,
                })
                .map_err(|source| ForwardError::Stow {
                    destination: d.name.clone(),
                    source,
                })?;
                Ok(Transport::Web(client))
            }
        }
    }

    async fn deliver(
        &self,
        store: &Store,
        items: &[Retrievable],
        throttle: Option<&Throttle>,
    ) -> Attempt {
        match self {
            Transport::Dicom(sender) => sender.deliver(store, items, throttle).await,
            Transport::Web(client) => {
                if let Some(t) = throttle {
                    t.take(items.iter().map(|i| i.size).sum()).await;
                }
                Attempt {
                    verdicts: client
                        .send(store, items)
                        .await
                        .into_iter()
                        .map(Some)
                        .collect(),
                    commitment: None,
                }
            }
        }
    }

    async fn probe(&self) -> Result<(), String> {
        match self {
            Transport::Dicom(sender) => sender.probe().await,
            Transport::Web(client) => client.probe().await,
        }
    }
}

pub(crate) struct Worker {
    pub store: Store,
    pub destination: config::Destination,
    pub transport: Arc<Transport>,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
    pub clock: Clock,
    pub throttle: Option<Arc<Throttle>>,
}

impl Worker {
    pub async fn run(self, n: usize) {
        let name = self.destination.name.clone();
        debug!(destination = %name, worker = n, "forwarding worker started");
        let mut changes = self.store.outbox_changes();
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            // With the volume full the index cannot record an outcome, so a delivery made now
            // would only be made again: wait until the archive recovers.
            let wait = if self.shared.state() == State::Down || self.store.index_full() {
                Some(IDLE_RECHECK)
            } else {
                match self.take().await {
                    Ok(Taken::Paused) => Some(IDLE_RECHECK),
                    Ok(Taken::Work(batch)) => {
                        self.deliver(batch).await;
                        None
                    }
                    Ok(Taken::Nothing { next_due_ms }) => Some(match next_due_ms {
                        Some(due) => Duration::from_millis(due.saturating_sub(self.clock.now_ms()))
                            .clamp(Duration::from_millis(10), IDLE_RECHECK),
                        None => IDLE_RECHECK,
                    }),
                    Err(e) => {
                        warn!(destination = %name, error = %e, "cannot read the outbox");
                        Some(IDLE_RECHECK)
                    }
                }
            };
            if let Some(wait) = wait {
                tokio::select! {
                    _ = self.shutdown.cancelled() => break,
                    _ = changes.changed() => {}
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        debug!(destination = %name, worker = n, "forwarding worker stopped");
    }

    /// Takes (holds) the ready entries at the head of the queue; `Paused` when a person
    /// paused the destination. The index is read on the blocking pool: a scan of a long
    /// queue must not hold a runtime thread (nor, through the `held` lock, its siblings).
    async fn take(&self) -> Result<Taken, store::StoreError> {
        let store = self.store.clone();
        let shared = self.shared.clone();
        let name = self.destination.name.clone();
        let batch = self.destination.batch;
        let now_ms = self.clock.now_ms();
        // Outside the delivery window, or on battery with the link down, only STAT and high
        // priority go; they sort first.
        let in_window = self.destination.in_window(local_minute());
        let on_battery = self
            .shared
            .battery_hold
            .load(std::sync::atomic::Ordering::SeqCst);
        {
            let mut status = self.shared.status.lock().expect("status lock");
            status.outside_window = !in_window;
            status.held_on_battery = on_battery;
        }
        let open = in_window && !on_battery;
        let taken = tokio::task::spawn_blocking(move || {
            if store.outbox_paused(&name)? {
                return Ok(Taken::Paused);
            }
            let mut held = shared.held.lock().expect("held lock");
            let peeked = store.outbox_peek(&name, batch, &held, now_ms, SCAN_LIMIT)?;
            let mut ready = peeked.ready;
            if !open {
                ready.retain(|q| q.key.rank <= config::Priority::High as u8);
            }
            if ready.is_empty() {
                return Ok(Taken::Nothing {
                    next_due_ms: peeked.next_due_ms,
                });
            }
            for q in &ready {
                held.insert(q.key);
            }
            Ok(Taken::Work(ready))
        })
        .await;
        taken.unwrap_or_else(|e| {
            Err(store::StoreError::Inconsistent(format!(
                "reading the outbox failed: {e}"
            )))
        })
    }

    async fn deliver(&self, batch: Vec<Queued>) {
        let name = &self.destination.name;
        let mut ops = Vec::new();
        let mut items = Vec::new();
        let mut keys = Vec::new();
        for q in &batch {
            match &q.instance {
                Some(i) => {
                    items.push(i.clone());
                    keys.push(q);
                }
                // Deleted from the archive since it was queued: nothing left to send.
                None => ops.push(QueueOp::Drop {
                    destination: name.clone(),
                    key: q.key,
                }),
            }
        }
        let attempt = if items.is_empty() {
            Attempt {
                verdicts: Vec::new(),
                commitment: None,
            }
        } else {
            self.transport
                .deliver(&self.store, &items, self.throttle.as_deref())
                .await
        };
        let now = self.clock.now_ms();
        let (mut delivered, mut troubled, mut unreachable) = (0u64, false, None);
        let (mut retried, mut dead) = (0u64, 0u64);
        let committing: Vec<usize> = attempt
            .commitment
            .as_ref()
            .map(|c| c.indices.clone())
            .unwrap_or_default();
        let mut awaiting = Vec::new();
        let backoff = crate::backoff(&self.destination.retry);
        for (i, (q, verdict)) in keys.iter().zip(attempt.verdicts).enumerate() {
            let Some(verdict) = verdict else { continue };
            if matches!(verdict, Verdict::Delivered { .. }) && committing.contains(&i) {
                // Confirmed by the commitment report, not by this answer.
                delivered += 1;
                awaiting.push((q.key, items[i].sop_class_uid.clone(), items[i].file.clone()));
                continue;
            }
            // Only a dead letter asks whether the file is still the stored one.
            let file_stored = !matches!(verdict, Verdict::DeadLetter { .. })
                || self
                    .store
                    .holds_file(&q.entry.sop_instance_uid, &items[i].file)
                    .unwrap_or(true);
            let decision = settle(verdict, q.entry.attempts, &backoff, now, file_stored);
            let sop = &q.entry.sop_instance_uid;
            match &decision {
                Decision::Ack { note, .. } => {
                    if let Some(note) = note {
                        debug!(destination = %name, sop = %sop, "{note}");
                    }
                    delivered += 1;
                }
                Decision::Retry {
                    reason,
                    not_before_ms,
                    counts: true,
                    attempts,
                } => {
                    troubled = true;
                    retried += 1;
                    let retry_in_s = not_before_ms.saturating_sub(now) / 1000;
                    info!(destination = %name, sop = %sop, attempts, retry_in_s, "{reason}");
                }
                // Not the instance's fault: the destination asked for a pause, which it gets.
                Decision::Retry {
                    reason,
                    counts: false,
                    ..
                }
                | Decision::Leave { reason } => unreachable = Some(reason.clone()),
                Decision::Dead { reason } => {
                    troubled = true;
                    dead += 1;
                    warn!(destination = %name, sop = %sop, "dead-lettered: {reason}");
                }
                Decision::Drop => {}
            }
            ops.extend(decision.into_op(name, q.key, sop, &items[i].file));
        }
        if let Some(c) = attempt.commitment {
            debug!(destination = %name, transaction = %c.transaction_uid, instances = awaiting.len(), "Storage Commitment requested");
            ops.push(QueueOp::AwaitCommitment {
                destination: name.clone(),
                transaction_uid: c.transaction_uid,
                items: awaiting,
                retry: backoff,
            });
            if let Some(report) = c.report {
                // The PACS reports on our association: whatever alert said it could not
                // report is over.
                self.shared
                    .status
                    .lock()
                    .expect("status lock")
                    .commitment_alert = None;
                ops.push(QueueOp::Committed(report_of(report)));
            }
        }
        if let Err(e) = self.store.outbox_apply(ops).await {
            warn!(destination = %name, error = %e, "cannot record delivery outcomes; they will be delivered again");
        }
        {
            let mut held = self.shared.held.lock().expect("held lock");
            for q in &batch {
                held.remove(&q.key);
            }
        }
        {
            let mut s = self.shared.status.lock().expect("status lock");
            s.delivered += delivered;
            s.retried += retried;
            s.dead_lettered += dead;
        }
        if let Some(reason) = unreachable {
            self.shared.set_state(State::Down, Some(reason));
            // The prober takes over; the other workers see the state and idle.
            self.shared.wake.notify_waiters();
        } else if troubled {
            self.shared.set_state(State::Degraded, None);
        } else if delivered > 0 {
            self.shared.set_state(State::Up, None);
        }
    }
}

/// A report as the store keeps it: SOP Instance UIDs, reasons in words.
pub(crate) fn report_of(r: storescu::commitment::EventReport) -> store::outbox::CommitmentReport {
    let sop_classes = r
        .committed
        .iter()
        .chain(r.failed.iter().map(|(x, _)| x))
        .map(|x| (x.sop_instance_uid.clone(), x.sop_class_uid.clone()))
        .collect();
    store::outbox::CommitmentReport {
        transaction_uid: r.transaction_uid,
        sop_classes,
        // It came on the association that asked: the destination itself.
        from: None,
        committed: r
            .committed
            .into_iter()
            .map(|x| x.sop_instance_uid)
            .collect(),
        failed: r
            .failed
            .into_iter()
            .map(|(x, code)| (x.sop_instance_uid, format!("failure reason 0x{code:04X}")))
            .collect(),
    }
}

/// Minutes after local midnight now.
fn local_minute() -> u16 {
    use chrono::Timelike;
    let now = chrono::Local::now();
    (now.hour() * 60 + now.minute()) as u16
}

enum Taken {
    Paused,
    Work(Vec<Queued>),
    Nothing { next_due_ms: Option<u64> },
}

/// Probes a destination while it is down.
pub(crate) struct Prober {
    pub store: Store,
    pub destination: config::Destination,
    pub transport: Arc<Transport>,
    pub shared: Arc<Shared>,
    pub shutdown: CancellationToken,
}

/// How often commitment transactions are checked for a report overdue.
const COMMITMENT_CHECK: Duration = Duration::from_secs(10);
/// After this many attempts of an instance end with its commitment unreported, the
/// destination raises an alert: the PACS most likely cannot report at all.
pub const COMMITMENT_ALERT_AFTER: u32 = 3;

impl Prober {
    /// Queues again the instances of commitment transactions whose report is overdue.
    async fn expire_commitments(&self) {
        // A destination no longer configured for commitment has its waiting transactions
        // settled at once (sent again), rather than left waiting for good.
        let timeout = match &self.destination.kind {
            config::DestinationKind::Dicom(d) => d.storage_commitment.unwrap_or_default(),
            config::DestinationKind::DicomWeb(_) => Duration::ZERO,
        };
        let now = crate::unix_now();
        let (store, name) = (self.store.clone(), self.destination.name.clone());
        let Ok(Ok(pending)) = tokio::task::spawn_blocking(move || store.commitments(&name)).await
        else {
            return;
        };
        if pending.is_empty() {
            return;
        }
        let expired: Vec<(String, store::outbox::Commitment)> = pending
            .into_iter()
            .filter(|(_, c)| now.saturating_sub(c.requested_at) >= timeout.as_secs())
            .collect();
        if expired.is_empty() {
            return;
        }
        // Attempts each instance will have spent once this expiry counts (it counts like a
        // failed delivery, and the instance goes again after the retry backoff).
        let attempts = expired
            .iter()
            .flat_map(|(_, c)| c.items.iter().map(|i| i.entry.attempts + 1))
            .max()
            .unwrap_or(0);
        let alert = (attempts >= COMMITMENT_ALERT_AFTER).then(|| {
            let wait = match &self.destination.kind {
                config::DestinationKind::Dicom(d) => d.commitment_wait.as_secs(),
                config::DestinationKind::DicomWeb(_) => 0,
            };
            format!(
                "no Storage Commitment report for {attempts} attempts in a row; nothing sent there becomes evictable. The PACS must open an association to this appliance's DICOM port to report, or report on ours: set commitment_wait_s (now {wait} s) and check its Storage Commitment settings for this AE"
            )
        });
        if let Some(a) = &alert {
            error!(destination = %self.destination.name, "{a}");
        }
        self.shared
            .status
            .lock()
            .expect("status lock")
            .commitment_alert = alert;
        let ops: Vec<QueueOp> = expired
            .into_iter()
            .map(|(txn, c)| {
                warn!(destination = %self.destination.name, transaction = %txn, instances = c.items.len(), attempts, "no Storage Commitment report in time; sending the instances again after the retry backoff");
                QueueOp::CommitmentExpired {
                    transaction_uid: txn,
                    reason: format!(
                        "no Storage Commitment report within {} s; sent again",
                        timeout.as_secs()
                    ),
                }
            })
            .collect();
        if let Err(e) = self.store.outbox_apply(ops).await {
            warn!(destination = %self.destination.name, error = %e, "cannot requeue overdue commitments");
        }
    }

    pub async fn run(self) {
        let mut last_check = tokio::time::Instant::now();
        loop {
            if last_check.elapsed() >= COMMITMENT_CHECK {
                last_check = tokio::time::Instant::now();
                self.expire_commitments().await;
            }
            if self.shared.state() == State::Down {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.destination.probe_interval) => {}
                    _ = self.shared.wake.notified() => {}
                }
                if self.shared.state() != State::Down {
                    continue;
                }
                let probe = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    p = self.transport.probe() => p,
                };
                match probe {
                    Ok(()) => {
                        self.shared.set_state(State::Up, None);
                        self.shared.wake.notify_waiters();
                    }
                    Err(why) => {
                        debug!(destination = %self.destination.name, "probe failed: {why}");
                        let mut s = self.shared.status.lock().expect("status lock");
                        s.last_error = Some(why);
                    }
                }
            } else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep(COMMITMENT_CHECK) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_throttle_spaces_sends_to_the_rate() {
        // Paused time jumps ahead while the throttle sleeps: no real I/O here, so the clock
        // is entirely the test's.
        let t = Throttle::new(1000);
        let start = tokio::time::Instant::now();
        t.take(1000).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the first send goes at once"
        );
        t.take(500).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        t.take(1000).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        // After an idle spell the budget does not pile up: sends are spaced from now.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle_end = tokio::time::Instant::now();
        t.take(2000).await;
        t.take(1).await;
        assert_eq!(idle_end.elapsed(), Duration::from_secs(2));
    }
}
