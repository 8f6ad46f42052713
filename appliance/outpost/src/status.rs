//! `outpost status`: the running appliance's state for people (or, with `--json`, for
//! scripts), asked of the service itself over its control socket.

use std::process::ExitCode;

use api::{Request, Response};

pub fn run(c: &config::Config, json: bool) -> anyhow::Result<ExitCode> {
    let path = supervisor::socket_path(&c.storage.data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(supervisor::call(&path, &Request::Status))?;
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
        api::show::age(status.uptime_s)
    );
    if !status.os.is_empty() || !status.kernel.is_empty() {
        println!("  system:    {}, kernel {}", status.os, status.kernel);
    }
    println!("  listening: {}", status.listening.join(", "));
    if let (Some(link), Some(p)) = (&status.setup_link, &status.panel) {
        println!(
            "  setup:     no administrator yet; open {}{link}",
            p.address
        );
    }
    if let Some(p) = &status.panel {
        println!(
            "  panel:     {} ({} certificate, SHA-256 {})",
            p.address,
            if p.self_signed {
                "self-signed"
            } else {
                "operator"
            },
            p.sha256
        );
    }
    println!(
        "  archive:   {} instances in {}",
        status.instances, status.data_dir
    );
    if let Some(u) = &status.usage {
        println!(
            "  storage:   {:.1}% of {} used ({} in instances); evicting above {}% down to {}%",
            u.percent(),
            api::show::bytes(u.capacity_bytes),
            api::show::bytes(u.stored_bytes),
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

/// The hardware sections, from the typed snapshot the service sent.
fn print_hardware(h: &api::Hardware, archive: &[api::ArchiveAlert]) {
    print!("{}", hardware_text(h, archive));
}

/// The hardware sections as `outpost status` prints them, one line each.
fn hardware_text(h: &api::Hardware, archive: &[api::ArchiveAlert]) -> String {
    use api::readings::{RaidHealth, Severity, Verdict};
    use std::fmt::Write;
    let mut out = String::new();
    // Writing to a String cannot fail.
    macro_rules! say {
        ($($arg:tt)*) => {{ let _ = writeln!(out, $($arg)*); }};
    }
    match (&h.raid.reading, &h.raid.error) {
        (_, Some(e)) => say!("  raid:      cannot be read: {e}"),
        (Some(arrays), None) if arrays.is_empty() => say!("  raid:      no md arrays"),
        (Some(arrays), None) => {
            for a in arrays {
                let health = match a.health {
                    RaidHealth::Ok => "ok",
                    RaidHealth::Rebuilding => "rebuilding",
                    RaidHealth::Degraded => "degraded",
                    RaidHealth::Failed => "failed",
                };
                let mut l = format!(
                    "  raid:      {} {} {health}",
                    a.name,
                    a.level.as_deref().unwrap_or("md")
                );
                if let Some(s) = &a.mdstat_status {
                    l.push_str(&format!(" {s}"));
                }
                if let (Some(action), Some(p)) = (&a.sync_action, &a.sync_progress)
                    && action != "idle"
                {
                    l.push_str(&format!(", {action} {:.1}%", p.percent));
                }
                say!("{l}");
            }
        }
        (None, None) => say!("  raid:      not sampled yet"),
    }
    match (&h.volume.reading, &h.volume.error) {
        (_, Some(e)) => say!("  volume:    cannot be read: {e}"),
        (Some(v), None) => say!(
            "  volume:    {} free of {}{}",
            api::show::bytes(v.available_bytes),
            api::show::bytes(v.total_bytes),
            if v.read_only { ", READ-ONLY" } else { "" }
        ),
        (None, None) => say!("  volume:    not sampled yet"),
    }
    match (&h.smart.reading, &h.smart.error) {
        (_, Some(e)) => say!("  smart:     cannot be read: {e}"),
        (Some(d), None) if d.is_empty() => {
            say!("  smart:     no reports (is the outpost-hwprobe timer installed?)")
        }
        (Some(devices), None) => {
            for d in devices {
                let (level, reasons) = match &d.verdict {
                    Verdict::Ok => ("ok", String::new()),
                    Verdict::Warning { reasons } => ("warning", reasons.join("; ")),
                    Verdict::Failing { reasons } => ("failing", reasons.join("; ")),
                    Verdict::Unknown { reason } => ("unknown", reason.clone()),
                };
                say!(
                    "  smart:     {} {level}{}{}",
                    d.device,
                    d.temperature_c
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
        (None, None) => say!("  smart:     not sampled yet"),
    }
    match &h.ups {
        None => say!("  ups:       none configured"),
        Some(u) => match &u.reading {
            Some(r) => {
                let mut l = format!("  ups:       {} {}", u.name, ups_state(r.state));
                if let Some(s) = r.runtime_s {
                    l.push_str(&format!(", {} runtime", api::show::age(s.into())));
                }
                if let Some(c) = r.charge_pct {
                    l.push_str(&format!(", {c:.0}% charged"));
                }
                if let Some(load) = r.load_pct {
                    l.push_str(&format!(", {load:.0}% load"));
                }
                if let Some(e) = &r.error {
                    l.push_str(&format!(": {e}"));
                }
                say!("{l}");
            }
            None => say!("  ups:       {} not read yet", u.name),
        },
    }
    if let Some(why) = &h.ingest_held {
        say!("  INGEST REFUSED: {why}");
    }
    if !h.forwarding_held.is_empty() {
        say!(
            "  forwarding: routine studies wait (on battery, link down): {}",
            h.forwarding_held.join(", ")
        );
    }
    if h.alerts.is_empty() && archive.is_empty() {
        say!("  alerts:    none");
    } else {
        say!("  alerts:");
        // The archive's own alerts first: an error there is a correction that may be lost.
        for a in archive {
            say!("    [{}] {}", a.severity, a.message);
        }
        for a in &h.alerts {
            let severity = match a.severity {
                Severity::Info => "info",
                Severity::Warning => "warning",
                Severity::Critical => "critical",
            };
            say!("    [{severity}] {}", a.message);
        }
    }
    out
}

/// The UPS state in the words the JSON has always carried (`on_battery`, ...).
fn ups_state(s: api::readings::UpsState) -> &'static str {
    match s {
        api::readings::UpsState::Online => "online",
        api::readings::UpsState::OnBattery => "on_battery",
        api::readings::UpsState::LowBattery => "low_battery",
        api::readings::UpsState::CommunicationLost => "communication_lost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_forwarding_held_on_battery_is_said() {
        // The service sent its hardware snapshot as untyped JSON, and `outpost status` read
        // `forwarding_held` with `as_bool()`. The service declares it a list (the
        // destinations found down while on battery), so the test was never true and "routine
        // studies wait" never printed: a technician on a UPS with the link down was not told
        // that routine studies were waiting. Both ends now share `api::Hardware`, so the
        // field has one type, and a mismatch is a compile error instead of a silent line.
        let h = api::Hardware {
            forwarding_held: vec!["pacs".to_string(), "cloud".to_string()],
            ..api::Hardware::default()
        };
        let text = hardware_text(&h, &[]);
        assert!(
            text.contains(
                "  forwarding: routine studies wait (on battery, link down): pacs, cloud"
            ),
            "{text}"
        );
        // Through the control socket's JSON and back, as `outpost status` receives it.
        let wire = serde_json::to_string(&h).unwrap();
        let back: api::Hardware = serde_json::from_str(&wire).unwrap();
        assert!(hardware_text(&back, &[]).contains("routine studies wait"));
        // And nothing about it while forwarding goes on.
        assert!(!hardware_text(&api::Hardware::default(), &[]).contains("routine studies wait"));
    }
}
