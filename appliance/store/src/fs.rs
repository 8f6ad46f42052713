//! The narrow file-system seam the store does all its file I/O through, so that tests can
//! run the store over a backend that loses unflushed writes at a chosen moment
//! ([`crate::crash`]).
//!
//! Only the operations whose durability matters are here; each is named for what it
//! guarantees. Paths are absolute.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// A file being written. Nothing written is durable before [`FileWriter::sync`] returns.
pub trait FileWriter: Send {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes the data written so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Starts writing back what was written so far, without waiting and without promising
    /// anything: the later [`FileWriter::sync`] then waits only for what came after.
    fn start_writeback(&mut self) {}
}

/// A file being read.
pub trait FileReader: Read + Seek + Send {}
impl<T: Read + Seek + Send> FileReader for T {}

/// The file-system operations of the store.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    /// Creates a new file, failing if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FileWriter>>;
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileReader>>;
    /// Makes an existing file's data durable (for files found after a crash).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Size of a file in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    fn exists(&self, path: &Path) -> bool;
    /// Adds a second name for a file; fails if `to` exists. Durable once `to`'s directory is synced.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames a file within a directory. Durable once the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a name. Durable once its directory is synced.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its missing parents; returns the directories it created,
    /// outermost first, so their parents can be synced.
    fn create_dir_all(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
    /// Makes a directory's entries (creations, links, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Names in a directory (files and directories), unsorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn is_dir(&self, path: &Path) -> bool;
    /// Bytes available to unprivileged writers on the file system holding `path`.
    fn available_bytes(&self, path: &Path) -> io::Result<u64>;
    /// Size of the file system holding `path`.
    fn total_bytes(&self, path: &Path) -> io::Result<u64>;
    /// Whether the store may create temporary files ahead of need, in the background (see
    /// `spare`). Off for the test file systems, whose crash points count operations and must
    /// not depend on when a background task ran.
    fn creates_ahead(&self) -> bool {
        false
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

struct OsWriter(File);

impl FileWriter for OsWriter {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn start_writeback(&mut self) {
        start_writeback(&self.0);
    }
}

/// `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`: queues the file's dirty pages for
/// write-back while the rest of the instance is still arriving. With one association the
/// final fdatasync of a 512 KB instance then took 0.41 ms instead of 0.70 (median of 200,
/// this machine type). A failure only loses the head start, and the sync reports real errors.
#[allow(unsafe_code)]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call (`file` is borrowed); the call takes
    // no pointers and changes no memory of ours.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

impl Fs for OsFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        let f = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(OsWriter(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileReader>> {
        Ok(Box::new(File::open(path)?))
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_data()
    }
    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let mut p = path;
        while !p.exists() {
            missing.push(p.to_path_buf());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        missing.reverse();
        for dir in &missing {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                // Another writer created it meanwhile: not ours to sync, but not an error.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Ok(missing)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn available_bytes(&self, path: &Path) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }
    fn total_bytes(&self, path: &Path) -> io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok(st.blocks() as u64 * st.fragment_size() as u64)
    }
    fn creates_ahead(&self) -> bool {
        true
    }
}
