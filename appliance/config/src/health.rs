//! `[health]`, `[ups]`, `[power]` and `[alerts]`: what hardware the appliance watches, how it
//! reads it, and what it does when power or storage fail.

use std::path::PathBuf;
use std::time::Duration;

use crate::read::Reader;

/// What the appliance watches on the hardware it stores on.
#[derive(Clone, Debug)]
pub struct Health {
    /// Watch md arrays (nothing to watch when the kernel has no md driver).
    pub raid: bool,
    /// `/proc/mdstat`.
    pub mdstat: PathBuf,
    /// `/sys/block`.
    pub sysfs_block: PathBuf,
    /// Where the root helper (`outpost-hwprobe`) writes `mdadm --detail` and `smartctl -j`
    /// output, since the service itself may not run either.
    pub helper_dir: PathBuf,
    pub raid_interval: Duration,
    pub volume_interval: Duration,
    pub smart_interval: Duration,
    /// SMART reports older than this are shown as stale rather than trusted.
    pub smart_max_age: Duration,
    /// Physical labels of disks for alert sentences: `sdb` -> "bay 2".
    pub bays: Vec<(String, String)>,
    /// Alert when fewer inodes than this percentage are free on the data volume.
    pub min_free_inodes_percent: f64,
    /// The md arrays whose failure refuses new instances; `None`: those the data volume is
    /// found on (through sysfs).
    pub data_arrays: Option<Vec<String>>,
}

/// The UPS, read over Modbus.
#[derive(Clone, Debug)]
pub struct Ups {
    pub transport: ups::Transport,
    pub unit_id: u8,
    pub profile: ups::Profile,
    pub poll_interval: Duration,
    /// Per Modbus request.
    pub timeout: Duration,
    /// Begin the orderly power-off when the UPS says less runtime than this remains.
    pub shutdown_below: Duration,
    /// A change of state (on battery, back on mains, runtime low) counts once it held this
    /// long, so a flickering reading neither raises alerts nor powers the box off.
    pub debounce: Duration,
    /// How long the UPS waits after the outlet-off command before cutting the outlets: long
    /// enough for the operating system to power off cleanly.
    pub outlet_off_delay: Duration,
    /// The UPS's own low-battery warning: it signals low battery (and many models begin
    /// their own shutdown countdown) when this much runtime is left. No profile carries it,
    /// so the site says it (`[ups] low_battery_warning_s`); used only to warn.
    pub low_battery_warning: Option<Duration>,
}

/// The orderly power-off.
#[derive(Clone, Debug)]
pub struct Power {
    /// Runs last, after the archive is closed; a string is run by `/bin/sh -c`. Running
    /// associations get `[dicom] shutdown_grace_s` to finish before that.
    pub shutdown_command: Vec<String>,
}

/// Where alerts go besides the log, the audit trail and `outpost status`.
#[derive(Clone, Debug)]
pub struct Alerts {
    /// An HTTP(S) URL that receives each alert raised or cleared as a JSON POST.
    pub webhook: Option<String>,
    pub webhook_timeout: Duration,
}

pub(crate) fn read_health(root: &mut Reader) -> Option<Health> {
    let mut h = root.table("health");
    let raid = h.bool("raid", true);
    let mdstat = h.path("mdstat", Some("/proc/mdstat"));
    let sysfs_block = h.path("sysfs_block", Some("/sys/block"));
    let helper_dir = h.path("helper_dir", Some("/run/outpost-hw"));
    let raid_interval = h.seconds("raid_interval_s", 15, 1, 3600);
    let volume_interval = h.seconds("volume_interval_s", 30, 1, 3600);
    let smart_interval = h.seconds("smart_interval_s", 300, 10, 86_400);
    let smart_max_age = h.seconds("smart_max_age_s", 7200, 60, 7 * 86_400);
    let bays = h.string_map("bays");
    let inodes = h.float("min_free_inodes_percent", 5.0, 0.0, 100.0);
    let data_arrays = if h.has("data_arrays") {
        h.string_list("data_arrays").and_then(|names| {
            let names: Vec<String> = names
                .iter()
                .map(|n| n.trim_start_matches("/dev/").to_string())
                .collect();
            match names.iter().find(|n| !is_md_name(n)) {
                Some(bad) => {
                    h.problem(
                        "data_arrays",
                        format!(
                            "{bad:?} is not an md array's kernel name; use names as /proc/mdstat shows them, such as \"md0\" or \"md127\""
                        ),
                    );
                    None
                }
                None => Some(Some(names)),
            }
        })
    } else {
        h.string_list("data_arrays").map(|_| None)
    };
    h.finish();
    Some(Health {
        raid: raid?,
        mdstat: mdstat?,
        sysfs_block: sysfs_block?,
        helper_dir: helper_dir?,
        raid_interval: raid_interval?,
        volume_interval: volume_interval?,
        smart_interval: smart_interval?,
        smart_max_age: smart_max_age?,
        bays: bays?,
        min_free_inodes_percent: inodes?,
        data_arrays: data_arrays?,
    })
}

/// `md0`, `md127`, `md_d0`: the names the kernel gives md arrays.
fn is_md_name(n: &str) -> bool {
    n.strip_prefix("md").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// `[ups]` is optional: without it no UPS is watched.
pub(crate) fn read_ups(root: &mut Reader, source: &str) -> Option<Option<Ups>> {
    if !root.has("ups") {
        let u = root.table("ups");
        u.finish();
        return Some(None);
    }
    let mut u = root.table("ups");
    let transport = u.parse_str("transport", Some("tcp"), |t| match t {
        "tcp" | "rtu" => Ok(t.to_string()),
        other => Err(format!(
            "{other:?} is not a Modbus transport; use \"tcp\" (a network card) or \"rtu\" (a serial cable)"
        )),
    });
    let transport = match transport.as_deref() {
        Some("tcp") => {
            let address = u.parse_str("address", None, |a| {
                if a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    Ok(a.to_string())
                } else {
                    Err(format!(
                        "{a:?} is not host:port; a UPS network card listens on port 502, as in \"192.0.2.10:502\""
                    ))
                }
            });
            address.map(|address| ups::Transport::Tcp { address })
        }
        Some(_) => {
            let device = u.path("device", None);
            let baud = u.int("baud", 9600, 1200, 115_200);
            match (device, baud) {
                (Some(device), Some(baud)) => Some(ups::Transport::Rtu {
                    device,
                    baud: baud as u32,
                }),
                _ => None,
            }
        }
        None => None,
    };
    let unit_id = u.int("unit_id", 1, 0, 247);
    if unit_id == Some(0) && matches!(transport, Some(ups::Transport::Rtu { .. })) {
        u.problem(
            "unit_id",
            "0 is the broadcast address on a serial line, which no UPS answers; use the UPS's own unit ID (1 by default)".into(),
        );
    }
    let profile_name = u.string("profile", None);
    let registers = u.raw_table("registers");
    let profile = match profile_name.as_deref() {
        None => None,
        Some("generic") => match registers {
            None => {
                u.problem(
                    "registers",
                    "profile \"generic\" needs its register map in [ups.registers]; see configs/ups/README.md".into(),
                );
                None
            }
            Some(table) => {
                let text = toml::to_string(table).unwrap_or_default();
                match ups::Profile::from_toml(&text, &format!("{source}: [ups.registers]")) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        u.problem("registers", e.to_string());
                        None
                    }
                }
            }
        },
        Some(name) if name.ends_with(".toml") => match std::fs::read_to_string(name) {
            Ok(text) => match ups::Profile::from_toml(&text, name) {
                Ok(p) => Some(p),
                Err(e) => {
                    u.problem("profile", e.to_string());
                    None
                }
            },
            Err(e) => {
                u.problem(
                    "profile",
                    format!("cannot read the UPS profile {name}: {e}"),
                );
                None
            }
        },
        Some(name) => match ups::Profile::builtin(name) {
            Some(p) => Some(p),
            None => {
                u.problem(
                    "profile",
                    format!(
                        "{name:?} is not a known UPS profile; use one of {}, \"generic\" with [ups.registers], or the path of a profile file ending in .toml",
                        ups::Profile::builtin_names()
                            .iter()
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        },
    };
    if registers.is_some() && profile_name.as_deref() != Some("generic") {
        u.problem(
            "registers",
            "is only read with profile = \"generic\"; remove it or switch the profile".into(),
        );
    }
    let poll_interval = u.seconds("poll_interval_s", 5, 1, 300);
    let timeout = u
        .int("timeout_ms", 2000, 100, 60_000)
        .map(Duration::from_millis);
    let shutdown_below = u.seconds("shutdown_when_runtime_below_s", 300, 0, 86_400);
    let debounce = u.seconds("debounce_s", 10, 0, 600);
    // The operating system must be off before the UPS cuts the outlets.
    let outlet_off_delay = u.seconds("outlet_off_delay_s", 120, 30, 3600);
    let low_battery_warning = if u.has("low_battery_warning_s") {
        u.seconds("low_battery_warning_s", 0, 0, 86_400).map(Some)
    } else {
        Some(None)
    };
    if let (Some(p), Some(t)) = (poll_interval, timeout)
        && t >= p
    {
        u.problem(
            "timeout_ms",
            format!(
                "{} ms is not shorter than poll_interval_s ({} s); a hung UPS card would stall every reading",
                t.as_millis(),
                p.as_secs()
            ),
        );
    }
    if let (Some(p), Some(d)) = (&profile, outlet_off_delay)
        && let Some(max) = p.max_outlet_off_delay()
        && d > max
    {
        u.problem(
            "outlet_off_delay_s",
            format!(
                "{} s is longer than the {} s this UPS profile ({}) can count down",
                d.as_secs(),
                max.as_secs(),
                p.name()
            ),
        );
    }
    u.finish();
    Some(Some(Ups {
        transport: transport?,
        unit_id: unit_id? as u8,
        profile: profile?,
        poll_interval: poll_interval?,
        timeout: timeout?,
        shutdown_below: shutdown_below?,
        debounce: debounce?,
        outlet_off_delay: outlet_off_delay?,
        low_battery_warning: low_battery_warning?,
    }))
}

pub(crate) fn read_power(root: &mut Reader) -> Option<Power> {
    let mut p = root.table("power");
    // Inhibitors (a package update, a logged-in session) must not keep a UPS power-off from
    // happening; the polkit rule allows exactly this.
    let command = p.command(
        "shutdown_command",
        &["systemctl", "poweroff", "--ignore-inhibitors"],
    );
    p.finish();
    Some(Power {
        shutdown_command: command?,
    })
}

pub(crate) fn read_alerts(root: &mut Reader) -> Option<Alerts> {
    let mut a = root.table("alerts");
    let webhook = if a.has("webhook") {
        a.parse_str("webhook", None, |w| {
            if w.starts_with("https://") || w.starts_with("http://") {
                Ok(Some(w.to_string()))
            } else {
                // The value is not repeated: webhook URLs carry their secret, and problems
                // are printed to the journal.
                Err(
                    "the webhook is not an http:// or https:// URL (such as \"https://alerts.example/outpost\"); alerts are POSTed to it as JSON"
                        .to_string(),
                )
            }
        })
    } else {
        a.string("webhook", Some("")).map(|_| None)
    };
    let timeout = a.seconds("webhook_timeout_s", 10, 1, 300);
    a.finish();
    Some(Alerts {
        webhook: webhook?,
        webhook_timeout: timeout?,
    })
}
