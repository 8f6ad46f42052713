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
use store::fs::Fs;
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
    // Written before anything else is received: the lowest sequence number.
    let path = layout.ready_path(id, 0, crc, bytes.len() as u64);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn link_final(layout: &Layout, ready: &Path, id: &FileId) {
    let target = layout.absolute(&layout.object_rel(id));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::hard_link(ready, target).unwrap();
}

fn tmp_is_empty(dir: &Path) -> bool {
    crate::tmp_files(dir).is_empty()
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

/// Opens a store over the power-cut backends, with full durability.
fn open_mem(
    fs: &store::crash::MemFs,
    backend: &store::crash::MemBackend,
    duplicates: store::DuplicatePolicy,
) -> (Store, store::Opened) {
    let mut c = store::StoreConfig::new("/data");
    c.min_free_bytes = 0;
    c.index_cache_bytes = 1024 * 1024;
    c.duplicates = duplicates;
    Store::open_with(
        c,
        std::sync::Arc::new(fs.clone()),
        store::IndexBackend::custom(backend.clone()),
    )
    .expect("the store opens")
}

/// The `.ready` names in `/data/tmp`, sorted.
fn ready_names(fs: &store::crash::MemFs) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list_dir(Path::new("/data/tmp"))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".ready"))
        .collect();
    names.sort();
    names
}

/// The disk after a power cut that left one acknowledged instance with its `.ready` name:
/// right after the acknowledgement (only the `.ready` file is durable) or, `checkpointed`,
/// after the checkpoint's durable commit but before it removed the `.ready` name (the index
/// names the final file too). Returns the backends, the `.ready` path and the final path.
async fn crash_state(
    inst: &SynthInstance,
    checkpointed: bool,
    duplicates: store::DuplicatePolicy,
) -> (
    store::crash::MemFs,
    store::crash::MemBackend,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    use store::crash::{MemBackend, MemFs, Power};
    let power = Power::steady();
    let (fs, backend) = (MemFs::new(power.clone()), MemBackend::new(power.clone()));
    let (store, _) = open_mem(&fs, &backend, duplicates);
    crate::support::store_instance(&store, inst).await;
    let ready = ready_names(&fs);
    assert_eq!(ready.len(), 1, "one instance waits for its checkpoint");
    let ready = Path::new("/data/tmp").join(&ready[0]);
    let name = ready.file_name().unwrap().to_str().unwrap();
    let id = store::layout::TmpName::parse(name).unwrap().id().clone();
    let target = Layout::new("/data").absolute(&Layout::new("/data").object_rel(&id));
    let (fs, backend) = if checkpointed {
        assert_eq!(
            crate::support::stored_file(&store, &inst.sop_uid).map(|f| Path::new("/data").join(f)),
            Some(target.clone())
        );
        store.close().await.unwrap();
        // The checkpoint is durable; put back the name it then removed.
        fs.hard_link(&target, &ready).unwrap();
        fs.sync_dir(Path::new("/data/tmp")).unwrap();
        (
            fs.after_power_cut(Power::steady()),
            backend.after_power_cut(Power::steady()),
        )
    } else {
        // The disk as a power cut right after the acknowledgement leaves it.
        let after = (
            fs.after_power_cut(Power::steady()),
            backend.after_power_cut(Power::steady()),
        );
        power.cut();
        after
    };
    drop(store);
    (fs, backend, ready, target)
}

// Review finding 5 (B.8). Start-up repair removed a `.ready` file, and its final file, on any
// error reading it, as if its data had not survived the power cut. But the `.ready` name
// exists exactly for acknowledged instances whose final name or index entry may not be
// durable yet, and a power cut followed by a marginal disk (EIO), a permission change
// (EACCES) or too many open files (EMFILE) is when reads fail: the only copy of an
// acknowledged study was deleted during repair, and the index could be left naming a file
// that no longer existed. Only a complete read showing another CRC or size proves the data
// gone; an unreadable file must be kept, reported, and tried again at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ready_file_is_kept_reported_and_filed_at_the_next_start() {
    use store::crash::Fault;
    const EIO: i32 = 5;
    const EACCES: i32 = 13;
    const EMFILE: i32 = 24;
    let inst = SynthInstance::ct(7, 1, 1, 1);
    let bytes = inst.dataset(Encoding::EXPLICIT_LE);
    for errno in [EIO, EACCES, EMFILE] {
        for fault in [Fault::Open(errno), Fault::Read { after: 300, errno }] {
            // Two crash states: the power failed right after the acknowledgement (only the
            // `.ready` file is durable), or after the checkpoint's durable commit but before
            // it removed the `.ready` name (the index names the final file too).
            for checkpointed in [false, true] {
                let case = format!("{fault:?}, checkpointed: {checkpointed}");
                let (fs, backend, ready, _) =
                    crash_state(&inst, checkpointed, store::DuplicatePolicy::KeepFirst).await;
                assert!(fs.exists(&ready), "{case}: the `.ready` name is durable");

                fs.inject(&ready, fault);
                let (store, opened) = open_mem(&fs, &backend, store::DuplicatePolicy::KeepFirst);
                assert_alerted(
                    &opened.reconciled,
                    store::RepairStep::ReadReceived,
                    &ready,
                    Some(errno),
                    &case,
                );
                assert_eq!(opened.reconciled.finished_discarded, 0, "{case}");
                assert!(
                    fs.exists(&ready),
                    "{case}: an unreadable `.ready` file must be kept"
                );
                if checkpointed {
                    assert_eq!(
                        stored_dataset(&store, &inst.sop_uid).as_ref(),
                        Some(&bytes),
                        "{case}: the indexed file must be left alone"
                    );
                }
                store.close().await.unwrap();
                drop(store);

                // The disk answers again: the next start files it.
                fs.heal();
                let (store, opened) = open_mem(&fs, &backend, store::DuplicatePolicy::KeepFirst);
                assert!(opened.reconciled.alerts.is_empty(), "{case}");
                assert_eq!(
                    stored_dataset(&store, &inst.sop_uid).as_ref(),
                    Some(&bytes),
                    "{case}: the acknowledged instance must come back"
                );
                assert!(ready_names(&fs).is_empty(), "{case}");
                assert!(store.verify(|_| {}).unwrap().problems.is_empty(), "{case}");
                store.close().await.unwrap();
            }
        }
    }
}

/// Checks that repair raised exactly one alert, for this step, file and errno.
fn assert_alerted(
    r: &store::Reconciled,
    step: store::RepairStep,
    file: &Path,
    errno: Option<i32>,
    case: &str,
) {
    assert_eq!(r.alerts.len(), 1, "{case}: {r:?}");
    let a = &r.alerts[0];
    assert_eq!(
        (a.step, a.file.as_path(), a.errno),
        (step, file, errno),
        "{case}"
    );
    // What a person reads names the file and says what to do.
    let text = a.to_string();
    assert!(text.contains(&file.display().to_string()), "{case}: {text}");
    assert!(text.contains("kept"), "{case}: {text}");
}

/// Where start-up repair meets an I/O error after the power cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failing {
    /// Linking a received file to its missing final name.
    LinkFinal,
    /// The same, when the index already names that final file (an index entry without file).
    LinkIndexedWithoutFile,
    /// Syncing the final directory before the durable commit.
    SyncFinalDir,
    /// Removing the `.ready` name once it is filed.
    RemoveReady,
    /// Listing `tmp/` at all.
    ListTmp,
}

// Review finding B.8, the rest. After the unreadable `.ready` file was kept, every other step
// of start-up repair still turned an I/O error into a failed start or a deletion: EIO, EACCES
// or EMFILE while linking a received instance to its final name, syncing its directory,
// removing its `.ready` name, listing `tmp/`, or deleting a file an overwrite replaced made
// `Store::open` fail, so `outpost serve` stopped and systemd restarted it into the same
// error, leaving the appliance down with acknowledged instances out of the index; and a
// received file whose CRC matched but that could not be parsed was deleted, although nothing
// showed its data lost. Now repair keeps every file it could not finish, raises a critical
// alert naming the file, the step and the errno, and goes on; the next start finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_keeps_what_an_io_error_interrupts_raises_an_alert_and_goes_on() {
    use store::crash::Fault;
    const EIO: i32 = 5;
    const EACCES: i32 = 13;
    const EMFILE: i32 = 24;
    let inst = SynthInstance::ct(8, 1, 1, 1);
    let bytes = inst.dataset(Encoding::EXPLICIT_LE);
    for errno in [EIO, EACCES, EMFILE] {
        for failing in [
            Failing::LinkFinal,
            Failing::LinkIndexedWithoutFile,
            Failing::SyncFinalDir,
            Failing::RemoveReady,
            Failing::ListTmp,
        ] {
            let case = format!("{failing:?}, errno {errno}");
            let checkpointed = failing == Failing::LinkIndexedWithoutFile;
            let (fs, backend, ready, target) =
                crash_state(&inst, checkpointed, store::DuplicatePolicy::KeepFirst).await;
            if checkpointed {
                // The index names the final file, but the disk lost its name.
                fs.remove_file(&target).unwrap();
                fs.sync_dir(target.parent().unwrap()).unwrap();
            }
            let (path, fault) = match failing {
                Failing::LinkFinal | Failing::LinkIndexedWithoutFile => {
                    (target.clone(), Fault::Link(errno))
                }
                Failing::SyncFinalDir => (
                    target.parent().unwrap().to_path_buf(),
                    Fault::SyncDir(errno),
                ),
                Failing::RemoveReady => (ready.clone(), Fault::Remove(errno)),
                Failing::ListTmp => (Path::new("/data/tmp").to_path_buf(), Fault::List(errno)),
            };
            fs.inject(&path, fault);
            let (store, opened) = open_mem(&fs, &backend, store::DuplicatePolicy::KeepFirst);
            let step = match failing {
                Failing::LinkFinal | Failing::LinkIndexedWithoutFile => {
                    store::RepairStep::LinkFinal
                }
                Failing::SyncFinalDir => store::RepairStep::SyncDirectory,
                Failing::RemoveReady => store::RepairStep::RemoveReceived,
                Failing::ListTmp => store::RepairStep::ListTemporary,
            };
            assert_alerted(&opened.reconciled, step, &path, Some(errno), &case);
            assert!(
                fs.exists(&ready),
                "{case}: the `.ready` name must outlive an interrupted repair"
            );
            if failing == Failing::RemoveReady {
                assert_eq!(
                    stored_dataset(&store, &inst.sop_uid).as_ref(),
                    Some(&bytes),
                    "{case}: filed before the removal failed"
                );
            }
            assert_eq!(opened.reconciled.finished_discarded, 0, "{case}");
            store.close().await.unwrap();
            drop(store);

            fs.heal();
            let (store, opened) = open_mem(&fs, &backend, store::DuplicatePolicy::KeepFirst);
            assert!(opened.reconciled.alerts.is_empty(), "{case}");
            assert_eq!(
                stored_dataset(&store, &inst.sop_uid).as_ref(),
                Some(&bytes),
                "{case}: the acknowledged instance must come back: {:?}",
                opened.reconciled
            );
            assert!(ready_names(&fs).is_empty(), "{case}");
            let problems = store.verify(|_| {}).unwrap().problems;
            assert!(problems.is_empty(), "{case}: {problems:?}");
            store.close().await.unwrap();
        }
    }
}

// The same finding, for the files an overwrite replaced: a checkpoint made the replacement
// durable and deleted the old file, but the power failed before the deletion reached the
// disk, so repair deletes it again from `pending_deletes`. An error there stopped the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_file_repair_cannot_delete_is_kept_listed_and_deleted_later() {
    use store::crash::{Fault, MemBackend, MemFs, Power};
    for errno in [5, 13, 24] {
        let v1 = SynthInstance::ct(8, 2, 1, 1);
        let mut v2 = v1.clone();
        v2.study_description = b"CT CHEST CORRECTED".to_vec();
        let power = Power::steady();
        let (fs, backend) = (MemFs::new(power.clone()), MemBackend::new(power.clone()));
        let (store, _) = open_mem(&fs, &backend, store::DuplicatePolicy::Overwrite);
        crate::support::store_instance(&store, &v1).await;
        store.checkpoint().await.unwrap();
        let old =
            Path::new("/data").join(crate::support::stored_file(&store, &v1.sop_uid).unwrap());
        crate::support::store_instance(&store, &v2).await;
        store.checkpoint().await.unwrap();
        let (fs, backend) = (
            fs.after_power_cut(Power::steady()),
            backend.after_power_cut(Power::steady()),
        );
        power.cut();
        let _ = store.close().await;
        drop(store);
        assert!(
            fs.exists(&old),
            "the deletion of the replaced file was not durable"
        );

        fs.inject(&old, Fault::Remove(errno));
        let (store, opened) = open_mem(&fs, &backend, store::DuplicatePolicy::Overwrite);
        let case = format!("errno {errno}");
        assert_alerted(
            &opened.reconciled,
            store::RepairStep::DeleteReplaced,
            &old,
            Some(errno),
            &case,
        );
        assert_eq!(opened.reconciled.replaced_deleted, 0, "{case}");
        assert!(fs.exists(&old), "errno {errno}");
        assert_eq!(
            stored_dataset(&store, &v2.sop_uid),
            Some(v2.dataset(Encoding::EXPLICIT_LE))
        );
        store.close().await.unwrap();
        drop(store);

        fs.heal();
        let (store, opened) = open_mem(&fs, &backend, store::DuplicatePolicy::Overwrite);
        assert!(opened.reconciled.alerts.is_empty(), "{case}");
        assert_eq!(opened.reconciled.replaced_deleted, 1, "{case}");
        assert!(!fs.exists(&old), "errno {errno}");
        let problems = store.verify(|_| {}).unwrap().problems;
        assert!(problems.is_empty(), "errno {errno}: {problems:?}");
        store.close().await.unwrap();
    }
}

// The same finding, for a received file that reads back whole (its CRC and size match its
// name) but cannot be parsed or indexed: repair deleted it, although nothing showed its data
// lost (a parser change or a bug is likelier than a disk that returns matching garbage). It
// is kept and reported instead, for a person to look at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_ready_file_that_cannot_be_indexed_is_kept_and_reported() {
    use store::crash::{MemBackend, MemFs, Power};
    let power = Power::steady();
    let (fs, backend) = (MemFs::new(power.clone()), MemBackend::new(power.clone()));
    let (store, _) = open_mem(&fs, &backend, store::DuplicatePolicy::KeepFirst);
    store.close().await.unwrap();
    drop(store);
    let bytes = b"not a Part 10 file, but exactly the bytes its name promises".to_vec();
    // The name of a release before `.ready` names carried a sequence: still read.
    let name = format!(
        "{}.{:08x}.{}.ready",
        FileId::new(std::time::SystemTime::now()).as_str(),
        crc32c::crc32c(&bytes),
        bytes.len()
    );
    let ready = Path::new("/data/tmp").join(name);
    let mut w = fs.create_new(&ready).unwrap();
    w.write_all(&bytes).unwrap();
    w.sync().unwrap();
    fs.sync_dir(Path::new("/data/tmp")).unwrap();
    let (store, opened) = open_mem(&fs, &backend, store::DuplicatePolicy::KeepFirst);
    assert_eq!(
        opened.reconciled.finished_discarded, 0,
        "{:?}",
        opened.reconciled
    );
    assert!(
        fs.exists(&ready),
        "a whole file is never deleted for failing to parse"
    );
    store.close().await.unwrap();
}

// Finding B.9, across a restart: the sequence in `.ready` names is not stored, so a start
// must number new files above every name still in `tmp/` (here one kept because it cannot be
// read), or a file received after the restart could sort before an older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_are_numbered_above_those_a_restart_found() {
    use store::crash::Fault;
    use store::layout::TmpName;
    let seq = |name: &str| match TmpName::parse(name) {
        Some(TmpName::Ready { seq, .. }) => seq,
        other => panic!("{name}: {other:?}"),
    };
    let (fs, backend, kept, _) = crash_state(
        &SynthInstance::ct(8, 3, 1, 1),
        false,
        store::DuplicatePolicy::Overwrite,
    )
    .await;
    let kept_name = kept.file_name().unwrap().to_str().unwrap().to_string();
    assert!(seq(&kept_name).is_some(), "new names carry a sequence");
    fs.inject(&kept, Fault::Open(5));
    let (store, _) = open_mem(&fs, &backend, store::DuplicatePolicy::Overwrite);
    crate::support::store_instance(&store, &SynthInstance::ct(8, 3, 1, 2)).await;
    let names = ready_names(&fs);
    assert_eq!(names.len(), 2, "{names:?}");
    let new = names.iter().find(|n| **n != kept_name).unwrap();
    assert!(seq(new) > seq(&kept_name), "{new} after {kept_name}");
    store.close().await.unwrap();
}
