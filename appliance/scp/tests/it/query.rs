//! C-FIND on the wire: each level in both information models, the character set, level and
//! retrieve AE title in responses, the context's transfer syntax, the result cap, refused
//! identifiers (too many keys, too large once inflated, values too long), keys the archive
//! does not index (0xFF01) and C-CANCEL.

use dataset::synth::SynthInstance;
use dataset::{Encoding, Tag, Vr, tags};
use dimse::{Command, CommandField, Status};
use testkit::{Appliance, EXPLICIT_LE, IMPLICIT_LE, Scu};

use crate::support::{identifier, open_config, store_all, value, walk};

/// Patient 1 (ISO_IR 100, a Latin-1 name): study 1 with series 1 (2 instances) and series 2
/// (1 instance), study 2 with one instance. Patient 2 (no character set): one instance.
fn fixture() -> Vec<SynthInstance> {
    let p1 = |s, r, i| {
        let mut inst = SynthInstance::ct(1, s, r, i);
        inst.patient_name = b"M\xFCller^Hans".to_vec();
        inst
    };
    let mut p2 = SynthInstance::ct(2, 1, 1, 1);
    p2.charset = None;
    vec![p1(1, 1, 1), p1(1, 1, 2), p1(1, 2, 1), p1(2, 1, 1), p2]
}

async fn loaded(dicom_keys: &str) -> (Appliance, Vec<SynthInstance>) {
    let app = Appliance::start(&open_config(dicom_keys)).await;
    let instances = fixture();
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(testkit::CT, &[EXPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    store_all(&mut scu, &instances, EXPLICIT_LE, Encoding::EXPLICIT_LE).await;
    scu.release().await.unwrap();
    (app, instances)
}

/// An association proposing both FIND models in `ts`.
async fn finder(app: &Appliance, ts: &str) -> Scu {
    Scu::connect(
        app.addr,
        "VIEWER",
        "OUTPOST",
        &[
            (dimse::PATIENT_ROOT_FIND, &[ts]),
            (dimse::STUDY_ROOT_FIND, &[ts]),
        ],
        &[],
    )
    .await
    .unwrap()
}

fn trimmed(v: &[u8]) -> &[u8] {
    dataset::encode::trim_padding(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_level_in_patient_root_returns_character_set_and_level() {
    let (app, _) = loaded("").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    let query = |pid: &[u8]| {
        identifier(
            Encoding::IMPLICIT_LE,
            &[
                (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"PATIENT"),
                (tags::PATIENT_NAME, Vr::PN, b""),
                (tags::PATIENT_ID, Vr::LO, pid),
                (tags::NUMBER_OF_PATIENT_RELATED_STUDIES, Vr::IS, b""),
            ],
        )
    };
    let (matches, last) = scu
        .find(dimse::PATIENT_ROOT_FIND, &query(b"PID00001"))
        .await
        .unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    assert_eq!(last.field, CommandField::C_FIND_RSP);
    assert_eq!(
        last.affected_sop_class_uid.as_deref(),
        Some(dimse::PATIENT_ROOT_FIND)
    );
    assert_eq!(matches.len(), 1);
    let w = walk(IMPLICIT_LE, &matches[0]);
    assert_eq!(value(&w, tags::SPECIFIC_CHARACTER_SET), b"ISO_IR 100");
    assert_eq!(value(&w, tags::QUERY_RETRIEVE_LEVEL), b"PATIENT ");
    assert_eq!(trimmed(&value(&w, tags::PATIENT_NAME)), b"M\xFCller^Hans");
    assert_eq!(value(&w, tags::PATIENT_ID), b"PID00001");
    assert_eq!(value(&w, tags::NUMBER_OF_PATIENT_RELATED_STUDIES), b"2 ");

    // A patient stored without a character set gets none back.
    let (matches, last) = scu
        .find(dimse::PATIENT_ROOT_FIND, &query(b"PID00002"))
        .await
        .unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    assert_eq!(matches.len(), 1);
    let w = walk(IMPLICIT_LE, &matches[0]);
    assert!(w.get(tags::SPECIFIC_CHARACTER_SET).is_none());
    assert_eq!(value(&w, tags::PATIENT_NAME), b"PATIENT2^TEST ");
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_level_in_study_root_returns_the_retrieve_ae_title() {
    let (app, instances) = loaded("").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::STUDY_DATE, Vr::DA, b""),
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::RETRIEVE_AE_TITLE, Vr::AE, b""),
            (tags::PATIENT_ID, Vr::LO, b"PID00001"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
            (tags::NUMBER_OF_STUDY_RELATED_INSTANCES, Vr::IS, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    let mut found: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = matches
        .iter()
        .map(|m| {
            let w = walk(IMPLICIT_LE, m);
            assert_eq!(value(&w, tags::QUERY_RETRIEVE_LEVEL), b"STUDY ");
            assert_eq!(value(&w, tags::RETRIEVE_AE_TITLE), b"OUTPOST ");
            assert_eq!(value(&w, tags::SPECIFIC_CHARACTER_SET), b"ISO_IR 100");
            (
                trimmed(&value(&w, tags::STUDY_INSTANCE_UID)).to_vec(),
                value(&w, tags::STUDY_DATE),
                value(&w, tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            (
                instances[0].study_uid.clone().into_bytes(),
                instances[0].study_date.clone().into_bytes(),
                b"3 ".to_vec()
            ),
            (
                instances[3].study_uid.clone().into_bytes(),
                instances[3].study_date.clone().into_bytes(),
                b"1 ".to_vec()
            ),
        ]
    );
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_level_in_study_root() {
    let (app, instances) = loaded("").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"SERIES"),
            (tags::MODALITY, Vr::CS, b""),
            (
                tags::STUDY_INSTANCE_UID,
                Vr::UI,
                instances[0].study_uid.as_bytes(),
            ),
            (tags::SERIES_INSTANCE_UID, Vr::UI, b""),
            (tags::NUMBER_OF_SERIES_RELATED_INSTANCES, Vr::IS, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    let mut found: Vec<(Vec<u8>, Vec<u8>)> = matches
        .iter()
        .map(|m| {
            let w = walk(IMPLICIT_LE, m);
            assert_eq!(value(&w, tags::QUERY_RETRIEVE_LEVEL), b"SERIES");
            assert_eq!(value(&w, tags::MODALITY), b"CT");
            assert_eq!(
                trimmed(&value(&w, tags::STUDY_INSTANCE_UID)),
                instances[0].study_uid.as_bytes()
            );
            (
                trimmed(&value(&w, tags::SERIES_INSTANCE_UID)).to_vec(),
                value(&w, tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            (instances[0].series_uid.clone().into_bytes(), b"2 ".to_vec()),
            (instances[2].series_uid.clone().into_bytes(), b"1 ".to_vec()),
        ]
    );
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_level_in_patient_root() {
    let (app, instances) = loaded("").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::SOP_INSTANCE_UID, Vr::UI, b""),
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"IMAGE"),
            (tags::PATIENT_ID, Vr::LO, b"PID00001"),
            (
                tags::STUDY_INSTANCE_UID,
                Vr::UI,
                instances[0].study_uid.as_bytes(),
            ),
            (
                tags::SERIES_INSTANCE_UID,
                Vr::UI,
                instances[0].series_uid.as_bytes(),
            ),
            (tags::INSTANCE_NUMBER, Vr::IS, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::PATIENT_ROOT_FIND, &q).await.unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    let mut found: Vec<(Vec<u8>, Vec<u8>)> = matches
        .iter()
        .map(|m| {
            let w = walk(IMPLICIT_LE, m);
            assert_eq!(value(&w, tags::QUERY_RETRIEVE_LEVEL), b"IMAGE ");
            (
                trimmed(&value(&w, tags::SOP_INSTANCE_UID)).to_vec(),
                trimmed(&value(&w, tags::INSTANCE_NUMBER)).to_vec(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            (instances[0].sop_uid.clone().into_bytes(), b"1".to_vec()),
            (instances[1].sop_uid.clone().into_bytes(), b"2".to_vec()),
        ]
    );
    scu.release().await.unwrap();
    app.stop().await;
}

/// The response identifier, byte for byte, on a context of transfer syntax `ts`.
async fn response_bytes_in(ts: &str, enc: Encoding) {
    let (app, instances) = loaded("").await;
    let mut scu = finder(&app, ts).await;
    assert_eq!(
        scu.context(dimse::STUDY_ROOT_FIND, None)
            .map(|(_, t)| t)
            .as_deref(),
        Some(ts)
    );
    let q = identifier(
        enc,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::PATIENT_ID, Vr::LO, b"PID00002"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    assert_eq!(matches.len(), 1);
    let expected = identifier(
        enc,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::PATIENT_ID, Vr::LO, b"PID00002"),
            (
                tags::STUDY_INSTANCE_UID,
                Vr::UI,
                instances[4].study_uid.as_bytes(),
            ),
        ],
    );
    assert_eq!(matches[0], expected);
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_in_explicit_le_on_an_explicit_le_context() {
    response_bytes_in(EXPLICIT_LE, Encoding::EXPLICIT_LE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_in_implicit_le_on_an_implicit_le_context() {
    response_bytes_in(IMPLICIT_LE, Encoding::IMPLICIT_LE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_matches_than_the_cap_are_refused_with_a700() {
    let (app, _) = loaded("max_find_results = 2").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert!(matches.is_empty());
    assert_eq!(last.status, Some(Status::OUT_OF_RESOURCES));
    assert_eq!(
        last.error_comment.as_deref(),
        Some("more than 2 matches; narrow the query")
    );
    // Within the cap, the same association answers.
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::PATIENT_ID, Vr::LO, b"PID00001"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(matches.len(), 2);
    assert_eq!(last.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unique_key_is_refused_with_a900() {
    let (app, instances) = loaded("").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    // Series level in Study Root without the StudyInstanceUID above it.
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"SERIES"),
            (tags::SERIES_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert!(matches.is_empty());
    assert_eq!(last.status, Some(Status::DOES_NOT_MATCH_SOP_CLASS));
    assert!(
        last.error_comment
            .as_deref()
            .is_some_and(|c| c.contains("StudyInstanceUID")),
        "{:?}",
        last.error_comment
    );
    // Study level in Patient Root without the PatientID above it.
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (
                tags::STUDY_INSTANCE_UID,
                Vr::UI,
                instances[0].study_uid.as_bytes(),
            ),
        ],
    );
    let (matches, last) = scu.find(dimse::PATIENT_ROOT_FIND, &q).await.unwrap();
    assert!(matches.is_empty());
    assert_eq!(last.status, Some(Status::DOES_NOT_MATCH_SOP_CLASS));
    assert!(
        last.error_comment
            .as_deref()
            .is_some_and(|c| c.contains("PatientID")),
        "{:?}",
        last.error_comment
    );
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_find_ends_it_with_fe00() {
    let app = Appliance::start(&open_config("")).await;
    let instances: Vec<SynthInstance> = (1..=60).map(|i| SynthInstance::ct(1, 1, 1, i)).collect();
    let mut scu = Scu::connect(
        app.addr,
        "VIEWER",
        "OUTPOST",
        &[
            (testkit::CT, &[EXPLICIT_LE]),
            (dimse::STUDY_ROOT_FIND, &[IMPLICIT_LE]),
        ],
        &[],
    )
    .await
    .unwrap();
    store_all(&mut scu, &instances, EXPLICIT_LE, Encoding::EXPLICIT_LE).await;
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"IMAGE"),
            (
                tags::STUDY_INSTANCE_UID,
                Vr::UI,
                instances[0].study_uid.as_bytes(),
            ),
            (
                tags::SERIES_INSTANCE_UID,
                Vr::UI,
                instances[0].series_uid.as_bytes(),
            ),
            (tags::SOP_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    // Without a cancel, all 60 match.
    let (matches, _) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(matches.len(), 60);

    let (pc, _) = scu.context(dimse::STUDY_ROOT_FIND, None).unwrap();
    let id = scu.next_id();
    let mut rq = Command::new(CommandField::C_FIND_RQ);
    rq.message_id = Some(id);
    rq.affected_sop_class_uid = Some(dimse::STUDY_ROOT_FIND.into());
    rq.priority = Some(0);
    rq.has_data_set = true;
    scu.channel().send_command(pc, &rq).await.unwrap();
    scu.channel().send_data_set(pc, &q).await.unwrap();
    scu.cancel(dimse::STUDY_ROOT_FIND, id).await.unwrap();
    let mut pending = 0;
    let last = loop {
        let (rsp, data) = scu.response_with_data().await.unwrap();
        assert_eq!(rsp.message_id_responded_to, Some(id));
        if rsp.status == Some(Status::PENDING) {
            assert!(data.is_some());
            pending += 1;
        } else {
            break rsp;
        }
    };
    assert_eq!(last.status, Some(Status::CANCEL));
    assert!(!last.has_data_set);
    assert!(pending < 60, "{pending} pending responses after the cancel");
    // The association is still usable.
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(matches.len(), 60);
    assert_eq!(last.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    app.stop().await;
}

/// A C-FIND on the model's context: each pending response's status and identifier, and the
/// final response.
async fn find_with_statuses(
    scu: &mut Scu,
    model: &str,
    identifier: &[u8],
) -> (Vec<(Status, Vec<u8>)>, Command) {
    let (pc, _) = scu.context(model, None).expect("find model accepted");
    let mut rq = Command::new(CommandField::C_FIND_RQ);
    rq.message_id = Some(scu.next_id());
    rq.affected_sop_class_uid = Some(model.into());
    rq.priority = Some(0);
    rq.has_data_set = true;
    scu.channel().send_command(pc, &rq).await.unwrap();
    scu.channel().send_data_set(pc, identifier).await.unwrap();
    let mut pending = Vec::new();
    loop {
        let (rsp, data) = scu.response_with_data().await.unwrap();
        match rsp.status {
            Some(s @ (Status::PENDING | Status::PENDING_WARNING)) => {
                pending.push((s, data.expect("a pending response carries an identifier")))
            }
            _ => return (pending, rsp),
        }
    }
}

/// Set in the child process that runs one memory test alone.
const MEMORY_CHILD: &str = "OUTPOST_FIND_MEMORY_CHILD";

/// Runs the test `name` again, alone, in a child process, so that the peak RSS it measures
/// is its own and not that of tests running beside it. True in the child, which does the
/// work; in the parent, false once the child passed.
pub(crate) fn alone_in_a_child(name: &str) -> bool {
    if std::env::var_os(MEMORY_CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(MEMORY_CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 passed"),
        "{name} did not run in the child:\n{text}"
    );
    assert!(out.status.success(), "{name} failed in its child:\n{text}");
    for line in text.lines().filter(|l| l.contains("peak RSS")) {
        println!("{line}");
    }
    false
}

/// A /proc/self/status field in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5) and returns the current RSS.
pub(crate) fn reset_peak_kib() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("peak RSS can be reset");
    status_kib("VmRSS:")
}

/// How much the peak RSS rose above `baseline`, in MiB.
pub(crate) fn peak_growth_mib(baseline_kib: u64) -> u64 {
    status_kib("VmHWM:").saturating_sub(baseline_kib) / 1024
}

/// Peak RSS growth allowed for one refused identifier: it is read whole (1 MiB at most) and
/// walked until refused. Before the fix these tests grew by gigabytes.
const MEMORY_BOUND_MIB: u64 = 48;

/// `count` distinct zero-length private keys (groups 0x0009, 0x000B, ..., elements 0x1000 to
/// 0xFFFF), as the review built its identifier in pynetdicom.
fn empty_private_keys(count: usize) -> Vec<(Tag, Vr, &'static [u8])> {
    (0..count)
        .map(|i| {
            let group = 0x0009 + 2 * (i / 0xF000) as u16;
            let element = 0x1000 + (i % 0xF000) as u16;
            (Tag::new(group, element), Vr::LO, &b""[..])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identifier_of_120000_empty_keys_is_refused_with_c000_in_bounded_memory() {
    // Review finding 3, reproduced: a Study Root C-FIND whose identifier held 120,000
    // zero-length private keys (about 960 KB, under the 1 MiB identifier limit) against 300
    // studies took the process to 2.8 GB. Every key is universal matching, so every study
    // matched, and each match was built with all 120,000 keys before anything was sent. One
    // query from any AE allowed to query could get the archive OOM-killed mid-store. The
    // identifier is now refused with 0xC000 and an ErrorComment once it passes 1,024 keys.
    if !alone_in_a_child(
        "query::an_identifier_of_120000_empty_keys_is_refused_with_c000_in_bounded_memory",
    ) {
        return;
    }
    let app = Appliance::start(&open_config("")).await;
    let studies: Vec<SynthInstance> = (1..=300).map(|s| SynthInstance::ct(1, s, 1, 1)).collect();
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[
            (testkit::CT, &[EXPLICIT_LE]),
            (dimse::STUDY_ROOT_FIND, &[IMPLICIT_LE]),
        ],
        &[],
    )
    .await
    .unwrap();
    store_all(&mut scu, &studies, EXPLICIT_LE, Encoding::EXPLICIT_LE).await;
    let mut keys = vec![(tags::QUERY_RETRIEVE_LEVEL, Vr::CS, &b"STUDY"[..])];
    keys.extend(empty_private_keys(120_000));
    let q = identifier(Encoding::IMPLICIT_LE, &keys);
    assert!(q.len() > 950_000 && q.len() < 1024 * 1024, "{}", q.len());

    let baseline = reset_peak_kib();
    let (pending, last) = find_with_statuses(&mut scu, dimse::STUDY_ROOT_FIND, &q).await;
    let growth = peak_growth_mib(baseline);
    println!("120,000-key identifier over 300 studies: peak RSS grew by {growth} MiB");
    assert_eq!(pending.len(), 0);
    assert_eq!(last.status, Some(Status::UNABLE_TO_PROCESS));
    assert_eq!(
        last.error_comment.as_deref(),
        Some("identifier has over 1024 distinct keys; send fewer")
    );
    assert!(growth < MEMORY_BOUND_MIB, "peak RSS grew by {growth} MiB");
    // The association goes on, and an ordinary query over the same studies answers.
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (pending, last) = find_with_statuses(&mut scu, dimse::STUDY_ROOT_FIND, &q).await;
    assert_eq!(pending.len(), 300);
    assert_eq!(last.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflated_identifier_of_millions_of_repeated_keys_is_refused_in_bounded_memory() {
    // Review finding 3, deflated variant: the 1 MiB identifier limit counted compressed
    // bytes, and Deflated Explicit VR Little Endian is accepted on the FIND context. Millions
    // of repeated zero-length keys compress to a few hundred kilobytes and were all
    // materialised (32 bytes each, then again as keys, then once per match), so the archive
    // died even when empty. The walk is now bounded while it inflates: refused with 0xC000
    // after 1 MiB of inflated identifier, however much more the stream holds.
    if !alone_in_a_child(
        "query::a_deflated_identifier_of_millions_of_repeated_keys_is_refused_in_bounded_memory",
    ) {
        return;
    }
    let (app, _) = loaded("").await;
    let deflated = dataset::ts::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN;
    let mut scu = finder(&app, deflated).await;
    assert_eq!(
        scu.context(dimse::STUDY_ROOT_FIND, None).map(|(_, ts)| ts),
        Some(deflated.to_string())
    );
    let repeats = 4_000_000;
    let one = identifier(
        Encoding::EXPLICIT_LE,
        &[(Tag::new(0x0009, 0x1010), Vr::LO, b"")],
    );
    let block: Vec<u8> = one.iter().copied().cycle().take(one.len() * 8192).collect();
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut z,
        &identifier(
            Encoding::EXPLICIT_LE,
            &[(tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY")],
        ),
    )
    .unwrap();
    for _ in 0..repeats / 8192 {
        std::io::Write::write_all(&mut z, &block).unwrap();
    }
    let q = z.finish().unwrap();
    assert!(q.len() < 1024 * 1024, "{} compressed bytes", q.len());

    let baseline = reset_peak_kib();
    let (pending, last) = find_with_statuses(&mut scu, dimse::STUDY_ROOT_FIND, &q).await;
    let growth = peak_growth_mib(baseline);
    println!(
        "deflated identifier of {} bytes holding {repeats} repeated keys: peak RSS grew by {growth} MiB",
        q.len()
    );
    assert_eq!(pending.len(), 0);
    assert_eq!(last.status, Some(Status::UNABLE_TO_PROCESS));
    assert_eq!(
        last.error_comment.as_deref(),
        Some("identifier inflates to over 1048576 bytes")
    );
    assert!(growth < MEMORY_BOUND_MIB, "peak RSS grew by {growth} MiB");
    // A small deflated query on the same association is answered.
    let q = identifier(
        Encoding::EXPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
            (Tag::new(0x0009, 0x1010), Vr::LO, b""),
            (Tag::new(0x0009, 0x1010), Vr::LO, b""),
        ],
    );
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &q).unwrap();
    let (pending, last) =
        find_with_statuses(&mut scu, dimse::STUDY_ROOT_FIND, &z.finish().unwrap()).await;
    assert_eq!(pending.len(), 3);
    assert_eq!(last.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unindexed_key_with_a_value_is_ignored_with_ff01() {
    // Review finding 11: a key the archive does not index, sent with a value, made every
    // study fail to match. `findscu -k QueryRetrieveLevel=STUDY -k StudyInstanceUID -k
    // "(0008,0201)=+0100"` found nothing, and so did viewers that put Institution Name in
    // their study browser's query. PS3.4 C.4.1.1.4: the SCP may ignore an optional key it
    // does not support and answer each match with Pending 0xFF01, which it now does; the
    // key is not returned, since the archive has no value for it.
    let (app, instances) = loaded("").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    let timezone = Tag::new(0x0008, 0x0201);
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
            (timezone, Vr::SH, b"+0100"),
            (tags::INSTITUTION_NAME, Vr::LO, b"SOMEWHERE"),
        ],
    );
    let (pending, last) = find_with_statuses(&mut scu, dimse::STUDY_ROOT_FIND, &q).await;
    assert_eq!(last.status, Some(Status::SUCCESS));
    let mut uids: Vec<Vec<u8>> = pending
        .iter()
        .map(|(status, data)| {
            assert_eq!(*status, Status::PENDING_WARNING);
            let w = walk(IMPLICIT_LE, data);
            assert!(w.get(timezone).is_none() && w.get(tags::INSTITUTION_NAME).is_none());
            trimmed(&value(&w, tags::STUDY_INSTANCE_UID)).to_vec()
        })
        .collect();
    uids.sort();
    uids.dedup();
    let mut want: Vec<Vec<u8>> = instances
        .iter()
        .map(|i| i.study_uid.clone().into_bytes())
        .collect();
    want.sort();
    want.dedup();
    assert_eq!(uids, want);
    // Without such a key the matches are plain Pending.
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
            (timezone, Vr::SH, b""),
        ],
    );
    let (pending, _) = find_with_statuses(&mut scu, dimse::STUDY_ROOT_FIND, &q).await;
    assert_eq!(pending.len(), want.len());
    assert!(pending.iter().all(|(s, _)| *s == Status::PENDING));
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_value_over_64_kib_is_refused_with_c000() {
    // Review, also noted: identifier values over 64 KiB were captured as empty, so a long
    // Patient Name became universal matching and the query answered every patient instead
    // of none. Such a key is now refused with 0xC000, naming it.
    let (app, _) = loaded("").await;
    let mut scu = finder(&app, IMPLICIT_LE).await;
    let long = vec![b'A'; 70_000];
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::PATIENT_NAME, Vr::PN, &long),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (pending, last) = find_with_statuses(&mut scu, dimse::STUDY_ROOT_FIND, &q).await;
    assert_eq!(pending.len(), 0);
    assert_eq!(last.status, Some(Status::UNABLE_TO_PROCESS));
    assert_eq!(
        last.error_comment.as_deref(),
        Some("key (0010,0010) is 70000 bytes long, over the 65536 allowed")
    );
    scu.release().await.unwrap();
    app.stop().await;
}
