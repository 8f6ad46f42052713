//! Watching the hardware: runs the RAID, data-volume, SMART and UPS monitors on their own
//! intervals, hands their readings to the policy, and carries out its decisions: alerts to
//! the log, the audit trail, `outpost status` and the webhook; holding ingest or routine
//! forwarding; an early checkpoint; and the request to power off, which `serve` acts on.
//!
//! Monitors never touch the ingest path: each reads its source on the blocking pool or over
//! its own connection and only stores what it read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use audit::{Audit, Event, EventKind, Outcome};
use policy::{Alert, Decision, Now, Policy, Readings, Severity};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The hardware's state for `outpost status`, as the API carries it.
pub type Snapshot = api::Hardware;
use api::{Section, UpsSection};

/// The running monitors.
pub struct Hardware {
    pub snapshot: Arc<Mutex<Snapshot>>,
    /// The UPS connection, shared with `serve` for the outlet-off command.
    pub ups: Option<Arc<tokio::sync::Mutex<ups::Ups>>>,
    tasks: TaskTracker,
}

impl Hardware {
    /// Waits for the monitors and the webhook sender to stop (after `stop` was cancelled).
    pub async fn wait(&self, deadline: Duration) {
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("hardware monitors did not stop in time");
        }
    }
}

/// What the policy's decisions act on.
pub struct Effects {
    pub store: store::Store,
    pub forwarder: Option<Arc<forward::Forwarder>>,
    pub audit: Audit,
    /// Receives the reason once the policy decides to power off.
    pub power_off: mpsc::Sender<String>,
}

/// Starts every configured monitor and the policy loop.
pub fn start(c: &config::Config, effects: Effects, stop: CancellationToken) -> Hardware {
    let tasks = TaskTracker::new();
    let readings = Arc::new(Mutex::new(Readings::default()));
    let snapshot = Arc::new(Mutex::new(Snapshot::default()));
    let kick = Arc::new(Notify::new());
    let h = &c.health;

    let outlet = Outlet {
        readings: readings.clone(),
        snapshot: snapshot.clone(),
        kick: kick.clone(),
        stop: stop.clone(),
    };
    if h.raid {
        let sources = health::raid::RaidSources {
            mdstat: h.mdstat.clone(),
            sysfs_block: h.sysfs_block.clone(),
            mdadm_dir: Some(h.helper_dir.clone()),
        };
        sample_on_interval(
            &tasks,
            outlet.clone(),
            "the RAID monitor",
            h.raid_interval,
            move || health::raid::sample(&sources).map_err(|e| e.to_string()),
            |r, s, v| {
                set(&mut s.raid, &v);
                r.raid = Some(v);
            },
        );
    }
    let path = c.storage.data_dir.clone();
    sample_on_interval(
        &tasks,
        outlet.clone(),
        "the volume monitor",
        h.volume_interval,
        move || health::volume::sample(&path).map_err(|e| e.to_string()),
        |r, s, v| {
            set(&mut s.volume, &v);
            r.volume = Some(v);
        },
    );
    let (dir, max_age) = (h.helper_dir.clone(), h.smart_max_age);
    sample_on_interval(
        &tasks,
        outlet,
        "the SMART monitor",
        h.smart_interval,
        move || health::smart::sample_dir(&dir, max_age).map_err(|e| e.to_string()),
        |r, s, v| {
            set(&mut s.smart, &v);
            r.smart = Some(v);
        },
    );
    let ups = c.ups.as_ref().map(|u| {
        let device = ups::Ups::new(ups::Settings {
            transport: u.transport.clone(),
            unit_id: u.unit_id,
            profile: u.profile.clone(),
            timeout: u.timeout,
        });
        let name = device.describe();
        readings.lock().expect("readings lock").ups_name = name.clone();
        publish(&snapshot, |s| {
            s.ups = Some(UpsSection {
                name: name.clone(),
                reading: None,
                sampled_at: 0,
            })
        });
        let device = Arc::new(tokio::sync::Mutex::new(device));
        let (shared, readings, snapshot, kick, stop) = (
            device.clone(),
            readings.clone(),
            snapshot.clone(),
            kick.clone(),
            stop.clone(),
        );
        let interval = u.poll_interval;
        info!(ups = %name, "watching the UPS");
        tasks.spawn(async move {
            let mut last_state = None;
            loop {
                // A read takes at most about two request timeouts; a stop does not wait.
                let reading = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = async { shared.lock().await.read().await } => r,
                };
                if last_state != Some(reading.state) {
                    info!(ups = %name, state = ?reading.state, runtime_s = reading.runtime_s, error = reading.error.as_deref().unwrap_or(""), "UPS state");
                    last_state = Some(reading.state);
                }
                publish(&snapshot, |s| {
                    if let Some(u) = &mut s.ups {
                        u.reading = Some(reading.clone());
                        u.sampled_at = unix_now();
                    }
                });
                readings.lock().expect("readings lock").ups = Some(reading);
                kick.notify_one();
                if sleep_or_stop(interval, &stop).await {
                    return;
                }
            }
        });
        device
    });

    let webhook = c.alerts.webhook.clone().map(|url| {
        let queue = Arc::new(Outbox::default());
        let appliance = c.dicom.ae_title.as_str().to_string();
        tasks.spawn(send_webhooks(
            url,
            c.alerts.webhook_timeout,
            appliance,
            queue.clone(),
            stop.clone(),
        ));
        queue
    });
    let data_arrays = match h.data_arrays.clone() {
        Some(listed) => listed,
        None => match health::volume::md_arrays_under(
            &c.storage.data_dir,
            std::path::Path::new("/sys/dev/block"),
        ) {
            Some(found) => found,
            None => {
                warn!(
                    data_dir = %c.storage.data_dir.display(),
                    "cannot tell which md arrays hold the data volume (its file system reports no block device sysfs knows); any failed array stops ingest. Name them in [health] data_arrays"
                );
                vec!["*".to_string()]
            }
        },
    };
    if data_arrays.is_empty() {
        info!(
            "the data volume is not on an md array; a failed array raises an alert but does not stop ingest"
        );
    } else {
        info!(arrays = ?data_arrays, "a failure of these md arrays stops ingest");
    }
    publish(&snapshot, |s| s.data_arrays = data_arrays.clone());
    // The disks a hung sync may be waiting on; when sysfs cannot tell, the alert says so.
    let data_disks =
        health::volume::disks_under(&c.storage.data_dir, std::path::Path::new("/sys/dev/block"))
            .unwrap_or_default();
    let settings = policy::Settings {
        shutdown_below: c.ups.as_ref().map(|u| u.shutdown_below).unwrap_or_default(),
        debounce: c.ups.as_ref().map(|u| u.debounce).unwrap_or_default(),
        bays: h.bays.clone(),
        min_free_bytes: c.storage.min_free_bytes,
        min_free_inodes_percent: h.min_free_inodes_percent,
        data_arrays,
        data_disks: data_disks.clone(),
    };
    tasks.spawn(run_policy(
        Policy::new(settings),
        data_disks,
        readings,
        snapshot.clone(),
        kick,
        effects,
        webhook,
        stop,
    ));
    Hardware {
        snapshot,
        ups,
        tasks,
    }
}

/// Where a monitor's readings go: the policy's input, the status snapshot, and a nudge to
/// the policy loop; `stop` ends the monitor.
#[derive(Clone)]
struct Outlet {
    readings: Arc<Mutex<Readings>>,
    snapshot: Arc<Mutex<Snapshot>>,
    kick: Arc<Notify>,
    stop: CancellationToken,
}

/// Runs a monitor whose read blocks (files, `statvfs`) every `interval` on the blocking pool
/// through a [`Sampler`], and files each result with `file` into the readings and the
/// snapshot.
fn sample_on_interval<T: Send + 'static>(
    tasks: &TaskTracker,
    outlet: Outlet,
    what: &'static str,
    interval: Duration,
    read: impl Fn() -> Result<T, String> + Clone + Send + 'static,
    file: fn(&mut Readings, &mut Snapshot, Result<T, String>),
) {
    tasks.spawn(async move {
        let mut sampler = Sampler::new(what);
        loop {
            let r = sampler.run(read.clone()).await;
            {
                let mut readings = outlet.readings.lock().expect("readings lock");
                let mut snapshot = outlet.snapshot.lock().expect("snapshot lock");
                file(&mut readings, &mut snapshot, r);
            }
            outlet.kick.notify_one();
            if sleep_or_stop(interval, &outlet.stop).await {
                return;
            }
        }
    });
}

/// Debounce periods end between samples, so the policy also looks once a second.
const POLICY_TICK: Duration = Duration::from_secs(1);

async fn run_policy(
    mut policy: Policy,
    data_disks: Vec<String>,
    readings: Arc<Mutex<Readings>>,
    snapshot: Arc<Mutex<Snapshot>>,
    kick: Arc<Notify>,
    effects: Effects,
    webhook: Option<Arc<Outbox>>,
    stop: CancellationToken,
) {
    let mut held: Option<String> = None;
    let mut forwarding_held: Vec<String> = Vec::new();
    // Debouncing runs on this clock, which never steps.
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = kick.notified() => {}
            _ = tokio::time::sleep(POLICY_TICK) => {}
        }
        let current = {
            let mut r = readings.lock().expect("readings lock");
            r.links_down = effects
                .forwarder
                .as_ref()
                .map(|f| {
                    f.status()
                        .into_iter()
                        .filter(|d| d.state == forward::State::Down)
                        .map(|d| d.name)
                        .collect()
                })
                .unwrap_or_default();
            // Read at every evaluation (a lock and a clock read): the store's syncs are the
            // first to notice a hung disk, before any monitor's sample.
            r.disk_wait = effects
                .store
                .pending_sync()
                .map(|p| disk_wait(p, &data_disks));
            r.clone()
        };
        let now = Now {
            monotonic_ms: started.elapsed().as_millis() as u64,
            unix_ms: now_ms(),
        };
        let d = policy.evaluate(&current, now);
        announce(&d, &effects.audit, webhook.as_deref());
        if d.hold_ingest != held {
            match &d.hold_ingest {
                Some(why) => error!("refusing new instances: {why}"),
                None => info!("accepting new instances again"),
            }
            effects.store.hold_ingest(d.hold_ingest.clone());
            held = d.hold_ingest.clone();
        }
        if d.hold_forwarding != forwarding_held {
            if let Some(f) = &effects.forwarder {
                f.hold_on_battery(&d.hold_forwarding);
            }
            if d.hold_forwarding.is_empty() {
                info!("routine forwarding resumes");
            } else {
                warn!(
                    destinations = ?d.hold_forwarding,
                    "on battery, and these links were down: their routine forwarding waits until mains returns; STAT and high priority studies still go"
                );
            }
            forwarding_held = d.hold_forwarding.clone();
        }
        if d.checkpoint {
            match effects.store.checkpoint().await {
                Ok(()) => info!("on battery: everything acknowledged is checkpointed"),
                Err(e) => error!(error = %e, "on battery: the checkpoint failed"),
            }
        }
        publish(&snapshot, |s| {
            s.alerts = d.active.clone();
            s.ingest_held = d.hold_ingest.clone();
            s.forwarding_held = d.hold_forwarding;
        });
        if let Some(why) = d.power_off {
            let _ = effects.power_off.try_send(why);
        }
    }
}

/// The policy's view of a running sync. Once it is old enough to be a stall, the kernel's
/// count of writes in flight on each data disk (a counter in sysfs, readable while the disk
/// hangs) says which one the write waits for.
fn disk_wait(p: store::PendingSync, data_disks: &[String]) -> policy::DiskWait {
    let busy_disks = if p.waited >= policy::SYNC_STALL {
        let sys_block = std::path::Path::new("/sys/block");
        data_disks
            .iter()
            .filter(|d| health::volume::writes_in_flight(d, sys_block).is_some_and(|n| n > 0))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    policy::DiskWait {
        waited: p.waited,
        operation: p.to_string(),
        busy_disks,
    }
}

/// Logs, audits and posts the alerts that were raised or cleared.
fn announce(d: &Decision, audit: &Audit, webhook: Option<&Outbox>) {
    for a in &d.raised {
        match a.severity {
            Severity::Critical => error!(alert = %a.key, "{}", a.message),
            Severity::Warning => warn!(alert = %a.key, "{}", a.message),
            Severity::Info => info!(alert = %a.key, "{}", a.message),
        }
        let outcome = match a.severity {
            Severity::Critical => Outcome::SeriousFailure,
            _ => Outcome::MinorFailure,
        };
        audit.record(Event::new(EventKind::AlertRaised, outcome).detail(a.message.clone()));
        post(webhook, "raised", a);
    }
    for a in &d.cleared {
        info!(alert = %a.key, "resolved: {}", a.message);
        audit.record(
            Event::new(EventKind::AlertCleared, Outcome::Success)
                .detail(format!("resolved: {}", a.message)),
        );
        post(webhook, "cleared", a);
    }
}

/// At most this many alerts wait for the webhook; beyond it the oldest are dropped, since
/// the log and the audit trail keep every alert anyway and the newest say the most.
const WEBHOOK_QUEUE: usize = 256;
/// Each alert is tried this many times (backoff 1 s doubling, about 8.5 minutes in all), then
/// given up, so one dead receiver does not hold the alerts behind it for ever.
const WEBHOOK_ATTEMPTS: u32 = 10;
const WEBHOOK_BACKOFF: store::settle::Backoff = store::settle::Backoff {
    initial_ms: 1_000,
    multiplier_milli: 2_000,
    max_ms: 256_000,
    max_attempts: Some(WEBHOOK_ATTEMPTS),
};
/// On the way out (a power-off), what is still queued gets this long in all.
const WEBHOOK_LAST_CALL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Notice {
    event: &'static str,
    alert: Alert,
}

/// The alerts waiting for the webhook, oldest first.
#[derive(Default)]
struct Outbox {
    queue: Mutex<VecDeque<Notice>>,
    added: Notify,
}

impl Outbox {
    fn push(&self, notice: Notice) {
        let mut q = self.queue.lock().expect("webhook queue lock");
        if q.len() >= WEBHOOK_QUEUE
            && let Some(dropped) = q.pop_front()
        {
            warn!(alert = %dropped.alert.key, "the webhook queue is full; the oldest alert reaches the log and the audit trail only");
        }
        q.push_back(notice);
        drop(q);
        self.added.notify_one();
    }

    fn pop(&self) -> Option<Notice> {
        self.queue.lock().expect("webhook queue lock").pop_front()
    }

    fn put_back(&self, notice: Notice) {
        self.queue
            .lock()
            .expect("webhook queue lock")
            .push_front(notice);
    }
}

fn post(webhook: Option<&Outbox>, event: &'static str, alert: &Alert) {
    if let Some(q) = webhook {
        q.push(Notice {
            event,
            alert: alert.clone(),
        });
    }
}

async fn post_one(
    client: &reqwest::Client,
    url: &str,
    appliance: &str,
    notice: &Notice,
    attempt: u32,
) -> store::settle::Verdict {
    let body = serde_json::json!({
        "appliance": appliance,
        "event": notice.event,
        "key": notice.alert.key,
        "severity": notice.alert.severity,
        "message": notice.alert.message,
        "since": notice.alert.since,
    });
    let key = &notice.alert.key;
    // Slack, Teams and Google Chat carry the webhook's secret in its path or query: only the
    // origin is ever logged.
    let webhook = origin(url);
    // What the answer means is `forward::classify`'s to say, as for every delivery; what
    // follows from it is `store::settle`'s (see `send_webhooks`).
    let verdict = match client.post(url).json(&body).send().await {
        Ok(r) => {
            let status = r.status();
            forward::classify::webhook(Some(status.as_u16()), status.as_str(), None)
        }
        Err(e) => forward::classify::webhook(None, &cause(e), None),
    };
    match &verdict {
        store::settle::Verdict::Delivered { .. } => {}
        store::settle::Verdict::DeadLetter { reason } => {
            warn!(%webhook, alert = %key, "the alert webhook refused the alert; not retrying it (check the webhook URL and its authorisation): {reason}")
        }
        other => {
            warn!(%webhook, alert = %key, attempt, "the alert webhook failed: {}", other.reason())
        }
    }
    verdict
}

/// `scheme://host[:port]` of a URL: what may be logged of a webhook.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => u.origin().ascii_serialization(),
        _ => "the configured webhook".into(),
    }
}

/// A reqwest error and its sources without the URL reqwest appends to its message (which
/// would carry a webhook's secret).
fn cause(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut out = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Posts alerts in order, retrying each with backoff until the receiver takes it (2xx),
/// refuses it for good, or [`WEBHOOK_ATTEMPTS`] are spent. On stop, what is queued gets one
/// more try within [`WEBHOOK_LAST_CALL`].
async fn send_webhooks(
    url: String,
    timeout: Duration,
    appliance: String,
    queue: Arc<Outbox>,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            error!(error = %cause(e), "cannot set up the alert webhook client; alerts go to the log and the audit trail only");
            return;
        }
    };
    'alerts: loop {
        let notice = loop {
            if let Some(n) = queue.pop() {
                break n;
            }
            tokio::select! {
                _ = stop.cancelled() => break 'alerts,
                _ = queue.added.notified() => {}
            }
        };
        let mut attempts = 0;
        loop {
            let verdict = post_one(&client, &url, &appliance, &notice, attempts + 1).await;
            let wait = match store::settle::settle(
                verdict,
                attempts,
                &WEBHOOK_BACKOFF,
                now_ms(),
                true,
            ) {
                store::settle::Decision::Ack { .. } => continue 'alerts,
                store::settle::Decision::Dead { reason } => {
                    warn!(alert = %notice.alert.key, "giving up on posting this alert ({reason}); it is in the log and the audit trail");
                    continue 'alerts;
                }
                store::settle::Decision::Retry {
                    not_before_ms,
                    attempts: made,
                    ..
                } => {
                    attempts = made;
                    Duration::from_millis(not_before_ms.saturating_sub(now_ms()))
                }
                // A webhook's verdicts are never "unreachable" nor about a stored file; were
                // that to change, the alert is not held for ever.
                store::settle::Decision::Leave { .. } | store::settle::Decision::Drop => {
                    continue 'alerts;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    queue.put_back(notice);
                    break 'alerts;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    let last_call = async {
        while let Some(n) = queue.pop() {
            post_one(&client, &url, &appliance, &n, 0).await;
        }
    };
    if tokio::time::timeout(WEBHOOK_LAST_CALL, last_call)
        .await
        .is_err()
    {
        warn!("alerts still queued for the webhook at the stop were not all posted");
    }
}

fn set<T: Clone>(section: &mut Section<T>, r: &Result<T, String>) {
    match r {
        Ok(v) => {
            section.reading = Some(v.clone());
            section.error = None;
        }
        Err(e) => section.error = Some(e.clone()),
    }
    section.sampled_at = unix_now();
}

fn publish(snapshot: &Mutex<Snapshot>, change: impl FnOnce(&mut Snapshot)) {
    change(&mut snapshot.lock().expect("snapshot lock"));
}

/// A read of a file system on a dying disk can hang; the monitor then reports that instead
/// of going silent.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one monitor's reads on the blocking pool, one at a time: while a read hangs (a
/// statvfs stuck on a dying disk), the next sample waits for it instead of starting another
/// thread, so a hung disk cannot fill the pool that ingest and queries need.
struct Sampler<T> {
    what: &'static str,
    pending: Option<(tokio::task::JoinHandle<Result<T, String>>, Instant)>,
}

impl<T: Send + 'static> Sampler<T> {
    fn new(what: &'static str) -> Sampler<T> {
        Sampler {
            what,
            pending: None,
        }
    }

    async fn run(
        &mut self,
        f: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let (mut handle, started) = match self.pending.take() {
            Some(still_running) => still_running,
            None => (tokio::task::spawn_blocking(f), Instant::now()),
        };
        match tokio::time::timeout(SAMPLE_TIMEOUT, &mut handle).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("{} failed: {e}", self.what)),
            Err(_) => {
                let waited = started.elapsed().as_secs();
                self.pending = Some((handle, started));
                Err(format!(
                    "{} has had no answer for {waited} s (a hung disk or file system?)",
                    self.what
                ))
            }
        }
    }
}

/// Sleeps for `d`; true when `stop` was cancelled meanwhile.
async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Everything the tracing subscriber writes, for grepping.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// An HTTP server on 127.0.0.1 that reads each request whole and answers 500.
    async fn failing_server() -> u16 {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = server.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        port
    }

    #[test]
    fn a_failing_webhook_never_logs_its_secret_token() {
        // Slack, Teams and Google Chat put the webhook's secret in the URL's path or query.
        // A failed post logged reqwest's error, whose text ends in " for url (<the full
        // URL>)", so every outage of the receiver wrote the token to the journal, which sites
        // ship to log aggregation where anyone with read access could post as the appliance.
        // The log must still say which receiver failed (scheme, host, port) and why.
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let answers_500 = runtime.block_on(async {
            let answers_500 = failing_server().await;
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let notice = Notice {
                event: "raised",
                alert: Alert {
                    key: "raid.md0".into(),
                    severity: Severity::Critical,
                    message: "md0 has failed".into(),
                    since: 1,
                },
            };
            for port in [answers_500, refused] {
                let url =
                    format!("http://127.0.0.1:{port}/services/T000/B000/SECRETTOKEN?token=SECRET2");
                let posted = post_one(&client, &url, "outpost-test", &notice, 1).await;
                assert!(
                    matches!(posted, store::settle::Verdict::Retry { .. }),
                    "port {port}: {posted:?}"
                );
            }
            answers_500
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        for secret in ["SECRETTOKEN", "SECRET2", "/services/T000"] {
            assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
        }
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.iter().any(
                |l| l.contains(&format!("http://127.0.0.1:{answers_500}")) && l.contains("500")
            ),
            "the log does not say that 127.0.0.1:{answers_500} answered 500:\n{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("http://127.0.0.1:{refused}"))
                    && l.to_ascii_lowercase().contains("connection refused")),
            "the log does not say that 127.0.0.1:{refused} refused the connection:\n{text}"
        );
    }
}
