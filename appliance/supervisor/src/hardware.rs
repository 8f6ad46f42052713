//! Watching the hardware: runs the RAID, data-volume, SMART and UPS monitors on their own
//! intervals, hands their readings to the policy, and carries out its decisions: alerts to
//! the log, the audit trail, `outpost status` and the webhook; holding ingest or routine
//! forwarding; an early checkpoint; and the request to power off, which the supervisor acts on.
//! Each decision is also an [`api::Event`].
//!
//! Monitors never touch the ingest path: each reads its source on the blocking pool or over
//! its own connection and only stores what it read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::{now_ms, unix_now};

use audit::{Audit, Event, EventKind, Outcome};
use policy::{Decision, Now, Policy, Readings, Severity};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The hardware's state for `outpost status`, as the API carries it.
pub type Snapshot = api::Hardware;
use api::{Section, UpsSection};

/// The running monitors (their tasks are on the supervisor's tracker).
pub(crate) struct Hardware {
    pub snapshot: Arc<Mutex<Snapshot>>,
    /// The UPS connection, shared with the power-off for the outlet-off command.
    pub ups: Option<Arc<tokio::sync::Mutex<ups::Ups>>>,
}

/// What the policy's decisions act on.
pub(crate) struct Effects {
    pub store: store::Store,
    pub forwarder: Option<Arc<forward::Forwarder>>,
    pub audit: Audit,
    /// Receives the reason once the policy decides to power off.
    pub power_off: mpsc::Sender<String>,
    /// Where each decision is told as an [`api::Event`].
    pub events: broadcast::Sender<api::Event>,
}

/// Starts every configured monitor, the webhook sender and the policy loop on `tasks`;
/// each ends when `stop` is cancelled.
pub(crate) fn start(
    c: &config::Config,
    effects: Effects,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Hardware {
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
            tasks,
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
        tasks,
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
        tasks,
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

    let webhook = crate::alerts::start(c, tasks, stop.clone());
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
    Hardware { snapshot, ups }
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
    webhook: Option<Arc<crate::alerts::Webhook>>,
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
        announce(&d, &effects.audit, webhook.as_deref(), &effects.events);
        if d.hold_ingest != held {
            match &d.hold_ingest {
                Some(why) => error!("refusing new instances: {why}"),
                None => info!("accepting new instances again"),
            }
            effects.store.hold_ingest(d.hold_ingest.clone());
            let _ = effects.events.send(api::Event::IngestHeld {
                reason: d.hold_ingest.clone(),
            });
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
            let _ = effects.events.send(api::Event::ForwardingHeld {
                destinations: d.hold_forwarding.clone(),
            });
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
            // Asked once: the supervisor takes the first request and begins to stop.
            if effects.power_off.try_send(why.clone()).is_ok() {
                let _ = effects
                    .events
                    .send(api::Event::PowerOffRequested { reason: why });
            }
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
fn announce(
    d: &Decision,
    audit: &Audit,
    webhook: Option<&crate::alerts::Webhook>,
    events: &broadcast::Sender<api::Event>,
) {
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
        crate::alerts::post(webhook, "raised", a);
        let _ = events.send(api::Event::AlertRaised { alert: a.clone() });
    }
    for a in &d.cleared {
        info!(alert = %a.key, "resolved: {}", a.message);
        audit.record(
            Event::new(EventKind::AlertCleared, Outcome::Success)
                .detail(format!("resolved: {}", a.message)),
        );
        crate::alerts::post(webhook, "cleared", a);
        let _ = events.send(api::Event::AlertCleared { alert: a.clone() });
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
