//! The archive: DICOM instances as Part 10 files under the data directory, indexed in redb.
//!
//! [`Store::begin`] starts storing one instance: its data set streams into a temporary file
//! while a walker checks it and picks out the attributes to index; [`Ingest::finish`] makes the
//! file durable, hands it to the group committer and returns only once the instance is as
//! durable as `durability` promises. [`Store::find`] and [`Store::resolve`] answer C-FIND and
//! retrieval from the index alone.
//!
//! The durable format (file layout, commit order, invariants, assumptions about the disk) is
//! described in `appliance/store/DESIGN.md`.

pub mod cache;
pub mod crash;
pub mod fs;
pub mod index;
pub mod layout;
pub mod quarantine;
pub mod query;
pub mod record;

mod commit;
mod ingest;
pub mod outbox;
mod reconcile;
pub mod settle;
mod slot;
mod spare;
mod split;
pub mod stall;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend};

pub use cache::{CacheConfig, PROTECT_RECENT_S, Recall, Usage};
pub use commit::Outcome;
pub use ingest::{Ingest, IngestError, IngestRequest, Receipt};
pub use outbox::{Route, Router};
pub use quarantine::{Held, PatientConflict, PatientConflictPolicy, QuarantineError, Resolution};
pub use reconcile::{Reconciled, RepairAlert, RepairStep};
pub use split::{Split, derived_uid};
pub use stall::{PendingSync, SyncKind};
pub use verify::{VerifyProblem, VerifyReport};

use crate::fs::Fs;
use crate::layout::Layout;

/// When an acknowledged instance is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged means on stable storage: file data, its directory entry and its index
    /// entry were all flushed before the acknowledgement.
    Full,
    /// Acknowledged means written to the operating system; everything is flushed at the latest
    /// `flush_interval` later. A power cut can lose instances acknowledged in that window.
    Relaxed { flush_interval: Duration },
}

/// What to do when an instance arrives whose SOP Instance UID is already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Keep the stored copy, answer success, discard the new one.
    KeepFirst,
    /// Replace the stored copy with the new one.
    Overwrite,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub duplicates: DuplicatePolicy,
    /// Refuse new instances while less than this many bytes are free on the data volume.
    pub min_free_bytes: u64,
    /// redb page cache size.
    pub index_cache_bytes: usize,
    /// Most instances in one group commit.
    pub max_batch: usize,
    /// Where filed instances are forwarded; `None` queues nothing.
    pub router: Option<Arc<dyn Router>>,
    /// Evict confirmed instances above a watermark; `None` never evicts.
    pub cache: Option<CacheConfig>,
    /// Bytes of the appliance's other files on the data volume (the audit trail), kept as a
    /// running total by their writer. With `capacity_bytes` they count as used, with the
    /// archive's own files, in the free-space floor and the cache watermarks. (Without it,
    /// the file system's own free space already counts them.)
    pub other_bytes: Option<Arc<AtomicU64>>,
    /// An instance whose patient disagrees with its study's: quarantined or refused.
    pub patient_conflict: PatientConflictPolicy,
    /// The index schema version this build reads as (`index::SCHEMA_VERSION`). Only tests
    /// change it, to open an index under the rules of an older or newer release.
    #[doc(hidden)]
    pub reader_version: u32,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            durability: Durability::Full,
            duplicates: DuplicatePolicy::KeepFirst,
            min_free_bytes: 1024 * 1024 * 1024,
            index_cache_bytes: 64 * 1024 * 1024,
            max_batch: 256,
            router: None,
            cache: None,
            other_bytes: None,
            patient_conflict: PatientConflictPolicy::Quarantine,
            reader_version: index::SCHEMA_VERSION,
        }
    }
}

/// Where the index lives: the normal file, or a custom backend (the crash tests' one), made
/// anew whenever the index is (re)opened.
pub enum IndexBackend {
    File,
    Custom(slot::BackendFactory),
}

impl IndexBackend {
    /// A custom backend whose clones share one image (as the crash tests' do), so a reopen
    /// finds what was written.
    pub fn custom<B: StorageBackend + Clone + Sync>(backend: B) -> IndexBackend {
        IndexBackend::Custom(Arc::new(move || Box::new(backend.clone())))
    }
}

/// Failures of the store as a whole (as opposed to one instance being refused).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the index at {0} is in use by another process; is `outpost serve` already running on this data directory?"
    )]
    Locked(PathBuf),
    #[error("cannot open the index: {0}")]
    Open(#[from] redb::DatabaseError),
    #[error("index transaction failed: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("index table failed: {0}")]
    Table(#[from] redb::TableError),
    #[error("index storage failed: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("index commit failed: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("{0}")]
    Record(#[from] record::RecordError),
    #[error("the index is inconsistent: {0}; run `outpost verify`")]
    Inconsistent(String),
    #[error(
        "the index was written by a newer Outpost (index schema version {written}) that builds \
         older than schema version {min_reader} cannot read, and this build reads schema \
         version {reader}; boot the newer image, or restore the data directory from a backup \
         this build (or an older one) wrote"
    )]
    Schema {
        /// The schema version the index was last written with.
        written: u32,
        /// The oldest reader version the index allows.
        min_reader: u32,
        /// This build's version.
        reader: u32,
    },
    #[error("the index writer has stopped after an earlier failure ({0}); restart the service")]
    WriterFailed(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    /// The data volume filled up under the index: new instances are refused until space is
    /// freed, and the archive recovers by itself then.
    #[error(
        "the data volume is full, so the index cannot take changes; new instances are refused until space is freed (studies with a confirmed upstream copy can be evicted, or add storage)"
    )]
    IndexFull,
    /// The index writer is reopening the index (after the volume filled); a moment later it
    /// answers again.
    #[error("the index is being reopened after the data volume filled; try again in a moment")]
    IndexReopening,
    /// Refused under `patient_conflict = "reject"` (never a failure of the store itself).
    #[error("{0}")]
    PatientConflict(Box<PatientConflict>),
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Counters of the work the store did, for logs and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub overwritten: AtomicU64,
    pub refused: AtomicU64,
    /// Instances held in quarantine since the store opened.
    pub quarantined: AtomicU64,
    pub bytes: AtomicU64,
    /// Group commits (index write transactions) and how many were durable.
    pub batches: AtomicU64,
    pub durable_commits: AtomicU64,
    /// fdatasync calls on instance files (on the ingest path with full durability, in the
    /// background with relaxed) and fsync calls on directories.
    pub file_syncs: AtomicU64,
    pub dir_syncs: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub stored: u64,
    pub duplicates: u64,
    pub overwritten: u64,
    pub refused: u64,
    pub quarantined: u64,
    pub bytes: u64,
    pub batches: u64,
    pub durable_commits: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
}

impl StatsSnapshot {
    /// Flushes (file, directory and index syncs) per stored instance. A durable
    /// redb commit with quick repair costs two syncs.
    pub fn flushes_per_instance(&self) -> f64 {
        let n = self.stored + self.overwritten + self.duplicates;
        if n == 0 {
            return 0.0;
        }
        (self.file_syncs + self.dir_syncs + 2 * self.durable_commits) as f64 / n as f64
    }
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            stored: g(&self.stored),
            duplicates: g(&self.duplicates),
            overwritten: g(&self.overwritten),
            refused: g(&self.refused),
            quarantined: g(&self.quarantined),
            bytes: g(&self.bytes),
            batches: g(&self.batches),
            durable_commits: g(&self.durable_commits),
            file_syncs: g(&self.file_syncs),
            dir_syncs: g(&self.dir_syncs),
        }
    }
}

/// File syncs running in the background (relaxed durability): a checkpoint waits for them,
/// so that no index entry becomes durable before its file's data.
#[derive(Debug, Default)]
pub(crate) struct Background {
    pub outstanding: std::sync::atomic::AtomicUsize,
    pub failed: std::sync::Mutex<Option<String>>,
}

pub(crate) struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) layout: Layout,
    pub(crate) fs: Arc<dyn Fs>,
    pub(crate) index: Arc<slot::IndexSlot>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) committer: commit::Handle,
    pub(crate) outbox_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Why new instances are refused, when the appliance's health policy says writing is not
    /// safe (a failed array, a read-only volume). Queries and retrievals go on.
    pub(crate) hold: std::sync::RwLock<Option<String>>,
    /// Numbers the `.ready` names, so start-up repair files them in the order received.
    pub(crate) ready_seq: layout::ReadySeq,
    /// Bytes reserved by instances being received and not yet on disk: the free-space
    /// floor counts them, since the file system does not know of them yet.
    pub(crate) in_flight: AtomicU64,
    /// The syncs waiting for the disk now.
    pub(crate) syncs: Arc<stall::SyncWatch>,
    /// Set by the index writer while the volume is too full for the index to take changes.
    pub(crate) index_full: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) spares: Arc<spare::Spares>,
}

/// A handle on the archive; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

/// What opening the store found and did.
#[derive(Clone, Debug)]
pub struct Opened {
    pub reconciled: Reconciled,
    pub open_time: Duration,
    pub instances: u64,
}

impl Store {
    /// Opens (or creates) the archive under `config.data_dir` on the real file system, repairs
    /// what a crash left in flight, and starts the index writer.
    pub fn open(config: StoreConfig) -> Result<(Store, Opened), StoreError> {
        Store::open_with(config, Arc::new(fs::OsFs), IndexBackend::File)
    }

    /// Opens the archive over the given file system and index backend.
    pub fn open_with(
        config: StoreConfig,
        fs: Arc<dyn Fs>,
        backend: IndexBackend,
    ) -> Result<(Store, Opened), StoreError> {
        let started = Instant::now();
        // Every sync goes through the watch from here on, start-up repair's included: a disk
        // that hangs is found wherever it hangs.
        let syncs = Arc::new(stall::SyncWatch::default());
        let fs: Arc<dyn Fs> = Arc::new(stall::Watched::new(fs, syncs.clone()));
        let layout = Layout::new(&config.data_dir);
        let mut created = Vec::new();
        for dir in [
            layout.root().to_path_buf(),
            layout.tmp_dir(),
            layout.objects_dir(),
        ] {
            created.extend(
                fs.create_dir_all(&dir)
                    .map_err(|e| StoreError::io(&dir, e))?,
            );
        }
        let cache_bytes = config.index_cache_bytes;
        let opener = match backend {
            IndexBackend::File => {
                if !fs.exists(&layout.index()) {
                    create_index_atomically(
                        &layout,
                        fs.as_ref(),
                        &mut slot::Opener::builder(cache_bytes),
                        config.reader_version,
                    )?;
                }
                slot::Opener::File {
                    path: layout.index(),
                    cache_bytes,
                }
            }
            IndexBackend::Custom(make) => slot::Opener::Custom { make, cache_bytes },
        };
        let db = opener.open().map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(layout.index()),
            other => StoreError::Open(other),
        })?;
        check_schema(&db, &config)?;
        // New directories, and the index file's name, are durable only once their parent
        // directories are synced.
        let mut parents: Vec<PathBuf> = created
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf))
            .collect();
        parents.push(layout.root().to_path_buf());
        parents.sort();
        parents.dedup();
        for dir in parents {
            fs.sync_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        let stats = Arc::new(Stats::default());
        let (reconciled, next_ready_seq) = reconcile::run(
            &config,
            &layout,
            fs.as_ref(),
            &db,
            reconcile::Scope::Startup,
        )?;
        let instances = db
            .begin_read()?
            .open_table(index::INSTANCES)
            .map(|t| t.len().unwrap_or(0))
            .unwrap_or(0);
        let index = Arc::new(slot::IndexSlot::new(db, opener));
        let background = Arc::new(Background::default());
        let index_full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outbox_changes = Arc::new(tokio::sync::watch::Sender::new(0));
        let committer = commit::spawn(
            config.clone(),
            layout.clone(),
            fs.clone(),
            index.clone(),
            stats.clone(),
            background,
            outbox_changes.clone(),
            syncs.clone(),
            index_full.clone(),
        );
        let store = Store {
            inner: Arc::new(Inner {
                config,
                layout,
                fs,
                index,
                stats,
                committer,
                outbox_changes,
                hold: std::sync::RwLock::new(None),
                ready_seq: layout::ReadySeq::starting_at(next_ready_seq),
                in_flight: AtomicU64::new(0),
                spares: Arc::default(),
                syncs,
                index_full,
            }),
        };
        let opened = Opened {
            reconciled,
            open_time: started.elapsed(),
            instances,
        };
        Ok((store, opened))
    }

    /// The sync that has waited longest for the data disk, while one is running: a long wait
    /// means a failing disk (the health policy raises the alert and holds ingest).
    pub fn pending_sync(&self) -> Option<PendingSync> {
        self.inner.syncs.oldest()
    }

    /// Bytes reserved by instances being received that are not on disk yet.
    pub fn in_flight_bytes(&self) -> u64 {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The index, for read transactions. Fails only for the moment the index writer takes to
    /// reopen it after the data volume filled.
    pub fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner.index.get()
    }

    /// Opens a stored file for reading.
    pub fn open_file(&self, rel: &str) -> std::io::Result<Box<dyn fs::FileReader>> {
        self.inner.fs.open(&self.inner.layout.absolute(rel))
    }

    /// Refuses new instances with `reason` (a sentence a sender's operator can act on) until
    /// called with `None`. Instances already being received finish; nothing stored is touched.
    pub fn hold_ingest(&self, reason: Option<String>) {
        *self.inner.hold.write().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// True while the data volume is too full for the index to take changes: new instances
    /// are refused, and the index writer recovers by itself once space is freed.
    pub fn index_full(&self) -> bool {
        self.inner.index_full.load(Ordering::SeqCst)
    }

    /// Why new instances are refused, if they are.
    pub fn ingest_held(&self) -> Option<String> {
        self.inner
            .hold
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every instance held in quarantine, oldest first.
    pub fn quarantined(&self) -> Result<Vec<Held>, StoreError> {
        quarantine::list(&self.db()?.begin_read()?)
    }

    /// How many instances are held in quarantine.
    pub fn quarantine_count(&self) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        Ok(txn.open_table(quarantine::QUARANTINE)?.len()?)
    }

    /// Applies a person's decision on the held instance `seq`, in one index transaction
    /// (durable at the next checkpoint, like everything the committer writes): assigned, it
    /// is filed and queued as if it had just arrived; deleted, its file goes once the removal
    /// is durable. Returns what was held.
    pub async fn resolve_quarantine(
        &self,
        seq: u64,
        resolution: Resolution,
    ) -> Result<Held, QuarantineError> {
        self.inner.committer.resolve(seq, resolution).await
    }

    /// Checks that the index writer is alive and working (for the service watchdog).
    pub async fn ping(&self) -> bool {
        self.inner.committer.ping().await
    }

    /// Makes everything acknowledged durable now (a checkpoint), rather than within the
    /// checkpoint interval: the appliance runs on battery and the next power cut may be near.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.inner.committer.checkpoint().await
    }

    /// Stops the index writer after it made everything durable. Ingests still running fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        let store = self.clone();
        let _ = tokio::task::spawn_blocking(move || store.drop_spares()).await;
        self.inner.committer.shutdown().await
    }
}

/// Creates a new index under a temporary name and renames it into place once it is durable,
/// so that a power cut during the very first start leaves either no index or a whole one.
fn create_index_atomically(
    layout: &Layout,
    fs: &dyn Fs,
    builder: &mut redb::Builder,
    reader_version: u32,
) -> Result<(), StoreError> {
    let creating = layout.root().join("index.redb.creating");
    let _ = fs.remove_file(&creating);
    {
        let db = builder.create(&creating)?;
        // Written under the opening build's version, so the open that follows finds itself
        // the last writer and has nothing to rebuild.
        let mut created = StoreConfig::new(layout.root());
        created.reader_version = reader_version;
        check_schema(&db, &created)?;
    }
    fs.sync_file(&creating)
        .map_err(|e| StoreError::io(&creating, e))?;
    fs.rename(&creating, &layout.index())
        .map_err(|e| StoreError::io(&layout.index(), e))?;
    fs.sync_dir(layout.root())
        .map_err(|e| StoreError::io(layout.root(), e))
}

fn check_schema(db: &Database, config: &StoreConfig) -> Result<(), StoreError> {
    let reader = config.reader_version;
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(true);
    let rebuild_derived;
    {
        let mut meta = txn.open_table(index::META)?;
        let get = |meta: &redb::Table<&str, &[u8]>, key: &str| -> Result<Option<u32>, StoreError> {
            Ok(meta.get(key)?.map(|v| {
                let b = v.value();
                let mut a = [0u8; 4];
                let n = b.len().min(4);
                a[..n].copy_from_slice(&b[..n]);
                u32::from_le_bytes(a)
            }))
        };
        let written = get(&meta, index::META_SCHEMA_VERSION)?;
        // An index from before the version rules has only `schema_version`; its layout is
        // readable by exactly that version, which is what the rule gives.
        let min_reader = get(&meta, index::META_MIN_READER_VERSION)?.or(written);
        let last_writer = get(&meta, index::META_LAST_WRITER_VERSION)?;
        if let Some(min_reader) = min_reader
            && min_reader > reader
        {
            return Err(StoreError::Schema {
                written: written.unwrap_or(min_reader),
                min_reader,
                reader,
            });
        }
        // The recorded numbers never go down: an older build reading a newer index leaves
        // the newer layout's claim (and its tables) in place for when the newer image boots.
        let written = written.unwrap_or(0).max(reader);
        let min_reader = min_reader.unwrap_or(0).max(index::MIN_READER_VERSION);
        meta.insert(index::META_SCHEMA_VERSION, written.to_le_bytes().as_slice())?;
        meta.insert(
            index::META_MIN_READER_VERSION,
            min_reader.to_le_bytes().as_slice(),
        )?;
        // Another build (older or newer) may have changed primary tables without keeping
        // the derived ones as this build does; a missing marker (an index from before the
        // marker) is the same case.
        rebuild_derived = last_writer != Some(reader);
        meta.insert(
            index::META_LAST_WRITER_VERSION,
            reader.to_le_bytes().as_slice(),
        )?;
        // Create every table up front so readers never meet a missing one.
        index::Tables::open(&txn)?;
        txn.open_table(quarantine::QUARANTINE)?;
    }
    let destinations = config
        .router
        .as_ref()
        .map(|r| r.destinations())
        .unwrap_or_default();
    outbox::create_tables(&txn, &destinations)?;
    cache::create_tables(&txn)?;
    if rebuild_derived {
        cache::rebuild_derived(&txn)?;
    }
    txn.commit()?;
    Ok(())
}
