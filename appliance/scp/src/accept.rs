//! Accepting connections: reading the association request with no association slot held,
//! the pre-association limits, TLS and plain-port mix-ups, the caller policy, the
//! association limit, and handing an established association to its session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use audit::{Event, EventKind, Outcome};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceProviderPresentationReason,
    AssociationRJSource, AssociationRQ, Pdu,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::Services;
use crate::binding::PeerCertificate;
use crate::handshake::{self, Accepted, Read, write_pdu};
use crate::negotiate;
use crate::pending::{Pending, Ticket};
use crate::policy::{self, HostCache};
use crate::session::Session;

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    Plain,
    Tls,
}

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

/// What admission shares across connections: the slots, the connections not associated yet,
/// and the addresses of `check_host` remotes.
#[derive(Clone)]
pub(crate) struct Admission {
    pub slots: Slots,
    pub pending: Arc<Pending>,
    pub hosts: Arc<HostCache>,
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: PortKind,
    services: Arc<Services>,
    admission: Admission,
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
        // Registered before the task starts, so that a flood's older connections are closed
        // as fast as new ones arrive.
        let ticket = admission.pending.admit(peer.ip());
        let services = services.clone();
        let admission = admission.clone();
        let force = force.clone();
        let stopping = shutdown.clone();
        tracker.spawn(async move {
            let result = connection(
                socket, peer, kind, services, admission, ticket, force, stopping,
            )
            .await;
            if let Err(why) = result {
                debug!(%peer, why, "connection closed before an association");
            }
        });
    }
}

/// How a wait for a caller's request ended early.
enum Cut {
    TimedOut,
    Stopping,
    /// Newer incomplete connections pushed this one out (see [`crate::pending`]).
    Evicted,
}

/// Waits for a caller until `deadline`. A connection that is not an association yet has
/// nothing to finish, so the wait also ends as soon as the service starts stopping, or when
/// the pre-association limits close it.
async fn wait_request<F: std::future::Future>(
    shutdown: &CancellationToken,
    ticket: &Ticket,
    deadline: Instant,
    f: F,
) -> Result<F::Output, Cut> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(Cut::Stopping),
        _ = ticket.cut.cancelled() => Err(Cut::Evicted),
        r = tokio::time::timeout_at(deadline, f) => r.map_err(|_| Cut::TimedOut),
    }
}

fn cut_reason(cut: Cut, peer: SocketAddr, timeout: Duration) -> &'static str {
    match cut {
        Cut::Stopping => "the service is stopping",
        Cut::Evicted => "closed: newer incomplete connections from the same address",
        Cut::TimedOut => {
            warn!(%peer, ?timeout, "no association request arrived in time (dicom.request_timeout_s); closing");
            "timeout"
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    kind: PortKind,
    services: Arc<Services>,
    admission: Admission,
    ticket: Ticket,
    force: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), &'static str> {
    let dicom = &services.config;
    let timeout = dicom.request_timeout;
    let deadline = Instant::now() + timeout;
    let max_pdu = dicom.max_pdu;
    match kind {
        PortKind::Plain => {
            let read = wait_request(
                &shutdown,
                &ticket,
                deadline,
                handshake::read_request(&mut socket, max_pdu),
            )
            .await
            .map_err(|c| cut_reason(c, peer, timeout))?;
            drop(ticket);
            let rq = request(&services, &mut socket, peer, PortKind::Plain, read).await?;
            associate(
                socket,
                rq,
                peer,
                PortKind::Plain,
                None,
                &services,
                &admission,
                force,
            )
            .await
        }
        PortKind::Tls => {
            let Some(tls) = services.tls.clone() else {
                return Err("no TLS configuration");
            };
            let mut first = [0u8; 1];
            match wait_request(&shutdown, &ticket, deadline, socket.peek(&mut first)).await {
                Ok(Ok(1)) if first[0] == 0x01 => {
                    warn!(
                        %peer,
                        tls_port = dicom.tls.as_ref().map(|t| t.port),
                        plain_port = dicom.port,
                        "the caller sent a plain (unencrypted) DICOM association request to the TLS port: it is not configured for DICOM TLS; enable TLS on the caller or point it at the plain port"
                    );
                    return Err("plain DICOM on the TLS port");
                }
                Ok(Ok(n)) if n > 0 => {}
                Err(c) => return Err(cut_reason(c, peer, timeout)),
                _ => return Err("closed"),
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            let mut stream = match wait_request(
                &shutdown,
                &ticket,
                deadline,
                acceptor.accept(socket),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(
                        %peer,
                        error = %e,
                        plain_port = dicom.port,
                        "TLS handshake failed on the TLS port; if the caller does not use TLS, point it at the plain port"
                    );
                    return Err("TLS handshake failed");
                }
                Err(c) => return Err(cut_reason(c, peer, timeout)),
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| PeerCertificate::parse(der));
            let read = wait_request(
                &shutdown,
                &ticket,
                deadline,
                handshake::read_request(&mut stream, max_pdu),
            )
            .await
            .map_err(|c| cut_reason(c, peer, timeout))?;
            drop(ticket);
            let rq = request(&services, &mut stream, peer, PortKind::Tls, read).await?;
            associate(
                stream,
                rq,
                peer,
                PortKind::Tls,
                certificate,
                &services,
                &admission,
                force,
            )
            .await
        }
    }
}

/// The request read, or the refusal of what came instead.
async fn request<S: AsyncWrite + Unpin>(
    services: &Services,
    stream: &mut S,
    peer: SocketAddr,
    port: PortKind,
    read: Read,
) -> Result<AssociationRQ, &'static str> {
    let dicom = &services.config;
    match read {
        Read::Request(rq) => Ok(rq),
        Read::Closed => Err("closed"),
        Read::Tls => {
            warn!(
                %peer,
                plain_port = dicom.port,
                tls_port = dicom.tls.as_ref().map(|t| t.port),
                "the caller started a TLS handshake on the plain DICOM port: it is configured for DICOM TLS; point it at the TLS port, or turn TLS off on the caller"
            );
            Err("TLS on the plain port")
        }
        Read::NotDicom(first) => {
            warn!(%peer, ?port, first_byte = format!("0x{first:02X}"), "the caller sent bytes that are not a DICOM association request; aborting");
            abort(stream).await;
            Err("not DICOM")
        }
        Read::Invalid(e) => {
            warn!(%peer, ?port, error = %e, "malformed A-ASSOCIATE-RQ; aborting");
            abort(stream).await;
            Err("malformed request")
        }
        Read::TooLarge(length) => {
            // Refused from its header alone: nothing of it is read or buffered.
            warn!(
                %peer,
                ?port,
                length,
                max_pdu = dicom.max_pdu,
                "the A-ASSOCIATE-RQ announces more bytes than dicom.max_pdu; rejected unread (raise dicom.max_pdu if a real caller proposes that many contexts)"
            );
            let rj = AssociationRJ {
                result: AssociationRJResult::Permanent,
                source: AssociationRJSource::ServiceProviderASCE(
                    AssociationRJServiceProviderASCEReason::NoReasonGiven,
                ),
            };
            reject(stream, rj).await;
            Err("request too large")
        }
    }
}

/// Decides on a request read whole: the association limit, the caller policy, the ingest
/// hold, negotiation; then answers and runs the session.
async fn associate<S>(
    mut stream: S,
    rq: AssociationRQ,
    peer: SocketAddr,
    port: PortKind,
    certificate: Option<PeerCertificate>,
    services: &Arc<Services>,
    admission: &Admission,
    force: CancellationToken,
) -> Result<(), &'static str>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + dimse::channel::Socket,
{
    let dicom = &services.config;
    let calling = rq.calling_ae_title.clone();
    let called = rq.called_ae_title.clone();
    let upstream = dicom
        .remotes
        .iter()
        .any(|r| r.upstream && r.ae_title.matches(&calling));
    let permit = admission
        .slots
        .general
        .clone()
        .try_acquire_owned()
        .ok()
        .or_else(|| {
            upstream
                .then(|| admission.slots.upstream.clone().try_acquire_owned().ok())
                .flatten()
        });
    let Some(permit) = permit else {
        log_overload(services, peer, &calling, &called);
        reject(&mut stream, transient()).await;
        return Err("association limit");
    };
    let resolved = admission.hosts.snapshot();
    let admitted = match policy::admit(
        services,
        &calling,
        &called,
        peer.ip(),
        port,
        &resolved,
        certificate.as_ref(),
    ) {
        Ok(a) => a,
        Err(refusal) => {
            warn!(%peer, calling = calling.trim(), ?port, "association rejected: {}", refusal.why);
            audit_rejection(services, &calling, &called, peer, &refusal.why);
            let rj = AssociationRJ {
                result: AssociationRJResult::Permanent,
                source: AssociationRJSource::ServiceUser(refusal.reason),
            };
            reject(&mut stream, rj).await;
            return Err("rejected");
        }
    };
    if let Some(reason) = services.store.ingest_held()
        && only_stores(&rq)
    {
        // A sender with nothing but instances to give is told to come back later, in the
        // terms its operator sees; associations that also query or retrieve go on, since
        // what is stored stays readable.
        let why = format!("the archive is not accepting instances: {reason}");
        warn!(%peer, calling = calling.trim(), "association rejected (transient): {why}");
        audit_rejection(services, &calling, &called, peer, &why);
        let rj = AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
            ),
        };
        reject(&mut stream, rj).await;
        return Err("ingest held");
    }
    // On both ports only the services the caller may use are offered (permissions are also
    // enforced per message).
    let offer = negotiate::options(services, admitted.permissions, &rq);
    let negotiated = match handshake::negotiate(&offer, dicom.max_pdu, &rq) {
        Ok(n) => n,
        Err(rj) => {
            let why = format!("the request cannot be negotiated: {}", rj.source);
            warn!(%peer, calling = calling.trim(), "association rejected: {why}");
            audit_rejection(services, &calling, &called, peer, &why);
            reject(&mut stream, rj).await;
            return Err("rejected");
        }
    };
    match tokio::time::timeout(
        dicom.association_timeout,
        Accepted::establish(stream, &rq, negotiated, dicom.max_pdu),
    )
    .await
    {
        Ok(Ok(assoc)) => {
            Session::start(assoc, services.clone(), peer, admitted, port, force, permit).await;
            Ok(())
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "sending the A-ASSOCIATE-AC failed");
            Err("negotiation failed")
        }
        Err(_) => {
            warn!(%peer, "association negotiation timed out");
            Err("timeout")
        }
    }
}

/// Answers with a rejection and closes.
async fn reject<S: AsyncWrite + Unpin>(stream: &mut S, rj: AssociationRJ) {
    let _ = write_pdu(stream, &Pdu::AssociationRJ(rj)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
}

async fn abort<S: AsyncWrite + Unpin>(stream: &mut S) {
    let pdu = Pdu::AbortRQ {
        source: AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnrecognizedPdu),
    };
    let _ = write_pdu(stream, &pdu).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
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

fn audit_rejection(services: &Services, calling: &str, called: &str, peer: SocketAddr, why: &str) {
    services.audit.record(
        Event::new(EventKind::AssociationRejected, Outcome::MinorFailure)
            .association(calling, called, peer)
            .detail(why),
    );
}

pub(crate) fn log_accepted(peer: SocketAddr, calling: &str, port: PortKind, contexts: usize) {
    info!(%peer, calling = calling.trim(), ?port, contexts, "association accepted");
}
