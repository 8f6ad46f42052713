//! Panel sessions, in memory: a random id (the cookie), a CSRF token, and two expiries.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::secret::{random_secret, same_secret, sha256};
use crate::{AccountError, Role};

/// How long sessions last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session unused this long is over.
    pub idle: Duration,
    /// A session this old is over, however busy.
    pub absolute: Duration,
    /// Sessions held at once, at most; beyond, the one unused longest ends, so that logging
    /// in again and again cannot grow memory without bound.
    pub max_sessions: usize,
}

impl Default for SessionPolicy {
    fn default() -> SessionPolicy {
        SessionPolicy {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            max_sessions: 1024,
        }
    }
}

/// A session that is valid now, as [`crate::Accounts::authenticate`] found it.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// Where the session was logged in from.
    pub from: IpAddr,
    csrf: String,
}

impl Session {
    /// The CSRF token that state-changing requests of this session must carry (put it in
    /// the pages the session is shown).
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Checks a request's CSRF token against the session's, in constant time.
    pub fn check_csrf(&self, token: &str) -> Result<(), AccountError> {
        if same_secret(&self.csrf, token) {
            Ok(())
        } else {
            Err(AccountError::CsrfMismatch)
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("role", &self.role)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

struct Row {
    user: String,
    user_id: u64,
    role: Role,
    from: IpAddr,
    csrf: String,
    created: Duration,
    last_seen: Duration,
}

/// Sessions keyed by the SHA-256 of their id, so that memory (a core dump, a debugger)
/// holds nothing a browser would accept.
#[derive(Default)]
pub(crate) struct Sessions {
    rows: HashMap<[u8; 32], Row>,
}

pub(crate) enum Found {
    Valid(Session),
    Expired,
    Unknown,
}

impl Sessions {
    /// Starts a session; returns its id and CSRF token.
    pub(crate) fn start(
        &mut self,
        user: &str,
        user_id: u64,
        role: Role,
        from: IpAddr,
        now: Duration,
        policy: &SessionPolicy,
    ) -> (String, String) {
        self.rows.retain(|_, r| !expired(r, now, policy));
        while self.rows.len() >= policy.max_sessions.max(1) {
            let Some(oldest) = self
                .rows
                .iter()
                .min_by_key(|(_, r)| r.last_seen)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.rows.remove(&oldest);
        }
        let id = random_secret();
        let csrf = random_secret();
        self.rows.insert(
            sha256(&id),
            Row {
                user: user.to_string(),
                user_id,
                role,
                from,
                csrf: csrf.clone(),
                created: now,
                last_seen: now,
            },
        );
        (id, csrf)
    }

    /// Finds a session and, if it is valid, counts it as used now.
    pub(crate) fn touch(&mut self, id: &str, now: Duration, policy: &SessionPolicy) -> Found {
        let key = sha256(id);
        let Some(row) = self.rows.get_mut(&key) else {
            return Found::Unknown;
        };
        if expired(row, now, policy) {
            self.rows.remove(&key);
            return Found::Expired;
        }
        row.last_seen = now;
        Found::Valid(Session {
            user: row.user.clone(),
            role: row.role,
            from: row.from,
            csrf: row.csrf.clone(),
        })
    }

    /// Ends one session; returns its user and role if it existed.
    pub(crate) fn end(&mut self, id: &str) -> Option<(String, Role)> {
        self.rows.remove(&sha256(id)).map(|r| (r.user, r.role))
    }

    /// Ends every session of a user; returns how many there were.
    pub(crate) fn end_user(&mut self, user_id: u64) -> usize {
        let before = self.rows.len();
        self.rows.retain(|_, r| r.user_id != user_id);
        before - self.rows.len()
    }

    /// Gives a user's sessions a new role (a promotion or demotion applies at once).
    pub(crate) fn set_role(&mut self, user_id: u64, role: Role) {
        for r in self.rows.values_mut().filter(|r| r.user_id == user_id) {
            r.role = role;
        }
    }

    pub(crate) fn count(&self, user_id: u64, now: Duration, policy: &SessionPolicy) -> usize {
        self.rows
            .values()
            .filter(|r| r.user_id == user_id && !expired(r, now, policy))
            .count()
    }
}

fn expired(r: &Row, now: Duration, policy: &SessionPolicy) -> bool {
    now.saturating_sub(r.last_seen) >= policy.idle
        || now.saturating_sub(r.created) >= policy.absolute
}
