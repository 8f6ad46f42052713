//! Watching the data disk's syncs, so that a failing disk that stops answering is named in
//! an alert instead of only stalling ingest (and tripping the service watchdog over and over).
//!
//! Every operation that waits for the disk to make something durable (an instance file's
//! `fdatasync`, a directory's `fsync`, the index's durable commit) is registered here while it
//! runs. [`SyncWatch::oldest`] tells how long the oldest one has been waiting. The store does
//! not judge the wait; the health policy decides when it is a stall and what to do about it.
//!
//! Registering costs one short lock per sync, which is nothing beside the sync itself.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fs::{FileReader, FileWriter, Fs};

/// What a running sync makes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// An instance file's data (`fdatasync`).
    FileData,
    /// A directory's entries (`fsync` of the directory).
    Directory,
    /// The index's durable commit.
    Index,
}

impl fmt::Display for SyncKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncKind::FileData => "fdatasync of",
            SyncKind::Directory => "fsync of the directory",
            SyncKind::Index => "durable commit of the index",
        })
    }
}

/// The oldest sync still waiting for the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSync {
    pub kind: SyncKind,
    pub path: PathBuf,
    pub waited: Duration,
}

impl fmt::Display for PendingSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.path.display())
    }
}

/// The syncs running now.
#[derive(Debug, Default)]
pub struct SyncWatch {
    next: AtomicU64,
    running: Mutex<BTreeMap<u64, (Instant, SyncKind, PathBuf)>>,
}

impl SyncWatch {
    /// Registers a sync until the returned guard drops.
    pub fn begin(self: &Arc<Self>, kind: SyncKind, path: &Path) -> Running {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .insert(id, (Instant::now(), kind, path.to_path_buf()));
        Running {
            watch: self.clone(),
            id,
        }
    }

    /// The sync that has waited longest, if any is running.
    pub fn oldest(&self) -> Option<PendingSync> {
        // Ids grow with time, so the first entry is the oldest.
        self.lock()
            .values()
            .next()
            .map(|(started, kind, path)| PendingSync {
                kind: *kind,
                path: path.clone(),
                waited: started.elapsed(),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Instant, SyncKind, PathBuf)>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A registered sync; dropping it (when the sync returns, whatever it returned) unregisters it.
pub struct Running {
    watch: Arc<SyncWatch>,
    id: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.watch.lock().remove(&self.id);
    }
}

/// A file system whose syncs are registered with a [`SyncWatch`]; everything else passes
/// through unchanged, so it wraps the real file system and the crash-test backends alike.
#[derive(Debug)]
pub(crate) struct Watched {
    inner: Arc<dyn Fs>,
    watch: Arc<SyncWatch>,
}

impl Watched {
    pub(crate) fn new(inner: Arc<dyn Fs>, watch: Arc<SyncWatch>) -> Watched {
        Watched { inner, watch }
    }
}

struct WatchedWriter {
    inner: Box<dyn FileWriter>,
    watch: Arc<SyncWatch>,
    path: PathBuf,
}

impl FileWriter for WatchedWriter {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data)
    }
    fn sync(&mut self) -> io::Result<()> {
        let _running = self.watch.begin(SyncKind::FileData, &self.path);
        self.inner.sync()
    }
    fn start_writeback(&mut self) {
        self.inner.start_writeback()
    }
}

impl Fs for Watched {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        Ok(Box::new(WatchedWriter {
            inner: self.inner.create_new(path)?,
            watch: self.watch.clone(),
            path: path.to_path_buf(),
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileReader>> {
        self.inner.open(path)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let _running = self.watch.begin(SyncKind::FileData, path);
        self.inner.sync_file(path)
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        self.inner.len(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.hard_link(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let _running = self.watch.begin(SyncKind::Directory, path);
        self.inner.sync_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        self.inner.available_bytes(path)
    }
    fn total_bytes(&self, path: &Path) -> io::Result<u64> {
        self.inner.total_bytes(path)
    }
    fn creates_ahead(&self) -> bool {
        self.inner.creates_ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_running_sync_is_reported_until_it_returns() {
        let watch = Arc::new(SyncWatch::default());
        assert_eq!(watch.oldest(), None);
        let first = watch.begin(SyncKind::FileData, Path::new("/data/tmp/a"));
        std::thread::sleep(Duration::from_millis(5));
        let second = watch.begin(SyncKind::Directory, Path::new("/data/objects"));
        let oldest = watch.oldest().expect("two syncs run");
        assert_eq!(oldest.path, Path::new("/data/tmp/a"));
        assert!(oldest.waited >= Duration::from_millis(5));
        assert_eq!(oldest.to_string(), "fdatasync of /data/tmp/a");
        drop(first);
        assert_eq!(
            watch.oldest().map(|p| p.to_string()),
            Some("fsync of the directory /data/objects".to_string())
        );
        drop(second);
        assert_eq!(watch.oldest(), None);
    }
}
