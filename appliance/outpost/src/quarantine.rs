//! `outpost quarantine`: the instances the running service holds because their patient
//! disagrees with their study's, and the decisions a person takes on them, through the
//! control socket.

use std::process::ExitCode;

use clap::Subcommand;

use api::show::age;
use api::{QuarantineResolution, Request, Response};

#[derive(Subcommand, Debug)]
pub enum Action {
    /// List the held instances: number, SOP Instance UID, study, both Patient IDs, why.
    List,
    /// File a held instance under the patient of the study it names (its data set keeps its
    /// own Patient ID), so it is found, retrieved and forwarded like any other.
    Assign {
        /// The quarantine number, as `outpost quarantine list` shows it.
        seq: u64,
    },
    /// Remove a held instance: its row now, its file after the next checkpoint.
    Delete {
        /// The quarantine number, as `outpost quarantine list` shows it.
        seq: u64,
    },
    /// File a held instance as a study of its own patient: a copy with new Study and Series
    /// Instance UIDs (and a new SOP Instance UID if its own belongs to another patient's
    /// instance) is stored, then the held one deleted. Images of one series split alike
    /// land in one new study and series.
    Split {
        /// The quarantine number, as `outpost quarantine list` shows it.
        seq: u64,
    },
}

pub fn run(c: &config::Config, action: Action, json: bool) -> anyhow::Result<ExitCode> {
    let request = match action {
        Action::List => Request::Quarantine,
        Action::Assign { seq } => Request::ResolveQuarantine {
            seq,
            resolution: QuarantineResolution::Assign,
        },
        Action::Delete { seq } => Request::ResolveQuarantine {
            seq,
            resolution: QuarantineResolution::Delete,
        },
        Action::Split { seq } => Request::ResolveQuarantine {
            seq,
            resolution: QuarantineResolution::Split,
        },
    };
    let path = supervisor::socket_path(&c.storage.data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(supervisor::call(&path, &request))?;
    if json {
        // The list alone (not the envelope), so scripts read rows directly; errors keep
        // the envelope and a failing exit.
        match &response {
            Response::Quarantine(rows) => println!("{}", serde_json::to_string_pretty(rows)?),
            other => println!("{}", serde_json::to_string_pretty(other)?),
        }
        return Ok(match response {
            Response::Error(_) => ExitCode::FAILURE,
            _ => ExitCode::SUCCESS,
        });
    }
    let now = store::layout::unix_now();
    match response {
        Response::Quarantine(rows) if rows.is_empty() => {
            println!("no instance is held in quarantine")
        }
        Response::Quarantine(rows) => {
            println!(
                "{:>6} {:<40} {:<40} {:<16} {:<16} {:<4} {:<16} {:>10}  reason",
                "number",
                "SOP Instance UID",
                "study",
                "PatientID",
                "study's patient",
                "mod",
                "from",
                "held"
            );
            for r in rows {
                println!(
                    "{:>6} {:<40} {:<40} {:<16} {:<16} {:<4} {:<16} {:>10}  {}",
                    r.seq,
                    r.sop_instance_uid,
                    r.study_uid,
                    r.patient_id,
                    r.study_patient_id,
                    r.modality,
                    if r.source_ae.is_empty() {
                        "(import)"
                    } else {
                        r.source_ae.as_str()
                    },
                    format!("{} ago", age(now.saturating_sub(r.held_at))),
                    r.reason
                );
            }
        }
        Response::Done(what) => println!("{what}"),
        Response::Error(e) => {
            eprintln!("outpost: {e}");
            return Ok(ExitCode::FAILURE);
        }
        _ => {
            eprintln!("outpost: unexpected answer to a quarantine request");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
