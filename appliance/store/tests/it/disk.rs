//! A disk that fills up: the free-space floor counts the bytes associations are about to
//! write, not only what the file system already holds. A disk that hangs: a sync that does
//! not return is reported, naming what it waits for.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dataset::Encoding;
use dataset::synth::SynthInstance;
use store::fs::{FileReader, FileWriter, Fs, OsFs};
use store::{IndexBackend, IngestError, Store};

use crate::support::{config, request};

/// The real file system, reporting as free a fixed budget minus every byte written through
/// it, as a small volume would; it remembers the least free space it ever reported. While
/// its gate is shut, file syncs wait, as they do on a disk that stopped answering.
#[derive(Debug)]
pub struct Metered {
    free: Arc<AtomicI64>,
    lowest: Arc<AtomicI64>,
    gate: Arc<Gate>,
}

impl Metered {
    pub fn new(free: u64) -> Metered {
        Metered {
            free: Arc::new(AtomicI64::new(free as i64)),
            lowest: Arc::new(AtomicI64::new(free as i64)),
            gate: Arc::new(Gate::default()),
        }
    }
}

/// Shut, it holds every file sync until it opens again.
#[derive(Debug, Default)]
pub struct Gate {
    shut: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    pub fn set_shut(&self, shut: bool) {
        *self.shut.lock().unwrap() = shut;
        self.changed.notify_all();
    }
    fn pass(&self) {
        let mut shut = self.shut.lock().unwrap();
        while *shut {
            shut = self.changed.wait(shut).unwrap();
        }
    }
}

struct MeteredWriter {
    inner: Box<dyn FileWriter>,
    free: Arc<AtomicI64>,
    lowest: Arc<AtomicI64>,
    gate: Arc<Gate>,
}

impl FileWriter for MeteredWriter {
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(data)?;
        let now = self.free.fetch_sub(data.len() as i64, Ordering::SeqCst) - data.len() as i64;
        self.lowest.fetch_min(now, Ordering::SeqCst);
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.gate.pass();
        self.inner.sync()
    }
}

impl Fs for Metered {
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn FileWriter>> {
        Ok(Box::new(MeteredWriter {
            inner: OsFs.create_new(path)?,
            free: self.free.clone(),
            lowest: self.lowest.clone(),
            gate: self.gate.clone(),
        }))
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn FileReader>> {
        OsFs.open(path)
    }
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        self.gate.pass();
        OsFs.sync_file(path)
    }
    fn len(&self, path: &Path) -> std::io::Result<u64> {
        OsFs.len(path)
    }
    fn exists(&self, path: &Path) -> bool {
        OsFs.exists(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        OsFs.hard_link(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        OsFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        // Hard links share their blocks; only a last name gives them back, and the store's
        // removals here are of temporary files with one name.
        let len = OsFs.len(path).unwrap_or(0);
        OsFs.remove_file(path)?;
        if !path.to_string_lossy().ends_with(".ready") {
            self.free.fetch_add(len as i64, Ordering::SeqCst);
        }
        Ok(())
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<Vec<PathBuf>> {
        OsFs.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        OsFs.sync_dir(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        OsFs.list_dir(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        OsFs.is_dir(path)
    }
    fn available_bytes(&self, _path: &Path) -> std::io::Result<u64> {
        Ok(self.free.load(Ordering::SeqCst).max(0) as u64)
    }
    fn total_bytes(&self, _path: &Path) -> std::io::Result<u64> {
        Ok(1 << 40)
    }
}

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_instances_cannot_write_past_the_floor() {
    // Free space was checked when an instance began and again every 64 MiB it wrote, so
    // eight associations that began together on a volume 20 MiB above the floor each wrote
    // their 8 MiB and took the volume 44 MiB below it. What associations are writing now
    // counts against the floor too.
    const FLOOR: u64 = 10 * MIB as u64;
    const ROOM: u64 = 20 * MIB as u64;
    const SENDERS: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.min_free_bytes = FLOOR;
    let fs = Arc::new(Metered::new(FLOOR + ROOM));
    let lowest = fs.lowest.clone();
    let (store, _) = Store::open_with(c, fs, IndexBackend::File).unwrap();
    let instances: Vec<SynthInstance> = (0..SENDERS)
        .map(|i| {
            let mut inst = SynthInstance::ct(1, 1, 1, i);
            inst.pixel_bytes = 8 * MIB;
            inst
        })
        .collect();
    let mut ingests = Vec::new();
    let mut refused = 0;
    for inst in &instances {
        match store.begin(request(inst)).await {
            Ok(i) => ingests.push(i),
            Err(IngestError::OutOfSpace { .. }) => refused += 1,
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    // Round robin, as concurrent associations interleave their fragments.
    let datasets: Vec<Vec<u8>> = instances
        .iter()
        .map(|i| i.dataset(Encoding::EXPLICIT_LE))
        .collect();
    let fragment = 256 * 1024;
    let rounds = datasets[0].len().div_ceil(fragment);
    let datasets = &datasets[..ingests.len()];
    for r in 0..rounds {
        for (ingest, data) in ingests.iter_mut().zip(datasets) {
            let end = ((r + 1) * fragment).min(data.len());
            if r * fragment < end {
                ingest.write(data[r * fragment..end].to_vec()).await;
            }
        }
    }
    let mut stored = 0;
    for ingest in ingests {
        match ingest.finish().await {
            Ok(_) => stored += 1,
            Err(IngestError::OutOfSpace { .. }) => refused += 1,
            Err(e) => panic!("unexpected failure: {e}"),
        }
    }
    let least = lowest.load(Ordering::SeqCst);
    eprintln!(
        "{stored} stored, {refused} refused, lowest free {:.1} MiB (floor {} MiB)",
        least as f64 / MIB as f64,
        FLOOR / MIB as u64
    );
    assert!(
        least >= FLOOR as i64,
        "free space fell to {least} bytes, below the floor of {FLOOR}"
    );
    assert_eq!(stored + refused, SENDERS);
    assert!(refused >= SENDERS - 2, "{refused} refused");
    assert_eq!(store.in_flight_bytes(), 0, "every reservation is released");
    // The refused instances' files are gone and their reservations released: a sender
    // retrying now is served.
    let mut again = SynthInstance::ct(1, 1, 1, 100);
    again.pixel_bytes = 8 * MIB;
    let r = crate::support::store_bytes(
        &store,
        request(&again),
        &again.dataset(Encoding::EXPLICIT_LE),
        fragment,
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(lowest.load(Ordering::SeqCst) >= FLOOR as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_does_not_return_is_reported_with_what_it_waits_for() {
    // On a failing disk an fdatasync can hang for minutes. The C-STORE waited, the index
    // writer stopped answering the watchdog's ping, systemd restarted the service, and the
    // restart hung on the same disk: a restart loop, and nothing anywhere named the disk.
    // The store now tells which sync waits and for how long, so the health policy can raise
    // an alert naming the disk and refuse new instances.
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Metered::new(1 << 40));
    let gate = fs.gate.clone();
    let (store, _) = Store::open_with(config(dir.path()), fs, IndexBackend::File).unwrap();
    assert_eq!(store.pending_sync(), None);
    gate.set_shut(true);
    let inst = SynthInstance::ct(1, 1, 1, 0);
    let storing = {
        let store = store.clone();
        let inst = inst.clone();
        tokio::spawn(async move { crate::support::store_instance(&store, &inst).await })
    };
    let started = Instant::now();
    let pending = loop {
        if let Some(p) = store.pending_sync()
            && p.waited >= Duration::from_millis(300)
        {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no sync reported as waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(pending.kind, store::SyncKind::FileData);
    assert!(
        pending.path.starts_with(store.layout().tmp_dir()),
        "{}",
        pending.path.display()
    );
    assert!(!storing.is_finished(), "the C-STORE waits for the disk");
    gate.set_shut(false);
    assert_eq!(storing.await.unwrap(), store::Outcome::Stored);
    assert_eq!(
        store.pending_sync(),
        None,
        "nothing waits once the disk answers"
    );
}

/// A redb backend in memory on a volume that fills up: while `full` is set, a write that
/// needs new blocks (past what the file ever held) fails with ENOSPC, as on a full file
/// system; rewriting blocks the file already has still works, and growing its length (sparse,
/// as `set_len` does) costs no blocks until written.
#[derive(Clone)]
struct Filling {
    inner: store::crash::MemBackend,
    full: Arc<std::sync::atomic::AtomicBool>,
    /// The end of the highest block ever written: blocks below it are allocated.
    allocated: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Filling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filling")
    }
}

impl redb::StorageBackend for Filling {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let end = offset + data.len() as u64;
        if end > self.allocated.load(Ordering::SeqCst) {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
            }
            self.allocated.fetch_max(end, Ordering::SeqCst);
        }
        self.inner.write(offset, data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_makes_the_archive_refuse_instances_and_it_recovers_when_space_returns() {
    // The volume filled between two floor checks and a redb commit failed with ENOSPC. redb
    // latches an I/O error, so the index writer stopped for good: every C-STORE failed with
    // 0x0110, queries failed too, and only a restart (by the watchdog) brought it back. Now
    // the writer reopens the index at once (queries go on), refuses new instances with
    // 0xA700, and when space returns re-files what the reopen lost and takes instances again,
    // with nothing acknowledged missing.
    use store::{IngestError, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(Metered::new(1 << 40));
    let free = fs.free.clone();
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend = Filling {
        inner: store::crash::MemBackend::new(store::crash::Power::steady()),
        full: full.clone(),
        allocated: Arc::default(),
    };
    let (store, _) = Store::open_with(
        config(dir.path()),
        fs.clone(),
        IndexBackend::custom(backend.clone()),
    )
    .unwrap();
    let inst = |i: u32| SynthInstance::ct(1, 1, 1, i);
    let mut acknowledged = Vec::new();
    for i in 0..2 {
        crate::support::store_instance(&store, &inst(i)).await;
        acknowledged.push(inst(i).sop_uid);
    }
    store.checkpoint().await.unwrap();
    // Acknowledged, not yet checkpointed: only its `.ready` name makes it durable.
    crate::support::store_instance(&store, &inst(2)).await;
    acknowledged.push(inst(2).sop_uid);

    // The volume fills. Instances keep coming until the index needs a block it cannot get,
    // at a batch or at a checkpoint.
    full.store(true, Ordering::SeqCst);
    free.store(0, Ordering::SeqCst);
    let mut next = 3;
    while !store.index_full() {
        assert!(next < 5_000, "the index never needed a new block");
        let r = crate::support::store_bytes(
            &store,
            request(&inst(next)),
            &inst(next).dataset(Encoding::EXPLICIT_LE),
            16 * 1024,
        )
        .await;
        match r {
            // Acknowledged: durable by its `.ready` name whatever becomes of the index.
            Ok(_) => acknowledged.push(inst(next).sop_uid),
            Err(IngestError::Store(StoreError::IndexFull)) => {}
            Err(e) => panic!("unexpected failure: {e}"),
        }
        next += 1;
        if next % 50 == 0 {
            let checkpoint = store.checkpoint().await;
            assert!(
                matches!(checkpoint, Ok(()) | Err(StoreError::IndexFull)),
                "{checkpoint:?}"
            );
        }
    }
    eprintln!(
        "the index filled the volume after {} instances, {} acknowledged",
        next,
        acknowledged.len()
    );
    let checkpoint = store.checkpoint().await;
    assert!(
        matches!(checkpoint, Err(StoreError::IndexFull)),
        "{checkpoint:?}"
    );
    assert!(store.index_full());
    let refused = store.begin(request(&inst(next))).await;
    assert!(
        matches!(refused, Err(IngestError::Store(StoreError::IndexFull))),
        "{:?}",
        refused.err()
    );
    // Queries go on, on the reopened index (as of the last checkpoint).
    for sop in &acknowledged[..2] {
        assert!(
            crate::support::stored_file(&store, sop).is_some(),
            "{sop} is not found while the volume is full"
        );
    }
    assert!(store.ping().await, "the writer is alive");

    // Space returns.
    full.store(false, Ordering::SeqCst);
    free.store(1 << 40, Ordering::SeqCst);
    let started = Instant::now();
    while store.index_full() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no recovery 20 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sop in &acknowledged {
        assert!(
            crate::support::stored_file(&store, sop).is_some(),
            "acknowledged {sop} is missing after the recovery"
        );
    }
    assert_eq!(
        crate::support::store_instance(&store, &inst(next)).await,
        store::Outcome::Stored
    );
    acknowledged.push(inst(next).sop_uid);
    store.close().await.unwrap();
    drop(store);

    // And all of it is durable: a fresh open finds every acknowledged instance.
    let (store, opened) =
        Store::open_with(config(dir.path()), fs, IndexBackend::custom(backend)).unwrap();
    for sop in &acknowledged {
        assert!(
            crate::support::stored_file(&store, sop).is_some(),
            "acknowledged {sop} is missing after a restart ({:?})",
            opened.reconciled
        );
    }
}
