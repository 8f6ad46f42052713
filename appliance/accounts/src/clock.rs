//! Time, behind a trait so that tests can move it: expiries run on a monotonic clock (the
//! wall clock of a box that boots without a battery-backed clock jumps when NTP answers),
//! records carry wall-clock times for people.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Where accounts read the time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin fixed for the clock's life; used for every
    /// expiry and delay.
    fn monotonic(&self) -> Duration;
    /// The wall-clock time, for the created and changed times people read.
    fn wall(&self) -> SystemTime;
}

/// The real clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<(Duration, SystemTime)>,
}

impl ManualClock {
    /// A clock at monotonic zero and the given wall-clock time.
    pub fn new(wall: SystemTime) -> ManualClock {
        ManualClock {
            now: Mutex::new((Duration::ZERO, wall)),
        }
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        now.0 += by;
        now.1 += by;
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        self.now.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn wall(&self) -> SystemTime {
        self.now.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}
