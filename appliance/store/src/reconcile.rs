//! Start-up repair of what a crash left in flight, and nothing more: its cost depends on how
//! many instances were unsettled (at most one checkpoint's worth), never on the size of the
//! archive.
//!
//! The record of in-flight work is `tmp/` itself (see `commit.rs`):
//! - `<id>.part`: the instance was still arriving and was never acknowledged; remove it;
//! - `<id>.<crc>.<size>.ready`: the instance arrived whole. If its contents match the CRC and
//!   size its name carries, it may have been acknowledged: give it its final name if it lacks
//!   one, file it in the index if the index lacks it (the duplicate policy applies), make both
//!   durable, then remove the temporary name. If a complete read shows they do not match, the
//!   name outlived its data (possible only with relaxed durability, or before the
//!   acknowledgement): remove it. If the file cannot be read at all (EIO from a marginal disk
//!   after the power cut, EACCES, EMFILE), nothing says its data is gone: it may be the only
//!   copy of an acknowledged instance, so it is kept as it is, reported, and tried again at the
//!   next start.
//!
//! Files listed in `pending_deletes` (replaced by an overwrite) are deleted too.

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
    /// Received files that turned out to be duplicates or damaged, removed.
    pub finished_discarded: usize,
    /// Files replaced by overwrites, deleted.
    pub replaced_deleted: usize,
    /// Received files that could not be read, left as they are for the next start.
    pub unreadable: Vec<Unreadable>,
}

/// A received (`.ready`) file start-up repair could not read. It may hold the only copy of
/// an acknowledged instance, so it was neither filed nor removed; until it is readable its
/// instance may be missing from the index, or indexed with its final file unchecked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub file: PathBuf,
    /// The operating system's error number (EIO, EACCES, EMFILE...), when there is one.
    pub errno: Option<i32>,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} could not be read ({}); it was kept and will be tried again at the next start: check the disk (dmesg, `outpost status`) and the file's owner and permissions, then restart",
            self.file.display(),
            self.error
        )
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

pub(crate) fn run(
    config: &StoreConfig,
    layout: &Layout,
    fs: &dyn Fs,
    db: &Database,
) -> Result<Reconciled, StoreError> {
    let mut done = Reconciled::default();
    let tmp_dir = layout.tmp_dir();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| StoreError::io(&path, e)
    };

    // Replaced files whose deletion a crash may have interrupted.
    let pending: Vec<String> = {
        let txn = db.begin_read()?;
        let table = txn.open_table(index::PENDING_DELETES)?;
        let mut v = Vec::new();
        for row in table.iter()? {
            v.push(row?.0.value().to_string());
        }
        v
    };
    for rel in &pending {
        match fs.remove_file(&layout.absolute(rel)) {
            Ok(()) => done.replaced_deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&layout.absolute(rel), e)),
        }
    }

    let names = fs.list_dir(&tmp_dir).map_err(io(&tmp_dir))?;
    let mut to_remove: Vec<PathBuf> = Vec::new();
    let mut to_file = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    {
        let txn = db.begin_read()?;
        let instances = txn.open_table(index::INSTANCES)?;
        for name in names {
            let tmp = tmp_dir.join(&name);
            let (id, crc32c, size) = match TmpName::parse(&name) {
                None => {
                    warn!(file = %tmp.display(), "removing a stray file from the temporary directory");
                    to_remove.push(tmp);
                    continue;
                }
                Some(TmpName::Part(_)) => {
                    done.incomplete_removed += 1;
                    to_remove.push(tmp);
                    continue;
                }
                Some(TmpName::Ready { id, crc32c, size }) => (id, crc32c, size),
            };
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
                    warn!(file = %tmp.display(), error = %why, "removing a received file that cannot be indexed");
                    done.finished_discarded += 1;
                    to_remove.push(tmp);
                    to_remove.push(target);
                    continue;
                }
                Check::Unreadable(e) => {
                    let unreadable = Unreadable {
                        file: tmp,
                        errno: e.raw_os_error(),
                        error: e.to_string(),
                    };
                    error!(
                        file = %unreadable.file.display(),
                        errno = unreadable.errno,
                        "a received instance cannot be read at start-up: {unreadable}"
                    );
                    done.unreadable.push(unreadable);
                    continue;
                }
            };
            let x = match record::extract(&scan.walked) {
                Ok(x) => x,
                Err(e) => {
                    warn!(file = %tmp.display(), error = %e, "removing a received file that cannot be indexed");
                    done.finished_discarded += 1;
                    to_remove.push(tmp);
                    to_remove.push(target);
                    continue;
                }
            };
            if !fs.exists(&target) {
                let parent = target.parent().expect("object paths have a parent");
                for created in fs.create_dir_all(parent).map_err(io(parent))? {
                    push_unique(
                        &mut dirs,
                        created.parent().expect("has a parent").to_path_buf(),
                    );
                }
                fs.hard_link(&tmp, &target).map_err(io(&target))?;
            }
            push_unique(
                &mut dirs,
                target.parent().expect("has a parent").to_path_buf(),
            );
            let indexed = match instances.get(x.sop_instance_uid.as_str())? {
                Some(v) => record::decode::<InstanceRecord>(v.value())?.file == rel,
                None => false,
            };
            if !indexed {
                to_file.push((target, rel, scan, x));
            }
            to_remove.push(tmp);
        }
    }

    if !to_remove.is_empty() || !pending.is_empty() {
        // The final names and the index durable before any temporary name goes.
        dirs.sort_by_key(|d| d.components().count());
        for dir in &dirs {
            fs.sync_dir(dir).map_err(io(dir))?;
        }
        let mut replaced = Vec::new();
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        {
            let mut tables = Tables::open(&txn)?;
            for rel in &pending {
                tables.pending_deletes.remove(rel.as_str())?;
            }
            let overwrite = config.duplicates == DuplicatePolicy::Overwrite;
            let mut enqueuer = match &config.router {
                Some(router) => Some(Enqueuer::new(router.as_ref(), &txn)?),
                None => None,
            };
            let mut bytes = 0i64;
            for (target, rel, scan, x) in &to_file {
                let record = InstanceRecord {
                    study_uid: String::new(),
                    series_uid: String::new(),
                    sop_class_uid: x.sop_class_uid.clone(),
                    transfer_syntax: scan.meta.transfer_syntax.clone(),
                    file: rel.clone(),
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
                        .is_none_or(|r| r.route(&source_ae, x).is_empty());
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
                        to_remove.push(target.clone());
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
        for rel in replaced {
            let _ = fs.remove_file(&layout.absolute(&rel));
        }
    }
    for path in to_remove {
        if let Err(e) = fs.remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(StoreError::io(&path, e));
        }
    }
    if done != Reconciled::default() {
        info!(
            unreadable = done.unreadable.len(),
            incomplete_removed = done.incomplete_removed,
            finished_indexed = done.finished_indexed,
            finished_discarded = done.finished_discarded,
            replaced_deleted = done.replaced_deleted,
            "repaired what the last stop left in flight"
        );
    }
    Ok(done)
}

fn push_unique(v: &mut Vec<PathBuf>, p: PathBuf) {
    if !v.contains(&p) {
        v.push(p);
    }
}
