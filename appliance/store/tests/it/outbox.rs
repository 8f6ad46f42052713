//! The outbox: stored implies queued (through the ingest path and through start-up repair),
//! no queueing of instances from upstream or of kept-first duplicates, and the queue
//! operations the forwarder and the CLI use, across a restart.

use std::collections::HashSet;
use std::sync::Arc;

use dataset::synth::SynthInstance;
use store::layout::{FileId, Layout};
use store::outbox::{QueueKey, QueueOp};
use store::{DuplicatePolicy, Outcome, Store, StoreConfig};

use crate::reconcile::write_ready;
use crate::support::{EveryInstanceTo, config, queued_uids, request, store_bytes};

fn routed(dir: &std::path::Path) -> StoreConfig {
    let mut c = config(dir);
    c.router = Some(Arc::new(EveryInstanceTo("central")));
    c
}

async fn store_from(store: &Store, inst: &SynthInstance, source: &str) -> Outcome {
    let mut req = request(inst);
    req.source_ae = source.into();
    store_bytes(
        store,
        req,
        &inst.dataset(dataset::Encoding::EXPLICIT_LE),
        64 * 1024,
    )
    .await
    .unwrap()
}

fn head(store: &Store, limit: usize) -> Vec<store::outbox::Queued> {
    store
        .outbox_peek("central", limit, &HashSet::new(), u64::MAX / 2, usize::MAX)
        .unwrap()
        .ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_instances_are_queued_once_and_upstream_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(routed(dir.path())).unwrap();
    let a = SynthInstance::ct(1, 1, 1, 1);
    let b = SynthInstance::ct(1, 1, 1, 2);
    let prior = SynthInstance::ct(2, 1, 1, 1);
    assert_eq!(store_from(&store, &a, "MODALITY").await, Outcome::Stored);
    assert_eq!(store_from(&store, &b, "MODALITY").await, Outcome::Stored);
    // A kept-first duplicate changes nothing, so it is not queued again.
    assert_eq!(store_from(&store, &a, "MODALITY").await, Outcome::Duplicate);
    // Priors pushed by the central PACS must not travel back to it.
    assert_eq!(
        store_from(&store, &prior, "UPSTREAM").await,
        Outcome::Stored
    );

    let queued = head(&store, 100);
    let uids: Vec<&str> = queued
        .iter()
        .map(|q| q.entry.sop_instance_uid.as_str())
        .collect();
    assert_eq!(uids, [a.sop_uid.as_str(), b.sop_uid.as_str()]);
    let first = &queued[0];
    let instance = first
        .instance
        .as_ref()
        .expect("the queued instance resolves");
    assert_eq!(instance.sop_class_uid, a.sop_class);
    assert_eq!(first.entry.study_uid, a.study_uid);
    let summary = store.outbox_summary("central").unwrap();
    assert_eq!((summary.depth, summary.dead, summary.paused), (2, 0, false));
    assert!(summary.oldest_enqueued_at.is_some());
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_instance_is_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = routed(dir.path());
    c.duplicates = DuplicatePolicy::Overwrite;
    let (store, _) = Store::open(c).unwrap();
    let a = SynthInstance::ct(1, 1, 1, 1);
    store_from(&store, &a, "MODALITY").await;
    let first = head(&store, 10);
    let first_file = first[0].instance.as_ref().unwrap().file.clone();
    store
        .outbox_apply(vec![QueueOp::Ack {
            destination: "central".into(),
            key: first[0].key,
            sop_instance_uid: a.sop_uid.clone(),
            file: first_file.clone(),
            confirmed: true,
        }])
        .await
        .unwrap();
    assert!(head(&store, 10).is_empty());
    assert_eq!(store.upstream_copies(&a.sop_uid).unwrap(), ["central"]);
    assert_eq!(
        store_from(&store, &a, "MODALITY").await,
        Outcome::Overwritten
    );
    let again = head(&store, 10);
    assert_eq!(again.len(), 1, "the new copy must travel too");
    assert!(again[0].key.seq > first[0].key.seq);
    assert!(
        store.upstream_copies(&a.sop_uid).unwrap().is_empty(),
        "the new copy is not confirmed by the old one's delivery"
    );

    // Regression: an acknowledgement for the old copy arriving after the overwrite (the
    // delivery was in flight) marked the new copy confirmed, so eviction could delete it
    // before it was ever sent. The ack names the file delivered; only that file counts.
    store
        .outbox_apply(vec![QueueOp::Ack {
            destination: "central".into(),
            key: first[0].key,
            sop_instance_uid: a.sop_uid.clone(),
            file: first_file,
            confirmed: true,
        }])
        .await
        .unwrap();
    assert!(store.upstream_copies(&a.sop_uid).unwrap().is_empty());
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_resubmission_and_pause_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let insts: Vec<SynthInstance> = (0..4).map(|i| SynthInstance::ct(1, 1, 1, i)).collect();
    let keys: Vec<QueueKey>;
    {
        let (store, _) = Store::open(routed(dir.path())).unwrap();
        for inst in &insts {
            store_from(&store, inst, "MODALITY").await;
        }
        keys = head(&store, 10).iter().map(|q| q.key).collect();
        let far = u64::MAX / 4;
        store
            .outbox_apply(vec![
                QueueOp::Retry {
                    destination: "central".into(),
                    key: keys[0],
                    reason: "status 0xA700".into(),
                    not_before_ms: far,
                    counts: true,
                },
                QueueOp::Dead {
                    destination: "central".into(),
                    key: keys[1],
                    reason: "SOP class not supported".into(),
                },
                QueueOp::Pause {
                    destination: "central".into(),
                    paused: true,
                },
            ])
            .await
            .unwrap();
        // The retried entry waits behind the others and is not due.
        let due = store
            .outbox_peek("central", 10, &HashSet::new(), 1_000, usize::MAX)
            .unwrap();
        let due_uids: Vec<&str> = due
            .ready
            .iter()
            .map(|q| q.entry.sop_instance_uid.as_str())
            .collect();
        assert_eq!(
            due_uids,
            [insts[2].sop_uid.as_str(), insts[3].sop_uid.as_str()]
        );
        assert_eq!(due.next_due_ms, Some(far));
        // A worker's held entries are skipped.
        let held: HashSet<QueueKey> = [keys[2]].into();
        let rest = store
            .outbox_peek("central", 10, &held, 1_000, usize::MAX)
            .unwrap();
        assert_eq!(rest.ready.len(), 1);
        store.close().await.unwrap();
    }
    let (store, _) = Store::open(routed(dir.path())).unwrap();
    let summary = store.outbox_summary("central").unwrap();
    assert_eq!((summary.depth, summary.dead, summary.paused), (3, 1, true));
    assert_eq!(summary.last_error.as_deref(), Some("status 0xA700"));
    let dead = store.dead_letters("central", 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.reason, "SOP class not supported");
    assert_eq!(dead[0].1.entry.sop_instance_uid, insts[1].sop_uid);
    let retried = head(&store, 10)
        .into_iter()
        .find(|q| q.entry.sop_instance_uid == insts[0].sop_uid)
        .unwrap();
    assert_eq!(retried.entry.attempts, 1);

    store
        .outbox_apply(vec![
            QueueOp::Resubmit {
                destination: "central".into(),
                seqs: Vec::new(),
            },
            QueueOp::RetryNow {
                destination: "central".into(),
            },
            QueueOp::Pause {
                destination: "central".into(),
                paused: false,
            },
        ])
        .await
        .unwrap();
    let due = store
        .outbox_peek("central", 10, &HashSet::new(), 1_000, usize::MAX)
        .unwrap();
    assert_eq!(due.ready.len(), 4, "everything is due again");
    assert!(!store.outbox_paused("central").unwrap());
    assert_eq!(store.outbox_summary("central").unwrap().dead, 0);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_repair_queues_what_it_files() {
    // An instance acknowledged just before a crash exists only as its `.ready` file; the
    // repair that files it must queue it as well, or it would be stored and never forwarded.
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    {
        let (store, _) = Store::open(routed(dir.path())).unwrap();
        store.close().await.unwrap();
    }
    let inst = SynthInstance::ct(1, 1, 1, 7);
    write_ready(
        &layout,
        &inst,
        &FileId::new(std::time::SystemTime::now()),
        false,
    );
    let (store, opened) = Store::open(routed(dir.path())).unwrap();
    assert_eq!(opened.reconciled.finished_indexed, 1);
    assert!(queued_uids(&store, "central").contains(&inst.sop_uid));
    store.close().await.unwrap();
}

fn commit_items(queued: &[store::outbox::Queued]) -> Vec<(QueueKey, String, String)> {
    queued
        .iter()
        .map(|q| {
            let i = q.instance.as_ref().unwrap();
            (q.key, i.sop_class_uid.clone(), i.file.clone())
        })
        .collect()
}

fn hint(max_attempts: Option<u32>) -> store::settle::Backoff {
    store::settle::Backoff {
        initial_ms: 10_000,
        multiplier_milli: 2000,
        max_ms: 3_600_000,
        max_attempts,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_commitment_settles_committed_failed_and_unmentioned_instances() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(routed(dir.path())).unwrap();
    let insts: Vec<SynthInstance> = (0..3).map(|i| SynthInstance::ct(1, 1, 1, i)).collect();
    for inst in &insts {
        store_from(&store, inst, "MODALITY").await;
    }
    let queued = head(&store, 10);
    store
        .outbox_apply(vec![QueueOp::AwaitCommitment {
            destination: "central".into(),
            transaction_uid: "2.25.1".into(),
            items: commit_items(&queued),
            retry: hint(None),
        }])
        .await
        .unwrap();
    let summary = store.outbox_summary("central").unwrap();
    assert_eq!((summary.depth, summary.awaiting_commitment), (0, 3));
    assert!(store.upstream_copies(&insts[0].sop_uid).unwrap().is_empty());

    store
        .record_commitment(store::outbox::CommitmentReport {
            transaction_uid: "2.25.1".into(),
            committed: vec![insts[0].sop_uid.clone()],
            failed: vec![(
                insts[1].sop_uid.clone(),
                "no such object instance (0x0112)".into(),
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.upstream_copies(&insts[0].sop_uid).unwrap(),
        ["central"]
    );
    let again = head(&store, 10);
    let reasons: Vec<(String, String)> = again
        .iter()
        .map(|q| {
            (
                q.entry.sop_instance_uid.clone(),
                q.entry.last_error.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons.contains(&(
        insts[1].sop_uid.clone(),
        "Storage Commitment failed: no such object instance (0x0112)".into()
    )));
    assert!(
        reasons
            .iter()
            .any(|(uid, why)| uid == &insts[2].sop_uid && why.contains("did not mention"))
    );
    assert_eq!(
        store.outbox_summary("central").unwrap().awaiting_commitment,
        0
    );
    // Refused instances wait the backoff before going again (an archive that never commits
    // is not asked in a tight loop), and not at once.
    assert!(again.iter().all(|q| q.entry.not_before_ms > 0));
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_to_commit_end_in_a_dead_letter_when_attempts_are_spent() {
    // Regression: a refused or expired commitment queued the instance again due at once and
    // never consulted max_attempts (the next C-STORE always succeeded), so an archive that
    // never commits was sent the instance and a new N-ACTION in a tight loop, for ever.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(routed(dir.path())).unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    store_from(&store, &inst, "MODALITY").await;
    for round in 0..2 {
        let queued = store
            .outbox_peek("central", 10, &HashSet::new(), u64::MAX / 2, usize::MAX)
            .unwrap()
            .ready;
        assert_eq!(queued.len(), 1, "round {round}");
        let txn = format!("2.25.{}", 100 + round);
        store
            .outbox_apply(vec![
                QueueOp::AwaitCommitment {
                    destination: "central".into(),
                    transaction_uid: txn.clone(),
                    items: commit_items(&queued),
                    retry: hint(Some(2)),
                },
                QueueOp::Committed(store::outbox::CommitmentReport {
                    transaction_uid: txn,
                    committed: Vec::new(),
                    failed: vec![(
                        inst.sop_uid.clone(),
                        "no such object instance (0x0112)".into(),
                    )],
                    ..Default::default()
                }),
            ])
            .await
            .unwrap();
    }
    let summary = store.outbox_summary("central").unwrap();
    assert_eq!((summary.depth, summary.dead), (0, 1));
    let dead = store.dead_letters("central", 10).unwrap();
    assert!(
        dead[0].1.reason.starts_with("gave up after 2 attempts"),
        "{}",
        dead[0].1.reason
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_overtakes_its_transaction_still_settles_it() {
    // An archive may report on its own association before the worker that requested the
    // commitment has written the transaction down; the report must not be lost to that race.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(routed(dir.path())).unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    store_from(&store, &inst, "MODALITY").await;
    store
        .record_commitment(store::outbox::CommitmentReport {
            transaction_uid: "2.25.9".into(),
            committed: vec![inst.sop_uid.clone()],
            failed: Vec::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    let queued = head(&store, 10);
    store
        .outbox_apply(vec![QueueOp::AwaitCommitment {
            destination: "central".into(),
            transaction_uid: "2.25.9".into(),
            items: commit_items(&queued),
            retry: hint(None),
        }])
        .await
        .unwrap();
    assert_eq!(store.upstream_copies(&inst.sop_uid).unwrap(), ["central"]);
    let summary = store.outbox_summary("central").unwrap();
    assert_eq!((summary.depth, summary.awaiting_commitment), (0, 0));

    // A transaction whose report never comes is sent again when it expires.
    store_from(&store, &SynthInstance::ct(1, 1, 1, 2), "MODALITY").await;
    let queued = head(&store, 10);
    store
        .outbox_apply(vec![QueueOp::AwaitCommitment {
            destination: "central".into(),
            transaction_uid: "2.25.10".into(),
            items: commit_items(&queued),
            retry: hint(None),
        }])
        .await
        .unwrap();
    assert_eq!(store.commitments("central").unwrap().len(), 1);
    store
        .outbox_apply(vec![QueueOp::CommitmentExpired {
            transaction_uid: "2.25.10".into(),
            reason: "no Storage Commitment report within 3600 s; sent again".into(),
        }])
        .await
        .unwrap();
    let back = head(&store, 10);
    assert_eq!(back.len(), 1);
    assert!(
        back[0]
            .entry
            .last_error
            .as_deref()
            .unwrap()
            .contains("3600 s")
    );
    assert!(store.commitments("central").unwrap().is_empty());
    store.close().await.unwrap();
}

/// A transaction for one stored instance, recorded as awaiting `central`'s report.
async fn one_awaiting(store: &Store, inst: &SynthInstance, txn: &str) {
    store_from(store, inst, "MODALITY").await;
    let queued: Vec<_> = head(store, 10)
        .into_iter()
        .filter(|q| q.entry.sop_instance_uid == inst.sop_uid)
        .collect();
    store
        .outbox_apply(vec![QueueOp::AwaitCommitment {
            destination: "central".into(),
            transaction_uid: txn.into(),
            items: commit_items(&queued),
            retry: hint(None),
        }])
        .await
        .unwrap();
}

fn from(ae: &str, destinations: &[&str]) -> Option<store::outbox::Reporter> {
    Some(store::outbox::Reporter {
        ae_title: ae.into(),
        destinations: destinations.iter().map(|d| d.to_string()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_another_destination_or_sop_class_is_refused_and_the_transaction_stays() {
    // Regression (review finding 13): any peer that learned a transaction UID (it travels in
    // clear in the N-ACTION) could settle it for whichever destination owned it, and a
    // report naming the instances under another SOP class was taken as well: the instances
    // counted as held upstream, and became evictable, on a stranger's word.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(routed(dir.path())).unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    one_awaiting(&store, &inst, "2.25.77").await;
    let class = head_class(&store, &inst);

    let stranger = store
        .record_commitment(store::outbox::CommitmentReport {
            transaction_uid: "2.25.77".into(),
            committed: vec![inst.sop_uid.clone()],
            sop_classes: vec![(inst.sop_uid.clone(), class.clone())],
            from: from("OTHERPACS", &["other"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        matches!(
            stranger,
            store::outbox::Recorded::Refused(
                store::outbox::ReportRefusal::NotItsDestination { .. }
            )
        ),
        "{stranger:?}"
    );
    let wrong_class = store
        .record_commitment(store::outbox::CommitmentReport {
            transaction_uid: "2.25.77".into(),
            committed: vec![inst.sop_uid.clone()],
            sop_classes: vec![(inst.sop_uid.clone(), "1.2.840.10008.5.1.4.1.1.7".into())],
            from: from("CENTRAL", &["central"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        matches!(
            wrong_class,
            store::outbox::Recorded::Refused(store::outbox::ReportRefusal::SopClassMismatch { .. })
        ),
        "{wrong_class:?}"
    );
    // The writer checks too (a report that skips the read-side check, or races it).
    store
        .outbox_apply(vec![QueueOp::Committed(store::outbox::CommitmentReport {
            transaction_uid: "2.25.77".into(),
            committed: vec![inst.sop_uid.clone()],
            sop_classes: vec![(inst.sop_uid.clone(), class.clone())],
            from: from("OTHERPACS", &["other"]),
            ..Default::default()
        })])
        .await
        .unwrap();
    assert!(store.upstream_copies(&inst.sop_uid).unwrap().is_empty());
    assert_eq!(store.commitments("central").unwrap().len(), 1);

    let genuine = store
        .record_commitment(store::outbox::CommitmentReport {
            transaction_uid: "2.25.77".into(),
            committed: vec![inst.sop_uid.clone()],
            sop_classes: vec![(inst.sop_uid.clone(), class)],
            from: from("CENTRAL", &["central"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(genuine, store::outbox::Recorded::Settled);
    assert_eq!(store.upstream_copies(&inst.sop_uid).unwrap(), ["central"]);
    store.close().await.unwrap();
}

/// The SOP class an instance was queued with (its stored class).
fn head_class(store: &Store, inst: &SynthInstance) -> String {
    store
        .commitments("central")
        .unwrap()
        .into_iter()
        .flat_map(|(_, c)| c.items)
        .find(|i| i.entry.sop_instance_uid == inst.sop_uid)
        .unwrap()
        .sop_class_uid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_report_flood_from_one_peer_does_not_crowd_out_another() {
    // Regression (review finding 13): the early-report table held 64 reports from anyone;
    // a peer that sent 64 reports for made-up transactions filled it for an hour, and the
    // genuine early report of the real destination was then dropped, so its transaction ran
    // into the timeout and everything was sent again.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(routed(dir.path())).unwrap();
    let mut refused = 0;
    for n in 0..200 {
        let r = store
            .record_commitment(store::outbox::CommitmentReport {
                transaction_uid: format!("2.25.5{n}"),
                from: from("NOISY", &["noisy"]),
                ..Default::default()
            })
            .await
            .unwrap();
        if matches!(r, store::outbox::Recorded::Refused(_)) {
            refused += 1;
        }
    }
    assert_eq!(
        refused,
        200 - store::outbox::MAX_EARLY_REPORTS_PER_PEER,
        "one peer's early reports are bounded"
    );
    let inst = SynthInstance::ct(1, 1, 1, 1);
    store_from(&store, &inst, "MODALITY").await;
    let queued = head(&store, 10);
    let early = store
        .record_commitment(store::outbox::CommitmentReport {
            transaction_uid: "2.25.42".into(),
            committed: vec![inst.sop_uid.clone()],
            sop_classes: vec![(
                inst.sop_uid.clone(),
                queued[0].instance.as_ref().unwrap().sop_class_uid.clone(),
            )],
            from: from("CENTRAL", &["central"]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(early, store::outbox::Recorded::Kept);
    store
        .outbox_apply(vec![QueueOp::AwaitCommitment {
            destination: "central".into(),
            transaction_uid: "2.25.42".into(),
            items: commit_items(&queued),
            retry: hint(None),
        }])
        .await
        .unwrap();
    assert_eq!(store.upstream_copies(&inst.sop_uid).unwrap(), ["central"]);
    assert!(store.commitments("central").unwrap().is_empty());
    store.close().await.unwrap();
}
