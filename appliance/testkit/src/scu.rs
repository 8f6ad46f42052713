//! A DIMSE service user for tests: real associations, real PDUs, on the same channel code the
//! appliance uses (so tests of the SCP exercise it from the other side too).

use std::net::SocketAddr;
use std::time::Duration;

use dicom_ul::ClientAssociationOptions;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::association::client::AsyncTlsStream;
use dicom_ul::pdu::PresentationContextResultReason;
use dimse::{Channel, Command, CommandField, DimseError, Incoming, Status};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(30);

/// One C-STORE sub-operation received during a C-GET.
#[derive(Debug)]
pub struct Received {
    pub command: Command,
    pub data: Vec<u8>,
    pub transfer_syntax: String,
}

pub struct Scu<S = TcpStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + dimse::channel::Socket,
{
    channel: Channel<AsyncClientAssociation<S>>,
    next_id: u16,
}

/// Association options proposing `contexts` (abstract syntax, transfer syntaxes) and, for
/// C-GET, the SCP role for `scp_roles`; tests add to them (TLS, other settings) and pass
/// them to [`Scu::establish`] or [`Scu::establish_tls`].
pub fn options(
    calling: &str,
    called: &str,
    contexts: &[(&str, &[&str])],
    scp_roles: &[&str],
) -> ClientAssociationOptions<'static> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling.to_string())
        .called_ae_title(called.to_string())
        .max_pdu_length(16_384);
    for (abstract_syntax, syntaxes) in contexts {
        options = options.with_presentation_context(
            abstract_syntax.to_string(),
            syntaxes.iter().map(|s| s.to_string()).collect(),
        );
    }
    for sop in scp_roles {
        options = options.with_role_selection(sop.to_string(), false, true);
    }
    options
}

impl Scu<TcpStream> {
    /// Opens an association proposing `contexts` (abstract syntax, transfer syntaxes) and,
    /// for C-GET, the SCP role for `scp_roles`.
    pub async fn connect(
        addr: SocketAddr,
        calling: &str,
        called: &str,
        contexts: &[(&str, &[&str])],
        scp_roles: &[&str],
    ) -> Result<Scu, dicom_ul::association::Error> {
        Scu::establish(options(calling, called, contexts, scp_roles), addr).await
    }

    /// Opens an association with options of the test's making.
    pub async fn establish(
        options: ClientAssociationOptions<'static>,
        addr: SocketAddr,
    ) -> Result<Scu, dicom_ul::association::Error> {
        let mut assoc = options.establish_async(addr).await?;
        let _ = assoc.inner_stream().set_nodelay(true);
        Ok(Scu::new(assoc))
    }
}

impl Scu<AsyncTlsStream> {
    /// Opens an association over DICOM TLS; `options` carry the TLS client configuration
    /// and server name.
    pub async fn establish_tls(
        options: ClientAssociationOptions<'static>,
        addr: SocketAddr,
    ) -> Result<Scu<AsyncTlsStream>, dicom_ul::association::Error> {
        let mut assoc = options.establish_tls_async(addr).await?;
        let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
        Ok(Scu::new(assoc))
    }
}

impl<S> Scu<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + dimse::channel::Socket,
{
    fn new(assoc: AsyncClientAssociation<S>) -> Scu<S> {
        Scu {
            channel: Channel::new(assoc, TIMEOUT),
            next_id: 1,
        }
    }

    pub fn channel(&mut self) -> &mut Channel<AsyncClientAssociation<S>> {
        &mut self.channel
    }

    /// The accepted context for an abstract syntax (and transfer syntax, if given).
    pub fn context(&self, abstract_syntax: &str, ts: Option<&str>) -> Option<(u8, String)> {
        self.channel
            .link()
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax
                    && ts.is_none_or(|t| pc.transfer_syntax.trim_end_matches('\0') == t)
            })
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()))
    }

    pub fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn request(&mut self, field: CommandField, sop_class: &str) -> Command {
        let mut rq = Command::new(field);
        rq.message_id = Some(self.next_id());
        rq.affected_sop_class_uid = Some(sop_class.to_string());
        rq.priority = Some(0);
        rq
    }

    pub async fn echo(&mut self) -> Result<Status, DimseError> {
        let (pc, _) = self
            .context(dimse::VERIFICATION, None)
            .expect("verification accepted");
        let rq = self.request(CommandField::C_ECHO_RQ, dimse::VERIFICATION);
        self.channel.send_command(pc, &rq).await?;
        Ok(self.response().await?.status.unwrap_or(Status(0xFFFF)))
    }

    /// Stores a data set on the context accepted for its SOP class (and transfer syntax).
    pub async fn store(
        &mut self,
        sop_class: &str,
        sop_instance: &str,
        ts: Option<&str>,
        data: &[u8],
    ) -> Result<Command, DimseError> {
        let (pc, _) = self
            .context(sop_class, ts)
            .unwrap_or_else(|| panic!("no accepted context for {sop_class} {ts:?}"));
        let mut rq = self.request(CommandField::C_STORE_RQ, sop_class);
        rq.affected_sop_instance_uid = Some(sop_instance.to_string());
        rq.has_data_set = true;
        self.channel.send_command(pc, &rq).await?;
        self.channel.send_data_set(pc, data).await?;
        self.response().await
    }

    /// A C-FIND: the pending identifiers and the final response.
    pub async fn find(
        &mut self,
        model: &str,
        identifier: &[u8],
    ) -> Result<(Vec<Vec<u8>>, Command), DimseError> {
        let (pc, _) = self.context(model, None).expect("find model accepted");
        let mut rq = self.request(CommandField::C_FIND_RQ, model);
        rq.has_data_set = true;
        self.channel.send_command(pc, &rq).await?;
        self.channel.send_data_set(pc, identifier).await?;
        let mut matches = Vec::new();
        loop {
            let (rsp, data) = self.response_with_data().await?;
            if rsp.status == Some(Status::PENDING) || rsp.status == Some(Status::PENDING_WARNING) {
                matches.push(data.expect("a pending C-FIND response carries an identifier"));
            } else {
                return Ok((matches, rsp));
            }
        }
    }

    /// Sends a C-MOVE request; returns its message ID. Read responses with
    /// [`Scu::response_with_data`].
    pub async fn start_move(
        &mut self,
        model: &str,
        destination: &str,
        identifier: &[u8],
    ) -> Result<u16, DimseError> {
        let (pc, _) = self.context(model, None).expect("move model accepted");
        let mut rq = self.request(CommandField::C_MOVE_RQ, model);
        rq.move_destination = Some(destination.to_string());
        rq.has_data_set = true;
        let id = rq.message_id.expect("set");
        self.channel.send_command(pc, &rq).await?;
        self.channel.send_data_set(pc, identifier).await?;
        Ok(id)
    }

    /// A whole C-MOVE: every response, the final one last.
    pub async fn move_(
        &mut self,
        model: &str,
        destination: &str,
        identifier: &[u8],
    ) -> Result<Vec<(Command, Option<Vec<u8>>)>, DimseError> {
        self.start_move(model, destination, identifier).await?;
        let mut out = Vec::new();
        loop {
            let (rsp, data) = self.response_with_data().await?;
            let last = rsp.status != Some(Status::PENDING);
            out.push((rsp, data));
            if last {
                return Ok(out);
            }
        }
    }

    /// Sends a C-CANCEL-RQ for an operation on the context of `model`.
    pub async fn cancel(&mut self, model: &str, message_id: u16) -> Result<(), DimseError> {
        let (pc, _) = self.context(model, None).expect("model accepted");
        let mut rq = Command::new(CommandField::C_CANCEL_RQ);
        rq.message_id_responded_to = Some(message_id);
        self.channel.send_command(pc, &rq).await
    }

    /// Sends a C-GET request; returns its message ID. Read responses with
    /// [`Scu::response_with_data`] (when no sub-operation is expected, as while the
    /// appliance recalls a study) or use [`Scu::get`] for the whole exchange.
    pub async fn start_get(&mut self, model: &str, identifier: &[u8]) -> Result<u16, DimseError> {
        let (pc, _) = self.context(model, None).expect("get model accepted");
        let mut rq = self.request(CommandField::C_GET_RQ, model);
        rq.has_data_set = true;
        let id = rq.message_id.expect("set");
        self.channel.send_command(pc, &rq).await?;
        self.channel.send_data_set(pc, identifier).await?;
        Ok(id)
    }

    /// A whole C-GET: the instances received (answered with `store_status`) and every
    /// C-GET response.
    pub async fn get(
        &mut self,
        model: &str,
        identifier: &[u8],
        store_status: Status,
    ) -> Result<(Vec<Received>, Vec<(Command, Option<Vec<u8>>)>), DimseError> {
        self.start_get(model, identifier).await?;
        let mut received = Vec::new();
        let mut responses = Vec::new();
        loop {
            match self.channel.next(TIMEOUT).await? {
                Incoming::Command { pc_id, command }
                    if command.field == CommandField::C_STORE_RQ =>
                {
                    let data = self
                        .channel
                        .read_data_set(pc_id, 1 << 30)
                        .await?
                        .expect("fits");
                    let ts = self
                        .channel
                        .context(pc_id)
                        .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_string())
                        .unwrap_or_default();
                    let rsp =
                        Command::response_to(&command, CommandField::C_STORE_RSP, store_status);
                    self.channel.send_command(pc_id, &rsp).await?;
                    received.push(Received {
                        command,
                        data,
                        transfer_syntax: ts,
                    });
                }
                Incoming::Command { pc_id, command } => {
                    let data = if command.has_data_set {
                        Some(
                            self.channel
                                .read_data_set(pc_id, 1 << 20)
                                .await?
                                .expect("small"),
                        )
                    } else {
                        None
                    };
                    let last = command.status != Some(Status::PENDING);
                    responses.push((command, data));
                    if last {
                        return Ok((received, responses));
                    }
                }
                other => return Err(DimseError::Protocol(format!("unexpected {other:?}"))),
            }
        }
    }

    /// The next response command (its data set, if any, is read and dropped).
    pub async fn response(&mut self) -> Result<Command, DimseError> {
        Ok(self.response_with_data().await?.0)
    }

    pub async fn response_with_data(&mut self) -> Result<(Command, Option<Vec<u8>>), DimseError> {
        match self.channel.next(TIMEOUT).await? {
            Incoming::Command { pc_id, command } => {
                let data = if command.has_data_set {
                    Some(
                        self.channel
                            .read_data_set(pc_id, 1 << 20)
                            .await?
                            .expect("small"),
                    )
                } else {
                    None
                };
                Ok((command, data))
            }
            Incoming::Release => Err(DimseError::Protocol("peer released".into())),
            Incoming::Aborted => Err(DimseError::Aborted),
        }
    }

    pub async fn release(mut self) -> Result<(), DimseError> {
        self.channel.release().await
    }
}
