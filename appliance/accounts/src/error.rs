//! The one error type of accounts: each message names the input at fault and, where there is
//! one, the fix. None ever carries a password or a token's secret.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why an account operation was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error(
        "the password has {chars} characters; it needs at least {min} (any characters, spaces included)"
    )]
    PasswordTooShort { chars: usize, min: usize },

    #[error("the user name {name:?} {why}; use 1 to 64 letters, digits, '.', '_', '-' or '@'")]
    InvalidUserName { name: String, why: &'static str },

    #[error("a user named {0:?} exists already; choose another name or change that user")]
    UserExists(String),

    #[error("there is no user named {0:?}; `outpost user list` shows the users")]
    UnknownUser(String),

    #[error("{0:?} is not a role; the roles are admin, technician and viewer")]
    UnknownRole(String),

    #[error("{0:?} is not a token scope; use read or read,store")]
    UnknownScope(String),

    /// The user name or the password is wrong; which one is for the audit trail, not for
    /// the person at the login form.
    #[error(
        "wrong user name or password for {name:?}; check both, or ask an administrator to set a new password"
    )]
    BadCredentials { name: String },

    #[error(
        "too many failed logins to {name:?} from {from}; try again in {} s, or ask an administrator to unlock the account",
        retry_after.as_secs().max(1)
    )]
    LockedOut {
        name: String,
        from: IpAddr,
        retry_after: Duration,
    },

    #[error("the user {0:?} is disabled; an administrator can enable it again")]
    Disabled(String),

    #[error("{0:?} is the last enabled administrator; make another user an administrator first")]
    LastAdministrator(String),

    #[error("not logged in (no such session, or it was ended); log in again")]
    UnknownSession,

    #[error("the session has expired; log in again")]
    SessionExpired,

    #[error("the request's CSRF token does not match its session; reload the page and try again")]
    CsrfMismatch,

    #[error(
        "{user:?} is a {role}, who may not store, so a token of scope {scope} is refused; give the token scope read, or the user the technician role first"
    )]
    ScopeAboveRole {
        user: String,
        role: crate::Role,
        scope: crate::Scope,
    },

    #[error(
        "the API token is not known (mistyped, revoked, or its user removed); ask for a new one with `outpost user token NAME`"
    )]
    UnknownToken,

    #[error("there is no API token number {0}; `outpost user token list` shows them")]
    UnknownTokenId(u64),

    #[error(
        "the setup link is not valid (mistyped, or from an earlier start); use the link `outpost status` shows now"
    )]
    SetupTokenInvalid,

    #[error(
        "the appliance has an administrator already, so its setup link is void; log in, or ask an administrator for an account"
    )]
    SetupDone,

    #[error(
        "{} needs Outpost accounts format {min_reader_version} or later to read it, and this build reads format {ours}; run the newer Outpost that wrote it, or restore the data directory's backup",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        min_reader_version: u64,
        ours: u64,
    },

    #[error(
        "{} holds a record this build cannot read ({table} {key:?}: {why}); restore the data directory's backup",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        key: String,
        why: String,
    },

    #[error("cannot create {} for the accounts store: {source}; check that the data directory is writable by the service", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot open the accounts store {}: {source}; check that no other Outpost has it open and that the data volume is writable", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },

    #[error(
        "the accounts store failed: {0}; check the data volume (free space, read-only, disk errors)"
    )]
    Storage(#[from] redb::Error),

    #[error("password hashing failed: {0}")]
    Hashing(String),

    /// A task on the blocking pool panicked or the runtime is shutting down; what it did
    /// is either committed whole or not at all.
    #[error("an accounts operation did not finish ({0}); check the result and try again")]
    Interrupted(String),
}

// redb has one error type per operation family; all of them mean the store failed.
macro_rules! storage_errors {
    ($($t:ty),*) => {
        $(impl From<$t> for AccountError {
            fn from(e: $t) -> AccountError {
                AccountError::Storage(e.into())
            }
        })*
    };
}

storage_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
