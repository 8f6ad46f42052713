//! Integration tests of accounts: one binary, a module per topic, every test on a store in
//! its own temporary data directory with a clock that moves only when told.

mod logins;
mod sessions;
mod setup;
mod store;
mod tokens;
mod users;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use accounts::{Accounts, Actor, ManualClock, Options, Role};

/// A password that passes the rule.
pub const PASSWORD: &str = "correct horse battery";

/// An open store and the clock it runs on.
pub struct Fixture {
    pub accounts: Accounts,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    #[allow(clippy::new_without_default)] // A fixture is made, never defaulted.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (accounts, clock) = open(dir.path());
        Fixture {
            accounts,
            clock,
            dir,
        }
    }

    /// Closes and opens the store again, with a new clock.
    pub fn reopen(self) -> Fixture {
        let Fixture { accounts, dir, .. } = self;
        drop(accounts);
        let (accounts, clock) = open(dir.path());
        Fixture {
            accounts,
            clock,
            dir,
        }
    }

    pub async fn add(&self, name: &str, role: Role) {
        self.accounts
            .add_user(name, role, PASSWORD, &root())
            .await
            .unwrap();
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

pub fn open(dir: &Path) -> (Accounts, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
    ));
    let options = Options {
        clock: clock.clone(),
        ..Options::default()
    };
    (Accounts::open_with(dir, options).unwrap(), clock)
}

pub fn root() -> Actor {
    Actor::local("root")
}

pub fn addr(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

pub fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
