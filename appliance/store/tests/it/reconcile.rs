//! Start-up repair after a crash between the steps of a commit, with the real file system.
//!
//! The crash states are made by hand: the commit order promises that any acknowledged instance
//! whose final name or index entry is not yet durable still has its `.ready` name, and these
//! tests build exactly those states, plus the ones that must be discarded.

use std::path::Path;

use dataset::Encoding;
use dataset::synth::SynthInstance;
use dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
use store::Store;
use store::layout::{FileId, Layout};

use crate::support::{config, store_instance, stored_dataset};

/// Writes an instance as a received `.ready` file (or a damaged one, whose name promises
/// another CRC), as the ingest path leaves it before its checkpoint.
pub(crate) fn write_ready(
    layout: &Layout,
    inst: &SynthInstance,
    id: &FileId,
    damaged: bool,
) -> std::path::PathBuf {
    let bytes = inst.part10(EXPLICIT_VR_LITTLE_ENDIAN, Encoding::EXPLICIT_LE);
    let crc = crc32c::crc32c(&bytes) ^ u32::from(damaged);
    let path = layout.ready_path(id, crc, bytes.len() as u64);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn link_final(layout: &Layout, ready: &Path, id: &FileId) {
    let target = layout.absolute(&layout.object_rel(id));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::hard_link(ready, target).unwrap();
}

fn tmp_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("tmp")).unwrap().next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_files_are_finished_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    {
        let (store, _) = Store::open(config(dir.path())).unwrap();
        store_instance(&store, &SynthInstance::ct(1, 1, 1, 1)).await;
        store.close().await.unwrap();
    }
    let now = std::time::SystemTime::now();
    // 1. Still being received: only a (partial) `.part` file.
    let receiving = FileId::new(now);
    std::fs::write(layout.tmp_path(&receiving), b"partial").unwrap();
    // 2. Received and linked, but the index entry was not yet checkpointed.
    let linked = SynthInstance::ct(1, 1, 1, 2);
    let linked_id = FileId::new(now);
    let ready = write_ready(&layout, &linked, &linked_id, false);
    link_final(&layout, &ready, &linked_id);
    // 3. Received; neither its final name nor its index entry survived.
    let unlinked = SynthInstance::ct(1, 1, 1, 3);
    let unlinked_id = FileId::new(now);
    write_ready(&layout, &unlinked, &unlinked_id, false);
    // 4. A duplicate of an indexed instance: keep-first removes it.
    let dup = SynthInstance::ct(1, 1, 1, 1);
    let dup_id = FileId::new(now);
    let ready = write_ready(&layout, &dup, &dup_id, false);
    link_final(&layout, &ready, &dup_id);
    // 5. A name that outlived its data (the CRC it promises does not match).
    let damaged = SynthInstance::ct(1, 1, 1, 4);
    let damaged_id = FileId::new(now);
    write_ready(&layout, &damaged, &damaged_id, true);
    // 6. Something that is not ours.
    std::fs::write(dir.path().join("tmp/stray.txt"), b"?").unwrap();

    let (store, opened) = Store::open(config(dir.path())).unwrap();
    let r = opened.reconciled;
    assert_eq!(
        (
            r.incomplete_removed,
            r.finished_indexed,
            r.finished_discarded
        ),
        (1, 2, 2),
        "{r:?}"
    );
    assert!(tmp_is_empty(dir.path()));
    assert_eq!(store.instance_count().unwrap(), 3);
    for inst in [&linked, &unlinked] {
        assert_eq!(
            stored_dataset(&store, &inst.sop_uid).unwrap(),
            inst.dataset(Encoding::EXPLICIT_LE)
        );
    }
    assert!(stored_dataset(&store, &damaged.sop_uid).is_none());
    assert!(!layout.absolute(&layout.object_rel(&dup_id)).exists());
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
