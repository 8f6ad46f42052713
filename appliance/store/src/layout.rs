//! Where things live under the data directory, and how stored files are named.
//!
//! ```text
//! <data_dir>/index.redb                       the index
//! <data_dir>/tmp/<id>.part                    instances being received
//! <data_dir>/tmp/<id>.spare                   files made ahead, empty until an instance arrives
//! <data_dir>/tmp/<id>.<seq>.<crc>.<size>.ready  received instances not yet checkpointed
//! <data_dir>/objects/YYYY/MM/DD/HH/<id>.dcm   stored instances (Part 10 files)
//! ```
//!
//! A file id is `YYYYMMDDHH-<16 hex digits>`: the hour it was received and a random part. The
//! final path follows from the id alone, so a leftover temporary name says which final file it
//! was becoming. A `.ready` name also carries the file's CRC-32C and size, so start-up repair
//! can tell a complete file from one whose name outlived its data, and a sequence number (16
//! hex digits, rising in the order instances were received whole), so repair files them in
//! the order the committer did: under `overwrite` the later of two versions of one instance
//! must win. Names without a sequence (`<id>.<crc>.<size>.ready`, before layout version 2)
//! are still read, as older than any with one. Grouping by hour keeps the files of one burst
//! of ingest in one directory, so a group commit syncs one or two directories, not one per
//! instance.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

/// The name of one stored file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileId(String);

impl FileId {
    pub fn new(now: SystemTime) -> FileId {
        let stamp = humantime::format_rfc3339_seconds(now).to_string();
        // "2026-11-22T07:44:32Z" -> "2026112207"
        let hour: String = stamp
            .chars()
            .filter(char::is_ascii_digit)
            .take(10)
            .collect();
        FileId(format!("{hour}-{:016x}", rand::random::<u64>()))
    }

    fn parse(id: &str) -> Option<FileId> {
        let (hour, random) = id.split_once('-')?;
        (hour.len() == 10
            && hour.bytes().all(|b| b.is_ascii_digit())
            && random.len() == 16
            && random.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| FileId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a name in `tmp/` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TmpName {
    /// Still being received.
    Part(FileId),
    /// Created ahead of need and never written (see `spare`).
    Spare(FileId),
    /// Received whole: the file should have this CRC-32C and size. `seq` orders it among the
    /// other `.ready` files; `None` for a name from before layout version 2 (older than any).
    Ready {
        id: FileId,
        seq: Option<u64>,
        crc32c: u32,
        size: u64,
    },
}

impl TmpName {
    pub fn parse(name: &str) -> Option<TmpName> {
        if let Some(id) = name.strip_suffix(".part") {
            return FileId::parse(id).map(TmpName::Part);
        }
        if let Some(id) = name.strip_suffix(".spare") {
            return FileId::parse(id).map(TmpName::Spare);
        }
        let rest = name.strip_suffix(".ready")?;
        let parts: Vec<&str> = rest.split('.').collect();
        let (id, seq, crc32c, size) = match parts[..] {
            [id, crc32c, size] => (id, None, crc32c, size),
            [id, seq, crc32c, size] => (id, Some(seq), crc32c, size),
            _ => return None,
        };
        let seq = match seq {
            None => None,
            Some(s) if s.len() == 16 => Some(u64::from_str_radix(s, 16).ok()?),
            Some(_) => return None,
        };
        Some(TmpName::Ready {
            id: FileId::parse(id)?,
            seq,
            crc32c: u32::from_str_radix(crc32c, 16).ok()?,
            size: size.parse().ok()?,
        })
    }

    pub fn id(&self) -> &FileId {
        match self {
            TmpName::Part(id) | TmpName::Spare(id) | TmpName::Ready { id, .. } => id,
        }
    }
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> PathBuf {
        self.root.join("index.redb")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.root.join("objects")
    }

    pub fn tmp_path(&self, id: &FileId) -> PathBuf {
        self.tmp_dir().join(format!("{}.part", id.0))
    }

    /// A file created ahead of need, for an instance not yet arriving.
    pub fn spare_path(&self, id: &FileId) -> PathBuf {
        self.tmp_dir().join(format!("{}.spare", id.0))
    }

    /// The name of a received file: `seq` from [`ReadySeq::next`].
    pub fn ready_path(&self, id: &FileId, seq: u64, crc32c: u32, size: u64) -> PathBuf {
        self.tmp_dir()
            .join(format!("{}.{seq:016x}.{crc32c:08x}.{size}.ready", id.0))
    }

    /// The final path of a file, relative to the data directory (as the index stores it).
    pub fn object_rel(&self, id: &FileId) -> String {
        let h = &id.0;
        format!(
            "objects/{}/{}/{}/{}/{}.dcm",
            &h[0..4],
            &h[4..6],
            &h[6..8],
            &h[8..10],
            h
        )
    }

    pub fn absolute(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// The sequence numbers of `.ready` names. Start-up repair starts it above every number still
/// in `tmp/`, so the numbers keep rising across restarts wherever their order matters: among
/// the `.ready` files present at one repair.
#[derive(Debug, Default)]
pub struct ReadySeq(AtomicU64);

impl ReadySeq {
    pub fn starting_at(first: u64) -> ReadySeq {
        ReadySeq(AtomicU64::new(first))
    }

    /// The number for an instance just received whole, higher than any given before.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_final_path() {
        let l = Layout::new("/data");
        let id = FileId::new(UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000));
        let tmp = l.tmp_path(&id);
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert_eq!(TmpName::parse(name), Some(TmpName::Part(id.clone())));
        let ready = l.ready_path(&id, 42, 0xdeadbeef, 12345);
        let name = ready.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            TmpName::parse(name),
            Some(TmpName::Ready {
                id: id.clone(),
                seq: Some(42),
                crc32c: 0xdeadbeef,
                size: 12345
            })
        );
        // Layout version 1 names, without a sequence, are still read.
        let old = format!("{}.deadbeef.12345.ready", id.as_str());
        assert_eq!(
            TmpName::parse(&old),
            Some(TmpName::Ready {
                id: id.clone(),
                seq: None,
                crc32c: 0xdeadbeef,
                size: 12345
            })
        );
        assert_eq!(
            TmpName::parse(&format!("{}.2a.deadbeef.12345.ready", id.as_str())),
            None
        );
        assert!(l.object_rel(&id).starts_with("objects/2026/11/18/"));
        assert_eq!(TmpName::parse("junk.part"), None);
        assert_eq!(TmpName::parse("2026111807-zz.part"), None);
        assert_eq!(
            TmpName::parse("2026111807-0123456789abcdef.zz.1.ready"),
            None
        );
    }
}
