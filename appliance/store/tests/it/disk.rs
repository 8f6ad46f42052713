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
