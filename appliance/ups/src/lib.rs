//! The UPS over Modbus: register profiles, readings and the outlet-off command.
//!
//! # Layout
//!
//! - `profile`: vendor register maps ([`Profile`]) read from TOML; the shipped ones are the
//!   files in `configs/ups/`, embedded at build time.
//! - `decode`: register values to a [`Reading`], as a pure function ([`decode`]).
//! - `link`: the Modbus connection, TCP or RTU, with a timeout on every request.
//! - [`Ups`]: one UPS: samples it, reconnects after failures, sends the outlet-off command.
//!
//! Nothing here decides what a reading means for the appliance (when to power off, how long
//! a state must hold): that is the policy's job. This crate only reports what the UPS says.

mod decode;
mod link;
mod profile;

use std::path::PathBuf;
use std::time::Duration;

pub use decode::{RawValues, Reading, UpsState, decode};
pub use profile::{Function, Profile, ProfileError};

use link::{Link, Payload, Peer, Values};
use profile::{StepValue, ValueType};

/// How the UPS is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP, usually a network management card; `address` is `host:port`.
    Tcp { address: String },
    /// Modbus RTU on a serial line, 8 data bits, no parity, 1 stop bit.
    Rtu { device: PathBuf, baud: u32 },
}

/// Everything needed to talk to one UPS.
#[derive(Debug, Clone)]
pub struct Settings {
    pub transport: Transport,
    /// The Modbus unit (slave) id; APC uses 1.
    pub unit_id: u8,
    pub profile: Profile,
    /// Per request; a whole sample takes at most twice this.
    pub timeout: Duration,
}

/// Why the UPS could not be read or commanded.
#[derive(Debug, thiserror::Error)]
pub enum UpsError {
    /// The TCP connection was refused or failed.
    #[error(
        "cannot connect to the UPS at {target}: {source}; check that it is powered, reachable, and has Modbus TCP enabled"
    )]
    Connect {
        target: String,
        source: std::io::Error,
    },
    /// The TCP connection did not complete in time.
    #[error(
        "the UPS at {target} did not accept a connection within {after_ms} ms; check the address and the network"
    )]
    ConnectTimeout { target: String, after_ms: u128 },
    /// The serial port would not open.
    #[error("cannot open the serial port {device}: {detail}; {hint}")]
    SerialOpen {
        device: String,
        detail: String,
        hint: &'static str,
    },
    /// No answer in time. The connection is dropped: a late answer would be taken for the
    /// answer to the next request.
    #[error(
        "the UPS at {target} did not answer {what} within {after_ms} ms; the connection was closed and is opened again on the next try"
    )]
    Timeout {
        target: String,
        what: String,
        after_ms: u128,
    },
    /// The sample as a whole took too long.
    #[error(
        "the UPS at {target} gave no complete reading within {after_ms} ms; the connection was closed and is opened again on the next try"
    )]
    SampleTimeout { target: String, after_ms: u128 },
    /// The connection failed mid-request.
    #[error("the connection to the UPS at {target} failed while {what}: {source}")]
    Io {
        target: String,
        what: String,
        source: std::io::Error,
    },
    /// The answer did not belong to the request.
    #[error(
        "the UPS at {target} answered {what} with a reply that does not match it ({detail}); the connection was closed"
    )]
    Protocol {
        target: String,
        what: String,
        detail: String,
    },
    /// The UPS answered with a Modbus exception.
    #[error(
        "the UPS at {target} refused {what}: {code}; check that unit id {unit_id} and profile {profile:?} fit this UPS and that Modbus is enabled on it"
    )]
    Refused {
        target: String,
        what: String,
        code: String,
        unit_id: u8,
        profile: String,
    },
    /// The profile cannot switch the outlets off.
    #[error(
        "the UPS profile {profile:?} has no outlet-off command; add [[outlet_off]] steps to it (see configs/ups/README.md) or switch the UPS off by hand"
    )]
    NoOutletCommand { profile: String },
    /// The delay is longer than the UPS's register takes.
    #[error(
        "an outlet-off delay of {delay_s} s is longer than the UPS profile {profile:?} allows ({max_s} s); configure a shorter delay"
    )]
    DelayTooLong {
        profile: String,
        delay_s: u64,
        max_s: u64,
    },
}

impl UpsError {
    /// Whether the connection can no longer be trusted to be in step with the UPS.
    fn drops_connection(&self) -> bool {
        matches!(
            self,
            UpsError::Timeout { .. }
                | UpsError::SampleTimeout { .. }
                | UpsError::Io { .. }
                | UpsError::Protocol { .. }
        )
    }
}

/// One UPS, sampled on demand.
pub struct Ups {
    settings: Settings,
    peer: Peer,
    /// Taken out for the length of each exchange and put back only when it ended in step, so
    /// an exchange that fails or is cancelled half-way leaves no connection behind to reuse.
    link: Option<Link>,
}

impl Ups {
    /// Does not connect yet: the first [`Ups::read`] does.
    pub fn new(settings: Settings) -> Ups {
        let target = match &settings.transport {
            Transport::Tcp { address } => address.clone(),
            Transport::Rtu { device, .. } => device.display().to_string(),
        };
        let peer = Peer {
            target,
            unit_id: settings.unit_id,
            profile: settings.profile.name().to_string(),
            timeout: settings.timeout,
        };
        Ups {
            settings,
            peer,
            link: None,
        }
    }

    /// One sample. Takes at most about twice the timeout. On a timeout or an I/O error the
    /// connection is dropped (a late reply would desynchronise the stream) and opened again on
    /// the next call. When the UPS cannot be read the reading's state is
    /// [`UpsState::CommunicationLost`] and its `error` says why.
    pub async fn read(&mut self) -> Reading {
        let budget = self.settings.timeout.saturating_mul(2);
        let outcome = match tokio::time::timeout(budget, self.sample()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(UpsError::SampleTimeout {
                target: self.peer.target.clone(),
                after_ms: budget.as_millis(),
            }),
        };
        match outcome {
            Ok(values) => decode(&self.settings.profile, &values),
            Err(e) => Reading::communication_lost(e.to_string()),
        }
    }

    async fn sample(&mut self) -> Result<RawValues, UpsError> {
        let reused = self.link.is_some();
        match self.sample_once().await {
            // A connection kept since the last sample may have died quietly (a network card
            // that rebooted, a gateway that dropped it); reads are safe to repeat, so one
            // more try on a fresh connection saves a false "communication lost".
            Err(e @ UpsError::Io { .. }) if reused => {
                tracing::debug!(ups = %self.peer.target, error = %e, "reconnecting to the UPS");
                self.sample_once().await
            }
            outcome => outcome,
        }
    }

    async fn sample_once(&mut self) -> Result<RawValues, UpsError> {
        let mut link = self.connect().await?;
        let mut values = RawValues::new();
        let reads = self.settings.profile.reads.clone();
        for block in reads {
            match link.read(block, &self.peer).await {
                Ok(Values::Registers(words)) => {
                    values.set_registers(block.function, block.address, &words);
                }
                Ok(Values::Bits(bits)) => values.set_bits(block.function, block.address, &bits),
                Err(e) => return Err(self.give_back(link, e)),
            }
        }
        self.link = Some(link);
        Ok(values)
    }

    /// The open connection, or a new one.
    async fn connect(&mut self) -> Result<Link, UpsError> {
        match self.link.take() {
            Some(link) => Ok(link),
            None => Link::open(&self.settings.transport, &self.peer).await,
        }
    }

    /// Keeps the connection after an error that left it in step (a Modbus exception is a
    /// complete answer), and closes it otherwise.
    fn give_back(&mut self, link: Link, e: UpsError) -> UpsError {
        if e.drops_connection() {
            tracing::debug!(ups = %self.peer.target, error = %e, "closed the connection to the UPS");
            drop(link);
        } else {
            self.link = Some(link);
        }
        e
    }

    /// Tells the UPS to switch its outlets off after `delay`, and on again when mains returns
    /// (APC: sets the main outlet group's turn-off countdown, then sends OutletCommand
    /// "shutdown" with use-off-delay to the main outlet group). The delay is rounded up to
    /// whole seconds. Fails when the profile has no outlet command, when the delay is longer
    /// than the UPS takes, or when a write fails.
    pub async fn outlets_off_after(&mut self, delay: Duration) -> Result<(), UpsError> {
        let profile = &self.settings.profile;
        if !profile.has_outlet_command() {
            return Err(UpsError::NoOutletCommand {
                profile: profile.name().to_string(),
            });
        }
        // Every step is encoded before the first write, so that a delay the UPS cannot take
        // fails before anything on the UPS has changed.
        let rtu = matches!(self.settings.transport, Transport::Rtu { .. });
        let writes = profile
            .outlet_off
            .iter()
            .map(|step| Ok((step.clone(), encode_step(profile, step, delay, rtu)?)))
            .collect::<Result<Vec<_>, UpsError>>()?;
        let reused = self.link.is_some();
        match self.send(&writes).await {
            // As in `sample`: a kept connection that died quietly fails its first write at
            // once, before the UPS saw anything, and the command deserves a fresh connection.
            Err((0, e @ UpsError::Io { .. })) if reused => {
                tracing::debug!(ups = %self.peer.target, error = %e, "reconnecting to the UPS");
                self.send(&writes).await.map_err(|(_, e)| e)?;
            }
            outcome => outcome.map_err(|(_, e)| e)?,
        }
        tracing::info!(
            ups = %self.peer.target,
            delay_s = delay.as_secs_f64().ceil(),
            "told the UPS to switch its outlets off"
        );
        Ok(())
    }

    /// Writes the steps in order; on failure, says which step failed.
    async fn send(&mut self, writes: &[(profile::Step, Payload)]) -> Result<(), (usize, UpsError)> {
        let mut link = self.connect().await.map_err(|e| (0, e))?;
        for (i, (step, payload)) in writes.iter().enumerate() {
            let written = link
                .write(
                    step.at.function,
                    step.at.address,
                    payload,
                    step.multiple,
                    &self.peer,
                )
                .await;
            if let Err(e) = written {
                return Err((i, self.give_back(link, e)));
            }
            // Some UPSes (APC, per NUT) mishandle a request that follows a write too closely.
            tokio::time::sleep(step.pause).await;
        }
        self.link = Some(link);
        Ok(())
    }

    /// For people: "APC Smart-UPS SMT/SRT/SMX at 127.0.0.1:502 unit 1".
    pub fn describe(&self) -> String {
        let what = self.settings.profile.description();
        match &self.settings.transport {
            Transport::Tcp { address } => {
                format!("{what} at {address} unit {}", self.settings.unit_id)
            }
            Transport::Rtu { device, baud } => format!(
                "{what} on {} at {baud} baud unit {}",
                device.display(),
                self.settings.unit_id
            ),
        }
    }
}

/// The registers (or coil) one outlet-off step writes for this delay and transport.
fn encode_step(
    profile: &Profile,
    step: &profile::Step,
    delay: Duration,
    rtu: bool,
) -> Result<Payload, UpsError> {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    let (_, type_max) = step.at.kind.range();
    let value = match step.value {
        StepValue::Literal(v) => v,
        StepValue::DelaySeconds | StepValue::DelayMinutes => {
            let per = if step.value == StepValue::DelayMinutes {
                60
            } else {
                1
            };
            let units = seconds.div_ceil(per);
            let max = u64::try_from(step.max.unwrap_or(type_max).min(type_max)).unwrap_or(0);
            if units > max {
                return Err(UpsError::DelayTooLong {
                    profile: profile.name().to_string(),
                    delay_s: seconds,
                    max_s: max.saturating_mul(per),
                });
            }
            units as i64
        }
    };
    let extra = if rtu { step.or_rtu } else { step.or_tcp };
    let value = value | i64::from(extra);
    let words = |v: i64| [(v >> 16) as u16, v as u16];
    Ok(match step.at.kind {
        ValueType::Bit => Payload::Coil(value != 0),
        ValueType::U16 | ValueType::I16 => Payload::Registers(vec![value as u16]),
        ValueType::U32 | ValueType::I32 => Payload::Registers(words(value).to_vec()),
        ValueType::U32Le | ValueType::I32Le => {
            let [hi, lo] = words(value);
            Payload::Registers(vec![lo, hi])
        }
    })
}
