//! `outpost serve`: open the archive, bind the listeners, serve, and stop in three steps:
//! decide (a signal, or the power policy on a failing UPS), tell everyone (one cancellation
//! token), wait with a deadline (the listener's grace period, then forwarding and the
//! monitors, then the index writer's final flush). A clean stop leaves a marker; a power-off
//! then tells the UPS to cut and restore power and runs the configured power-off command.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use audit::{Audit, Event, EventKind, Outcome};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::store_config;

pub fn serve(c: config::Config) -> anyhow::Result<ExitCode> {
    init_logging(&c.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outpost")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run(c));
    // A monitor's read stuck in a hung file system must not keep the process from exiting.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

fn init_logging(log: &config::Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs are diagnostics, so they go to stderr (the journal keeps both streams), with
    // colours only for a person at a terminal: escape codes are noise in a journal or a file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(c: config::Config) -> anyhow::Result<ExitCode> {
    // dicom-ul and reqwest may both link a rustls provider; name ours once, first.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    info!(config = %c.source, version = env!("CARGO_PKG_VERSION"), "starting outpost");
    // The same warnings check-config prints, so a site that never ran it sees them too.
    for w in &c.warnings {
        warn!(file = %w.file, key = %w.key, "configuration: {}", w.message);
    }
    raise_open_files_limit();
    let audit = Audit::open_with(&c.audit.path, crate::audit_config(&c.audit))
        .context("opening the audit trail")?;
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
    let (store, opened) = tokio::task::spawn_blocking(move || store::Store::open(store_cfg))
        .await
        .context("opening the archive")?
        .with_context(|| format!("opening the archive in {}", data_dir.display()))?;
    match crate::marker::take(&data_dir) {
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
    // Critical: each may leave an acknowledged instance out of the index until a later start
    // finishes it. The store logged each at error as it raised it (for `import` and `verify`
    // too); `outpost status` lists them for as long as this run lasts.
    let repair_alerts: Vec<String> = opened
        .reconciled
        .alerts
        .iter()
        .map(ToString::to_string)
        .collect();

    let dicom = c.dicom.clone();
    let plain = TcpListener::bind((dicom.bind, dicom.port)).await.with_context(|| {
        format!(
            "cannot listen on {}:{} (another DICOM service on the port? ports below 1024 need CAP_NET_BIND_SERVICE)",
            dicom.bind, dicom.port
        )
    })?;
    let (tls_listener, tls) = match &dicom.tls {
        None => (None, None),
        Some(t) => {
            let configs = scp::tls::load(t).context("loading the DICOM TLS certificate and key")?;
            let l = TcpListener::bind((dicom.bind, t.port))
                .await
                .with_context(|| {
                    format!("cannot listen for DICOM TLS on {}:{}", dicom.bind, t.port)
                })?;
            (Some(l), Some(configs))
        }
    };
    let plain_addr = plain.local_addr()?;
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let settings = forward::Settings::from_dicom(&dicom);
    let recall = forward::Recaller::from_config(&c.forward, &settings)
        .context("setting up recall from upstream")?;
    let services = Arc::new(scp::Services {
        config: dicom.clone(),
        store: store.clone(),
        audit: audit.clone(),
        tls,
        recall,
        reporters: forward::reporters(&c.forward, &dicom.remotes),
    });

    let shutdown = CancellationToken::new();
    // Forwarding and the control socket have their own token, cancelled after the listener
    // stopped: instances received during the grace period are still queued and may go out.
    let background = CancellationToken::new();
    let forwarder = if c.forward.destinations.is_empty() {
        None
    } else {
        let f = forward::Forwarder::spawn(store.clone(), &c.forward, settings, background.clone())
            .context("starting forwarding")?;
        info!(
            destinations = c.forward.destinations.len(),
            rules = c.forward.rules.len(),
            "forwarding started"
        );
        Some(Arc::new(f))
    };
    let (power_tx, mut power_rx) = tokio::sync::mpsc::channel::<String>(1);
    let hardware = crate::hardware::start(
        &c,
        crate::hardware::Effects {
            store: store.clone(),
            forwarder: forwarder.clone(),
            audit: audit.clone(),
            power_off: power_tx,
        },
        background.clone(),
    );
    let cache_task = tokio::spawn(maintain_cache(
        store.clone(),
        audit.clone(),
        background.clone(),
    ));
    let control_path = crate::control::socket_path(&data_dir);
    let control_listener = crate::control::bind(&control_path)?;
    let control_task = tokio::spawn(crate::control::run(
        control_listener,
        Arc::new(crate::control::Control {
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
            identity: crate::control::Identity {
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
            },
        }),
        background.clone(),
    ));
    let listener_alive = Arc::new(AtomicBool::new(true));
    let mut listener = {
        let (services, shutdown, alive) =
            (services.clone(), shutdown.clone(), listener_alive.clone());
        tokio::spawn(async move {
            let stopped = scp::run(
                scp::Listeners {
                    plain,
                    tls: tls_listener,
                },
                services,
                shutdown,
            )
            .await;
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
        opened.instances
    );
    notify::ready(&ready);
    audit.record(Event::new(EventKind::ApplicationStart, Outcome::Success).detail(ready.clone()));
    info!("{ready}");

    let watchdog = notify::watchdog_interval().map(|interval| {
        let (store, alive) = (store.clone(), listener_alive.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            // Said once per hung disk, not at every tick.
            let mut said_hung = false;
            loop {
                tick.tick().await;
                // Only the process's own liveness counts: the listener accepts and the
                // index writer answers. Hardware and upstream faults raise alerts instead.
                if alive.load(Ordering::SeqCst) && store.ping().await {
                    notify::watchdog();
                    said_hung = false;
                } else if alive.load(Ordering::SeqCst)
                    && let Some(p) = store
                        .pending_sync()
                        .filter(|p| p.waited >= policy::SYNC_STALL)
                {
                    // The index writer waits on a hung disk. A restart cannot help (the
                    // kernel holds the write, and the new process would hang on the same
                    // disk), so the process stays up: the health policy has raised the
                    // alert naming the disk and refuses new instances; queries go on.
                    notify::watchdog();
                    if !said_hung {
                        said_hung = true;
                        warn!(waited_s = p.waited.as_secs(), "the index writer waits on the data disk ({p}); keeping the service up, see the alert");
                    }
                } else {
                    error!("withholding the watchdog ping: the listener or the index writer has stopped");
                }
            }
        })
    });

    // 1. Decide.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut ended = None;
    let mut power_off = None;
    let reason = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        Some(why) = power_rx.recv() => {
            power_off = Some(why);
            "the UPS is running out"
        }
        r = &mut listener => {
            ended = Some(r);
            "the DICOM listener stopped unexpectedly"
        }
    };
    // 2. Tell everyone.
    if let Some(why) = &power_off {
        error!(grace = ?dicom.shutdown_grace, "powering off because {why}");
    }
    info!(reason, grace = ?dicom.shutdown_grace, "stopping: no new associations; running ones may finish");
    notify::stopping("stopping: finishing running associations");
    if power_off.is_some() {
        // STOPPING=1 starts the unit's stop timeout; the grace period, the final flush and
        // the UPS command must not be cut short by it. Each later step extends it again.
        notify::extend_timeout(dicom.shutdown_grace + Duration::from_secs(90));
    }
    shutdown.cancel();
    // 3. Wait, with deadlines: the listener's grace period, then the index writer's flush.
    let stopped = match ended {
        Some(r) => r.unwrap_or_default(),
        None => listener.await.context("the DICOM listener task failed")?,
    };
    if let Some(w) = watchdog {
        w.abort();
    }
    // Forwarding stops next: a delivery still running after 10 s is abandoned, and its
    // entries go again after the restart (at-least-once).
    background.cancel();
    let _ = control_task.await;
    let _ = cache_task.await;
    hardware.wait(Duration::from_secs(5)).await;
    let _ = std::fs::remove_file(&control_path);
    if let Some(f) = forwarder {
        match Arc::try_unwrap(f) {
            Ok(f) => {
                if !f.wait(Duration::from_secs(10)).await {
                    warn!(
                        "forwarding did not stop within 10 s; unfinished deliveries will be repeated after the restart"
                    );
                }
            }
            Err(_) => warn!("forwarding still in use at shutdown"),
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(30), store.close()).await;
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
            "stopped on {reason}; {} association(s) aborted at the deadline",
            stopped.aborted
        )),
    );
    if let Some(why) = &power_off {
        audit.record(
            Event::new(EventKind::PowerOff, Outcome::Success).detail(format!(
                "powering off: {why}; running {:?}",
                c.power.shutdown_command
            )),
        );
    }
    audit.close();
    // The marker says the archive was closed in order; after anything less the next start
    // says so, whatever the repair finds.
    if clean && let Err(e) = crate::marker::record(&data_dir, reason) {
        warn!(error = %e, "cannot record the clean-shutdown marker");
    }
    info!("outpost stopped");
    if power_off.is_some() {
        let done = crate::power::power_off(&c, hardware.ups.as_ref()).await;
        // When neither the UPS took the outlet-off command nor the power-off command
        // worked, nothing will cut and restore power: exit with failure, so the service
        // manager starts the service again (it powers off again while the UPS still says
        // so, and serves once mains is back). When the UPS took the command, it cuts power
        // and brings the appliance back up on mains; restarting meanwhile would only send
        // the command again and could postpone the cut.
        return Ok(if done.outlets_off || done.command_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    Ok(if reason.starts_with("SIG") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How often the cache is checked against its watermarks.
const CACHE_CHECK: Duration = Duration::from_secs(10);
/// After a pass above the watermark that found nothing to evict: finding candidates walks the
/// studies, so with nothing confirmed (a destination down for days) it is not repeated
/// every ten seconds.
const CACHE_RECHECK_WHEN_STUCK: Duration = Duration::from_secs(300);

/// Evicts confirmed instances of the least recently used studies whenever the data volume
/// is above the high watermark, and says so in the log and the audit trail.
async fn maintain_cache(store: store::Store, audit: Audit, stop: CancellationToken) {
    let mut warned_full = false;
    let mut wait = CACHE_CHECK;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = CACHE_CHECK;
        match store.maintain_cache().await {
            Ok(None) => warned_full = false,
            Ok(Some(r)) if r.instances == 0 => {
                wait = CACHE_RECHECK_WHEN_STUCK;
                if !warned_full {
                    warn!(
                        "the data volume is above its high watermark and nothing can be evicted: no instance has a confirmed upstream copy; ingest stops at the free-space floor"
                    );
                    warned_full = true;
                }
            }
            Ok(Some(r)) => {
                warned_full = false;
                info!(
                    instances = r.instances,
                    studies = r.studies,
                    megabytes = r.bytes / 1_000_000,
                    percent_after = format!("{:.1}", r.percent_after),
                    "evicted confirmed instances from the cache"
                );
                audit.record(Event::new(EventKind::InstancesEvicted, Outcome::Success).detail(
                    format!(
                        "cache eviction: {} instance(s) of {} study(ies), {} MB, held upstream only now",
                        r.instances,
                        r.studies,
                        r.bytes / 1_000_000
                    ),
                ));
            }
            Err(e) => warn!(error = %e, "cache maintenance failed"),
        }
    }
}

/// Raises the soft open-files limit to the hard one. Outside systemd the soft limit is 1,024,
/// which a flood of half-open connections (each bounded, but each a descriptor) exhausts
/// long before memory; the hard limit is what the administrator allowed.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(was = soft, now = hard, hard, "raised the open-files limit"),
            Err(e) => {
                warn!(soft, hard, error = %e, "could not raise the open-files limit; a connection flood may exhaust it")
            }
        },
        Ok((soft, hard)) => info!(soft, hard, "open-files limit already at its hard limit"),
        Err(e) => warn!(error = %e, "could not read the open-files limit"),
    }
}
