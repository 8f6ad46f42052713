//! The index database behind a handle the index writer can replace.
//!
//! redb latches an I/O error: after one failed write (the data volume full), every later read
//! and write through that `Database` fails with `PreviousIo`, queries included. Rather than
//! stop until a restart, the index writer reopens the file ([`IndexSlot::reopen`]); redb then
//! repairs it to its last durable commit, and start-up repair's rules re-file what was
//! acknowledged since (see `commit.rs`).
//!
//! The reopen happens at once, while the volume is still full: a full file system refuses
//! new blocks, not writes over blocks a file already has, and redb's quick repair (every
//! checkpoint commits with it) rewrites only pages and the header the file already holds.
//! Queries then go on as of the last checkpoint; the writer refuses changes until there is
//! room (see `commit.rs`).
//!
//! Readers take a clone of the current handle for one transaction. A reopen takes the slot's
//! write lock, so new readers wait for it (milliseconds with quick repair), waits for running
//! readers to let go of the old handle (redb holds the file's lock until then), and opens the
//! file again.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, StorageBackend};
use tracing::info;

use crate::StoreError;

/// Makes the redb backend anew for every (re)open of a custom index.
pub type BackendFactory = Arc<dyn Fn() -> Box<dyn StorageBackend> + Send + Sync>;

/// How to open the index.
#[derive(Clone)]
pub(crate) enum Opener {
    File {
        path: std::path::PathBuf,
        cache_bytes: usize,
    },
    Custom {
        make: BackendFactory,
        cache_bytes: usize,
    },
}

impl Opener {
    pub(crate) fn builder(cache_bytes: usize) -> redb::Builder {
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes);
        builder.set_repair_callback(|session| {
            info!(
                progress = format!("{:.0}%", session.progress() * 100.0),
                "repairing the index after an unclean shutdown"
            );
        });
        builder
    }

    pub(crate) fn open(&self) -> Result<Database, redb::DatabaseError> {
        match self {
            Opener::File { path, cache_bytes } => Opener::builder(*cache_bytes).create(path),
            Opener::Custom { make, cache_bytes } => {
                Opener::builder(*cache_bytes).create_with_backend(BoxedBackend(make()))
            }
        }
    }
}

/// The index, replaceable by the index writer.
pub(crate) struct IndexSlot {
    current: RwLock<Option<Arc<Database>>>,
    opener: Opener,
}

/// How long a reopen waits for readers of the old handle, and for redb's file lock.
const LET_GO: Duration = Duration::from_secs(10);

impl IndexSlot {
    pub(crate) fn new(db: Database, opener: Opener) -> IndexSlot {
        IndexSlot {
            current: RwLock::new(Some(Arc::new(db))),
            opener,
        }
    }

    /// The current handle, for one transaction.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::IndexReopening)
    }

    /// Drops the current handle and opens the index again. On failure the slot stays empty
    /// (readers get [`StoreError::IndexReopening`]) and the caller tries again later.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            let waited = Instant::now();
            while Arc::strong_count(&old) > 1 && waited.elapsed() < LET_GO {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        let waited = Instant::now();
        loop {
            let opened = self.opener.open().map(Arc::new);
            match opened {
                Ok(db) => {
                    *slot = Some(db);
                    return Ok(());
                }
                // A read transaction of the old handle still holds the file.
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if waited.elapsed() < LET_GO => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(StoreError::Open(e)),
            }
        }
    }
}

/// Lets a boxed backend be handed to redb, which takes backends by value.
#[derive(Debug)]
struct BoxedBackend(Box<dyn StorageBackend>);

impl StorageBackend for BoxedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
}
