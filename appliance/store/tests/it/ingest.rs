//! Storing instances: what is acknowledged can be read back byte for byte, duplicates follow
//! the policy, and refused instances leave nothing behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dataset::Encoding;
use dataset::synth::SynthInstance;
use store::{DuplicatePolicy, IngestError, Outcome, Store};

use crate::support::{config, request, store_bytes, store_instance, stored_dataset};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_instances_read_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (store, opened) = Store::open(config(dir.path())).unwrap();
    assert_eq!(opened.instances, 0);
    let mut big = SynthInstance::ct(1, 1, 1, 1);
    // Larger than a write chunk, so writes overlap with receiving.
    big.pixel_bytes = 3 * 1024 * 1024 + 17;
    let small = SynthInstance::ct(1, 1, 1, 2);
    for inst in [&big, &small] {
        let bytes = inst.dataset(Encoding::EXPLICIT_LE);
        for chunk in [1000, 16 * 1024] {
            let outcome = store_bytes(&store, request(inst), &bytes, chunk)
                .await
                .unwrap();
            let expected = if chunk == 1000 {
                Outcome::Stored
            } else {
                Outcome::Duplicate
            };
            assert_eq!(outcome, expected);
        }
        assert_eq!(stored_dataset(&store, &inst.sop_uid).unwrap(), bytes);
    }
    let stats = store.stats();
    assert_eq!((stats.stored, stats.duplicates), (2, 2));
    assert!(stats.file_syncs >= 2);
    store.close().await.unwrap();
    drop(store);
    let report = {
        let (store, opened) = Store::open(config(dir.path())).unwrap();
        assert_eq!(opened.instances, 2);
        store.verify(|_| {}).unwrap()
    };
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.instances, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.duplicates = DuplicatePolicy::Overwrite;
    let (store, _) = Store::open(c).unwrap();
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    assert_eq!(store_instance(&store, &inst).await, Outcome::Stored);
    inst.seed += 1;
    assert_eq!(store_instance(&store, &inst).await, Outcome::Overwritten);
    assert_eq!(
        stored_dataset(&store, &inst.sop_uid).unwrap(),
        inst.dataset(Encoding::EXPLICIT_LE)
    );
    assert_eq!(store.instance_count().unwrap(), 1);
    let report = store.verify(|_| {}).unwrap();
    assert!(
        report.problems.is_empty(),
        "the replaced file is gone: {:?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let bytes = inst.dataset(Encoding::EXPLICIT_LE);

    // Truncated in the middle of the pixel data.
    let r = store_bytes(&store, request(&inst), &bytes[..bytes.len() - 10], 100).await;
    assert!(matches!(r, Err(IngestError::Unparseable(_))), "{r:?}");
    // Garbage.
    let r = store_bytes(&store, request(&inst), b"this is not a data set at all!", 7).await;
    assert!(matches!(r, Err(IngestError::Unparseable(_))), "{r:?}");
    // The command names another instance than the data set.
    let mut req = request(&inst);
    req.sop_instance_uid = "1.2.3.999".into();
    let r = store_bytes(&store, req, &bytes, 4096).await;
    assert!(
        matches!(r, Err(IngestError::InstanceMismatch { .. })),
        "{r:?}"
    );
    // No Study Instance UID.
    let mut no_study = inst.clone();
    no_study.study_uid = String::new();
    let r = store_bytes(
        &store,
        request(&no_study),
        &no_study.dataset(Encoding::EXPLICIT_LE),
        4096,
    )
    .await;
    assert!(matches!(r, Err(IngestError::Unindexable(_))), "{r:?}");

    assert_eq!(store.instance_count().unwrap(), 0);
    // Removal of temporary files is part of finishing, so the directory is empty now.
    let tmp = crate::tmp_files(dir.path());
    assert!(tmp.is_empty(), "{tmp:?}");
    assert_eq!(store.stats().refused, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.min_free_bytes = u64::MAX;
    let (store, _) = Store::open(c).unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let r = store.begin(request(&inst)).await;
    assert!(matches!(r, Err(IngestError::OutOfSpace { .. })));
    let tmp = crate::tmp_files(dir.path());
    assert!(tmp.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_counts_against_the_free_space_floor() {
    // The audit trail sits on the data volume beside the archive. With a capacity set, the
    // floor counted only the instance files, so a trail grown by a looping peer could eat
    // the room the floor was meant to keep free. Its writer's running total now counts.
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(AtomicU64::new(0));
    let mut c = config(dir.path());
    c.min_free_bytes = 1_000_000;
    c.cache = Some(store::CacheConfig {
        high_watermark: 90,
        low_watermark: 80,
        capacity_bytes: Some(10_000_000),
        protect_recent_s: 0,
    });
    c.other_bytes = Some(audit.clone());
    let (store, _) = Store::open(c).unwrap();
    let first = SynthInstance::ct(1, 1, 1, 1);
    assert_eq!(store_instance(&store, &first).await, Outcome::Stored);
    audit.store(9_500_000, Ordering::Relaxed);
    let second = SynthInstance::ct(1, 1, 1, 2);
    match store.begin(request(&second)).await {
        Err(IngestError::OutOfSpace { available, floor }) => {
            assert!(available < 500_000, "{available}");
            assert_eq!(floor, 1_000_000);
        }
        other => panic!("expected OutOfSpace, got {:?}", other.map(|_| ())),
    }
    assert!(store.usage().unwrap().used_bytes >= 9_500_000);
    // The trail shrinks (retention): instances are taken again.
    audit.store(1_000, Ordering::Relaxed);
    assert_eq!(store_instance(&store, &second).await, Outcome::Stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_archive_refuses_new_instances_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let first = SynthInstance::ct(1, 1, 1, 1);
    assert_eq!(store_instance(&store, &first).await, Outcome::Stored);
    // An instance already being received when the hold comes finishes.
    let second = SynthInstance::ct(1, 1, 1, 2);
    let mut running = store.begin(request(&second)).await.unwrap();
    store.hold_ingest(Some("RAID md0 failed".into()));
    running.write(second.dataset(Encoding::EXPLICIT_LE)).await;
    assert_eq!(running.finish().await.unwrap().outcome, Outcome::Stored);
    // A new one is refused with the reason, and nothing of it is written.
    let third = SynthInstance::ct(1, 1, 1, 3);
    let e = store.begin(request(&third)).await.err().expect("held");
    assert!(matches!(e, IngestError::Held(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "the archive is not accepting instances: RAID md0 failed"
    );
    assert_eq!(store.ingest_held().as_deref(), Some("RAID md0 failed"));
    assert_eq!(store.instance_count().unwrap(), 2);
    // An early checkpoint (on battery) makes what was acknowledged durable now.
    store.checkpoint().await.unwrap();
    store.hold_ingest(None);
    assert_eq!(store_instance(&store, &third).await, Outcome::Stored);
    assert_eq!(store.instance_count().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_the_same_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _) = Store::open(config(dir.path())).unwrap();
    match Store::open(config(dir.path())) {
        Err(store::StoreError::Locked(_)) => {}
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingest_shares_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(config(dir.path())).unwrap();
    let mut tasks = Vec::new();
    for a in 0..4u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                store_instance(&store, &SynthInstance::ct(a, 1, 1, i)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = store.stats();
    assert_eq!(s.stored, 100);
    assert!(s.batches <= 100);
    assert!(s.flushes_per_instance() > 0.0);
}

/// Files made ahead for the next instances (`tmp/<id>.spare`) are used, left by nobody: a
/// clean close removes them, and start-up removes those a crash left, without counting them
/// as incomplete instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_files_made_ahead_are_used_and_never_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let spares = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("tmp"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "spare")
            })
            .count()
    };
    let (store, _) = Store::open(config(dir.path())).unwrap();
    for n in 1..=5 {
        let inst = SynthInstance::ct(1, 1, 1, n);
        assert_eq!(store_instance(&store, &inst).await, Outcome::Stored);
    }
    // The first instance made the pool; later ones took from it and it was refilled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while spares(dir.path()) == 0 {
        assert!(std::time::Instant::now() < deadline, "no spare was made");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(store.instance_count().unwrap(), 5);
    store.close().await.unwrap();
    drop(store);
    assert_eq!(spares(dir.path()), 0, "a clean close leaves no spare");

    // What a crash leaves: a spare never written.
    std::fs::write(
        dir.path().join("tmp/2026120307-00000000000000aa.spare"),
        b"",
    )
    .unwrap();
    let (store, opened) = Store::open(config(dir.path())).unwrap();
    assert_eq!(opened.reconciled.incomplete_removed, 0);
    assert_eq!(store.instance_count().unwrap(), 5);
    assert!(
        !dir.path()
            .join("tmp/2026120307-00000000000000aa.spare")
            .exists()
    );
    store.close().await.unwrap();
}
