//! Passwords, random secrets and their hashes.
//!
//! Passwords are low-entropy, so they get argon2id with its memory cost; a login costs one
//! such hash, and at most [`MAX_CONCURRENT_HASHES`] run at once, on the blocking pool, so
//! a flood of logins waits for a permit instead of taking both cores from the DICOM
//! service. Session ids, CSRF tokens, setup tokens and API tokens are 256 random bits: a
//! fast hash (SHA-256) is as safe for them as a slow one, since there is nothing to guess.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::AccountError;

/// The only password rule: at least this many characters (Unicode scalar values, not
/// bytes, so that "ü" counts once).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Argon2 hashes running at once, at most; the appliance has two cores.
pub const MAX_CONCURRENT_HASHES: usize = 2;

/// Argon2id memory cost in KiB (19 MiB), passes and lanes: OWASP's first recommended set,
/// tens of milliseconds on one of the appliance's cores and 19 MiB per running hash.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

/// Checks the password rule.
pub fn check_password(password: &str) -> Result<(), AccountError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(AccountError::PasswordTooShort {
            chars,
            min: MIN_PASSWORD_CHARS,
        });
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .expect("the argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Runs argon2 on the blocking pool, at most [`MAX_CONCURRENT_HASHES`] at a time.
#[derive(Clone)]
pub(crate) struct Hasher {
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the user is unknown so that an
    /// unknown name costs the same time as a wrong password.
    dummy: Arc<OnceLock<String>>,
    /// Hashes running now, and the most that ever ran at once (for status and tests).
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Hasher {
    pub(crate) fn new() -> Hasher {
        Hasher {
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
            dummy: Arc::new(OnceLock::new()),
            running: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), which
    /// carries its salt and parameters, so a later build can raise the cost and still verify.
    pub(crate) async fn hash(&self, password: &str) -> Result<String, AccountError> {
        let password = password.to_string();
        self.run(move || hash_now(&password)).await?
    }

    /// Whether `password` matches the PHC string `phc`; `None` verifies against a dummy hash
    /// and answers false, in the same time.
    pub(crate) async fn verify(&self, password: &str, phc: Option<String>) -> bool {
        let password = password.to_string();
        let dummy = self.dummy.clone();
        self.run(move || {
            let (phc, known) = match phc {
                Some(p) => (p, true),
                None => (
                    dummy
                        .get_or_init(|| {
                            let random = hex(&random_bytes());
                            hash_now(&random).unwrap_or_default()
                        })
                        .clone(),
                    false,
                ),
            };
            let ok = PasswordHash::new(&phc)
                .is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok());
            ok && known
        })
        .await
        .unwrap_or(false)
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        // The permit is held until the blocking task ends, even if the caller's future is
        // dropped meanwhile: a cancelled login must not free a core that is still hashing.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AccountError::Hashing("the hasher was closed".into()))?;
        let (running, peak) = (self.running.clone(), self.peak.clone());
        tokio::task::spawn_blocking(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let out = f();
            running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            out
        })
        .await
        .map_err(|e| AccountError::Hashing(format!("the hashing task failed: {e}")))
    }
}

fn hash_now(password: &str) -> Result<String, AccountError> {
    argon2()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hashing(e.to_string()))
}

/// 256 random bits from the operating system's generator (through `rand`'s thread-local
/// CSPRNG, which it seeds).
pub(crate) fn random_bytes() -> [u8; 32] {
    rand::random()
}

/// A new random secret as 64 lower-case hex digits: safe in a cookie, a URL and a shell.
pub(crate) fn random_secret() -> String {
    hex(&random_bytes())
}

pub(crate) fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Compares two secrets in time that depends on their lengths only, so that a CSRF or
/// setup token cannot be found a byte at a time by timing the answers.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
