//! Receiving one instance: data set bytes stream into `tmp/<id>.part` behind a Part 10 header,
//! through a walker that checks them and captures the indexed attributes, with at most two
//! write buffers in memory whatever the instance's size. A whole instance is renamed
//! `tmp/<id>.<crc>.<size>.ready` and handed to the committer.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use dataset::meta::encode_file_meta;
use dataset::ts::{syntax_info, trim_uid};
use dataset::{Capture, Walker};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::commit::{CommitRequest, Outcome};
use crate::fs::FileWriter;
use crate::layout::{FileId, unix_now};
use crate::record::{self, ExtractError, InstanceRecord, MAX_INDEXED_VALUE};
use crate::{Durability, Store, StoreError};

/// Most bytes gathered while a write is in flight; one write may be in flight while the next
/// buffer fills.
const WRITE_CHUNK: usize = 256 * 1024;
/// How often, in bytes written, free space is checked again during a large instance.
const SPACE_RECHECK: u64 = 64 * 1024 * 1024;

/// A write running on the blocking pool; it hands the writer back with its result.
type WriteTask = JoinHandle<(Box<dyn FileWriter>, std::io::Result<()>)>;

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
    #[error("transfer syntax {0} is not known, so the data set cannot be read")]
    UnknownTransferSyntax(String),
    #[error("{0}")]
    Unparseable(#[from] dataset::WalkError),
    #[error("{0}")]
    Unindexable(#[from] ExtractError),
    #[error("data set SOP Instance UID {dataset} differs from the command's {command}")]
    InstanceMismatch { command: String, dataset: String },
    #[error("data set SOP Class UID {dataset} differs from the command's {command}")]
    ClassMismatch { command: String, dataset: String },
    #[error("writing the instance failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// One instance being received; see the module documentation.
pub struct Ingest {
    store: Store,
    request: IngestRequest,
    id: FileId,
    tmp: PathBuf,
    /// The writer, when no write is in flight.
    writer: Option<Box<dyn FileWriter>>,
    in_flight: Option<WriteTask>,
    buffer: Vec<u8>,
    /// Taken when the data set ends.
    walker: Option<Walker>,
    crc: u32,
    header_len: u64,
    written: u64,
    since_space_check: u64,
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
        let info = syntax_info(&request.transfer_syntax)
            .ok_or_else(|| IngestError::UnknownTransferSyntax(request.transfer_syntax.clone()))?;
        self.check_space()?;
        let id = FileId::new(SystemTime::now());
        let tmp = self.inner.layout.tmp_path(&id);
        let header = encode_file_meta(
            trim_uid(&request.sop_class_uid),
            trim_uid(&request.sop_instance_uid),
            trim_uid(&request.transfer_syntax),
            Some(request.source_ae.as_str()),
        );
        let crc = crc32c::crc32c(&header);
        let header_len = header.len() as u64;
        let fs = self.inner.fs.clone();
        let path = tmp.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = fs.create_new(&path)?;
            w.write_all(&header)?;
            Ok::<_, std::io::Error>(w)
        })
        .await
        .expect("file creation task panicked")
        .map_err(IngestError::Write)?;
        Ok(Ingest {
            store: self.clone(),
            request,
            id,
            tmp,
            writer: Some(writer),
            in_flight: None,
            buffer: Vec::with_capacity(WRITE_CHUNK),
            walker: Some(Walker::new(
                info,
                Capture::Tags {
                    tags: record::capture_tags(),
                    max_len: MAX_INDEXED_VALUE,
                },
            )),
            crc,
            header_len,
            written: header_len,
            since_space_check: 0,
            failed: None,
            settled: false,
        })
    }

    pub(crate) fn check_space(&self) -> Result<(), IngestError> {
        let floor = self.inner.config.min_free_bytes;
        let available = self
            .inner
            .fs
            .available_bytes(self.inner.layout.root())
            .map_err(IngestError::Write)?;
        if available < floor {
            self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(IngestError::OutOfSpace { available, floor });
        }
        Ok(())
    }
}

impl Ingest {
    /// Appends the next bytes of the data set.
    pub async fn write(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let walker = self.walker.as_mut().expect("walker present until finish");
        if let Err(e) = walker.feed(data) {
            self.failed = Some(e.into());
            return;
        }
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.buffer.extend_from_slice(data);
        self.since_space_check += data.len() as u64;
        if self.since_space_check >= SPACE_RECHECK {
            self.since_space_check = 0;
            if let Err(e) = self.store.check_space() {
                self.failed = Some(e);
                return;
            }
        }
        // Write as soon as the previous write is done (so little is left to write when the
        // data set ends), and wait for it only when a whole chunk is waiting.
        let idle = self.in_flight.as_ref().is_none_or(JoinHandle::is_finished);
        if (idle || self.buffer.len() >= WRITE_CHUNK)
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
            self.writer = Some(writer);
            result?;
        }
        Ok(())
    }

    async fn flush_buffer(&mut self) -> std::io::Result<()> {
        self.wait_in_flight().await?;
        let mut writer = self
            .writer
            .take()
            .expect("writer present when nothing is in flight");
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(WRITE_CHUNK));
        self.written += chunk.len() as u64;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let r = writer.write_all(&chunk);
            (writer, r)
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
        if !self.buffer.is_empty() {
            self.flush_buffer().await.map_err(IngestError::Write)?;
        }
        self.wait_in_flight().await.map_err(IngestError::Write)?;
        let walker = self.walker.take().expect("walker present until finish");
        let walked = walker.finish()?;
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
        // The file is whole: its name says so, with the CRC and size that prove it (start-up
        // repair trusts a `.ready` name only if the contents match).
        let ready = inner.layout.ready_path(&self.id, self.crc, self.written);
        let (fs, from, to) = (inner.fs.clone(), self.tmp.clone(), ready.clone());
        tokio::task::spawn_blocking(move || fs.rename(&from, &to))
            .await
            .expect("rename task panicked")
            .map_err(IngestError::Write)?;
        self.tmp = ready;
        if inner.config.durability == Durability::Full {
            // The data, then the `.ready` name: once both are durable the instance survives a
            // power cut. Syncing after the rename lets ext4's journal commit carry the name
            // with the data, so the directory sync finds little left to do.
            let mut writer = self
                .writer
                .take()
                .expect("writer back after the last write");
            let (fs, tmp_dir) = (inner.fs.clone(), inner.layout.tmp_dir());
            let (writer, r) = tokio::task::spawn_blocking(move || {
                let r = writer.sync().and_then(|()| fs.sync_dir(&tmp_dir));
                (writer, r)
            })
            .await
            .expect("sync task panicked");
            self.writer = Some(writer);
            r.map_err(IngestError::Write)?;
            inner.stats.file_syncs.fetch_add(1, Ordering::Relaxed);
            inner.stats.dir_syncs.fetch_add(1, Ordering::Relaxed);
        }
        // The file is complete; close it. (With relaxed durability the committer has it
        // synced in the background once it is acknowledged.)
        self.writer = None;
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
        let outcome = inner.committer.commit(request).await?;
        let counter = match outcome {
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

impl Drop for Ingest {
    fn drop(&mut self) {
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
