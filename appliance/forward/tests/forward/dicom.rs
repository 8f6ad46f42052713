//! Forwarding to a DICOM destination: a second whole appliance (its listener and store) plays
//! the central PACS, on a real association over loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dataset::Encoding;
use dataset::synth::SynthInstance;
use dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
use forward::{Clock, State};
use testkit::{Appliance, Scu};

use crate::support::{eventually, free_port};

/// A private SOP class: the edge accepts it (`accept_unknown_sop_classes`), the central PACS
/// does not.
const PRIVATE: &str = "1.2.826.0.1.3680043.10.1234.99.1";

fn central_toml() -> String {
    r#"
[dicom]
ae_title = "CENTRAL"
accept_unknown_callers = "loopback"
"#
    .to_string()
}

fn edge_toml(central_port: u16, extra: &str) -> String {
    format!(
        r#"
[dicom]
ae_title = "EDGE"
accept_unknown_callers = "loopback"
accept_unknown_sop_classes = true

[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "CENTRAL"
host = "127.0.0.1"
port = {central_port}
probe_interval_s = 1
timeout_s = 10
{extra}
"#
    )
}

async fn store_into(app: &Appliance, instances: &[SynthInstance]) {
    let classes: Vec<&str> = instances.iter().map(|i| i.sop_class.as_str()).collect();
    let mut contexts: Vec<(&str, &[&str])> = Vec::new();
    for c in classes {
        if !contexts.iter().any(|(a, _)| *a == c) {
            contexts.push((c, &[EXPLICIT_VR_LITTLE_ENDIAN]));
        }
    }
    let mut scu = Scu::connect(app.addr, "MODALITY", "EDGE", &contexts, &[])
        .await
        .expect("association with the edge");
    for inst in instances {
        let rsp = scu
            .store(
                &inst.sop_class,
                &inst.sop_uid,
                Some(EXPLICIT_VR_LITTLE_ENDIAN),
                &inst.dataset(Encoding::EXPLICIT_LE),
            )
            .await
            .unwrap();
        assert!(rsp.status.unwrap().is_success(), "stored at the edge");
    }
    scu.release().await.unwrap();
}

fn depth(app: &Appliance) -> u64 {
    app.store.outbox_summary("central").unwrap().depth
}

fn state(app: &Appliance) -> forward::DestinationStatus {
    app.forwarder().unwrap().status()[0].clone()
}

fn instances(n: u32) -> Vec<SynthInstance> {
    (0..n)
        .map(|i| {
            let mut inst = SynthInstance::ct(1, i % 2, 1, i);
            inst.pixel_bytes = 40_000;
            inst
        })
        .collect()
}

/// The data set an appliance holds for an instance, or `None`.
fn held_by(app: &Appliance, sop: &str) -> Option<Vec<u8>> {
    app.stored_dataset(sop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_stored_at_the_edge_arrive_centrally_identical() {
    let central = Appliance::start(&central_toml()).await;
    let edge = Appliance::start(&edge_toml(central.addr.port(), "")).await;
    let sent = instances(12);
    store_into(&edge, &sent).await;
    eventually("the queue is empty", || depth(&edge) == 0).await;
    for inst in &sent {
        assert_eq!(
            held_by(&central, &inst.sop_uid).as_deref(),
            Some(inst.dataset(Encoding::EXPLICIT_LE).as_slice()),
            "{} arrived identical",
            inst.sop_uid
        );
        assert_eq!(
            edge.store.upstream_copies(&inst.sop_uid).unwrap(),
            ["central"]
        );
    }
    let s = state(&edge);
    assert_eq!((s.state, s.delivered), (State::Up, 12));
    // The central archive received them from the edge, so it does not send them back
    // anywhere: it has no destinations, and the edge's own router ignores its AE.
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_holds_instances_and_a_probe_notices_the_recovery() {
    let port = free_port().await;
    let edge = Appliance::start(&edge_toml(port, "")).await;
    let sent = instances(6);
    store_into(&edge, &sent).await;
    eventually("the destination is marked down", || {
        state(&edge).state == State::Down
    })
    .await;
    let down = state(&edge);
    assert!(
        down.last_error.as_deref().unwrap_or("").contains("refused"),
        "{down:?}"
    );
    assert_eq!(depth(&edge), 6, "nothing is lost or dropped while down");
    let entries = edge
        .store
        .outbox_peek("central", 100, &Default::default(), u64::MAX, 1000)
        .unwrap()
        .ready;
    assert!(
        entries.iter().all(|q| q.entry.attempts == 0),
        "an outage does not count against the instances"
    );

    // The central PACS comes up where the edge expects it; the next probe (1 s) notices.
    let dir = tempfile::tempdir().unwrap();
    let central = Appliance::launch(dir, &central_toml(), port, Clock::System, |_| {}).await;
    let back = Instant::now();
    eventually("the queue is empty", || depth(&edge) == 0).await;
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "recovery noticed by the probe, not a backoff step: {:?}",
        back.elapsed()
    );
    for inst in &sent {
        assert!(held_by(&central, &inst.sop_uid).is_some());
    }
    assert_eq!(state(&edge).state, State::Up);
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sop_class_is_dead_lettered_with_the_reason_and_others_go_on() {
    // The first version of this test hung at the resubmission: a batch holding only the
    // refused class proposed no context the PACS accepted, the association failed as a
    // whole, the destination was marked down, the C-ECHO probe brought it up again, and
    // round it went. Verification now rides along on every association.
    let central = Appliance::start(&central_toml()).await;
    let edge = Appliance::start(&edge_toml(central.addr.port(), "")).await;
    let mut private = SynthInstance::ct(2, 1, 1, 1);
    private.sop_class = PRIVATE.into();
    let mut sent = instances(3);
    sent.insert(1, private.clone());
    store_into(&edge, &sent).await;
    eventually("the queue is empty", || depth(&edge) == 0).await;
    let dead = edge.store.dead_letters("central", 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1.entry.sop_instance_uid, private.sop_uid);
    assert!(
        dead[0].1.reason.contains(PRIVATE),
        "the reason names the class: {}",
        dead[0].1.reason
    );
    for inst in sent.iter().filter(|i| i.sop_uid != private.sop_uid) {
        assert!(held_by(&central, &inst.sop_uid).is_some());
    }
    assert!(held_by(&central, &private.sop_uid).is_none());
    let s = state(&edge);
    assert_eq!((s.delivered, s.dead_lettered), (3, 1));
    assert_ne!(
        s.state,
        State::Down,
        "a refused class says nothing of reachability"
    );

    // Resubmitted, it fails the same way again (nothing changed at the PACS), and stays a
    // dead letter rather than vanishing.
    edge.store
        .outbox_apply(vec![store::outbox::QueueOp::Resubmit {
            destination: "central".into(),
            seqs: Vec::new(),
        }])
        .await
        .unwrap();
    eventually("the resubmitted instance is dead again", || {
        depth(&edge) == 0 && edge.store.dead_letters("central", 10).unwrap().len() == 1
    })
    .await;
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_resources_backs_off_by_the_policy_against_the_injected_clock() {
    // The central archive answers 0xA700 (its free-space floor cannot be met); the edge
    // must retry with initial delay 10 s, then 20 s, counting attempts, and never sooner.
    let dir = tempfile::tempdir().unwrap();
    let central = Appliance::launch(dir, &central_toml(), 0, Clock::System, |s| {
        s.min_free_bytes = u64::MAX
    })
    .await;
    let port = central.addr.port();
    let now = Arc::new(AtomicU64::new(1_000_000));
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = Appliance::launch(
        edge_dir,
        &edge_toml(port, "retry_initial_s = 10\nretry_multiplier = 2.0"),
        0,
        Clock::Manual(now.clone()),
        |_| {},
    )
    .await;
    store_into(&edge, &instances(1)).await;
    let head = || {
        edge.store
            .outbox_peek("central", 1, &Default::default(), u64::MAX, 10)
            .unwrap()
            .ready
            .remove(0)
            .entry
    };
    eventually("the first attempt failed", || head().attempts == 1).await;
    let first = head();
    assert_eq!(first.not_before_ms, 1_000_000 + 10_000);
    assert!(first.last_error.unwrap().contains("0xA700"));
    // The clock stands still: no second attempt, however long we wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(head().attempts, 1);
    assert_eq!(state(&edge).state, State::Degraded);

    now.store(1_000_000 + 10_000, Ordering::SeqCst);
    eventually("the second attempt failed", || head().attempts == 2).await;
    assert_eq!(head().not_before_ms, 1_010_000 + 20_000, "doubled");

    // The PACS gets space again; once the clock reaches the due time the instance goes.
    let (cdir, _) = central.stop().await;
    let central = Appliance::launch(cdir, &central_toml(), port, Clock::System, |_| {}).await;
    now.store(1_010_000 + 20_000, Ordering::SeqCst);
    eventually("the queue is empty", || depth(&edge) == 0).await;
    assert_eq!(state(&edge).state, State::Up);
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_queue_delivers_everything_at_least_once() {
    // Entries held by a worker when the process stops are only held in memory: after the
    // restart they are pending again and go out, nothing is forgotten.
    let port = free_port().await;
    let edge = Appliance::start(&edge_toml(port, "")).await;
    let sent = instances(5);
    store_into(&edge, &sent).await;
    let (dir, _) = edge.stop().await;
    let dir2 = tempfile::tempdir().unwrap();
    let central = Appliance::launch(dir2, &central_toml(), port, Clock::System, |_| {}).await;
    let edge = Appliance::start_in(dir, &edge_toml(port, "")).await;
    eventually("the queue is empty", || depth(&edge) == 0).await;
    for inst in &sent {
        assert!(held_by(&central, &inst.sop_uid).is_some());
    }
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_destinations_keep_queueing_and_resume_where_they_left_off() {
    let central = Appliance::start(&central_toml()).await;
    let edge = Appliance::start(&edge_toml(central.addr.port(), "")).await;
    edge.store
        .outbox_apply(vec![store::outbox::QueueOp::Pause {
            destination: "central".into(),
            paused: true,
        }])
        .await
        .unwrap();
    store_into(&edge, &instances(3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(depth(&edge), 3, "paused: nothing delivered");
    edge.store
        .outbox_apply(vec![store::outbox::QueueOp::Pause {
            destination: "central".into(),
            paused: false,
        }])
        .await
        .unwrap();
    edge.forwarder().unwrap().wake("central");
    eventually("the queue is empty", || depth(&edge) == 0).await;
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_from_an_upstream_remote_are_kept_but_never_forwarded() {
    let central = Appliance::start(&central_toml()).await;
    let toml = edge_toml(central.addr.port(), "")
        + r#"
[[dicom.remote]]
ae_title = "MODALITY"
host = "127.0.0.1"
port = 104
upstream = true
"#;
    let edge = Appliance::start(&toml).await;
    let sent = instances(2);
    store_into(&edge, &sent).await;
    assert_eq!(depth(&edge), 0, "priors are not queued");
    assert!(held_by(&edge, &sent[0].sop_uid).is_some(), "but kept");
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bandwidth_cap_spreads_the_sending() {
    let central = Appliance::start(&central_toml()).await;
    // 800 kbit/s is 100,000 bytes a second; six instances of about 40 KB take over 2 s.
    let edge = Appliance::start(&edge_toml(central.addr.port(), "bandwidth_kbps = 800")).await;
    let sent = instances(6);
    let bytes: usize = sent
        .iter()
        .map(|i| i.dataset(Encoding::EXPLICIT_LE).len())
        .sum();
    let started = Instant::now();
    store_into(&edge, &sent).await;
    eventually("the queue is empty", || depth(&edge) == 0).await;
    let floor = Duration::from_secs_f64((bytes - bytes / 6) as f64 / 100_000.0);
    assert!(
        started.elapsed() >= floor,
        "{bytes} bytes went in {:?}, faster than the cap allows ({floor:?})",
        started.elapsed()
    );
    edge.stop().await;
    central.stop().await;
}

/// Stores one small instance as the emergency room's modality (AE `ER`), which the tests'
/// rules send at STAT priority.
async fn store_from_the_emergency_room(edge: &Appliance) -> SynthInstance {
    let mut urgent = SynthInstance::ct(5, 1, 1, 1);
    urgent.pixel_bytes = 1000;
    let mut scu = Scu::connect(
        edge.addr,
        "ER",
        "EDGE",
        &[(urgent.sop_class.as_str(), &[EXPLICIT_VR_LITTLE_ENDIAN])],
        &[],
    )
    .await
    .unwrap();
    scu.store(
        &urgent.sop_class,
        &urgent.sop_uid,
        Some(EXPLICIT_VR_LITTLE_ENDIAN),
        &urgent.dataset(Encoding::EXPLICIT_LE),
    )
    .await
    .unwrap();
    scu.release().await.unwrap();
    urgent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_its_window_a_destination_takes_only_urgent_instances() {
    use chrono::Timelike;
    let central = Appliance::start(&central_toml()).await;
    // A one-minute window two hours from now is closed for the whole test.
    let now = chrono::Local::now();
    let start = (now.hour() * 60 + now.minute() + 120) % 1440;
    let window = format!(
        "window = \"{:02}:{:02}-{:02}:{:02}\"",
        start / 60,
        start % 60,
        (start + 1) % 1440 / 60,
        (start + 1) % 60
    );
    let rules = r#"
[[forward.rule]]
name = "emergency"
calling_ae = ["ER"]
destinations = ["central"]
priority = "stat"
"#;
    let edge = Appliance::start(&(edge_toml(central.addr.port(), &window) + rules)).await;
    let routine = instances(2);
    store_into(&edge, &routine).await;
    let urgent = store_from_the_emergency_room(&edge).await;
    eventually("the STAT instance arrived", || {
        held_by(&central, &urgent.sop_uid).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(depth(&edge), 2, "routine instances wait for the window");
    assert!(held_by(&central, &routine[0].sop_uid).is_none());
    assert!(state(&edge).outside_window);
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_battery_only_urgent_instances_go_until_the_hold_is_released() {
    let central = Appliance::start(&central_toml()).await;
    let rules = r#"
[[forward.rule]]
name = "emergency"
calling_ae = ["ER"]
destinations = ["central"]
priority = "stat"
"#;
    let edge = Appliance::start(&(edge_toml(central.addr.port(), "") + rules)).await;
    let forwarder = edge.forwarder().unwrap();
    forwarder.hold_on_battery(&["central".to_string()]);
    let routine = instances(2);
    store_into(&edge, &routine).await;
    let urgent = store_from_the_emergency_room(&edge).await;
    eventually("the STAT instance arrived", || {
        held_by(&central, &urgent.sop_uid).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(depth(&edge), 2, "routine instances wait on battery");
    assert!(held_by(&central, &routine[0].sop_uid).is_none());
    assert!(state(&edge).held_on_battery);
    // Mains back: the routine instances go without waiting for a retry timer.
    forwarder.hold_on_battery(&[]);
    eventually("the routine instances arrived", || depth(&edge) == 0).await;
    assert!(held_by(&central, &routine[1].sop_uid).is_some());
    assert!(!state(&edge).held_on_battery);
    edge.stop().await;
    central.stop().await;
}

/// DCMTK's storescp on a free port, writing what it receives (`+B`) under `dir`, with `args`
/// choosing the transfer syntaxes it accepts (by default every uncompressed one, no
/// deflate); killed on drop.
struct Storescp(std::process::Child);

impl Storescp {
    async fn start(dir: &std::path::Path, args: &[&str]) -> (Storescp, u16) {
        let port = free_port().await;
        let child = std::process::Command::new("/usr/bin/storescp")
            .args(["--aetitle", "CENTRAL", "+B", "-od"])
            .arg(dir)
            .args(args)
            .arg(port.to_string())
            .spawn()
            .expect("DCMTK's storescp runs (apt package dcmtk)");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "storescp did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (Storescp(child), port)
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stores a Deflated Explicit VR LE instance whose data set inflates `zeros` bytes past its
/// head (a few hundred kB on the wire).
async fn store_bomb(app: &Appliance, inst: &SynthInstance, zeros: u32) {
    let deflated = dataset::ts::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    let file = dataset::bomb::deflate_bomb(inst, zeros);
    let meta = dataset::meta::read_file_meta(&mut &file[..]).unwrap();
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "EDGE",
        &[(inst.sop_class.as_str(), &[deflated])],
        &[],
    )
    .await
    .expect("association with the edge");
    let rsp = scu
        .store(
            &inst.sop_class,
            &inst.sop_uid,
            Some(deflated),
            &file[meta.dataset_offset as usize..],
        )
        .await
        .unwrap();
    assert!(rsp.status.unwrap().is_success(), "{:?}", rsp.error_comment);
    scu.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_bomb_is_forwarded_as_a_stream_or_dead_lettered_never_retried_for_ever() {
    // Review finding 2, forwarding: a 2 MB Deflated file whose data set inflates to 2 GB was
    // queued for a PACS that takes no deflate. Sending it inflated the whole data set into
    // memory; the process was OOM-killed before the delivery was recorded, took the same
    // entry again after the restart, and crash-looped. Now, with a transcode limit 16 times
    // smaller than the bomb: to a PACS taking Explicit VR LE it streams (inflating is the
    // whole conversion), and arrives whole; to one taking only Implicit VR LE, which needs the
    // data set converted in memory, the bounded inflation refuses it and the entry is
    // dead-lettered with the reason, once, while the queue goes on.
    const LIMIT: &str = "[dicom]\ntranscode_memory_limit_mb = 16\n";
    let zeros: u32 = 256 << 20;
    let inst = SynthInstance::ct(5, 1, 1, 1);
    let head = dataset::bomb::bomb_head(&inst, zeros);

    for (args, streamed) in [(&[][..], true), (&["+xi"][..], false)] {
        let out = tempfile::tempdir().unwrap();
        let (_central, port) = Storescp::start(out.path(), args).await;
        let toml = edge_toml(port, "").replace("[dicom]\n", "");
        let edge = Appliance::start(&format!("{LIMIT}{toml}")).await;
        store_bomb(&edge, &inst, zeros).await;
        let others = instances(2);
        store_into(&edge, &others).await;
        // The bomb goes through an unoptimised build: give it longer than `eventually`.
        let started = Instant::now();
        while depth(&edge) > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the queue did not drain: {:?}",
                state(&edge)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let dead = edge.store.dead_letters("central", 10).unwrap();
        let s = state(&edge);
        let written: Vec<std::path::PathBuf> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        if streamed {
            assert!(dead.is_empty(), "{dead:?}");
            assert_eq!((s.delivered, s.dead_lettered), (3, 0), "{s:?}");
            let bomb = written
                .iter()
                .find(|p| p.to_string_lossy().contains(&inst.sop_uid))
                .expect("storescp wrote the bomb");
            let meta = dataset::meta::read_file_meta(&mut std::io::BufReader::new(
                std::fs::File::open(bomb).unwrap(),
            ))
            .unwrap();
            assert_eq!(meta.transfer_syntax, EXPLICIT_VR_LITTLE_ENDIAN);
            let len = std::fs::metadata(bomb).unwrap().len() - meta.dataset_offset;
            assert_eq!(len, head.len() as u64 + u64::from(zeros), "arrived whole");
        } else {
            assert_eq!(dead.len(), 1, "{dead:?}");
            assert_eq!(dead[0].1.entry.sop_instance_uid, inst.sop_uid);
            assert_eq!(dead[0].1.entry.attempts, 1, "given up on at once");
            assert!(
                dead[0].1.reason.contains("1.2.840.10008.1.2.1.99")
                    && dead[0].1.reason.contains("limit"),
                "the reason names the conversion and the limit: {}",
                dead[0].1.reason
            );
            assert_eq!((s.delivered, s.dead_lettered), (2, 1), "{s:?}");
            assert_ne!(s.state, State::Down, "a refused conversion is no outage");
        }
        edge.stop().await;
    }
}
