//! Start-up repair of what a crash left in flight, and nothing more: its cost depends on how
//! many instances were unsettled (at most one checkpoint's worth), never on the size of the
//! archive.
//!
//! The record of in-flight work is `tmp/` itself (see `commit.rs`):
//! - `<id>.part`: the instance was still arriving and was never acknowledged; remove it;
//! - `<id>.<seq>.<crc>.<size>.ready`: the instance arrived whole. These are taken in sequence
//!   order, the order the committer filed them in. If its contents match the CRC and size its
//!   name carries, it may have been acknowledged: give it its final name if it lacks one, file
//!   it in the index if the index lacks it (the duplicate policy applies; under overwrite a
//!   version a later `.ready` file or the indexed file replaced is removed instead), make both
//!   durable, then remove the temporary name. If a complete read shows they do not match, the
//!   name outlived its data (possible only with relaxed durability, or before the
//!   acknowledgement): remove it.
//!
//! Nothing else is ever deleted for an error. A file that cannot be read (EIO from a marginal
//! disk after the power cut, EACCES, EMFILE), that reads back whole but cannot be indexed, or
//! whose link, directory sync or removal fails, may be the only copy of an acknowledged
//! instance: it is kept as it is, a critical [`RepairAlert`] names it, and repair goes on; the
//! next start tries again. Files listed in `pending_deletes` (replaced by an overwrite or
//! evicted) are deleted too, and one that cannot be keeps its row.

use std::io::Read;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable};
use tracing::{error, info, warn};

use crate::cache;
use crate::fs::Fs;
use crate::index::{self, Filed, Tables};
use crate::layout::{Layout, TmpName, unix_now};
use crate::outbox::Enqueuer;
use crate::record::{self, InstanceRecord};
use crate::verify::{Scan, ScanError, scan_file};
use crate::{DuplicatePolicy, StoreConfig, StoreError};

/// What start-up repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Temporary files of instances that were still being received, removed.
    pub incomplete_removed: usize,
    /// Received instances whose final name or index entry a crash had lost, restored.
    pub finished_indexed: usize,
    /// Received files that turned out to be duplicates, superseded or damaged, removed.
    pub finished_discarded: usize,
    /// Files replaced by overwrites, deleted.
    pub replaced_deleted: usize,
    /// Critical: steps an I/O error (or a file that cannot be indexed) interrupted. What each
    /// concerned was kept as it was, and the next start tries again.
    pub alerts: Vec<RepairAlert>,
}

/// A step of start-up repair that could not be done. The file it concerned may hold the only
/// copy of an acknowledged instance, so it was neither deleted nor trusted: until a later start
/// finishes the step, its instance may be missing from the index, or indexed with its final
/// file unchecked. `outpost serve` logs each at error and `outpost status` lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairAlert {
    pub step: RepairStep,
    pub file: PathBuf,
    /// The operating system's error number (EIO, EACCES, EMFILE...), when there is one.
    pub errno: Option<i32>,
    pub error: String,
}

/// Which step of start-up repair an alert concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairStep {
    /// Listing `tmp/`: nothing in it was repaired.
    ListTemporary,
    /// Reading a received (`.ready`) file.
    ReadReceived,
    /// A received file that reads back whole but cannot be parsed or indexed.
    IndexReceived,
    /// Giving a received file its final name (its directory, or the link).
    LinkFinal,
    /// Syncing a final directory before the durable commit: no `.ready` name was removed.
    SyncDirectory,
    /// Removing a `.ready` name (or a discarded file) after the durable commit.
    RemoveReceived,
    /// Deleting a file an overwrite or an eviction replaced (it stays in `pending_deletes`).
    DeleteReplaced,
}

impl RepairStep {
    fn what(self) -> &'static str {
        match self {
            RepairStep::ListTemporary => "the temporary directory could not be listed",
            RepairStep::ReadReceived => "a received instance could not be read",
            RepairStep::IndexReceived => {
                "a received instance reads back whole but cannot be indexed"
            }
            RepairStep::LinkFinal => "a received instance could not be given its final name",
            RepairStep::SyncDirectory => "a directory of stored instances could not be synced",
            RepairStep::RemoveReceived => "a received file could not be removed",
            RepairStep::DeleteReplaced => "a replaced file could not be deleted",
        }
    }
}

impl std::fmt::Display for RepairAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fix = if self.step == RepairStep::IndexReceived {
            "keep a copy of the file and report it to the vendor; it stays where it is"
        } else {
            "check the disk (dmesg, `outpost status`) and the file's owner and permissions, then restart"
        };
        write!(
            f,
            "{}: {} ({}); it was kept and will be tried again at the next start: {fix}",
            self.step.what(),
            self.file.display(),
            self.error
        )
    }
}

impl Reconciled {
    /// Records, and logs at error, a step that could not be done.
    fn raise(&mut self, step: RepairStep, file: &Path, errno: Option<i32>, error: String) {
        let alert = RepairAlert {
            step,
            file: file.to_path_buf(),
            errno,
            error,
        };
        error!(file = %alert.file.display(), errno = alert.errno, step = ?alert.step, "CRITICAL: start-up repair could not finish: {alert}");
        self.alerts.push(alert);
    }

    fn raise_io(&mut self, step: RepairStep, file: &Path, e: &std::io::Error) {
        self.raise(step, file, e.raw_os_error(), e.to_string());
    }
}

/// What reading a `.ready` file showed.
enum Check {
    /// Its contents match the CRC and size its name carries.
    Whole(Box<Scan>),
    /// It was read to the end and is not what its name promises: the data did not survive.
    Damaged(String),
    /// It is what its name promises but cannot be filed.
    Unindexable(String),
    /// It could not be read; nothing is known of its contents.
    Unreadable(std::io::Error),
}

/// Reads a `.ready` file once; a second, plain read only when parsing failed, to tell a
/// truncated file (the data did not survive) from one that cannot be read.
fn check_ready(fs: &dyn Fs, path: &Path, crc32c: u32, size: u64) -> Check {
    let promise = |c: u32, s: u64| {
        format!("holds {s} bytes with CRC {c:08x}, its name promises {size} and {crc32c:08x}")
    };
    let parse_error = match scan_file(fs, path) {
        Ok(scan) if scan.crc32c == crc32c && scan.size == size => {
            return Check::Whole(Box::new(scan));
        }
        Ok(scan) => return Check::Damaged(promise(scan.crc32c, scan.size)),
        Err(ScanError::Io(e)) => return Check::Unreadable(e),
        // A header cut short reads as an early end of file; any other I/O error while
        // reading the header is the disk's, not the file's.
        Err(ScanError::Meta(dataset::meta::MetaError::Io(e)))
            if e.kind() != std::io::ErrorKind::UnexpectedEof =>
        {
            return Check::Unreadable(e);
        }
        Err(e) => e.to_string(),
    };
    let digest = (|| {
        let mut file = fs.open(path)?;
        let (mut crc, mut len) = (0u32, 0u64);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match file.read(&mut buf)? {
                0 => return Ok::<_, std::io::Error>((crc, len)),
                n => {
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                    len += n as u64;
                }
            }
        }
    })();
    match digest {
        Err(e) => Check::Unreadable(e),
        Ok((c, s)) if (c, s) != (crc32c, size) => Check::Damaged(promise(c, s)),
        Ok(_) => Check::Unindexable(parse_error),
    }
}

/// A `.ready` file read whole and ready to finish.
struct Received {
    tmp: PathBuf,
    seq: Option<u64>,
    target: PathBuf,
    rel: String,
    scan: Box<Scan>,
    x: record::Extracted,
}

/// Which temporary files a repair looks at.
pub(crate) enum Scope<'a> {
    /// At start: everything in `tmp/` (nothing else is running).
    Startup,
    /// While the archive runs, after the index writer reopened the index: only these `.ready`
    /// names, the instances acknowledged since the last checkpoint, which the reopen took out
    /// of the index again. Files of instances still arriving or queued are not touched.
    Unsettled(&'a [PathBuf]),
}

/// Repairs what the last stop left in flight; returns what it did and the first sequence
/// number for new `.ready` names (above every one still in `tmp/`).
pub(crate) fn run(
    config: &StoreConfig,
    layout: &Layout,
    fs: &dyn Fs,
    db: &Database,
    scope: Scope<'_>,
) -> Result<(Reconciled, u64), StoreError> {
    let mut done = Reconciled::default();
    let tmp_dir = layout.tmp_dir();
    let overwrite = config.duplicates == DuplicatePolicy::Overwrite;

    // Replaced files whose deletion a crash may have interrupted. One that cannot be deleted
    // keeps its row, so the next start deletes it.
    let pending: Vec<String> = {
        let txn = db.begin_read()?;
        let table = txn.open_table(index::PENDING_DELETES)?;
        let mut v = Vec::new();
        for row in table.iter()? {
            v.push(row?.0.value().to_string());
        }
        v
    };
    let mut deleted = Vec::new();
    for rel in &pending {
        let path = layout.absolute(rel);
        match fs.remove_file(&path) {
            Ok(()) => {
                done.replaced_deleted += 1;
                deleted.push(rel);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted.push(rel),
            Err(e) => done.raise_io(RepairStep::DeleteReplaced, &path, &e),
        }
    }

    let names = match scope {
        Scope::Startup => match fs.list_dir(&tmp_dir) {
            Ok(names) => names,
            Err(e) => {
                done.raise_io(RepairStep::ListTemporary, &tmp_dir, &e);
                Vec::new()
            }
        },
        Scope::Unsettled(paths) => paths
            .iter()
            .filter(|p| fs.exists(p))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect(),
    };
    // Removed only after the durable commit, and only if every final directory was synced.
    let mut ready_to_remove: Vec<PathBuf> = Vec::new();
    // Not ours to keep (partial, stray, damaged, duplicate): removed after the commit anyway.
    let mut to_remove: Vec<PathBuf> = Vec::new();
    let mut ready = Vec::new();
    for name in names {
        let tmp = tmp_dir.join(&name);
        match TmpName::parse(&name) {
            None => {
                warn!(file = %tmp.display(), "removing a stray file from the temporary directory");
                to_remove.push(tmp);
            }
            Some(TmpName::Part(_)) => {
                done.incomplete_removed += 1;
                to_remove.push(tmp);
            }
            // Made ahead of need and never written: nothing was received into it.
            Some(TmpName::Spare(_)) => to_remove.push(tmp),
            Some(TmpName::Ready {
                id,
                seq,
                crc32c,
                size,
            }) => ready.push((seq, name, tmp, id, crc32c, size)),
        }
    }
    // In the order they were received whole (names without a sequence are older than any
    // with one), so every instance is filed in the order the committer filed it: under
    // overwrite the later version wins, under keep-first the earlier.
    ready.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let next_seq = ready
        .iter()
        .filter_map(|r| r.0)
        .max()
        .map_or(0, |s| s.saturating_add(1));
    // The sequence of every final file a `.ready` name stands for, readable or not.
    let seq_of: std::collections::HashMap<String, Option<u64>> = ready
        .iter()
        .map(|(seq, _, _, id, ..)| (layout.object_rel(id), *seq))
        .collect();

    let mut received: Vec<Received> = Vec::new();
    for (seq, _, tmp, id, crc32c, size) in ready {
        let rel = layout.object_rel(&id);
        let target = layout.absolute(&rel);
        let scan = match check_ready(fs, &tmp, crc32c, size) {
            Check::Whole(scan) => scan,
            Check::Damaged(why) => {
                warn!(file = %tmp.display(), "removing a received file whose data did not survive: {why}");
                done.finished_discarded += 1;
                to_remove.push(tmp);
                to_remove.push(target);
                continue;
            }
            Check::Unindexable(why) => {
                done.raise(RepairStep::IndexReceived, &tmp, None, why);
                continue;
            }
            Check::Unreadable(e) => {
                done.raise_io(RepairStep::ReadReceived, &tmp, &e);
                continue;
            }
        };
        match record::extract(&scan.walked) {
            Ok(x) => received.push(Received {
                tmp,
                seq,
                target,
                rel,
                scan,
                x,
            }),
            Err(e) => done.raise(RepairStep::IndexReceived, &tmp, None, e.to_string()),
        }
    }

    let mut to_file = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    {
        let txn = db.begin_read()?;
        let instances = txn.open_table(index::INSTANCES)?;
        // A held instance has no index entry: its file is known by its quarantine row, and
        // filing its `.ready` name again would hold it twice.
        let held: std::collections::HashSet<String> = crate::quarantine::list(&txn)?
            .into_iter()
            .map(|h| h.record.file)
            .collect();
        for (i, r) in received.iter().enumerate() {
            let indexed = match instances.get(r.x.sop_instance_uid.as_str())? {
                Some(v) => Some(record::decode::<InstanceRecord>(v.value())?.file),
                None => None,
            };
            // Under overwrite, a version received before another `.ready` file of the same
            // instance, or before the one the index already names, lost to it: filing it now
            // would put the older version back. (The index names a later version only if the
            // committer filed this one first.)
            let later = |seq: Option<u64>| seq > r.seq;
            let superseded = overwrite
                && indexed.as_deref() != Some(r.rel.as_str())
                && (received[i + 1..]
                    .iter()
                    .any(|o| o.x.sop_instance_uid == r.x.sop_instance_uid)
                    || indexed
                        .as_ref()
                        .and_then(|f| seq_of.get(f))
                        .is_some_and(|s| later(*s)));
            if superseded {
                info!(file = %r.tmp.display(), sop_instance_uid = %r.x.sop_instance_uid, "removing a received version a later one replaced");
                done.finished_discarded += 1;
                ready_to_remove.push(r.tmp.clone());
                ready_to_remove.push(r.target.clone());
                continue;
            }
            if !fs.exists(&r.target) {
                let parent = r.target.parent().expect("object paths have a parent");
                let linked = fs.create_dir_all(parent).and_then(|created| {
                    for c in created {
                        push_unique(&mut dirs, c.parent().expect("has a parent").to_path_buf());
                    }
                    fs.hard_link(&r.tmp, &r.target)
                });
                if let Err(e) = linked {
                    // Nothing is filed or removed: the `.ready` name still stands for the
                    // instance, and the next start links it.
                    done.raise_io(RepairStep::LinkFinal, &r.target, &e);
                    continue;
                }
            }
            push_unique(
                &mut dirs,
                r.target.parent().expect("has a parent").to_path_buf(),
            );
            if indexed.as_deref() != Some(r.rel.as_str()) && !held.contains(&r.rel) {
                to_file.push(r);
            }
            ready_to_remove.push(r.tmp.clone());
        }
    }

    if !to_file.is_empty() || !ready_to_remove.is_empty() || !deleted.is_empty() {
        // The final names and the index durable before any temporary name goes. A directory
        // that cannot be synced keeps every `.ready` name: the index may then name a file
        // whose name is not durable, and the next start links it again from its `.ready` file.
        dirs.sort_by_key(|d| d.components().count());
        let mut synced = true;
        for dir in &dirs {
            if let Err(e) = fs.sync_dir(dir) {
                done.raise_io(RepairStep::SyncDirectory, dir, &e);
                synced = false;
            }
        }
        if !synced {
            ready_to_remove.clear();
        }
        let mut replaced = Vec::new();
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        {
            let mut tables = Tables::open(&txn)?;
            for rel in &deleted {
                tables.pending_deletes.remove(rel.as_str())?;
            }
            let mut enqueuer = match &config.router {
                Some(router) => Some(Enqueuer::new(router.as_ref(), &txn)?),
                None => None,
            };
            let mut bytes = 0i64;
            for r in &to_file {
                let (scan, x) = (&r.scan, &r.x);
                let record = InstanceRecord {
                    study_uid: String::new(),
                    series_uid: String::new(),
                    sop_class_uid: x.sop_class_uid.clone(),
                    transfer_syntax: scan.meta.transfer_syntax.clone(),
                    file: r.rel.clone(),
                    size: scan.size,
                    crc32c: scan.crc32c,
                    dataset_offset: scan.meta.dataset_offset,
                    charset: x.charset.clone(),
                    attrs: x.instance.clone(),
                    received_at: unix_now(),
                    source_ae: scan.meta.source_ae_title.clone().unwrap_or_default(),
                };
                let source_ae = record.source_ae.clone();
                let size = record.size as i64;
                // A copy of an evicted instance, as in the committer: recalled from upstream
                // it takes its place; from a modality it is an ordinary overwrite (or, under
                // keep-first, a duplicate). Either way the old file is already gone.
                let evicted_old = match tables.instances.get(x.sop_instance_uid.as_str())? {
                    Some(v) if cache::is_evicted(&txn, &x.sop_instance_uid)? => {
                        Some(record::decode::<InstanceRecord>(v.value())?)
                    }
                    _ => None,
                };
                let recalled = evicted_old.is_some()
                    && config
                        .router
                        .as_ref()
                        .is_none_or(|router| router.route(&source_ae, x).is_empty());
                // An interrupted instance meets the same patient check as a live one; it is
                // quarantined whatever the policy, since its sender may have been answered.
                let filed =
                    tables.file_or_quarantine(x, record, overwrite || recalled, unix_now())?;
                if let Filed::Quarantined { .. } = filed {
                    bytes += size;
                    done.finished_indexed += 1;
                    continue;
                }
                if let Some(old) = &evicted_old
                    && filed != Filed::KeptFirst
                {
                    cache::unmark_evicted(&txn, &x.sop_instance_uid, old)?;
                    bytes += size;
                    done.finished_indexed += 1;
                    if !recalled && let Some(enqueuer) = enqueuer.as_mut() {
                        enqueuer.enqueue(&txn, x, &source_ae, unix_now())?;
                    }
                    continue;
                }
                bytes += match &filed {
                    Filed::New => size,
                    Filed::KeptFirst => 0,
                    Filed::Quarantined { .. } => size,
                    Filed::Overwrote { old_size, .. } => size - *old_size as i64,
                };
                // Stored implies queued: an instance filed here was never filed before (or
                // replaces what was), so it is queued in the same transaction.
                if filed != Filed::KeptFirst
                    && let Some(enqueuer) = enqueuer.as_mut()
                {
                    enqueuer.enqueue(&txn, x, &source_ae, unix_now())?;
                }
                match filed {
                    Filed::New | Filed::Quarantined { .. } => done.finished_indexed += 1,
                    Filed::KeptFirst => {
                        done.finished_discarded += 1;
                        to_remove.push(r.target.clone());
                    }
                    Filed::Overwrote { old_file, .. } => {
                        done.finished_indexed += 1;
                        tables.pending_deletes.insert(old_file.as_str(), ())?;
                        replaced.push(old_file);
                    }
                }
            }
            if let Some(enqueuer) = enqueuer {
                enqueuer.finish(&txn)?;
            }
            drop(tables);
            cache::add_stored_bytes(&txn, bytes)?;
        }
        txn.commit()?;
        // A replaced file that cannot be deleted now stays in `pending_deletes` for the next
        // start.
        for rel in replaced {
            let _ = fs.remove_file(&layout.absolute(&rel));
        }
    }
    for path in to_remove.into_iter().chain(ready_to_remove) {
        match fs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => done.raise_io(RepairStep::RemoveReceived, &path, &e),
        }
    }
    if done != Reconciled::default() {
        info!(
            alerts = done.alerts.len(),
            incomplete_removed = done.incomplete_removed,
            finished_indexed = done.finished_indexed,
            finished_discarded = done.finished_discarded,
            replaced_deleted = done.replaced_deleted,
            "repaired what the last stop left in flight"
        );
    }
    Ok((done, next_seq))
}

fn push_unique(v: &mut Vec<PathBuf>, p: PathBuf) {
    if !v.contains(&p) {
        v.push(p);
    }
}
