//! `outpost serve`: logging, the runtime, the listeners bound where the configuration says,
//! and the supervisor started on them; then the first of the three steps of a stop, decide
//! (SIGTERM or SIGINT here, or the supervisor's own reason), before `Running::stop` tells
//! everyone and waits.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use supervisor::{Bound, StopReason, Supervisor};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// Beyond the listener's grace period, what forwarding and the monitors get to stop.
const STOP_MARGIN: Duration = Duration::from_secs(15);

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
    // Before anything else: a SIGTERM during start-up then stops the service in order once
    // it runs, instead of killing it.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    raise_open_files_limit();
    let deadline = c.dicom.shutdown_grace + STOP_MARGIN;
    // The ports open only once the archive is: a caller is refused during start-up repair
    // rather than left waiting.
    let opened = Supervisor::open(c.clone(), Default::default()).await?;
    let bound = Bound::bind(&c).await?;
    let mut running = opened.serve(bound).await?;
    // 1. Decide.
    let reason = tokio::select! {
        _ = term.recv() => StopReason::Signal("SIGTERM"),
        _ = int.recv() => StopReason::Signal("SIGINT"),
        r = running.stopping() => r,
    };
    // 2. and 3., tell and wait, are the supervisor's.
    let stopped = running.stop(reason, deadline).await;
    Ok(if stopped.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
