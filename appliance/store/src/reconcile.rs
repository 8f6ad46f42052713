//! Start-up repair of what a crash left in flight, and nothing more: its cost depends on how
//! many instances were being received, never on the size of the archive.
//!
//! The record of in-flight writes is `tmp/` itself (see the commit order in `commit.rs`):
//! every file that may have a final name without an index entry still has its temporary name.
//! For each `tmp/<id>.part`:
//! - no final file: the instance never got past receiving and was never acknowledged; remove it;
//! - a final file the index already points to: only the clean-up was lost; remove the name;
//! - a final file the index lacks: the crash came between linking and committing; sync the
//!   file and its directory, then file it in the index (applying the duplicate policy).
//!
//! Replaced files listed in `pending_deletes` are deleted too.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};
use tracing::{info, warn};

use crate::fs::Fs;
use crate::index::{self, Filed, Tables};
use crate::layout::{FileId, Layout, unix_now};
use crate::record::{self, InstanceRecord};
use crate::verify::scan_file;
use crate::{DuplicatePolicy, StoreConfig, StoreError};

/// What start-up repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Temporary files of instances that were still being received, removed.
    pub incomplete_removed: usize,
    /// Finished files that lacked their index entry, now indexed.
    pub finished_indexed: usize,
    /// Finished files that turned out to be duplicates or unreadable, removed.
    pub finished_discarded: usize,
    /// Files replaced by overwrites, deleted.
    pub replaced_deleted: usize,
}

pub(crate) fn run(
    config: &StoreConfig,
    layout: &Layout,
    fs: &dyn Fs,
    db: &Database,
) -> Result<Reconciled, StoreError> {
    let mut done = Reconciled::default();
    let tmp_dir = layout.tmp_dir();

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

    let names = fs
        .list_dir(&tmp_dir)
        .map_err(|e| StoreError::io(&tmp_dir, e))?;
    let mut to_remove = Vec::new();
    let mut to_file = Vec::new();
    {
        let txn = db.begin_read()?;
        let instances = txn.open_table(index::INSTANCES)?;
        for name in names {
            let tmp = tmp_dir.join(&name);
            let Some(id) = FileId::from_tmp_name(&name) else {
                warn!(file = %tmp.display(), "removing a stray file from the temporary directory");
                to_remove.push(tmp);
                continue;
            };
            let rel = layout.object_rel(&id);
            let target = layout.absolute(&rel);
            if !fs.exists(&target) {
                done.incomplete_removed += 1;
                to_remove.push(tmp);
                continue;
            }
            match scan_file(fs, &target) {
                Ok(scan) => {
                    let x = match record::extract(&scan.walked) {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(file = %target.display(), error = %e, "removing a finished file that cannot be indexed");
                            done.finished_discarded += 1;
                            to_remove.push(target);
                            to_remove.push(tmp);
                            continue;
                        }
                    };
                    let indexed = match instances.get(x.sop_instance_uid.as_str())? {
                        Some(v) => record::decode::<InstanceRecord>(v.value())?.file == rel,
                        None => false,
                    };
                    if indexed {
                        to_remove.push(tmp);
                    } else {
                        to_file.push((tmp, target, rel, scan, x));
                    }
                }
                Err(e) => {
                    // Only possible with relaxed durability, whose loss window this is.
                    warn!(file = %target.display(), error = %e, "removing an unreadable finished file (an instance acknowledged under relaxed durability was lost)");
                    done.finished_discarded += 1;
                    to_remove.push(target);
                    to_remove.push(tmp);
                }
            }
        }
    }

    if !to_file.is_empty() || !pending.is_empty() {
        let mut replaced = Vec::new();
        for (_, target, ..) in &to_file {
            fs.sync_file(target)
                .map_err(|e| StoreError::io(target, e))?;
            let dir = target.parent().unwrap_or(Path::new("/"));
            fs.sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        {
            let mut tables = Tables::open(&txn)?;
            for rel in &pending {
                tables.pending_deletes.remove(rel.as_str())?;
            }
            let overwrite = config.duplicates == DuplicatePolicy::Overwrite;
            for (tmp, target, rel, scan, x) in &to_file {
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
                match tables.file_instance(x, record, overwrite, unix_now())? {
                    Filed::New => done.finished_indexed += 1,
                    Filed::KeptFirst => {
                        done.finished_discarded += 1;
                        to_remove.push(target.clone());
                    }
                    Filed::Overwrote { old_file } => {
                        done.finished_indexed += 1;
                        tables.pending_deletes.insert(old_file.as_str(), ())?;
                        replaced.push(old_file);
                    }
                }
                to_remove.push(tmp.clone());
            }
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
            incomplete_removed = done.incomplete_removed,
            finished_indexed = done.finished_indexed,
            finished_discarded = done.finished_discarded,
            replaced_deleted = done.replaced_deleted,
            "repaired what the last stop left in flight"
        );
    }
    Ok(done)
}
