//! Accepting connections: the association limit, TLS and plain-port mix-ups, the caller policy,
//! and handing an established association to its session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use audit::{Event, EventKind, Outcome};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJSource, AssociationRQ, Pdu,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::Services;
use crate::negotiate::{self, Decision, Gate};
use crate::policy;
use crate::session::Session;

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    Plain,
    Tls,
}

/// The largest association request examined before negotiation; larger ones (hundreds of
/// presentation contexts) are negotiated without that look-ahead.
const PEEK_LIMIT: usize = 64 * 1024;

/// Association slots beyond `max_associations` kept for remotes marked `upstream = true`: a
/// recall makes the central PACS open an association back to us while the retrievals that
/// asked for it hold their own slots, so with every general slot taken the recalls could
/// never arrive.
pub(crate) const UPSTREAM_RESERVE: usize = 4;

/// The association slots: the general ones, and those kept for upstream archives.
#[derive(Clone)]
pub(crate) struct Slots {
    pub general: Arc<Semaphore>,
    pub upstream: Arc<Semaphore>,
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: PortKind,
    services: Arc<Services>,
    slots: Slots,
    tracker: TaskTracker,
    force: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (socket, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: wait and try again rather than spin.
                warn!(error = %e, "accepting a connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Nagle's algorithm with delayed ACKs stalls DIMSE exchanges of small PDUs.
        let _ = socket.set_nodelay(true);
        let permit = slots.general.clone().try_acquire_owned().ok();
        let upstream_slots = slots.upstream.clone();
        let services = services.clone();
        let force = force.clone();
        let stopping = shutdown.clone();
        tracker.spawn(async move {
            let timeout = services.config.association_timeout;
            let result = match kind {
                PortKind::Plain => {
                    plain(
                        socket,
                        peer,
                        services,
                        permit,
                        upstream_slots,
                        force,
                        stopping,
                    )
                    .await
                }
                PortKind::Tls => {
                    tls(socket, peer, services, permit, force, stopping, timeout).await
                }
            };
            if let Err(why) = result {
                debug!(%peer, why, "connection closed before an association");
            }
        });
    }
}

/// How a wait for a caller that is not associated yet ended early.
enum Cut {
    TimedOut,
    Stopping,
}

/// Waits for a caller for at most `timeout`. A connection that is not an association yet has
/// nothing to finish, so the wait also ends as soon as the service starts stopping.
async fn wait_caller<F: std::future::Future>(
    shutdown: &CancellationToken,
    timeout: Duration,
    f: F,
) -> Result<F::Output, Cut> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(Cut::Stopping),
        r = tokio::time::timeout(timeout, f) => r.map_err(|_| Cut::TimedOut),
    }
}

async fn plain(
    socket: TcpStream,
    peer: SocketAddr,
    services: Arc<Services>,
    permit: Option<OwnedSemaphorePermit>,
    upstream_slots: Arc<Semaphore>,
    force: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), &'static str> {
    let dicom = &services.config;
    let peeked = match wait_caller(&shutdown, dicom.association_timeout, peek_request(&socket))
        .await
    {
        Err(Cut::Stopping) => return Err("the service is stopping"),
        Err(Cut::TimedOut) => {
            warn!(%peer, timeout = ?dicom.association_timeout, "no association request arrived in time; closing");
            return Err("timeout");
        }
        Ok(p) => p,
    };
    let (request, length) = match peeked {
        Peeked::Closed => return Err("closed"),
        Peeked::Tls => {
            warn!(
                %peer,
                plain_port = dicom.port,
                tls_port = dicom.tls.as_ref().map(|t| t.port),
                "the caller started a TLS handshake on the plain DICOM port: it is configured for DICOM TLS; point it at the TLS port, or turn TLS off on the caller"
            );
            return Err("TLS on the plain port");
        }
        Peeked::NotDicom(first) => {
            warn!(%peer, first_byte = format!("0x{first:02X}"), "the caller sent bytes that are not a DICOM association request; aborting");
            abort_raw(socket).await;
            return Err("not DICOM");
        }
        Peeked::Invalid(e) => {
            warn!(%peer, error = %e, "malformed A-ASSOCIATE-RQ; aborting");
            abort_raw(socket).await;
            return Err("malformed request");
        }
        Peeked::TooLarge => (None, 0),
        Peeked::Request(rq, length) => (Some(rq), length),
    };
    let resolved = policy::resolve_checked_hosts(&services).await;
    let (calling, called) = request
        .as_ref()
        .map(|rq| (rq.calling_ae_title.clone(), rq.called_ae_title.clone()))
        .unwrap_or_default();
    let upstream = services
        .config
        .remotes
        .iter()
        .any(|r| r.upstream && r.ae_title.matches(&calling));
    let permit = permit.or_else(|| {
        upstream
            .then(|| upstream_slots.try_acquire_owned().ok())
            .flatten()
    });
    let Some(permit) = permit else {
        reject_overload(&services, socket, peer, &calling, &called, length).await;
        return Err("association limit");
    };
    let admitted = match &request {
        Some(_) => match policy::admit(
            &services,
            &calling,
            &called,
            peer.ip(),
            PortKind::Plain,
            &resolved,
        ) {
            Ok(a) => a,
            Err(refusal) => {
                warn!(%peer, calling = calling.trim(), "association rejected: {}", refusal.why);
                audit_rejection(&services, &calling, &called, peer, &refusal.why);
                let rj = AssociationRJ {
                    result: AssociationRJResult::Permanent,
                    source: AssociationRJSource::ServiceUser(refusal.reason),
                };
                reject_raw(socket, length, rj).await;
                return Err("rejected");
            }
        },
        // Without the request in hand, decide in the access-control hook, as on TLS.
        None => {
            let (gate, decision) = Gate::new(services.clone(), peer.ip(), resolved);
            let options = negotiate::options(&services, gate, config::Permissions::ALL, None);
            let established = wait_caller(
                &shutdown,
                dicom.association_timeout,
                options.establish_async(socket),
            )
            .await;
            return finish_gated(
                established,
                &decision,
                &services,
                peer,
                PortKind::Plain,
                force,
                permit,
            )
            .await;
        }
    };
    if let (Some(rq), Some(reason)) = (&request, services.store.ingest_held())
        && only_stores(rq)
    {
        // A sender with nothing but instances to give is told to come back later, in the
        // terms its operator sees; associations that also query or retrieve go on, since
        // what is stored stays readable.
        let why = format!("the archive is not accepting instances: {reason}");
        warn!(%peer, calling = calling.trim(), "association rejected (transient): {why}");
        audit_rejection(&services, &calling, &called, peer, &why);
        let rj = AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
            ),
        };
        reject_raw(socket, length, rj).await;
        return Err("ingest held");
    }
    let options = negotiate::options(
        &services,
        negotiate::Accepted,
        admitted.permissions,
        request.as_ref(),
    );
    match tokio::time::timeout(dicom.association_timeout, options.establish_async(socket)).await {
        Ok(Ok(assoc)) => {
            Session::start(
                assoc,
                services.clone(),
                peer,
                admitted,
                PortKind::Plain,
                force,
                permit,
            )
            .await;
            Ok(())
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "association negotiation failed");
            Err("negotiation failed")
        }
        Err(_) => {
            warn!(%peer, "association negotiation timed out");
            Err("timeout")
        }
    }
}

/// Ends a negotiation whose caller policy ran in the access-control hook.
async fn finish_gated<S>(
    established: Result<
        Result<dicom_ul::association::AsyncServerAssociation<S>, dicom_ul::association::Error>,
        Cut,
    >,
    decision: &Decision,
    services: &Arc<Services>,
    peer: SocketAddr,
    port: PortKind,
    force: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> Result<(), &'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + dimse::channel::Socket,
{
    let decision = decision.lock().expect("decision lock").take();
    match (established, decision) {
        (Ok(Ok(assoc)), Some(Ok(admitted))) => {
            Session::start(assoc, services.clone(), peer, admitted, port, force, permit).await;
            Ok(())
        }
        (_, Some(Err(refusal))) => {
            warn!(%peer, "association rejected: {}", refusal.why);
            audit_rejection(
                services,
                &refusal.calling,
                &refusal.called,
                peer,
                &refusal.why,
            );
            Err("rejected")
        }
        (Ok(Err(e)), _) => {
            if port == PortKind::Tls {
                warn!(
                    %peer,
                    error = %e,
                    plain_port = services.config.port,
                    "TLS handshake or association request failed on the TLS port; if the caller does not use TLS, point it at the plain port"
                );
            } else {
                warn!(%peer, error = %e, "association negotiation failed");
            }
            Err("negotiation failed")
        }
        (Err(Cut::Stopping), _) => Err("the service is stopping"),
        (Err(Cut::TimedOut), _) => {
            warn!(%peer, ?port, "association negotiation timed out");
            Err("timeout")
        }
        (Ok(Ok(_)), None) => {
            warn!(%peer, "association established without a policy decision; closing");
            Err("no decision")
        }
    }
}

async fn tls(
    socket: TcpStream,
    peer: SocketAddr,
    services: Arc<Services>,
    permit: Option<OwnedSemaphorePermit>,
    force: CancellationToken,
    shutdown: CancellationToken,
    timeout: Duration,
) -> Result<(), &'static str> {
    let Some(tls) = services.tls.clone() else {
        return Err("no TLS configuration");
    };
    let mut first = [0u8; 1];
    match wait_caller(&shutdown, timeout, socket.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x01 => {
            warn!(
                %peer,
                tls_port = services.config.tls.as_ref().map(|t| t.port),
                plain_port = services.config.port,
                "the caller sent a plain (unencrypted) DICOM association request to the TLS port: it is not configured for DICOM TLS; enable TLS on the caller or point it at the plain port"
            );
            return Err("plain DICOM on the TLS port");
        }
        Ok(Ok(n)) if n > 0 => {}
        Err(Cut::Stopping) => return Err("the service is stopping"),
        _ => return Err("closed"),
    }
    let Some(permit) = permit else {
        // The limit is answered in DICOM terms, so the handshake has to happen first.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
        if let Ok(Ok(mut stream)) = wait_caller(&shutdown, timeout, acceptor.accept(socket)).await {
            let rq = wait_caller(&shutdown, timeout, read_request(&mut stream)).await;
            let (calling, called) = match &rq {
                Ok(Some(rq)) => (rq.calling_ae_title.clone(), rq.called_ae_title.clone()),
                _ => Default::default(),
            };
            log_overload(&services, peer, &calling, &called);
            let _ = write_pdu(&mut stream, &Pdu::AssociationRJ(transient())).await;
            let _ = stream.shutdown().await;
        }
        return Err("association limit");
    };
    let resolved = policy::resolve_checked_hosts(&services).await;
    let (gate, decision) = Gate::new(services.clone(), peer.ip(), resolved);
    let options = negotiate::options(&services, gate, config::Permissions::ALL, None)
        .tls_config(tls.server.clone());
    let established = wait_caller(&shutdown, timeout, options.establish_tls_async(socket)).await;
    finish_gated(
        established,
        &decision,
        &services,
        peer,
        PortKind::Tls,
        force,
        permit,
    )
    .await
}

enum Peeked {
    Closed,
    Tls,
    NotDicom(u8),
    Invalid(String),
    TooLarge,
    Request(AssociationRQ, usize),
}

/// Looks at the association request without consuming it, so dicom-ul still reads it whole.
async fn peek_request(socket: &TcpStream) -> Peeked {
    let mut buf = vec![0u8; PEEK_LIMIT];
    loop {
        let n = match socket.peek(&mut buf).await {
            Ok(0) | Err(_) => return Peeked::Closed,
            Ok(n) => n,
        };
        match buf[0] {
            0x16 => return Peeked::Tls,
            0x01 => {}
            other => return Peeked::NotDicom(other),
        }
        if n >= 6 {
            let length = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize + 6;
            if length > PEEK_LIMIT {
                return Peeked::TooLarge;
            }
            if n >= length {
                return match dicom_ul::pdu::read_pdu(
                    &buf[..length],
                    dicom_ul::pdu::MAXIMUM_PDU_SIZE,
                    false,
                ) {
                    Ok(Some(Pdu::AssociationRQ(rq))) => Peeked::Request(rq, length),
                    Ok(_) => Peeked::Invalid("truncated association request".into()),
                    Err(e) => Peeked::Invalid(e.to_string()),
                };
            }
        }
        // Part of the request is still on its way; peeking again at once would spin. Peeking
        // shows the same bytes forever once the caller has closed its side, so ask whether it
        // did: the rest will never come.
        if socket
            .ready(Interest::READABLE)
            .await
            .is_ok_and(|r| r.is_read_closed())
        {
            return Peeked::Closed;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<AssociationRQ> {
    let mut buf = bytes::BytesMut::new();
    match dicom_ul::association::read_pdu_from_wire_async(
        stream,
        &mut buf,
        dicom_ul::pdu::MAXIMUM_PDU_SIZE,
        false,
    )
    .await
    {
        Ok(Pdu::AssociationRQ(rq)) => Some(rq),
        _ => None,
    }
}

/// Whether a request proposes storage (and perhaps Verification) only.
fn only_stores(rq: &AssociationRQ) -> bool {
    rq.presentation_contexts.iter().all(|pc| {
        let uid = pc.abstract_syntax.trim_end_matches('\0');
        uid == dimse::VERIFICATION || dataset::is_storage_sop_class(uid)
    }) && rq
        .presentation_contexts
        .iter()
        .any(|pc| pc.abstract_syntax.trim_end_matches('\0') != dimse::VERIFICATION)
}

fn transient() -> AssociationRJ {
    AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    }
}

fn log_overload(services: &Services, peer: SocketAddr, calling: &str, called: &str) {
    let why = format!(
        "{} associations are already running (dicom.max_associations); the caller may retry",
        services.config.max_associations
    );
    warn!(%peer, calling = calling.trim(), "association rejected (transient): {why}");
    audit_rejection(services, calling, called, peer, &why);
}

async fn reject_overload(
    services: &Services,
    socket: TcpStream,
    peer: SocketAddr,
    calling: &str,
    called: &str,
    length: usize,
) {
    log_overload(services, peer, calling, called);
    reject_raw(socket, length, transient()).await;
}

fn audit_rejection(services: &Services, calling: &str, called: &str, peer: SocketAddr, why: &str) {
    services.audit.record(
        Event::new(EventKind::AssociationRejected, Outcome::MinorFailure)
            .association(calling, called, peer)
            .detail(why),
    );
}

/// Consumes the peeked request, answers it with a rejection and closes.
async fn reject_raw(mut socket: TcpStream, length: usize, rj: AssociationRJ) {
    let mut sink = vec![0u8; length];
    if length > 0 {
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut sink)).await;
    }
    let _ = write_pdu(&mut socket, &Pdu::AssociationRJ(rj)).await;
    let _ = socket.shutdown().await;
}

async fn abort_raw(mut socket: TcpStream) {
    let pdu = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnrecognizedPdu),
    };
    let _ = write_pdu(&mut socket, &pdu).await;
    let _ = socket.shutdown().await;
}

async fn write_pdu<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    pdu: &Pdu,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    dicom_ul::pdu::write_pdu(&mut buf, pdu).map_err(std::io::Error::other)?;
    tokio::time::timeout(Duration::from_secs(5), stream.write_all(&buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

pub(crate) fn log_accepted(peer: SocketAddr, calling: &str, port: PortKind, contexts: usize) {
    info!(%peer, calling = calling.trim(), ?port, contexts, "association accepted");
}
