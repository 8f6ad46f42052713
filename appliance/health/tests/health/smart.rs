//! SMART: verdicts for captured and hand-written smartctl JSON, stale and broken helper files,
//! and smartctl run through fake scripts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use health::HealthError;
use health::smart::{self, Device, Verdict};

/// The verdict each fixture file should get: its level and a piece of its first reason.
/// Captured and derived files are described in `fixtures/smart/README.md`, hand-written ones
/// in `fixtures/handmade/README.md`.
const EXPECTED: &[(&str, &str, &str)] = &[
    // Captured from QEMU: healthy.
    ("smart/sata-qemu.json", "ok", ""),
    ("smart/nvme-qemu.json", "ok", ""),
    // Derived from the captures.
    (
        "smart/sata-reallocated.json",
        "warning",
        "48 reallocated sectors (ID 5): the disk is remapping bad sectors",
    ),
    (
        "smart/sata-pending.json",
        "warning",
        "8 sectors pending reallocation (ID 197)",
    ),
    (
        "smart/sata-failed.json",
        "failing",
        "the disk's own SMART health check says it is failing",
    ),
    (
        "smart/nvme-critical.json",
        "failing",
        "reliability is degraded by media or internal errors",
    ),
    // smartctl reports FAILED for any NVMe critical warning; the temperature bit is a warning.
    (
        "smart/nvme-hot.json",
        "warning",
        "temperature outside its safe range",
    ),
    // Hand-written.
    (
        "handmade/smart/sata-prefail-now.json",
        "failing",
        "Spin_Retry_Count (ID 10) is at or below its failure threshold now",
    ),
    (
        "handmade/smart/sata-old-age-past.json",
        "warning",
        "Temperature_Celsius (ID 194) fell to or below its threshold in the past",
    ),
    (
        "handmade/smart/sata-selftest-failed.json",
        "warning",
        "the self-test log records a failed self-test",
    ),
    (
        "handmade/smart/sata-open-failed.json",
        "unknown",
        "smartctl could not read the disk: Smartctl open device: /dev/sdz failed: No such device",
    ),
    (
        "handmade/smart/sata-no-smart.json",
        "unknown",
        "smartctl returned no health data: SMART support is: Unavailable",
    ),
    (
        "handmade/smart/nvme-worn.json",
        "warning",
        "93% of the rated write endurance is used",
    ),
    (
        "handmade/smart/nvme-spare-low.json",
        "failing",
        "available spare is 5%, below the drive's threshold of 10%",
    ),
    (
        "handmade/smart/scsi-grown-defects.json",
        "warning",
        "12 grown defects",
    ),
];

fn level_and_first_reason(verdict: &Verdict) -> (&'static str, String) {
    match verdict {
        Verdict::Ok => ("ok", String::new()),
        Verdict::Warning { reasons } => ("warning", reasons[0].clone()),
        Verdict::Failing { reasons } => ("failing", reasons[0].clone()),
        Verdict::Unknown { reason } => ("unknown", reason.clone()),
    }
}

fn check(device: &Device, file: &str, level: &str, reason: &str) {
    let (got, first) = level_and_first_reason(&device.verdict);
    assert_eq!(got, level, "{file}: {:?}", device.verdict);
    assert!(
        first.contains(reason),
        "{file}: {first:?} should contain {reason:?}"
    );
}

/// Every `*.json` under `fixtures/<dir>`, except smartctl --scan output.
fn device_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(crate::fixtures().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "scan.json")
        .map(|n| format!("{dir}/{n}"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_gets_its_expected_verdict() {
    let mut files = device_files("smart");
    assert!(
        files.len() >= 7,
        "captured SMART fixtures missing: {files:?}"
    );
    files.extend(device_files("handmade/smart"));
    for file in &files {
        let Some((_, level, reason)) = EXPECTED.iter().find(|(f, ..)| f == file) else {
            panic!("{file} has no expected verdict in this test; add one");
        };
        let path = crate::fixtures().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let device = smart::parse(&text, &path.display().to_string()).unwrap();
        check(&device, file, level, reason);
    }
    assert_eq!(files.len(), EXPECTED.len(), "an expected file is missing");
}

#[test]
fn fields_are_read_from_each_protocol() {
    let read = |file: &str| {
        let path = crate::fixtures().join(file);
        smart::parse(&std::fs::read_to_string(&path).unwrap(), file).unwrap()
    };
    let sata = read("smart/sata-pending.json");
    assert_eq!(sata.device, "/dev/sda");
    assert_eq!(sata.protocol, "ATA");
    assert_eq!(sata.model.as_deref(), Some("QEMU HARDDISK"));
    assert_eq!(sata.serial.as_deref(), Some("OUTPOST-SATA-0"));
    assert_eq!(sata.passed, Some(true));
    assert_eq!(sata.temperature_c, Some(31));
    assert_eq!(sata.power_on_hours, Some(1));
    assert_eq!(sata.reallocated_sectors, Some(0));
    assert_eq!(sata.pending_sectors, Some(8));
    assert_eq!(sata.offline_uncorrectable, Some(2));
    assert_eq!(sata.nvme_critical_warning, None);
    assert_eq!(sata.exit_status, Some(0));
    let Verdict::Warning { reasons } = &sata.verdict else {
        panic!("{:?}", sata.verdict)
    };
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].starts_with("2 offline uncorrectable sectors (ID 198)"));

    let nvme = read("smart/nvme-critical.json");
    assert_eq!(nvme.protocol, "NVMe");
    assert_eq!(nvme.temperature_c, Some(50));
    assert_eq!(nvme.nvme_critical_warning, Some(4));
    assert_eq!(nvme.nvme_media_errors, Some(12));
    assert_eq!(nvme.nvme_percentage_used, Some(0));
    // QEMU reports spare 0 and threshold 0, which is not "below".
    assert_eq!(nvme.nvme_available_spare_below_threshold, Some(false));
    assert_eq!(nvme.exit_status, Some(8));
    let Verdict::Failing { reasons } = &nvme.verdict else {
        panic!("{:?}", nvme.verdict)
    };
    // The failure is the reliability bit, not smartctl's FAILED, plus the media errors.
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].starts_with("12 media errors"));

    let hot = read("smart/nvme-hot.json");
    assert_eq!(hot.passed, Some(false));
    let Verdict::Warning { reasons } = &hot.verdict else {
        panic!("{:?}", hot.verdict)
    };
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("temperature is 78 °C"))
    );

    let scsi = read("handmade/smart/scsi-grown-defects.json");
    assert_eq!(scsi.model.as_deref(), Some("SEAGATE ST4000NM0023"));
    assert_eq!(scsi.reallocated_sectors, Some(12));
    assert_eq!(scsi.power_on_hours, Some(40122));
}

#[test]
fn verdicts_serialise_with_a_level_tag() {
    let json = serde_json::to_value(Verdict::Warning {
        reasons: vec!["hot".into()],
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"level": "warning", "reasons": ["hot"]})
    );
    assert_eq!(
        serde_json::to_value(Verdict::Ok).unwrap(),
        serde_json::json!({"level": "ok"})
    );
}

#[test]
fn text_that_is_not_smartctl_json_is_an_error_naming_its_origin() {
    for text in [
        "{\"smartctl\": {\"exit_status\": 0",
        "[1, 2, 3]",
        "{\"device\": {\"name\": \"/dev/sda\"}}",
        "smartctl 7.3 2022-02-28 r5338 [x86_64-linux-6.1.0] (local build)",
    ] {
        let error = smart::parse(text, "/run/outpost-hw/smart-sda.json").unwrap_err();
        assert!(matches!(error, HealthError::SmartJson { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("/run/outpost-hw/smart-sda.json"),
            "{text}: {message}"
        );
    }
    let scan = std::fs::read_to_string(crate::fixtures().join("smart/scan.json")).unwrap();
    let message = smart::parse(&scan, "scan.json").unwrap_err().to_string();
    assert!(message.contains("--scan"), "{message}");
}

/// Copies fixture files into a fresh directory, as a helper would have written them.
fn helper_dir(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        let from = crate::fixtures().join(file);
        std::fs::copy(&from, dir.path().join(from.file_name().unwrap())).unwrap();
    }
    dir
}

const A_DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn a_helper_directory_is_read_in_name_order_skipping_other_files() {
    let dir = helper_dir(&[
        "smart/sata-reallocated.json",
        "smart/nvme-qemu.json",
        "smart/scan.json",
        "raid/raid1-clean/mdadm/md0.export",
    ]);
    let devices = smart::sample_dir(dir.path(), A_DAY).unwrap();
    let names: Vec<&str> = devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, ["/dev/nvme0", "/dev/sda"]);
    assert_eq!(devices[0].verdict, Verdict::Ok);
    assert!(matches!(devices[1].verdict, Verdict::Warning { .. }));
}

#[test]
fn the_fixture_directories_sample_like_their_files_parse() {
    for dir in ["smart", "handmade/smart"] {
        let devices = smart::sample_dir(&crate::fixtures().join(dir), 100 * 365 * A_DAY).unwrap();
        let files = device_files(dir);
        assert_eq!(devices.len(), files.len(), "{dir}");
        for (device, file) in devices.iter().zip(&files) {
            let (_, level, reason) = EXPECTED.iter().find(|(f, ..)| f == file).unwrap();
            check(device, file, level, reason);
        }
    }
}

#[test]
fn a_stale_file_gives_unknown_but_keeps_what_it_said() {
    let dir = helper_dir(&["smart/sata-failed.json"]);
    let file = std::fs::File::options()
        .write(true)
        .open(dir.path().join("sata-failed.json"))
        .unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(2 * 3600 + 30))
        .unwrap();
    drop(file);
    let devices = smart::sample_dir(dir.path(), Duration::from_secs(30 * 60)).unwrap();
    assert_eq!(
        devices[0].verdict,
        Verdict::Unknown {
            reason: "stale: the SMART helper last ran 120 min ago".into()
        }
    );
    assert_eq!(devices[0].model.as_deref(), Some("QEMU HARDDISK"));
    assert_eq!(devices[0].passed, Some(false));
}

#[test]
fn a_broken_file_is_an_unknown_device_naming_the_file() {
    let dir = helper_dir(&["smart/nvme-qemu.json"]);
    let broken = dir.path().join("sdb.json");
    // What a helper killed half-way through writing leaves behind.
    std::fs::write(
        &broken,
        "{\n  \"json_format_version\": [1, 0],\n  \"smartctl\": {",
    )
    .unwrap();
    let devices = smart::sample_dir(dir.path(), A_DAY).unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].device, "/dev/nvme0");
    assert_eq!(devices[1].device, "sdb");
    let Verdict::Unknown { reason } = &devices[1].verdict else {
        panic!("{:?}", devices[1].verdict)
    };
    assert!(reason.contains(&broken.display().to_string()), "{reason}");
    assert!(reason.contains("not smartctl JSON"), "{reason}");
}

#[test]
fn a_missing_helper_directory_means_no_disks() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        smart::sample_dir(&dir.path().join("hw"), A_DAY).unwrap(),
        []
    );
}

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn smartctl_is_run_with_its_exit_status_respected() {
    // Every script is written before any is run: a script still open for writing in this
    // process when another test forks makes exec fail with ETXTBSY.
    let dir = tempfile::tempdir().unwrap();
    let fixtures = crate::fixtures();
    let args = dir.path().join("args");
    let finding = script(
        dir.path(),
        "finding",
        &format!(
            "printf '%s\\n' \"$@\" > '{}'\ncat '{}'\nexit 4",
            args.display(),
            fixtures.join("smart/sata-reallocated.json").display()
        ),
    );
    let open_failed = script(
        dir.path(),
        "open-failed",
        &format!(
            "cat '{}'\nexit 2",
            fixtures
                .join("handmade/smart/sata-open-failed.json")
                .display()
        ),
    );
    let bad_arguments = script(
        dir.path(),
        "bad-arguments",
        "echo '=======> UNRECOGNIZED OPTION: j' >&2\nexit 1",
    );
    let hanging = script(dir.path(), "hanging", "exec sleep 30");
    let seconds = Duration::from_secs(20);

    // Bit 2 (a SMART command failed) is a finding about the disk: the output still counts,
    // and the process's status is the one recorded.
    let device = smart::run_smartctl(&finding, "/dev/sdx", seconds)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&args).unwrap(),
        "-j\n-a\n/dev/sdx\n"
    );
    assert_eq!(device.exit_status, Some(4));
    assert_eq!(device.reallocated_sectors, Some(48));
    assert!(matches!(device.verdict, Verdict::Warning { .. }));

    // Bit 1: the device could not be opened; smartctl's own message is the error.
    let error = smart::run_smartctl(&open_failed, "/dev/sdz", seconds)
        .await
        .unwrap_err();
    let HealthError::SmartctlFailed {
        device,
        status,
        message,
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!((device.as_str(), *status), ("/dev/sdz", 2));
    assert_eq!(
        message,
        "Smartctl open device: /dev/sdz failed: No such device"
    );
    assert!(error.to_string().contains("/dev/sdz"), "{error}");

    // Bit 0 with no JSON at all: stderr is the message.
    let error = smart::run_smartctl(&bad_arguments, "/dev/sda", seconds)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("UNRECOGNIZED OPTION"), "{error}");

    // A hanging disk does not hang the caller.
    let started = std::time::Instant::now();
    let error = smart::run_smartctl(&hanging, "/dev/sda", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(error, HealthError::SmartctlTimeout { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // No smartctl at all.
    let missing = dir.path().join("no-smartctl");
    let error = smart::run_smartctl(&missing, "/dev/sda", seconds)
        .await
        .unwrap_err();
    assert!(
        matches!(error, HealthError::SmartctlSpawn { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
}

#[test]
fn rules_not_covered_by_a_fixture() {
    let doc = |body: &str| {
        smart::parse(
            &format!(
                "{{\"smartctl\": {{\"exit_status\": 0}}, \"device\": {{\"name\": \"/dev/x\", \"protocol\": \"NVMe\"}}, {body}}}"
            ),
            "inline",
        )
        .unwrap()
        .verdict
    };
    // Hot by temperature alone.
    assert!(matches!(
        doc("\"smart_status\": {\"passed\": true}, \"temperature\": {\"current\": 60}"),
        Verdict::Warning { .. }
    ));
    assert_eq!(
        doc("\"smart_status\": {\"passed\": true}, \"temperature\": {\"current\": 59}"),
        Verdict::Ok
    );
    // The read-only bit fails the drive even when smartctl's status says nothing.
    let read_only = doc("\"nvme_smart_health_information_log\": {\"critical_warning\": 8}");
    let Verdict::Failing { reasons } = read_only else {
        panic!("{read_only:?}")
    };
    assert!(reasons[0].contains("read-only"), "{reasons:?}");
    // A FAILED status that no warning bit explains is trusted.
    assert!(matches!(
        doc(
            "\"smart_status\": {\"passed\": false}, \"nvme_smart_health_information_log\": {\"critical_warning\": 0}"
        ),
        Verdict::Failing { .. }
    ));
}
