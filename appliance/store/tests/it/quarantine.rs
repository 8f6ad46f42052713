//! A second patient under an existing study (archive-review §8) and a keep-first UID collision
//! from another patient (§17): held in quarantine, never served, until a person resolves it.
//!
//! The story: a technologist picks the wrong worklist entry, scans a CT for patient P1 in study
//! S, notices, corrects the Patient ID to P2 and goes on with an MR: the MR carries P2 and the
//! same Study UID S. Before the fix both were answered success, the MR was filed under P1 (a
//! C-FIND for P2 found nothing, S reported P1 with 2 instances, and a C-MOVE of S sent P2's
//! image as P1's). A keep-first UID collision from another patient was acknowledged and
//! dropped silently.

use dataset::Encoding;
use dataset::synth::SynthInstance;
use dataset::{Element, Vr, tags};
use store::query::{Identifier, Level, Model};
use store::{
    DuplicatePolicy, IngestError, Outcome, PatientConflictPolicy, QuarantineError, Resolution,
    Store,
};

use crate::support::{
    EveryInstanceTo, config, queued_uids, request, store_bytes, store_instance, stored_dataset,
};

fn el(tag: dataset::Tag, vr: Vr, v: &str) -> Element {
    Element {
        tag,
        vr,
        value: v.as_bytes().to_vec(),
    }
}

/// Patient IDs a Patient Root PATIENT-level C-FIND for `id` returns.
fn patients_with_id(store: &Store, id: &str) -> Vec<String> {
    let q = Identifier {
        level: Level::Patient,
        charset: dataset::charset::Charset::Default,
        keys: vec![el(tags::PATIENT_ID, Vr::LO, id)],
    };
    store
        .find(Model::PatientRoot, &q, 1000)
        .unwrap()
        .iter()
        .map(|f| {
            let v = &f
                .elements
                .iter()
                .find(|e| e.tag == tags::PATIENT_ID)
                .unwrap()
                .value;
            String::from_utf8_lossy(v).trim().to_string()
        })
        .collect()
}

/// (Patient ID, NumberOfStudyRelatedInstances) of a study, by a STUDY-level C-FIND.
fn study_patient_and_count(store: &Store, study: &str) -> Option<(String, String)> {
    let q = Identifier {
        level: Level::Study,
        charset: dataset::charset::Charset::Default,
        keys: vec![
            el(tags::STUDY_INSTANCE_UID, Vr::UI, study),
            el(tags::PATIENT_ID, Vr::LO, ""),
            el(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, Vr::IS, ""),
        ],
    };
    let found = store.find(Model::StudyRoot, &q, 1000).unwrap();
    let f = found.first()?;
    let get = |tag| {
        let v = &f.elements.iter().find(|e| e.tag == tag).unwrap().value;
        String::from_utf8_lossy(v).trim().to_string()
    };
    Some((
        get(tags::PATIENT_ID),
        get(tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
    ))
}

/// Instances a C-FIND at IMAGE level finds for a SOP Instance UID.
fn images_with_uid(store: &Store, study: &str, sop: &str) -> usize {
    let q = Identifier {
        level: Level::Image,
        charset: dataset::charset::Charset::Default,
        keys: vec![
            el(tags::STUDY_INSTANCE_UID, Vr::UI, study),
            el(tags::SOP_INSTANCE_UID, Vr::UI, sop),
        ],
    };
    store
        .find(Model::StudyRoot, &q, 1000)
        .map_or(0, |f| f.len())
}

/// The review's pair: P1's CT in study S, then P2's MR naming S in a new series.
fn ct_then_mr() -> (SynthInstance, SynthInstance) {
    let ct = SynthInstance::ct(1, 1, 1, 1);
    let mut mr = SynthInstance::ct(2, 1, 2, 1);
    mr.study_uid = ct.study_uid.clone();
    mr.modality = "MR".into();
    mr.sop_class = "1.2.840.10008.5.1.4.1.1.4".into();
    (ct, mr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_patient_in_an_existing_study_is_quarantined_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.router = Some(std::sync::Arc::new(EveryInstanceTo("PACS")));
    let (store, _) = Store::open(c.clone()).unwrap();
    let (ct, mr) = ct_then_mr();
    assert_eq!(store_instance(&store, &ct).await, Outcome::Stored);
    let outcome = store_instance(&store, &mr).await;
    assert!(
        matches!(outcome, Outcome::Quarantined { .. }),
        "{outcome:?}"
    );
    // Not queryable at any level, not retrievable, not queued.
    assert!(patients_with_id(&store, &mr.patient_id).is_empty());
    assert_eq!(
        study_patient_and_count(&store, &ct.study_uid),
        Some((ct.patient_id.clone(), "1".into()))
    );
    assert_eq!(images_with_uid(&store, &ct.study_uid, &mr.sop_uid), 0);
    assert!(stored_dataset(&store, &mr.sop_uid).is_none());
    let queued = queued_uids(&store, "PACS");
    assert!(queued.contains(&ct.sop_uid) && !queued.contains(&mr.sop_uid));
    // Listed, with both patients, and its file is the archive's (no orphan).
    let held = store.quarantined().unwrap();
    assert_eq!(held.len(), 1);
    let h = &held[0];
    assert_eq!(h.conflict.sop_instance_uid, mr.sop_uid);
    assert_eq!(h.conflict.study_uid, ct.study_uid);
    assert!(h.conflict.patient_key.starts_with(&mr.patient_id));
    assert!(h.conflict.study_patient_key.starts_with(&ct.patient_id));
    assert_eq!(h.record.source_ae, "TESTSCU");
    assert_eq!(store.quarantine_count().unwrap(), 1);
    assert_eq!(store.stats().quarantined, 1);
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Durable across a restart, still held.
    store.close().await.unwrap();
    drop(store);
    let (store, _) = Store::open(c).unwrap();
    assert_eq!(store.quarantined().unwrap().len(), 1);
    assert!(patients_with_id(&store, &mr.patient_id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_files_it_under_the_study_and_queues_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.router = Some(std::sync::Arc::new(EveryInstanceTo("PACS")));
    let (store, _) = Store::open(c).unwrap();
    let (ct, mr) = ct_then_mr();
    store_instance(&store, &ct).await;
    let Outcome::Quarantined { seq } = store_instance(&store, &mr).await else {
        panic!("not quarantined");
    };
    let held = store
        .resolve_quarantine(seq, Resolution::Assign)
        .await
        .unwrap();
    assert_eq!(held.seq, seq);
    assert!(store.quarantined().unwrap().is_empty());
    assert_eq!(
        study_patient_and_count(&store, &ct.study_uid),
        Some((ct.patient_id.clone(), "2".into()))
    );
    assert_eq!(
        stored_dataset(&store, &mr.sop_uid).unwrap(),
        mr.dataset(Encoding::EXPLICIT_LE)
    );
    assert!(queued_uids(&store, "PACS").contains(&mr.sop_uid));
    // A number is resolved once.
    assert!(matches!(
        store.resolve_quarantine(seq, Resolution::Assign).await,
        Err(QuarantineError::NotHeld(n)) if n == seq
    ));
    store.checkpoint().await.unwrap();
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_file_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let (ct, mr) = ct_then_mr();
    store_instance(&store, &ct).await;
    let Outcome::Quarantined { seq } = store_instance(&store, &mr).await else {
        panic!("not quarantined");
    };
    let before = store.usage().unwrap().stored_bytes;
    let held = store
        .resolve_quarantine(seq, Resolution::Delete)
        .await
        .unwrap();
    store.checkpoint().await.unwrap();
    // A second checkpoint clears the pending delete row once the file is gone.
    store.checkpoint().await.unwrap();
    assert!(!store.layout().absolute(&held.record.file).exists());
    assert_eq!(
        store.usage().unwrap().stored_bytes,
        before - held.record.size
    );
    assert!(store.quarantined().unwrap().is_empty());
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.instances, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_id_plus_issuer_and_empty_differs_from_set() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let first = SynthInstance::ct(1, 1, 1, 1);
    store_instance(&store, &first).await;
    // Trailing spaces are padding: the same patient.
    let mut padded = SynthInstance::ct(1, 1, 1, 2);
    padded.patient_id = format!("{}  ", first.patient_id);
    assert_eq!(store_instance(&store, &padded).await, Outcome::Stored);
    // An issuer where the study had none: another patient.
    let mut issued = SynthInstance::ct(1, 1, 1, 3);
    issued.issuer = Some("HOSP_A".into());
    assert!(matches!(
        store_instance(&store, &issued).await,
        Outcome::Quarantined { .. }
    ));
    // An empty Patient ID against a set one.
    let mut empty = SynthInstance::ct(1, 1, 1, 4);
    empty.patient_id = String::new();
    assert!(matches!(
        store_instance(&store, &empty).await,
        Outcome::Quarantined { .. }
    ));
    assert_eq!(store.quarantine_count().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_first_collision_from_another_patient_is_quarantined_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let first = SynthInstance::ct(1, 1, 1, 1);
    store_instance(&store, &first).await;
    // A real copy is still a duplicate.
    assert_eq!(store_instance(&store, &first).await, Outcome::Duplicate);
    // Same SOP Instance UID, another patient and study (a bad UID generator).
    let mut other = SynthInstance::ct(7, 7, 7, 7);
    other.sop_uid = first.sop_uid.clone();
    let outcome = store_instance(&store, &other).await;
    let Outcome::Quarantined { seq } = outcome else {
        panic!("{outcome:?}");
    };
    // The stored copy is untouched, and the held one cannot be assigned beside it.
    assert_eq!(
        stored_dataset(&store, &first.sop_uid).unwrap(),
        first.dataset(Encoding::EXPLICIT_LE)
    );
    assert!(matches!(
        store.resolve_quarantine(seq, Resolution::Assign).await,
        Err(QuarantineError::UidTaken(_))
    ));
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_refuses_naming_both_patients_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.patient_conflict = PatientConflictPolicy::Reject;
    c.duplicates = DuplicatePolicy::KeepFirst;
    let (store, _) = Store::open(c).unwrap();
    let (ct, mr) = ct_then_mr();
    store_instance(&store, &ct).await;
    let err = store_bytes(
        &store,
        request(&mr),
        &mr.dataset(Encoding::EXPLICIT_LE),
        16 * 1024,
    )
    .await
    .unwrap_err();
    let IngestError::PatientConflict(conflict) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(conflict.study_uid, ct.study_uid);
    let comment = err.to_string();
    // The sender sees the first 64 characters: both IDs are in them.
    let head: String = comment.chars().take(64).collect();
    assert!(
        head.contains(&mr.patient_id) && head.contains(&ct.patient_id),
        "{comment}"
    );
    assert!(comment.contains(&ct.study_uid), "{comment}");
    assert!(store.quarantined().unwrap().is_empty());
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.instances, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_files_it_as_a_study_of_its_own_patient_and_queues_it() {
    // `outpost quarantine split` was refused: the archive could not make the new UIDs, so a
    // technologist whose MR of P2 named P1's study could only file it under P1 (wrong) or
    // delete it and ask for a resend the modality may no longer be able to make. The split
    // now stores a copy with a Study and Series UID of its own, under P2, then deletes the
    // held one; two MR images of the same series land in the same new study and series.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.router = Some(std::sync::Arc::new(EveryInstanceTo("PACS")));
    let (store, _) = Store::open(c.clone()).unwrap();
    let (ct, mr) = ct_then_mr();
    let mut mr2 = mr.clone();
    mr2.sop_uid = format!("{}.2", mr.sop_uid);
    store_instance(&store, &ct).await;
    let mut seqs = Vec::new();
    for m in [&mr, &mr2] {
        let Outcome::Quarantined { seq } = store_instance(&store, m).await else {
            panic!("not quarantined");
        };
        seqs.push(seq);
    }
    let first = store.split_quarantined(seqs[0]).await.unwrap();
    let second = store.split_quarantined(seqs[1]).await.unwrap();
    assert_eq!(first.outcome, Outcome::Stored);
    assert_eq!(first.held.seq, seqs[0]);
    // Its own SOP Instance UID (it collided with nothing), new study and series, shared.
    assert_eq!(first.sop_instance_uid, mr.sop_uid);
    assert_ne!(first.study_uid, ct.study_uid);
    assert_ne!(first.series_uid, mr.series_uid);
    assert!(first.study_uid.starts_with("2.25."));
    assert_eq!(
        (&first.study_uid, &first.series_uid),
        (&second.study_uid, &second.series_uid)
    );
    assert!(store.quarantined().unwrap().is_empty());
    // P1's study is as it was; P2 and the new study are found, with both images.
    assert_eq!(
        study_patient_and_count(&store, &ct.study_uid),
        Some((ct.patient_id.clone(), "1".into()))
    );
    assert_eq!(
        patients_with_id(&store, &mr.patient_id),
        vec![mr.patient_id.clone()]
    );
    assert_eq!(
        study_patient_and_count(&store, &first.study_uid),
        Some((mr.patient_id.clone(), "2".into()))
    );
    // The stored copy is the held data set with the two UIDs changed, nothing else.
    let expected = {
        let mut m = mr.clone();
        m.study_uid = first.study_uid.clone();
        m.series_uid = first.series_uid.clone();
        m.dataset(Encoding::EXPLICIT_LE)
    };
    assert_eq!(stored_dataset(&store, &mr.sop_uid).unwrap(), expected);
    let queued = queued_uids(&store, "PACS");
    assert!(queued.contains(&mr.sop_uid) && queued.contains(&mr2.sop_uid));
    // A number is resolved once.
    assert!(matches!(
        store.split_quarantined(seqs[0]).await,
        Err(QuarantineError::NotHeld(_))
    ));
    store.checkpoint().await.unwrap();
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_of_a_uid_collision_gives_the_copy_a_uid_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let first = SynthInstance::ct(1, 1, 1, 1);
    store_instance(&store, &first).await;
    let mut other = SynthInstance::ct(7, 7, 7, 7);
    other.sop_uid = first.sop_uid.clone();
    let Outcome::Quarantined { seq } = store_instance(&store, &other).await else {
        panic!("not quarantined");
    };
    let split = store.split_quarantined(seq).await.unwrap();
    assert_ne!(split.sop_instance_uid, first.sop_uid);
    assert_eq!(
        stored_dataset(&store, &first.sop_uid).unwrap(),
        first.dataset(Encoding::EXPLICIT_LE),
        "the stored instance is untouched"
    );
    let mut expected = other.clone();
    expected.sop_uid = split.sop_instance_uid.clone();
    expected.study_uid = split.study_uid.clone();
    expected.series_uid = split.series_uid.clone();
    assert_eq!(
        stored_dataset(&store, &split.sop_instance_uid).unwrap(),
        expected.dataset(Encoding::EXPLICIT_LE)
    );
}
