//! Start-up repair after a crash between the steps of a commit, with the real file system.
//!
//! The crash states are made by hand: the commit order promises that any final file without
//! an index entry still has its temporary name, and these tests build exactly those states.

use std::path::Path;

use dataset::Encoding;
use dataset::synth::SynthInstance;
use dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
use store::Store;
use store::layout::{FileId, Layout};

use crate::support::{config, store_instance, stored_dataset};

fn write_tmp(layout: &Layout, inst: &SynthInstance, id: &FileId) {
    std::fs::write(
        layout.tmp_path(id),
        inst.part10(EXPLICIT_VR_LITTLE_ENDIAN, Encoding::EXPLICIT_LE),
    )
    .unwrap();
}

fn link_final(layout: &Layout, id: &FileId) {
    let target = layout.absolute(&layout.object_rel(id));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::hard_link(layout.tmp_path(id), target).unwrap();
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
    // 1. Still being received: only a (partial) temporary file.
    let receiving = FileId::new(now);
    std::fs::write(layout.tmp_path(&receiving), b"partial").unwrap();
    // 2. Linked but not yet indexed.
    let linked = SynthInstance::ct(1, 1, 1, 2);
    let linked_id = FileId::new(now);
    write_tmp(&layout, &linked, &linked_id);
    link_final(&layout, &linked_id);
    // 3. A duplicate of an indexed instance, linked but not indexed: keep-first removes it.
    let dup = SynthInstance::ct(1, 1, 1, 1);
    let dup_id = FileId::new(now);
    write_tmp(&layout, &dup, &dup_id);
    link_final(&layout, &dup_id);
    // 4. Something that is not ours.
    std::fs::write(dir.path().join("tmp/stray.txt"), b"?").unwrap();

    let (store, opened) = Store::open(config(dir.path())).unwrap();
    let r = opened.reconciled;
    assert_eq!(
        (
            r.incomplete_removed,
            r.finished_indexed,
            r.finished_discarded
        ),
        (1, 1, 1)
    );
    assert!(tmp_is_empty(dir.path()));
    assert_eq!(store.instance_count().unwrap(), 2);
    assert_eq!(
        stored_dataset(&store, &linked.sop_uid).unwrap(),
        linked.dataset(Encoding::EXPLICIT_LE)
    );
    assert!(!layout.absolute(&layout.object_rel(&dup_id)).exists());
    let report = store.verify(|_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
