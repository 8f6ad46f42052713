//! The panel's accounts: users with roles and argon2id passwords, sessions, API tokens,
//! login throttling and the one-time setup token, over a versioned store in the data
//! directory. No HTTP and no command line: the web server and the supervisor call it.
//!
//! One [`Accounts`] per process (the redb file is locked to one opener). Every change is
//! durable when its call returns, and returns an [`audit::Event`] (who, from where, what)
//! for the caller to record; logins return one whether they succeed or not. The store's
//! format, its versioning and its invariants are described in the `store` module.
//!
//! There is no default user and no default password: the first administrator comes from
//! [`Accounts::add_user`] (the command line) or from [`Accounts::setup_admin`] with the
//! setup token, which exists only while no administrator does.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), accounts::AccountError> {
//! use accounts::{Accounts, Actor, Role};
//! # let data_dir = tempfile::tempdir().unwrap();
//! let accounts = Accounts::open(data_dir.path())?;
//! let from = "192.0.2.7".parse().unwrap();
//!
//! // The first administrator, from the setup link (`outpost status` shows its token).
//! let token = accounts.setup_token().expect("no administrator yet");
//! let (_, event) = accounts
//!     .setup_admin(&token, "boss", "a long enough passphrase", from)
//!     .await?;
//! // audit.record(event);
//! # drop(event);
//!
//! let attempt = accounts.login("boss", "a long enough passphrase", from).await;
//! // tokio::time::sleep(attempt.delay).await; audit.record(attempt.event);
//! let login = attempt.result?;
//! let session = accounts.authenticate(&login.session)?;
//! session.check_csrf(&login.csrf)?;
//! assert!(session.role.allows(Role::Technician));
//!
//! let admin = Actor::user(&session.user, session.role, from);
//! accounts
//!     .add_user("tech", Role::Technician, "another long passphrase", &admin)
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod clock;
mod error;
mod role;
mod secret;
mod sessions;
mod store;
mod throttle;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use audit::{EventKind, Outcome};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::AccountError;
pub use role::{Role, Scope};
pub use secret::{MAX_CONCURRENT_HASHES, MIN_PASSWORD_CHARS, check_password};
pub use sessions::{Session, SessionPolicy};
pub use store::{FILE_NAME, FORMAT_VERSION};
pub use throttle::LoginPolicy;

use secret::{Hasher, random_secret, same_secret, sha256};
use sessions::{Found, Sessions};
use store::{Counter, Store, TokenRow, UserRow};
use throttle::{Admit, Throttle};

/// What [`Accounts::open_with`] may be given besides the directory.
#[derive(Clone)]
pub struct Options {
    pub sessions: SessionPolicy,
    pub logins: LoginPolicy,
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sessions: SessionPolicy::default(),
            logins: LoginPolicy::default(),
            clock: Arc::new(SystemClock::new()),
        }
    }
}

/// A user as others may see it: never the password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub created: SystemTime,
    /// When the role, password or disabled flag last changed.
    pub changed: SystemTime,
}

/// An API token as listed: everything but the secret, which exists only in [`NewToken`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The number to revoke it by; never reused.
    pub id: u64,
    pub user: String,
    pub scope: Scope,
    pub created: SystemTime,
}

/// A token just made: its secret is shown once, here, and stored only as its SHA-256.
#[derive(Clone)]
pub struct NewToken {
    pub info: TokenInfo,
    pub secret: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What an API token stands for when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenAuth {
    pub id: u64,
    pub user: String,
    /// The user's role now; a token never does more than its user may.
    pub role: Role,
    pub scope: Scope,
}

impl TokenAuth {
    /// Whether the token may do what needs `required`: tokens read, whatever their user's
    /// role, so only what a viewer may do.
    pub fn allows(&self, required: Role) -> bool {
        required == Role::Viewer && self.role.allows(required)
    }

    /// Whether the token may store instances: its scope says so and its user, as they are
    /// now, is at least a technician (a viewer is read-only).
    pub fn may_store(&self) -> bool {
        self.scope.may_store() && self.role.allows(Role::Technician)
    }
}

/// A successful login: the session's id goes into the cookie, its CSRF token into pages.
#[derive(Clone)]
pub struct Login {
    pub session: String,
    pub csrf: String,
    pub user: String,
    pub role: Role,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What one login attempt came to.
#[derive(Debug)]
pub struct LoginAttempt {
    pub result: Result<Login, AccountError>,
    /// How long to wait before answering, success or failure alike (so the wait does not
    /// tell them apart): zero unless the account has failed logins lately. Wait without
    /// holding anything, for example `tokio::time::sleep`.
    pub delay: Duration,
    /// The audit event for this attempt.
    pub event: audit::Event,
}

/// Who makes a change, for its audit event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// `None` for a local operator (the command line on the appliance itself).
    pub role: Option<Role>,
    /// A client's address, or `local`.
    pub from: String,
}

impl Actor {
    /// A panel user or token owner acting from `from`.
    pub fn user(name: &str, role: Role, from: IpAddr) -> Actor {
        Actor {
            name: name.to_string(),
            role: Some(role),
            from: from.to_string(),
        }
    }

    /// An operator on the appliance itself, by their login name (`root`, `outpost`).
    pub fn local(name: &str) -> Actor {
        Actor {
            name: name.to_string(),
            role: None,
            from: "local".into(),
        }
    }

    fn event(&self, kind: EventKind, outcome: Outcome, detail: String) -> audit::Event {
        audit::Event::new(kind, outcome)
            .actor(&self.name, self.role.map(Role::as_str))
            .peer(&self.from)
            .detail(detail)
    }
}

/// The accounts of one appliance; cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Orders writers: held across a store transaction and the update of `state` that
    /// follows its commit, so the two always agree. Only taken on the blocking pool.
    writer: Mutex<()>,
    /// What reads need, in memory: logins and token checks never touch the disk.
    state: Mutex<State>,
    hasher: Hasher,
    options: Options,
}

struct State {
    users: HashMap<String, UserRow>,
    tokens: HashMap<[u8; 32], TokenRow>,
    sessions: Sessions,
    throttle: Throttle,
    /// The setup token while no administrator exists.
    setup: Option<String>,
}

impl State {
    fn has_admin(&self) -> bool {
        self.users.values().any(|u| u.role == Role::Admin)
    }
}

/// Names as long as this are cut short in audit events (a login form can send anything).
const MAX_NAME_CHARS: usize = 64;

impl Accounts {
    /// Opens (creating if needed) the accounts store in `data_dir` with the default
    /// policies. Blocking: call it at start-up or on the blocking pool.
    pub fn open(data_dir: &Path) -> Result<Accounts, AccountError> {
        Accounts::open_with(data_dir, Options::default())
    }

    /// Opens (creating if needed) the accounts store in `data_dir`. A new setup token is
    /// made if no administrator exists. Blocking.
    pub fn open_with(data_dir: &Path, options: Options) -> Result<Accounts, AccountError> {
        let (store, loaded) = Store::open(data_dir)?;
        let mut state = State {
            users: loaded.users,
            tokens: loaded.tokens,
            sessions: Sessions::default(),
            throttle: Throttle::default(),
            setup: None,
        };
        if !state.has_admin() {
            state.setup = Some(random_secret());
        }
        Ok(Accounts {
            inner: Arc::new(Inner {
                store,
                writer: Mutex::new(()),
                state: Mutex::new(state),
                hasher: Hasher::new(),
                options,
            }),
        })
    }

    /// The store's file.
    pub fn path(&self) -> PathBuf {
        self.inner.store.path().to_path_buf()
    }

    // Users.

    /// Every user, by name.
    pub fn users(&self) -> Vec<User> {
        let state = self.inner.state();
        let mut users: Vec<User> = state.users.iter().map(|(n, u)| public(n, u)).collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    pub fn user(&self, name: &str) -> Result<User, AccountError> {
        let state = self.inner.state();
        state
            .users
            .get(name)
            .map(|u| public(name, u))
            .ok_or_else(|| AccountError::UnknownUser(name.to_string()))
    }

    /// Adds a user. Adding the first administrator voids the setup token.
    pub async fn add_user(
        &self,
        name: &str,
        role: Role,
        password: &str,
        actor: &Actor,
    ) -> Result<(User, audit::Event), AccountError> {
        check_name(name)?;
        check_password(password)?;
        if self.inner.state().users.contains_key(name) {
            // Spare a hash; the transaction checks again.
            return Err(AccountError::UserExists(name.to_string()));
        }
        let hash = self.hash(password).await?;
        let (name, actor) = (name.to_string(), actor.clone());
        self.blocking(move |inner| {
            let user = inner.create(&name, role, hash, None)?;
            let detail = format!("added user {name} ({role})");
            Ok((
                public(&name, &user),
                actor.event(EventKind::AccountChanged, Outcome::Success, detail),
            ))
        })
        .await
    }

    /// Sets a new password and ends the user's sessions.
    pub async fn set_password(
        &self,
        name: &str,
        password: &str,
        actor: &Actor,
    ) -> Result<audit::Event, AccountError> {
        check_password(password)?;
        self.user(name)?;
        let hash = self.hash(password).await?;
        let (name, actor) = (name.to_string(), actor.clone());
        self.blocking(move |inner| {
            let ended = inner.modify(&name, |u| u.hash = hash)?;
            let detail = format!("changed the password of {name}{}", ended_sessions(ended));
            Ok(actor.event(EventKind::AccountChanged, Outcome::Success, detail))
        })
        .await
    }

    /// Gives a user another role, which their running sessions and tokens have at once. The
    /// last enabled administrator keeps theirs.
    pub async fn set_role(
        &self,
        name: &str,
        role: Role,
        actor: &Actor,
    ) -> Result<audit::Event, AccountError> {
        let (name, actor) = (name.to_string(), actor.clone());
        self.blocking(move |inner| {
            let mut before = role;
            inner.modify_checked(&name, false, |u| {
                before = u.role;
                u.role = role;
            })?;
            let detail = format!("changed the role of {name} from {before} to {role}");
            Ok(actor.event(EventKind::AccountChanged, Outcome::Success, detail))
        })
        .await
    }

    /// Disables a user (ending their sessions; their tokens are refused until enabled) or
    /// enables them again. The last enabled administrator cannot be disabled.
    pub async fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: &Actor,
    ) -> Result<audit::Event, AccountError> {
        let (name, actor) = (name.to_string(), actor.clone());
        self.blocking(move |inner| {
            let ended = inner.modify_checked(&name, disabled, |u| u.disabled = disabled)?;
            let detail = if disabled {
                format!("disabled user {name}{}", ended_sessions(ended))
            } else {
                format!("enabled user {name}")
            };
            Ok(actor.event(EventKind::AccountChanged, Outcome::Success, detail))
        })
        .await
    }

    /// Removes a user with their tokens and sessions. The last enabled administrator stays.
    pub async fn remove_user(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<audit::Event, AccountError> {
        let (name, actor) = (name.to_string(), actor.clone());
        self.blocking(move |inner| {
            let _writer = inner.writer();
            let (user, tokens) = inner.store.write(|tx| {
                let user = tx
                    .user(&name)?
                    .ok_or_else(|| AccountError::UnknownUser(name.clone()))?;
                if user.role == Role::Admin && !user.disabled {
                    keep_an_admin(tx, &name)?;
                }
                let tokens = tx.remove_user(&name, user.id)?;
                Ok((user, tokens))
            })?;
            let mut state = inner.state();
            state.users.remove(&name);
            for t in &tokens {
                state.tokens.remove(t);
            }
            let ended = state.sessions.end_user(user.id);
            let detail = format!(
                "removed user {name} ({}) with {} API token(s){}",
                user.role,
                tokens.len(),
                ended_sessions(ended)
            );
            Ok(actor.event(EventKind::AccountChanged, Outcome::Success, detail))
        })
        .await
    }

    /// Clears the lockouts and the slowdown of an account's failed logins.
    pub fn unlock(&self, name: &str, actor: &Actor) -> Result<audit::Event, AccountError> {
        self.user(name)?;
        let locked = self.inner.state().throttle.unlock(name);
        let detail = format!("unlocked user {name} ({locked} address(es) had failed logins)");
        Ok(actor.event(EventKind::AccountChanged, Outcome::Success, detail))
    }

    // Logins and sessions.

    /// Tries a login from `from`. Refused without checking the password while `from` is
    /// locked out of the account; the answer should be sent after [`LoginAttempt::delay`].
    pub async fn login(&self, name: &str, password: &str, from: IpAddr) -> LoginAttempt {
        let inner = &self.inner;
        let shown = cut(name);
        let refused = |why: &str, error: AccountError, delay: Duration| LoginAttempt {
            result: Err(error),
            delay,
            event: audit::Event::new(EventKind::Login, Outcome::MinorFailure)
                .actor(&shown, None)
                .peer(from)
                .detail(format!("login refused: {why}")),
        };
        let bad = || AccountError::BadCredentials {
            name: shown.clone(),
        };
        if check_name(name).is_err() {
            return refused("not a valid user name", bad(), Duration::ZERO);
        }
        let policy = inner.options.logins;
        let (delay, known) = {
            let mut state = inner.state();
            let now = inner.options.clock.monotonic();
            match state.throttle.admit(from, name, now, &policy) {
                Admit::Locked(retry_after) => {
                    let error = AccountError::LockedOut {
                        name: name.to_string(),
                        from,
                        retry_after,
                    };
                    return refused(
                        "this address is locked out of the account",
                        error,
                        Duration::ZERO,
                    );
                }
                Admit::Go(delay) => (delay, state.users.get(name).cloned()),
            }
        };
        let phc = known.as_ref().map(|u| u.hash.clone());
        let ok = inner.hasher.verify(password, phc).await;
        let mut state = inner.state();
        let now = inner.options.clock.monotonic();
        let Some(user) = known.filter(|_| ok) else {
            let locked = state.throttle.failed(from, name, now, &policy);
            let why = match (state.users.contains_key(name), locked) {
                (false, _) => "no such user".to_string(),
                (true, false) => "wrong password".to_string(),
                (true, true) => format!(
                    "wrong password; this address is now locked out of the account for {} s",
                    policy.lockout_for.as_secs()
                ),
            };
            return refused(&why, bad(), delay);
        };
        // The password may have changed, or the user gone, while it was being checked.
        let current = state.users.get(name).cloned();
        let Some(current) = current.filter(|c| c.id == user.id && c.hash == user.hash) else {
            return refused("the account changed during the login", bad(), delay);
        };
        if current.disabled {
            return refused(
                "the user is disabled",
                AccountError::Disabled(name.to_string()),
                delay,
            );
        }
        state.throttle.succeeded(from, name);
        let sessions = inner.options.sessions;
        let (session, csrf) =
            state
                .sessions
                .start(name, current.id, current.role, from, now, &sessions);
        LoginAttempt {
            result: Ok(Login {
                session,
                csrf,
                user: name.to_string(),
                role: current.role,
            }),
            delay,
            event: audit::Event::new(EventKind::Login, Outcome::Success)
                .actor(name, Some(current.role.as_str()))
                .peer(from)
                .detail("logged in"),
        }
    }

    /// The session with this id if it is valid now, counting it as used.
    pub fn authenticate(&self, session: &str) -> Result<Session, AccountError> {
        let inner = &self.inner;
        let now = inner.options.clock.monotonic();
        match inner
            .state()
            .sessions
            .touch(session, now, &inner.options.sessions)
        {
            Found::Valid(s) => Ok(s),
            Found::Expired => Err(AccountError::SessionExpired),
            Found::Unknown => Err(AccountError::UnknownSession),
        }
    }

    /// Ends a session.
    pub fn logout(&self, session: &str, from: IpAddr) -> Result<audit::Event, AccountError> {
        let (user, role) = self
            .inner
            .state()
            .sessions
            .end(session)
            .ok_or(AccountError::UnknownSession)?;
        Ok(audit::Event::new(EventKind::Logout, Outcome::Success)
            .actor(&user, Some(role.as_str()))
            .peer(from)
            .detail("logged out"))
    }

    /// How many valid sessions a user has.
    pub fn sessions_of(&self, name: &str) -> usize {
        let inner = &self.inner;
        let state = inner.state();
        let now = inner.options.clock.monotonic();
        state.users.get(name).map_or(0, |u| {
            state.sessions.count(u.id, now, &inner.options.sessions)
        })
    }

    // API tokens.

    /// Makes an API token for a user. Its secret is in the answer only. A token that may
    /// store is only for a technician or an administrator.
    pub async fn create_token(
        &self,
        name: &str,
        scope: Scope,
        actor: &Actor,
    ) -> Result<(NewToken, audit::Event), AccountError> {
        let (name, actor) = (name.to_string(), actor.clone());
        self.blocking(move |inner| {
            let _writer = inner.writer();
            let secret = format!("outpost_{}", random_secret());
            let hash = sha256(&secret);
            let created = inner.options.clock.wall();
            let row = inner.store.write(|tx| {
                let user = tx
                    .user(&name)?
                    .ok_or_else(|| AccountError::UnknownUser(name.clone()))?;
                if scope.may_store() && !user.role.allows(Role::Technician) {
                    return Err(AccountError::ScopeAboveRole {
                        user: name.clone(),
                        role: user.role,
                        scope,
                    });
                }
                let row = TokenRow {
                    id: tx.next_id(Counter::Token)?,
                    user_id: user.id,
                    user: name.clone(),
                    scope,
                    created,
                };
                tx.put_token(&hash, &row)?;
                Ok(row)
            })?;
            inner.state().tokens.insert(hash, row.clone());
            let detail = format!("made API token {} ({scope}) for {name}", row.id);
            Ok((
                NewToken {
                    info: token_info(&row),
                    secret,
                },
                actor.event(EventKind::AccountChanged, Outcome::Success, detail),
            ))
        })
        .await
    }

    /// Every token (of one user, or of all), by number; never a secret.
    pub fn tokens(&self, user: Option<&str>) -> Vec<TokenInfo> {
        let state = self.inner.state();
        let mut tokens: Vec<TokenInfo> = state
            .tokens
            .values()
            .filter(|t| user.is_none_or(|u| t.user == u))
            .map(token_info)
            .collect();
        tokens.sort_by_key(|t| t.id);
        tokens
    }

    /// Revokes a token by its number.
    pub async fn revoke_token(&self, id: u64, actor: &Actor) -> Result<audit::Event, AccountError> {
        let actor = actor.clone();
        self.blocking(move |inner| {
            let _writer = inner.writer();
            let hash = inner
                .store
                .write(|tx| tx.remove_token(id))?
                .ok_or(AccountError::UnknownTokenId(id))?;
            let row = inner.state().tokens.remove(&hash);
            let detail = match row {
                Some(t) => format!("revoked API token {id} ({}) of {}", t.scope, t.user),
                None => format!("revoked API token {id}"),
            };
            Ok(actor.event(EventKind::AccountChanged, Outcome::Success, detail))
        })
        .await
    }

    /// The token's user, role and scope if the token is valid: known by its hash, its user
    /// still the one it was made for, and not disabled.
    pub fn verify_token(&self, secret: &str) -> Result<TokenAuth, AccountError> {
        let state = self.inner.state();
        let token = state
            .tokens
            .get(&sha256(secret))
            .ok_or(AccountError::UnknownToken)?;
        let user = state
            .users
            .get(&token.user)
            .filter(|u| u.id == token.user_id)
            .ok_or(AccountError::UnknownToken)?;
        if user.disabled {
            return Err(AccountError::Disabled(token.user.clone()));
        }
        Ok(TokenAuth {
            id: token.id,
            user: token.user.clone(),
            role: user.role,
            scope: token.scope,
        })
    }

    // The first administrator.

    /// The setup token while no administrator exists (for `outpost status` and the
    /// console, never for the log).
    pub fn setup_token(&self) -> Option<String> {
        self.inner.state().setup.clone()
    }

    /// Creates the first administrator with the setup token, which this uses up. A call
    /// refused for its name or password leaves the token valid.
    pub async fn setup_admin(
        &self,
        token: &str,
        name: &str,
        password: &str,
        from: IpAddr,
    ) -> Result<(User, audit::Event), AccountError> {
        self.check_setup(token)?;
        check_name(name)?;
        check_password(password)?;
        let hash = self.hash(password).await?;
        let (token, name) = (token.to_string(), name.to_string());
        self.blocking(move |inner| {
            let user = inner.create(&name, Role::Admin, hash, Some(&token))?;
            let event = Actor::user(&name, Role::Admin, from).event(
                EventKind::AccountChanged,
                Outcome::Success,
                format!("added the first administrator {name} with the setup link"),
            );
            Ok((public(&name, &user), event))
        })
        .await
    }

    fn check_setup(&self, token: &str) -> Result<(), AccountError> {
        let state = self.inner.state();
        match &state.setup {
            Some(t) if same_secret(t, token) => Ok(()),
            Some(_) => Err(AccountError::SetupTokenInvalid),
            None => Err(AccountError::SetupDone),
        }
    }

    // Observability.

    /// Password hashes running now.
    pub fn hashes_running(&self) -> usize {
        self.inner.hasher.running()
    }

    /// The most password hashes that ever ran at once (never above
    /// [`MAX_CONCURRENT_HASHES`]).
    pub fn hashes_peak(&self) -> usize {
        self.inner.hasher.peak()
    }

    async fn hash(&self, password: &str) -> Result<String, AccountError> {
        self.inner.hasher.hash(password).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, AccountError> + Send + 'static,
    ) -> Result<T, AccountError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| AccountError::Interrupted(e.to_string()))?
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing holding the lock leaves the state half-changed on a panic: each change
        // to it is one insert or remove.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new user; with `setup`, only while that is still the setup token and no
    /// administrator exists, and then uses it up.
    fn create(
        &self,
        name: &str,
        role: Role,
        hash: String,
        setup: Option<&str>,
    ) -> Result<UserRow, AccountError> {
        let _writer = self.writer();
        if let Some(token) = setup {
            let state = self.state();
            match &state.setup {
                Some(t) if same_secret(t, token) => {}
                Some(_) => return Err(AccountError::SetupTokenInvalid),
                None => return Err(AccountError::SetupDone),
            }
        }
        let now = self.options.clock.wall();
        let user = self.store.write(|tx| {
            if tx.user(name)?.is_some() {
                return Err(AccountError::UserExists(name.to_string()));
            }
            if setup.is_some() && tx.users()?.iter().any(|(_, u)| u.role == Role::Admin) {
                return Err(AccountError::SetupDone);
            }
            let user = UserRow {
                id: tx.next_id(Counter::User)?,
                role,
                hash,
                disabled: false,
                created: now,
                changed: now,
            };
            tx.put_user(name, &user)?;
            Ok(user)
        })?;
        let mut state = self.state();
        state.users.insert(name.to_string(), user.clone());
        if role == Role::Admin {
            state.setup = None;
        }
        Ok(user)
    }

    /// Changes a user's password (or anything that ends their sessions); returns how many
    /// sessions it ended.
    fn modify(&self, name: &str, change: impl FnOnce(&mut UserRow)) -> Result<usize, AccountError> {
        self.modify_checked(name, true, change)
    }

    /// As `modify`; with `ends_sessions` false, their sessions go on. Refuses a change that
    /// would leave no enabled administrator.
    fn modify_checked(
        &self,
        name: &str,
        ends_sessions: bool,
        change: impl FnOnce(&mut UserRow),
    ) -> Result<usize, AccountError> {
        let _writer = self.writer();
        let now = self.options.clock.wall();
        let user = self.store.write(|tx| {
            let mut user = tx
                .user(name)?
                .ok_or_else(|| AccountError::UnknownUser(name.to_string()))?;
            let was_admin = user.role == Role::Admin && !user.disabled;
            change(&mut user);
            if was_admin && (user.disabled || user.role != Role::Admin) {
                keep_an_admin(tx, name)?;
            }
            user.changed = now;
            tx.put_user(name, &user)?;
            Ok(user)
        })?;
        let mut state = self.state();
        let ended = if ends_sessions {
            state.sessions.end_user(user.id)
        } else {
            0
        };
        // A promotion or demotion applies to running sessions at once.
        state.sessions.set_role(user.id, user.role);
        state.users.insert(name.to_string(), user);
        Ok(ended)
    }
}

/// Refuses a change to `name` if it is the last enabled administrator.
fn keep_an_admin(tx: &store::Tx<'_>, name: &str) -> Result<(), AccountError> {
    let others = tx
        .users()?
        .into_iter()
        .any(|(n, u)| n != name && u.role == Role::Admin && !u.disabled);
    if others {
        Ok(())
    } else {
        Err(AccountError::LastAdministrator(name.to_string()))
    }
}

/// User names: what a shell, a URL, an audit line and a CSV cell all take as they are.
fn check_name(name: &str) -> Result<(), AccountError> {
    let bad = |why| AccountError::InvalidUserName {
        name: cut(name),
        why,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(bad("is longer than 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(bad(
            "has a character other than a letter, digit, '.', '_', '-' or '@'",
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        // A leading '-' would read as an option, and '=' or '@' as a spreadsheet formula.
        return Err(bad("does not start with a letter or digit"));
    }
    Ok(())
}

fn cut(name: &str) -> String {
    name.chars().take(MAX_NAME_CHARS).collect()
}

fn public(name: &str, u: &UserRow) -> User {
    User {
        name: name.to_string(),
        role: u.role,
        disabled: u.disabled,
        created: u.created,
        changed: u.changed,
    }
}

fn token_info(t: &TokenRow) -> TokenInfo {
    TokenInfo {
        id: t.id,
        user: t.user.clone(),
        scope: t.scope,
        created: t.created,
    }
}

fn ended_sessions(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => "; ended its session".into(),
        n => format!("; ended its {n} sessions"),
    }
}
