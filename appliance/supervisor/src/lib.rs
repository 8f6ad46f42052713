//! The running appliance. [`Supervisor::start`] opens the audit trail and the archive,
//! wires the DICOM listener, forwarding, cache upkeep, the hardware monitors and their
//! policy, and the control socket onto already-bound sockets, and returns [`Running`]:
//! [`Running::handle`] answers every API request (the control socket calls it through the
//! same [`Handler`]), [`Running::events`] says what happened, and [`Running::stop`] stops in
//! three steps: decide (the caller's signal, or [`Running::stopping`]: the power policy or
//! a dead listener), tell everyone (one cancellation token), wait with a deadline (one task
//! tracker), then the index writer's final flush, the clean-shutdown marker, and on a
//! power-off the UPS and the power-off command.
//!
//! Only this crate wires components together; the `outpost` binary parses its command line
//! and calls it, and `testkit` starts it in tests.

mod alerts;
mod cache;
mod clock;
mod control;
mod handle;
mod hardware;
mod marker;
mod power;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use audit::{Audit, Event, EventKind, Outcome};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use control::{ControlError, call, socket_path};
pub use handle::Handler;
pub use power::Done as PowerOffDone;

/// The listeners, bound by the caller (the binary binds the configured addresses with
/// [`Bound::bind`], tests bind `127.0.0.1:0`).
pub struct Bound {
    pub dicom: TcpListener,
    /// Required when the configuration has `[dicom.tls]`, refused otherwise.
    pub tls: Option<TcpListener>,
    /// The admin panel's HTTPS port; required when `[web] enabled`, refused otherwise.
    pub web: Option<TcpListener>,
}

impl Bound {
    /// Binds the configured DICOM ports.
    pub async fn bind(c: &config::Config) -> Result<Bound, StartError> {
        let d = &c.dicom;
        let dicom = TcpListener::bind((d.bind, d.port))
            .await
            .map_err(|source| StartError::Bind {
                what: format!(
                    "cannot listen on {}:{} (another DICOM service on the port? ports below 1024 need CAP_NET_BIND_SERVICE)",
                    d.bind, d.port
                ),
                source,
            })?;
        let tls = match &d.tls {
            None => None,
            Some(t) => Some(
                TcpListener::bind((d.bind, t.port))
                    .await
                    .map_err(|source| StartError::Bind {
                        what: format!("cannot listen for DICOM TLS on {}:{}", d.bind, t.port),
                        source,
                    })?,
            ),
        };
        let web = if c.web.enabled {
            Some(
                TcpListener::bind(c.web.listen)
                    .await
                    .map_err(|source| StartError::Bind {
                        what: format!(
                            "cannot listen for the admin panel on {} (ports below 1024 need CAP_NET_BIND_SERVICE)",
                            c.web.listen
                        ),
                        source,
                    })?,
            )
        } else {
            None
        };
        Ok(Bound { dicom, tls, web })
    }
}

/// A change to the store's settings, applied once before the store opens.
pub type AdjustStore = Box<dyn FnOnce(&mut store::StoreConfig) + Send>;

/// What tests change about a start; the binary uses the default.
pub struct Options {
    /// The clock forwarding retries run on.
    pub clock: forward::Clock,
    /// A change to the store's settings after they are derived from the configuration (for
    /// settings a test cannot express in TOML).
    pub adjust_store: Option<AdjustStore>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            clock: forward::Clock::System,
            adjust_store: None,
        }
    }
}

/// Why the appliance could not start. Each names what it was doing; the source says why.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A DICOM port could not be bound.
    #[error("{what}")]
    Bind {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// `[dicom.tls]` is configured and no TLS listener was bound, or the other way round.
    #[error("the TLS listener does not match the configuration ([dicom.tls] {})", if *.configured { "is set but no TLS port was bound" } else { "is not set but a TLS port was bound" })]
    TlsListener { configured: bool },
    #[error(
        "the admin panel's listener does not match the configuration ([web] enabled = {enabled})"
    )]
    WebListener { enabled: bool },
    #[error("opening the panel's accounts in {}", data_dir.display())]
    Accounts {
        data_dir: PathBuf,
        #[source]
        source: accounts::AccountError,
    },
    #[error("the admin panel's certificate")]
    WebCert(#[source] web::CertError),
    #[error("starting the admin panel")]
    Web(#[source] web::ServeError),
    /// The audit trail could not be opened.
    #[error("opening the audit trail")]
    Audit(#[source] audit::OpenError),
    /// The routing rules are invalid.
    #[error("{file}: [[forward.rule]]")]
    Rules {
        file: String,
        #[source]
        source: forward::RoutingError,
    },
    /// The archive could not be opened.
    #[error("opening the archive in {}", data_dir.display())]
    Store {
        data_dir: PathBuf,
        #[source]
        source: store::StoreError,
    },
    /// The DICOM TLS certificate or key could not be loaded.
    #[error("loading the DICOM TLS certificate and key")]
    Tls(#[source] scp::tls::TlsError),
    /// Recall from upstream could not be set up.
    #[error("setting up recall from upstream")]
    Recall(#[source] forward::ForwardError),
    /// Forwarding could not start.
    #[error("starting forwarding")]
    Forwarding(#[source] forward::ForwardError),
    /// The control socket could not be created.
    #[error("setting up the control socket")]
    Control(#[source] ControlError),
    /// The configuration failed the start-up validation (every problem, at once).
    #[error("{0}")]
    Invalid(Invalid),
    /// A start-up task failed (it panicked).
    #[error("opening the archive")]
    Task(#[source] tokio::task::JoinError),
}

/// Every problem the start-up validation found in a configuration, each with its causes.
#[derive(Debug, thiserror::Error)]
pub struct Invalid {
    pub file: String,
    pub problems: Vec<StartError>,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{n} problem{} in {}:",
            if n == 1 { "" } else { "s" },
            self.file
        )?;
        for p in &self.problems {
            write!(f, "  {p}")?;
            let mut source = std::error::Error::source(p);
            while let Some(s) = source {
                write!(f, ": {s}")?;
                source = s.source();
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Every check `serve` makes of a configuration before it opens anything, for `serve` and
/// `check-config` alike (one function, so the two cannot drift apart): the routing rules,
/// the DICOM TLS certificate and key (readable, parsed, matching), every destination's
/// transport (TLS material, STOW-RS clients) and recall. Reports every problem at once.
pub fn validate(c: &config::Config) -> Result<(), Invalid> {
    let mut problems: Vec<StartError> = forward::Rules::problems(&c.forward)
        .into_iter()
        .map(|source| StartError::Rules {
            file: c.source.clone(),
            source,
        })
        .collect();
    if let Some(tls) = &c.dicom.tls
        && let Err(e) = scp::tls::load(tls)
    {
        problems.push(StartError::Tls(e));
    }
    let settings = forward::Settings::from_dicom(&c.dicom);
    problems.extend(
        forward::check(&c.forward, &settings)
            .into_iter()
            .map(StartError::Forwarding),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            file: c.source.clone(),
            problems,
        })
    }
}

/// The store's settings from the configuration, with the forwarding rules as its router.
pub fn store_config(c: &config::Config) -> Result<store::StoreConfig, StartError> {
    let mut s = store::StoreConfig::new(&c.storage.data_dir);
    s.durability = match c.storage.durability {
        config::Durability::Full => store::Durability::Full,
        config::Durability::Relaxed { flush_interval } => {
            store::Durability::Relaxed { flush_interval }
        }
    };
    s.duplicates = match c.storage.duplicates {
        config::Duplicates::KeepFirst => store::DuplicatePolicy::KeepFirst,
        config::Duplicates::Overwrite => store::DuplicatePolicy::Overwrite,
    };
    s.patient_conflict = match c.storage.patient_conflict {
        config::PatientConflict::Quarantine => store::PatientConflictPolicy::Quarantine,
        config::PatientConflict::Reject => store::PatientConflictPolicy::Reject,
    };
    s.min_free_bytes = c.storage.min_free_bytes;
    s.index_cache_bytes = c.storage.index_cache_bytes as usize;
    s.cache = Some(store::CacheConfig {
        high_watermark: c.storage.high_watermark,
        low_watermark: c.storage.low_watermark,
        capacity_bytes: c.storage.capacity_bytes,
        protect_recent_s: store::PROTECT_RECENT_S,
    });
    if !c.forward.destinations.is_empty() {
        let rules = check_rules(c)?;
        s.router = Some(Arc::new(rules));
    }
    Ok(s)
}

/// The routing rules, checked against the remotes (also for `check-config`).
pub fn check_rules(c: &config::Config) -> Result<forward::Rules, StartError> {
    forward::Rules::new(&c.forward, &c.dicom.remotes).map_err(|source| StartError::Rules {
        file: c.source.to_string(),
        source,
    })
}

/// The audit trail's limits from the configuration.
pub fn audit_config(c: &config::Audit) -> audit::AuditConfig {
    audit::AuditConfig {
        rotate_bytes: c.rotate_bytes,
        retention_days: c.retention_days,
        max_bytes: Some(c.max_bytes),
        rejections_per_window: c.rejections_per_minute,
        window: Duration::from_secs(60),
    }
}

/// Why the appliance stops: the first step of a stop, decided by the caller or by the
/// supervisor itself ([`Running::stopping`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A signal from the service manager or a person (`SIGTERM`, `SIGINT`).
    Signal(&'static str),
    /// The power policy decided to power off, for this reason.
    PowerOff(String),
    /// The DICOM listener ended on its own.
    ListenerStopped,
}

impl StopReason {
    /// In the words the log, the audit trail and the clean-shutdown marker use.
    pub fn words(&self) -> &str {
        match self {
            StopReason::Signal(s) => s,
            StopReason::PowerOff(_) => "the UPS is running out",
            StopReason::ListenerStopped => "the DICOM listener stopped unexpectedly",
        }
    }
}

/// How a stop went.
#[derive(Debug)]
pub struct Stopped {
    pub reason: StopReason,
    /// The index writer flushed in time and the clean-shutdown marker was recorded.
    pub clean: bool,
    /// What the listener aborted at the end of its grace period.
    pub listener: scp::Stopped,
    /// After a power-off: what the UPS and the power-off command did.
    pub power_off: Option<PowerOffDone>,
}

impl Stopped {
    /// Whether the process should exit with success. After a power-off, only when the UPS
    /// took the outlet-off command or the power-off command worked: otherwise nothing will
    /// cut and restore power, and a failing exit makes the service manager start the service
    /// again (it powers off again while the UPS still says so, and serves once mains is
    /// back). When the UPS took the command, restarting meanwhile would only send it again
    /// and could postpone the cut. Any other stop succeeds only on a signal.
    pub fn success(&self) -> bool {
        match (&self.reason, &self.power_off) {
            (_, Some(done)) => done.outlets_off || done.command_ok,
            (StopReason::Signal(_), None) => true,
            (StopReason::PowerOff(_) | StopReason::ListenerStopped, None) => false,
        }
    }
}

/// How long forwarding gets, after it was told to stop, to finish a running delivery; one
/// still running then is abandoned, and its entries go again after the restart.
const FORWARD_STOP: Duration = Duration::from_secs(10);
/// How long the index writer gets for its final flush.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

/// The appliance with its archive open, not serving yet: the binary binds its ports only
/// after [`Supervisor::open`], so no caller reaches a port while start-up repair runs.
pub struct Supervisor {
    c: config::Config,
    clock: forward::Clock,
    audit: Audit,
    store: store::Store,
    /// Instances in the archive when it opened.
    instances: u64,
    /// What start-up repair could not finish, one sentence each.
    repair_alerts: Vec<String>,
}

impl Supervisor {
    /// Opens the archive and serves on `bound` with the configuration `c`.
    pub async fn start(c: config::Config, bound: Bound) -> Result<Running, StartError> {
        Supervisor::start_with(c, bound, Options::default()).await
    }

    /// [`Supervisor::start`] with what tests change.
    pub async fn start_with(
        c: config::Config,
        bound: Bound,
        options: Options,
    ) -> Result<Running, StartError> {
        Supervisor::open(c, options).await?.serve(bound).await
    }

    /// The first half of a start: the audit trail, the archive (with its start-up repair)
    /// and the clean-shutdown marker of the previous run.
    pub async fn open(c: config::Config, options: Options) -> Result<Supervisor, StartError> {
        // dicom-ul and reqwest may both link a rustls provider; name ours once, first.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        info!(config = %c.source, version = env!("CARGO_PKG_VERSION"), "starting outpost");
        // The same validation check-config runs, before anything is opened.
        validate(&c).map_err(StartError::Invalid)?;
        // The same warnings check-config prints, so a site that never ran it sees them too.
        for w in &c.warnings {
            warn!(file = %w.file, key = %w.key, "configuration: {}", w.message);
        }
        let audit =
            Audit::open_with(&c.audit.path, audit_config(&c.audit)).map_err(StartError::Audit)?;
        audit.record(
            Event::new(EventKind::ConfigurationLoaded, Outcome::Success)
                .detail(format!("configuration loaded from {}", c.source)),
        );

        notify::status("opening the archive");
        // A repair after a crash is quick (redb quick-repair, in-flight files only), but the
        // unit's start timeout should not decide that.
        notify::extend_timeout(Duration::from_secs(300));
        let data_dir = c.storage.data_dir.clone();
        let mut store_cfg = store_config(&c)?;
        // The trail lives on the data volume too; the free-space floor counts it.
        store_cfg.other_bytes = Some(audit.bytes_counter());
        if let Some(adjust) = options.adjust_store {
            adjust(&mut store_cfg);
        }
        let (store, opened) = tokio::task::spawn_blocking(move || store::Store::open(store_cfg))
            .await
            .map_err(StartError::Task)?
            .map_err(|source| StartError::Store {
                data_dir: data_dir.clone(),
                source,
            })?;
        match marker::take(&data_dir) {
            Ok(Some(previous)) => info!(
                stopped_at = previous.stopped_at,
                reason = %previous.reason,
                "the previous run stopped cleanly"
            ),
            Ok(None) if opened.instances > 0 => warn!(
                incomplete_removed = opened.reconciled.incomplete_removed,
                finished_indexed = opened.reconciled.finished_indexed,
                "the previous run did not stop cleanly (a power cut or a crash); the archive was checked and repaired"
            ),
            Ok(None) => {}
            Err(e) => warn!(
                error = %e,
                path = %data_dir.join("clean-shutdown.json").display(),
                "cannot take the clean-shutdown marker away"
            ),
        }
        info!(
            data_dir = %data_dir.display(),
            instances = opened.instances,
            open_ms = opened.open_time.as_millis() as u64,
            incomplete_removed = opened.reconciled.incomplete_removed,
            finished_indexed = opened.reconciled.finished_indexed,
            "archive open"
        );
        // Critical: each may leave an acknowledged instance out of the index until a later
        // start finishes it. The store logged each at error as it raised it (for `import` and
        // `verify` too); `outpost status` lists them for as long as this run lasts.
        let repair_alerts: Vec<String> = opened
            .reconciled
            .alerts
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(Supervisor {
            c,
            clock: options.clock,
            audit,
            store,
            instances: opened.instances,
            repair_alerts,
        })
    }

    /// The second half: everything runs, on `bound`.
    pub async fn serve(self, bound: Bound) -> Result<Running, StartError> {
        let Supervisor {
            c,
            clock,
            audit,
            store,
            instances,
            repair_alerts,
        } = self;
        if c.dicom.tls.is_some() != bound.tls.is_some() {
            return Err(StartError::TlsListener {
                configured: c.dicom.tls.is_some(),
            });
        }
        if c.web.enabled != bound.web.is_some() {
            return Err(StartError::WebListener {
                enabled: c.web.enabled,
            });
        }
        let data_dir = c.storage.data_dir.clone();
        let dicom = c.dicom.clone();
        let tls = dicom
            .tls
            .as_ref()
            .map(scp::tls::load)
            .transpose()
            .map_err(StartError::Tls)?;
        let plain_addr = bound
            .dicom
            .local_addr()
            .map_err(|source| StartError::Bind {
                what: "reading the DICOM listener's address".into(),
                source,
            })?;
        let tls_addr = bound
            .tls
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|source| StartError::Bind {
                what: "reading the DICOM TLS listener's address".into(),
                source,
            })?;
        let settings = forward::Settings::from_dicom(&dicom);
        let recall =
            forward::Recaller::from_config(&c.forward, &settings).map_err(StartError::Recall)?;
        let services = Arc::new(scp::Services {
            config: dicom.clone(),
            store: store.clone(),
            audit: audit.clone(),
            tls,
            recall,
            reporters: forward::reporters(&c.forward, &dicom.remotes),
        });

        // Told once, to everyone; every task below is on `tasks`, which `stop` waits for.
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (events, _) = broadcast::channel(256);
        let forwarder = if c.forward.destinations.is_empty() {
            None
        } else {
            let f = forward::Forwarder::spawn_with_clock(
                store.clone(),
                &c.forward,
                settings,
                stop.clone(),
                clock,
            )
            .map_err(StartError::Forwarding)?;
            info!(
                destinations = c.forward.destinations.len(),
                rules = c.forward.rules.len(),
                "forwarding started"
            );
            let f = Arc::new(f);
            let (waited, told) = (f.clone(), stop.clone());
            tasks.spawn(async move {
                told.cancelled().await;
                if !waited.wait(FORWARD_STOP).await {
                    warn!(
                        "forwarding did not stop within 10 s; unfinished deliveries will be repeated after the restart"
                    );
                }
            });
            Some(f)
        };
        let (power_tx, power_rx) = mpsc::channel::<String>(1);
        let hardware = hardware::start(
            &c,
            hardware::Effects {
                store: store.clone(),
                forwarder: forwarder.clone(),
                audit: audit.clone(),
                power_off: power_tx,
                events: events.clone(),
            },
            &tasks,
            stop.clone(),
        );
        tasks.spawn(cache::maintain(
            store.clone(),
            audit.clone(),
            events.clone(),
            stop.clone(),
        ));
        // Blocking, but brief and once: redb opens the file and reads it into memory.
        let accounts =
            accounts::Accounts::open(&data_dir).map_err(|source| StartError::Accounts {
                data_dir: data_dir.clone(),
                source,
            })?;
        if accounts.setup_token().is_some() {
            // Never the token itself: logs are shipped and read by more people than root.
            warn!(
                "no panel administrator exists yet; `outpost status` shows the one-time setup link"
            );
        }
        // Made (or loaded) before the handler, whose status shows its fingerprint.
        let panel = match bound.web {
            None => None,
            Some(web_listener) => {
                let operator = c
                    .web
                    .certificate
                    .as_ref()
                    .map(|w| (w.cert.as_path(), w.key.as_path()));
                let cert = web::cert::ensure(operator, &data_dir, c.web.listen.ip())
                    .map_err(StartError::WebCert)?;
                let addr = web_listener
                    .local_addr()
                    .map_err(|source| StartError::Bind {
                        what: "reading the admin panel listener's address".into(),
                        source,
                    })?;
                // The fingerprint is what an operator compares with the browser's warning.
                info!(
                    %addr,
                    sha256 = %cert.info.sha256,
                    self_signed = cert.info.self_signed,
                    "admin panel listening"
                );
                Some((addr, web_listener, cert))
            }
        };
        let panel_status = panel.as_ref().map(|(addr, _, cert)| api::Panel {
            address: format!("https://{addr}"),
            sha256: cert.info.sha256.clone(),
            self_signed: cert.info.self_signed,
            not_after: cert.info.not_after,
        });
        let panel = panel.map(|(_, l, cert)| (l, cert));
        let handler = Handler(Arc::new(handle::Core {
            store: store.clone(),
            forwarder: forwarder.clone(),
            hardware: hardware.snapshot.clone(),
            destinations: c
                .forward
                .destinations
                .iter()
                .map(|d| d.name.clone())
                .collect(),
            audit: audit.clone(),
            accounts: accounts.clone(),
            identity: handle::Identity {
                started_at: store::layout::unix_now(),
                ae_title: dicom.ae_title.as_str().to_string(),
                listening: std::iter::once(format!("DICOM {plain_addr}"))
                    .chain(tls_addr.map(|a| format!("DICOM TLS {a}")))
                    .collect(),
                data_dir: data_dir.display().to_string(),
                high_watermark: c.storage.high_watermark,
                low_watermark: c.storage.low_watermark,
                repair_alerts,
                min_free_bytes: c.storage.min_free_bytes,
                panel: panel_status,
            },
        }));
        // Bound only now that the index lock is ours: binding replaces a socket file left
        // behind, which must never be a running service's.
        let control_path = socket_path(&data_dir);
        let control_listener = control::bind(&control_path).map_err(StartError::Control)?;
        tasks.spawn(control::run(
            control_listener,
            handler.clone(),
            tasks.clone(),
            stop.clone(),
        ));
        if let Some((web_listener, cert)) = panel {
            let dispatcher = handler.clone();
            let routes = web::Panel {
                accounts: accounts.clone(),
                audit: audit.clone(),
                // The same dispatcher the control socket answers through.
                dispatch: Arc::new(move |request| {
                    let h = dispatcher.clone();
                    Box::pin(async move { h.answer(request).await })
                }),
            };
            web::spawn(web_listener, cert, routes, stop.clone(), &tasks)
                .map_err(StartError::Web)?;
        }
        let listener_alive = Arc::new(AtomicBool::new(true));
        let listener = {
            let (services, stop, alive) = (services, stop.clone(), listener_alive.clone());
            let listeners = scp::Listeners {
                plain: bound.dicom,
                tls: bound.tls,
            };
            tasks.spawn(async move {
                let stopped = scp::run(listeners, services, stop).await;
                alive.store(false, Ordering::SeqCst);
                stopped
            })
        };

        let ready = format!(
            "serving {} on {plain_addr}{}; {} instances",
            dicom.ae_title,
            tls_addr
                .map(|a| format!(" and TLS on {a}"))
                .unwrap_or_default(),
            instances
        );
        notify::ready(&ready);
        audit.record(
            Event::new(EventKind::ApplicationStart, Outcome::Success).detail(ready.clone()),
        );
        info!("{ready}");
        let _ = events.send(api::Event::Started { detail: ready });
        let watchdog = notify::watchdog_interval()
            .map(|interval| tokio::spawn(watchdog(interval, store.clone(), listener_alive)));

        Ok(Running {
            handler,
            events,
            stop,
            tasks,
            listener,
            listener_ended: None,
            power_off: power_rx,
            ups: hardware.ups,
            watchdog,
            config: c,
            control_path,
            local_addr: plain_addr,
            tls_addr,
        })
    }
}

/// Feeds the service manager's watchdog while the process itself is alive: the listener
/// accepts and the index writer answers. Hardware and upstream faults raise alerts instead.
async fn watchdog(interval: Duration, store: store::Store, alive: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(interval / 2);
    // Said once per hung disk, not at every tick.
    let mut said_hung = false;
    loop {
        tick.tick().await;
        if alive.load(Ordering::SeqCst) && store.ping().await {
            notify::watchdog();
            said_hung = false;
        } else if alive.load(Ordering::SeqCst)
            && let Some(p) = store
                .pending_sync()
                .filter(|p| p.waited >= policy::SYNC_STALL)
        {
            // The index writer waits on a hung disk. A restart cannot help (the kernel holds
            // the write, and the new process would hang on the same disk), so the process
            // stays up: the health policy has raised the alert naming the disk and refuses
            // new instances; queries go on.
            notify::watchdog();
            if !said_hung {
                said_hung = true;
                warn!(
                    waited_s = p.waited.as_secs(),
                    "the index writer waits on the data disk ({p}); keeping the service up, see the alert"
                );
            }
        } else {
            error!("withholding the watchdog ping: the listener or the index writer has stopped");
        }
    }
}

/// The running appliance.
pub struct Running {
    handler: Handler,
    events: broadcast::Sender<api::Event>,
    /// Cancelled once, in [`Running::stop`]: every task watches it.
    stop: CancellationToken,
    /// Every task the supervisor started (listener, forwarding's wait, monitors, policy,
    /// webhook, cache, control socket and its connections).
    tasks: TaskTracker,
    listener: JoinHandle<scp::Stopped>,
    /// The listener's end, when [`Running::stopping`] saw it first.
    listener_ended: Option<scp::Stopped>,
    /// The power policy's request to power off (its only sender is the policy loop).
    power_off: mpsc::Receiver<String>,
    ups: Option<Arc<tokio::sync::Mutex<ups::Ups>>>,
    /// Fed until the listener has stopped; not a tracked task, since it never ends itself.
    watchdog: Option<JoinHandle<()>>,
    config: config::Config,
    control_path: PathBuf,
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
}

impl Running {
    /// Answers one request: the one dispatcher every face goes through.
    pub async fn handle(&self, request: api::Request) -> api::Response {
        self.handler.handle(request).await
    }

    /// The dispatcher itself, for a face that runs on its own task (the control socket
    /// has one; the web panel will).
    pub fn handler(&self) -> Handler {
        self.handler.clone()
    }

    /// What happens from now on.
    pub fn events(&self) -> broadcast::Receiver<api::Event> {
        self.events.subscribe()
    }

    /// Resolves when the appliance itself decides to stop: the power policy asks for a
    /// power-off, or the DICOM listener ended. The caller then calls [`Running::stop`].
    pub async fn stopping(&mut self) -> StopReason {
        if self.listener_ended.is_some() {
            return StopReason::ListenerStopped;
        }
        tokio::select! {
            Some(why) = self.power_off.recv() => StopReason::PowerOff(why),
            r = &mut self.listener => {
                self.listener_ended = Some(r.unwrap_or_default());
                StopReason::ListenerStopped
            }
        }
    }

    /// The plain DICOM listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The DICOM TLS listener's address, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The archive.
    pub fn store(&self) -> &store::Store {
        &self.handler.0.store
    }

    /// Forwarding, when destinations are configured.
    pub fn forwarder(&self) -> Option<&forward::Forwarder> {
        self.handler.0.forwarder.as_deref()
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.handler.0.audit
    }

    /// Stops: tells every task at once (the listener stops accepting and gives running
    /// associations its grace period; forwarding, monitors, cache upkeep and the control
    /// socket end), waits for them at most `deadline`, then closes the archive (its final
    /// flush), writes the clean-shutdown marker when that went well, and on a power-off
    /// tells the UPS and runs the power-off command.
    pub async fn stop(mut self, reason: StopReason, deadline: Duration) -> Stopped {
        let grace = self.config.dicom.shutdown_grace;
        let power_off = match &reason {
            StopReason::PowerOff(why) => Some(why.clone()),
            _ => None,
        };
        // 2. Tell everyone.
        if let Some(why) = &power_off {
            error!(grace = ?grace, "powering off because {why}");
        }
        info!(reason = reason.words(), grace = ?grace, "stopping: no new associations; running ones may finish");
        notify::stopping("stopping: finishing running associations");
        if power_off.is_some() {
            // STOPPING=1 starts the unit's stop timeout; the grace period, the final flush and
            // the UPS command must not be cut short by it. Each later step extends it again.
            notify::extend_timeout(grace + Duration::from_secs(90));
        }
        let _ = self.events.send(api::Event::Stopping {
            reason: reason.words().to_string(),
        });
        self.stop.cancel();
        // 3. Wait, with one deadline for every task, then the index writer's flush.
        self.tasks.close();
        let started = tokio::time::Instant::now();
        let listener = match self.listener_ended.take() {
            Some(s) => s,
            None => match tokio::time::timeout(deadline, &mut self.listener).await {
                Ok(r) => r.unwrap_or_default(),
                Err(_) => {
                    warn!("the DICOM listener did not stop by the deadline");
                    self.listener.abort();
                    scp::Stopped::default()
                }
            },
        };
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let left = deadline.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, self.tasks.wait()).await.is_err() {
            warn!(
                "some tasks did not stop by the deadline (forwarding's unfinished deliveries are repeated after the restart)"
            );
        }
        let _ = std::fs::remove_file(&self.control_path);
        let store = self.handler.0.store.clone();
        let audit = self.handler.0.audit.clone();
        let closed = tokio::time::timeout(CLOSE_DEADLINE, store.close()).await;
        let stats = store.stats();
        info!(
            stored = stats.stored,
            duplicates = stats.duplicates,
            refused = stats.refused,
            megabytes = stats.bytes / 1_000_000,
            batches = stats.batches,
            checkpoints = stats.durable_commits,
            flushes_per_instance = format!("{:.2}", stats.flushes_per_instance()),
            "archive closed"
        );
        let outcome = match closed {
            Ok(Ok(())) => Outcome::Success,
            Ok(Err(e)) => {
                warn!(error = %e, "the index writer reported an error while stopping");
                Outcome::SeriousFailure
            }
            Err(_) => {
                warn!("the index writer did not finish its flush in 30 s");
                Outcome::SeriousFailure
            }
        };
        let clean = outcome == Outcome::Success;
        audit.record(
            Event::new(EventKind::ApplicationStop, outcome).detail(format!(
                "stopped on {}; {} association(s) aborted at the deadline",
                reason.words(),
                listener.aborted
            )),
        );
        if let Some(why) = &power_off {
            audit.record(
                Event::new(EventKind::PowerOff, Outcome::Success).detail(format!(
                    "powering off: {why}; running {:?}",
                    self.config.power.shutdown_command
                )),
            );
        }
        audit.close();
        // The marker says the archive was closed in order; after anything less the next
        // start says so, whatever the repair finds.
        let data_dir = &self.config.storage.data_dir;
        let clean = clean
            && match marker::record(data_dir, reason.words()) {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "cannot record the clean-shutdown marker");
                    false
                }
            };
        info!("outpost stopped");
        let power_off = match power_off {
            Some(_) => Some(power::power_off(&self.config, self.ups.as_ref()).await),
            None => None,
        };
        Stopped {
            reason,
            clean,
            listener,
            power_off,
        }
    }
}
