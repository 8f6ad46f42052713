//! A UPS on loopback: a tokio-modbus TCP server that serves registers from state the test
//! changes, records what is written, and can fall silent, answer late or refuse.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// One write the client made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The Modbus function code: 6 (single register) or 16 (multiple).
    pub function: u8,
    pub address: u16,
    pub values: Vec<u16>,
}

#[derive(Default)]
struct State {
    holding: BTreeMap<u16, u16>,
    input: BTreeMap<u16, u16>,
    writes: Vec<Write>,
    /// Take requests but never answer them, with the connection left open (a hung card).
    silent: bool,
    /// Answer, but only after this long.
    late: Option<Duration>,
    /// Answer every request with this exception.
    refuse: Option<ExceptionCode>,
    connections: usize,
    requests: usize,
    unit_ids: Vec<u8>,
}

/// The running fake; the server stops when it is dropped.
pub struct FakeUps {
    pub address: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeUps {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUps {
    pub async fn start() -> FakeUps {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let task = serve(listener, state.clone());
        FakeUps {
            address,
            state,
            task,
        }
    }

    /// Stops the server, closing every connection, and starts it again on the same port with
    /// the same registers: a network card that rebooted.
    pub async fn restart(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let listener = TcpListener::bind(self.address)
            .await
            .expect("bind the same port");
        self.task = serve(listener, self.state.clone());
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state")
    }

    pub fn set_holding(&self, address: u16, values: &[u16]) {
        let mut s = self.state();
        for (a, v) in (address..).zip(values) {
            s.holding.insert(a, *v);
        }
    }

    pub fn set_input(&self, address: u16, values: &[u16]) {
        let mut s = self.state();
        for (a, v) in (address..).zip(values) {
            s.input.insert(a, *v);
        }
    }

    pub fn silence(&self, on: bool) {
        self.state().silent = on;
    }

    pub fn answer_late(&self, by: Option<Duration>) {
        self.state().late = by;
    }

    pub fn refuse(&self, with: Option<ExceptionCode>) {
        self.state().refuse = with;
    }

    pub fn writes(&self) -> Vec<Write> {
        self.state().writes.clone()
    }

    pub fn connections(&self) -> usize {
        self.state().connections
    }

    pub fn requests(&self) -> usize {
        self.state().requests
    }

    pub fn unit_ids(&self) -> Vec<u8> {
        self.state().unit_ids.clone()
    }
}

fn serve(listener: TcpListener, state: Arc<Mutex<State>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let server = Server::new(listener);
        let on_connected = move |stream, socket_addr| {
            let state = state.clone();
            async move {
                state.lock().expect("state").connections += 1;
                accept_tcp_connection(stream, socket_addr, move |_| {
                    Ok(Some(Service {
                        state: state.clone(),
                    }))
                })
            }
        };
        // A client that goes away mid-request is normal here (the timeout tests).
        let _ = server.serve(&on_connected, |_error| {}).await;
    })
}

struct Service {
    state: Arc<Mutex<State>>,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let (silent, late, refuse) = {
                let mut s = state.lock().expect("state");
                s.requests += 1;
                s.unit_ids.push(req.slave);
                (s.silent, s.late, s.refuse)
            };
            if silent {
                return Ok(None);
            }
            if let Some(late) = late {
                tokio::time::sleep(late).await;
            }
            if let Some(code) = refuse {
                return Err(code);
            }
            let mut s = state.lock().expect("state");
            let read = |table: &BTreeMap<u16, u16>, a: u16, n: u16| -> Vec<u16> {
                (a..a + n)
                    .map(|x| table.get(&x).copied().unwrap_or(0))
                    .collect()
            };
            match req.request {
                Request::ReadHoldingRegisters(a, n) => {
                    Ok(Some(Response::ReadHoldingRegisters(read(&s.holding, a, n))))
                }
                Request::ReadInputRegisters(a, n) => {
                    Ok(Some(Response::ReadInputRegisters(read(&s.input, a, n))))
                }
                Request::WriteSingleRegister(a, v) => {
                    s.holding.insert(a, v);
                    s.writes.push(Write {
                        function: 6,
                        address: a,
                        values: vec![v],
                    });
                    Ok(Some(Response::WriteSingleRegister(a, v)))
                }
                Request::WriteMultipleRegisters(a, values) => {
                    for (x, v) in (a..).zip(values.iter()) {
                        s.holding.insert(x, *v);
                    }
                    s.writes.push(Write {
                        function: 16,
                        address: a,
                        values: values.to_vec(),
                    });
                    Ok(Some(Response::WriteMultipleRegisters(
                        a,
                        values.len() as u16,
                    )))
                }
                _ => Err(ExceptionCode::IllegalFunction),
            }
        })
    }
}

/// The APC SMT register map as the tests set it, in the units people use.
pub struct Apc<'a>(pub &'a FakeUps);

impl Apc<'_> {
    /// UPSStatus_BF (a u32 at 0..1), SimpleSignalingStatus_BF at 18 and
    /// BatterySystemError_BF at 19.
    pub fn status(&self, status_bits: u32, signaling: u16, battery_error: u16) {
        self.0
            .set_holding(0, &[(status_bits >> 16) as u16, status_bits as u16]);
        self.0.set_holding(18, &[signaling, battery_error]);
    }

    /// RunTimeRemaining (u32 at 128), StateOfCharge (130, /512), BatteryVoltage (131, /32)
    /// and the load (136, /256).
    pub fn measures(&self, runtime_s: u32, charge_pct: f64, battery_v: f64, load_pct: f64) {
        self.0.set_holding(
            128,
            &[
                (runtime_s >> 16) as u16,
                runtime_s as u16,
                (charge_pct * 512.0) as u16,
                (battery_v * 32.0) as i16 as u16,
            ],
        );
        self.0.set_holding(136, &[(load_pct * 256.0) as u16]);
    }

    pub fn online(&self) {
        self.status(1 << 1, 0, 0);
        self.measures(3600, 100.0, 27.0, 20.0);
    }
}
