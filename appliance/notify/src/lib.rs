//! Telling the service manager how the service is doing: `READY=1` once it serves,
//! `STATUS=` lines, `WATCHDOG=1` while it is alive and working, `STOPPING=1` on the way out.
//!
//! With the `systemd` feature the notifications go through libsystemd's `sd_notify` (the
//! `systemd` crate); without it they are no-ops. Either way nothing here knows what the
//! service does: the caller decides when it is ready and whether it is healthy.

use std::time::Duration;

/// Whether notifications reach a service manager in this build.
pub const ENABLED: bool = cfg!(feature = "systemd");

#[cfg(feature = "systemd")]
fn send(state: &[(&str, &str)]) {
    match systemd::daemon::notify(state.iter()) {
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify the service manager"),
    }
}

#[cfg(not(feature = "systemd"))]
fn send(_state: &[(&str, &str)]) {}

/// The service is ready: its listeners are bound and its index is open.
pub fn ready(status: &str) {
    send(&[("READY", "1"), ("STATUS", status)]);
}

/// A one-line status for `systemctl status`.
pub fn status(status: &str) {
    send(&[("STATUS", status)]);
}

/// The service is alive and working; sent only after the caller checked that it is.
pub fn watchdog() {
    send(&[("WATCHDOG", "1")]);
}

/// The service is stopping.
pub fn stopping(status: &str) {
    send(&[("STOPPING", "1"), ("STATUS", status)]);
}

/// Asks for more time to start (a long index repair), beyond the unit's start timeout.
pub fn extend_timeout(by: Duration) {
    let usec = by.as_micros().to_string();
    send(&[("EXTEND_TIMEOUT_USEC", usec.as_str())]);
}

/// The watchdog interval the service manager expects pings within, if it set one.
pub fn watchdog_interval() -> Option<Duration> {
    #[cfg(feature = "systemd")]
    {
        match systemd::daemon::watchdog_enabled() {
            Ok(0) | Err(_) => None,
            Ok(usec) => Some(Duration::from_micros(usec)),
        }
    }
    #[cfg(not(feature = "systemd"))]
    {
        None
    }
}
