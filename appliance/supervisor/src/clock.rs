//! The wall clock, for the readings' timestamps and the webhook's backoff (policy debouncing
//! runs on a monotonic clock of its own).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix milliseconds; 0 when the clock is before 1970.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix seconds.
pub(crate) fn unix_now() -> u64 {
    now_ms() / 1000
}
