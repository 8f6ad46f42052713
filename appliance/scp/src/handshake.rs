//! The association handshake, done here rather than in dicom-ul: reading the A-ASSOCIATE-RQ
//! within the configured PDU limit, negotiating it, answering with an A-ASSOCIATE-AC that
//! carries Outpost's own Implementation Class UID, and the established association itself.
//!
//! dicom-ul 0.10's server reads the request itself (it cannot be handed one already read),
//! hard-codes its own Implementation Class UID and version name in the AC, and offers no way
//! to build its association from an already negotiated socket. Reading the request first is
//! what lets silent connections stay out of the association slots, so the whole handshake is
//! here; after it, PDUs are read by [`crate::reader`], bounded by our maximum PDU length.

use dicom_ul::association::server::{Negotiation, is_supported};
use dicom_ul::pdu::{
    AssociationAC, AssociationRJ, AssociationRJResult, AssociationRJServiceUserReason,
    AssociationRJSource, AssociationRQ, MAXIMUM_PDU_SIZE, Pdu, PresentationContextNegotiated,
    PresentationContextResult, PresentationContextResultReason, UserVariableItem,
};
use snafu::GenerateImplicitData;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::negotiate::Offer;
use crate::reader::PduReader;

const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// What a new connection sent where an A-ASSOCIATE-RQ was expected.
pub(crate) enum Read {
    Request(AssociationRQ),
    /// Closed (or reset) before the request was complete.
    Closed,
    /// A TLS ClientHello on the plain port.
    Tls,
    /// Not an association request: the first byte.
    NotDicom(u8),
    /// A request longer than `dicom.max_pdu`: its announced length.
    TooLarge(u32),
    Invalid(String),
}

/// Reads one A-ASSOCIATE-RQ. Memory follows what the caller actually sent: the header is
/// read first, and the body's buffer is allocated only once its announced length is known to
/// be within `max_pdu`.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(stream: &mut S, max_pdu: u32) -> Read {
    let mut header = [0u8; 6];
    if stream.read_exact(&mut header[..1]).await.is_err() {
        return Read::Closed;
    }
    match header[0] {
        0x01 => {}
        0x16 => return Read::Tls,
        other => return Read::NotDicom(other),
    }
    if stream.read_exact(&mut header[1..]).await.is_err() {
        return Read::Closed;
    }
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    if length > max_pdu {
        return Read::TooLarge(length);
    }
    let mut pdu = vec![0u8; 6 + length as usize];
    pdu[..6].copy_from_slice(&header);
    if stream.read_exact(&mut pdu[6..]).await.is_err() {
        return Read::Closed;
    }
    match dicom_ul::pdu::read_pdu(&pdu[..], max_pdu.max(dicom_ul::pdu::MINIMUM_PDU_SIZE), true) {
        Ok(Some(Pdu::AssociationRQ(rq))) => Read::Request(rq),
        Ok(_) => Read::Invalid("truncated association request".into()),
        Err(e) => Read::Invalid(e.to_string()),
    }
}

/// Writes one PDU, bounded in time so that a caller that stops reading cannot pin the task.
pub(crate) async fn write_pdu<S: AsyncWrite + Unpin>(
    stream: &mut S,
    pdu: &Pdu,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    dicom_ul::pdu::write_pdu(&mut buf, pdu).map_err(std::io::Error::other)?;
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.write_all(&buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The result of negotiating a request: the AC to send and what the association keeps.
pub(crate) struct Negotiated {
    pub ac: AssociationAC,
    pub contexts: Vec<PresentationContextNegotiated>,
    pub peer_max_pdu: u32,
}

/// Negotiates a request against what this connection may be offered, as dicom-ul's server
/// would (same checks, same transfer syntax choice), with Outpost's own implementation
/// identification in the answer.
pub(crate) fn negotiate(
    offer: &Offer,
    max_pdu: u32,
    rq: &AssociationRQ,
) -> Result<Negotiated, AssociationRJ> {
    let permanent = |reason| AssociationRJ {
        result: AssociationRJResult::Permanent,
        source: AssociationRJSource::ServiceUser(reason),
    };
    if rq.protocol_version != 1 {
        return Err(permanent(AssociationRJServiceUserReason::NoReasonGiven));
    }
    if rq.application_context_name.trim_end_matches('\0') != APPLICATION_CONTEXT {
        return Err(permanent(
            AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
        ));
    }
    let mut user_variables = vec![
        UserVariableItem::MaxLength(max_pdu),
        UserVariableItem::ImplementationClassUID(dataset::meta::IMPLEMENTATION_CLASS_UID.into()),
        UserVariableItem::ImplementationVersionName(
            dataset::meta::IMPLEMENTATION_VERSION_NAME.into(),
        ),
    ];
    let mut peer_max_pdu = dicom_ul::pdu::DEFAULT_MAX_PDU;
    for v in &rq.user_variables {
        match v {
            UserVariableItem::MaxLength(0) => peer_max_pdu = MAXIMUM_PDU_SIZE,
            UserVariableItem::MaxLength(n) => peer_max_pdu = (*n).min(MAXIMUM_PDU_SIZE),
            UserVariableItem::SopClassExtendedNegotiationSubItem(uid, input) => {
                if let Some(out) = offer.roles.extended_negotiation(uid, input) {
                    user_variables.push(UserVariableItem::SopClassExtendedNegotiationSubItem(
                        uid.clone(),
                        out,
                    ));
                }
            }
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) => {
                if let Some(granted) = offer.roles.negotiate_roles(uid, roles.scu, roles.scp) {
                    user_variables.push(UserVariableItem::ScuScpRoleSelectionSubItem(
                        uid.clone(),
                        granted,
                    ));
                }
            }
            _ => {}
        }
    }
    let contexts: Vec<PresentationContextNegotiated> = rq
        .presentation_contexts
        .iter()
        .map(|pc| {
            let abstract_syntax = trim(&pc.abstract_syntax).to_string();
            let offered = offer
                .abstract_syntaxes
                .iter()
                .any(|a| a == &abstract_syntax);
            // The requestor's first choice among ours that the registry can read.
            let chosen = offered
                .then(|| {
                    pc.transfer_syntaxes.iter().find(|ts| {
                        offer.transfer_syntaxes.iter().any(|o| o == trim(ts)) && is_supported(ts)
                    })
                })
                .flatten();
            let (reason, transfer_syntax) = match chosen {
                Some(ts) => (PresentationContextResultReason::Acceptance, ts.clone()),
                None if !offered => (
                    PresentationContextResultReason::AbstractSyntaxNotSupported,
                    IMPLICIT_LE.to_string(),
                ),
                None => (
                    PresentationContextResultReason::TransferSyntaxesNotSupported,
                    IMPLICIT_LE.to_string(),
                ),
            };
            PresentationContextNegotiated {
                id: pc.id,
                reason,
                transfer_syntax,
                abstract_syntax,
            }
        })
        .collect();
    let ac = AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: rq.application_context_name.clone(),
        presentation_contexts: contexts
            .iter()
            .map(|pc| PresentationContextResult {
                id: pc.id,
                reason: pc.reason.clone(),
                transfer_syntax: pc.transfer_syntax.clone(),
            })
            .collect(),
        user_variables,
    };
    Ok(Negotiated {
        ac,
        contexts,
        peer_max_pdu,
    })
}

fn trim(uid: &str) -> &str {
    uid.trim_end_matches(|c: char| c == '\0' || c.is_whitespace())
}

/// An association this listener accepted: the stream, the negotiated contexts and limits.
pub(crate) struct Accepted<S> {
    stream: S,
    reader: PduReader,
    write_buffer: Vec<u8>,
    peer_max_pdu: u32,
    contexts: Vec<PresentationContextNegotiated>,
    /// The AC's user variables: the roles granted are read back from them.
    granted: Vec<UserVariableItem>,
    calling: String,
    called: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Accepted<S> {
    /// Sends the AC of a negotiated request and returns the association.
    pub(crate) async fn establish(
        mut stream: S,
        rq: &AssociationRQ,
        negotiated: Negotiated,
        max_pdu: u32,
    ) -> std::io::Result<Accepted<S>> {
        let granted = negotiated.ac.user_variables.clone();
        write_pdu(&mut stream, &Pdu::AssociationAC(negotiated.ac)).await?;
        Ok(Accepted {
            stream,
            reader: PduReader::new(max_pdu),
            write_buffer: Vec::new(),
            peer_max_pdu: negotiated.peer_max_pdu,
            contexts: negotiated.contexts,
            granted,
            calling: rq.calling_ae_title.clone(),
            called: rq.called_ae_title.clone(),
        })
    }
}

impl<S> Accepted<S> {
    pub(crate) fn peer_ae_title(&self) -> &str {
        &self.calling
    }
    pub(crate) fn called_ae_title(&self) -> &str {
        &self.called
    }
    pub(crate) fn presentation_contexts(&self) -> &[PresentationContextNegotiated] {
        &self.contexts
    }
}

fn closed() -> dicom_ul::association::Error {
    dicom_ul::association::Error::ConnectionClosed {
        backtrace: snafu::Backtrace::generate(),
    }
}

impl<S> dimse::Link for Accepted<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + dimse::channel::Socket,
{
    fn send_pdu(
        &mut self,
        pdu: &Pdu,
    ) -> impl Future<Output = Result<(), dicom_ul::association::Error>> + Send {
        // Encoded before the future, so that it does not borrow the PDU. The channel never
        // builds a PDU longer than the peer's maximum.
        self.write_buffer.clear();
        let encoded = dicom_ul::pdu::write_pdu(&mut self.write_buffer, pdu)
            .map_err(|source| dicom_ul::association::Error::SendPdu { source });
        async move {
            encoded?;
            // A write fails only when the peer reset or closed the connection.
            self.stream
                .write_all(&self.write_buffer)
                .await
                .map_err(|_| closed())
        }
    }

    fn receive_pdu(
        &mut self,
    ) -> impl Future<Output = Result<Pdu, dicom_ul::association::Error>> + Send {
        self.reader.read(&mut self.stream)
    }

    fn peer_max_pdu(&self) -> u32 {
        self.peer_max_pdu
    }

    fn contexts(&self) -> &[PresentationContextNegotiated] {
        &self.contexts
    }

    fn requestor_is_scp(&self, sop_class: &str) -> bool {
        // PS3.7 D.3.3.4: without a role selection item returned, the requestor is SCU only.
        self.granted.iter().any(|v| {
            matches!(v, UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles)
                if uid == sop_class && roles.scp)
        })
    }

    fn quickack(&mut self) {
        // As dimse's own links do: acknowledge the next segments at once.
        let _ = socket2::SockRef::from(self.stream.tcp()).set_tcp_quickack(true);
    }
}
