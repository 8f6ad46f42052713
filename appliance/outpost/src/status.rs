//! `outpost status`: the running appliance's state for people (or, with `--json`, for
//! scripts), asked of the service itself over its control socket.

use std::process::ExitCode;

use crate::control::{self, Request, Response};

pub fn run(c: &config::Config, json: bool) -> anyhow::Result<ExitCode> {
    let path = control::socket_path(&c.storage.data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(control::call(&path, &Request::Status))?;
    let status = match response {
        Response::Status(s) => s,
        Response::Error(e) => {
            eprintln!("outpost: {e}");
            return Ok(ExitCode::FAILURE);
        }
        _ => anyhow::bail!("the service answered something other than its status"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "outpost {} ({}), up {}",
        status.version,
        status.ae_title,
        crate::queue::age(status.uptime_s)
    );
    println!("  listening: {}", status.listening.join(", "));
    println!(
        "  archive:   {} instances in {}",
        status.instances, status.data_dir
    );
    if let Some(u) = &status.usage {
        println!(
            "  storage:   {:.1}% of {} used ({} in instances); evicting above {}% down to {}%",
            u.percent(),
            bytes(u.capacity_bytes),
            bytes(u.stored_bytes),
            status.high_watermark,
            status.low_watermark
        );
    }
    if status.destinations.is_empty() {
        println!("  forwarding: no destinations configured");
    }
    for row in &status.destinations {
        let q = &row.queue;
        let state = match &row.live {
            Some(l) if q.paused => format!("{} paused", l.kind),
            Some(l) => format!("{} {}", l.kind, l.state),
            None => "stopped".to_string(),
        };
        println!(
            "  forwarding to {}: {state}, {} queued, {} dead letter(s), {} awaiting commitment",
            q.destination, q.depth, q.dead, q.awaiting_commitment
        );
        if let Some(e) = row
            .live
            .as_ref()
            .and_then(|l| l.last_error.clone())
            .or_else(|| q.last_error.clone())
        {
            println!("    last error: {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bytes(n: u64) -> String {
    const G: f64 = 1e9;
    const M: f64 = 1e6;
    if n as f64 >= G {
        format!("{:.1} GB", n as f64 / G)
    } else {
        format!("{:.1} MB", n as f64 / M)
    }
}
