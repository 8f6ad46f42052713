//! Login failures: a lockout per (source address, account), and a slowdown per account.
//!
//! The lockout stops one address guessing one account's password. It is per address so
//! that an attacker who fails on purpose cannot lock a technician out from everywhere;
//! across addresses an account is only slowed down, by a delay the caller waits before it
//! answers (no lock is held while it waits), so many addresses together still guess slowly
//! while the technician can log in, slowly, from anywhere. Both are kept in memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

/// When login failures lock out and slow down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginPolicy {
    /// Failures from one address to one account that lock that pair out.
    pub lockout_after: u32,
    /// How long such a lockout lasts.
    pub lockout_for: Duration,
    /// Failures to one account, from any address, before its logins are slowed down.
    pub slow_after: u32,
    /// The first delay; each further failure doubles it, up to `slow_max`.
    pub slow_first: Duration,
    pub slow_max: Duration,
    /// Failures are forgotten once none has come for this long.
    pub forget_after: Duration,
}

impl Default for LoginPolicy {
    fn default() -> LoginPolicy {
        LoginPolicy {
            lockout_after: 5,
            lockout_for: Duration::from_secs(15 * 60),
            slow_after: 3,
            slow_first: Duration::from_secs(1),
            slow_max: Duration::from_secs(10),
            forget_after: Duration::from_secs(15 * 60),
        }
    }
}

/// Pairs and accounts tracked at once, at most: names that do not exist are tracked like
/// names that do (so that answers do not tell them apart), so the maps need a bound.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Duration,
    locked_until: Option<Duration>,
}

#[derive(Default)]
pub(crate) struct Throttle {
    pairs: HashMap<(IpAddr, String), Failures>,
    accounts: HashMap<String, Failures>,
}

pub(crate) enum Admit {
    /// Go ahead; answer after this delay (zero when the account is not under attack).
    Go(Duration),
    /// This address is locked out of this account for this long.
    Locked(Duration),
}

impl Throttle {
    /// Whether a login to `name` from `from` may be tried now.
    pub(crate) fn admit(
        &mut self,
        from: IpAddr,
        name: &str,
        now: Duration,
        p: &LoginPolicy,
    ) -> Admit {
        let key = (from, name.to_string());
        if let Some(f) = self.pairs.get(&key).copied() {
            match f.locked_until {
                Some(until) if until > now => return Admit::Locked(until - now),
                Some(_) => {
                    self.pairs.remove(&key);
                }
                None if stale(&f, now, p) => {
                    self.pairs.remove(&key);
                }
                None => {}
            }
        }
        let failures = match self.accounts.get(name) {
            Some(f) if stale(f, now, p) => {
                self.accounts.remove(name);
                0
            }
            Some(f) => f.count,
            None => 0,
        };
        Admit::Go(delay(failures, p))
    }

    /// Counts a failed login; returns whether it locked the pair out.
    pub(crate) fn failed(
        &mut self,
        from: IpAddr,
        name: &str,
        now: Duration,
        p: &LoginPolicy,
    ) -> bool {
        let pair = bump(&mut self.pairs, (from, name.to_string()), now, p);
        let locked = pair.count >= p.lockout_after;
        if locked {
            pair.locked_until = Some(now + p.lockout_for);
        }
        bump(&mut self.accounts, name.to_string(), now, p);
        locked
    }

    /// A successful login clears its address's failures for the account (not the
    /// account's slowdown, which an attack from elsewhere may still be causing).
    pub(crate) fn succeeded(&mut self, from: IpAddr, name: &str) {
        self.pairs.remove(&(from, name.to_string()));
    }

    /// Clears every lockout and the slowdown of an account.
    pub(crate) fn unlock(&mut self, name: &str) -> usize {
        let before = self.pairs.len();
        self.pairs.retain(|(_, n), _| n != name);
        let locked = before - self.pairs.len();
        self.accounts.remove(name);
        locked
    }
}

fn stale(f: &Failures, now: Duration, p: &LoginPolicy) -> bool {
    f.locked_until.is_none_or(|u| u <= now) && now.saturating_sub(f.last) >= p.forget_after
}

fn delay(failures: u32, p: &LoginPolicy) -> Duration {
    if failures < p.slow_after {
        return Duration::ZERO;
    }
    let doublings = (failures - p.slow_after).min(31);
    p.slow_first.saturating_mul(1 << doublings).min(p.slow_max)
}

fn bump<'m, K: Eq + Hash + Clone>(
    map: &'m mut HashMap<K, Failures>,
    key: K,
    now: Duration,
    p: &LoginPolicy,
) -> &'m mut Failures {
    if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
        map.retain(|_, f| !stale(f, now, p));
        if map.len() >= MAX_TRACKED {
            // Still full: forget the tenth whose last failure is longest ago, running
            // lockouts last. A tenth at once, so that a flood of new names costs one pass
            // over the map per thousand failures rather than one per failure.
            let mut order: Vec<((bool, Duration), K)> = map
                .iter()
                .map(|(k, f)| ((f.locked_until.is_some_and(|u| u > now), f.last), k.clone()))
                .collect();
            let forget = MAX_TRACKED / 10;
            order.select_nth_unstable_by_key(forget, |(rank, _)| *rank);
            for (_, k) in order.into_iter().take(forget) {
                map.remove(&k);
            }
        }
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
        locked_until: None,
    });
    if stale(f, now, p) {
        f.count = 0;
        f.locked_until = None;
    }
    f.count += 1;
    f.last = now;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_for_many_names_stay_bounded_and_keep_running_lockouts() {
        let p = LoginPolicy::default();
        let mut t = Throttle::default();
        let attacker = IpAddr::from([10, 0, 0, 66]);
        let now = Duration::from_secs(1);
        for _ in 0..p.lockout_after {
            t.failed(attacker, "tech", now, &p);
        }
        // A flood of made-up names from another address, all within the lockout.
        for i in 0..(2 * MAX_TRACKED) {
            t.failed(IpAddr::from([10, 0, 1, 1]), &format!("n{i}"), now, &p);
        }
        assert!(t.pairs.len() <= MAX_TRACKED && t.accounts.len() <= MAX_TRACKED);
        assert!(matches!(
            t.admit(attacker, "tech", now, &p),
            Admit::Locked(_)
        ));
    }
}
