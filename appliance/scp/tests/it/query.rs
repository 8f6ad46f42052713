//! C-FIND on the wire: each level in both information models, the character set, level and
//! retrieve AE title in responses, the context's transfer syntax, the result cap, refused
//! identifiers and C-CANCEL.

use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
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
