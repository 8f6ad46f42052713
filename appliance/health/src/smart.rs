//! SMART: what each disk says about itself, read from `smartctl -j -a` (smartmontools 7.x).
//!
//! The service normally cannot open disks itself, so a root helper runs smartctl and writes
//! one JSON file per disk (`sample_dir`). Where the service may run smartctl, `run_smartctl`
//! does it directly. Either way one `parse` turns the JSON into a `Device` with a `Verdict`.
//!
//! smartctl's exit status is a bit mask (smartctl(8), EXIT STATUS):
//!
//! | bit | value | meaning |
//! |---|---|---|
//! | 0 | 1 | the command line did not parse, or smartctl failed internally |
//! | 1 | 2 | the device could not be opened, identified, or was asleep with `-n` |
//! | 2 | 4 | a SMART or other command to the disk failed, or SMART data had a bad checksum |
//! | 3 | 8 | SMART status check returned "DISK FAILING" |
//! | 4 | 16 | prefail attributes are at or below their threshold now |
//! | 5 | 32 | SMART status is OK, but usage (old-age) attributes are at or below threshold, or prefail attributes were in the past |
//! | 6 | 64 | the device error log has records of errors |
//! | 7 | 128 | the device self-test log has records of errors |
//!
//! Bits 0 and 1 mean smartctl learned nothing about the disk; the others are findings.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::HealthError;

/// One disk's SMART reading and the verdict derived from it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// The device as smartctl names it, e.g. `/dev/sda`; for an unreadable helper file, the
    /// file's name without `.json`.
    pub device: String,
    /// smartctl's `device.protocol`: `ATA`, `NVMe` or `SCSI` (`unknown` if absent).
    pub protocol: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// `smart_status.passed`: the disk's own overall health assessment.
    pub passed: Option<bool>,
    pub temperature_c: Option<i64>,
    pub power_on_hours: Option<u64>,
    /// ATA attribute 5 raw value; for SCSI disks, the grown defect list length.
    pub reallocated_sectors: Option<u64>,
    /// ATA attribute 197 raw value.
    pub pending_sectors: Option<u64>,
    /// ATA attribute 198 raw value.
    pub offline_uncorrectable: Option<u64>,
    pub nvme_critical_warning: Option<u64>,
    pub nvme_media_errors: Option<u64>,
    pub nvme_percentage_used: Option<u64>,
    /// Available spare below the drive's own threshold (compared, or critical warning bit 0).
    pub nvme_available_spare_below_threshold: Option<bool>,
    /// smartctl's exit status bit mask (see the module documentation).
    pub exit_status: Option<u8>,
    pub verdict: Verdict,
}

/// What a technician should make of a disk.
///
/// **Failing** when any of these holds:
/// - the disk's own health check failed (`smart_status.passed` false, or exit status bit 3),
///   except on NVMe drives with a nonzero critical warning: smartctl reports FAILED for any
///   warning bit, the temperature bit included, so there the bits below decide;
/// - a pre-failure attribute is at or below its threshold now (`when_failed` `now` on an
///   attribute flagged prefailure, or exit status bit 4);
/// - NVMe critical warning bit 0x04 (reliability degraded), 0x08 (read-only), 0x10
///   (volatile memory backup failed) or 0x20 (persistent memory region unreliable);
/// - NVMe available spare below its threshold (compared, or critical warning bit 0x01).
///
/// **Warning** when none of those holds but any of these does:
/// - reallocated (ID 5), pending (ID 197) or offline-uncorrectable (ID 198) sectors, or SCSI
///   grown defects, above zero;
/// - NVMe media errors above zero;
/// - temperature 60 °C or more, or NVMe critical warning bit 0x02 (temperature);
/// - NVMe percentage used 90 or more;
/// - an old-age attribute at or below its threshold now, or any attribute in the past
///   (`when_failed` `past`, or exit status bit 5);
/// - the self-test log records a failed test (exit status bit 7).
///
/// Exit status bit 6 (the error log has entries) is not a warning on its own: the log keeps
/// old, often cable-related, entries for the life of the disk, and the sector counts above
/// are the better evidence of a disk going bad.
///
/// **Unknown** when smartctl could not read the disk (exit status bits 0 or 1), returned no
/// health data at all, or the helper's file is stale or unreadable.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "level", rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Warning { reasons: Vec<String> },
    Failing { reasons: Vec<String> },
    Unknown { reason: String },
}

/// Parses one `smartctl -j -a` document. `origin` names it in errors (a path, or the command).
///
/// A document smartctl wrote after failing to open the disk still parses, with an Unknown
/// verdict; only text that is not smartctl JSON at all is an error.
pub fn parse(json: &str, origin: &str) -> Result<Device, HealthError> {
    parse_with_status(json, origin, None)
}

/// Reads every `*.json` a root helper wrote into `dir` (`smartctl -j -a <dev>` output), in
/// file name order.
///
/// A file last modified longer than `max_age` ago gives `Verdict::Unknown` ("stale: the SMART
/// helper last ran N min ago") rather than trusting old data; its other fields are kept for
/// display. `smartctl --scan` output is skipped. A file that cannot be read or is not
/// smartctl JSON gives a `Device` named after
/// the file with `Verdict::Unknown` carrying the error, which names the file: one bad file
/// (say, half written) must not hide every other disk. A missing `dir` means the helper has
/// not run or there are no disks, so it is `Ok(empty)`; an unreadable `dir` is an error.
pub fn sample_dir(dir: &Path, max_age: Duration) -> Result<Vec<Device>, HealthError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(HealthError::read(dir, error)),
    };
    let mut paths: Vec<_> = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|error| HealthError::read(dir, error))?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json") && p.is_file());
    paths.sort();
    let now = SystemTime::now();
    let mut devices = Vec::with_capacity(paths.len());
    for path in paths {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|error| HealthError::read(&path, error));
        // A helper may also keep `smartctl --scan-open -j` output here to know which disks to
        // read; it describes no disk, so it is not reported as one.
        if let Ok(text) = &text
            && serde_json::from_str::<Value>(text).is_ok_and(|doc| is_scan_output(&doc))
        {
            continue;
        }
        let parsed = text.and_then(|text| parse(&text, &origin));
        let mut device = parsed.unwrap_or_else(|error| {
            tracing::warn!(path = %origin, %error, "SMART helper file unusable");
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            Device::unknown(name.unwrap_or(origin.clone()), error.to_string())
        });
        let modified = std::fs::metadata(&path).and_then(|m| m.modified());
        // A file dated in the future (clock stepped back) counts as fresh.
        if let Ok(age) = modified.map(|m| now.duration_since(m).unwrap_or_default())
            && age > max_age
        {
            device.verdict = Verdict::Unknown {
                reason: format!(
                    "stale: the SMART helper last ran {} min ago",
                    age.as_secs() / 60
                ),
            };
        }
        devices.push(device);
    }
    Ok(devices)
}

/// Runs `smartctl -j -a <device>` directly, for setups where the service may.
///
/// Exit status bits 0 and 1 mean the command failed (bad arguments, device not openable), so
/// that is an error carrying smartctl's own message. Higher bits are findings about the disk
/// and the output still parses; the process's exit status is the one recorded. smartctl is
/// killed if it runs longer than `timeout`, which a hanging disk can cause.
pub async fn run_smartctl(
    program: &Path,
    device: &str,
    timeout: Duration,
) -> Result<Device, HealthError> {
    let spawn_error = |source| HealthError::SmartctlSpawn {
        program: program.to_path_buf(),
        source,
    };
    let child = tokio::process::Command::new(program)
        .args(["-j", "-a", device])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the wait below on timeout drops the child, and this kills it.
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.map_err(spawn_error)?,
        Err(_) => {
            return Err(HealthError::SmartctlTimeout {
                program: program.to_path_buf(),
                device: device.to_string(),
                seconds: timeout.as_secs(),
            });
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    // No code means a signal ended it, which is a failure of the command.
    let code = output.status.code();
    match code {
        Some(code) if code & 0b11 == 0 => {}
        _ => {
            let json: Option<Value> = serde_json::from_str(&stdout).ok();
            let mut message = json.as_ref().map(messages).unwrap_or_default();
            if message.is_empty() {
                message = String::from_utf8_lossy(&output.stderr).trim().to_string();
            }
            if message.is_empty() {
                message = "no message".to_string();
            }
            return Err(HealthError::SmartctlFailed {
                device: device.to_string(),
                status: code.unwrap_or(-1),
                message,
            });
        }
    }
    let origin = format!("the output of `{} -j -a {device}`", program.display());
    parse_with_status(&stdout, &origin, code.and_then(|c| u8::try_from(c).ok()))
}

impl Device {
    /// A device about which nothing could be read.
    fn unknown(device: String, reason: String) -> Device {
        Device {
            device,
            protocol: "unknown".to_string(),
            model: None,
            serial: None,
            passed: None,
            temperature_c: None,
            power_on_hours: None,
            reallocated_sectors: None,
            pending_sectors: None,
            offline_uncorrectable: None,
            nvme_critical_warning: None,
            nvme_media_errors: None,
            nvme_percentage_used: None,
            nvme_available_spare_below_threshold: None,
            exit_status: None,
            verdict: Verdict::Unknown { reason },
        }
    }
}

/// One row of `ata_smart_attributes.table`, as much of it as the verdict needs.
struct Attribute {
    id: u64,
    name: String,
    value: Option<u64>,
    worst: Option<u64>,
    thresh: Option<u64>,
    when_failed: String,
    /// `None` when the flags are absent; treated as prefail, the cautious reading.
    prefailure: Option<bool>,
    raw: Option<u64>,
}

/// `parse`, with the exit status taken from the process when it ran here: a helper's file
/// only has the status smartctl wrote into its own JSON.
fn parse_with_status(
    json: &str,
    origin: &str,
    process_status: Option<u8>,
) -> Result<Device, HealthError> {
    let bad = |reason: String| HealthError::SmartJson {
        origin: origin.to_string(),
        reason,
    };
    let doc: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if !doc.is_object() {
        return Err(bad("the top level is not a JSON object".into()));
    }
    if doc.get("smartctl").is_none() && doc.get("json_format_version").is_none() {
        return Err(bad("there is no `smartctl` section".into()));
    }
    if is_scan_output(&doc) {
        return Err(bad(
            "it is `smartctl --scan` output, a list of devices, not one device's reading".into(),
        ));
    }
    let text = |pointer: &str| {
        doc.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let number = |pointer: &str| doc.pointer(pointer).and_then(Value::as_u64);
    let attributes: Vec<Attribute> = doc
        .pointer("/ata_smart_attributes/table")
        .and_then(Value::as_array)
        .map(|rows| rows.iter().filter_map(attribute).collect())
        .unwrap_or_default();
    let raw_of = |id: u64| attributes.iter().find(|a| a.id == id).and_then(|a| a.raw);
    let nvme = doc.get("nvme_smart_health_information_log");
    let nvme_number = |key: &str| nvme.and_then(|n| n.get(key)).and_then(Value::as_u64);
    let critical_warning = nvme_number("critical_warning");
    let spare_below = match (
        nvme_number("available_spare"),
        nvme_number("available_spare_threshold"),
    ) {
        (Some(spare), Some(threshold)) => Some(spare < threshold),
        _ => critical_warning.map(|w| w & 0x01 != 0),
    }
    .map(|below| below || critical_warning.is_some_and(|w| w & 0x01 != 0));
    let protocol = text("/device/protocol").unwrap_or_else(|| "unknown".to_string());
    let model = text("/model_name")
        .or_else(|| text("/scsi_model_name"))
        .or_else(|| {
            let vendor = text("/scsi_vendor").or_else(|| text("/vendor"));
            let product = text("/scsi_product").or_else(|| text("/product"));
            match (vendor, product) {
                (Some(v), Some(p)) => Some(format!("{v} {p}")),
                (v, p) => v.or(p),
            }
        });
    let json_status = number("/smartctl/exit_status").and_then(|s| u8::try_from(s).ok());
    let mut device = Device {
        device: text("/device/name").unwrap_or_else(|| origin.to_string()),
        protocol,
        model,
        serial: text("/serial_number"),
        passed: doc.pointer("/smart_status/passed").and_then(Value::as_bool),
        temperature_c: doc
            .pointer("/temperature/current")
            .and_then(Value::as_i64)
            .or_else(|| {
                nvme.and_then(|n| n.get("temperature"))
                    .and_then(Value::as_i64)
            }),
        power_on_hours: number("/power_on_time/hours").or_else(|| nvme_number("power_on_hours")),
        reallocated_sectors: raw_of(5).or_else(|| number("/scsi_grown_defect_list")),
        pending_sectors: raw_of(197),
        offline_uncorrectable: raw_of(198),
        nvme_critical_warning: critical_warning,
        nvme_media_errors: nvme_number("media_errors"),
        nvme_percentage_used: nvme_number("percentage_used"),
        nvme_available_spare_below_threshold: spare_below,
        exit_status: process_status.or(json_status),
        verdict: Verdict::Ok,
    };
    let has_data = device.passed.is_some() || !attributes.is_empty() || nvme.is_some();
    device.verdict = verdict(
        &device,
        &attributes,
        nvme_number("available_spare").zip(nvme_number("available_spare_threshold")),
        has_data,
        &messages(&doc),
    );
    Ok(device)
}

/// `smartctl --scan -j` lists `devices` and describes none of them.
fn is_scan_output(doc: &Value) -> bool {
    doc.get("devices").is_some_and(Value::is_array) && doc.get("device").is_none()
}

fn attribute(row: &Value) -> Option<Attribute> {
    let number = |key: &str| row.get(key).and_then(Value::as_u64);
    Some(Attribute {
        id: number("id")?,
        name: row
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("unnamed attribute")
            .to_string(),
        value: number("value"),
        worst: number("worst"),
        thresh: number("thresh"),
        when_failed: row
            .get("when_failed")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        prefailure: row.pointer("/flags/prefailure").and_then(Value::as_bool),
        raw: row.pointer("/raw/value").and_then(Value::as_u64),
    })
}

/// smartctl's own messages (`smartctl.messages[].string`), joined. Informational ones are
/// kept: "SMART support is: Unavailable" explains an empty reading better than the error
/// that follows it.
fn messages(doc: &Value) -> String {
    let messages: Vec<&str> = doc
        .pointer("/smartctl/messages")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|m| m.get("string").and_then(Value::as_str))
                .map(str::trim)
                .collect()
        })
        .unwrap_or_default();
    messages.join("; ")
}

/// Applies the rules documented on `Verdict`.
fn verdict(
    device: &Device,
    attributes: &[Attribute],
    nvme_spare: Option<(u64, u64)>,
    has_data: bool,
    messages: &str,
) -> Verdict {
    let status = device.exit_status.unwrap_or(0);
    let bit = |n: u8| status & (1 << n) != 0;
    let said = |fallback: &str| {
        if messages.is_empty() {
            fallback.to_string()
        } else {
            messages.to_string()
        }
    };
    if bit(0) || bit(1) {
        return Verdict::Unknown {
            reason: format!(
                "smartctl could not read the disk: {}",
                said(&format!("exit status {status}"))
            ),
        };
    }
    if !has_data {
        return Verdict::Unknown {
            reason: format!(
                "smartctl returned no health data: {}",
                said("SMART may be unsupported or disabled on this disk")
            ),
        };
    }
    let mut failing = Vec::new();
    let mut warning = Vec::new();

    // For NVMe, smartctl reports FAILED (and sets bit 3) for any nonzero critical warning,
    // the temperature bit included, so when the warning bits are known they decide instead.
    let nvme_explains = device.nvme_critical_warning.is_some_and(|w| w != 0);
    if (device.passed == Some(false) || bit(3)) && !nvme_explains {
        failing.push(
            "the disk's own SMART health check says it is failing: back up and replace it"
                .to_string(),
        );
    }
    let mut prefail_now = false;
    let mut any_threshold_finding = false;
    for a in attributes {
        let numbers = format!(
            "value {}, worst {}, threshold {}",
            shown(a.value),
            shown(a.worst),
            shown(a.thresh)
        );
        match a.when_failed.as_str() {
            "now" if a.prefailure != Some(false) => {
                prefail_now = true;
                failing.push(format!(
                    "{} (ID {}) is at or below its failure threshold now ({numbers}): \
                     the disk predicts its own failure",
                    a.name, a.id
                ));
            }
            "now" => {
                any_threshold_finding = true;
                warning.push(format!(
                    "{} (ID {}) is at or below its threshold now ({numbers}): \
                     the disk is past its design life by this measure",
                    a.name, a.id
                ));
            }
            "past" => {
                any_threshold_finding = true;
                warning.push(format!(
                    "{} (ID {}) fell to or below its threshold in the past ({numbers})",
                    a.name, a.id
                ));
            }
            _ => {}
        }
    }
    if bit(4) && !prefail_now {
        failing.push(
            "a pre-failure SMART attribute is at or below its threshold now \
             (smartctl exit status bit 4): the disk predicts its own failure"
                .to_string(),
        );
    }
    if bit(5) && !any_threshold_finding {
        warning.push(
            "a SMART attribute is at or below its threshold, now for a usage attribute or \
             in the past for a pre-failure one (smartctl exit status bit 5)"
                .to_string(),
        );
    }
    if let Some(w) = device.nvme_critical_warning {
        if w & 0x04 != 0 {
            failing.push(
                "the drive reports its reliability is degraded by media or internal errors \
                 (NVMe critical warning 0x04): replace it"
                    .to_string(),
            );
        }
        if w & 0x08 != 0 {
            failing.push(
                "the drive has made itself read-only (NVMe critical warning 0x08): replace it"
                    .to_string(),
            );
        }
        if w & 0x10 != 0 {
            failing.push(
                "the drive's volatile memory backup has failed (NVMe critical warning 0x10): \
                 data in its cache may be lost on power failure"
                    .to_string(),
            );
        }
        if w & 0x20 != 0 {
            failing.push(
                "the drive reports its persistent memory region unreliable \
                 (NVMe critical warning 0x20): replace it"
                    .to_string(),
            );
        }
        if w & 0xc0 != 0 {
            warning.push(format!(
                "the drive sets critical warning bits 0x{:02x} that this version does not know",
                w & 0xc0
            ));
        }
        if w & 0x02 != 0 {
            warning.push(
                "the drive reports a temperature outside its safe range \
                 (NVMe critical warning 0x02): check the fans and airflow"
                    .to_string(),
            );
        }
    }
    if device.nvme_available_spare_below_threshold == Some(true) {
        failing.push(match nvme_spare {
            Some((spare, threshold)) if spare < threshold => format!(
                "available spare is {spare}%, below the drive's threshold of {threshold}%: \
                 it is running out of blocks to replace worn ones"
            ),
            _ => "available spare is below the drive's threshold (NVMe critical warning 0x01): \
                  it is running out of blocks to replace worn ones"
                .to_string(),
        });
    }

    if let Some(n) = device.reallocated_sectors.filter(|n| *n > 0) {
        warning.push(if device.protocol == "SCSI" {
            format!("{n} grown defects: the disk has remapped bad blocks")
        } else {
            format!("{n} reallocated sectors (ID 5): the disk is remapping bad sectors")
        });
    }
    if let Some(n) = device.pending_sectors.filter(|n| *n > 0) {
        warning.push(format!(
            "{n} sectors pending reallocation (ID 197): the disk could not read them \
             and will remap them when they are next written"
        ));
    }
    if let Some(n) = device.offline_uncorrectable.filter(|n| *n > 0) {
        warning.push(format!(
            "{n} offline uncorrectable sectors (ID 198): the disk's own surface scan \
             found sectors it cannot read"
        ));
    }
    if let Some(n) = device.nvme_media_errors.filter(|n| *n > 0) {
        warning.push(format!(
            "{n} media errors: the drive found data it could not read back or correct"
        ));
    }
    if let Some(t) = device.temperature_c.filter(|t| *t >= 60) {
        warning.push(format!(
            "temperature is {t} °C, 60 °C or more: check the fans and airflow"
        ));
    }
    if let Some(p) = device.nvme_percentage_used.filter(|p| *p >= 90) {
        warning.push(format!(
            "{p}% of the rated write endurance is used: plan a replacement"
        ));
    }
    if bit(7) {
        warning.push(
            "the self-test log records a failed self-test (smartctl exit status bit 7): \
             the disk could not read part of its surface"
                .to_string(),
        );
    }

    if !failing.is_empty() {
        failing.extend(warning);
        Verdict::Failing { reasons: failing }
    } else if !warning.is_empty() {
        Verdict::Warning { reasons: warning }
    } else {
        Verdict::Ok
    }
}

fn shown(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_string(), |n| n.to_string())
}
