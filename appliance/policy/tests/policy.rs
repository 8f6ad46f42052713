//! The power and storage policy, rule by rule, fed with RAID states and SMART reports
//! captured from real arrays and disks (the health crate's fixtures) and with UPS readings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use health::raid::RaidSources;
use policy::{Now, Policy, Readings, Settings, Severity};
use ups::{Reading, UpsState};

const SECOND: u64 = 1000;
/// An arbitrary start time, in Unix milliseconds.
const T0: u64 = 1_790_000_000_000;

/// The same instant on both clocks (tests that step one clock build `Now` themselves).
fn at(ms: u64) -> Now {
    Now {
        monotonic_ms: ms,
        unix_ms: ms,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../health/tests/fixtures")
}

fn settings() -> Settings {
    Settings {
        shutdown_below: Duration::from_secs(300),
        debounce: Duration::from_secs(10),
        bays: vec![
            ("vdb".into(), "bay 2".into()),
            ("sdb".into(), "bay 2".into()),
        ],
        min_free_bytes: 1_000_000_000,
        min_free_inodes_percent: 5.0,
        data_arrays: vec!["md0".into()],
        data_disks: vec!["sda".into(), "sdb".into()],
    }
}

fn raid(case: &str) -> Option<Result<Vec<health::raid::Array>, String>> {
    let dir = fixtures().join("raid").join(case);
    let sources = RaidSources {
        mdstat: dir.join("proc/mdstat"),
        sysfs_block: dir.join("sys/block"),
        mdadm_dir: Some(dir.join("mdadm")),
    };
    Some(health::raid::sample(&sources).map_err(|e| e.to_string()))
}

fn smart(files: &[&str]) -> Option<Result<Vec<health::smart::Device>, String>> {
    Some(Ok(files
        .iter()
        .map(|f| {
            let path = fixtures().join("smart").join(f);
            health::smart::parse(&std::fs::read_to_string(&path).unwrap(), f).unwrap()
        })
        .collect()))
}

fn volume(available: u64, read_only: bool) -> Option<Result<health::volume::Volume, String>> {
    Some(Ok(health::volume::Volume {
        path: "/var/lib/outpost".into(),
        total_bytes: 100_000_000_000,
        available_bytes: available,
        total_inodes: 1_000_000,
        free_inodes: 900_000,
        read_only,
    }))
}

fn ups(state: UpsState, runtime_s: u32) -> Option<Reading> {
    Some(Reading {
        state,
        runtime_s: Some(runtime_s),
        charge_pct: Some(80.0),
        load_pct: Some(30.0),
        battery_voltage: Some(27.1),
        replace_battery: false,
        flags: Vec::new(),
        error: None,
    })
}

fn healthy() -> Readings {
    Readings {
        raid: raid("raid1-clean"),
        volume: volume(50_000_000_000, false),
        smart: smart(&["sata-qemu.json", "nvme-qemu.json"]),
        ups: ups(UpsState::Online, 3600),
        ups_name: "APC Smart-UPS at 10.0.0.5:502 unit 1".into(),
        links_down: Vec::new(),
        disk_wait: None,
    }
}

#[test]
fn a_healthy_appliance_has_no_alerts_and_no_holds() {
    let mut p = Policy::new(settings());
    let d = p.evaluate(&healthy(), at(T0));
    assert!(d.active.is_empty(), "{:?}", d.active);
    assert_eq!(d.hold_ingest, None);
    assert!(d.hold_forwarding.is_empty() && !d.checkpoint && d.power_off.is_none());
}

#[test]
fn on_battery_counts_after_the_debounce_then_checkpoints_and_keeps_accepting() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    p.evaluate(&r, at(T0));
    r.ups = ups(UpsState::OnBattery, 1800);
    let d = p.evaluate(&r, at(T0 + SECOND));
    assert!(
        d.raised.is_empty(),
        "raised inside the debounce: {:?}",
        d.raised
    );
    let d = p.evaluate(&r, at(T0 + 10 * SECOND));
    assert!(d.raised.is_empty());
    let d = p.evaluate(&r, at(T0 + 11 * SECOND));
    assert_eq!(d.raised.len(), 1, "{:?}", d.raised);
    let a = &d.raised[0];
    assert_eq!(
        (a.key.as_str(), a.severity),
        ("ups.on_battery", Severity::Warning)
    );
    assert!(
        a.message.starts_with("Mains power lost at "),
        "{}",
        a.message
    );
    assert!(
        a.message.contains("30 min left, 80 % charged"),
        "{}",
        a.message
    );
    assert!(
        a.message.contains("less than 5 min remains"),
        "{}",
        a.message
    );
    // The alert is dated when the power went, not when the debounce ended.
    assert_eq!(a.since, (T0 + SECOND) / 1000);
    assert!(d.checkpoint, "no checkpoint when the battery took over");
    assert_eq!(
        d.hold_ingest, None,
        "studies must still be accepted on battery"
    );
    assert!(
        d.hold_forwarding.is_empty(),
        "the link is up: forwarding goes on"
    );
    assert!(d.power_off.is_none());
    // The checkpoint is asked for once, not at every evaluation.
    assert!(!p.evaluate(&r, at(T0 + 12 * SECOND)).checkpoint);
}

#[test]
fn a_flickering_input_raises_nothing() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    for i in 0..30 {
        r.ups = if i % 2 == 0 {
            ups(UpsState::OnBattery, 200)
        } else {
            ups(UpsState::Online, 3600)
        };
        let d = p.evaluate(&r, at(T0 + i * 3 * SECOND));
        assert!(d.raised.is_empty() && d.power_off.is_none(), "{i}: {d:?}");
    }
}

#[test]
fn routine_forwarding_waits_on_battery_for_links_found_down_until_mains_returns() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::OnBattery, 1800);
    p.evaluate(&r, at(T0));
    assert!(
        p.evaluate(&r, at(T0 + 10 * SECOND))
            .hold_forwarding
            .is_empty()
    );
    r.links_down = vec!["central".into()];
    assert_eq!(
        p.evaluate(&r, at(T0 + 11 * SECOND)).hold_forwarding,
        ["central"]
    );
    // The link answers again, but the battery still runs: urgent work first.
    r.links_down.clear();
    assert_eq!(
        p.evaluate(&r, at(T0 + 12 * SECOND)).hold_forwarding,
        ["central"]
    );
    // Back on mains (once that held for the debounce): everything goes.
    r.ups = ups(UpsState::Online, 3600);
    p.evaluate(&r, at(T0 + 40 * SECOND));
    assert!(
        p.evaluate(&r, at(T0 + 50 * SECOND))
            .hold_forwarding
            .is_empty()
    );
    // A link down on mains is forwarding's own business.
    r.links_down = vec!["central".into()];
    assert!(
        p.evaluate(&r, at(T0 + 60 * SECOND))
            .hold_forwarding
            .is_empty()
    );
}

#[test]
fn low_runtime_on_battery_powers_off_once_after_the_debounce() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::OnBattery, 250);
    assert!(p.evaluate(&r, at(T0)).power_off.is_none());
    assert!(p.evaluate(&r, at(T0 + 9 * SECOND)).power_off.is_none());
    let d = p.evaluate(&r, at(T0 + 10 * SECOND));
    let why = d.power_off.expect("power off below the threshold");
    assert!(
        why.contains("4 min 10 s of runtime left, below the 5 min threshold"),
        "{why}"
    );
    assert!(p.evaluate(&r, at(T0 + 11 * SECOND)).power_off.is_none());
}

#[test]
fn the_ups_low_battery_signal_powers_off_whatever_the_runtime() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::LowBattery, 900);
    p.evaluate(&r, at(T0));
    let why = p.evaluate(&r, at(T0 + 10 * SECOND)).power_off.unwrap();
    assert!(why.contains("the UPS signals low battery"), "{why}");
}

#[test]
fn low_runtime_on_mains_is_a_charging_battery_not_a_power_off() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::Online, 120);
    p.evaluate(&r, at(T0));
    let d = p.evaluate(&r, at(T0 + 60 * SECOND));
    assert!(d.power_off.is_none() && d.active.is_empty(), "{d:?}");
}

#[test]
fn a_silent_ups_is_an_alert_and_on_battery_stays_on_battery() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::OnBattery, 1800);
    p.evaluate(&r, at(T0));
    p.evaluate(&r, at(T0 + 10 * SECOND));
    r.ups = Some(Reading::communication_lost("no answer within 2 s"));
    p.evaluate(&r, at(T0 + 11 * SECOND));
    let d = p.evaluate(&r, at(T0 + 30 * SECOND));
    let keys: Vec<&str> = d.active.iter().map(|a| a.key.as_str()).collect();
    assert!(keys.contains(&"ups.communication"), "{keys:?}");
    assert!(
        keys.contains(&"ups.on_battery"),
        "blind is not back on mains: {keys:?}"
    );
    let lost = d
        .active
        .iter()
        .find(|a| a.key == "ups.communication")
        .unwrap();
    assert!(
        lost.message.contains("10.0.0.5:502") && lost.message.contains("no answer within 2 s"),
        "{}",
        lost.message
    );
    // Back and on mains: both clear after the debounce.
    r.ups = ups(UpsState::Online, 3600);
    p.evaluate(&r, at(T0 + 31 * SECOND));
    let d = p.evaluate(&r, at(T0 + 41 * SECOND));
    assert_eq!(d.cleared.len(), 2, "{:?}", d.cleared);
    assert!(d.active.is_empty());
}

#[test]
fn a_degraded_array_alerts_with_the_member_and_its_bay_and_keeps_accepting() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = raid("raid1-degraded");
    let d = p.evaluate(&r, at(T0));
    assert_eq!(d.raised.len(), 1, "{:?}", d.raised);
    let a = &d.raised[0];
    assert_eq!(a.severity, Severity::Warning);
    assert!(
        a.message.starts_with("RAID md0 (raid1) degraded at "),
        "{}",
        a.message
    );
    assert!(a.message.contains("replace the disk of "), "{}", a.message);
    assert_eq!(d.hold_ingest, None);
    // Repaired: cleared at once (arrays do not flicker).
    r.raid = raid("raid1-clean");
    let d = p.evaluate(&r, at(T0 + SECOND));
    assert_eq!(d.cleared.len(), 1);
}

/// A disk died and the spare took over: the array rebuilds onto it with a member missing,
/// one more failure from losing the archive, and the alert said only "Info", which a
/// technician filters out of the webhook. A rebuild with missing members is a warning.
#[test]
fn a_rebuild_with_a_missing_member_is_a_warning_and_a_check_is_nothing() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = raid("raid1-recovering");
    let d = p.evaluate(&r, at(T0));
    assert_eq!(d.raised.len(), 1, "{:?}", d.raised);
    assert_eq!(d.raised[0].severity, Severity::Warning);
    assert!(
        d.raised[0].message.contains("rebuilding"),
        "{}",
        d.raised[0].message
    );
    r.raid = raid("raid5-check");
    let d = p.evaluate(&r, at(T0 + SECOND));
    assert!(
        d.active.is_empty(),
        "a scrub is not a problem: {:?}",
        d.active
    );
}

#[test]
fn a_failed_array_or_a_read_only_volume_refuses_new_instances() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = raid("raid5-failed");
    let d = p.evaluate(&r, at(T0));
    let why = d.hold_ingest.expect("a failed array must hold ingest");
    assert!(
        why.contains("failed") && why.contains("New studies are refused"),
        "{why}"
    );
    assert_eq!(d.raised[0].severity, Severity::Critical);

    r.raid = raid("raid5-clean");
    assert_eq!(p.evaluate(&r, at(T0 + SECOND)).hold_ingest, None);

    r.volume = volume(50_000_000_000, true);
    let why = p.evaluate(&r, at(T0 + 2 * SECOND)).hold_ingest.unwrap();
    assert!(why.contains("read-only"), "{why}");
    r.volume = volume(50_000_000_000, false);
    assert_eq!(p.evaluate(&r, at(T0 + 3 * SECOND)).hold_ingest, None);
}

#[test]
fn an_inactive_array_counts_as_failed() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = raid("inactive");
    assert!(p.evaluate(&r, at(T0)).hold_ingest.is_some());
}

#[test]
fn space_below_the_floor_alerts_but_leaves_refusal_to_the_archive() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.volume = volume(1_500_000_000, false);
    let d = p.evaluate(&r, at(T0));
    assert_eq!(d.raised[0].key, "volume.space");
    assert_eq!(d.raised[0].severity, Severity::Warning);
    r.volume = volume(500_000_000, false);
    let d = p.evaluate(&r, at(T0 + SECOND));
    let a = d.active.iter().find(|a| a.key == "volume.space").unwrap();
    assert_eq!(a.severity, Severity::Critical);
    assert!(a.message.contains("500 MB free"), "{}", a.message);
    // The archive's own floor refuses instances; the policy does not add a second hold.
    assert_eq!(d.hold_ingest, None);
}

#[test]
fn smart_predictions_alert_and_keep_running() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.smart = smart(&["sata-failed.json", "nvme-hot.json"]);
    let d = p.evaluate(&r, at(T0));
    let severities: Vec<Severity> = d.raised.iter().map(|a| a.severity).collect();
    assert!(severities.contains(&Severity::Critical), "{:?}", d.raised);
    assert!(severities.contains(&Severity::Warning), "{:?}", d.raised);
    assert_eq!(d.hold_ingest, None);
    let failing = d
        .raised
        .iter()
        .find(|a| a.severity == Severity::Critical)
        .unwrap();
    assert!(
        failing.message.contains("predicts its own failure"),
        "{}",
        failing.message
    );
}

#[test]
fn monitors_that_cannot_read_their_source_say_so() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = Some(Err("cannot read /proc/mdstat: permission denied".into()));
    let d = p.evaluate(&r, at(T0));
    assert_eq!(d.raised[0].key, "monitor.raid");
    assert!(d.raised[0].message.contains("permission denied"));
}

#[test]
fn alerts_are_listed_worst_first() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = raid("raid1-recovering");
    r.volume = volume(50_000_000_000, true);
    r.smart = smart(&["sata-reallocated.json"]);
    let d = p.evaluate(&r, at(T0));
    let severities: Vec<Severity> = d.active.iter().map(|a| a.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(severities, sorted);
    assert_eq!(severities[0], Severity::Critical);
}

#[test]
fn a_failed_array_that_does_not_hold_the_archive_alerts_without_refusing() {
    // The data volume is on no array (a single disk, say) and an old array failed.
    let mut s = settings();
    s.data_arrays = vec![];
    let mut p = Policy::new(s);
    let mut r = healthy();
    r.raid = raid("raid5-failed");
    let d = p.evaluate(&r, at(T0));
    assert_eq!(d.hold_ingest, None);
    let a = &d.raised[0];
    assert_eq!(a.severity, Severity::Critical);
    assert!(
        a.message.contains("does not hold the archive"),
        "{}",
        a.message
    );
}

// Review finding: when the RAID or volume monitor failed to read its source (EIO on a dying
// array, a hung statvfs), the failed array's alert vanished from that evaluation and was
// cleared as "resolved", and new instances were accepted again onto the broken array. An
// unreadable source now keeps its alerts, and with them the hold.
#[test]
fn an_unreadable_source_keeps_its_alerts_and_its_hold() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = raid("raid5-failed");
    assert!(p.evaluate(&r, at(T0)).hold_ingest.is_some());
    r.raid = Some(Err("cannot read /proc/mdstat: input/output error".into()));
    let d = p.evaluate(&r, at(T0 + SECOND));
    assert!(d.cleared.is_empty(), "{:?}", d.cleared);
    assert!(
        d.hold_ingest.is_some(),
        "the hold was lifted by a read error"
    );
    assert!(d.active.iter().any(|a| a.key == "monitor.raid"));

    r.raid = raid("raid1-clean");
    r.volume = volume(50_000_000_000, true);
    assert!(p.evaluate(&r, at(T0 + 2 * SECOND)).hold_ingest.is_some());
    r.volume = Some(Err("statvfs /var/lib/outpost: input/output error".into()));
    let d = p.evaluate(&r, at(T0 + 3 * SECOND));
    assert!(
        d.hold_ingest.is_some(),
        "the hold was lifted by a read error"
    );
    // A good reading is what clears them.
    r.volume = volume(50_000_000_000, false);
    let d = p.evaluate(&r, at(T0 + 4 * SECOND));
    assert_eq!(d.hold_ingest, None);
    assert!(d.cleared.iter().any(|a| a.key == "volume.read_only"));
}

// Review finding: an array going from degraded to failed kept its alert key, so only the
// severity changed in place: no log line, no audit event and no webhook said that the
// array had failed. A condition that gets worse is now raised again, dated when it did.
#[test]
fn getting_worse_is_announced_again() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.raid = raid("raid5-degraded");
    let d = p.evaluate(&r, at(T0));
    assert_eq!(d.raised[0].severity, Severity::Warning);
    r.raid = raid("raid5-failed");
    let d = p.evaluate(&r, at(T0 + 60 * SECOND));
    assert_eq!(d.raised.len(), 1, "{d:?}");
    assert_eq!(d.raised[0].severity, Severity::Critical);
    assert_eq!(d.raised[0].since, (T0 + 60 * SECOND) / 1000);
    // Getting better is not news until it is over.
    r.raid = raid("raid5-degraded");
    assert!(p.evaluate(&r, at(T0 + 61 * SECOND)).raised.is_empty());
}

// Review finding: a UPS whose network card stopped answering while on battery (the switch
// between the appliance and the card is not on the UPS) never led to a power-off: the box
// ran on until the battery died and took the hard power cut the UPS is there to prevent.
// Blind on battery, the runtime is now run down from the last reading.
#[test]
fn a_ups_silent_on_battery_is_run_down_from_its_last_reading() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::OnBattery, 400);
    p.evaluate(&r, at(T0));
    p.evaluate(&r, at(T0 + 10 * SECOND));
    r.ups = Some(Reading::communication_lost("no answer within 2 s"));
    // 400 s as last read at +10 s: below 300 s after +110 s, then the 10 s debounce.
    for t in (11..=116).step_by(5) {
        let d = p.evaluate(&r, at(T0 + t * SECOND));
        assert!(d.power_off.is_none(), "powered off at +{t} s");
    }
    let d = p.evaluate(&r, at(T0 + 121 * SECOND));
    let why = d.power_off.expect("blind on battery, the runtime ran out");
    assert!(why.contains("stopped answering while on battery"), "{why}");
}

#[test]
fn a_ups_silent_on_battery_with_no_runtime_powers_off_after_the_debounce() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    let mut reading = ups(UpsState::OnBattery, 0).unwrap();
    reading.runtime_s = None;
    r.ups = Some(reading);
    p.evaluate(&r, at(T0));
    // The card falls silent before the on-battery alert was even raised.
    r.ups = Some(Reading::communication_lost("connection refused"));
    p.evaluate(&r, at(T0 + 2 * SECOND));
    assert!(p.evaluate(&r, at(T0 + 11 * SECOND)).power_off.is_none());
    let d = p.evaluate(&r, at(T0 + 13 * SECOND));
    assert!(
        d.active.iter().any(|a| a.key == "ups.on_battery"),
        "{:?}",
        d.active
    );
    let why = d.power_off.expect("blind on battery with no runtime known");
    assert!(why.contains("never known"), "{why}");
}

// Review finding: the debounce ran on the wall clock, so NTP setting the clock back after a
// boot held a power-off back until the wall clock caught up again.
#[test]
fn a_wall_clock_step_neither_delays_nor_skips_the_debounce() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::OnBattery, 100);
    let now = |mono: u64, wall: u64| Now {
        monotonic_ms: mono,
        unix_ms: wall,
    };
    p.evaluate(&r, now(T0, T0));
    // The wall clock jumps an hour back, then a day forward; the debounce does not care.
    assert!(
        p.evaluate(&r, now(T0 + 5 * SECOND, T0 - 3_600_000))
            .power_off
            .is_none()
    );
    assert!(
        p.evaluate(&r, now(T0 + 6 * SECOND, T0 + 86_400_000))
            .power_off
            .is_none()
    );
    assert!(
        p.evaluate(&r, now(T0 + 10 * SECOND, T0 - 3_590_000))
            .power_off
            .is_some()
    );
}

#[test]
fn what_a_silent_ups_said_of_its_battery_stays_said() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    let mut worn = ups(UpsState::Online, 3600).unwrap();
    worn.replace_battery = true;
    r.ups = Some(worn);
    p.evaluate(&r, at(T0));
    assert!(!p.evaluate(&r, at(T0 + 10 * SECOND)).raised.is_empty());
    r.ups = Some(Reading::communication_lost("no answer"));
    for t in 11..40 {
        let d = p.evaluate(&r, at(T0 + t * SECOND));
        assert!(d.cleared.is_empty(), "{:?}", d.cleared);
    }
}

#[test]
fn a_failing_disk_that_falls_silent_stays_failing() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.smart = smart(&["sata-failed.json"]);
    let d = p.evaluate(&r, at(T0));
    assert_eq!(d.raised[0].severity, Severity::Critical);
    let mut stale = health::smart::parse(
        &std::fs::read_to_string(fixtures().join("smart/sata-failed.json")).unwrap(),
        "x",
    )
    .unwrap();
    stale.verdict = health::smart::Verdict::Unknown {
        reason: "stale: the SMART helper last ran 300 min ago".into(),
    };
    r.smart = Some(Ok(vec![stale]));
    let d = p.evaluate(&r, at(T0 + SECOND));
    assert!(d.cleared.is_empty());
    assert_eq!(d.active[0].severity, Severity::Critical);
}

#[test]
fn an_array_holding_the_archive_that_is_not_running_counts_as_failed() {
    let mut s = settings();
    s.data_arrays = vec!["md0".into(), "md1".into()];
    let mut p = Policy::new(s);
    let mut r = healthy();
    r.raid = raid("raid1-clean");
    let d = p.evaluate(&r, at(T0));
    let why = d.hold_ingest.expect("md1 holds the archive and is gone");
    assert!(
        why.contains("RAID md1, which holds the archive, is not running"),
        "{why}"
    );
    r.raid = raid("two-arrays");
    assert_eq!(p.evaluate(&r, at(T0 + SECOND)).hold_ingest, None);
}

#[test]
fn when_it_is_unknown_which_arrays_hold_the_archive_any_failed_one_refuses() {
    let mut s = settings();
    s.data_arrays = vec!["*".into()];
    let mut p = Policy::new(s);
    let mut r = healthy();
    assert_eq!(p.evaluate(&r, at(T0)).hold_ingest, None);
    r.raid = raid("raid5-failed");
    assert!(p.evaluate(&r, at(T0 + SECOND)).hold_ingest.is_some());
}

// Second review: a single reading on mains in the middle of an outage, followed by the
// UPS falling silent, made the policy forget the outage, so the box never powered off.
#[test]
fn one_reading_on_mains_during_an_outage_does_not_forget_it() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::OnBattery, 200);
    p.evaluate(&r, at(T0));
    p.evaluate(&r, at(T0 + 5 * SECOND));
    r.ups = ups(UpsState::Online, 3600);
    p.evaluate(&r, at(T0 + 6 * SECOND));
    r.ups = Some(Reading::communication_lost("no answer"));
    let mut powered = None;
    for t in 7..30 {
        if let Some(why) = p.evaluate(&r, at(T0 + t * SECOND)).power_off {
            powered = Some((t, why));
            break;
        }
    }
    let (t, why) = powered.expect("the outage was forgotten");
    assert!(t <= 17, "powered off only at +{t} s");
    assert!(why.contains("below the 5 min threshold"), "{why}");
}

// Second review: the UPS signalled low battery and fell silent within the debounce; the
// signal was forgotten and only the (optimistic) runtime estimate counted.
#[test]
fn a_low_battery_signal_before_the_silence_still_powers_off() {
    let mut p = Policy::new(settings());
    let mut r = healthy();
    r.ups = ups(UpsState::LowBattery, 900);
    p.evaluate(&r, at(T0));
    r.ups = Some(Reading::communication_lost("no answer"));
    assert!(p.evaluate(&r, at(T0 + 5 * SECOND)).power_off.is_none());
    let why = p
        .evaluate(&r, at(T0 + 10 * SECOND))
        .power_off
        .expect("low battery, then silence");
    assert!(why.contains("signalled low battery"), "{why}");
}

// Second review: with shutdown_when_runtime_below_s = 0 the estimate of a silent UPS could
// never fall below the threshold, so the box ran until the battery died.
#[test]
fn with_a_zero_threshold_a_silent_ups_powers_off_when_the_estimate_runs_out() {
    let mut s = settings();
    s.shutdown_below = Duration::ZERO;
    let mut p = Policy::new(s);
    let mut r = healthy();
    r.ups = ups(UpsState::OnBattery, 100);
    p.evaluate(&r, at(T0));
    r.ups = Some(Reading::communication_lost("no answer"));
    assert!(p.evaluate(&r, at(T0 + 50 * SECOND)).power_off.is_none());
    p.evaluate(&r, at(T0 + 100 * SECOND));
    assert!(p.evaluate(&r, at(T0 + 110 * SECOND)).power_off.is_some());
}

#[test]
fn a_sync_hung_on_the_data_disk_is_named_and_holds_ingest_until_it_returns() {
    // A failing disk left an fdatasync waiting for minutes. The only sign was the watchdog
    // restarting the service, again and again, and no message named the disk. Now a sync
    // waiting 30 s raises a critical alert naming the disk with writes still in flight
    // (and its bay), and refuses new instances until the sync returns.
    use policy::{DiskWait, SYNC_STALL, SYNC_STALLED};
    let mut p = Policy::new(settings());
    let mut r = healthy();
    let wait = |secs: u64, busy: &[&str]| DiskWait {
        waited: Duration::from_secs(secs),
        operation: "fdatasync of /var/lib/outpost/tmp/1.2.3".into(),
        busy_disks: busy.iter().map(|d| d.to_string()).collect(),
    };
    // A slow sync is no alert.
    r.disk_wait = Some(wait(SYNC_STALL.as_secs() - 1, &[]));
    let d = p.evaluate(&r, at(T0));
    assert!(d.active.is_empty(), "{:?}", d.active);
    assert_eq!(d.hold_ingest, None);

    r.disk_wait = Some(wait(31, &["sdb"]));
    let d = p.evaluate(&r, at(T0 + 1_000));
    assert_eq!(d.raised.len(), 1, "{:?}", d.raised);
    let a = &d.raised[0];
    assert_eq!(a.key, SYNC_STALLED);
    assert_eq!(a.severity, Severity::Critical);
    assert!(
        a.message
            .starts_with("Disk sdb (bay 2) of the data volume has not completed a write for 31 s (fdatasync of /var/lib/outpost/tmp/1.2.3)"),
        "{}",
        a.message
    );
    assert!(a.message.contains("replace the disk"), "{}", a.message);
    assert_eq!(d.hold_ingest.as_deref(), Some(a.message.as_str()));

    // Still waiting: the same alert, its wait brought up to date, not raised again.
    r.disk_wait = Some(wait(45, &["sdb"]));
    let d = p.evaluate(&r, at(T0 + 15_000));
    assert!(d.raised.is_empty());
    assert!(d.active[0].message.contains("for 45 s"), "{:?}", d.active);
    assert!(d.hold_ingest.is_some());

    // Which disk hangs is unknown: every disk of the volume is named.
    let mut q = Policy::new(settings());
    r.disk_wait = Some(wait(40, &[]));
    let d = q.evaluate(&r, at(T0));
    assert!(
        d.raised[0]
            .message
            .starts_with("A disk of the data volume (sda, sdb (bay 2)) has not completed"),
        "{}",
        d.raised[0].message
    );

    // The sync returns: the alert clears and studies are accepted again.
    r.disk_wait = None;
    let d = p.evaluate(&r, at(T0 + 16_000));
    assert_eq!(d.cleared.len(), 1, "{:?}", d.cleared);
    assert_eq!(d.hold_ingest, None);
    assert!(d.active.is_empty());
}
