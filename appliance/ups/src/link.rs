//! The Modbus connection: opening it over TCP or a serial line, and every request under a
//! timeout, because tokio-modbus's async client has none and would wait forever on a hung
//! network card.

use std::time::{Duration, Instant};

use tokio_modbus::client::{self, Reader as _, Writer as _};
use tokio_modbus::prelude::Slave;

use crate::profile::{Block, Function};
use crate::{Transport, UpsError};

/// Modbus RTU marks the end of a frame with 3.5 characters of silence (4 ms at 9600 baud);
/// NUT's APC driver keeps 35 ms between requests, and so do we, on serial lines only.
const RTU_FRAME_GAP: Duration = Duration::from_millis(35);

/// Who is being talked to, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// `host:port` or the serial device path.
    pub target: String,
    pub unit_id: u8,
    pub profile: String,
    pub timeout: Duration,
}

/// What a read brought back.
pub(crate) enum Values {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// What a write sends.
pub(crate) enum Payload {
    Registers(Vec<u16>),
    Coil(bool),
}

/// An open connection to the UPS.
pub(crate) struct Link {
    ctx: client::Context,
    rtu: bool,
    last_request: Option<Instant>,
}

impl Link {
    /// Connects (TCP) or opens the port (RTU). Nothing is sent yet.
    pub async fn open(transport: &Transport, peer: &Peer) -> Result<Link, UpsError> {
        let slave = Slave(peer.unit_id);
        match transport {
            Transport::Tcp { address } => {
                let stream = match tokio::time::timeout(
                    peer.timeout,
                    tokio::net::TcpStream::connect(address.as_str()),
                )
                .await
                {
                    Err(_) => {
                        return Err(UpsError::ConnectTimeout {
                            target: peer.target.clone(),
                            after_ms: peer.timeout.as_millis(),
                        });
                    }
                    Ok(Err(source)) => {
                        return Err(UpsError::Connect {
                            target: peer.target.clone(),
                            source,
                        });
                    }
                    Ok(Ok(stream)) => stream,
                };
                // Requests are a dozen bytes each; waiting to coalesce them only adds latency.
                let _ = stream.set_nodelay(true);
                tracing::debug!(ups = %peer.target, "connected to the UPS");
                Ok(Link {
                    ctx: client::tcp::attach_slave(stream, slave),
                    rtu: false,
                    last_request: None,
                })
            }
            Transport::Rtu { device, baud } => {
                let builder = tokio_serial::new(device.to_string_lossy(), *baud)
                    .data_bits(tokio_serial::DataBits::Eight)
                    .parity(tokio_serial::Parity::None)
                    .stop_bits(tokio_serial::StopBits::One)
                    .flow_control(tokio_serial::FlowControl::None);
                let port = tokio_serial::SerialStream::open(&builder).map_err(|e| {
                    UpsError::SerialOpen {
                        device: device.display().to_string(),
                        detail: e.description.clone(),
                        hint: serial_hint(e.kind),
                    }
                })?;
                tracing::debug!(ups = %peer.target, baud, "opened the UPS serial port");
                Ok(Link {
                    ctx: client::rtu::attach_slave(port, slave),
                    rtu: true,
                    last_request: None,
                })
            }
        }
    }

    /// Keeps the silence between frames a serial line needs.
    async fn pace(&mut self) {
        if self.rtu
            && let Some(last) = self.last_request
        {
            let since = last.elapsed();
            if since < RTU_FRAME_GAP {
                tokio::time::sleep(RTU_FRAME_GAP - since).await;
            }
        }
        self.last_request = Some(Instant::now());
    }

    /// Reads one block of a sample.
    pub async fn read(&mut self, block: Block, peer: &Peer) -> Result<Values, UpsError> {
        self.pace().await;
        let what = || {
            format!(
                "reading {} {} to {}",
                block.function,
                block.address,
                u32::from(block.address) + u32::from(block.count) - 1
            )
        };
        let (a, n) = (block.address, block.count);
        let t = peer.timeout;
        let values = match block.function {
            Function::Holding => Values::Registers(settle(
                tokio::time::timeout(t, self.ctx.read_holding_registers(a, n)).await,
                what,
                peer,
            )?),
            Function::Input => Values::Registers(settle(
                tokio::time::timeout(t, self.ctx.read_input_registers(a, n)).await,
                what,
                peer,
            )?),
            Function::Coil => Values::Bits(settle(
                tokio::time::timeout(t, self.ctx.read_coils(a, n)).await,
                what,
                peer,
            )?),
            Function::Discrete => Values::Bits(settle(
                tokio::time::timeout(t, self.ctx.read_discrete_inputs(a, n)).await,
                what,
                peer,
            )?),
        };
        // Bits come back padded to whole bytes; registers must match exactly, or the reply
        // belongs to some other request.
        let got = match &values {
            Values::Registers(r) => r.len(),
            Values::Bits(b) => b.len(),
        };
        let short = match &values {
            Values::Registers(_) => got != usize::from(n),
            Values::Bits(_) => got < usize::from(n),
        };
        if short {
            return Err(UpsError::Protocol {
                target: peer.target.clone(),
                what: what(),
                detail: format!("{got} values came back instead of {n}"),
            });
        }
        Ok(match values {
            Values::Bits(mut b) => {
                b.truncate(usize::from(n));
                Values::Bits(b)
            }
            registers => registers,
        })
    }

    /// Writes one step of a command.
    pub async fn write(
        &mut self,
        function: Function,
        address: u16,
        payload: &Payload,
        multiple: bool,
        peer: &Peer,
    ) -> Result<(), UpsError> {
        self.pace().await;
        let what = || match payload {
            Payload::Registers(words) => format!(
                "writing {} to holding register {address}",
                words
                    .iter()
                    .map(|w| format!("{w:#06x}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Payload::Coil(on) => format!("writing {} to coil {address}", u8::from(*on)),
        };
        let t = peer.timeout;
        match (function, payload) {
            (Function::Coil, Payload::Coil(on)) if multiple => settle(
                tokio::time::timeout(t, self.ctx.write_multiple_coils(address, &[*on])).await,
                what,
                peer,
            ),
            (Function::Coil, Payload::Coil(on)) => settle(
                tokio::time::timeout(t, self.ctx.write_single_coil(address, *on)).await,
                what,
                peer,
            ),
            (_, Payload::Registers(words)) if multiple || words.len() > 1 => settle(
                tokio::time::timeout(t, self.ctx.write_multiple_registers(address, words)).await,
                what,
                peer,
            ),
            (_, Payload::Registers(words)) => settle(
                tokio::time::timeout(
                    t,
                    self.ctx
                        .write_single_register(address, words.first().copied().unwrap_or(0)),
                )
                .await,
                what,
                peer,
            ),
            (_, Payload::Coil(_)) => Err(UpsError::Protocol {
                target: peer.target.clone(),
                what: what(),
                detail: format!("{function} cannot take a coil value"),
            }),
        }
    }
}

/// Turns the three layers of a timed Modbus call (timeout, transport, exception) into one
/// result with a sentence for people.
fn settle<T>(
    outcome: Result<tokio_modbus::Result<T>, tokio::time::error::Elapsed>,
    what: impl Fn() -> String,
    peer: &Peer,
) -> Result<T, UpsError> {
    match outcome {
        Err(_) => Err(UpsError::Timeout {
            target: peer.target.clone(),
            what: what(),
            after_ms: peer.timeout.as_millis(),
        }),
        Ok(Err(tokio_modbus::Error::Transport(source))) => Err(UpsError::Io {
            target: peer.target.clone(),
            what: what(),
            // tokio-modbus 0.17 reports a connection closed by the peer as whatever the last
            // OS error was: "Success (os error 0)" or the EAGAIN of the last non-blocking read,
            // which tokio itself never lets through. Say what happened instead.
            source: if source.raw_os_error() == Some(0)
                || source.kind() == std::io::ErrorKind::WouldBlock
            {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the UPS closed the connection",
                )
            } else {
                source
            },
        }),
        Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(UpsError::Protocol {
            target: peer.target.clone(),
            what: what(),
            detail: e.to_string(),
        }),
        Ok(Ok(Err(code))) => Err(UpsError::Refused {
            target: peer.target.clone(),
            what: what(),
            code: code.to_string(),
            unit_id: peer.unit_id,
            profile: peer.profile.clone(),
        }),
        Ok(Ok(Ok(value))) => Ok(value),
    }
}

/// What to do about a serial port that would not open.
fn serial_hint(kind: tokio_serial::ErrorKind) -> &'static str {
    use std::io::ErrorKind as Io;
    match kind {
        tokio_serial::ErrorKind::Io(Io::PermissionDenied) => {
            "add the service user to the dialout group (or give it the device with a udev rule)"
        }
        tokio_serial::ErrorKind::Io(Io::NotFound) => {
            "check the cable and the device path; a USB serial adapter is usually /dev/ttyUSB0, and the names under /dev/serial/by-id/ survive re-plugging"
        }
        tokio_serial::ErrorKind::NoDevice => {
            "another program holds the port (NUT or apcupsd?); stop it or use another port"
        }
        tokio_serial::ErrorKind::InvalidInput => "check the baud rate",
        _ => "check the device path and the cable",
    }
}
