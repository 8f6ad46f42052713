//! An association Outpost opens to a Storage SCP, plain or DICOM TLS, behind one type: connect
//! with errors a caller can act on, send instances one after the other, release or abort; and
//! a C-ECHO probe of a destination.

use std::sync::Arc;
use std::time::Duration;

use dicom_ul::ClientAssociationOptions;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::association::client::AsyncTlsStream;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AssociationRJResult, AssociationRJSource,
    PresentationContextNegotiated, PresentationContextResultReason,
};
use dimse::{Channel, Command, CommandField, DimseError, Incoming, Link, Status, StatusKind};
use store::query::Retrievable;
use tokio::net::TcpStream;
use tracing::debug;

use crate::context::{NoContext, choose_context};
use crate::options::verification_options;
use crate::payload::{PayloadError, payload};
use crate::send::{MoveOriginator, SendStoreError, send_store, wait_store_response};

/// The maximum PDU length announced on a C-ECHO probe, which receives only a command set.
const ECHO_MAX_PDU: u32 = 16_384;

/// DICOM TLS for an outgoing association: the client configuration (trusted roots, and the
/// client certificate when the receiver asks for one) and the name the receiver's
/// certificate must carry (a host name or an IP address).
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Why no association could be opened. Each variant names the address called.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing accepted the connection: refused, unreachable, or a name that does not
    /// resolve.
    #[error("cannot connect to {address}: {source}")]
    Unreachable {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection or the association negotiation took longer than allowed.
    #[error("the association with {address} timed out")]
    TimedOut { address: String },
    /// The receiver answered with an A-ASSOCIATE-RJ. A permanent rejection (such as "called
    /// AE title not recognized") will not go away by retrying; a transient one may.
    #[error(
        "{address} rejected the association {}: {reason} ({})",
        permanence(result),
        rejected_by(reason)
    )]
    Rejected {
        address: String,
        result: AssociationRJResult,
        /// Who rejected it and why (the A-ASSOCIATE-RJ's source and reason).
        reason: AssociationRJSource,
    },
    /// The TLS handshake failed (an untrusted or mismatched certificate, a receiver that
    /// does not speak TLS), or the receiver speaks TLS and was called without it.
    #[error("DICOM TLS with {address} failed: {reason}")]
    Tls { address: String, reason: String },
    /// Anything else: the receiver accepted none of the proposed presentation contexts,
    /// closed the connection or answered out of protocol.
    #[error("the association with {address} failed: {reason}")]
    Other { address: String, reason: String },
}

fn permanence(result: &AssociationRJResult) -> &'static str {
    match result {
        AssociationRJResult::Permanent => "permanently",
        AssociationRJResult::Transient => "transiently",
    }
}

fn rejected_by(source: &AssociationRJSource) -> &'static str {
    match source {
        AssociationRJSource::ServiceUser(_) => "rejected by the called application",
        AssociationRJSource::ServiceProviderASCE(_) => "rejected by its association control",
        AssociationRJSource::ServiceProviderPresentation(_) => "rejected by its presentation layer",
    }
}

impl ConnectError {
    /// The address that was called.
    pub fn address(&self) -> &str {
        match self {
            ConnectError::Unreachable { address, .. }
            | ConnectError::TimedOut { address }
            | ConnectError::Rejected { address, .. }
            | ConnectError::Tls { address, .. }
            | ConnectError::Other { address, .. } => address,
        }
    }

    /// Whether the receiver rejected the association permanently: retrying as configured
    /// will not succeed.
    pub fn is_permanent_rejection(&self) -> bool {
        matches!(
            self,
            ConnectError::Rejected {
                result: AssociationRJResult::Permanent,
                ..
            }
        )
    }

    fn from_ul(e: dicom_ul::association::Error, address: &str, tls: bool) -> ConnectError {
        use dicom_ul::association::Error as Ul;
        let address = address.to_string();
        match e {
            Ul::Rejected { association_rj, .. } => ConnectError::Rejected {
                address,
                result: association_rj.result,
                reason: association_rj.source,
            },
            Ul::Timeout { .. } => ConnectError::TimedOut { address },
            // tokio-rustls reports a failed handshake as an I/O error wrapping the rustls
            // error, which dicom-ul passes on as a connection failure.
            Ul::Connect { source, .. } if tls && wraps_rustls_error(&source) => ConnectError::Tls {
                address,
                reason: source.to_string(),
            },
            Ul::Connect { source, .. } | Ul::ToAddress { source, .. } => {
                ConnectError::Unreachable { address, source }
            }
            Ul::TlsHandshake { source, .. } => ConnectError::Tls {
                address,
                reason: format!("the handshake ended early ({source}); does it speak TLS?"),
            },
            Ul::TlsNotSupported => ConnectError::Tls {
                address,
                reason: "it answered in TLS to a plain association request; call it with \
                         DICOM TLS"
                    .into(),
            },
            e @ (Ul::TlsConnection { .. }
            | Ul::InvalidServerName { .. }
            | Ul::TlsConfigMissing { .. }) => ConnectError::Tls {
                address,
                reason: chain(&e),
            },
            Ul::NoAcceptedPresentationContexts { .. } => ConnectError::Other {
                address,
                reason: "it accepted none of the proposed presentation contexts".into(),
            },
            e => ConnectError::Other {
                address,
                reason: chain(&e),
            },
        }
    }
}

fn wraps_rustls_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// An error and its sources in one sentence: dicom-ul's own messages are terse ("could not
/// connect to server") and the cause is in the source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// Why one instance was not delivered. [`SendError::association_lost`] says whether the
/// association can go on.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No accepted presentation context can carry the instance; nothing was sent and the
    /// association is still usable.
    #[error(transparent)]
    NoContext(#[from] NoContext),
    /// The instance's file cannot be read, or converted for the receiver; nothing was sent
    /// and the association is still usable.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// The stored file failed while its data set was being sent: the instance cannot be
    /// sent, and the association, holding an unfinished data set, was aborted.
    #[error("{reason}; the association with {address} was aborted")]
    Interrupted { address: String, reason: String },
    /// The association had already been lost by an earlier request; nothing was sent.
    #[error("the association with {address} was lost by an earlier request; open a new one")]
    Closed { address: String },
    /// The association failed (transport, timeout, abort, protocol): it is gone, and whether
    /// the receiver stored the instance is unknown.
    #[error("the association with {address} failed: {source}")]
    Association {
        address: String,
        #[source]
        source: DimseError,
    },
}

impl SendError {
    /// Whether the association is gone: further instances need a new one.
    pub fn association_lost(&self) -> bool {
        matches!(
            self,
            SendError::Interrupted { .. }
                | SendError::Closed { .. }
                | SendError::Association { .. }
        )
    }
}

/// How a Storage Commitment request went: the N-ACTION-RSP's status, and the report when the
/// receiver sent it on the same association.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitmentRequested {
    pub status: Status,
    pub report: Option<crate::commitment::EventReport>,
}

/// Why a C-ECHO probe failed.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The receiver answered, with a status other than success.
    #[error("{address} answered the C-ECHO with status {status}")]
    Status { address: String, status: Status },
    /// The association failed before the C-ECHO-RSP arrived.
    #[error("the association with {address} failed during the C-ECHO: {source}")]
    Association {
        address: String,
        #[source]
        source: DimseError,
    },
}

/// The channel over a plain or a TLS association; [`Peer`] hides which.
enum Stream {
    Plain(Box<Channel<AsyncClientAssociation<TcpStream>>>),
    Tls(Box<Channel<AsyncClientAssociation<AsyncTlsStream>>>),
}

/// Runs `$body` with `$ch` bound to the peer's channel, whichever kind it is.
macro_rules! with_channel {
    ($stream:expr, $ch:ident => $body:expr) => {
        match $stream {
            Stream::Plain($ch) => $body,
            Stream::Tls($ch) => $body,
        }
    };
}

/// An association Outpost opened to a Storage SCP. Instances are sent one after the other
/// with [`Peer::send`]; end it with [`Peer::release`], or [`Peer::abort`].
pub struct Peer {
    stream: Stream,
    address: String,
    dimse_timeout: Duration,
    next_id: u16,
    /// Set once the association failed (and was aborted when that called for it).
    lost: bool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("address", &self.address)
            .field("tls", &self.is_tls())
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

/// Opens an association to `address` ("host:port") with `options` (see
/// [`crate::association_options`]), over DICOM TLS when `tls` is given. `connect_timeout`
/// bounds the whole establishment; `dimse_timeout` every later wait for the receiver.
pub async fn connect(
    options: ClientAssociationOptions<'static>,
    address: &str,
    tls: Option<&Tls>,
    connect_timeout: Duration,
    dimse_timeout: Duration,
) -> Result<Peer, ConnectError> {
    // Nagle's algorithm would hold back the tail of each PDU until the previous segment is
    // acknowledged; every PDU here is written whole, so it only adds latency.
    let established = match tls {
        Some(tls) => {
            let options = options
                .tls_config(tls.config.clone())
                .server_name(&tls.server_name);
            tokio::time::timeout(connect_timeout, options.establish_tls_async(address))
                .await
                .map(|r| {
                    r.map(|mut assoc| {
                        let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
                        Stream::Tls(Box::new(Channel::new(assoc, dimse_timeout)))
                    })
                })
        }
        None => tokio::time::timeout(connect_timeout, options.establish_async(address))
            .await
            .map(|r| {
                r.map(|mut assoc| {
                    let _ = assoc.inner_stream().set_nodelay(true);
                    Stream::Plain(Box::new(Channel::new(assoc, dimse_timeout)))
                })
            }),
    };
    match established {
        Err(_) => Err(ConnectError::TimedOut {
            address: address.to_string(),
        }),
        Ok(Err(e)) => Err(ConnectError::from_ul(e, address, tls.is_some())),
        Ok(Ok(stream)) => {
            debug!(address, tls = tls.is_some(), "association established");
            Ok(Peer {
                stream,
                address: address.to_string(),
                dimse_timeout,
                next_id: 1,
                lost: false,
            })
        }
    }
}

impl Peer {
    /// The address called.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether the association runs over DICOM TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Whether the association can still carry requests (no send has lost it).
    pub fn is_open(&self) -> bool {
        !self.lost
    }

    /// The presentation contexts the receiver accepted.
    pub fn contexts(&self) -> &[PresentationContextNegotiated] {
        with_channel!(&self.stream, ch => ch.link().contexts())
    }

    pub(crate) fn next_message_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Sends one stored instance and waits for the receiver's answer: picks the presentation
    /// context, streams the file from `store` (or converts it within `memory_limit` bytes
    /// when the receiver only accepted a Little Endian syntax), sends the C-STORE-RQ with
    /// the next message id and `originator` when it serves a C-MOVE, and returns the
    /// C-STORE-RSP's status, whatever it is.
    ///
    /// When the error says the association is lost ([`SendError::association_lost`]), the
    /// association was already aborted where that was needed; only [`Peer::release`] or
    /// [`Peer::abort`] remain, and both just close it.
    pub async fn send(
        &mut self,
        store: &store::Store,
        item: &Retrievable,
        memory_limit: u64,
        originator: Option<&MoveOriginator>,
    ) -> Result<Status, SendError> {
        if self.lost {
            return Err(SendError::Closed {
                address: self.address.clone(),
            });
        }
        let (pc_id, ts) = choose_context(self.contexts(), item, |_| true)?;
        let payload = payload(store, item, &ts, memory_limit).await?;
        let id = self.next_message_id();
        let timeout = self.dimse_timeout;
        let sent = with_channel!(&mut self.stream, ch => {
            match send_store(ch, pc_id, id, item, originator, payload).await {
                Ok(()) => wait_store_response(ch, id, timeout)
                    .await
                    .map_err(SendStoreError::Association),
                Err(e) => Err(e),
            }
        });
        match sent {
            Ok(status) => Ok(status),
            Err(SendStoreError::File { file, source }) => {
                self.fail(AbortRQServiceProviderReason::ReasonNotSpecified)
                    .await;
                Err(SendError::Interrupted {
                    address: self.address.clone(),
                    reason: format!(
                        "stored file {file} of instance {} ended early or failed to read while \
                         it was being sent: {source}",
                        item.sop_instance_uid
                    ),
                })
            }
            Err(SendStoreError::Association(e)) => {
                if e.calls_for_abort() {
                    self.fail(abort_reason(&e)).await;
                } else {
                    self.lost = true;
                }
                Err(SendError::Association {
                    address: self.address.clone(),
                    source: e,
                })
            }
        }
    }

    /// Sends an A-ABORT and marks the association lost.
    async fn fail(&mut self, reason: AbortRQServiceProviderReason) {
        debug!(address = %self.address, "aborting the association");
        with_channel!(&mut self.stream, ch => ch.abort(reason).await);
        self.lost = true;
    }

    /// Sends a request with its identifier and waits for the response `is_final` accepts,
    /// skipping pending ones (C-MOVE's progress reports). The wait for each response is the
    /// DIMSE timeout.
    pub(crate) async fn exchange(
        &mut self,
        pc_id: u8,
        rq: &Command,
        identifier: &[u8],
        is_final: impl Fn(&Command) -> bool,
    ) -> Result<Command, DimseError> {
        let timeout = self.dimse_timeout;
        with_channel!(&mut self.stream, ch => {
            ch.send_command(pc_id, rq).await?;
            ch.send_data_set(pc_id, identifier).await?;
            loop {
                match ch.next(timeout).await? {
                    Incoming::Command { command, pc_id: got } => {
                        if command.has_data_set {
                            // A failed-instances list; its content is not needed here.
                            let _ = ch.read_data_set(got, 1 << 20).await?;
                        }
                        if command.status == Some(Status::PENDING) {
                            continue;
                        }
                        if is_final(&command) {
                            return Ok(command);
                        }
                        return Err(DimseError::Protocol(format!(
                            "unexpected {} while waiting for the response",
                            command.field.name()
                        )));
                    }
                    Incoming::Release => {
                        return Err(DimseError::Protocol("the peer released mid-request".into()))
                    }
                    Incoming::Aborted => return Err(DimseError::Aborted),
                }
            }
        })
    }

    /// Asks the receiver to commit to `refs` (Storage Commitment Push Model, N-ACTION type 1)
    /// under `transaction_uid`, and waits for the N-ACTION-RSP. The receiver may report on
    /// this association (PS3.4 J.3.3) or on one it opens to our listener: after the
    /// response, a report is waited for here up to `wait` (a receiver that cannot reach our
    /// listener, behind NAT, has only this way), and, if it comes, read, answered
    /// (N-EVENT-REPORT-RSP) and returned too. A zero `wait` takes only a report already
    /// sent.
    pub async fn request_commitment(
        &mut self,
        transaction_uid: &str,
        refs: &[crate::commitment::Reference],
        wait: Duration,
    ) -> Result<CommitmentRequested, SendError> {
        let address = self.address.clone();
        if self.lost {
            return Err(SendError::Closed { address });
        }
        let Some((pc_id, ts)) = self
            .contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && dataset::ts::trim_uid(&pc.abstract_syntax) == dimse::STORAGE_COMMITMENT
            })
            .map(|pc| {
                (
                    pc.id,
                    dataset::ts::trim_uid(&pc.transfer_syntax).to_string(),
                )
            })
        else {
            return Err(SendError::NoContext(NoContext::ForClass(format!(
                "the receiver accepted no presentation context for Storage Commitment Push Model ({})",
                dimse::STORAGE_COMMITMENT
            ))));
        };
        let enc = dataset::ts::syntax_info(&ts)
            .map(|i| i.encoding)
            .unwrap_or(dataset::Encoding::IMPLICIT_LE);
        let data = crate::commitment::action_data_set(transaction_uid, refs, enc);
        let id = self.next_message_id();
        let mut rq = Command::new(CommandField::N_ACTION_RQ);
        rq.message_id = Some(id);
        rq.requested_sop_class_uid = Some(dimse::STORAGE_COMMITMENT.to_string());
        rq.requested_sop_instance_uid = Some(dimse::STORAGE_COMMITMENT_INSTANCE.to_string());
        rq.action_type_id = Some(1);
        rq.has_data_set = true;
        let timeout = self.dimse_timeout;
        let result: Result<(CommitmentRequested, bool), DimseError> = with_channel!(&mut self.stream, ch => {
            async {
                ch.send_command(pc_id, &rq).await?;
                ch.send_data_set(pc_id, &data).await?;
                let mut report = None;
                let mut status = None;
                let mut report_deadline: Option<tokio::time::Instant> = None;
                let mut released = false;
                while status.is_none() || report.is_none() {
                    let incoming = match report_deadline {
                        None => Some(ch.next(timeout).await?),
                        Some(deadline) => {
                            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                            if left.is_zero() {
                                // Take a report already sent, wait for none.
                                ch.poll_next().await?
                            } else {
                                match ch.next(left).await {
                                    Ok(i) => Some(i),
                                    // No report within the wait: not an error of the request.
                                    Err(DimseError::Timeout { .. }) => None,
                                    Err(e) => return Err(e),
                                }
                            }
                        }
                    };
                    let Some(incoming) = incoming else { break };
                    match incoming {
                        Incoming::Command { command, .. }
                            if command.field == CommandField::N_ACTION_RSP
                                && command.message_id_responded_to == Some(id) =>
                        {
                            let st = command.status.unwrap_or(Status::PROCESSING_FAILURE);
                            // A refused request is not reported on.
                            let wait = if st.is_success() { wait } else { Duration::ZERO };
                            report_deadline = Some(tokio::time::Instant::now() + wait);
                            status = Some(st);
                        }
                        Incoming::Command { command, pc_id: got }
                            if command.field == CommandField::N_EVENT_REPORT_RQ =>
                        {
                            let bytes = ch
                                .read_data_set(got, 16 << 20)
                                .await?
                                .unwrap_or_default();
                            let parsed = crate::commitment::parse_event_report(&bytes, enc);
                            let answer = if parsed.is_ok() {
                                Status::SUCCESS
                            } else {
                                Status::PROCESSING_FAILURE
                            };
                            let mut rsp = Command::new(CommandField::N_EVENT_REPORT_RSP);
                            rsp.message_id_responded_to = command.message_id;
                            rsp.affected_sop_class_uid = command.affected_sop_class_uid.clone();
                            rsp.affected_sop_instance_uid =
                                command.affected_sop_instance_uid.clone();
                            rsp.event_type_id = command.event_type_id;
                            rsp.status = Some(answer);
                            ch.send_command(got, &rsp).await?;
                            report = parsed.ok();
                        }
                        Incoming::Command { command, .. } => {
                            return Err(DimseError::Protocol(format!(
                                "expected N-ACTION-RSP to message {id}, got {}",
                                command.field.name()
                            )));
                        }
                        Incoming::Release if status.is_some() => {
                            // Answered, and the receiver is done with us (it will report
                            // on its own association, or not at all).
                            ch.release_reply().await?;
                            released = true;
                            break;
                        }
                        Incoming::Release => {
                            return Err(DimseError::Protocol(
                                "the receiver released during the commitment request".into(),
                            ));
                        }
                        Incoming::Aborted => return Err(DimseError::Aborted),
                    }
                }
                Ok((
                    CommitmentRequested {
                        status: status.unwrap_or(Status::PROCESSING_FAILURE),
                        report,
                    },
                    released,
                ))
            }
            .await
        });
        match result {
            Ok((r, released)) => {
                // Released by the receiver: nothing more goes on this association.
                self.lost |= released;
                Ok(r)
            }
            Err(e) => {
                if e.calls_for_abort() {
                    self.fail(abort_reason(&e)).await;
                }
                self.lost = true;
                Err(SendError::Association { address, source: e })
            }
        }
    }

    /// Sends a C-ECHO-RQ on the Verification context and returns the response's status.
    async fn verify(&mut self) -> Result<Status, DimseError> {
        let pc_id = self
            .contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && dataset::ts::trim_uid(&pc.abstract_syntax) == dimse::VERIFICATION
            })
            .map(|pc| pc.id)
            .ok_or_else(|| {
                DimseError::Protocol(
                    "the receiver accepted no presentation context for Verification".into(),
                )
            })?;
        let id = self.next_message_id();
        let mut rq = Command::new(CommandField::C_ECHO_RQ);
        rq.message_id = Some(id);
        rq.affected_sop_class_uid = Some(dimse::VERIFICATION.to_string());
        let timeout = self.dimse_timeout;
        with_channel!(&mut self.stream, ch => {
            ch.send_command(pc_id, &rq).await?;
            match ch.next(timeout).await? {
                Incoming::Command { command, .. }
                    if command.field == CommandField::C_ECHO_RSP
                        && command.message_id_responded_to == Some(id) =>
                {
                    Ok(command.status.unwrap_or(Status::PROCESSING_FAILURE))
                }
                Incoming::Command { command, .. } => Err(DimseError::Protocol(format!(
                    "expected C-ECHO-RSP to message {id}, got {}",
                    command.field.name()
                ))),
                Incoming::Release => Err(DimseError::Protocol(
                    "the receiver released instead of answering the C-ECHO".into(),
                )),
                Incoming::Aborted => Err(DimseError::Aborted),
            }
        })
    }

    /// Releases the association (A-RELEASE-RQ, then waits for the reply). An association a
    /// send lost was ended then; releasing it only closes the connection.
    pub async fn release(mut self) -> Result<(), DimseError> {
        if self.lost {
            return Ok(());
        }
        with_channel!(&mut self.stream, ch => ch.release().await)
    }

    /// Aborts the association (A-ABORT from the service provider) and closes the connection.
    pub async fn abort(mut self) {
        if !self.lost {
            self.fail(AbortRQServiceProviderReason::ReasonNotSpecified)
                .await;
        }
    }
}

/// The A-ABORT reason for a failed association, as the listener gives it.
fn abort_reason(e: &DimseError) -> AbortRQServiceProviderReason {
    match e {
        DimseError::Protocol(_) | DimseError::Command(_) => {
            AbortRQServiceProviderReason::UnexpectedPdu
        }
        _ => AbortRQServiceProviderReason::ReasonNotSpecified,
    }
}

/// Probes a destination: opens an association to `address` proposing only Verification,
/// sends a C-ECHO-RQ, waits for the C-ECHO-RSP and releases. `Ok` when it answered success.
pub async fn echo(
    calling_ae: &str,
    called_ae: &str,
    address: &str,
    tls: Option<&Tls>,
    connect_timeout: Duration,
    dimse_timeout: Duration,
) -> Result<(), EchoError> {
    let options = verification_options(calling_ae, called_ae, ECHO_MAX_PDU, connect_timeout);
    let mut peer = connect(options, address, tls, connect_timeout, dimse_timeout).await?;
    match peer.verify().await {
        Ok(status) => {
            // The answer is in: a failed release says nothing more about the destination.
            if let Err(e) = peer.release().await {
                debug!(address, "release after C-ECHO failed: {e}");
            }
            if status.kind() == StatusKind::Success {
                Ok(())
            } else {
                Err(EchoError::Status {
                    address: address.to_string(),
                    status,
                })
            }
        }
        Err(e) => {
            if !matches!(e, DimseError::Aborted) {
                peer.abort().await;
            }
            Err(EchoError::Association {
                address: address.to_string(),
                source: e,
            })
        }
    }
}
