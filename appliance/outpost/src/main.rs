//! The `outpost` binary: the command line. It parses arguments and loads the
//! configuration, then hands over: `serve` to the supervisor, `status`, `queue` and
//! `quarantine` to the running service through the control socket's client, `import` and
//! `verify` to the archive directly (the service is not running then). It wires nothing.

mod import;
mod quarantine;
mod queue;
mod serve;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "An edge DICOM archive for imaging departments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance (the embedded default configuration without --config).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print every problem found.
    CheckConfig { file: PathBuf },
    /// Store a folder of DICOM files through the same ingest path as the network.
    Import {
        dir: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Files stored at the same time.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Check every stored file against the index, and look for files the index lacks.
    Verify {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show the running service's state: archive, storage, forwarding, version, uptime.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the forwarding queues of the running service, or act on one.
    Queue {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<queue::Action>,
    },
    /// List the instances held for a patient conflict, or resolve one (assign, delete).
    Quarantine {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: quarantine::Action,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => load_for_serve(config.as_deref())
            .and_then(owner_only)
            .and_then(serve::serve),
        Command::CheckConfig { file } => check_config(&file),
        Command::Import { dir, config, jobs } => load(config.as_deref())
            .and_then(owner_only)
            .and_then(|c| import::import(c, &dir, jobs)),
        Command::Verify { config } => load(config.as_deref())
            .and_then(owner_only)
            .and_then(verify),
        Command::Queue {
            config,
            json,
            action,
        } => load(config.as_deref()).and_then(|c| queue::run(&c, action, json)),
        Command::Quarantine {
            config,
            json,
            action,
        } => load(config.as_deref()).and_then(|c| quarantine::run(&c, action, json)),
        Command::Status { config, json } => {
            load(config.as_deref()).and_then(|c| status::run(&c, json))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("outpost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses to open the archive as root when it belongs to another user (the service's):
/// files and directories root created there would be root's, and the service could no
/// longer write beside them.
fn owner_only(c: config::Config) -> anyhow::Result<config::Config> {
    use std::os::unix::fs::MetadataExt;
    let dir = &c.storage.data_dir;
    if let Ok(meta) = std::fs::metadata(dir)
        && nix::unistd::geteuid().is_root()
        && meta.uid() != 0
    {
        let owner = nix::unistd::User::from_uid(meta.uid().into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| meta.uid().to_string());
        anyhow::bail!(
            "{} belongs to {owner}, and what root writes there the service could not change later; run this as {owner} (sudo -u {owner} outpost ...)",
            dir.display()
        );
    }
    Ok(c)
}

/// The configuration from a file, or the embedded default.
fn load(path: Option<&Path>) -> anyhow::Result<config::Config> {
    match path {
        None => Ok(config::Config::embedded()),
        Some(p) => config::Config::load(p).map_err(|problems| anyhow::anyhow!("{problems}")),
    }
}

/// The configuration as `serve` reads it: unknown keys in a file a newer build wrote are
/// warnings (logged at start), so an image rolled back still starts.
fn load_for_serve(path: Option<&Path>) -> anyhow::Result<config::Config> {
    match path {
        None => Ok(config::Config::embedded()),
        Some(p) => {
            config::Config::load_for_serve(p).map_err(|problems| anyhow::anyhow!("{problems}"))
        }
    }
}

fn check_config(file: &Path) -> anyhow::Result<ExitCode> {
    match config::Config::load(file) {
        Ok(c) => {
            // The very validation `serve` runs at start (supervisor::validate), every problem
            // at once.
            if let Err(invalid) = supervisor::validate(&c) {
                eprint!("{invalid}");
                return Ok(ExitCode::FAILURE);
            }
            // Warnings do not fail the check: the configuration is valid, perhaps not meant.
            if !c.warnings.is_empty() {
                eprint!("{}", config::Warnings(&c.warnings));
            }
            println!(
                "{}: ok (AE {} on {}:{}, {} remote(s), {} forwarding destination(s), data in {})",
                file.display(),
                c.dicom.ae_title,
                c.dicom.bind,
                c.dicom.port,
                c.dicom.remotes.len(),
                c.forward.destinations.len(),
                c.storage.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            eprint!("{problems}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The store's settings from the configuration, as the service opens it.
pub(crate) fn store_config(c: &config::Config) -> anyhow::Result<store::StoreConfig> {
    Ok(supervisor::store_config(c)?)
}

fn verify(c: config::Config) -> anyhow::Result<ExitCode> {
    let (store, _) = store::Store::open(store_config(&c)?)
        .with_context(|| format!("opening the archive in {}", c.storage.data_dir.display()))?;
    let bar = indicatif::ProgressBar::new(store.instance_count()?);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying {bar:40} {pos}/{len} instances ({per_sec})",
        )
        .expect("valid template"),
    );
    let report = store.verify(|n| bar.set_position(n))?;
    bar.finish_and_clear();
    for p in &report.problems {
        println!("{p}");
    }
    println!(
        "verified {} instances ({:.1} MB): {} problem(s)",
        report.instances,
        report.bytes as f64 / 1e6,
        report.problems.len()
    );
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
