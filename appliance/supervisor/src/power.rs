//! The last steps of a UPS power-off, after the archive is closed: tell the UPS to cut its
//! outlets after a delay (and restore them when mains returns, so the appliance starts again
//! by itself), then run the configured power-off command.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

/// The power-off command gets this long; `systemctl poweroff` returns at once.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What the last steps achieved.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// The UPS took the outlet-off command.
    pub outlets_off: bool,
    /// The power-off command succeeded.
    pub command_ok: bool,
}

pub(crate) async fn power_off(
    c: &config::Config,
    ups: Option<&Arc<tokio::sync::Mutex<ups::Ups>>>,
) -> Done {
    let mut done = Done {
        outlets_off: false,
        command_ok: false,
    };
    if let (Some(device), Some(u)) = (ups, &c.ups) {
        // Two request timeouts per step cover a reconnect, and two more waiting for the
        // monitor's last read to let go; a hung card must not keep the appliance from
        // powering off.
        let deadline = u.timeout * 8 + Duration::from_secs(1);
        notify::extend_timeout(deadline + Duration::from_secs(10));
        let sent = tokio::time::timeout(deadline, async {
            let mut device = device.lock().await;
            let r = device.outlets_off_after(u.outlet_off_delay).await;
            (device.describe(), r)
        })
        .await;
        match sent {
            Ok((name, Ok(()))) => {
                done.outlets_off = true;
                info!(
                    ups = %name,
                    delay = ?u.outlet_off_delay,
                    "the UPS will switch its outlets off after the delay, and on again when mains returns"
                )
            }
            Ok((name, Err(e))) => warn!(
                ups = %name,
                error = %e,
                "the UPS did not take the outlet-off command; the appliance may stay off until someone presses its power button after mains returns"
            ),
            Err(_) => warn!(
                "the UPS did not answer the outlet-off command in time; the appliance may stay off until someone presses its power button after mains returns"
            ),
        }
    }
    let argv = &c.power.shutdown_command;
    notify::extend_timeout(COMMAND_TIMEOUT + Duration::from_secs(10));
    info!(command = ?argv, "running the power-off command");
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]).kill_on_drop(true);
    match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
        Ok(Ok(out)) if out.status.success() => {
            info!("the power-off command succeeded");
            done.command_ok = true;
        }
        Ok(Ok(out)) => error!(
            status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "the power-off command failed (is configs/polkit/50-outpost.rules installed, and polkit running?); the archive is closed, but the operating system keeps running until the UPS cuts power"
        ),
        Ok(Err(e)) => error!(
            error = %e,
            program = %argv[0],
            "cannot run the power-off command ([power] shutdown_command)"
        ),
        Err(_) => error!("the power-off command did not finish in 60 s"),
    }
    done
}
