//! The group committer: one thread that files finished instances into the index in batches,
//! so that concurrent associations share syncs, and settles them in checkpoints.
//!
//! Whatever requests queued while the previous batch was being committed form the next batch;
//! nothing waits on a timer. An instance reaches the committer as `tmp/<id>.<crc>.<size>.ready`,
//! its data and that name already durable (the ingest task synced both, with
//! `durability = "full"`): from there a power cut cannot lose it, because start-up repair
//! rebuilds everything else from the `.ready` file. A batch:
//!
//! 1. links each `.ready` file to its final name;
//! 2. files every instance in one redb write transaction, committed without a sync;
//! 3. answers every waiting ingest.
//!
//! A checkpoint, at most a second after the first unsettled batch, after 512 unsettled
//! instances, when ingest pauses for 100 ms, and at shutdown, syncs the final directories,
//! commits the index durably, and only then removes the `.ready` names and deletes files
//! replaced by overwrites. Start-up repair therefore never has more than one checkpoint's
//! worth of instances to redo.
//!
//! With `"relaxed"`, the ingest task syncs the file in the background after the
//! acknowledgement, and checkpoints come at most `flush_interval` apart; a checkpoint first
//! waits for the background syncs, so no index entry becomes durable before its data.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use redb::{Durability as RedbDurability, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::cache::{self, Candidate};
use crate::fs::Fs;
use crate::index::{self, Filed, Tables};
use crate::layout::{Layout, unix_now};
use crate::outbox::{self, Enqueuer, QueueOp};
use crate::quarantine::{self, Held, PatientConflictPolicy, QuarantineError, Resolution};
use crate::reconcile::{self, Scope};
use crate::record::{self, Extracted, InstanceRecord};
use crate::slot::IndexSlot;
use crate::stall::{SyncKind, SyncWatch};
use crate::{Background, DuplicatePolicy, Durability, Stats, StoreConfig, StoreError};

/// Most instances acknowledged but not yet checkpointed: bounds the repair after a crash.
const MAX_UNSETTLED: usize = 512;
/// Longest time an acknowledged instance waits for its checkpoint with full durability.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// A pause in ingest this long settles what is pending.
const IDLE_CHECKPOINT: Duration = Duration::from_millis(100);
/// With the volume full, free space is looked at this often, and a failed recovery is tried
/// again after this long, doubling up to [`FULL_MAX_RETRY`].
const FULL_RETRY: Duration = Duration::from_secs(1);
const FULL_MAX_RETRY: Duration = Duration::from_secs(60);
/// The least free space a recovery waits for, besides the floor: the re-filing and the
/// index's growth need room of their own.
const FULL_HEADROOM: u64 = 64 << 20;

/// How storing one instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as a new instance.
    Stored,
    /// Already stored; the first copy was kept and this one discarded.
    Duplicate,
    /// Already stored; this copy replaced the first.
    Overwritten,
    /// Its patient disagrees with its study's: kept durably in quarantine, served to nobody
    /// until resolved (see [`crate::quarantine`]).
    Quarantined { seq: u64 },
}

/// Changes other than filing instances, from one caller each: queue operations, cache
/// evictions, study accesses. They share one transaction per round.
enum Maintenance {
    Queue(Vec<QueueOp>, oneshot::Sender<Result<(), StoreError>>),
    Evict(
        Vec<Candidate>,
        oneshot::Sender<Result<Vec<Candidate>, StoreError>>,
    ),
    Touch(Vec<String>, oneshot::Sender<Result<(), StoreError>>),
    Resolve(
        u64,
        Resolution,
        oneshot::Sender<Result<Held, QuarantineError>>,
    ),
}

impl Maintenance {
    fn fail(self, e: StoreError) {
        match self {
            Maintenance::Queue(_, r) | Maintenance::Touch(_, r) => {
                let _ = r.send(Err(e));
            }
            Maintenance::Evict(_, r) => {
                let _ = r.send(Err(e));
            }
            Maintenance::Resolve(_, _, r) => {
                let _ = r.send(Err(e.into()));
            }
        }
    }
}

pub(crate) struct CommitRequest {
    /// The `.ready` file.
    pub tmp: PathBuf,
    pub extracted: Extracted,
    pub record: InstanceRecord,
}

enum Msg {
    Commit(
        Box<CommitRequest>,
        oneshot::Sender<Result<Outcome, StoreError>>,
    ),
    Maintenance(Maintenance),
    Ping(oneshot::Sender<()>),
    /// Checkpoint now rather than when due (the appliance is on battery).
    Checkpoint(oneshot::Sender<Result<(), StoreError>>),
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

    pub async fn queue(&self, ops: Vec<QueueOp>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Maintenance(Maintenance::Queue(ops, reply)))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Marks candidates evicted (those still evictable); their files go at the next
    /// checkpoint.
    pub async fn evict(&self, candidates: Vec<Candidate>) -> Result<Vec<Candidate>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Maintenance(Maintenance::Evict(candidates, reply)))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    pub async fn touch(&self, studies: Vec<String>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Maintenance(Maintenance::Touch(studies, reply)))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Applies a person's decision on a quarantined instance.
    pub async fn resolve(&self, seq: u64, resolution: Resolution) -> Result<Held, QuarantineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Maintenance(Maintenance::Resolve(
                seq, resolution, reply,
            )))
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

    /// Makes everything acknowledged so far durable now, at a checkpoint, instead of within
    /// the checkpoint interval.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Stops the writer once everything acknowledged is checkpointed, and waits for its thread
    /// to end, so the index file is released when this returns (the store's other handles
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
    index: Arc<IndexSlot>,
    stats: Arc<Stats>,
    background: Arc<Background>,
    outbox_changes: Arc<tokio::sync::watch::Sender<u64>>,
    syncs: Arc<SyncWatch>,
    index_full: Arc<AtomicBool>,
) -> Handle {
    let (tx, rx) = mpsc::channel();
    let syncer = match config.durability {
        Durability::Full => None,
        Durability::Relaxed { .. } => {
            Some(Syncer::spawn(fs.clone(), stats.clone(), background.clone()))
        }
    };
    let committer = Committer {
        syncer,
        config,
        layout,
        fs,
        index,
        stats,
        background,
        outbox_changes,
        syncs,
        failed: None,
        full: None,
        index_full,
        deleted_pending: Vec::new(),
        unsettled: Unsettled::default(),
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

/// What acknowledged instances still wait for from the next checkpoint.
#[derive(Default)]
struct Unsettled {
    /// `.ready` names to remove.
    ready: Vec<PathBuf>,
    /// Final directories (and parents of new ones) whose entries are not yet durable.
    dirs: Vec<PathBuf>,
    /// Files replaced by overwrites, to delete once the index no longer needs them.
    replaced: Vec<String>,
    /// When the oldest unsettled commit was made.
    since: Option<Instant>,
}

struct Committer {
    config: StoreConfig,
    layout: Layout,
    fs: Arc<dyn Fs>,
    index: Arc<IndexSlot>,
    stats: Arc<Stats>,
    background: Arc<Background>,
    /// Bumped after every transaction that queued deliveries or changed the queues.
    outbox_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Relaxed durability: syncs acknowledged files in the background.
    syncer: Option<Syncer>,
    /// The index's durable commits are registered here, as the file system's syncs are.
    syncs: Arc<SyncWatch>,
    /// Set after a failure the writer cannot recover from; every later request gets it.
    failed: Option<String>,
    /// Set while the data volume is too full for the index to take changes; see
    /// [`Committer::recover`]. Shared with ingest (`index_full`), which refuses new instances.
    full: Option<Full>,
    index_full: Arc<AtomicBool>,
    /// Replaced files deleted at the last checkpoint, whose `pending_deletes` rows go next.
    deleted_pending: Vec<String>,
    unsettled: Unsettled,
}

/// When to look again whether the full volume has room.
struct Full {
    next_try: Instant,
    backoff: Duration,
}

/// What requests are told after the index failed.
enum Refusal {
    Full,
    Failed(String),
}

impl Refusal {
    fn error(&self) -> StoreError {
        match self {
            Refusal::Full => StoreError::IndexFull,
            Refusal::Failed(why) => StoreError::WriterFailed(why.clone()),
        }
    }
}

/// ENOSPC or EDQUOT, from the file system or from redb.
fn is_out_of_space(e: &StoreError) -> bool {
    use redb::{CommitError, StorageError, TableError, TransactionError};
    let io = match e {
        StoreError::Io { source, .. } => Some(source),
        StoreError::Storage(StorageError::Io(io))
        | StoreError::Commit(CommitError::Storage(StorageError::Io(io)))
        | StoreError::Transaction(TransactionError::Storage(StorageError::Io(io)))
        | StoreError::Table(TableError::Storage(StorageError::Io(io))) => Some(io),
        _ => None,
    };
    io.and_then(|io| io.raw_os_error())
        .is_some_and(|n| n == nix::libc::ENOSPC || n == nix::libc::EDQUOT)
}

struct Pending {
    request: Box<CommitRequest>,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
    result: Option<Result<Outcome, StoreError>>,
    linked: Option<PathBuf>,
}

impl Committer {
    fn interval(&self) -> Duration {
        match self.config.durability {
            Durability::Full => CHECKPOINT_INTERVAL,
            Durability::Relaxed { flush_interval } => flush_interval,
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.unsettled.ready.len() >= MAX_UNSETTLED
            || self
                .unsettled
                .since
                .is_some_and(|t| t.elapsed() >= self.interval())
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            if self
                .full
                .as_ref()
                .is_some_and(|f| Instant::now() >= f.next_try)
            {
                self.recover();
            }
            let wait = match self.unsettled.since {
                Some(t) => IDLE_CHECKPOINT.min(self.interval().saturating_sub(t.elapsed())),
                None => Duration::from_secs(3600),
            };
            let wait = if self.full.is_some() {
                wait.min(FULL_RETRY)
            } else {
                wait
            };
            let first = match rx.recv_timeout(wait) {
                Ok(msg) => msg,
                // A failed checkpoint is logged and stops the writer; later requests report it.
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.checkpoint();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.checkpoint();
                    return;
                }
            };
            let mut commits = Vec::new();
            let mut maintenance: Vec<Maintenance> = Vec::new();
            let mut shutdown = None;
            let mut checkpoints = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Commit(request, reply) => commits.push(Pending {
                        request,
                        reply,
                        result: None,
                        linked: None,
                    }),
                    Msg::Maintenance(m) => maintenance.push(m),
                    Msg::Ping(reply) => {
                        if self.failed.is_none() {
                            let _ = reply.send(());
                        }
                    }
                    Msg::Checkpoint(reply) => checkpoints.push(reply),
                    Msg::Shutdown(reply) => {
                        shutdown = Some(reply);
                        break;
                    }
                }
                if commits.len() < self.config.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !maintenance.is_empty() {
                self.maintain(maintenance);
            }
            if !commits.is_empty() {
                self.batch(commits);
            }
            if !checkpoints.is_empty() {
                // A failed checkpoint stops the writer, so `failed` then says why.
                let result = match (&self.failed, &self.full) {
                    (None, None) => self.checkpoint().map_err(|_| ()),
                    _ => Err(()),
                };
                for reply in checkpoints {
                    let _ = reply.send(result.map_err(|()| self.refusal().error()));
                }
            } else if self.checkpoint_due() {
                let _ = self.checkpoint();
            }
            if let Some(reply) = shutdown {
                // Requests that raced with the shutdown are refused, never left hanging.
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Commit(request, reply) => {
                            let _ = self.fs.remove_file(&request.tmp);
                            let _ = reply.send(Err(StoreError::ShuttingDown));
                        }
                        Msg::Maintenance(m) => m.fail(StoreError::ShuttingDown),
                        Msg::Checkpoint(reply) => {
                            let _ = reply.send(Err(StoreError::ShuttingDown));
                        }
                        Msg::Ping(_) | Msg::Shutdown(_) => {}
                    }
                }
                let result = self.checkpoint();
                info!("index writer stopped; everything acknowledged is checkpointed");
                let _ = reply.send(result);
                return;
            }
        }
    }

    /// What requests are told while the writer cannot take them.
    fn refusal(&self) -> Refusal {
        match &self.failed {
            Some(why) => Refusal::Failed(why.clone()),
            None => Refusal::Full,
        }
    }

    /// Handles a failure of the index itself. The volume filling up is one the archive
    /// recovers from: the writer refuses changes until there is room again
    /// ([`Committer::recover`]), and reopens the index at once, because redb latches the
    /// error and queries would fail on the old handle too. Anything else stops the writer
    /// until a restart rather than guess.
    fn index_failed(&mut self, e: StoreError, doing: &str) -> Refusal {
        if self.failed.is_none() && (self.full.is_some() || is_out_of_space(&e)) {
            if self.full.is_none() {
                error!(error = %e, "the data volume is full: {doing} failed; refusing new instances until space is freed, queries go on");
                self.full = Some(Full {
                    next_try: Instant::now() + FULL_RETRY,
                    backoff: FULL_RETRY,
                });
                self.index_full.store(true, Ordering::SeqCst);
            }
            if let Err(e) = self.index.reopen() {
                error!(error = %e, "reopening the index after the volume filled failed; queries fail until it reopens");
            }
            return Refusal::Full;
        }
        error!(error = %e, "index writer failed {doing}; refusing instances until the service restarts");
        let why = e.to_string();
        self.failed.get_or_insert(why);
        self.refusal()
    }

    /// With the volume full: once there is room again, re-files what the reopen took out of
    /// the index (the instances acknowledged since the last checkpoint, whose `.ready` names
    /// are still there, by start-up repair's rules) and takes changes again.
    fn recover(&mut self) {
        let Some(full) = &mut self.full else { return };
        let room = self.config.min_free_bytes.saturating_add(FULL_HEADROOM);
        let free = self.fs.available_bytes(self.layout.root()).unwrap_or(0);
        if free < room {
            full.next_try = Instant::now() + FULL_RETRY;
            return;
        }
        let result = self.index.get().and_then(|db| {
            reconcile::run(
                &self.config,
                &self.layout,
                self.fs.as_ref(),
                &db,
                Scope::Unsettled(&self.unsettled.ready),
            )
        });
        match result {
            Ok((done, _)) => {
                info!(
                    refiled = done.finished_indexed,
                    free_mb = free >> 20,
                    "the data volume has room again: the index takes changes and new instances are accepted"
                );
                // Repair made them durable and removed their `.ready` names, and deleted
                // what `pending_deletes` lists.
                self.unsettled = Unsettled::default();
                self.deleted_pending.clear();
                self.full = None;
                self.index_full.store(false, Ordering::SeqCst);
                self.outbox_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            Err(e)
                if is_out_of_space(&e)
                    || matches!(e, StoreError::IndexReopening | StoreError::Open(_)) =>
            {
                let backoff = (full.backoff * 2).min(FULL_MAX_RETRY);
                warn!(error = %e, retry_s = backoff.as_secs(), "the data volume is still too full for the index");
                full.backoff = backoff;
                full.next_try = Instant::now() + backoff;
                if let Err(e) = self.index.reopen() {
                    error!(error = %e, "reopening the index failed; trying again");
                }
            }
            Err(e) => {
                self.full = None;
                self.index_full.store(false, Ordering::SeqCst);
                self.index_failed(e, "re-filing instances after the volume filled");
            }
        }
    }

    fn batch(&mut self, mut commits: Vec<Pending>) {
        if self.failed.is_some() || self.full.is_some() {
            let refusal = self.refusal();
            for p in commits {
                let _ = self.fs.remove_file(&p.request.tmp);
                let _ = p.reply.send(Err(refusal.error()));
            }
            return;
        }
        if let Err(e) = self.screen(&mut commits) {
            self.fail_all(commits, e);
            return;
        }

        // 1. Final names (made durable by the checkpoint).
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
                    push_unique(&mut self.unsettled.dirs, up);
                }
                self.fs.hard_link(&p.request.tmp, &target)
            });
            match linked {
                Ok(()) => {
                    p.linked = Some(target);
                    push_unique(&mut self.unsettled.dirs, parent);
                }
                Err(e) => p.result = Some(Err(StoreError::io(&target, e))),
            }
        }

        // 2. The index, visible at once, durable at the checkpoint.
        let now = unix_now();
        let mut replaced = Vec::new();
        let mut queued = 0;
        let mut bytes = 0i64;
        let mut touched = std::collections::BTreeSet::new();
        let committed = (|| -> Result<(), StoreError> {
            let mut txn = self.index.get()?.begin_write()?;
            txn.set_durability(RedbDurability::None)
                .map_err(|e| StoreError::Inconsistent(e.to_string()))?;
            let mut enqueuer = match &self.config.router {
                Some(router) => Some(Enqueuer::new(router.as_ref(), &txn)?),
                None => None,
            };
            {
                let mut tables = Tables::open(&txn)?;
                for rel in &self.deleted_pending {
                    tables.pending_deletes.remove(rel.as_str())?;
                }
                let overwrite = self.config.duplicates == DuplicatePolicy::Overwrite;
                for p in commits.iter_mut().filter(|p| p.linked.is_some()) {
                    let sop = p.request.extracted.sop_instance_uid.as_str();
                    // An instance whose file was evicted and arrives again: from upstream (a
                    // recall) it takes its place whatever the duplicate policy, since the
                    // index entry was waiting for exactly this file; from a modality it is
                    // an overwrite like any other (keep-first ones never get here).
                    let evicted_old = match tables.instances.get(sop)? {
                        Some(v) if cache::is_evicted(&txn, sop)? => {
                            Some(record::decode::<InstanceRecord>(v.value())?)
                        }
                        _ => None,
                    };
                    let recalled = evicted_old.is_some() && self.comes_from_upstream(&p.request);
                    let size = p.request.record.size as i64;
                    let filed = tables.file_or_quarantine(
                        &p.request.extracted,
                        p.request.record.clone(),
                        overwrite || recalled,
                        now,
                    )?;
                    if let Filed::Quarantined { seq } = filed {
                        // Its file is held (and counted) but it is filed nowhere, queued
                        // nowhere and touches no study.
                        bytes += size;
                        p.result = Some(Ok(Outcome::Quarantined { seq }));
                        continue;
                    }
                    if self.config.cache.is_some() && filed != Filed::KeptFirst {
                        touched.insert(p.request.extracted.study_uid.clone());
                    }
                    if let Some(old) = &evicted_old
                        && filed != Filed::KeptFirst
                    {
                        // The old file is already gone and its bytes already uncounted.
                        cache::unmark_evicted(&txn, sop, old)?;
                        bytes += size;
                        if recalled {
                            let got = &p.request.record;
                            if (got.size, got.crc32c) != (old.size, old.crc32c) {
                                // The upstream archive held another version than the one
                                // evicted (a correction it never took): say so, loudly.
                                error!(
                                    sop,
                                    evicted_size = old.size,
                                    evicted_crc32c = old.crc32c,
                                    recalled_size = got.size,
                                    recalled_crc32c = got.crc32c,
                                    "the recalled copy differs from the copy that was evicted: \
                                     the upstream archive holds another version of this instance"
                                );
                                outbox::record_recall_mismatch(
                                    &txn,
                                    sop,
                                    &outbox::RecallMismatch {
                                        evicted_size: old.size,
                                        evicted_crc32c: old.crc32c,
                                        recalled_size: got.size,
                                        recalled_crc32c: got.crc32c,
                                        at: now,
                                    },
                                )?;
                            }
                            p.result = Some(Ok(Outcome::Stored));
                            continue;
                        }
                        outbox::mark_overwritten(&txn, sop)?;
                        if let Some(enqueuer) = enqueuer.as_mut() {
                            enqueuer.enqueue(
                                &txn,
                                &p.request.extracted,
                                &p.request.record.source_ae,
                                now,
                            )?;
                        }
                        p.result = Some(Ok(Outcome::Overwritten));
                        continue;
                    }
                    // Stored implies queued: the outbox entries go in this same transaction.
                    if filed != Filed::KeptFirst
                        && let Some(enqueuer) = enqueuer.as_mut()
                    {
                        enqueuer.enqueue(
                            &txn,
                            &p.request.extracted,
                            &p.request.record.source_ae,
                            now,
                        )?;
                    }
                    p.result = Some(Ok(match filed {
                        Filed::New => {
                            bytes += size;
                            Outcome::Stored
                        }
                        Filed::KeptFirst => Outcome::Duplicate,
                        Filed::Quarantined { seq } => Outcome::Quarantined { seq },
                        Filed::Overwrote { old_file, old_size } => {
                            outbox::mark_overwritten(&txn, sop)?;
                            bytes += size - old_size as i64;
                            tables.pending_deletes.insert(old_file.as_str(), ())?;
                            replaced.push(old_file);
                            Outcome::Overwritten
                        }
                    }));
                }
            }
            cache::add_stored_bytes(&txn, bytes)?;
            for study in &touched {
                cache::touch(&txn, study, now)?;
            }
            if let Some(enqueuer) = enqueuer {
                queued = enqueuer.finish(&txn)?;
            }
            txn.commit()?;
            Ok(())
        })();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if queued > 0 {
            self.outbox_changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        if let Err(e) = committed {
            self.fail_all(commits, e);
            return;
        }
        self.deleted_pending.clear();
        self.unsettled.replaced.extend(replaced);

        // 3. Answers.
        for p in commits {
            let result = p.result.unwrap_or(Err(StoreError::Inconsistent(
                "instance left unfiled".into(),
            )));
            match &result {
                Ok(Outcome::Duplicate) => {
                    if let Some(linked) = &p.linked {
                        let _ = self.fs.remove_file(linked);
                    }
                    let _ = self.fs.remove_file(&p.request.tmp);
                }
                Ok(_) => {
                    if let Some(syncer) = &self.syncer {
                        syncer.sync(p.request.tmp.clone());
                    }
                    self.unsettled.ready.push(p.request.tmp.clone());
                    self.unsettled.since.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    warn!(error = %e, "instance not stored");
                    let _ = self.fs.remove_file(&p.request.tmp);
                }
            }
            let _ = p.reply.send(result);
        }
    }

    /// Applies workers' queue changes (acks, retries, dead letters), people's (pause,
    /// resubmit), cache evictions and study accesses in one transaction, made durable by the
    /// next checkpoint like everything else: a lost ack after a power cut means a delivery
    /// is repeated, never lost, and an evicted file is deleted only after its mark is durable.
    fn maintain(&mut self, requests: Vec<Maintenance>) {
        if self.failed.is_some() || self.full.is_some() {
            let refusal = self.refusal();
            for m in requests {
                m.fail(refusal.error());
            }
            return;
        }
        let now = unix_now();
        let mut evicted: Vec<Vec<Candidate>> = Vec::new();
        let mut resolved: Vec<Result<Held, QuarantineError>> = Vec::new();
        let applied = (|| -> Result<(), StoreError> {
            let mut txn = self.index.get()?.begin_write()?;
            txn.set_durability(RedbDurability::None)
                .map_err(|e| StoreError::Inconsistent(e.to_string()))?;
            for m in &requests {
                match m {
                    Maintenance::Queue(ops, _) => {
                        outbox::apply(&txn, ops, now, self.config.router.as_deref())?
                    }
                    Maintenance::Evict(candidates, _) => {
                        let protect = self.config.cache.map_or(0, |c| c.protect_recent_s);
                        let marked = cache::mark_evicted(&txn, candidates, protect)?;
                        let mut pending = txn.open_table(index::PENDING_DELETES)?;
                        for c in &marked {
                            pending.insert(c.file.as_str(), ())?;
                        }
                        evicted.push(marked);
                    }
                    Maintenance::Touch(studies, _) => {
                        for s in studies {
                            cache::touch(&txn, s, now)?;
                        }
                    }
                    Maintenance::Resolve(seq, resolution, _) => {
                        resolved.push(self.resolve(&txn, *seq, resolution, now)?);
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        match applied {
            Ok(()) => {
                self.unsettled.since.get_or_insert_with(Instant::now);
                self.outbox_changes.send_modify(|n| *n = n.wrapping_add(1));
                let mut evicted = evicted.into_iter();
                let mut resolved = resolved.into_iter();
                for m in requests {
                    match m {
                        Maintenance::Queue(_, reply) | Maintenance::Touch(_, reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Maintenance::Evict(_, reply) => {
                            let marked = evicted.next().unwrap_or_default();
                            self.unsettled
                                .replaced
                                .extend(marked.iter().map(|c| c.file.clone()));
                            let _ = reply.send(Ok(marked));
                        }
                        Maintenance::Resolve(_, resolution, reply) => {
                            let result = resolved.next().unwrap_or(Err(QuarantineError::Store(
                                StoreError::Inconsistent("resolution left unapplied".into()),
                            )));
                            if let (Ok(held), Resolution::Delete) = (&result, &resolution) {
                                // Deleted once its removal is durable, like a replaced file.
                                self.unsettled.replaced.push(held.record.file.clone());
                            }
                            let _ = reply.send(result);
                        }
                    }
                }
            }
            Err(e) => {
                // A change that cannot be written is the index failing, like a failed batch.
                let refusal = self.index_failed(e, "applying queue or cache changes");
                for m in requests {
                    m.fail(refusal.error());
                }
            }
        }
    }

    /// Applies one decision on a held instance inside the maintenance transaction. A person's
    /// mistake (no such number, a UID already taken) is their answer; only a failure of the
    /// index itself fails the transaction.
    fn resolve(
        &self,
        txn: &redb::WriteTransaction,
        seq: u64,
        resolution: &Resolution,
        now: u64,
    ) -> Result<Result<Held, QuarantineError>, StoreError> {
        let held = {
            let mut tables = Tables::open(txn)?;
            let held = match tables.quarantine.get(seq)? {
                Some(v) => record::decode::<Held>(v.value())?,
                None => return Ok(Err(QuarantineError::NotHeld(seq))),
            };
            match resolution {
                Resolution::Assign => {
                    let sop = held.extracted.sop_instance_uid.as_str();
                    if tables.instances.get(sop)?.is_some() {
                        return Ok(Err(QuarantineError::UidTaken(sop.to_string())));
                    }
                    // Filed as any instance naming this study is: under the study's patient,
                    // the demographic disagreement recorded in `patient_conflicts`.
                    tables.file_instance(&held.extracted, held.record.clone(), false, now)?;
                }
                Resolution::Delete => {
                    tables
                        .pending_deletes
                        .insert(held.record.file.as_str(), ())?;
                }
            }
            tables.quarantine.remove(seq)?;
            held
        };
        match resolution {
            Resolution::Assign => {
                // Stored implies queued, from the moment it is stored for queries too.
                if let Some(router) = &self.config.router {
                    let mut enqueuer = Enqueuer::new(router.as_ref(), txn)?;
                    enqueuer.enqueue(txn, &held.extracted, &held.record.source_ae, now)?;
                    enqueuer.finish(txn)?;
                }
                if self.config.cache.is_some() {
                    cache::touch(txn, &held.extracted.study_uid, now)?;
                }
            }
            Resolution::Delete => cache::add_stored_bytes(txn, -(held.record.size as i64))?,
        }
        info!(seq, sop = %held.extracted.sop_instance_uid, resolution = ?resolution, "quarantined instance resolved");
        Ok(Ok(held))
    }

    /// Whether an instance comes from upstream (the routing rules send it nowhere), so that a
    /// copy of an evicted instance is a recall rather than a new copy.
    fn comes_from_upstream(&self, request: &CommitRequest) -> bool {
        self.config.router.as_ref().is_none_or(|r| {
            r.route(&request.record.source_ae, &request.extracted)
                .is_empty()
        })
    }

    /// Screens a batch before any file is linked: under keep-first, the requests whose
    /// instance is already stored (or stored earlier in this batch) are duplicates, never
    /// linked, unless the stored instance belongs to another patient or study (then it goes
    /// on, to be quarantined, instead of being dropped silently); under
    /// `patient_conflict = "reject"`, a request whose patient disagrees with its study's is
    /// refused here. A conflict with a study created earlier in the same batch is not visible
    /// from this snapshot: such an instance is quarantined by the filing instead, whatever
    /// the policy, which is the safe side.
    fn screen(&self, commits: &mut [Pending]) -> Result<(), StoreError> {
        let keep_first = self.config.duplicates == DuplicatePolicy::KeepFirst;
        let reject = self.config.patient_conflict == PatientConflictPolicy::Reject;
        if !keep_first && !reject {
            return Ok(());
        }
        let txn = self.index.get()?.begin_read()?;
        let instances = txn.open_table(index::INSTANCES)?;
        let series = txn.open_table(index::SERIES)?;
        let studies = txn.open_table(index::STUDIES)?;
        let evicted = txn.open_table(cache::EVICTED)?;
        let mut seen = HashSet::new();
        for p in commits.iter_mut() {
            let x = &p.request.extracted;
            let uid = x.sop_instance_uid.clone();
            let is_evicted = evicted.get(uid.as_str())?.is_some();
            let stored = instances.get(uid.as_str())?.is_some() && !is_evicted;
            let overwrite = !keep_first || is_evicted;
            let conflict = quarantine::find_conflict(&instances, &series, &studies, x, overwrite)?;
            if reject && let Some(conflict) = conflict {
                warn!(
                    sop = %uid,
                    source = %p.request.record.source_ae,
                    conflict = %conflict,
                    "patient conflict: instance refused (patient_conflict = \"reject\")"
                );
                p.result = Some(Err(StoreError::PatientConflict(Box::new(conflict))));
                continue;
            }
            if !keep_first {
                continue;
            }
            if seen.contains(&uid) || (stored && conflict.is_none()) {
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

    /// Fails every request of a batch after a failure of the store itself. Files linked for
    /// them are unlinked again; their index entries were never committed.
    fn fail_all(&mut self, commits: Vec<Pending>, e: StoreError) {
        let refusal = self.index_failed(e, "filing instances");
        for p in commits {
            if let Some(linked) = &p.linked {
                let _ = self.fs.remove_file(linked);
            }
            let _ = self.fs.remove_file(&p.request.tmp);
            let _ = p.reply.send(Err(refusal.error()));
        }
    }

    /// Makes everything acknowledged durable in its final form, then removes what only
    /// waited for that.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.failed.is_some() || self.full.is_some() {
            // What is unsettled stays so: start-up repair (or the recovery) re-files it.
            return Err(self.refusal().error());
        }
        if self.unsettled.since.is_none() && self.deleted_pending.is_empty() {
            return Ok(());
        }
        let result = (|| -> Result<(), StoreError> {
            // With relaxed durability, file data is synced in the background after the
            // acknowledgement: wait for those syncs, so that no index entry becomes durable
            // before its data. New requests wait meanwhile; the syncs are already running.
            let waited = Instant::now();
            while self.background.outstanding.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(Duration::from_micros(200));
                if waited.elapsed() > Duration::from_secs(60) {
                    return Err(StoreError::WriterFailed(
                        "background file syncs did not finish in 60 s".into(),
                    ));
                }
            }
            if let Some(e) = self.background.failed.lock().expect("failure lock").take() {
                return Err(StoreError::WriterFailed(format!(
                    "syncing a received file failed: {e}"
                )));
            }
            // Parents first: a directory's own entry must be durable before its contents.
            let mut dirs = std::mem::take(&mut self.unsettled.dirs);
            dirs.sort_by_key(|d| d.components().count());
            for dir in &dirs {
                self.sync_dir(dir)?;
            }
            let mut txn = self.index.get()?.begin_write()?;
            txn.set_quick_repair(true);
            {
                let mut tables = Tables::open(&txn)?;
                for rel in &self.deleted_pending {
                    tables.pending_deletes.remove(rel.as_str())?;
                }
            }
            {
                let _running = self.syncs.begin(SyncKind::Index, &self.layout.index());
                txn.commit()?;
            }
            self.stats.durable_commits.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })();
        if let Err(e) = result {
            return Err(self.index_failed(e, "checkpointing").error());
        }
        self.deleted_pending.clear();
        for ready in self.unsettled.ready.drain(..) {
            let _ = self.fs.remove_file(&ready);
        }
        let replaced = std::mem::take(&mut self.unsettled.replaced);
        for rel in &replaced {
            let path = self.layout.absolute(rel);
            if let Err(e) = self.fs.remove_file(&path) {
                warn!(file = %path.display(), error = %e, "could not delete a replaced file; `outpost verify` will list it");
            }
        }
        self.deleted_pending = replaced;
        self.unsettled.since = None;
        Ok(())
    }
}

/// Background file syncs for relaxed durability: two threads taking paths from a queue. Each
/// queued file is counted in `Background::outstanding` until its sync is done, and a
/// checkpoint waits for the count to reach zero.
struct Syncer {
    tx: mpsc::Sender<PathBuf>,
    background: Arc<Background>,
}

impl Syncer {
    fn spawn(fs: Arc<dyn Fs>, stats: Arc<Stats>, background: Arc<Background>) -> Syncer {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for n in 0..2 {
            let (fs, stats, background, rx) =
                (fs.clone(), stats.clone(), background.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("file-syncer-{n}"))
                .spawn(move || {
                    loop {
                        let next = rx.lock().expect("syncer queue lock").recv();
                        let Ok(path) = next else { return };
                        match fs.sync_file(&path) {
                            Ok(()) => {
                                stats.file_syncs.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                *background.failed.lock().expect("failure lock") =
                                    Some(format!("{}: {e}", path.display()));
                            }
                        }
                        background.outstanding.fetch_sub(1, Ordering::SeqCst);
                    }
                })
                .expect("spawning a file syncer thread");
        }
        Syncer { tx, background }
    }

    fn sync(&self, path: PathBuf) {
        self.background.outstanding.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(path).is_err() {
            self.background.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn push_unique(v: &mut Vec<PathBuf>, p: PathBuf) {
    if !v.contains(&p) {
        v.push(p);
    }
}
