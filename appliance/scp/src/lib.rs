//! The DICOM listener: who may associate, what is negotiated, and the services behind it
//! (Verification, Storage, Query/Retrieve FIND/MOVE/GET with C-CANCEL) over the archive.
//!
//! [`run`] takes already-bound listeners, the services' dependencies and a shutdown token, so
//! tests start it on `127.0.0.1:0`. It knows nothing of forwarding or of the process around it.
//!
//! One task per association; an association's errors end that association only. Every
//! refusal is given in DICOM terms (A-ASSOCIATE-RJ, A-ABORT, a failure status) with a log line
//! that says why in plain words.

mod accept;
mod binding;
mod commitment;
mod find;
mod handshake;
mod negotiate;
mod pending;
mod policy;
mod reader;
mod retrieve;
mod session;
mod statuses;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use accept::PortKind;
pub use negotiate::is_storage_class;

/// What the services need.
pub struct Services {
    pub config: config::Dicom,
    pub store: store::Store,
    pub audit: audit::Audit,
    /// Present when `[dicom.tls]` is configured.
    pub tls: Option<tls::TlsConfigs>,
    /// Fetches back instances evicted from the cache, when a source is configured.
    pub recall: Option<std::sync::Arc<dyn store::Recall>>,
    /// Who may send Storage Commitment reports (N-EVENT-REPORT), and for which destination;
    /// anyone else's report is refused.
    pub reporters: Vec<store::outbox::MayReport>,
}

/// The bound listening sockets.
pub struct Listeners {
    pub plain: TcpListener,
    pub tls: Option<TcpListener>,
}

/// How the listener stopped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stopped {
    /// Associations still running at the end of the grace period, aborted.
    pub aborted: usize,
}

/// Serves associations until `shutdown` is cancelled, then stops accepting, lets running
/// associations finish for up to `config.shutdown_grace`, aborts the rest and returns.
pub async fn run(
    listeners: Listeners,
    services: Arc<Services>,
    shutdown: CancellationToken,
) -> Stopped {
    let admission = accept::Admission {
        slots: accept::Slots {
            general: Arc::new(Semaphore::new(services.config.max_associations)),
            upstream: Arc::new(Semaphore::new(accept::UPSTREAM_RESERVE)),
        },
        pending: Arc::default(),
        hosts: Arc::new(policy::HostCache::new(&services)),
    };
    // `check_host` names are resolved off the accept path (see `policy::HostCache`).
    let resolver = {
        let hosts = admission.hosts.clone();
        let services = services.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            // A lookup in progress must not hold up the stop.
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = hosts.refresh(&services, stop.clone()) => {}
            }
        })
    };
    let tracker = TaskTracker::new();
    // Cancelled at the end of the grace period: associations still running abort.
    let force = CancellationToken::new();
    let mut accepting = vec![tokio::spawn(accept::accept_loop(
        listeners.plain,
        PortKind::Plain,
        services.clone(),
        admission.clone(),
        tracker.clone(),
        force.clone(),
        shutdown.clone(),
    ))];
    if let Some(tls) = listeners.tls {
        accepting.push(tokio::spawn(accept::accept_loop(
            tls,
            PortKind::Tls,
            services.clone(),
            admission.clone(),
            tracker.clone(),
            force.clone(),
            shutdown.clone(),
        )));
    }
    shutdown.cancelled().await;
    for a in accepting {
        let _ = a.await;
    }
    let _ = resolver.await;
    tracker.close();
    let running = tracker.len();
    if running > 0 {
        info!(
            associations = running,
            grace = ?services.config.shutdown_grace,
            "stopped accepting; waiting for running associations to finish"
        );
    }
    let started = Instant::now();
    let mut stopped = Stopped::default();
    if tokio::time::timeout(services.config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        stopped.aborted = tracker.len();
        warn!(
            associations = stopped.aborted,
            "grace period over; aborting associations still running (their unacknowledged instances were never acknowledged, so nothing is lost)"
        );
        force.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }
    info!(elapsed = ?started.elapsed(), "DICOM listener stopped");
    stopped
}
