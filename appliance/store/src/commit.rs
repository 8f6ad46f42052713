//! The group committer: one thread that files finished instances into the index in batches,
//! so that concurrent associations share directory syncs and index commits.
//!
//! Whatever requests queued while the previous batch was being committed form the next batch;
//! nothing waits on a timer. A batch, with `durability = "full"`:
//!
//! 1. sync `tmp/`, making every in-flight name of the batch durable;
//! 2. link each temporary file to its final name (the data was synced by the ingest task);
//! 3. sync each final directory (and the parents of directories just created);
//! 4. file every instance in one redb write transaction, committed durably;
//! 5. answer every waiting ingest, then remove the temporary names.
//!
//! With `"relaxed"` steps 1 and 3 are skipped, the index commit is not durable, and a flush
//! at most `flush_interval` later syncs the whole data volume and commits durably; only then
//! are temporary names and replaced files removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Database, Durability as RedbDurability, ReadableDatabase};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::fs::Fs;
use crate::index::{self, Filed, Tables};
use crate::layout::{Layout, unix_now};
use crate::record::{Extracted, InstanceRecord};
use crate::{DuplicatePolicy, Durability, Stats, StoreConfig, StoreError};

/// How storing one instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as a new instance.
    Stored,
    /// Already stored; the first copy was kept and this one discarded.
    Duplicate,
    /// Already stored; this copy replaced the first.
    Overwritten,
}

pub(crate) struct CommitRequest {
    pub tmp: PathBuf,
    pub extracted: Extracted,
    pub record: InstanceRecord,
}

enum Msg {
    Commit(
        Box<CommitRequest>,
        oneshot::Sender<Result<Outcome, StoreError>>,
    ),
    Ping(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<Result<(), StoreError>>),
}

pub(crate) struct Handle {
    tx: mpsc::Sender<Msg>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Handle {
    pub async fn commit(&self, request: CommitRequest) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Commit(Box::new(request), reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    pub async fn ping(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Ping(reply)).is_err() {
            return false;
        }
        // A batch with many instances can take a while; a writer that stays silent for this
        // long is stuck.
        matches!(
            tokio::time::timeout(Duration::from_secs(20), rx).await,
            Ok(Ok(()))
        )
    }

    /// Stops the writer once everything acknowledged is durable, and waits for its thread to
    /// end, so the index file is released when this returns (the store's other handles
    /// permitting).
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let result = if self.tx.send(Msg::Shutdown(reply)).is_err() {
            Ok(())
        } else {
            rx.await.unwrap_or(Ok(()))
        };
        let thread = self.thread.lock().expect("thread handle lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

pub(crate) fn spawn(
    config: StoreConfig,
    layout: Layout,
    fs: Arc<dyn Fs>,
    db: Arc<Database>,
    stats: Arc<Stats>,
) -> Handle {
    let (tx, rx) = mpsc::channel();
    let committer = Committer {
        config,
        layout,
        fs,
        db,
        stats,
        failed: None,
        deleted_pending: Vec::new(),
        deferred_tmp: Vec::new(),
        deferred_deletes: Vec::new(),
        dirty_since: None,
    };
    let thread = std::thread::Builder::new()
        .name("index-writer".into())
        .spawn(move || committer.run(rx))
        .expect("spawning the index writer thread");
    Handle {
        tx,
        thread: std::sync::Mutex::new(Some(thread)),
    }
}

struct Committer {
    config: StoreConfig,
    layout: Layout,
    fs: Arc<dyn Fs>,
    db: Arc<Database>,
    stats: Arc<Stats>,
    /// Set after a failure the writer cannot recover from; every later request gets it.
    failed: Option<String>,
    /// Replaced files deleted after the last commit, whose `pending_deletes` rows go next.
    deleted_pending: Vec<String>,
    /// Relaxed mode: temporary names and replaced files to remove after the next flush.
    deferred_tmp: Vec<PathBuf>,
    deferred_deletes: Vec<String>,
    /// Relaxed mode: when the first commit not yet flushed was made.
    dirty_since: Option<Instant>,
}

struct Pending {
    request: Box<CommitRequest>,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
    result: Option<Result<Outcome, StoreError>>,
    linked: Option<PathBuf>,
}

impl Committer {
    fn flush_interval(&self) -> Option<Duration> {
        match self.config.durability {
            Durability::Full => None,
            Durability::Relaxed { flush_interval } => Some(flush_interval),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let wait = match (self.flush_interval(), self.dirty_since) {
                (Some(interval), Some(since)) => interval.saturating_sub(since.elapsed()),
                _ => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(wait) {
                Ok(msg) => msg,
                // A failed flush is logged and stops the writer; later requests report it.
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.flush();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.flush();
                    return;
                }
            };
            let mut commits = Vec::new();
            let mut shutdown = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Commit(request, reply) => commits.push(Pending {
                        request,
                        reply,
                        result: None,
                        linked: None,
                    }),
                    Msg::Ping(reply) => {
                        if self.failed.is_none() {
                            let _ = reply.send(());
                        }
                    }
                    Msg::Shutdown(reply) => {
                        shutdown = Some(reply);
                        break;
                    }
                }
                if commits.len() < self.config.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !commits.is_empty() {
                self.batch(commits);
            }
            if self
                .flush_interval()
                .zip(self.dirty_since)
                .is_some_and(|(interval, since)| since.elapsed() >= interval)
            {
                let _ = self.flush();
            }
            if let Some(reply) = shutdown {
                // Requests that raced with the shutdown are refused, never left hanging.
                while let Ok(msg) = rx.try_recv() {
                    if let Msg::Commit(request, reply) = msg {
                        let _ = self.fs.remove_file(&request.tmp);
                        let _ = reply.send(Err(StoreError::ShuttingDown));
                    }
                }
                let result = self.flush();
                info!("index writer stopped; everything acknowledged is durable");
                let _ = reply.send(result);
                return;
            }
        }
    }

    fn batch(&mut self, mut commits: Vec<Pending>) {
        if let Some(why) = &self.failed {
            for p in commits {
                let _ = self.fs.remove_file(&p.request.tmp);
                let _ = p.reply.send(Err(StoreError::WriterFailed(why.clone())));
            }
            return;
        }
        let full = self.config.durability == Durability::Full;
        if let Err(e) = self.mark_duplicates(&mut commits) {
            self.fail_all(commits, e);
            return;
        }

        // 1. In-flight names durable: a crash after the links below must find their record.
        if full && commits.iter().any(|p| p.result.is_none()) {
            let tmp_dir = self.layout.tmp_dir();
            if let Err(e) = self.sync_dir(&tmp_dir) {
                self.fail_all(commits, e);
                return;
            }
        }

        // 2. Final names.
        let mut dirs: Vec<PathBuf> = Vec::new();
        for p in commits.iter_mut().filter(|p| p.result.is_none()) {
            let target = self.layout.absolute(&p.request.record.file);
            let parent = target
                .parent()
                .expect("object paths have a parent")
                .to_path_buf();
            let linked = self.fs.create_dir_all(&parent).and_then(|created| {
                for dir in created {
                    let up = dir
                        .parent()
                        .expect("created dirs have a parent")
                        .to_path_buf();
                    if !dirs.contains(&up) {
                        dirs.push(up);
                    }
                }
                self.fs.hard_link(&p.request.tmp, &target)
            });
            match linked {
                Ok(()) => {
                    p.linked = Some(target);
                    if !dirs.contains(&parent) {
                        dirs.push(parent);
                    }
                }
                Err(e) => p.result = Some(Err(StoreError::io(&target, e))),
            }
        }

        // 3. Final names durable.
        if full {
            // Parents first: a directory's own entry must be durable before its contents matter.
            dirs.sort_by_key(|d| d.components().count());
            for dir in &dirs {
                if let Err(e) = self.sync_dir(dir) {
                    self.fail_all(commits, e);
                    return;
                }
            }
        }

        // 4. The index.
        let now = unix_now();
        let mut replaced = Vec::new();
        let committed = (|| -> Result<(), StoreError> {
            let mut txn = self.db.begin_write()?;
            txn.set_quick_repair(true);
            if !full {
                txn.set_durability(RedbDurability::None)
                    .map_err(|e| StoreError::Inconsistent(e.to_string()))?;
            }
            {
                let mut tables = Tables::open(&txn)?;
                for rel in &self.deleted_pending {
                    tables.pending_deletes.remove(rel.as_str())?;
                }
                let overwrite = self.config.duplicates == DuplicatePolicy::Overwrite;
                for p in commits.iter_mut().filter(|p| p.linked.is_some()) {
                    let filed = tables.file_instance(
                        &p.request.extracted,
                        p.request.record.clone(),
                        overwrite,
                        now,
                    )?;
                    p.result = Some(Ok(match filed {
                        Filed::New => Outcome::Stored,
                        Filed::KeptFirst => Outcome::Duplicate,
                        Filed::Overwrote { old_file } => {
                            tables.pending_deletes.insert(old_file.as_str(), ())?;
                            replaced.push(old_file);
                            Outcome::Overwritten
                        }
                    }));
                }
            }
            txn.commit()?;
            Ok(())
        })();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = committed {
            self.fail_all(commits, e);
            return;
        }
        self.deleted_pending.clear();
        if full {
            self.stats.durable_commits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dirty_since.get_or_insert_with(Instant::now);
        }

        // 5. Answers, then clean-up that no longer matters for durability.
        for p in commits {
            let result = p.result.unwrap_or(Err(StoreError::Inconsistent(
                "instance left unfiled".into(),
            )));
            if matches!(result, Ok(Outcome::Duplicate)) {
                if let Some(linked) = &p.linked {
                    let _ = self.fs.remove_file(linked);
                }
                let _ = self.fs.remove_file(&p.request.tmp);
            } else if result.is_ok() && !full {
                self.deferred_tmp.push(p.request.tmp.clone());
            } else {
                let _ = self.fs.remove_file(&p.request.tmp);
            }
            if let Err(e) = &result {
                warn!(error = %e, "instance not stored");
            }
            let _ = p.reply.send(result);
        }
        if full {
            self.delete_replaced(&replaced);
            self.deleted_pending = replaced;
        } else {
            self.deferred_deletes.extend(replaced);
        }
    }

    /// Marks the requests whose instance is already stored (or stored earlier in this batch)
    /// as duplicates, under the keep-first policy, so their files are never linked.
    fn mark_duplicates(&self, commits: &mut [Pending]) -> Result<(), StoreError> {
        if self.config.duplicates != DuplicatePolicy::KeepFirst {
            return Ok(());
        }
        let txn = self.db.begin_read()?;
        let instances = txn.open_table(index::INSTANCES)?;
        let mut seen = HashSet::new();
        for p in commits.iter_mut() {
            let uid = p.request.extracted.sop_instance_uid.clone();
            if seen.contains(&uid) || instances.get(uid.as_str())?.is_some() {
                info!(sop = %uid, source = %p.request.record.source_ae, "duplicate SOP Instance UID: keeping the stored copy");
                p.result = Some(Ok(Outcome::Duplicate));
            } else {
                seen.insert(uid);
            }
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        self.stats.dir_syncs.fetch_add(1, Ordering::Relaxed);
        self.fs.sync_dir(dir).map_err(|e| StoreError::io(dir, e))
    }

    fn delete_replaced(&self, files: &[String]) {
        for rel in files {
            let path = self.layout.absolute(rel);
            if let Err(e) = self.fs.remove_file(&path) {
                warn!(file = %path.display(), error = %e, "could not delete a replaced file; `outpost verify` will list it");
            }
        }
    }

    /// Fails every request of a batch after a failure of the store itself. Files linked for
    /// them are unlinked again; their index entries were never committed.
    fn fail_all(&mut self, commits: Vec<Pending>, e: StoreError) {
        error!(error = %e, "index writer failed; refusing instances until the service restarts");
        let why = e.to_string();
        self.failed = Some(why.clone());
        for p in commits {
            if let Some(linked) = &p.linked {
                let _ = self.fs.remove_file(linked);
            }
            let _ = self.fs.remove_file(&p.request.tmp);
            let _ = p.reply.send(Err(StoreError::WriterFailed(why.clone())));
        }
    }

    /// Relaxed mode: makes everything acknowledged durable, then removes what only waited
    /// for that.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.dirty_since.is_none() || self.failed.is_some() {
            return Ok(());
        }
        let root = self.layout.root().to_path_buf();
        let result = (|| -> Result<(), StoreError> {
            self.stats.fs_syncs.fetch_add(1, Ordering::Relaxed);
            self.fs
                .sync_all(&root)
                .map_err(|e| StoreError::io(&root, e))?;
            let mut txn = self.db.begin_write()?;
            txn.set_quick_repair(true);
            {
                let mut tables = Tables::open(&txn)?;
                for rel in &self.deleted_pending {
                    tables.pending_deletes.remove(rel.as_str())?;
                }
            }
            txn.commit()?;
            self.stats.durable_commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })();
        if let Err(e) = result {
            error!(error = %e, "flushing the archive failed; refusing instances until the service restarts");
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.dirty_since = None;
        self.deleted_pending.clear();
        for tmp in self.deferred_tmp.drain(..) {
            let _ = self.fs.remove_file(&tmp);
        }
        let deletes = std::mem::take(&mut self.deferred_deletes);
        self.delete_replaced(&deletes);
        self.deleted_pending = deletes;
        Ok(())
    }
}
