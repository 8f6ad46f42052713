//! The durable part of accounts: users and API tokens in `accounts.redb` under the data
//! directory. Sessions and login failures are kept in memory only: sessions need not
//! survive a restart, and failures lost to one give an attacker only a few more tries.
//!
//! # Design
//!
//! ## Layout (accounts format 1)
//!
//! One redb file, `<data_dir>/accounts.redb`, with these tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `u64`: `min_reader_version`, `last_writer_version`, `next_user_id`, `next_token_id` |
//! | `users_v1` | user name (`&str`) | postcard `UserV1`: id, role code, argon2id PHC string, disabled, created and changed (ms since the Unix epoch) |
//! | `tokens_v1` | SHA-256 of the token (`&[u8]`, 32 bytes) | postcard `TokenV1`: token id, user id, user name, scope code, created (ms) |
//!
//! Role codes are 1 viewer, 2 technician, 3 admin; scope codes 1 `read`, 2 `read,store`.
//! A user id is never reused, so a table a later format keys by user id cannot attach its
//! rows to a user made again under an old name.
//!
//! ## Versions and rollback
//!
//! This build reads and writes format [`FORMAT_VERSION`]. The file says which readers may
//! open it: `min_reader_version`, the lowest format whose rules still hold for everything in
//! the file. A build refuses a file whose `min_reader_version` is above its own format
//! ([`AccountError::TooNew`]), before writing anything; it opens any other file, older or
//! newer. So a rollback to an older build keeps working as long as the newer one only added
//! to the file, and is refused, with the file untouched, when it did not.
//!
//! What a later format may do without raising `min_reader_version`, and so what this build
//! must tolerate in a file it opens:
//! - add tables (new fields of a user or token go into a new table keyed by user id or token
//!   hash, never into the `_v1` records): this build never opens, changes or deletes a table
//!   it does not know;
//! - add `meta` keys: this build only reads and writes its own.
//!
//! And what a later format must raise `min_reader_version` for: changing the encoding of a
//! `_v1` record, a new role or scope code, or anything that an older reader would get wrong
//! rather than merely not see. A new table's rows may outlive their user when an older build
//! removes the user (it does not know them); a later reader ignores rows whose user or
//! token is gone. Opening never lowers `min_reader_version`, and records
//! `last_writer_version` (the format of the last build that wrote), so that a later build
//! can tell that an older one has written since and rebuild whatever it derives.
//!
//! ## Commit order and invariants
//!
//! - Every change is one redb write transaction with durable (`Immediate`) commit, so on
//!   return it is on disk: an added user, a new password, a revoked token.
//! - Preconditions (the name is free, the last enabled administrator stays) are checked
//!   inside the transaction that makes the change, so two changes cannot both pass them.
//! - The in-memory copy that logins and token checks read is updated only after the commit
//!   succeeds, under the same lock that orders the writers; a failed commit changes nothing
//!   anyone sees.
//! - Passwords and API tokens are stored only hashed: argon2id PHC strings and SHA-256.
//! - A token's record names its user's id: a token whose user is gone, or was made again
//!   under the same name, is refused, and removing a user deletes its tokens in the same
//!   transaction.
//!
//! ## What it assumes of the disk
//!
//! What redb assumes: that data written before a completed `fsync` survives a power cut, and
//! that the disk does not lie about it. redb's commit is atomic under that assumption, so a
//! crash leaves each change whole or absent. The file opens with quick repair. A new file
//! is made readable by its owner only (mode 0600).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::{AccountError, Role, Scope};

/// The accounts format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// The `min_reader_version` this build writes into a file: the oldest format that can read
/// what this build writes. Raise it only for a change older readers would get wrong.
const MIN_READER_VERSION: u64 = 1;

/// The file's name under the data directory.
pub const FILE_NAME: &str = "accounts.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users_v1");
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens_v1");

const MIN_READER_KEY: &str = "min_reader_version";
const LAST_WRITER_KEY: &str = "last_writer_version";
const NEXT_USER_KEY: &str = "next_user_id";
const NEXT_TOKEN_KEY: &str = "next_token_id";

/// A user as stored (without the name, which is the key).
#[derive(Clone, Debug)]
pub(crate) struct UserRow {
    pub id: u64,
    pub role: Role,
    pub hash: String,
    pub disabled: bool,
    pub created: SystemTime,
    pub changed: SystemTime,
}

/// A token as stored (without its hash, which is the key).
#[derive(Clone, Debug)]
pub(crate) struct TokenRow {
    pub id: u64,
    pub user_id: u64,
    pub user: String,
    pub scope: Scope,
    pub created: SystemTime,
}

/// The encoding of `users_v1` values. Never change it: add a table instead.
#[derive(Serialize, Deserialize)]
struct UserV1 {
    id: u64,
    role: u8,
    hash: String,
    disabled: bool,
    created_ms: u64,
    changed_ms: u64,
}

/// The encoding of `tokens_v1` values. Never change it: add a table instead.
#[derive(Serialize, Deserialize)]
struct TokenV1 {
    id: u64,
    user_id: u64,
    user: String,
    scope: u8,
    created_ms: u64,
}

/// Everything the file holds that this build reads, loaded at open.
#[derive(Default)]
pub(crate) struct Loaded {
    pub users: HashMap<String, UserRow>,
    pub tokens: HashMap<[u8; 32], TokenRow>,
}

pub(crate) struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `accounts.redb` in `dir`, refusing a file a newer format
    /// wrote for readers newer than this one, and loads its users and tokens.
    pub(crate) fn open(dir: &Path) -> Result<(Store, Loaded), AccountError> {
        std::fs::create_dir_all(dir).map_err(|source| AccountError::Create {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        // Opening for writing writes redb's header, so a file this build may not read is
        // first looked at read-only and, if refused, left exactly as it was. (A file that
        // needs repair cannot be opened read-only; the check below then sees it.)
        if path.exists()
            && let Ok(db) = Database::builder().open_read_only(&path)
        {
            check_version(&path, min_reader_version(&db)?)?;
        }
        // The password hashes are for the service alone, not for everyone who may read the
        // data directory (the `outpost` group does): a new file is made owner-only before
        // redb fills it. An existing file keeps whatever mode an operator gave it.
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| AccountError::Create {
                    path: path.clone(),
                    source,
                })?;
        }
        let db = Database::builder()
            .create(&path)
            .map_err(|source| AccountError::Open {
                path: path.clone(),
                source,
            })?;
        let store = Store { db, path };
        // Read before any write of ours: this build's tables are not touched in a file
        // it may not read.
        let found = min_reader_version(&store.db)?;
        check_version(&store.path, found)?;
        let mut txn = store.db.begin_write()?;
        txn.set_quick_repair(true);
        {
            let mut meta = txn.open_table(META)?;
            let min = found.unwrap_or(0).max(MIN_READER_VERSION);
            meta.insert(MIN_READER_KEY, min)?;
            meta.insert(LAST_WRITER_KEY, FORMAT_VERSION)?;
            // Create this format's tables up front so readers never meet a missing one.
            txn.open_table(USERS)?;
            txn.open_table(TOKENS)?;
        }
        txn.commit()?;
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<Loaded, AccountError> {
        let txn = self.db.begin_read()?;
        let mut loaded = Loaded::default();
        for row in txn.open_table(USERS)?.iter()? {
            let (name, value) = row?;
            let name = name.value().to_string();
            let user = self.decode_user(&name, value.value())?;
            loaded.users.insert(name, user);
        }
        for row in txn.open_table(TOKENS)?.iter()? {
            let (hash, value) = row?;
            let hash = hash.value();
            let key: [u8; 32] = hash.try_into().map_err(|_| {
                self.corrupt(
                    "tokens_v1",
                    crate::secret::hex(hash),
                    format!("a key of {} bytes, not 32", hash.len()),
                )
            })?;
            let token = self.decode_token(&key, value.value())?;
            loaded.tokens.insert(key, token);
        }
        Ok(loaded)
    }

    fn corrupt(&self, table: &'static str, key: String, why: String) -> AccountError {
        AccountError::Corrupt {
            path: self.path.clone(),
            table,
            key,
            why,
        }
    }

    fn decode_user(&self, name: &str, bytes: &[u8]) -> Result<UserRow, AccountError> {
        let bad = |why: String| self.corrupt("users_v1", name.to_string(), why);
        let v: UserV1 = postcard::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
        Ok(UserRow {
            id: v.id,
            role: Role::from_code(v.role).ok_or_else(|| bad(format!("role code {}", v.role)))?,
            hash: v.hash,
            disabled: v.disabled,
            created: from_ms(v.created_ms),
            changed: from_ms(v.changed_ms),
        })
    }

    fn decode_token(&self, key: &[u8; 32], bytes: &[u8]) -> Result<TokenRow, AccountError> {
        // The key is a hash, not a secret: naming it lets a person find the row.
        let bad = |why: String| self.corrupt("tokens_v1", crate::secret::hex(key), why);
        let v: TokenV1 = postcard::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
        Ok(TokenRow {
            id: v.id,
            user_id: v.user_id,
            user: v.user,
            scope: Scope::from_code(v.scope)
                .ok_or_else(|| bad(format!("scope code {}", v.scope)))?,
            created: from_ms(v.created_ms),
        })
    }

    /// Runs `f` in one write transaction and commits it durably; nothing is written if `f`
    /// fails.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, AccountError>,
    ) -> Result<T, AccountError> {
        let mut txn = self.db.begin_write()?;
        // redb's default, said here: a change is on disk when its call returns.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| AccountError::Storage(e.into()))?;
        txn.set_quick_repair(true);
        let out = f(&mut Tx {
            txn: &txn,
            store: self,
        })?;
        txn.commit()?;
        Ok(out)
    }
}

/// The file's `min_reader_version`, if it has one (a new file has none).
fn min_reader_version(db: &impl ReadableDatabase) -> Result<Option<u64>, AccountError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(meta.get(MIN_READER_KEY)?.map(|v| v.value()))
}

fn check_version(path: &Path, found: Option<u64>) -> Result<(), AccountError> {
    match found {
        Some(v) if v > FORMAT_VERSION => Err(AccountError::TooNew {
            path: path.to_path_buf(),
            min_reader_version: v,
            ours: FORMAT_VERSION,
        }),
        _ => Ok(()),
    }
}

/// One write transaction's operations on this format's tables.
pub(crate) struct Tx<'a> {
    txn: &'a WriteTransaction,
    store: &'a Store,
}

impl Tx<'_> {
    pub(crate) fn user(&self, name: &str) -> Result<Option<UserRow>, AccountError> {
        let users = self.txn.open_table(USERS)?;
        let found = users.get(name)?;
        found
            .map(|v| self.store.decode_user(name, v.value()))
            .transpose()
    }

    pub(crate) fn users(&self) -> Result<Vec<(String, UserRow)>, AccountError> {
        let users = self.txn.open_table(USERS)?;
        let mut out = Vec::new();
        for row in users.iter()? {
            let (name, value) = row?;
            let name = name.value().to_string();
            let user = self.store.decode_user(&name, value.value())?;
            out.push((name, user));
        }
        Ok(out)
    }

    pub(crate) fn put_user(&self, name: &str, user: &UserRow) -> Result<(), AccountError> {
        let v = UserV1 {
            id: user.id,
            role: user.role.code(),
            hash: user.hash.clone(),
            disabled: user.disabled,
            created_ms: to_ms(user.created),
            changed_ms: to_ms(user.changed),
        };
        let bytes = postcard::to_stdvec(&v).expect("user records serialize");
        self.txn.open_table(USERS)?.insert(name, bytes.as_slice())?;
        Ok(())
    }

    /// Removes the user and every token of theirs; returns the hashes of those tokens.
    pub(crate) fn remove_user(&self, name: &str, id: u64) -> Result<Vec<[u8; 32]>, AccountError> {
        self.txn.open_table(USERS)?.remove(name)?;
        let mut gone = Vec::new();
        let mut tokens = self.txn.open_table(TOKENS)?;
        for row in tokens.iter()? {
            let (hash, value) = row?;
            let Ok(key) = <[u8; 32]>::try_from(hash.value()) else {
                continue;
            };
            if self.store.decode_token(&key, value.value())?.user_id == id {
                gone.push(key);
            }
        }
        for key in &gone {
            tokens.remove(key.as_slice())?;
        }
        Ok(gone)
    }

    pub(crate) fn put_token(&self, hash: &[u8; 32], token: &TokenRow) -> Result<(), AccountError> {
        let v = TokenV1 {
            id: token.id,
            user_id: token.user_id,
            user: token.user.clone(),
            scope: token.scope.code(),
            created_ms: to_ms(token.created),
        };
        let bytes = postcard::to_stdvec(&v).expect("token records serialize");
        self.txn
            .open_table(TOKENS)?
            .insert(hash.as_slice(), bytes.as_slice())?;
        Ok(())
    }

    /// Removes the token with this id; returns its hash, or `None` if there is none.
    pub(crate) fn remove_token(&self, id: u64) -> Result<Option<[u8; 32]>, AccountError> {
        let mut tokens = self.txn.open_table(TOKENS)?;
        let mut found = None;
        for row in tokens.iter()? {
            let (hash, value) = row?;
            let Ok(key) = <[u8; 32]>::try_from(hash.value()) else {
                continue;
            };
            if self.store.decode_token(&key, value.value())?.id == id {
                found = Some(key);
                break;
            }
        }
        if let Some(key) = &found {
            tokens.remove(key.as_slice())?;
        }
        Ok(found)
    }

    /// The next number of a counter in `meta`, starting at 1; numbers are never reused.
    pub(crate) fn next_id(&self, counter: Counter) -> Result<u64, AccountError> {
        let key = match counter {
            Counter::User => NEXT_USER_KEY,
            Counter::Token => NEXT_TOKEN_KEY,
        };
        let mut meta = self.txn.open_table(META)?;
        let id = meta.get(key)?.map_or(1, |v| v.value());
        meta.insert(key, id + 1)?;
        Ok(id)
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Counter {
    User,
    Token,
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}
