//! Rollback-safe index versions: a build opens an index whose `min_reader_version` it meets,
//! refuses one it does not (naming both numbers and the fix), opens an index from before the
//! rules, and rebuilds derived counts when another build wrote last.

use dataset::synth::SynthInstance;
use redb::{ReadableDatabase, TableDefinition};
use store::{Store, StoreError, index};

use crate::support::{config, store_instance};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EVICTED_COUNT: TableDefinition<&str, u64> = TableDefinition::new("evicted_count");

/// Makes an index with one instance under this build's rules, and closes it.
async fn make_index(dir: &std::path::Path) {
    let (store, _) = Store::open(config(dir)).unwrap();
    store_instance(&store, &SynthInstance::ct(1, 1, 1, 1)).await;
    store.close().await.unwrap();
}

fn meta_u32(dir: &std::path::Path, key: &str) -> Option<u32> {
    let db = redb::Database::open(dir.join("index.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(key)
        .unwrap()
        .map(|v| u32::from_le_bytes(v.value().try_into().unwrap()))
}

/// Sets (`Some`) or removes (`None`) meta keys directly, as another build would have left them.
fn set_meta(dir: &std::path::Path, values: &[(&str, Option<u32>)]) {
    let db = redb::Database::open(dir.join("index.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        for (key, value) in values {
            match value {
                Some(v) => meta.insert(*key, v.to_le_bytes().as_slice()).unwrap(),
                None => meta.remove(*key).unwrap(),
            };
        }
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn this_build_writes_schema_1_readable_by_1() {
    let dir = tempfile::tempdir().unwrap();
    make_index(dir.path()).await;
    assert_eq!(meta_u32(dir.path(), index::META_SCHEMA_VERSION), Some(1));
    assert_eq!(
        meta_u32(dir.path(), index::META_MIN_READER_VERSION),
        Some(1)
    );
    assert_eq!(
        meta_u32(dir.path(), index::META_LAST_WRITER_VERSION),
        Some(1)
    );
}

/// The A/B rollback story: image 2 adds a table (schema 2) but keeps what image 1 reads, so
/// it writes min_reader_version 1. The update is rolled back; image 1 must open the index
/// and leave the newer claim in place for when image 2 boots again.
#[tokio::test]
async fn a_previous_release_opens_an_index_a_newer_one_left_readable() {
    let dir = tempfile::tempdir().unwrap();
    make_index(dir.path()).await;
    // The newer release opens (and writes) the index.
    let mut newer = config(dir.path());
    newer.reader_version = 2;
    let (store, _) = Store::open(newer).unwrap();
    store.close().await.unwrap();
    drop(store);
    assert_eq!(meta_u32(dir.path(), index::META_SCHEMA_VERSION), Some(2));
    assert_eq!(
        meta_u32(dir.path(), index::META_MIN_READER_VERSION),
        Some(1)
    );

    // Rolled back: the previous release's rules (reader version 1) still open it.
    let mut previous = config(dir.path());
    previous.reader_version = 1;
    let (store, _) = Store::open(previous).unwrap();
    assert_eq!(store.instance_count().unwrap(), 1);
    store.close().await.unwrap();
    drop(store);
    assert_eq!(meta_u32(dir.path(), index::META_SCHEMA_VERSION), Some(2));
    assert_eq!(
        meta_u32(dir.path(), index::META_LAST_WRITER_VERSION),
        Some(1)
    );
}

/// A newer release changed the layout in a way this build would misread (min_reader 2):
/// refused, with a typed error naming both numbers; the index is left untouched.
#[tokio::test]
async fn an_index_older_builds_cannot_read_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    make_index(dir.path()).await;
    set_meta(
        dir.path(),
        &[
            (index::META_SCHEMA_VERSION, Some(3)),
            (index::META_MIN_READER_VERSION, Some(2)),
        ],
    );
    let mut previous = config(dir.path());
    previous.reader_version = 1;
    let err = Store::open(previous).err().expect("must refuse");
    match &err {
        StoreError::Schema {
            written,
            min_reader,
            reader,
        } => assert_eq!((*written, *min_reader, *reader), (3, 2, 1)),
        other => panic!("wrong error: {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("newer Outpost"), "{text}");
    assert!(text.contains("boot the newer image"), "{text}");
    assert_eq!(
        meta_u32(dir.path(), index::META_MIN_READER_VERSION),
        Some(2)
    );

    // A build that meets min_reader_version 2 opens it.
    let mut newer = config(dir.path());
    newer.reader_version = 2;
    let (store, _) = Store::open(newer).unwrap();
    store.close().await.unwrap();
}

/// Regression: an index written before the version rules has only `schema_version = 1`. This
/// build must open it (not take the missing keys for a newer layout) and record the rules.
#[tokio::test]
async fn an_index_from_before_min_reader_version_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    make_index(dir.path()).await;
    set_meta(
        dir.path(),
        &[
            (index::META_MIN_READER_VERSION, None),
            (index::META_LAST_WRITER_VERSION, None),
        ],
    );
    let (store, _) = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.instance_count().unwrap(), 1);
    store.close().await.unwrap();
    drop(store);
    assert_eq!(
        meta_u32(dir.path(), index::META_MIN_READER_VERSION),
        Some(1)
    );
    assert_eq!(
        meta_u32(dir.path(), index::META_LAST_WRITER_VERSION),
        Some(1)
    );
}

/// Derived counts are rebuilt when another build wrote last: a stray count another build
/// left (here planted by hand) is gone after this build opens the index. When this build
/// itself wrote last, they are trusted as they are.
#[tokio::test]
async fn derived_counts_are_rebuilt_when_another_build_wrote_last() {
    let dir = tempfile::tempdir().unwrap();
    make_index(dir.path()).await;
    let plant = |dir: &std::path::Path| {
        let db = redb::Database::open(dir.join("index.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(EVICTED_COUNT)
            .unwrap()
            .insert("study/1.2.3.stray", 7)
            .unwrap();
        txn.commit().unwrap();
    };
    let stray = |dir: &std::path::Path| {
        let db = redb::Database::open(dir.join("index.redb")).unwrap();
        let txn = db.begin_read().unwrap();
        let counts = txn.open_table(EVICTED_COUNT).unwrap();
        counts.get("study/1.2.3.stray").unwrap().map(|v| v.value())
    };

    // Same writer: kept (proves the rebuild is what removes it below).
    plant(dir.path());
    let (store, _) = Store::open(config(dir.path())).unwrap();
    store.close().await.unwrap();
    drop(store);
    assert_eq!(stray(dir.path()), Some(7));

    // Another build wrote last: rebuilt from `evicted` (empty), so the stray count goes.
    set_meta(dir.path(), &[(index::META_LAST_WRITER_VERSION, Some(2))]);
    let (store, _) = Store::open(config(dir.path())).unwrap();
    store.close().await.unwrap();
    drop(store);
    assert_eq!(stray(dir.path()), None);
    assert_eq!(
        meta_u32(dir.path(), index::META_LAST_WRITER_VERSION),
        Some(1)
    );
}
