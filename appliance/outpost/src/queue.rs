//! `outpost queue`: the forwarding queues of the running service, and the actions a
//! technician takes on them, through the control socket.

use std::process::ExitCode;

use clap::Subcommand;

use api::{Request, Response};

#[derive(Subcommand, Debug)]
pub enum Action {
    /// Make every waiting entry of a destination due now, and probe it now.
    Retry { destination: String },
    /// Queue a destination's dead letters again (all of them, or those with the given numbers).
    Resubmit {
        destination: String,
        /// Dead-letter numbers, as `outpost queue dead` shows them.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
    },
    /// Stop delivering to a destination; instances keep being queued.
    Pause { destination: String },
    /// Deliver to a paused destination again.
    Resume { destination: String },
    /// List the corrected (overwritten) instances kept local until a person releases them.
    Corrections,
    /// Let held corrections be evicted: their destinations' acknowledgements count as
    /// confirmation (check first that the destination holds the corrected version).
    ReleaseCorrections {
        /// Only corrections acknowledged by this destination.
        #[arg(long)]
        destination: Option<String>,
        /// SOP Instance UIDs, as `outpost queue corrections` lists them.
        #[arg(long = "sop", conflicts_with = "all", required_unless_present = "all")]
        sops: Vec<String>,
        /// Every held correction (of `--destination`, if given).
        #[arg(long)]
        all: bool,
    },
    /// Stop waiting for a destination's confirmation where it will not come (its dead
    /// letters, or every instance of a destination removed from the configuration), so
    /// eviction may take those instances once their other destinations confirmed them.
    ReleaseClaim { destination: String },
    /// List a destination's dead letters with their reasons.
    Dead {
        destination: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

pub fn run(c: &config::Config, action: Option<Action>, json: bool) -> anyhow::Result<ExitCode> {
    let request = match action {
        None => Request::Queue,
        Some(Action::Retry { destination }) => Request::Retry { destination },
        Some(Action::Resubmit { destination, seqs }) => Request::Resubmit { destination, seqs },
        Some(Action::Pause { destination }) => Request::Pause { destination },
        Some(Action::Resume { destination }) => Request::Resume { destination },
        Some(Action::Dead { destination, limit }) => Request::Dead { destination, limit },
        Some(Action::Corrections) => Request::Corrections,
        Some(Action::ReleaseCorrections {
            destination,
            sops,
            all,
        }) => Request::ReleaseCorrections {
            destination,
            sops,
            all,
        },
        Some(Action::ReleaseClaim { destination }) => Request::ReleaseClaim { destination },
    };
    let path = supervisor::socket_path(&c.storage.data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(supervisor::call(&path, &request))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(match response {
            Response::Error(_) => ExitCode::FAILURE,
            _ => ExitCode::SUCCESS,
        });
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match response {
        Response::Queue(rows) if rows.is_empty() => {
            println!("no forwarding destinations are configured ([[forward.destination]])");
        }
        Response::Queue(rows) => {
            println!(
                "{:<16} {:<9} {:<9} {:>8} {:>6} {:>10} {:>10}  last error",
                "destination", "kind", "state", "depth", "dead", "committing", "oldest"
            );
            for row in rows {
                let q = &row.queue;
                let (kind, mut state, live_error) = match &row.live {
                    Some(l) if l.held_on_battery => {
                        (l.kind.as_str(), "battery".to_string(), l.last_error.clone())
                    }
                    Some(l) if l.outside_window => {
                        (l.kind.as_str(), "window".to_string(), l.last_error.clone())
                    }
                    Some(l) => (l.kind.as_str(), l.state.clone(), l.last_error.clone()),
                    None => ("-", "stopped".to_string(), None),
                };
                if q.paused {
                    state = "paused".into();
                }
                let oldest = q
                    .oldest_enqueued_at
                    .map(|t| api::show::age(now.saturating_sub(t)))
                    .unwrap_or_else(|| "-".into());
                let error = live_error
                    .or_else(|| q.last_error.clone())
                    .unwrap_or_default();
                println!(
                    "{:<16} {:<9} {:<9} {:>8} {:>6} {:>10} {:>10}  {}",
                    q.destination,
                    kind,
                    state,
                    q.depth,
                    q.dead,
                    q.awaiting_commitment,
                    oldest,
                    error
                );
            }
        }
        Response::Dead(letters) if letters.is_empty() => println!("no dead letters"),
        Response::Dead(letters) => {
            for (seq, d) in letters {
                println!(
                    "{seq:>10}  {}  study {}  after {} attempt(s), {} ago: {}",
                    d.entry.sop_instance_uid,
                    d.entry.study_uid,
                    d.entry.attempts,
                    api::show::age(now.saturating_sub(d.at)),
                    d.reason
                );
            }
        }
        Response::Corrections(held) if held.is_empty() => println!("no held corrections"),
        Response::Corrections(held) => {
            println!(
                "{:<40} {:<40} {:<16} {:>10}  held since",
                "SOP Instance UID", "study", "destination(s)", "size"
            );
            for h in held {
                println!(
                    "{:<40} {:<40} {:<16} {:>10}  {} ago",
                    h.sop_instance_uid,
                    h.study_uid,
                    h.destinations.join(","),
                    api::show::bytes(h.bytes),
                    api::show::age(now.saturating_sub(h.since))
                );
            }
        }
        Response::Done(what) => println!("{what}"),
        Response::Status(_) | Response::Quarantine(_) => {
            eprintln!("outpost: unexpected answer to a queue request")
        }
        Response::Error(e) => {
            eprintln!("outpost: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
