//! The shipped configurations are valid, and a broken one gets every problem reported at once.

use config::{Config, Durability, UnknownCallers};

#[test]
fn shipped_configurations_are_valid() {
    let embedded = Config::embedded();
    assert_eq!(embedded.dicom.ae_title.as_str(), "OUTPOST");
    assert_eq!(embedded.dicom.port, 11112);
    assert!(embedded.dicom.bind.is_loopback());
    assert_eq!(
        embedded.dicom.accept_unknown_callers,
        UnknownCallers::Loopback
    );
    assert_eq!(embedded.storage.durability, Durability::Full);
    // A second patient under a held study is quarantined unless a site asks for refusal.
    assert_eq!(
        embedded.storage.patient_conflict,
        config::PatientConflict::Quarantine
    );
    assert_eq!(
        embedded.storage.data_dir,
        std::path::PathBuf::from("./outpost-data")
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/");
    for name in ["example.toml", "dev.toml"] {
        let c = Config::load(std::path::Path::new(&format!("{root}{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!c.dicom.remotes.is_empty(), "{name}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[dicom]
ae_title = "A-TITLE-THAT-IS-FAR-TOO-LONG"
port = 70000
bind = "localhost"
max_asociations = 3
accept_unknown_callers = "sometimes"

[[dicom.remote]]
ae_title = "CT1"
port = "104"

[[dicom.remote]]
ae_title = "CT1"
host = "10.0.0.6"
port = 104
permissions = ["store", "delete"]
tls = true

[storage]
durability = "eventually"
duplicates = "keep-first"
patient_conflict = "merge"
"#;
    let problems = Config::parse(text, "site.toml").unwrap_err().0;
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "dicom.ae_title",
        "dicom.port",
        "dicom.bind",
        "dicom.max_asociations",
        "dicom.accept_unknown_callers",
        "dicom.remote[1].host",
        "dicom.remote[1].port",
        "dicom.remote[2].permissions",
        "storage.durability",
        "storage.patient_conflict",
    ] {
        assert!(
            keys.contains(&expected),
            "no problem reported for {expected}: {problems:#?}"
        );
    }
    let typo = problems
        .iter()
        .find(|p| p.key == "dicom.max_asociations")
        .unwrap();
    assert!(
        typo.message.contains("max_associations"),
        "{}",
        typo.message
    );
    assert!(problems.iter().all(|p| p.file == "site.toml"));
    // The duplicate title is only noticed once the second remote is otherwise valid.
    let dup = r#"
[[dicom.remote]]
ae_title = "CT1"
host = "a"
port = 1
[[dicom.remote]]
ae_title = "CT1"
host = "b"
port = 2
tls = true
"#;
    let problems = Config::parse(dup, "dup.toml").unwrap_err().0;
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        messages.iter().any(|m| m.contains("listed twice")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("[dicom.tls] is not configured")),
        "{messages:?}"
    );
}

#[test]
fn invalid_toml_is_reported_with_the_file_name() {
    let e = Config::parse("[dicom\nport = 1", "broken.toml").unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.to_string().contains("broken.toml"), "{e}");
}

#[test]
fn forwarding_is_read_into_typed_destinations_and_rules() {
    let text = r#"
[[dicom.remote]]
ae_title = "PACS"
host = "10.0.0.9"
port = 104
upstream = true

[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "PACS"
host = "pacs.example"
port = 104
concurrency = 4
max_attempts = 5

[[forward.destination]]
name = "cloud"
kind = "dicomweb"
url = "https://cloud.example/dicom-web/"
auth = "oauth2"
token_url = "https://login.example/token"
client_id = "outpost"
client_secret = "s3cret"
retry_multiplier = 1.5

[[forward.rule]]
name = "stat CT"
calling_ae = ["CT1"]
modality = ["ct"]
match = { "(0008,1030)" = "*HEAD*" }
destinations = ["central"]
priority = "stat"
"#;
    let c = Config::parse(text, "site.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(c.dicom.remotes[0].upstream);
    let [central, cloud] = &c.forward.destinations[..] else {
        panic!("two destinations expected")
    };
    assert_eq!(central.concurrency, 4);
    assert_eq!(central.retry.max_attempts, Some(5));
    assert!(matches!(&central.kind, config::DestinationKind::Dicom(d) if d.port == 104));
    let config::DestinationKind::DicomWeb(web) = &cloud.kind else {
        panic!("cloud is dicomweb")
    };
    assert_eq!(web.url, "https://cloud.example/dicom-web");
    assert_eq!(web.auth.kind(), "oauth2");
    assert!(
        !format!("{web:?}").contains("s3cret"),
        "secrets stay out of Debug"
    );
    assert_eq!(cloud.retry.max_attempts, None, "forever by default");
    // The delays these make are `store::settle`'s to work out (one formula for every path).
    assert_eq!(
        (cloud.retry.initial, cloud.retry.multiplier, cloud.retry.max),
        (
            std::time::Duration::from_secs(10),
            1.5,
            std::time::Duration::from_secs(3600)
        )
    );
    let rule = &c.forward.rules[0];
    assert_eq!(rule.modality, ["CT"]);
    assert_eq!(rule.matches, [(0x0008_1030, "*HEAD*".to_string())]);
    assert_eq!(rule.priority, config::Priority::Stat);
    assert_eq!(c.forward.recall_from, None);
    assert_eq!(
        (c.storage.high_watermark, c.storage.low_watermark),
        (90, 80)
    );
    assert_eq!(c.storage.capacity_bytes, None);

    // Recall needs C-MOVE, so only a DICOM destination will do.
    let web_recall = text.replace(
        "[[forward.destination]]\nname = \"central\"",
        "[forward]\nrecall_from = \"cloud\"\n\n[[forward.destination]]\nname = \"central\"",
    );
    let problems = Config::parse(&web_recall, "site.toml").unwrap_err().0;
    assert!(
        problems
            .iter()
            .any(|p| p.key == "forward.recall_from" && p.message.contains("DICOM")),
        "{problems:#?}"
    );
}

#[test]
fn forwarding_problems_are_reported_at_once() {
    let text = r#"
[storage]
high_watermark = 90
low_watermark = 95

[forward]
recall_from = "cloud"

[[forward.destination]]
name = "central pacs"
kind = "dimse"

[[forward.destination]]
name = "cloud"
kind = "dicomweb"
url = "ftp://x"
auth = "basic"
username = "u"
retry_initial_s = 60
retry_max_s = 10

[[forward.rule]]
destinations = ["nowhere"]
priority = "urgent"
match = { "PatientName" = "X*" }
"#;
    let problems = Config::parse(text, "site.toml").unwrap_err().0;
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "forward.destination[1].name",
        "forward.destination[1].kind",
        "forward.destination[2].url",
        "forward.destination[2].password",
        "forward.rule[1].priority",
        "forward.rule[1].match",
        "storage.low_watermark",
    ] {
        assert!(
            keys.contains(&expected),
            "no problem reported for {expected}: {problems:#?}"
        );
    }
}

#[test]
fn ups_power_and_alerts_are_read_and_checked() {
    let text = r#"
[ups]
transport = "tcp"
address = "10.0.0.5:502"
profile = "apc-smt"
shutdown_when_runtime_below_s = 240

[power]
shutdown_command = "echo off"

[alerts]
webhook = "https://alerts.example/outpost"
"#;
    let c = Config::parse(text, "site.toml").unwrap();
    let u = c.ups.expect("[ups] is configured");
    assert_eq!(u.profile.name(), "apc-smt");
    assert_eq!(u.shutdown_below, std::time::Duration::from_secs(240));
    assert!(
        matches!(u.transport, ups::Transport::Tcp { ref address } if address == "10.0.0.5:502")
    );
    assert_eq!(c.power.shutdown_command, ["/bin/sh", "-c", "echo off"]);
    assert_eq!(
        c.alerts.webhook.as_deref(),
        Some("https://alerts.example/outpost")
    );
    // Without [ups] nothing is watched, and the power-off command has its default.
    let plain = Config::embedded();
    assert!(plain.ups.is_none());
    assert_eq!(
        plain.power.shutdown_command,
        ["systemctl", "poweroff", "--ignore-inhibitors"]
    );
    assert_eq!(
        plain.health.helper_dir,
        std::path::PathBuf::from("/run/outpost-hw")
    );
}

#[test]
fn ups_problems_are_reported_at_once() {
    let text = r#"
[ups]
transport = "modbus"
profile = "apc-xyz"
timeout_ms = 9000
poll_interval_s = 5
registers = { runtime_s = { address = 1 } }

[health]
raid_interval_s = 0

[power]
shutdown_command = 42

[alerts]
webhook = "alerts.example"
"#;
    let problems = Config::parse(text, "site.toml").unwrap_err().0;
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "ups.transport",
        "ups.profile",
        "ups.timeout_ms",
        "ups.registers",
        "health.raid_interval_s",
        "power.shutdown_command",
        "alerts.webhook",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
    let profile = problems.iter().find(|p| p.key == "ups.profile").unwrap();
    assert!(
        profile.message.contains("\"apc-smt\""),
        "{}",
        profile.message
    );
}

#[test]
fn data_arrays_are_md_names() {
    let c = Config::parse(
        "[health]\ndata_arrays = [\"/dev/md0\", \"md127\"]\n",
        "site.toml",
    )
    .unwrap();
    assert_eq!(
        c.health.data_arrays,
        Some(vec!["md0".to_string(), "md127".to_string()])
    );
    let problems = Config::parse("[health]\ndata_arrays = [\"md/archive\"]\n", "site.toml")
        .unwrap_err()
        .0;
    assert_eq!(problems[0].key, "health.data_arrays");
    assert!(
        problems[0].message.contains("\"md/archive\""),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_generic_ups_profile_is_checked_where_it_is_written() {
    let text = r#"
[ups]
address = "10.0.0.5:502"
profile = "generic"

[ups.registers]
name = "site-ups"
[ups.registers.runtime_s]
function = "input"
address = 10
type = "u16"
"#;
    let problems = Config::parse(text, "site.toml").unwrap_err().0;
    let p = problems.iter().find(|p| p.key == "ups.registers").unwrap();
    // The profile has no way to tell mains from battery: that is named.
    assert!(p.message.contains("site.toml"), "{}", p.message);
    assert!(
        p.message.contains("on_battery") || p.message.contains("online"),
        "{}",
        p.message
    );
}

#[test]
fn the_runtime_threshold_must_cover_the_power_off() {
    let text = r#"
[dicom]
shutdown_grace_s = 60

[ups]
address = "10.0.0.5:502"
profile = "apc-smt"
shutdown_when_runtime_below_s = 200
outlet_off_delay_s = 120
"#;
    let problems = Config::parse(text, "site.toml").unwrap_err().0;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "ups.shutdown_when_runtime_below_s");
    assert!(
        problems[0].message.contains("add up to 271 s"),
        "{}",
        problems[0].message
    );
}

#[test]
fn a_webhook_without_a_scheme_is_refused_without_echoing_its_secret() {
    // A webhook pasted without its scheme was refused with the whole value quoted, and
    // `outpost serve` prints its configuration problems to the journal: the secret token
    // Slack, Teams and Google Chat put in the URL's path or query went with it.
    let text = r#"
[alerts]
webhook = "hooks.slack.example/services/T000/B000/SECRETTOKEN?token=SECRET2"
"#;
    let problems = Config::parse(text, "site.toml").unwrap_err().0;
    let webhook = problems
        .iter()
        .find(|p| p.key == "alerts.webhook")
        .expect("alerts.webhook is refused");
    for secret in ["SECRETTOKEN", "SECRET2", "/services"] {
        assert!(
            !webhook.message.contains(secret),
            "{secret} in {}",
            webhook.message
        );
    }
    assert!(webhook.message.contains("https://"), "{}", webhook.message);
}

#[test]
fn the_commitment_wait_is_read_and_must_end_before_the_timeout() {
    let dest = |extra: &str| {
        format!(
            "[[forward.destination]]\nname = \"central\"\nkind = \"dicom\"\nae_title = \"PACS\"\nhost = \"10.0.0.1\"\nport = 104\nstorage_commitment = true\ncommitment_timeout_s = 60\n{extra}\n"
        )
    };
    let c = Config::parse(&dest("commitment_wait_s = 30"), "site.toml").unwrap();
    match &c.forward.destinations[0].kind {
        config::DestinationKind::Dicom(d) => {
            assert_eq!(d.commitment_wait, std::time::Duration::from_secs(30));
            assert_eq!(
                d.storage_commitment,
                Some(std::time::Duration::from_secs(60))
            );
        }
        other => panic!("{other:?}"),
    }
    let c = Config::parse(&dest(""), "site.toml").unwrap();
    match &c.forward.destinations[0].kind {
        config::DestinationKind::Dicom(d) => assert!(d.commitment_wait.is_zero()),
        other => panic!("{other:?}"),
    }
    let problems = Config::parse(&dest("commitment_wait_s = 60"), "site.toml")
        .unwrap_err()
        .0;
    assert!(
        problems
            .iter()
            .any(|p| p.key == "forward.destination[1].commitment_wait_s"),
        "{problems:#?}"
    );
}

#[test]
fn the_audit_trail_is_bounded_by_default_and_its_limits_are_checked() {
    let c = Config::parse("", "empty.toml").unwrap();
    assert_eq!(c.audit.rotate_bytes, 64 * 1024 * 1024);
    assert_eq!(c.audit.max_bytes, 1024 * 1024 * 1024);
    assert_eq!(c.audit.retention_days, None);
    assert_eq!(c.audit.rejections_per_minute, 20);
    let c = Config::parse(
        "[audit]\nrotate_mb = 8\nretention_days = 90\nmax_mb = 100\nrejections_per_minute = 0\n",
        "site.toml",
    )
    .unwrap();
    assert_eq!(c.audit.rotate_bytes, 8 * 1024 * 1024);
    assert_eq!(c.audit.retention_days, Some(90));
    assert_eq!(c.audit.max_bytes, 100 * 1024 * 1024);
    assert_eq!(c.audit.rejections_per_minute, 0);
    let problems = Config::parse("[audit]\nrotate_mb = 64\nmax_mb = 100\n", "site.toml")
        .unwrap_err()
        .0;
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].key, "audit.max_mb");
    assert!(
        problems[0].message.contains("twice rotate_mb"),
        "{}",
        problems[0].message
    );
}

// Issue 9, item 21: a site set shutdown_when_runtime_below_s = 300 on a UPS that raises its own
// low-battery warning (and starts its own countdown) 240 s before the battery is empty.
// check-config said "ok": the appliance's stop (20 s grace, up to 10 s for forwarding, 5 s for
// the monitors, 30 s for the index's final flush) then ran inside the UPS's warning window,
// with nothing telling the technician. Now it is a warning beside the valid configuration.
#[test]
fn a_threshold_inside_the_ups_low_battery_warning_is_warned_about() {
    let ups = |threshold: u32, warning: &str| {
        format!(
            "[ups]\naddress = \"10.0.0.5:502\"\nprofile = \"apc-smt\"\nshutdown_when_runtime_below_s = {threshold}\n{warning}\n"
        )
    };
    let c = Config::parse(&ups(300, "low_battery_warning_s = 240"), "site.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.ups.as_ref().unwrap().low_battery_warning,
        Some(std::time::Duration::from_secs(240))
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = &c.warnings[0];
    assert_eq!(w.file, "site.toml");
    assert_eq!(w.key, "ups.shutdown_when_runtime_below_s");
    // 20 s grace + 10 s forwarding + 5 s monitors + 30 s flush + 240 s = 305 s.
    assert!(w.message.contains("305 s"), "{}", w.message);
    assert_eq!(
        w.to_string(),
        format!(
            "site.toml: ups.shutdown_when_runtime_below_s: {}",
            w.message
        )
    );

    // Enough room above the warning, or no warning time known: nothing to say.
    let c = Config::parse(&ups(305, "low_battery_warning_s = 240"), "site.toml").unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = Config::parse(&ups(300, ""), "site.toml").unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.ups.unwrap().low_battery_warning, None);
    assert!(Config::embedded().warnings.is_empty());

    // The key is checked like every other.
    let problems = Config::parse(&ups(300, "low_battery_warning_s = -1"), "site.toml")
        .unwrap_err()
        .0;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "ups.low_battery_warning_s");
}

#[test]
fn a_certificate_binding_is_read_and_checked_at_once() {
    // Issue 9, item 17: any certificate from the modality CA could claim any AE title,
    // upstream ones included. A remote may now name the certificate it must present
    // (names from its SAN or subject CN, or a pinned SHA-256); such an AE only ever
    // associates over TLS with client certificates, so a binding without those is refused.
    let good = r#"
[dicom.tls]
certificate = "/etc/outpost/tls/server.crt"
private_key = "/etc/outpost/tls/server.key"
client_ca = "/etc/outpost/tls/ca.crt"
require_binding = true

[[dicom.remote]]
ae_title = "PACS"
host = "10.0.0.9"
port = 104
tls = true
certificate_names = ["pacs.hospital.example"]
certificate_sha256 = ["AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"]
"#;
    let c = Config::parse(good, "good.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(c.dicom.tls.as_ref().unwrap().require_binding);
    let b = c.dicom.remotes[0].binding.as_ref().expect("a binding");
    assert_eq!(b.names, ["pacs.hospital.example"]);
    assert_eq!(b.sha256.len(), 1);
    assert_eq!(b.sha256[0][0], 0xAB);

    let bad = r#"
[dicom.tls]
certificate = "/etc/outpost/tls/server.crt"
private_key = "/etc/outpost/tls/server.key"
require_binding = true

[[dicom.remote]]
ae_title = "PACS"
host = "10.0.0.9"
port = 104
certificate_names = [""]
certificate_sha256 = ["not-a-fingerprint"]
"#;
    let problems = Config::parse(bad, "bad.toml").unwrap_err().0;
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for (key, words) in [
        ("dicom.tls.require_binding", "client_ca"),
        ("dicom.remote[1].certificate_names", "empty"),
        ("dicom.remote[1].certificate_sha256", "not-a-fingerprint"),
        ("dicom.remote[1].tls", "tls = true"),
        ("dicom.remote[1].certificate_names", "client_ca"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.key == key && p.message.contains(words)),
            "no problem at {key} mentioning {words:?}: {messages:#?}"
        );
    }
}

/// After an A/B rollback the older image reads a file the newer image's provisioning wrote,
/// with settings it does not know. `serve` starts, warning about each; `check-config` (and
/// `serve` on a file no newer build wrote) refuses them, with every other problem at once.
#[test]
fn unknown_keys_are_warnings_at_serve_only_when_a_newer_build_wrote_the_file() {
    use config::Reading;
    let newer = r#"
written_by = "999.0.0"
[dicom]
ae_title = "OUTPOST"
future_knob = 3
[storage]
data_dir = "/tmp/x"
another_future_knob = true
"#;
    let c = Config::parse_as(newer, "newer.toml", Reading::Serve).unwrap();
    let keys: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
    assert!(keys.contains(&"dicom.future_knob"), "{keys:?}");
    assert!(keys.contains(&"storage.another_future_knob"), "{keys:?}");
    assert!(c.warnings.iter().all(|w| w.message.contains("999.0.0")));

    // check-config: both are problems.
    let p = Config::parse_as(newer, "newer.toml", Reading::Strict).unwrap_err();
    let keys: Vec<&str> = p.0.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"dicom.future_knob"), "{keys:?}");
    assert!(keys.contains(&"storage.another_future_knob"), "{keys:?}");

    // Written by this build (or an older one), or not saying: unknown keys stay problems at
    // serve, reported with the file's other problems.
    for header in [
        format!("written_by = \"{}\"", env!("CARGO_PKG_VERSION")),
        "written_by = \"0.0.1\"".to_string(),
        String::new(),
    ] {
        let text = format!("{header}\n[dicom]\nfuture_knob = 3\nport = 0\n");
        let p = Config::parse_as(&text, "t.toml", Reading::Serve).unwrap_err();
        let keys: Vec<&str> = p.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"dicom.future_knob"), "{header}: {keys:?}");
        assert!(keys.contains(&"dicom.port"), "{header}: {keys:?}");
    }

    // A newer file's real problems still fail serve.
    let bad = "written_by = \"999.0.0\"\n[dicom]\nfuture_knob = 3\nport = 0\n";
    let p = Config::parse_as(bad, "t.toml", Reading::Serve).unwrap_err();
    assert_eq!(p.0.len(), 1, "{p}");
    assert_eq!(p.0[0].key, "dicom.port");

    // A written_by that is not a version is a problem, naming the form.
    let p = Config::parse_as("written_by = \"soon\"\n", "t.toml", Reading::Serve).unwrap_err();
    assert_eq!(p.0[0].key, "written_by");
    assert!(p.0[0].message.contains("major.minor.patch"), "{p}");
}

#[test]
fn the_web_panel_listens_on_loopback_by_default_and_its_problems_are_reported_at_once() {
    let c = Config::parse("", "empty.toml").unwrap();
    assert!(c.web.enabled);
    assert_eq!(c.web.listen, "127.0.0.1:8443".parse().unwrap());
    assert!(c.web.certificate.is_none());
    let c = Config::parse(
        "[web]\nlisten = \"0.0.0.0:443\"\ncert = \"/etc/w.crt\"\nkey = \"/etc/w.key\"\n",
        "site.toml",
    )
    .unwrap();
    let cert = c.web.certificate.unwrap();
    assert_eq!(cert.cert, std::path::Path::new("/etc/w.crt"));
    assert_eq!(cert.key, std::path::Path::new("/etc/w.key"));
    let problems = Config::parse(
        "[web]\nlisten = \"everywhere\"\ncert = \"/etc/w.crt\"\nenabled = 3\n",
        "site.toml",
    )
    .unwrap_err()
    .0;
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(keys.contains(&"web.listen"), "{problems:#?}");
    assert!(keys.contains(&"web.key"), "{problems:#?}");
    assert!(keys.contains(&"web.enabled"), "{problems:#?}");
}
