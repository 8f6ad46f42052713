//! Roles and API token scopes: what a person or a script may do.

use std::fmt;
use std::str::FromStr;

use crate::AccountError;

/// A user's role. Each role includes the ones below it: `Admin` ⊃ `Technician` ⊃ `Viewer`.
///
/// The derived order is that inclusion, so [`Role::allows`] is a comparison; keep the
/// variants in rising order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read-only: the dashboard, studies, queues, the audit trail.
    Viewer,
    /// Operations: queue actions, echo tests, logs, the support bundle, reboot and shutdown.
    Technician,
    /// Configuration, users and certificates.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Technician, Role::Admin];

    /// Whether a user with this role may do what needs `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }

    /// The name used in the command line, the panel and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Technician => "technician",
            Role::Admin => "admin",
        }
    }

    /// The code stored in a user record. Codes are never reused or renumbered: a reader
    /// that meets a code it does not know refuses the record rather than guess.
    pub(crate) fn code(self) -> u8 {
        match self {
            Role::Viewer => 1,
            Role::Technician => 2,
            Role::Admin => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Role, AccountError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AccountError::UnknownRole(s.to_string()))
    }
}

/// What an API token may do, whoever its user is: a token never does more than its user's
/// role allows either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read only: status, queries, retrievals, metrics.
    Read,
    /// Read, and store instances (STOW-RS).
    ReadStore,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Read, Scope::ReadStore];

    /// Whether a token of this scope may store instances.
    pub fn may_store(self) -> bool {
        self == Scope::ReadStore
    }

    /// The name used in `outpost user token NAME --scope ...`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::ReadStore => "read,store",
        }
    }

    /// The stored code; never reused or renumbered, as for roles.
    pub(crate) fn code(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::ReadStore => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = AccountError;

    fn from_str(s: &str) -> Result<Scope, AccountError> {
        // `store,read` and spaces after the comma mean the same; any other word does not.
        let mut words: Vec<&str> = s.split(',').map(str::trim).collect();
        words.sort_unstable();
        words.dedup();
        match words.as_slice() {
            ["read"] => Ok(Scope::Read),
            ["read", "store"] => Ok(Scope::ReadStore),
            _ => Err(AccountError::UnknownScope(s.to_string())),
        }
    }
}
