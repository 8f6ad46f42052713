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
    if !status.os.is_empty() || !status.kernel.is_empty() {
        println!("  system:    {}, kernel {}", status.os, status.kernel);
    }
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
    for alert in &status.repair_alerts {
        println!("  CRITICAL:  start-up repair: {alert}");
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
        if let Some(a) = row.live.as_ref().and_then(|l| l.commitment_alert.as_ref()) {
            println!("    ALERT: {a}");
        }
    }
    print_hardware(&status.hardware, &status.archive_alerts);
    Ok(ExitCode::SUCCESS)
}

/// The hardware sections, read from the JSON snapshot the service sent.
fn print_hardware(h: &serde_json::Value, archive: &[control::ArchiveAlert]) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let raid = &h["raid"];
    match (raid["reading"].as_array(), raid["error"].as_str()) {
        (_, Some(e)) => println!("  raid:      cannot be read: {e}"),
        (Some(arrays), None) if arrays.is_empty() => println!("  raid:      no md arrays"),
        (Some(arrays), None) => {
            for a in arrays {
                let mut line = format!(
                    "  raid:      {} {} {}",
                    text(&a["name"]),
                    a["level"].as_str().unwrap_or("md"),
                    text(&a["health"])
                );
                if let Some(s) = a["mdstat_status"].as_str() {
                    line.push_str(&format!(" {s}"));
                }
                if let (Some(action), Some(pct)) = (
                    a["sync_action"].as_str(),
                    a["sync_progress"]["percent"].as_f64(),
                ) && action != "idle"
                {
                    line.push_str(&format!(", {action} {pct:.1}%"));
                }
                println!("{line}");
            }
        }
        (None, None) => println!("  raid:      not sampled yet"),
    }
    let volume = &h["volume"];
    match (&volume["reading"], volume["error"].as_str()) {
        (_, Some(e)) => println!("  volume:    cannot be read: {e}"),
        (v, None) if v.is_object() => {
            let total = v["total_bytes"].as_u64().unwrap_or(0);
            let avail = v["available_bytes"].as_u64().unwrap_or(0);
            println!(
                "  volume:    {} free of {}{}",
                bytes(avail),
                bytes(total),
                if v["read_only"].as_bool() == Some(true) {
                    ", READ-ONLY"
                } else {
                    ""
                }
            );
        }
        _ => println!("  volume:    not sampled yet"),
    }
    let smart = &h["smart"];
    match (smart["reading"].as_array(), smart["error"].as_str()) {
        (_, Some(e)) => println!("  smart:     cannot be read: {e}"),
        (Some(d), None) if d.is_empty() => {
            println!("  smart:     no reports (is the outpost-hwprobe timer installed?)")
        }
        (Some(devices), None) => {
            for d in devices {
                let reasons = d["verdict"]["reasons"]
                    .as_array()
                    .map(|r| r.iter().map(text).collect::<Vec<_>>().join("; "))
                    .or_else(|| d["verdict"]["reason"].as_str().map(str::to_string))
                    .unwrap_or_default();
                println!(
                    "  smart:     {} {}{}{}",
                    text(&d["device"]),
                    text(&d["verdict"]["level"]),
                    d["temperature_c"]
                        .as_i64()
                        .map(|t| format!(", {t} °C"))
                        .unwrap_or_default(),
                    if reasons.is_empty() {
                        String::new()
                    } else {
                        format!(": {reasons}")
                    }
                );
            }
        }
        (None, None) => println!("  smart:     not sampled yet"),
    }
    match h["ups"].as_object() {
        None => println!("  ups:       none configured"),
        Some(u) => {
            let r = &u["reading"];
            if r.is_object() {
                let mut line = format!("  ups:       {} {}", text(&u["name"]), text(&r["state"]));
                if let Some(s) = r["runtime_s"].as_u64() {
                    line.push_str(&format!(", {} runtime", crate::queue::age(s)));
                }
                if let Some(c) = r["charge_pct"].as_f64() {
                    line.push_str(&format!(", {c:.0}% charged"));
                }
                if let Some(l) = r["load_pct"].as_f64() {
                    line.push_str(&format!(", {l:.0}% load"));
                }
                if let Some(e) = r["error"].as_str() {
                    line.push_str(&format!(": {e}"));
                }
                println!("{line}");
            } else {
                println!("  ups:       {} not read yet", text(&u["name"]));
            }
        }
    }
    if let Some(why) = h["ingest_held"].as_str() {
        println!("  INGEST REFUSED: {why}");
    }
    if h["forwarding_held"].as_bool() == Some(true) {
        println!("  forwarding: routine studies wait (on battery, link down)");
    }
    let hardware = h["alerts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if hardware.is_empty() && archive.is_empty() {
        println!("  alerts:    none");
    } else {
        println!("  alerts:");
        // The archive's own alerts first: an error there is a correction that may be lost.
        for a in archive {
            println!("    [{}] {}", a.severity, a.message);
        }
        for a in hardware {
            println!("    [{}] {}", text(&a["severity"]), text(&a["message"]));
        }
    }
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
