//! Empty temporary files created ahead of need, so that creating a file is not on the path
//! from an instance's first fragment to its response.
//!
//! Creating a file costs the file system an inode, and that cost is neither small nor steady:
//! on this project's 2-core ext4 machines a create in `tmp/` took from 37 µs to over 500 µs,
//! varying from minute to minute (ext4's inode allocator searching its groups), and 40% of
//! the ingest task's CPU in a profile of single-association ingest. A modality waits for
//! every instance in turn, so the time is pure latency. A spare is taken instead when one is
//! ready, and a background task makes the next while the instance arrives.
//!
//! Spares are named `tmp/<id>.spare`; an instance written into one is renamed to its own
//! `.ready` name as before. Start-up repair removes spares like any unfinished file: an
//! empty spare is nothing anyone was told is stored.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::Store;
use crate::fs::FileWriter;
use crate::layout::FileId;

/// Spares kept ready: one for the instance after the one arriving, one for a second
/// association; a burst beyond that creates its files itself, as without spares.
const KEPT: usize = 2;
/// After a failed create, spares wait this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One ready file: its name and an open writer at offset 0.
pub(crate) struct Spare {
    pub(crate) path: PathBuf,
    pub(crate) writer: Box<dyn FileWriter>,
}

#[derive(Default)]
pub(crate) struct Spares {
    ready: Mutex<Vec<Spare>>,
    /// A refill is running; at most one at a time.
    refilling: AtomicBool,
    /// When creating a spare last failed (the volume full or read-only, say): until
    /// [`RETRY_AFTER`] has passed, ingest creates its own files, and so meets the error
    /// where it can report it.
    failed_at: Mutex<Option<Instant>>,
    /// The store is closing: no more spares.
    closed: AtomicBool,
}

impl Store {
    /// A ready spare if there is one; starts making more either way.
    pub(crate) fn take_spare(&self) -> Option<Spare> {
        let spares = &self.inner.spares;
        let taken = spares.ready.lock().expect("spares lock").pop();
        self.refill_spares();
        taken
    }

    fn refill_spares(&self) {
        let spares = &self.inner.spares;
        let failed_recently = spares
            .failed_at
            .lock()
            .expect("spares lock")
            .is_some_and(|t| t.elapsed() < RETRY_AFTER);
        if failed_recently
            || spares.closed.load(Ordering::Acquire)
            || !self.inner.fs.creates_ahead()
            || spares.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            spares.refilling.store(false, Ordering::Release);
            return;
        };
        // Not the store itself: a refill must not keep the index open after a close.
        let (spares, fs, layout) = (
            spares.clone(),
            self.inner.fs.clone(),
            self.inner.layout.clone(),
        );
        runtime.spawn_blocking(move || {
            while spares.ready.lock().expect("spares lock").len() < KEPT
                && !spares.closed.load(Ordering::Acquire)
            {
                let path = layout.spare_path(&FileId::new(SystemTime::now()));
                match fs.create_new(&path) {
                    Ok(writer) => spares
                        .ready
                        .lock()
                        .expect("spares lock")
                        .push(Spare { path, writer }),
                    Err(_) => {
                        *spares.failed_at.lock().expect("spares lock") = Some(Instant::now());
                        break;
                    }
                }
            }
            spares.refilling.store(false, Ordering::Release);
        });
    }

    /// Removes the spares and makes no more (at shutdown, so that a clean stop leaves none
    /// behind). Blocks until a refill running now has finished.
    pub(crate) fn drop_spares(&self) {
        let spares = &self.inner.spares;
        spares.closed.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(10);
        while spares.refilling.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let taken = std::mem::take(&mut *self.inner.spares.ready.lock().expect("spares lock"));
        for spare in taken {
            drop(spare.writer);
            let _ = self.inner.fs.remove_file(&spare.path);
        }
    }
}
