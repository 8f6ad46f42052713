//! The reader for the files a root helper writes with mdadm: `<mdN>.export` from
//! `mdadm --detail --export` and `<mdN>.detail` from `mdadm --detail`.
//!
//! The service cannot run mdadm itself (it needs root), so these files are snapshots taken at
//! the helper's last run and may be older than `/proc/mdstat`. They are therefore only used to
//! fill gaps: the `State :` line for display, the level and disk count when the kernel's
//! sources lack them, and which member is being rebuilt when mdstat alone cannot say.

use std::collections::BTreeMap;
use std::path::Path;

/// What the mdadm files say about one array.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Mdadm {
    pub level: Option<String>,
    pub raid_disks: Option<u32>,
    /// The `State :` line, e.g. `clean, degraded, recovering`.
    pub state: Option<String>,
    /// Rows of the device table (from `.detail`) or `MD_DEVICE_*` keys (from `.export`).
    pub devices: Vec<MdadmDevice>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MdadmDevice {
    /// The kernel name, e.g. `sdb1` for `/dev/sdb1`.
    pub device: String,
    /// The `RaidDevice` column or a numeric `ROLE`.
    pub slot: Option<u32>,
    /// State words, e.g. `["spare", "rebuilding"]` or `["faulty"]`.
    pub state: Vec<String>,
}

/// Reads `<dir>/<name>.detail` and `<dir>/<name>.export`; missing files give empty fields.
pub(crate) fn read(dir: &Path, name: &str) -> Mdadm {
    let mut mdadm = Mdadm::default();
    if let Some(text) = read_optional(&dir.join(format!("{name}.export"))) {
        export(&text, &mut mdadm);
    }
    // The detail table has the richer state words, so it replaces export's device list.
    if let Some(text) = read_optional(&dir.join(format!("{name}.detail"))) {
        detail(&text, &mut mdadm);
    }
    mdadm
}

fn read_optional(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "mdadm helper output unreadable");
            None
        }
    }
}

/// Parses `KEY=VALUE` lines such as `MD_LEVEL=raid1` and `MD_DEVICE_dev_sdb1_ROLE=0`.
fn export(text: &str, mdadm: &mut Mdadm) {
    let values: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('\'')))
        .collect();
    mdadm.level = values.get("MD_LEVEL").map(|v| v.to_string());
    mdadm.raid_disks = values.get("MD_DEVICES").and_then(|v| v.parse().ok());
    for (key, role) in &values {
        let Some(middle) = key
            .strip_prefix("MD_DEVICE_")
            .and_then(|k| k.strip_suffix("_ROLE"))
        else {
            continue;
        };
        // The device path is in the matching `_DEV` key; the key itself has `/` as `_`.
        let path = values
            .get(format!("MD_DEVICE_{middle}_DEV").as_str())
            .copied()
            .unwrap_or(middle);
        let slot = role.parse().ok();
        mdadm.devices.push(MdadmDevice {
            device: kernel_name(path),
            slot,
            state: if slot.is_some() {
                Vec::new()
            } else {
                vec![role.to_string()]
            },
        });
    }
}

/// Parses the `Key : Value` header and the device table of `mdadm --detail`.
fn detail(text: &str, mdadm: &mut Mdadm) {
    let mut in_table = false;
    let mut devices = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("Number") && trimmed.contains("RaidDevice") {
            in_table = true;
            continue;
        }
        if in_table {
            if let Some(device) = table_row(trimmed) {
                devices.push(device);
            }
            continue;
        }
        let Some((key, value)) = trimmed.split_once(" : ") else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "State" => mdadm.state = Some(value.to_string()),
            "Raid Level" => mdadm.level = Some(value.to_string()),
            "Raid Devices" => mdadm.raid_disks = value.parse().ok().or(mdadm.raid_disks),
            _ => {}
        }
    }
    if !devices.is_empty() {
        mdadm.devices = devices;
    }
}

/// Parses `0  8  17  0  active sync  /dev/sdb1` or `2  8  33  -  spare rebuilding  /dev/sdc1`.
/// Rows for removed slots have no device path and are skipped.
fn table_row(line: &str) -> Option<MdadmDevice> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 6 {
        return None;
    }
    let path = words.last()?;
    if !path.starts_with('/') {
        return None;
    }
    Some(MdadmDevice {
        device: kernel_name(path),
        slot: words[3].parse().ok(),
        state: words[4..words.len() - 1]
            .iter()
            .map(|w| w.to_string())
            .collect(),
    })
}

/// `/dev/sdb1` → `sdb1`; `dev_sdb1` (an export key fragment) → `sdb1`.
fn kernel_name(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_prefix("dev_").unwrap_or(name).to_string()
}
