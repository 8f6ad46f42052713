//! In-memory backends that model a power cut: everything not yet flushed is lost.
//!
//! [`MemFs`] implements the store's [`Fs`] seam and [`MemBackend`] redb's storage backend.
//! Both keep two images of their state: what was written (volatile) and what was flushed
//! (durable). A shared [`Power`] counts mutating operations and, at a chosen count, cuts:
//! that operation and every later one fail, as the machine would have stopped. The test then
//! builds fresh backends from the durable images alone, as a reboot would find the disk, and
//! reopens the store on them.
//!
//! The model is strict POSIX: `fdatasync` on a file makes its contents durable but not its
//! name; a name (creation, link, removal) becomes durable only when its directory is synced.
//! Real file systems are often kinder (ext4 commits the name with the data); the store must
//! not rely on that.
//!
//! [`MemFs::inject`] makes chosen paths fail to open, read, link, remove, sync or list with a
//! given errno (EIO from a marginal disk, EACCES after a permission change, EMFILE), as the
//! disk may after a power cut, so start-up repair can be shown to keep what it cannot read or
//! finish, and to say so.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::fs::{FileReader, FileWriter, Fs};

/// The power supply shared by a set of backends.
#[derive(Debug)]
pub struct Power {
    remaining: AtomicU64,
    cut: AtomicBool,
    ticks: AtomicU64,
}

impl Power {
    /// Power that fails after `ops` mutating operations (`u64::MAX`: never).
    pub fn cut_after(ops: u64) -> Arc<Power> {
        Arc::new(Power {
            remaining: AtomicU64::new(ops),
            cut: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        })
    }

    pub fn steady() -> Arc<Power> {
        Power::cut_after(u64::MAX)
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Cuts the power now.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Mutating operations performed so far (to pick a cut point from a dry run).
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::SeqCst)
    }

    fn tick(&self) -> io::Result<()> {
        self.check()?;
        self.ticks.fetch_add(1, Ordering::SeqCst);
        if self.remaining.load(Ordering::SeqCst) == u64::MAX {
            return Ok(());
        }
        // Concurrent ticks may take the counter below zero; the cut flag settles that.
        let before = self.remaining.fetch_sub(1, Ordering::SeqCst);
        if before <= 1 {
            self.cut();
            return Err(lost());
        }
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.is_cut() { Err(lost()) } else { Ok(()) }
    }
}

fn lost() -> io::Error {
    io::Error::other("power lost (simulated)")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Clone, Debug, Default)]
struct Dir {
    volatile: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
}

#[derive(Clone, Debug, Default)]
struct FileData {
    volatile: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct FsState {
    dirs: HashMap<PathBuf, Dir>,
    files: HashMap<u64, FileData>,
    next_inode: u64,
    faults: HashMap<PathBuf, Fault>,
}

/// An I/O error a file gives instead of its contents (see [`MemFs::inject`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Opening the file fails with this errno (`libc`'s numbering, as `io::Error` has it).
    Open(i32),
    /// Opening succeeds; reading fails with `errno` once `after` bytes were read.
    Read { after: u64, errno: i32 },
    /// Hard-linking another file to this name fails with this errno.
    Link(i32),
    /// Removing this name fails with this errno.
    Remove(i32),
    /// Syncing this directory fails with this errno.
    SyncDir(i32),
    /// Listing this directory fails with this errno.
    List(i32),
}

/// A file's contents that fail to read past a point.
struct FailingReader {
    data: Cursor<Vec<u8>>,
    fail_at: u64,
    errno: i32,
}

impl io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.data.position();
        if pos >= self.fail_at {
            return Err(io::Error::from_raw_os_error(self.errno));
        }
        let room = usize::try_from(self.fail_at - pos).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        self.data.read(&mut buf[..n])
    }
}

impl io::Seek for FailingReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.data.seek(to)
    }
}

/// An in-memory file system with power cuts; see the module documentation.
#[derive(Clone)]
pub struct MemFs {
    state: Arc<Mutex<FsState>>,
    power: Arc<Power>,
}

impl fmt::Debug for MemFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemFs")
    }
}

impl MemFs {
    /// An empty file system whose root directory `/` exists durably.
    pub fn new(power: Arc<Power>) -> MemFs {
        let mut state = FsState::default();
        state.dirs.insert(PathBuf::from("/"), Dir::default());
        MemFs {
            state: Arc::new(Mutex::new(state)),
            power,
        }
    }

    /// The file system as a reboot after the power cut finds it: only durable names and
    /// durable contents, reachable from the root.
    pub fn after_power_cut(&self, power: Arc<Power>) -> MemFs {
        let old = self.state.lock().expect("fs lock");
        let mut state = FsState {
            next_inode: old.next_inode,
            ..FsState::default()
        };
        let mut stack = vec![PathBuf::from("/")];
        while let Some(path) = stack.pop() {
            let Some(dir) = old.dirs.get(&path) else {
                continue;
            };
            for (name, entry) in &dir.durable {
                match entry {
                    Entry::Dir => stack.push(path.join(name)),
                    Entry::File(inode) => {
                        let durable = old
                            .files
                            .get(inode)
                            .map(|f| f.durable.clone())
                            .unwrap_or_default();
                        state.files.insert(
                            *inode,
                            FileData {
                                volatile: durable.clone(),
                                durable,
                            },
                        );
                    }
                }
            }
            state.dirs.insert(
                path,
                Dir {
                    volatile: dir.durable.clone(),
                    durable: dir.durable.clone(),
                },
            );
        }
        MemFs {
            state: Arc::new(Mutex::new(state)),
            power,
        }
    }

    /// Makes `path` fail with `fault` from now on (until [`MemFs::heal`]); one fault a path.
    /// Faults belong to this instance: [`MemFs::after_power_cut`] starts without any.
    pub fn inject(&self, path: &Path, fault: Fault) {
        let mut state = self.state.lock().expect("fs lock");
        state.faults.insert(path.to_path_buf(), fault);
    }

    /// Removes every injected fault: the disk answers again.
    pub fn heal(&self) {
        self.state.lock().expect("fs lock").faults.clear();
    }

    fn split(path: &Path) -> io::Result<(PathBuf, String)> {
        let parent = path.parent().ok_or_else(|| io::Error::other("no parent"))?;
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?
            .to_string_lossy()
            .into_owned();
        Ok((parent.to_path_buf(), name))
    }

    /// The injected error for `op` on `path`, if any: `op` picks the variant it answers.
    fn fault(state: &FsState, path: &Path, op: fn(Fault) -> Option<i32>) -> io::Result<()> {
        match state.faults.get(path).copied().and_then(op) {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    fn lookup(state: &FsState, path: &Path) -> Option<Entry> {
        if path == Path::new("/") {
            return Some(Entry::Dir);
        }
        let (parent, name) = Self::split(path).ok()?;
        state.dirs.get(&parent)?.volatile.get(&name).copied()
    }
}

struct MemWriter {
    fs: MemFs,
    inode: u64,
}

impl FileWriter for MemWriter {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.fs.power.tick()?;
        let mut state = self.fs.state.lock().expect("fs lock");
        state
            .files
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("file vanished"))?
            .volatile
            .extend_from_slice(data);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.fs.power.tick()?;
        let mut state = self.fs.state.lock().expect("fs lock");
        let f = state
            .files
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::other("file vanished"))?;
        f.durable = f.volatile.clone();
        Ok(())
    }
}

impl Fs for MemFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        self.power.tick()?;
        let mut state = self.state.lock().expect("fs lock");
        let (parent, name) = Self::split(path)?;
        let inode = state.next_inode;
        let dir = state
            .dirs
            .get_mut(&parent)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if dir.volatile.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        dir.volatile.insert(name, Entry::File(inode));
        state.next_inode += 1;
        state.files.insert(inode, FileData::default());
        drop(state);
        Ok(Box::new(MemWriter {
            fs: self.clone(),
            inode,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FileReader>> {
        self.power.check()?;
        let state = self.state.lock().expect("fs lock");
        let fault = state.faults.get(path).copied();
        if let Some(Fault::Open(errno)) = fault {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let data = match Self::lookup(&state, path) {
            Some(Entry::File(inode)) => state
                .files
                .get(&inode)
                .map(|f| f.volatile.clone())
                .unwrap_or_default(),
            _ => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        match fault {
            Some(Fault::Read { after, errno }) => Ok(Box::new(FailingReader {
                data: Cursor::new(data),
                fail_at: after,
                errno,
            })),
            _ => Ok(Box::new(Cursor::new(data))),
        }
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.power.tick()?;
        let mut state = self.state.lock().expect("fs lock");
        match Self::lookup(&state, path) {
            Some(Entry::File(inode)) => {
                let f = state
                    .files
                    .get_mut(&inode)
                    .ok_or_else(|| io::Error::other("file vanished"))?;
                f.durable = f.volatile.clone();
                Ok(())
            }
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let state = self.state.lock().expect("fs lock");
        match Self::lookup(&state, path) {
            Some(Entry::File(inode)) => Ok(state
                .files
                .get(&inode)
                .map_or(0, |f| f.volatile.len() as u64)),
            _ => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        Self::lookup(&self.state.lock().expect("fs lock"), path).is_some()
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.power.tick()?;
        let mut state = self.state.lock().expect("fs lock");
        Self::fault(&state, to, |f| match f {
            Fault::Link(e) => Some(e),
            _ => None,
        })?;
        let Some(Entry::File(inode)) = Self::lookup(&state, from) else {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        };
        let (parent, name) = Self::split(to)?;
        let dir = state
            .dirs
            .get_mut(&parent)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if dir.volatile.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        dir.volatile.insert(name, Entry::File(inode));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.power.tick()?;
        let mut state = self.state.lock().expect("fs lock");
        let (from_dir, from_name) = Self::split(from)?;
        let (to_dir, to_name) = Self::split(to)?;
        if from_dir != to_dir {
            return Err(io::Error::other(
                "renames across directories are not modelled",
            ));
        }
        let dir = state
            .dirs
            .get_mut(&from_dir)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let entry = dir
            .volatile
            .remove(&from_name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        dir.volatile.insert(to_name, entry);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.power.tick()?;
        let mut state = self.state.lock().expect("fs lock");
        Self::fault(&state, path, |f| match f {
            Fault::Remove(e) => Some(e),
            _ => None,
        })?;
        let (parent, name) = Self::split(path)?;
        let dir = state
            .dirs
            .get_mut(&parent)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        match dir.volatile.remove(&name) {
            Some(Entry::File(_)) => Ok(()),
            Some(e) => {
                dir.volatile.insert(name, e);
                Err(io::Error::other("is a directory"))
            }
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        {
            let state = self.state.lock().expect("fs lock");
            let mut p = path.to_path_buf();
            while Self::lookup(&state, &p).is_none() {
                missing.push(p.clone());
                match p.parent() {
                    Some(parent) => p = parent.to_path_buf(),
                    None => break,
                }
            }
        }
        missing.reverse();
        for dir in &missing {
            self.power.tick()?;
            let mut state = self.state.lock().expect("fs lock");
            let (parent, name) = Self::split(dir)?;
            state
                .dirs
                .get_mut(&parent)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
                .volatile
                .insert(name, Entry::Dir);
            state.dirs.entry(dir.clone()).or_default();
        }
        Ok(missing)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.power.tick()?;
        let mut state = self.state.lock().expect("fs lock");
        Self::fault(&state, path, |f| match f {
            Fault::SyncDir(e) => Some(e),
            _ => None,
        })?;
        let dir = state
            .dirs
            .get_mut(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        dir.durable = dir.volatile.clone();
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.state.lock().expect("fs lock");
        Self::fault(&state, path, |f| match f {
            Fault::List(e) => Some(e),
            _ => None,
        })?;
        state
            .dirs
            .get(path)
            .filter(|_| Self::lookup(&state, path) == Some(Entry::Dir))
            .map(|d| d.volatile.keys().cloned().collect())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn is_dir(&self, path: &Path) -> bool {
        Self::lookup(&self.state.lock().expect("fs lock"), path) == Some(Entry::Dir)
    }

    fn available_bytes(&self, _path: &Path) -> io::Result<u64> {
        Ok(u64::MAX / 2)
    }

    fn total_bytes(&self, _path: &Path) -> io::Result<u64> {
        Ok(u64::MAX)
    }
}

#[derive(Debug, Default, Clone)]
struct Image {
    volatile: Vec<u8>,
    durable: Vec<u8>,
}

/// A redb storage backend in memory with power cuts; see the module documentation.
#[derive(Clone)]
pub struct MemBackend {
    image: Arc<Mutex<Image>>,
    power: Arc<Power>,
}

impl fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemBackend")
    }
}

impl MemBackend {
    pub fn new(power: Arc<Power>) -> MemBackend {
        MemBackend {
            image: Arc::default(),
            power,
        }
    }

    /// The database file as a reboot after the power cut finds it.
    pub fn after_power_cut(&self, power: Arc<Power>) -> MemBackend {
        let durable = self.image.lock().expect("image lock").durable.clone();
        MemBackend {
            image: Arc::new(Mutex::new(Image {
                volatile: durable.clone(),
                durable,
            })),
            power,
        }
    }
}

impl redb::StorageBackend for MemBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.power.check()?;
        Ok(self.image.lock().expect("image lock").volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.power.check()?;
        let image = self.image.lock().expect("image lock");
        let start = offset as usize;
        let end = start + out.len();
        if end > image.volatile.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        out.copy_from_slice(&image.volatile[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.power.tick()?;
        self.image
            .lock()
            .expect("image lock")
            .volatile
            .resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.power.tick()?;
        let mut image = self.image.lock().expect("image lock");
        image.durable = image.volatile.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.power.tick()?;
        let mut image = self.image.lock().expect("image lock");
        let start = offset as usize;
        let end = start + data.len();
        if end > image.volatile.len() {
            image.volatile.resize(end, 0);
        }
        image.volatile[start..end].copy_from_slice(data);
        Ok(())
    }
}
