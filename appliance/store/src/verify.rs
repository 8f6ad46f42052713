//! `outpost verify`: every indexed file checked against its index entry, and every file on
//! disk checked for an entry. This reads the whole archive and is run on demand, never at
//! start-up.

use std::io::Read;
use std::path::{Path, PathBuf};

use dataset::meta::{FileMeta, MetaError, read_file_meta};
use dataset::ts::syntax_info;
use dataset::{Capture, Walked, Walker};
use redb::{ReadableDatabase, ReadableTable};

use crate::fs::Fs;
use crate::index;
use crate::record::{self, InstanceRecord, MAX_INDEXED_VALUE};
use crate::{Store, StoreError};

/// A Part 10 file read end to end.
pub(crate) struct Scan {
    pub meta: FileMeta,
    pub walked: Walked,
    pub size: u64,
    pub crc32c: u32,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Meta(#[from] MetaError),
    #[error("unknown transfer syntax {0}")]
    Syntax(String),
    #[error("{0}")]
    Walk(#[from] dataset::WalkError),
}

/// Reads a stored file completely: its header, a walk of its data set capturing the indexed
/// attributes, its size and CRC-32C.
pub(crate) fn scan_file(fs: &dyn Fs, path: &Path) -> Result<Scan, ScanError> {
    let mut file = fs.open(path)?;
    let mut head = Vec::new();
    let meta = {
        let mut tee = TeeReader {
            inner: &mut file,
            copy: &mut head,
        };
        read_file_meta(&mut tee)?
    };
    let info = syntax_info(&meta.transfer_syntax)
        .ok_or_else(|| ScanError::Syntax(meta.transfer_syntax.clone()))?;
    let mut walker = Walker::new(
        info,
        Capture::Tags {
            tags: record::capture_tags(),
            max_len: MAX_INDEXED_VALUE,
        },
    );
    let mut crc = crc32c::crc32c(&head);
    let mut size = head.len() as u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        walker.feed(&buf[..n])?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        size += n as u64;
    }
    Ok(Scan {
        meta,
        walked: walker.finish()?,
        size,
        crc32c: crc,
    })
}

struct TeeReader<'a, R: Read + ?Sized> {
    inner: &'a mut R,
    copy: &'a mut Vec<u8>,
}

impl<R: Read + ?Sized> Read for TeeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// One thing `outpost verify` found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyProblem {
    /// The index names a file that is not there.
    Missing {
        sop_instance_uid: String,
        file: String,
    },
    /// The file's size or checksum differs from what the index recorded at ingest.
    Damaged {
        sop_instance_uid: String,
        file: String,
        reason: String,
    },
    /// A file under `objects/` that no index entry names.
    Orphan { file: PathBuf },
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyProblem::Missing {
                sop_instance_uid,
                file,
            } => write!(
                f,
                "missing: instance {sop_instance_uid} is indexed at {file}, which does not exist"
            ),
            VerifyProblem::Damaged {
                sop_instance_uid,
                file,
                reason,
            } => write!(
                f,
                "damaged: instance {sop_instance_uid} at {file}: {reason}"
            ),
            VerifyProblem::Orphan { file } => write!(
                f,
                "orphan: {} is not in the index (left by a relaxed-durability crash or copied in by hand)",
                file.display()
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub instances: u64,
    pub bytes: u64,
    pub problems: Vec<VerifyProblem>,
}

impl Store {
    /// Checks every indexed file (existence, size, CRC-32C) and looks for unindexed files.
    /// `progress` is called with the number of instances checked so far.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport, StoreError> {
        let inner = &self.inner;
        let mut report = VerifyReport::default();
        let mut known = std::collections::HashSet::new();
        let txn = inner.index.get()?.begin_read()?;
        // Files replaced by overwrites wait for the next checkpoint to be deleted; they are
        // neither orphans nor problems.
        for row in txn.open_table(index::PENDING_DELETES)?.iter()? {
            known.insert(inner.layout.absolute(row?.0.value()));
        }
        // Held files are the archive's too: they wait for a person, not for deletion.
        for held in crate::quarantine::list(&txn)? {
            known.insert(inner.layout.absolute(&held.record.file));
        }
        let instances = txn.open_table(index::INSTANCES)?;
        let evicted = txn.open_table(crate::cache::EVICTED)?;
        for row in instances.iter()? {
            let (key, value) = row?;
            let uid = key.value().to_string();
            let rec: InstanceRecord = record::decode(value.value())?;
            report.instances += 1;
            progress(report.instances);
            // An evicted instance is held upstream only; its file is meant to be gone.
            if evicted.get(uid.as_str())?.is_some() {
                continue;
            }
            let path = inner.layout.absolute(&rec.file);
            known.insert(path.clone());
            let mut file = match inner.fs.open(&path) {
                Ok(f) => f,
                Err(_) => {
                    report.problems.push(VerifyProblem::Missing {
                        sop_instance_uid: uid,
                        file: rec.file,
                    });
                    continue;
                }
            };
            let mut crc = 0u32;
            let mut size = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            let read = loop {
                match file.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        crc = crc32c::crc32c_append(crc, &buf[..n]);
                        size += n as u64;
                    }
                    Err(e) => break Err(e),
                }
            };
            report.bytes += size;
            let reason = match read {
                Err(e) => Some(format!("read error: {e}")),
                Ok(()) if size != rec.size => {
                    Some(format!("size is {size} bytes, {} were stored", rec.size))
                }
                Ok(()) if crc != rec.crc32c => Some(format!(
                    "CRC-32C is {crc:08x}, {:08x} was stored",
                    rec.crc32c
                )),
                Ok(()) => None,
            };
            if let Some(reason) = reason {
                report.problems.push(VerifyProblem::Damaged {
                    sop_instance_uid: uid,
                    file: rec.file,
                    reason,
                });
            }
        }
        let mut stack = vec![inner.layout.objects_dir()];
        while let Some(dir) = stack.pop() {
            let names = inner
                .fs
                .list_dir(&dir)
                .map_err(|e| StoreError::io(&dir, e))?;
            for name in names {
                let path = dir.join(name);
                if inner.fs.is_dir(&path) {
                    stack.push(path);
                } else if !known.contains(&path) {
                    report.problems.push(VerifyProblem::Orphan { file: path });
                }
            }
        }
        Ok(report)
    }
}
