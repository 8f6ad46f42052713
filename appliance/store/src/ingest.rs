//! Receiving one instance: data set bytes stream into `tmp/<id>.part` behind a Part 10 header
//! (or into a spare file made ahead), through a walker that checks them and captures the
//! indexed attributes, with at most two write buffers in memory whatever the instance's size.
//! A whole instance is renamed `tmp/<id>.<seq>.<crc>.<size>.ready` and handed to the
//! committer.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use dataset::meta::encode_file_meta;
use dataset::ts::{syntax_info, trim_uid};
use dataset::{Capture, Walker};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::commit::{CommitRequest, Outcome};
use crate::fs::FileWriter;
use crate::layout::{FileId, unix_now};
use crate::record::{self, ExtractError, InstanceRecord, MAX_INDEXED_VALUE};
use crate::{Durability, Store, StoreError};

/// Most bytes gathered while a write is in flight; one write may be in flight while the next
/// buffer fills.
const WRITE_CHUNK: usize = 256 * 1024;
/// Fewest bytes worth a write of their own before the data set ends. Every write is a trip to
/// the blocking pool and back; on a small machine those trips, not the copying, are what an
/// instance costs, so bytes wait for company unless a whole chunk is ready.
const WRITE_MIN: usize = 128 * 1024;
/// Fragments smaller than this are copied together; larger ones are written as they came,
/// without a copy (at the size of a P-DATA fragment, the copy costs more than the extra
/// `write` call).
const COALESCE_BELOW: usize = 32 * 1024;
/// Bytes an instance reserves against the free-space floor before they arrive: the first
/// reservation, doubling with each further one up to `RESERVE_MAX`. Every reservation checks
/// free space minus what all associations hold reserved, so concurrent instances cannot
/// together write past the floor; small first reservations keep a nearly full volume taking
/// small instances, larger later ones keep large instances from checking too often.
const RESERVE_FIRST: u64 = 256 * 1024;
const RESERVE_MAX: u64 = 4 * 1024 * 1024;

/// A write running on the blocking pool; it hands the writer back (once the file exists)
/// with its result.
type WriteTask = JoinHandle<(Option<Box<dyn FileWriter>>, std::io::Result<()>)>;

/// What the sender says about the instance before its data set arrives.
#[derive(Clone, Debug)]
pub struct IngestRequest {
    /// Affected SOP Class UID of the C-STORE (or MediaStorageSOPClassUID of an imported file).
    pub sop_class_uid: String,
    /// Affected SOP Instance UID of the C-STORE.
    pub sop_instance_uid: String,
    /// Transfer syntax the data set bytes are in; stored as received.
    pub transfer_syntax: String,
    /// Calling AE title ("" for imports).
    pub source_ae: String,
}

/// What storing one instance did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub outcome: Outcome,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub patient_id: String,
    /// Bytes of the stored file.
    pub bytes: u64,
}

/// Why one instance was not stored. Nothing of it remains on disk or in the index.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "only {available} bytes free on the data volume, below the floor of {floor}; refusing new instances until space is freed"
    )]
    OutOfSpace { available: u64, floor: u64 },
    #[error("the archive is not accepting instances: {0}")]
    Held(String),
    #[error("transfer syntax {0} is not known, so the data set cannot be read")]
    UnknownTransferSyntax(String),
    #[error("{0}")]
    Unparseable(#[from] dataset::WalkError),
    /// A tag repeats, or many break ascending order (PS3.5 7.1); the message leads with the
    /// element, since the sender sees only its first 64 characters (Error Comment).
    #[error("{}", .0.kind)]
    TagOrder(dataset::WalkError),
    #[error("{0}")]
    Unindexable(#[from] ExtractError),
    #[error("data set SOP Instance UID {dataset} differs from the command's {command}")]
    InstanceMismatch { command: String, dataset: String },
    #[error("data set SOP Class UID {dataset} differs from the command's {command}")]
    ClassMismatch { command: String, dataset: String },
    #[error("writing the instance failed: {0}")]
    Write(#[source] std::io::Error),
    /// Refused under `patient_conflict = "reject"`: the message names both Patient IDs and
    /// the study.
    #[error("{0}")]
    PatientConflict(Box<crate::PatientConflict>),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// One instance being received; see the module documentation.
pub struct Ingest {
    store: Store,
    request: IngestRequest,
    id: FileId,
    tmp: PathBuf,
    /// The writer, when the file exists and no write is in flight: a spare's (see
    /// [`crate::spare`]), or else created by the first write, so that creating it costs no
    /// trip to the blocking pool of its own.
    writer: Option<Box<dyn FileWriter>>,
    in_flight: Option<WriteTask>,
    /// Bytes waiting for the next write: fragments as received, small ones joined.
    buffer: Vec<Vec<u8>>,
    buffered: usize,
    /// Taken when the data set ends.
    walker: Option<Walker>,
    crc: u32,
    header_len: u64,
    written: u64,
    /// Bytes this instance holds in `Inner::in_flight`: reserved, not yet on disk.
    reserved: u64,
    /// Of `reserved`, bytes not yet arrived.
    budget: u64,
    /// Bytes of the write on the blocking pool, released from `reserved` when it is done.
    writing: u64,
    /// The first failure; later bytes are only counted, so the sender can be answered after
    /// its last fragment.
    failed: Option<IngestError>,
    /// Set once the temporary file is gone or handed to the committer.
    settled: bool,
}

impl Store {
    /// Starts storing one instance. Fails without touching the disk when free space is below
    /// the floor or the transfer syntax is unknown.
    pub async fn begin(&self, request: IngestRequest) -> Result<Ingest, IngestError> {
        if let Some(reason) = self.ingest_held() {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(IngestError::Held(reason));
        }
        if self.index_full() {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(IngestError::Store(StoreError::IndexFull));
        }
        let info = syntax_info(&request.transfer_syntax)
            .ok_or_else(|| IngestError::UnknownTransferSyntax(request.transfer_syntax.clone()))?;
        let header = encode_file_meta(
            trim_uid(&request.sop_class_uid),
            trim_uid(&request.sop_instance_uid),
            trim_uid(&request.transfer_syntax),
            Some(request.source_ae.as_str()),
        );
        let reserved = RESERVE_FIRST.max(header.len() as u64);
        self.reserve(reserved)?;
        let id = FileId::new(SystemTime::now());
        // A file made ahead keeps the create off this instance's path; without one, the
        // first write creates `<id>.part`.
        let (tmp, writer) = match self.take_spare() {
            Some(spare) => (spare.path, Some(spare.writer)),
            None => (self.inner.layout.tmp_path(&id), None),
        };
        let crc = crc32c::crc32c(&header);
        let header_len = header.len() as u64;
        let buffered = header.len();
        let buffer = vec![header];
        Ok(Ingest {
            store: self.clone(),
            request,
            id,
            tmp,
            writer,
            in_flight: None,
            buffer,
            buffered,
            // Tag order is required here, at the way in, and not of files already stored.
            walker: Some(
                Walker::new(
                    info,
                    Capture::Tags {
                        tags: record::capture_tags(),
                        max_len: MAX_INDEXED_VALUE,
                    },
                )
                .require_tag_order(),
            ),
            crc,
            header_len,
            written: 0,
            reserved,
            budget: reserved - header_len,
            writing: 0,
            failed: None,
            settled: false,
        })
    }

    /// Reserves `bytes` against the floor: refused when free space, less what every
    /// instance being received holds reserved (these bytes included), is below the floor.
    fn reserve(&self, bytes: u64) -> Result<(), IngestError> {
        // Counted first, so two reservations racing each see the other.
        self.inner.in_flight.fetch_add(bytes, Ordering::SeqCst);
        let checked = self.check_space();
        if checked.is_err() {
            self.inner.in_flight.fetch_sub(bytes, Ordering::SeqCst);
        }
        checked
    }

    pub(crate) fn check_space(&self) -> Result<(), IngestError> {
        let floor = self.inner.config.min_free_bytes;
        let mut available = self
            .inner
            .fs
            .available_bytes(self.inner.layout.root())
            .map_err(IngestError::Write)?;
        // With a configured capacity, the archive's own files count against it as well, and
        // so does the audit trail beside them.
        if let Some(capacity) = self.inner.config.cache.and_then(|c| c.capacity_bytes) {
            let used = self.usage().map(|u| u.stored_bytes).unwrap_or(0) + self.other_bytes();
            available = available.min(capacity.saturating_sub(used));
        }
        // What associations are about to write is not on disk yet.
        available = available.saturating_sub(self.inner.in_flight.load(Ordering::SeqCst));
        if available < floor {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(IngestError::OutOfSpace { available, floor });
        }
        Ok(())
    }
}

impl Ingest {
    /// Appends the next bytes of the data set. The bytes are taken, not copied: a fragment
    /// of a P-DATA PDU goes to the file as it came off the wire.
    pub async fn write(&mut self, data: Vec<u8>) {
        if self.failed.is_some() {
            return;
        }
        let walker = self.walker.as_mut().expect("walker present until finish");
        if let Err(e) = walker.feed(&data) {
            self.failed = Some(if e.kind.is_tag_order() {
                IngestError::TagOrder(e)
            } else {
                IngestError::Unparseable(e)
            });
            return;
        }
        let len = data.len() as u64;
        if len > self.budget {
            let step = self.reserved.clamp(RESERVE_FIRST, RESERVE_MAX);
            let more = step.max(len - self.budget);
            if let Err(e) = self.store.reserve(more) {
                self.failed = Some(e);
                return;
            }
            self.reserved += more;
            self.budget += more;
        }
        self.budget -= len;
        self.crc = crc32c::crc32c_append(self.crc, &data);
        self.buffered += data.len();
        match self.buffer.last_mut() {
            Some(last) if data.len() < COALESCE_BELOW && last.len() < COALESCE_BELOW => {
                last.extend_from_slice(&data)
            }
            _ => self.buffer.push(data),
        }
        // Write once WRITE_MIN bytes wait and the previous write is done (so little is left
        // to write when the data set ends), and wait for that write only when a whole chunk
        // is waiting.
        let idle = self.in_flight.as_ref().is_none_or(JoinHandle::is_finished);
        if ((idle && self.buffered >= WRITE_MIN) || self.buffered >= WRITE_CHUNK)
            && let Err(e) = self.flush_buffer().await
        {
            self.failed = Some(IngestError::Write(e));
        }
    }

    /// Whether the instance already failed (its remaining bytes will be discarded).
    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    async fn wait_in_flight(&mut self) -> std::io::Result<()> {
        if let Some(task) = self.in_flight.take() {
            let (writer, result) = task.await.expect("write task panicked");
            self.writer = writer;
            // On disk now (or failed, and the file goes): the file system counts them.
            let done = std::mem::take(&mut self.writing);
            self.release(done);
            result?;
        }
        Ok(())
    }

    /// Gives back reserved bytes.
    fn release(&mut self, bytes: u64) {
        let bytes = bytes.min(self.reserved);
        self.reserved -= bytes;
        self.store
            .inner
            .in_flight
            .fetch_sub(bytes, Ordering::SeqCst);
    }

    async fn flush_buffer(&mut self) -> std::io::Result<()> {
        self.wait_in_flight().await?;
        let writer = self.writer.take();
        let chunks = std::mem::take(&mut self.buffer);
        self.writing = self.buffered as u64;
        self.written += std::mem::take(&mut self.buffered) as u64;
        let (fs, path) = (self.store.inner.fs.clone(), self.tmp.clone());
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut writer = match writer.map_or_else(|| fs.create_new(&path), Ok) {
                Ok(w) => w,
                Err(e) => return (None, Err(e)),
            };
            let r = write_chunks(writer.as_mut(), &chunks);
            if r.is_ok() {
                // More is coming: the disk can work on these bytes meanwhile.
                writer.start_writeback();
            }
            (Some(writer), r)
        }));
        Ok(())
    }

    /// Completes the instance: checks it, makes it durable and files it in the index. Returns
    /// once the instance is as durable as the store's durability setting promises.
    pub async fn finish(mut self) -> Result<Receipt, IngestError> {
        let result = self.finish_inner().await;
        if result.is_err() {
            self.store
                .inner
                .stats
                .refused
                .fetch_add(1, Ordering::Relaxed);
            self.discard().await;
        }
        result
    }

    async fn finish_inner(&mut self) -> Result<Receipt, IngestError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.wait_in_flight().await.map_err(IngestError::Write)?;
        let walker = self.walker.take().expect("walker present until finish");
        let walked = walker.finish()?;
        if let Some(first) = walked.misordered.first() {
            warn!(
                sop = trim_uid(&self.request.sop_instance_uid),
                calling = %self.request.source_ae,
                tag = %first.tag,
                after = %first.after,
                at = first.at,
                count = walked.misordered.len(),
                "data set element out of ascending tag order (PS3.5 7.1); accepted"
            );
        }
        let x = record::extract(&walked)?;
        let command_instance = trim_uid(&self.request.sop_instance_uid);
        if !command_instance.is_empty() && command_instance != x.sop_instance_uid {
            return Err(IngestError::InstanceMismatch {
                command: command_instance.to_string(),
                dataset: x.sop_instance_uid.clone(),
            });
        }
        let command_class = trim_uid(&self.request.sop_class_uid);
        if !command_class.is_empty() && command_class != x.sop_class_uid {
            return Err(IngestError::ClassMismatch {
                command: command_class.to_string(),
                dataset: x.sop_class_uid.clone(),
            });
        }
        let inner = &self.store.inner;
        // The rest of the bytes, the `.ready` name (the file is whole: its name says so, with
        // the CRC and size that prove it, since start-up repair trusts a `.ready` name only if
        // the contents match) and, with full durability, the syncs all go in one trip to the
        // blocking pool. The data, then the `.ready` name: once both are durable the instance
        // survives a power cut. Syncing after the rename lets ext4's journal commit carry the
        // name with the data, so the directory sync finds little left to do.
        let rest = std::mem::take(&mut self.buffer);
        self.written += std::mem::take(&mut self.buffered) as u64;
        let seq = inner.ready_seq.next();
        let ready = inner
            .layout
            .ready_path(&self.id, seq, self.crc, self.written);
        let full = inner.config.durability == Durability::Full;
        let writer = self.writer.take();
        let (fs, from, to, tmp_dir) = (
            inner.fs.clone(),
            self.tmp.clone(),
            ready.clone(),
            inner.layout.tmp_dir(),
        );
        let (renamed, result) = blocking(move || {
            let mut writer = match writer.map_or_else(|| fs.create_new(&from), Ok) {
                Ok(w) => w,
                Err(e) => return (false, Err(e)),
            };
            if let Err(e) = write_chunks(writer.as_mut(), &rest) {
                return (false, Err(e));
            }
            if let Err(e) = fs.rename(&from, &to) {
                return (false, Err(e));
            }
            // The file is complete; the writer closes it when dropped here. (With relaxed
            // durability the committer has it synced in the background once acknowledged.)
            let synced = if full {
                writer.sync().and_then(|()| fs.sync_dir(&tmp_dir))
            } else {
                Ok(())
            };
            (true, synced)
        })
        .await;
        // Everything is written: the file system counts the file from here.
        inner
            .in_flight
            .fetch_sub(std::mem::take(&mut self.reserved), Ordering::SeqCst);
        if renamed {
            self.tmp = ready;
        }
        result.map_err(IngestError::Write)?;
        if full {
            inner.stats.file_syncs.fetch_add(1, Ordering::Relaxed);
            inner.stats.dir_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let record = InstanceRecord {
            study_uid: String::new(),
            series_uid: String::new(),
            sop_class_uid: x.sop_class_uid.clone(),
            transfer_syntax: trim_uid(&self.request.transfer_syntax).to_string(),
            file: inner.layout.object_rel(&self.id),
            size: self.written,
            crc32c: self.crc,
            dataset_offset: self.header_len,
            charset: x.charset.clone(),
            attrs: x.instance.clone(),
            received_at: unix_now(),
            source_ae: self.request.source_ae.clone(),
        };
        debug!(sop = %x.sop_instance_uid, bytes = self.written, "instance received, committing");
        let mut receipt = Receipt {
            outcome: Outcome::Stored,
            sop_instance_uid: x.sop_instance_uid.clone(),
            study_uid: x.study_uid.clone(),
            patient_id: record::patient_id_of(&x.patient_key).to_string(),
            bytes: self.written,
        };
        let request = CommitRequest {
            tmp: self.tmp.clone(),
            extracted: x,
            record,
        };
        // From here the committer owns the temporary file, whatever the outcome.
        self.settled = true;
        let outcome = inner.committer.commit(request).await.map_err(|e| match e {
            StoreError::PatientConflict(c) => IngestError::PatientConflict(c),
            e => IngestError::Store(e),
        })?;
        let counter = match outcome {
            Outcome::Quarantined { .. } => &inner.stats.quarantined,
            Outcome::Stored => &inner.stats.stored,
            Outcome::Duplicate => &inner.stats.duplicates,
            Outcome::Overwritten => &inner.stats.overwritten,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        inner.stats.bytes.fetch_add(self.written, Ordering::Relaxed);
        receipt.outcome = outcome;
        Ok(receipt)
    }

    /// Gives up on the instance and removes what was written.
    pub async fn discard(mut self) {
        let _ = self.wait_in_flight().await;
        self.writer = None;
        if !self.settled {
            self.settled = true;
            let fs = self.store.inner.fs.clone();
            let tmp = self.tmp.clone();
            let _ = tokio::task::spawn_blocking(move || fs.remove_file(&tmp)).await;
        }
    }
}

/// Runs the final file work of an instance on the association's own thread where the
/// runtime allows it (`block_in_place`), else on the blocking pool. The response waits for
/// this work anyway; on the association's thread it costs no hand-over to a pool thread and
/// no wake-up back, two of the hops that one association pays for every instance.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(work)
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .expect("final write task panicked")
    }
}

fn write_chunks(writer: &mut dyn FileWriter, chunks: &[Vec<u8>]) -> std::io::Result<()> {
    chunks.iter().try_for_each(|c| writer.write_all(c))
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let all = self.reserved;
        self.release(all);
        // An ingest dropped half way (the association died) leaves its temporary file; remove
        // it now rather than at the next start. Without a runtime, the next start does it.
        if !self.settled
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let fs = self.store.inner.fs.clone();
            let tmp = self.tmp.clone();
            let in_flight = self.in_flight.take();
            handle.spawn(async move {
                if let Some(task) = in_flight {
                    let _ = task.await;
                }
                let _ = tokio::task::spawn_blocking(move || fs.remove_file(&tmp)).await;
            });
        }
    }
}
