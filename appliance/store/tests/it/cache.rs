//! The archive as a cache: above the high watermark, the files of confirmed instances of the
//! least recently used studies go (their index entries stay, NEARLINE), unconfirmed ones
//! never do, and a file that comes back from upstream takes its place again.

use std::collections::HashSet;
use std::sync::Arc;

use dataset::synth::SynthInstance;
use dataset::{Element, Vr, tags};
use store::outbox::QueueOp;
use store::query::{Identifier, Level, Model};
use store::{CacheConfig, Outcome, Store, StoreConfig};

use crate::support::{EveryInstanceTo, config, request, store_bytes, stored_dataset};

const SIZE: usize = 100_000;

fn cached(dir: &std::path::Path) -> StoreConfig {
    let mut c = config(dir);
    c.router = Some(Arc::new(EveryInstanceTo("central")));
    c.cache = Some(CacheConfig {
        high_watermark: 80,
        low_watermark: 50,
        capacity_bytes: Some(2_000_000),
        protect_recent_s: 0,
    });
    c
}

fn series(study: u32, n: u32) -> Vec<SynthInstance> {
    (0..n)
        .map(|i| {
            let mut inst = SynthInstance::ct(study, study, 1, i);
            inst.pixel_bytes = SIZE;
            inst
        })
        .collect()
}

async fn put(store: &Store, inst: &SynthInstance, source: &str) -> Outcome {
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

/// Acknowledges every queued delivery of these instances, as the forwarder does.
async fn confirm(store: &Store, instances: &[SynthInstance]) {
    let uids: HashSet<&str> = instances.iter().map(|i| i.sop_uid.as_str()).collect();
    let ops = store
        .outbox_peek("central", usize::MAX, &HashSet::new(), u64::MAX, usize::MAX)
        .unwrap()
        .ready
        .into_iter()
        .filter(|q| uids.contains(q.entry.sop_instance_uid.as_str()))
        .map(|q| QueueOp::Ack {
            destination: "central".into(),
            key: q.key,
            sop_instance_uid: q.entry.sop_instance_uid,
            file: q.instance.unwrap().file,
            confirmed: true,
        })
        .collect();
    store.outbox_apply(ops).await.unwrap();
}

fn study_availability(store: &Store, study: &str) -> String {
    let q = Identifier {
        level: Level::Study,
        charset: dataset::charset::Charset::Default,
        keys: vec![
            Element {
                tag: tags::STUDY_INSTANCE_UID,
                vr: Vr::UI,
                value: study.as_bytes().to_vec(),
            },
            Element {
                tag: tags::INSTANCE_AVAILABILITY,
                vr: Vr::CS,
                value: Vec::new(),
            },
        ],
    };
    let found = store.find(Model::StudyRoot, &q, 10).unwrap();
    let e = found[0]
        .elements
        .iter()
        .find(|e| e.tag == tags::INSTANCE_AVAILABILITY)
        .unwrap();
    String::from_utf8(e.value.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_confirmed_instances_of_the_least_recently_used_studies_are_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(cached(dir.path())).unwrap();
    let old = series(1, 6);
    let newer = series(2, 6);
    let unconfirmed = series(3, 5);
    for inst in &old {
        put(&store, inst, "CT1").await;
    }
    // A second apart, so the access order is certain.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for inst in newer.iter().chain(&unconfirmed) {
        put(&store, inst, "CT1").await;
    }
    let usage = store.usage().unwrap();
    assert!(usage.percent() > 80.0, "{usage:?}");

    // Nothing is confirmed yet: nothing may go, however full.
    let report = store.maintain_cache().await.unwrap().unwrap();
    assert_eq!(report.instances, 0);

    confirm(&store, &old).await;
    confirm(&store, &newer).await;
    store.close().await.unwrap();
    drop(store);

    // Studies used in the last two minutes are protected: a retrieval that has just
    // resolved them must not find their files gone.
    let mut protective = cached(dir.path());
    protective.cache.as_mut().unwrap().protect_recent_s = 120;
    let (store, _) = Store::open(protective).unwrap();
    let report = store.maintain_cache().await.unwrap().unwrap();
    assert_eq!(report.instances, 0, "{report:?}");
    store.close().await.unwrap();
    drop(store);

    let (store, _) = Store::open(cached(dir.path())).unwrap();
    let report = store.maintain_cache().await.unwrap().unwrap();
    assert!(report.percent_after <= 50.0, "{report:?}");
    // The old study goes first and whole; the newer only as far as needed.
    for inst in &old {
        assert!(store.is_evicted(&inst.sop_uid).unwrap());
    }
    for inst in &unconfirmed {
        assert!(!store.is_evicted(&inst.sop_uid).unwrap());
        assert!(stored_dataset(&store, &inst.sop_uid).is_some());
    }
    assert_eq!(study_availability(&store, &old[0].study_uid), "NEARLINE");
    assert_eq!(
        study_availability(&store, &unconfirmed[0].study_uid),
        "ONLINE"
    );
    let usage = store.usage().unwrap();
    assert!(usage.percent() <= 50.0, "{usage:?}");

    // The files go once the marks are durable (at the checkpoint); verify is content.
    store.close().await.unwrap();
    drop(store);
    let (store, _) = Store::open(cached(dir.path())).unwrap();
    assert!(stored_dataset(&store, &old[0].sop_uid).is_none());
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Recalled from upstream (which never queues it again), the file takes its place.
    assert_eq!(put(&store, &old[0], "UPSTREAM").await, Outcome::Stored);
    assert!(!store.is_evicted(&old[0].sop_uid).unwrap());
    assert_eq!(
        stored_dataset(&store, &old[0].sop_uid).unwrap(),
        old[0].dataset(dataset::Encoding::EXPLICIT_LE)
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_archive_of_unconfirmed_instances_refuses_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cached(dir.path());
    c.min_free_bytes = 200_000;
    let (store, _) = Store::open(c).unwrap();
    let mut stored = 0;
    for inst in series(1, 30) {
        let mut req = request(&inst);
        req.source_ae = "CT1".into();
        match store_bytes(
            &store,
            req,
            &inst.dataset(dataset::Encoding::EXPLICIT_LE),
            64 * 1024,
        )
        .await
        {
            Ok(_) => stored += 1,
            Err(e) => {
                assert!(matches!(e, store::IngestError::OutOfSpace { .. }), "{e}");
                break;
            }
        }
    }
    // 2,000,000 bytes of room, a 200,000-byte floor, instances of about 100,000 bytes.
    assert!((15..=19).contains(&stored), "stored {stored}");
    let report = store.maintain_cache().await.unwrap().unwrap();
    assert_eq!(report.instances, 0, "nothing confirmed, nothing evicted");
    store.close().await.unwrap();
}

/// Routes every instance to two destinations.
#[derive(Debug)]
struct ToBoth;

impl store::Router for ToBoth {
    fn destinations(&self) -> Vec<String> {
        vec!["central".into(), "old".into()]
    }
    fn route(&self, _source_ae: &str, _instance: &store::record::Extracted) -> Vec<store::Route> {
        ["central", "old"]
            .iter()
            .map(|d| store::Route {
                destination: d.to_string(),
                rank: 2,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_waiting_on_a_destination_that_never_confirms_are_counted_and_released() {
    // A site renamed its second archive "old" to "backup" in the configuration (or "old"
    // dead-lettered the instances). Every instance routed to "old" kept waiting for its
    // confirmation, which no worker would ever bring, so none of them was ever evicted and
    // the disk filled up to the floor with nothing in the status saying why. Now the store
    // counts them per destination (instances, bytes, and those routed nowhere else), and a
    // person can release the destination's claim so eviction waits only for the others.
    let dir = tempfile::tempdir().unwrap();
    let mut c = cached(dir.path());
    c.router = Some(Arc::new(ToBoth));
    let (store, _) = Store::open(c).unwrap();
    let all = series(1, 18);
    for inst in &all {
        put(&store, inst, "CT1").await;
    }
    confirm(&store, &all).await;
    // "old" dead-letters two of them.
    let dead: Vec<QueueOp> = store
        .outbox_peek("old", 2, &HashSet::new(), u64::MAX, usize::MAX)
        .unwrap()
        .ready
        .into_iter()
        .map(|q| QueueOp::Dead {
            destination: "old".into(),
            key: q.key,
            reason: "refused".into(),
        })
        .collect();
    store.outbox_apply(dead).await.unwrap();
    let report = store.maintain_cache().await.unwrap().unwrap();
    assert_eq!(
        report.instances, 0,
        "nothing is confirmed by old: {report:?}"
    );

    let configured = ["central".to_string(), "old".to_string()];
    let claims = store.stalled_claims(&configured).unwrap();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(
        (claims[0].destination.as_str(), claims[0].configured),
        ("old", true)
    );
    assert_eq!((claims[0].instances, claims[0].sole), (2, 0), "{claims:?}");
    assert!(claims[0].bytes > 2 * SIZE as u64, "{claims:?}");

    // Renamed away: every unconfirmed instance waits on it.
    let configured = ["central".to_string()];
    let claims = store.stalled_claims(&configured).unwrap();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert!(!claims[0].configured);
    assert_eq!(claims[0].instances, 18, "{claims:?}");
    assert!(claims[0].bytes > 18 * SIZE as u64, "{claims:?}");

    let released = store.release_claim("old", &configured).await.unwrap();
    assert_eq!(released.instances, 18);
    for _ in 0..100 {
        if store.stalled_claims(&configured).unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(store.stalled_claims(&configured).unwrap().is_empty());
    let report = store.maintain_cache().await.unwrap().unwrap();
    assert!(
        report.instances > 0,
        "central's copies now suffice: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_the_only_destination_of_an_instance_keeps_it_local() {
    // Releasing a claim never evicts the only copy: an instance routed to no other
    // destination has no upstream copy, so it stays, and the answer says how many.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(cached(dir.path())).unwrap();
    let all = series(1, 18);
    for inst in &all {
        put(&store, inst, "CT1").await;
    }
    let released = store.release_claim("central", &[]).await.unwrap();
    assert_eq!(
        (released.instances, released.sole),
        (18, 18),
        "{released:?}"
    );
    for _ in 0..100 {
        if store.stalled_claims(&[]).unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(store.stalled_claims(&[]).unwrap().is_empty());
    let report = store.maintain_cache().await.unwrap().unwrap();
    assert_eq!(report.instances, 0, "{report:?}");
}
