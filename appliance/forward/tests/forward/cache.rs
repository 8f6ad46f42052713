//! The cache end to end: an edge with little room forwards to a central archive, evicts what
//! the central archive confirmed, answers C-FIND with NEARLINE for it, and a C-GET of an
//! evicted study recalls it by C-MOVE before sending it.

use std::time::Duration;

use dataset::encode::write_element;
use dataset::synth::SynthInstance;
use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dataset::{Encoding, Vr, tags};
use dimse::Status;
use forward::Clock;
use testkit::{Appliance, Scu};

use crate::support::{eventually, free_port};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

fn edge_toml(central: u16, recall: bool) -> String {
    format!(
        r#"
[dicom]
ae_title = "EDGE"
accept_unknown_callers = "loopback"

[storage]
capacity_mb = 1
high_watermark = 50
low_watermark = 40

[forward]
{}

[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "CENTRAL"
host = "127.0.0.1"
port = {central}
probe_interval_s = 1
"#,
        if recall {
            "recall_from = \"central\""
        } else {
            ""
        }
    )
}

fn central_toml(edge: u16) -> String {
    format!(
        r#"
[dicom]
ae_title = "CENTRAL"
accept_unknown_callers = "loopback"

[[dicom.remote]]
ae_title = "EDGE"
host = "127.0.0.1"
port = {edge}
"#
    )
}

fn study(p: u32, n: u32) -> Vec<SynthInstance> {
    (0..n)
        .map(|i| {
            let mut inst = SynthInstance::ct(p, 1, 1, i);
            inst.pixel_bytes = 60_000;
            inst
        })
        .collect()
}

async fn store_into(app: &Appliance, instances: &[SynthInstance]) {
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "EDGE",
        &[(CT, &[EXPLICIT_VR_LITTLE_ENDIAN])],
        &[],
    )
    .await
    .unwrap();
    for inst in instances {
        let rsp = scu
            .store(
                CT,
                &inst.sop_uid,
                Some(EXPLICIT_VR_LITTLE_ENDIAN),
                &inst.dataset(Encoding::EXPLICIT_LE),
            )
            .await
            .unwrap();
        assert!(rsp.status.unwrap().is_success());
    }
    scu.release().await.unwrap();
}

fn study_identifier(level: &[u8], uid: &str, availability: bool) -> Vec<u8> {
    let enc = Encoding::IMPLICIT_LE;
    let mut id = Vec::new();
    write_element(&mut id, enc, tags::QUERY_RETRIEVE_LEVEL, Vr::CS, level);
    if availability {
        write_element(&mut id, enc, tags::INSTANCE_AVAILABILITY, Vr::CS, b"");
    }
    write_element(
        &mut id,
        enc,
        tags::STUDY_INSTANCE_UID,
        Vr::UI,
        uid.as_bytes(),
    );
    id
}

/// InstanceAvailability of a study, by C-FIND over a real association.
async fn availability(app: &Appliance, study_uid: &str) -> String {
    let mut scu = Scu::connect(
        app.addr,
        "VIEWER",
        "EDGE",
        &[(dimse::STUDY_ROOT_FIND, &[IMPLICIT_VR_LITTLE_ENDIAN])],
        &[],
    )
    .await
    .unwrap();
    let (matches, _) = scu
        .find(
            dimse::STUDY_ROOT_FIND,
            &study_identifier(b"STUDY", study_uid, true),
        )
        .await
        .unwrap();
    scu.release().await.unwrap();
    let text = String::from_utf8_lossy(&matches[0]).into_owned();
    ["NEARLINE", "ONLINE"]
        .into_iter()
        .find(|v| text.contains(v))
        .unwrap_or("none")
        .to_string()
}

/// A C-GET of a study from the edge: the instances received and the final response.
async fn get_study(app: &Appliance, study_uid: &str) -> (usize, dimse::Command) {
    let mut scu = Scu::connect(
        app.addr,
        "VIEWER",
        "EDGE",
        &[
            (dimse::STUDY_ROOT_GET, &[IMPLICIT_VR_LITTLE_ENDIAN]),
            (CT, &[EXPLICIT_VR_LITTLE_ENDIAN]),
        ],
        &[CT],
    )
    .await
    .unwrap();
    let (received, responses) = scu
        .get(
            dimse::STUDY_ROOT_GET,
            &study_identifier(b"STUDY", study_uid, false),
            Status::SUCCESS,
        )
        .await
        .unwrap();
    scu.release().await.unwrap();
    (received.len(), responses.last().unwrap().0.clone())
}

async fn pair(recall: bool) -> (Appliance, Appliance) {
    let (edge_port, central_port) = (free_port().await, free_port().await);
    let central = Appliance::launch(
        tempfile::tempdir().unwrap(),
        &central_toml(edge_port),
        central_port,
        Clock::System,
        |_| {},
    )
    .await;
    let edge = Appliance::launch(
        tempfile::tempdir().unwrap(),
        &edge_toml(central_port, recall),
        edge_port,
        Clock::System,
        |_| {},
    )
    .await;
    (edge, central)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_studies_are_evicted_answered_nearline_and_recalled_on_retrieval() {
    let (edge, central) = pair(true).await;
    let old = study(1, 6);
    store_into(&edge, &old).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let recent = study(2, 4);
    store_into(&edge, &recent).await;
    eventually("everything is confirmed upstream", || {
        edge.store.outbox_summary("central").unwrap().depth == 0
    })
    .await;

    let report = edge
        .store
        .maintain_cache()
        .await
        .unwrap()
        .expect("above 50%");
    assert!(report.instances >= 6, "{report:?}");
    assert!(
        old.iter()
            .all(|i| edge.store.is_evicted(&i.sop_uid).unwrap())
    );
    assert_eq!(availability(&edge, &old[0].study_uid).await, "NEARLINE");
    assert_eq!(availability(&edge, &recent[0].study_uid).await, "ONLINE");

    // A viewer asks for the evicted study: the edge recalls it from the central archive
    // (a C-MOVE to itself), then sends it, all within the one C-GET.
    let (received, last) = get_study(&edge, &old[0].study_uid).await;
    assert_eq!(last.status, Some(Status::SUCCESS), "{last:?}");
    assert_eq!(received, old.len());
    assert_eq!(availability(&edge, &old[0].study_uid).await, "ONLINE");
    assert!(
        old.iter()
            .all(|i| !edge.store.is_evicted(&i.sop_uid).unwrap())
    );
    // Recalled instances came from upstream: they are not queued to go back.
    assert_eq!(edge.store.outbox_summary("central").unwrap().depth, 0);
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_instances_are_never_evicted_and_without_recall_a_retrieval_says_why() {
    let (edge, central) = pair(false).await;
    // The central archive is away: nothing gets confirmed, so nothing may be evicted.
    let central_port = central.addr.port();
    let (central_dir, _) = central.stop().await;
    let held = study(1, 10);
    store_into(&edge, &held).await;
    let report = edge
        .store
        .maintain_cache()
        .await
        .unwrap()
        .expect("above 50%");
    assert_eq!(report.instances, 0, "unconfirmed instances stay");
    assert!(
        held.iter()
            .all(|i| !edge.store.is_evicted(&i.sop_uid).unwrap())
    );
    assert_eq!(availability(&edge, &held[0].study_uid).await, "ONLINE");

    // Back, the central archive confirms them and they may go; without a recall source, a
    // retrieval then fails each sub-operation, saying why.
    let central = Appliance::launch(
        central_dir,
        &central_toml(edge.addr.port()),
        central_port,
        Clock::System,
        |_| {},
    )
    .await;
    eventually("everything is confirmed upstream", || {
        edge.store.outbox_summary("central").unwrap().depth == 0
    })
    .await;
    let report = edge
        .store
        .maintain_cache()
        .await
        .unwrap()
        .expect("above 50%");
    // The study goes whole: a study half evicted costs a recall as much as a whole one.
    assert_eq!(report.instances, 10, "{report:?}");
    let (received, last) = get_study(&edge, &held[0].study_uid).await;
    assert_eq!(received, 0);
    assert_eq!(last.failed, Some(10), "{last:?}");
    assert_ne!(last.status, Some(Status::SUCCESS));
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_recall_sends_pending_responses_and_honours_c_cancel() {
    // A C-GET or C-MOVE of an evicted study ran the whole recall (up to 600 s per study, one
    // study after another) before sending any response, and a C-CANCEL sent meanwhile was
    // not read. Viewers give up on a retrieval that says nothing for their DIMSE timeout
    // (10 to 60 s), so behind a slow WAN link an evicted study could never be opened, and
    // the viewer's cancel did not stop the recall either. Now the requestor gets a Pending
    // response every few seconds while the recall runs, and its C-CANCEL ends the retrieval
    // at once with the count of what remains and the list of what was never sent.
    let (edge, old, hung) = evicted_behind_a_hung_central().await;

    let mut scu = Scu::connect(
        edge.addr,
        "VIEWER",
        "EDGE",
        &[
            (dimse::STUDY_ROOT_GET, &[IMPLICIT_VR_LITTLE_ENDIAN]),
            (CT, &[EXPLICIT_VR_LITTLE_ENDIAN]),
        ],
        &[CT],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let id = scu
        .start_get(
            dimse::STUDY_ROOT_GET,
            &study_identifier(b"STUDY", &old[0].study_uid, false),
        )
        .await
        .unwrap();
    let mut pending_at = Vec::new();
    while pending_at.len() < 2 {
        let (rsp, _) = scu.response_with_data().await.unwrap();
        assert_eq!(rsp.status, Some(Status::PENDING), "{rsp:?}");
        assert_eq!(rsp.remaining, Some(10));
        assert_eq!(rsp.completed, Some(0));
        pending_at.push(started.elapsed());
    }
    // Every few seconds, well inside a viewer's DIMSE timeout.
    assert!(pending_at[0] < Duration::from_secs(5), "{pending_at:?}");
    assert!(
        pending_at[1] - pending_at[0] < Duration::from_secs(5),
        "{pending_at:?}"
    );

    let cancelled_at = std::time::Instant::now();
    scu.cancel(dimse::STUDY_ROOT_GET, id).await.unwrap();
    let (last, data) = loop {
        let (rsp, data) = scu.response_with_data().await.unwrap();
        if rsp.status != Some(Status::PENDING) {
            break (rsp, data);
        }
    };
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
    assert_eq!(last.status, Some(Status::CANCEL), "{last:?}");
    assert_eq!(
        (last.remaining, last.completed, last.failed, last.warning),
        (Some(10), Some(0), Some(0), Some(0))
    );
    // The Cancel response lists every instance that was never sent.
    let data = data.expect("a cancel lists what was not sent");
    let text = String::from_utf8_lossy(&data);
    assert!(old.iter().all(|i| text.contains(&i.sop_uid)), "{text}");
    scu.release().await.unwrap();
    hung.hold.abort();
    edge.stop().await;
}

/// A central archive that took over a port and hangs: it accepts connections, counts them and
/// never answers, as a saturated WAN link does.
struct Hung {
    hold: tokio::task::JoinHandle<()>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// An edge whose one study of 10 instances was confirmed upstream and evicted, with its
/// central archive now hung, so that any recall waits for its association timeout.
async fn evicted_behind_a_hung_central() -> (Appliance, Vec<SynthInstance>, Hung) {
    let (edge, central) = pair(true).await;
    let old = study(1, 10);
    store_into(&edge, &old).await;
    eventually("everything is confirmed upstream", || {
        edge.store.outbox_summary("central").unwrap().depth == 0
    })
    .await;
    edge.store
        .maintain_cache()
        .await
        .unwrap()
        .expect("above 50%");
    assert!(
        old.iter()
            .all(|i| edge.store.is_evicted(&i.sop_uid).unwrap())
    );
    let central_port = central.addr.port();
    central.stop().await;
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", central_port))
        .await
        .unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    (edge, old, Hung { hold, connections })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_of_an_evicted_study_to_an_unknown_destination_is_refused_before_any_recall() {
    // A C-MOVE of an evicted study named a destination that is not configured. The edge
    // first recalled the whole study from the central archive (minutes over a WAN, and the
    // upstream archive's work), sending Pending responses meanwhile, and only then answered
    // 0xA801. Anyone on the modality network could thus make the box pull any evicted study
    // back across the WAN with a made-up destination. Now the destination is checked first:
    // 0xA801 at once, and the central archive is never called.
    let (edge, old, hung) = evicted_behind_a_hung_central().await;
    let mut scu = Scu::connect(
        edge.addr,
        "VIEWER",
        "EDGE",
        &[(dimse::STUDY_ROOT_MOVE, &[IMPLICIT_VR_LITTLE_ENDIAN])],
        &[],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let responses = scu
        .move_(
            dimse::STUDY_ROOT_MOVE,
            "NOWHERE",
            &study_identifier(b"STUDY", &old[0].study_uid, false),
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let statuses: Vec<_> = responses.iter().map(|(r, _)| r.status).collect();
    assert_eq!(
        statuses,
        vec![Some(Status::MOVE_DESTINATION_UNKNOWN)],
        "after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(
        hung.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no recall was attempted"
    );
    assert!(
        old.iter()
            .all(|i| edge.store.is_evicted(&i.sop_uid).unwrap())
    );
    scu.release().await.unwrap();
    hung.hold.abort();
    edge.stop().await;
}

/// An edge that keeps corrections (`duplicates = "overwrite"`) and its central archive,
/// which keeps the first copy it got (as Orthanc does by default); `overwrites` is what the
/// edge is told of the central archive.
async fn overwrite_pair(overwrites: bool) -> (Appliance, Appliance) {
    let (edge_port, central_port) = (free_port().await, free_port().await);
    let central = Appliance::launch(
        tempfile::tempdir().unwrap(),
        &central_toml(edge_port),
        central_port,
        Clock::System,
        |_| {},
    )
    .await;
    let edge_config = edge_toml(central_port, true)
        .replace("[storage]\n", "[storage]\nduplicates = \"overwrite\"\n")
        .replace(
            "probe_interval_s = 1\n",
            &format!("probe_interval_s = 1\noverwrites = {overwrites}\n"),
        );
    let edge = Appliance::launch(
        tempfile::tempdir().unwrap(),
        &edge_config,
        edge_port,
        Clock::System,
        |_| {},
    )
    .await;
    (edge, central)
}

/// Stores a first version of a study, waits until the central archive confirmed it, then a
/// corrected version (same UIDs, another patient name), and waits until that was delivered.
async fn store_and_correct(edge: &Appliance) -> Vec<SynthInstance> {
    let first = study(1, 10);
    store_into(edge, &first).await;
    eventually("the first version is confirmed upstream", || {
        edge.store.outbox_summary("central").unwrap().depth == 0
    })
    .await;
    let corrected: Vec<SynthInstance> = first
        .iter()
        .map(|i| {
            let mut c = i.clone();
            c.patient_name = b"PATIENT1^CORRECTED".to_vec();
            c
        })
        .collect();
    store_into(edge, &corrected).await;
    eventually("the correction is delivered", || {
        edge.store.outbox_summary("central").unwrap().depth == 0
    })
    .await;
    corrected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_acknowledged_by_a_keep_first_archive_is_never_evicted_until_released() {
    // With duplicates = "overwrite", a corrected re-send counted as confirmed upstream as
    // soon as the central archive answered success. But Orthanc by default (and any
    // keep-first PACS) answers success and keeps its old copy. The corrected local file was
    // then evicted, a later recall brought back the old version, and the correction existed
    // nowhere. Now an acknowledgement of an overwritten instance confirms it only from a
    // destination configured with `overwrites = true`; otherwise the correction stays local
    // until a person releases it, and a recall whose copy differs from the evicted one is
    // recorded and logged as an error.
    let (edge, central) = overwrite_pair(false).await;
    let corrected = store_and_correct(&edge).await;
    // Nothing can be evicted: the only confirmation of each correction is a keep-first one.
    let report = edge
        .store
        .maintain_cache()
        .await
        .unwrap()
        .expect("above 50%");
    assert_eq!(report.instances, 0, "{report:?}");
    assert!(
        corrected
            .iter()
            .all(|i| !edge.store.is_evicted(&i.sop_uid).unwrap())
    );
    let held = edge.store.held_corrections().unwrap();
    assert_eq!(held.len(), corrected.len());
    assert!(held.iter().all(|h| h.destinations == ["central"]));

    // A person releases them (accepting that central may hold the old version): now they
    // go like any confirmed instance.
    let uids = corrected.iter().map(|i| i.sop_uid.clone()).collect();
    assert_eq!(edge.store.release_corrections(uids).await.unwrap(), 10);
    eventually("the release is applied", || {
        edge.store.held_corrections().unwrap().is_empty()
    })
    .await;
    edge.store
        .maintain_cache()
        .await
        .unwrap()
        .expect("evictable once released");
    assert!(
        corrected
            .iter()
            .all(|i| edge.store.is_evicted(&i.sop_uid).unwrap())
    );

    // The recall brings back central's first version: that is recorded, not silent.
    let (received, last) = get_study(&edge, &corrected[0].study_uid).await;
    assert_eq!(last.status, Some(Status::SUCCESS), "{last:?}");
    assert_eq!(received, corrected.len());
    let mismatches = edge.store.recall_mismatches().unwrap();
    assert_eq!(mismatches.len(), corrected.len(), "{mismatches:?}");
    edge.stop().await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_acknowledged_by_an_overwriting_archive_may_be_evicted() {
    // The counterpart: a destination said to replace its copies confirms a correction by
    // its acknowledgement, as before.
    let (edge, central) = overwrite_pair(true).await;
    let corrected = store_and_correct(&edge).await;
    edge.store
        .maintain_cache()
        .await
        .unwrap()
        .expect("above 50%");
    assert!(
        corrected
            .iter()
            .all(|i| edge.store.is_evicted(&i.sop_uid).unwrap())
    );
    assert!(edge.store.held_corrections().unwrap().is_empty());
    edge.stop().await;
    central.stop().await;
}
