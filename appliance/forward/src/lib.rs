//! Store-and-forward: delivers the instances the store queued for each destination, over
//! DICOM (C-STORE) or DICOMweb (STOW-RS), retrying by itself and surviving restarts.
//!
//! The queue itself lives in the store (`store::outbox`), written in the same transaction as
//! the index entry. This crate decides where instances go ([`routing::Rules`], handed to the
//! store as its router), and runs, per destination, `concurrency` workers that take ready
//! entries from the head of the queue, deliver them, and tell the store how each ended
//! ([`classify`] is the one place that decides). A destination that cannot be reached is
//! marked down and probed every `probe_interval` (C-ECHO, or an HTTP request), so its
//! recovery is noticed in seconds; instances are not penalised for it.

pub mod classify;
mod dicom;
mod recall;
pub mod routing;
pub mod stow;
mod tls;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use classify::Verdict;
pub use recall::Recaller;
pub use routing::{RoutingError, Rules};
pub use worker::Clock;

/// Builds every destination's transport (TLS material, STOW-RS client certificates and CA
/// bundles) and recall, as forwarding does at start, and returns every failure rather than
/// the first; nothing is connected to.
pub fn check(forward: &config::Forward, settings: &Settings) -> Vec<ForwardError> {
    let mut found: Vec<ForwardError> = forward
        .destinations
        .iter()
        .filter_map(|d| worker::Transport::new(d, settings).err())
        .collect();
    if let Err(e) = Recaller::from_config(forward, settings) {
        found.push(e);
    }
    found
}

/// What the forwarder needs to know of the appliance around it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our AE title, as the calling AE of associations we open.
    pub calling_ae: String,
    pub max_pdu: u32,
    /// Most bytes an instance may take when it must be decompressed for a destination.
    pub transcode_memory_limit: u64,
}

impl Settings {
    /// The settings `[dicom]` gives: our AE title, PDU size and transcode memory limit.
    pub fn from_dicom(dicom: &config::Dicom) -> Settings {
        Settings {
            calling_ae: dicom.ae_title.as_str().to_string(),
            max_pdu: dicom.max_pdu,
            transcode_memory_limit: dicom.transcode_memory_limit,
        }
    }
}

/// The peers that may send Storage Commitment reports to the listener: every DICOM
/// destination configured for commitment, by its AE title, from its host when a remote of
/// that AE title has `check_host`. `outpost` hands this to the listener, which knows nothing
/// of forwarding.
pub fn reporters(
    forward: &config::Forward,
    remotes: &[config::Remote],
) -> Vec<store::outbox::MayReport> {
    forward
        .destinations
        .iter()
        .filter_map(|d| match &d.kind {
            config::DestinationKind::Dicom(dicom) if dicom.storage_commitment.is_some() => {
                let checked = remotes
                    .iter()
                    .find(|r| r.ae_title.matches(dicom.ae_title.as_str()))
                    .filter(|r| r.check_host);
                Some(store::outbox::MayReport {
                    destination: d.name.clone(),
                    ae_title: dicom.ae_title.as_str().to_string(),
                    host: checked.map(|r| r.host.clone()),
                })
            }
            _ => None,
        })
        .collect()
}

/// Why forwarding cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("destination {destination:?}: {source}")]
    Stow {
        destination: String,
        #[source]
        source: stow::StowError,
    },
    #[error("destination {destination:?}: {message}")]
    Tls {
        destination: String,
        message: String,
    },
}

/// How a destination is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The last attempt delivered everything it tried.
    Up,
    /// Reachable, but the last attempt had instances refused or failing.
    Degraded,
    /// Unreachable or unavailable; probed until it answers.
    Down,
}

/// A destination's live state, for `outpost queue` and the status page.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationStatus {
    pub name: String,
    pub kind: &'static str,
    pub state: State,
    /// Unix seconds of the last state change.
    pub since: u64,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Outside its delivery window: only STAT and high priority instances go now.
    pub outside_window: bool,
    /// Held by the power policy (on battery with the link down): only STAT and high
    /// priority instances go now.
    pub held_on_battery: bool,
    /// Raised after Storage Commitment transactions expired unreported a few times in a
    /// row: the PACS probably cannot reach the listener. What to do, in words.
    pub commitment_alert: Option<String>,
}

/// Shared between a destination's workers, its prober and the status readers.
pub(crate) struct Shared {
    pub status: Mutex<DestinationStatus>,
    /// Entries a worker holds (leased in memory).
    pub held: Mutex<std::collections::HashSet<store::outbox::QueueKey>>,
    /// Wakes idle workers (the prober saw the destination come back, or a person asked).
    pub wake: tokio::sync::Notify,
    /// Set by the power policy: on battery, routine work for this destination waits.
    pub battery_hold: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn state(&self) -> State {
        self.status.lock().expect("status lock").state
    }

    pub fn set_state(&self, state: State, error: Option<String>) {
        let mut s = self.status.lock().expect("status lock");
        if s.state != state {
            s.since = unix_now();
            match state {
                State::Down => tracing::warn!(
                    destination = %s.name,
                    error = error.as_deref().unwrap_or(""),
                    "destination is down; probing it until it answers"
                ),
                State::Up if s.state == State::Down => {
                    tracing::info!(destination = %s.name, "destination is back up")
                }
                _ => {}
            }
            s.state = state;
            if state == State::Up {
                // The error described an outage that is over; stale text next to "up"
                // would send a technician chasing it.
                s.last_error = None;
            }
        }
        if error.is_some() {
            s.last_error = error;
        }
    }
}

/// The running forwarder: one set of workers per destination.
pub struct Forwarder {
    destinations: Vec<Arc<Shared>>,
    /// The workers and probers; waited for by [`Forwarder::wait`], which any holder may
    /// call (no `Arc::try_unwrap` that skips the wait while a clone is alive).
    tasks: TaskTracker,
}

impl Forwarder {
    /// Starts the workers of every destination. They stop when `shutdown` is cancelled.
    pub fn spawn(
        store: Store,
        forward: &config::Forward,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Result<Forwarder, ForwardError> {
        Forwarder::spawn_with_clock(store, forward, settings, shutdown, Clock::System)
    }

    /// [`Forwarder::spawn`] with the clock that decides when retries are due (tests move a
    /// manual one to see backoff without waiting).
    pub fn spawn_with_clock(
        store: Store,
        forward: &config::Forward,
        settings: Settings,
        shutdown: CancellationToken,
        clock: Clock,
    ) -> Result<Forwarder, ForwardError> {
        let tasks = TaskTracker::new();
        let mut destinations = Vec::new();
        for d in &forward.destinations {
            let transport = Arc::new(worker::Transport::new(d, &settings)?);
            let shared = Arc::new(Shared {
                status: Mutex::new(DestinationStatus {
                    name: d.name.clone(),
                    kind: match d.kind {
                        config::DestinationKind::Dicom(_) => "dicom",
                        config::DestinationKind::DicomWeb(_) => "dicomweb",
                    },
                    state: State::Up,
                    since: unix_now(),
                    last_error: None,
                    delivered: 0,
                    retried: 0,
                    dead_lettered: 0,
                    outside_window: false,
                    held_on_battery: false,
                    commitment_alert: None,
                }),
                held: Mutex::new(Default::default()),
                wake: tokio::sync::Notify::new(),
                battery_hold: std::sync::atomic::AtomicBool::new(false),
            });
            let throttle = d
                .bandwidth_bytes_per_s
                .map(|rate| Arc::new(worker::Throttle::new(rate)));
            for n in 0..d.concurrency {
                let w = worker::Worker {
                    store: store.clone(),
                    destination: d.clone(),
                    transport: transport.clone(),
                    shared: shared.clone(),
                    shutdown: shutdown.clone(),
                    clock: clock.clone(),
                    throttle: throttle.clone(),
                };
                tasks.spawn(async move { w.run(n).await });
            }
            let prober = worker::Prober {
                store: store.clone(),
                destination: d.clone(),
                transport,
                shared: shared.clone(),
                shutdown: shutdown.clone(),
            };
            tasks.spawn(async move { prober.run().await });
            destinations.push(shared);
        }
        Ok(Forwarder {
            destinations,
            tasks,
        })
    }

    /// Every destination's live state.
    pub fn status(&self) -> Vec<DestinationStatus> {
        self.destinations
            .iter()
            .map(|d| d.status.lock().expect("status lock").clone())
            .collect()
    }

    /// Wakes a destination's workers and prober now (after `retry`, `resume`).
    pub fn wake(&self, name: &str) {
        for d in &self.destinations {
            if d.status.lock().expect("status lock").name == name {
                d.wake.notify_waiters();
            }
        }
    }

    /// Holds routine forwarding (everything below high priority) to the named destinations
    /// while the appliance runs on battery: their link was down, and when it answers again the
    /// battery's remaining runtime goes to urgent studies first. Destinations not named are
    /// released (and woken, so their routine work goes at once).
    pub fn hold_on_battery(&self, destinations: &[String]) {
        for d in &self.destinations {
            let name = d.status.lock().expect("status lock").name.clone();
            let hold = destinations.contains(&name);
            let was = d
                .battery_hold
                .swap(hold, std::sync::atomic::Ordering::SeqCst);
            if was && !hold {
                d.wake.notify_waiters();
            }
        }
    }

    /// Waits for the workers to stop (after the shutdown token was cancelled), at most
    /// `deadline`; a delivery still running then is abandoned, and its entries are
    /// delivered again after the restart.
    pub async fn wait(&self, deadline: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }
}

pub(crate) use store::layout::unix_now;

/// A destination's retry policy as the queue settles by it ([`store::settle::settle`]): the
/// one conversion from the configuration's terms.
pub fn backoff(r: &config::RetryPolicy) -> store::settle::Backoff {
    store::settle::Backoff {
        initial_ms: r.initial.as_millis() as u64,
        multiplier_milli: (r.multiplier * 1000.0).round() as u32,
        max_ms: r.max.as_millis() as u64,
        max_attempts: r.max_attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_commitment_refusal_and_a_failed_delivery_wait_the_same_backoff() {
        // Two formulas worked out the same backoff: the worker's, in seconds from the
        // configuration, and the store's for Storage Commitment, from a multiplier kept in
        // thousandths and truncated on the way (2.3 became 2.299). With retry_multiplier =
        // 2.3, an instance the PACS would not commit to came back sooner than one it failed
        // to store, at the same attempt. Both now settle by one Backoff, rounded once.
        let policy = config::RetryPolicy {
            initial: Duration::from_secs(10),
            multiplier: 2.3,
            max: Duration::from_secs(3600),
            max_attempts: None,
        };
        let b = backoff(&policy);
        assert_eq!(b.multiplier_milli, 2300);
        // 10 s × 2.3² after the third failure.
        assert_eq!(b.delay_ms(3), 52_900);
    }
}
