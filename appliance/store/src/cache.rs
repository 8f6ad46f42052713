//! The archive as a cache of upstream: how full it is, which studies were used least
//! recently, and evicting the files of instances that have a confirmed upstream copy while
//! keeping their index entries ("upstream only", answered as NEARLINE).
//!
//! Eviction is decided here from a read snapshot and carried out by the index writer, which
//! checks every candidate again inside its transaction (the instance may have been
//! overwritten or re-queued meanwhile), marks it evicted, and lists its file in
//! `pending_deletes`: the file is deleted only after the checkpoint that made the mark
//! durable, exactly like a file replaced by an overwrite, so a crash in between leaves either
//! the file or the mark's pending delete, never an index entry promising a file that is gone.
//!
//! Tables: `evicted` (SOP Instance UID), `evicted_count` (`study/<uid>` and `series/<uid>` to
//! the number of their instances evicted), `study_access` (study to the last time it was
//! stored to or retrieved, Unix seconds) with its inverse `access_order`, and `stored_bytes`
//! in `meta` (bytes of the files the archive holds).

use redb::{
    MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::index::{INSTANCES, META, SERIES_INSTANCES, STUDY_SERIES};
use crate::outbox::UPSTREAM;
use crate::record::{self, InstanceRecord};
use crate::{Store, StoreError};

pub(crate) const EVICTED: TableDefinition<&str, ()> = TableDefinition::new("evicted");
pub(crate) const EVICTED_COUNT: TableDefinition<&str, u64> = TableDefinition::new("evicted_count");
pub(crate) const STUDY_ACCESS: TableDefinition<&str, u64> = TableDefinition::new("study_access");
pub(crate) const ACCESS_ORDER: MultimapTableDefinition<u64, &str> =
    MultimapTableDefinition::new("access_order");
const STORED_BYTES: &str = "stored_bytes";
/// The usual [`CacheConfig::protect_recent_s`].
pub const PROTECT_RECENT_S: u64 = 120;

/// Brings back the files of a study's evicted instances from upstream. The fetched instances
/// arrive through the normal ingest path, which puts each file back in its place; `recall`
/// returns once the source says it sent them all (or why not).
pub trait Recall: Send + Sync + std::fmt::Debug {
    fn recall(
        &self,
        study_uid: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// When the archive evicts, as percentages of its capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Above this, evict.
    pub high_watermark: u8,
    /// Down to this.
    pub low_watermark: u8,
    /// Treat the archive as having this many bytes of room, counting only its own files,
    /// instead of asking the file system (for tests, and for a volume shared with others).
    pub capacity_bytes: Option<u64>,
    /// A study stored to or retrieved this many seconds ago or less is not evicted, so a
    /// retrieval that has just resolved its instances never finds their files gone under it.
    pub protect_recent_s: u64,
}

/// How full the archive is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    /// Bytes of the instance files the archive holds.
    pub stored_bytes: u64,
}

impl Usage {
    pub fn percent(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return 100.0;
        }
        self.used_bytes as f64 * 100.0 / self.capacity_bytes as f64
    }
}

/// Which destinations an instance was routed to and which of them confirmed a copy. An
/// instance may be evicted only when it was routed somewhere and every destination it was
/// routed to confirmed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamState {
    pub routed: Vec<String>,
    pub confirmed: Vec<String>,
}

impl UpstreamState {
    pub fn evictable(&self) -> bool {
        !self.routed.is_empty() && self.routed.iter().all(|d| self.confirmed.contains(d))
    }
}

/// One instance whose file may be evicted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub sop_instance_uid: String,
    pub file: String,
    pub size: u64,
}

/// What one eviction pass did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvictReport {
    pub instances: u64,
    pub bytes: u64,
    pub studies: u64,
    /// Usage after the pass, counting the evicted files as gone.
    pub percent_after: f64,
}

fn read_u64(
    txn_meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(txn_meta.get(key)?.map(|v| {
        let mut b = [0u8; 8];
        let v = v.value();
        let n = v.len().min(8);
        b[..n].copy_from_slice(&v[..n]);
        u64::from_le_bytes(b)
    }))
}

/// Adds `delta` to the bytes the archive holds (within a write transaction).
pub(crate) fn add_stored_bytes(txn: &WriteTransaction, delta: i64) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    let mut meta = txn.open_table(META)?;
    let now = read_u64(&meta, STORED_BYTES)?.unwrap_or(0);
    let next = now.saturating_add_signed(delta);
    meta.insert(STORED_BYTES, next.to_le_bytes().as_slice())?;
    Ok(())
}

/// Creates the tables, and counts the bytes of an archive made before they existed (once:
/// the only walk over every instance this module ever does).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(EVICTED)?;
    txn.open_table(EVICTED_COUNT)?;
    txn.open_table(STUDY_ACCESS)?;
    txn.open_multimap_table(ACCESS_ORDER)?;
    let missing = read_u64(&txn.open_table(META)?, STORED_BYTES)?.is_none();
    if missing {
        let instances = txn.open_table(INSTANCES)?;
        let mut total = 0u64;
        for row in instances.iter()? {
            let (_, v) = row?;
            let i: InstanceRecord = record::decode(v.value())?;
            total += i.size;
        }
        drop(instances);
        let mut meta = txn.open_table(META)?;
        meta.insert(STORED_BYTES, total.to_le_bytes().as_slice())?;
    }
    Ok(())
}

/// Records that a study was used now (within a write transaction).
pub(crate) fn touch(txn: &WriteTransaction, study_uid: &str, now: u64) -> Result<(), StoreError> {
    let mut access = txn.open_table(STUDY_ACCESS)?;
    let mut order = txn.open_multimap_table(ACCESS_ORDER)?;
    if let Some(old) = access.insert(study_uid, now)? {
        let old = old.value();
        if old == now {
            return Ok(());
        }
        order.remove(old, study_uid)?;
    }
    order.insert(now, study_uid)?;
    Ok(())
}

pub(crate) fn is_evicted(txn: &WriteTransaction, sop: &str) -> Result<bool, StoreError> {
    Ok(txn.open_table(EVICTED)?.get(sop)?.is_some())
}

/// Recounts `evicted_count` from `evicted` and the instance records (at open, when another
/// build wrote last: the counts are derived, and only this build's code is known to keep
/// them). One walk over the evicted instances; nothing when none are.
pub(crate) fn rebuild_derived(txn: &WriteTransaction) -> Result<(), StoreError> {
    let instances = txn.open_table(INSTANCES)?;
    let evicted = txn.open_table(EVICTED)?;
    let mut counts = txn.open_table(EVICTED_COUNT)?;
    counts.retain(|_, _| false)?;
    for row in evicted.iter()? {
        let (sop, _) = row?;
        let Some(v) = instances.get(sop.value())? else {
            continue;
        };
        let rec: InstanceRecord = record::decode(v.value())?;
        bump(&mut counts, &format!("study/{}", rec.study_uid), 1)?;
        bump(&mut counts, &format!("series/{}", rec.series_uid), 1)?;
    }
    Ok(())
}

fn bump(
    counts: &mut redb::Table<&'static str, u64>,
    key: &str,
    delta: i64,
) -> Result<(), StoreError> {
    let now = counts.get(key)?.map(|v| v.value()).unwrap_or(0);
    let next = now.saturating_add_signed(delta);
    if next == 0 {
        counts.remove(key)?;
    } else {
        counts.insert(key, next)?;
    }
    Ok(())
}

/// Clears the evicted mark of an instance whose file came back (fetched from upstream),
/// given the record it had while evicted.
pub(crate) fn unmark_evicted(
    txn: &WriteTransaction,
    sop: &str,
    old: &InstanceRecord,
) -> Result<(), StoreError> {
    txn.open_table(EVICTED)?.remove(sop)?;
    let mut counts = txn.open_table(EVICTED_COUNT)?;
    bump(&mut counts, &format!("study/{}", old.study_uid), -1)?;
    bump(&mut counts, &format!("series/{}", old.series_uid), -1)?;
    Ok(())
}

/// Marks candidates evicted, checking each again; returns those marked (their files are to
/// be deleted once the mark is durable).
pub(crate) fn mark_evicted(
    txn: &WriteTransaction,
    candidates: &[Candidate],
    protect_recent_s: u64,
) -> Result<Vec<Candidate>, StoreError> {
    let mut marked = Vec::new();
    {
        let instances = txn.open_table(INSTANCES)?;
        let upstream = txn.open_table(UPSTREAM)?;
        let access = txn.open_table(STUDY_ACCESS)?;
        let mut evicted = txn.open_table(EVICTED)?;
        let mut counts = txn.open_table(EVICTED_COUNT)?;
        let now = crate::layout::unix_now();
        for c in candidates {
            let Some(v) = instances.get(c.sop_instance_uid.as_str())? else {
                continue;
            };
            let rec: InstanceRecord = record::decode(v.value())?;
            drop(v);
            if rec.file != c.file || evicted.get(c.sop_instance_uid.as_str())?.is_some() {
                continue;
            }
            let used = access
                .get(rec.study_uid.as_str())?
                .map(|v| v.value())
                .unwrap_or(0);
            if now.saturating_sub(used) < protect_recent_s {
                continue;
            }
            let state: UpstreamState = match upstream.get(c.sop_instance_uid.as_str())? {
                Some(v) => record::decode(v.value())?,
                None => continue,
            };
            if !state.evictable() {
                continue;
            }
            evicted.insert(c.sop_instance_uid.as_str(), ())?;
            bump(&mut counts, &format!("study/{}", rec.study_uid), 1)?;
            bump(&mut counts, &format!("series/{}", rec.series_uid), 1)?;
            marked.push(c.clone());
        }
    }
    let freed: u64 = marked.iter().map(|c| c.size).sum();
    add_stored_bytes(txn, -(freed as i64))?;
    Ok(marked)
}

impl Store {
    /// How full the archive is: against `capacity_bytes` when configured, else the data
    /// volume as the file system reports it.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let stored = {
            let txn = self.db()?.begin_read()?;
            let meta = txn.open_table(META)?;
            read_u64(&meta, STORED_BYTES)?.unwrap_or(0)
        };
        let root = self.inner.layout.root();
        match self.inner.config.cache.and_then(|c| c.capacity_bytes) {
            Some(capacity) => Ok(Usage {
                used_bytes: stored + self.other_bytes(),
                capacity_bytes: capacity,
                stored_bytes: stored,
            }),
            None => {
                let total = self
                    .inner
                    .fs
                    .total_bytes(root)
                    .map_err(|e| StoreError::io(root, e))?;
                let available = self
                    .inner
                    .fs
                    .available_bytes(root)
                    .map_err(|e| StoreError::io(root, e))?;
                Ok(Usage {
                    used_bytes: total.saturating_sub(available),
                    capacity_bytes: total,
                    stored_bytes: stored,
                })
            }
        }
    }

    /// Bytes of the appliance's other files on the data volume (`StoreConfig::other_bytes`).
    pub(crate) fn other_bytes(&self) -> u64 {
        self.inner
            .config
            .other_bytes
            .as_ref()
            .map_or(0, |b| b.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whether an instance's file was evicted (it is held only upstream).
    pub fn is_evicted(&self, sop_instance_uid: &str) -> Result<bool, StoreError> {
        let txn = self.db()?.begin_read()?;
        Ok(txn.open_table(EVICTED)?.get(sop_instance_uid)?.is_some())
    }

    /// Instances whose files may go, least recently used studies first, until `bytes` would
    /// be freed. Only instances every destination they were routed to has confirmed.
    pub fn eviction_candidates(&self, bytes: u64) -> Result<Vec<Candidate>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let order = txn.open_multimap_table(ACCESS_ORDER)?;
        let study_series = txn.open_multimap_table(STUDY_SERIES)?;
        let series_instances = txn.open_multimap_table(SERIES_INSTANCES)?;
        let instances = txn.open_table(INSTANCES)?;
        let upstream = txn.open_table(UPSTREAM)?;
        let evicted = txn.open_table(EVICTED)?;
        if upstream.is_empty()? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut freed = 0u64;
        for row in order.iter()? {
            let (_, studies) = row?;
            for study in studies {
                let study = study?;
                for series in study_series.get(study.value())? {
                    let series = series?;
                    for sop in series_instances.get(series.value())? {
                        let sop = sop?;
                        let sop = sop.value();
                        if evicted.get(sop)?.is_some() {
                            continue;
                        }
                        let Some(state) = upstream.get(sop)? else {
                            continue;
                        };
                        let state: UpstreamState = record::decode(state.value())?;
                        if !state.evictable() {
                            continue;
                        }
                        let Some(rec) = instances.get(sop)? else {
                            continue;
                        };
                        let rec: InstanceRecord = record::decode(rec.value())?;
                        freed += rec.size;
                        out.push(Candidate {
                            sop_instance_uid: sop.to_string(),
                            file: rec.file,
                            size: rec.size,
                        });
                    }
                }
                // Whole studies go together where possible: a study half evicted costs a
                // recall as much as one wholly evicted.
                if freed >= bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// One eviction pass: when usage is above the high watermark, evicts confirmed instances
    /// of the least recently used studies down to the low watermark. `None` when nothing was
    /// to be done (below the watermark, or no cache configured).
    pub async fn maintain_cache(&self) -> Result<Option<EvictReport>, StoreError> {
        let Some(cache) = self.inner.config.cache else {
            return Ok(None);
        };
        let store = self.clone();
        let usage = tokio::task::spawn_blocking(move || store.usage())
            .await
            .map_err(|e| StoreError::Inconsistent(format!("usage task failed: {e}")))??;
        if usage.percent() < f64::from(cache.high_watermark) {
            return Ok(None);
        }
        let target = usage.capacity_bytes as f64 * f64::from(cache.low_watermark) / 100.0;
        let to_free = (usage.used_bytes as f64 - target).max(0.0) as u64;
        let store = self.clone();
        let candidates = tokio::task::spawn_blocking(move || store.eviction_candidates(to_free))
            .await
            .map_err(|e| StoreError::Inconsistent(format!("eviction task failed: {e}")))??;
        let marked = if candidates.is_empty() {
            Vec::new()
        } else {
            self.inner.committer.evict(candidates).await?
        };
        let bytes: u64 = marked.iter().map(|c| c.size).sum();
        let studies = {
            let txn = self.db()?.begin_read()?;
            let instances = txn.open_table(INSTANCES)?;
            let mut set = std::collections::HashSet::new();
            for c in &marked {
                if let Some(v) = instances.get(c.sop_instance_uid.as_str())? {
                    let rec: InstanceRecord = record::decode(v.value())?;
                    set.insert(rec.study_uid);
                }
            }
            set.len() as u64
        };
        let used_after = usage.used_bytes.saturating_sub(bytes);
        Ok(Some(EvictReport {
            instances: marked.len() as u64,
            bytes,
            studies,
            percent_after: if usage.capacity_bytes == 0 {
                100.0
            } else {
                used_after as f64 * 100.0 / usage.capacity_bytes as f64
            },
        }))
    }

    /// Records that studies were used now (retrieved), for the least-recently-used order.
    pub async fn touch(&self, study_uids: Vec<String>) -> Result<(), StoreError> {
        if study_uids.is_empty() || self.inner.config.cache.is_none() {
            return Ok(());
        }
        self.inner.committer.touch(study_uids).await
    }
}
