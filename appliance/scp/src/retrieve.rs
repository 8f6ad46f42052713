//! C-MOVE and C-GET SCPs: the requested instances are sent as C-STORE sub-operations, on an
//! association Outpost opens to the destination (C-MOVE) or on the requestor's own (C-GET),
//! each in a transfer syntax the receiver accepted, streamed from disk.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use audit::{Event, EventKind, Outcome as AuditOutcome};
use dataset::tags;
use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, trim_uid};
use dataset::{Element, Vr};
use dicom_ul::ClientAssociationOptions;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::association::client::AsyncTlsStream;
use dicom_ul::pdu::{PresentationContextNegotiated, PresentationContextResultReason};
use dimse::command::PRIORITY_MEDIUM;
use dimse::{Channel, Command, CommandField, DimseError, Incoming, Link, Status, StatusKind};
use store::fs::FileReader;
use store::query::{Identifier, Retrievable};
use tracing::{info, warn};

use crate::find::{Syntax, key_text};
use crate::session::Session;
use crate::statuses::query_status;

/// Sub-operation counters, as C-MOVE/C-GET responses report them.
#[derive(Default)]
struct Progress {
    total: usize,
    completed: u16,
    failed: u16,
    warning: u16,
    failed_uids: Vec<String>,
}

impl Progress {
    fn done(&self) -> usize {
        usize::from(self.completed) + usize::from(self.failed) + usize::from(self.warning)
    }

    fn record(&mut self, uid: &str, outcome: &SubOutcome) {
        match outcome {
            SubOutcome::Stored(status) => match status.kind() {
                StatusKind::Success => self.completed += 1,
                StatusKind::Warning => self.warning += 1,
                _ => {
                    self.failed += 1;
                    self.failed_uids.push(uid.to_string());
                }
            },
            SubOutcome::NotSent(_) => {
                self.failed += 1;
                self.failed_uids.push(uid.to_string());
            }
        }
    }

    fn response(&self, request: &Command, field: CommandField, status: Status) -> Command {
        let mut rsp = Command::response_to(request, field, status);
        if status == Status::PENDING {
            rsp.remaining = Some((self.total - self.done()).min(usize::from(u16::MAX)) as u16);
        }
        rsp.completed = Some(self.completed);
        rsp.failed = Some(self.failed);
        rsp.warning = Some(self.warning);
        rsp
    }

    /// The final status: cancelled, all well, or done with failures (PS3.4 C.4.2.1.5).
    fn final_status(&self, cancelled: bool) -> Status {
        if cancelled {
            Status::CANCEL
        } else if self.failed > 0 || self.warning > 0 {
            Status::SUBOPS_WITH_FAILURES
        } else {
            Status::SUCCESS
        }
    }
}

/// How one sub-operation ended.
enum SubOutcome {
    /// The receiver answered with this status.
    Stored(Status),
    /// Nothing could be sent, for this reason.
    NotSent(String),
}

/// What one instance is sent as.
enum Payload {
    /// The stored data set, streamed from the file as it is.
    File(Box<dyn FileReader>, u64),
    /// The data set converted to another transfer syntax, in memory.
    Converted(Vec<u8>),
}

/// An association Outpost opened to a C-MOVE destination.
enum Destination {
    Plain(Box<Channel<AsyncClientAssociation<tokio::net::TcpStream>>>),
    Tls(Box<Channel<AsyncClientAssociation<AsyncTlsStream>>>),
}

/// Why no presentation context can carry an instance.
enum NoContext {
    /// The receiver accepted no context for the SOP class at all.
    ForClass(String),
    /// It accepted the class, but only in syntaxes the stored one cannot be converted into.
    ForSyntax(String),
}

impl NoContext {
    fn into_reason(self) -> String {
        match self {
            NoContext::ForClass(why) | NoContext::ForSyntax(why) => why,
        }
    }
}

/// Picks the presentation context to send an instance on: one with the stored transfer
/// syntax if the receiver accepted it, else one with a Little Endian syntax the stored one
/// can be decoded into.
fn choose_context(
    contexts: &[PresentationContextNegotiated],
    item: &Retrievable,
    usable: impl Fn(&PresentationContextNegotiated) -> bool,
) -> Result<(u8, String), NoContext> {
    let accepted: Vec<&PresentationContextNegotiated> = contexts
        .iter()
        .filter(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && trim_uid(&pc.abstract_syntax) == item.sop_class_uid
                && usable(pc)
        })
        .collect();
    if accepted.is_empty() {
        return Err(NoContext::ForClass(format!(
            "the receiver accepted no presentation context for SOP class {}",
            item.sop_class_uid
        )));
    }
    if let Some(pc) = accepted
        .iter()
        .find(|pc| trim_uid(&pc.transfer_syntax) == item.transfer_syntax)
    {
        return Ok((pc.id, item.transfer_syntax.clone()));
    }
    for native in [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN] {
        let pc = accepted
            .iter()
            .find(|pc| trim_uid(&pc.transfer_syntax) == native);
        if let Some(pc) = pc
            && transcode::can_convert(&item.transfer_syntax, native)
        {
            return Ok((pc.id, native.to_string()));
        }
    }
    let offered: Vec<&str> = accepted
        .iter()
        .map(|pc| trim_uid(&pc.transfer_syntax))
        .collect();
    let why = if transcode::can_convert(&item.transfer_syntax, EXPLICIT_VR_LITTLE_ENDIAN) {
        "it can only be converted to Explicit or Implicit VR Little Endian"
    } else {
        "no codec in this build decodes it"
    };
    Err(NoContext::ForSyntax(format!(
        "the receiver accepted SOP class {} only in transfer syntax {}, not in the stored {}, \
         and {why}",
        item.sop_class_uid,
        offered.join(", "),
        item.transfer_syntax
    )))
}

impl<L: Link> Session<L> {
    pub(crate) async fn c_move(&mut self, pc_id: u8, command: Command) -> Result<(), DimseError> {
        self.tally.retrieves += 1;
        let field = CommandField::C_MOVE_RSP;
        let Some((identifier, items)) = self
            .retrieval_request(pc_id, &command, field, self.admitted.permissions.move_)
            .await?
        else {
            return Ok(());
        };
        let destination = command.move_destination.clone().unwrap_or_default();
        let destination = destination.trim();
        let Some(remote) = self.services.config.remote(destination).cloned() else {
            let why = format!("move destination {destination:?} is not in [[dicom.remote]]");
            warn!(peer = %self.peer, calling = %self.calling, "C-MOVE refused: {why}");
            self.audit_retrieval(&identifier, destination, 0, Some(&why));
            let rsp = Command::response_to(&command, field, Status::MOVE_DESTINATION_UNKNOWN)
                .with_comment(why);
            return self.channel.send_command(pc_id, &rsp).await;
        };
        if items.is_empty() {
            self.audit_retrieval(&identifier, destination, 0, None);
            let rsp = Progress::default().response(&command, field, Status::SUCCESS);
            return self.channel.send_command(pc_id, &rsp).await;
        }
        let options = match self.destination_options(&remote, &items) {
            Ok(o) => o,
            Err(why) => {
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, why)
                    .await;
            }
        };
        let dicom = &self.services.config;
        let address = format!("{}:{}", remote.host, remote.port);
        let (timeout, dimse_timeout) = (dicom.association_timeout, dicom.dimse_timeout);
        let established = if remote.tls {
            let Some(tls) = self.services.tls.clone() else {
                let why = format!(
                    "{} requires DICOM TLS but [dicom.tls] is not configured",
                    remote.ae_title
                );
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, why)
                    .await;
            };
            let options = options.tls_config(tls.client).server_name(&remote.host);
            tokio::time::timeout(timeout, options.establish_tls_async(address.as_str()))
                .await
                .map(|r| {
                    r.map(|mut assoc| {
                        let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
                        Destination::Tls(Box::new(Channel::new(assoc, dimse_timeout)))
                    })
                })
        } else {
            tokio::time::timeout(timeout, options.establish_async(address.as_str()))
                .await
                .map(|r| {
                    r.map(|mut assoc| {
                        let _ = assoc.inner_stream().set_nodelay(true);
                        Destination::Plain(Box::new(Channel::new(assoc, dimse_timeout)))
                    })
                })
        };
        let dest = match established {
            Ok(Ok(dest)) => dest,
            Ok(Err(e)) => {
                let why = format!(
                    "association with {} at {address} failed: {e}",
                    remote.ae_title
                );
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, why)
                    .await;
            }
            Err(_) => {
                let why = format!(
                    "association with {} at {address} timed out",
                    remote.ae_title
                );
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, why)
                    .await;
            }
        };
        let (progress, cancelled) = match dest {
            Destination::Plain(mut ch) => {
                let r = self
                    .move_sub_operations(pc_id, &command, &mut ch, &items, destination)
                    .await;
                let _ = ch.release().await;
                r?
            }
            Destination::Tls(mut ch) => {
                let r = self
                    .move_sub_operations(pc_id, &command, &mut ch, &items, destination)
                    .await;
                let _ = ch.release().await;
                r?
            }
        };
        self.finish_retrieval(
            pc_id,
            &command,
            field,
            &identifier,
            destination,
            progress,
            cancelled,
        )
        .await
    }

    async fn move_unreachable(
        &mut self,
        pc_id: u8,
        command: &Command,
        identifier: &Identifier,
        destination: &str,
        why: String,
    ) -> Result<(), DimseError> {
        warn!(peer = %self.peer, destination, "C-MOVE failed: {why}");
        self.audit_retrieval(identifier, destination, 0, Some(&why));
        let rsp = Command::response_to(
            command,
            CommandField::C_MOVE_RSP,
            Status::OUT_OF_RESOURCES_SUBOPS,
        )
        .with_comment(why);
        self.channel.send_command(pc_id, &rsp).await
    }

    /// Sends every instance to the destination, reporting progress to the requestor after
    /// each and stopping on its C-CANCEL.
    async fn move_sub_operations<D: Link>(
        &mut self,
        pc_id: u8,
        command: &Command,
        dest: &mut Channel<D>,
        items: &[Retrievable],
        destination: &str,
    ) -> Result<(Progress, bool), DimseError> {
        let field = CommandField::C_MOVE_RSP;
        let mut progress = Progress {
            total: items.len(),
            ..Progress::default()
        };
        let originator = (self.calling.clone(), command.message_id.unwrap_or(0));
        let dimse_timeout = self.services.config.dimse_timeout;
        let mut next_id: u16 = 1;
        for item in items {
            if self.cancel_requested(command.message_id).await? {
                return Ok((progress, true));
            }
            let mut lost = false;
            let outcome = match choose_context(dest.link().contexts(), item, |_| true) {
                Err(no) => SubOutcome::NotSent(no.into_reason()),
                Ok((sub_pc, ts)) => match self.payload(item, &ts).await {
                    Err(why) => SubOutcome::NotSent(why),
                    Ok(payload) => {
                        let id = next_id;
                        next_id = next_id.wrapping_add(1).max(1);
                        let sent =
                            match send_store(dest, sub_pc, id, item, Some(&originator), payload)
                                .await
                            {
                                Ok(()) => wait_store_response(dest, id, dimse_timeout).await,
                                Err(e) => Err(e),
                            };
                        match sent {
                            Ok(status) => SubOutcome::Stored(status),
                            Err(e) => {
                                lost = true;
                                SubOutcome::NotSent(format!(
                                    "the association with the destination failed: {e}"
                                ))
                            }
                        }
                    }
                },
            };
            self.note_sub_outcome(item, destination, &outcome);
            progress.record(&item.sop_instance_uid, &outcome);
            if lost {
                // The destination is gone: what was not sent has failed.
                for rest in &items[progress.done()..] {
                    progress.record(&rest.sop_instance_uid, &SubOutcome::NotSent(String::new()));
                }
                break;
            }
            if progress.done() < progress.total {
                let rsp = progress.response(command, field, Status::PENDING);
                self.channel.send_command(pc_id, &rsp).await?;
            }
        }
        Ok((progress, false))
    }

    pub(crate) async fn c_get(&mut self, pc_id: u8, command: Command) -> Result<(), DimseError> {
        self.tally.retrieves += 1;
        let field = CommandField::C_GET_RSP;
        let Some((identifier, items)) = self
            .retrieval_request(pc_id, &command, field, self.admitted.permissions.get)
            .await?
        else {
            return Ok(());
        };
        let mut progress = Progress {
            total: items.len(),
            ..Progress::default()
        };
        let requestor = self.calling.clone();
        let mut cancelled = false;
        for item in &items {
            if cancelled || self.cancel_requested(command.message_id).await? {
                cancelled = true;
                break;
            }
            let link = self.channel.link();
            let chosen = choose_context(link.contexts(), item, |pc| {
                link.requestor_is_scp(&pc.abstract_syntax)
            })
            .map_err(|no| match no {
                NoContext::ForClass(why) => format!(
                    "{why} with the SCP role for the requestor (C-GET needs SCP/SCU role selection)"
                ),
                NoContext::ForSyntax(why) => why,
            });
            let outcome = match chosen {
                Err(why) => SubOutcome::NotSent(why),
                Ok((sub_pc, ts)) => match self.payload(item, &ts).await {
                    Err(why) => SubOutcome::NotSent(why),
                    Ok(payload) => {
                        let id = self.next_message_id();
                        send_store(&mut self.channel, sub_pc, id, item, None, payload).await?;
                        // The requestor may cancel while it stores; keep waiting for the
                        // response either way (PS3.7 9.1.3.2).
                        loop {
                            match self
                                .channel
                                .next(self.services.config.dimse_timeout)
                                .await?
                            {
                                Incoming::Command { command: rsp, .. }
                                    if rsp.field == CommandField::C_STORE_RSP
                                        && rsp.message_id_responded_to == Some(id) =>
                                {
                                    break SubOutcome::Stored(
                                        rsp.status.unwrap_or(Status::PROCESSING_FAILURE),
                                    );
                                }
                                Incoming::Command { command: c, .. }
                                    if c.field == CommandField::C_CANCEL_RQ
                                        && c.message_id_responded_to == command.message_id =>
                                {
                                    cancelled = true;
                                }
                                Incoming::Aborted => return Err(DimseError::Aborted),
                                other => {
                                    return Err(DimseError::Protocol(format!(
                                        "expected the C-STORE-RSP of a C-GET sub-operation, got {other:?}"
                                    )));
                                }
                            }
                        }
                    }
                },
            };
            self.note_sub_outcome(item, &requestor, &outcome);
            progress.record(&item.sop_instance_uid, &outcome);
            if progress.done() < progress.total && !cancelled {
                let rsp = progress.response(&command, field, Status::PENDING);
                self.channel.send_command(pc_id, &rsp).await?;
            }
        }
        self.finish_retrieval(
            pc_id,
            &command,
            field,
            &identifier,
            &requestor,
            progress,
            cancelled,
        )
        .await
    }

    /// Reads, checks and resolves a retrieval request. `None` when it was refused (and
    /// answered) already.
    async fn retrieval_request(
        &mut self,
        pc_id: u8,
        command: &Command,
        field: CommandField,
        permitted: bool,
    ) -> Result<Option<(Identifier, Vec<Retrievable>)>, DimseError> {
        if !permitted {
            if command.has_data_set {
                self.drain(pc_id).await?;
            }
            let rsp = Command::response_to(command, field, Status::NOT_AUTHORIZED)
                .with_comment(format!("{} may not retrieve here", self.calling));
            self.channel.send_command(pc_id, &rsp).await?;
            return Ok(None);
        }
        let (model, identifier) = match self.read_identifier(pc_id, command).await? {
            Ok((model, identifier, _)) => (model, identifier),
            Err((status, comment)) => {
                warn!(peer = %self.peer, calling = %self.calling, %status, "{} refused: {comment}", field.name());
                let rsp = Command::response_to(command, field, status).with_comment(comment);
                self.channel.send_command(pc_id, &rsp).await?;
                return Ok(None);
            }
        };
        let store = self.services.store.clone();
        let query = identifier.clone();
        let resolved = tokio::task::spawn_blocking(move || store.resolve(model, &query))
            .await
            .expect("resolve task panicked");
        match resolved {
            Ok(items) => Ok(Some((identifier, items))),
            Err(e) => {
                let status = query_status(&e, true);
                warn!(peer = %self.peer, calling = %self.calling, %status, "{} refused: {e}", field.name());
                let rsp = Command::response_to(command, field, status).with_comment(e.to_string());
                self.channel.send_command(pc_id, &rsp).await?;
                Ok(None)
            }
        }
    }

    async fn finish_retrieval(
        &mut self,
        pc_id: u8,
        command: &Command,
        field: CommandField,
        identifier: &Identifier,
        destination: &str,
        progress: Progress,
        cancelled: bool,
    ) -> Result<(), DimseError> {
        let status = progress.final_status(cancelled);
        let mut rsp = progress.response(command, field, status);
        let sent = u64::from(progress.completed) + u64::from(progress.warning);
        self.tally.sent += sent;
        info!(
            peer = %self.peer,
            calling = %self.calling,
            destination,
            completed = progress.completed,
            failed = progress.failed,
            warning = progress.warning,
            cancelled,
            "{} finished",
            field.name()
        );
        let failure =
            (progress.failed > 0).then(|| format!("{} sub-operations failed", progress.failed));
        self.audit_retrieval(identifier, destination, sent, failure.as_deref());
        if progress.failed_uids.is_empty() {
            return self.channel.send_command(pc_id, &rsp).await;
        }
        // A final response reporting failures lists them (PS3.4 C.4.2.1.4, C.4.3.1.4).
        rsp.has_data_set = true;
        self.channel.send_command(pc_id, &rsp).await?;
        let syntax = self
            .channel
            .context(pc_id)
            .and_then(|pc| Syntax::of(&pc.transfer_syntax))
            .unwrap_or(Syntax {
                encoding: dataset::Encoding::IMPLICIT_LE,
                deflated: false,
            });
        let list = Element {
            tag: tags::FAILED_SOP_INSTANCE_UID_LIST,
            vr: Vr::UI,
            value: progress.failed_uids.join("\\").into_bytes(),
        };
        self.channel
            .send_data_set(pc_id, &syntax.encode(&[list]))
            .await
    }

    fn note_sub_outcome(&self, item: &Retrievable, destination: &str, outcome: &SubOutcome) {
        match outcome {
            SubOutcome::Stored(status) if status.kind() == StatusKind::Success => {}
            SubOutcome::Stored(status) => warn!(
                destination,
                sop = %item.sop_instance_uid,
                %status,
                "the receiver did not accept a sub-operation"
            ),
            SubOutcome::NotSent(why) if !why.is_empty() => warn!(
                destination,
                sop = %item.sop_instance_uid,
                "sub-operation failed: {why}"
            ),
            SubOutcome::NotSent(_) => {}
        }
    }

    /// Opens the file of an instance, or converts it when the receiver needs another syntax.
    async fn payload(&self, item: &Retrievable, target_ts: &str) -> Result<Payload, String> {
        let store = self.services.store.clone();
        let item = item.clone();
        let target = target_ts.to_string();
        let limit = self.services.config.transcode_memory_limit;
        tokio::task::spawn_blocking(move || {
            let mut file = store
                .open_file(&item.file)
                .map_err(|e| format!("cannot open {}: {e}", item.file))?;
            if target == item.transfer_syntax {
                file.seek(SeekFrom::Start(item.dataset_offset))
                    .map_err(|e| format!("cannot read {}: {e}", item.file))?;
                return Ok(Payload::File(file, item.size - item.dataset_offset));
            }
            if item.size > limit {
                return Err(format!(
                    "converting from {} needs more than the {} MB transcode memory limit",
                    item.transfer_syntax,
                    limit / (1024 * 1024)
                ));
            }
            let mut bytes = Vec::with_capacity(item.size as usize);
            file.read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read {}: {e}", item.file))?;
            transcode::to_native(&bytes, &target, limit)
                .map(Payload::Converted)
                .map_err(|e| {
                    format!(
                        "cannot convert from {} to {target}: {e}",
                        item.transfer_syntax
                    )
                })
        })
        .await
        .expect("payload task panicked")
    }

    /// Association options for a C-MOVE destination, proposing for each SOP class its stored
    /// transfer syntaxes and the native ones.
    fn destination_options(
        &self,
        remote: &config::Remote,
        items: &[Retrievable],
    ) -> Result<ClientAssociationOptions<'static>, String> {
        let dicom = &self.services.config;
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(dicom.ae_title.as_str().to_string())
            .called_ae_title(remote.ae_title.as_str().to_string())
            .max_pdu_length(dicom.max_pdu)
            .connection_timeout(dicom.association_timeout)
            .read_timeout(dicom.association_timeout);
        let mut classes: Vec<(String, Vec<String>)> = Vec::new();
        for item in items {
            match classes.iter_mut().find(|(c, _)| *c == item.sop_class_uid) {
                Some((_, syntaxes)) => {
                    if !syntaxes.contains(&item.transfer_syntax) {
                        syntaxes.push(item.transfer_syntax.clone());
                    }
                }
                None => classes.push((
                    item.sop_class_uid.clone(),
                    vec![item.transfer_syntax.clone()],
                )),
            }
        }
        let natives = || {
            vec![
                EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
                IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
            ]
        };
        // One context per stored syntax lets the receiver take each one it supports, so every
        // instance can travel as stored, with a Little Endian context per class as the
        // fallback. Explicit VR Little Endian needs no context of its own: the fallback lists
        // it first. An association carries at most 128 contexts; beyond that, one context per
        // class lists all its syntaxes.
        let own_context = |t: &String| t != EXPLICIT_VR_LITTLE_ENDIAN;
        let separate: usize = classes
            .iter()
            .map(|(_, s)| 1 + s.iter().filter(|t| own_context(t)).count())
            .sum();
        if classes.len() > 128 {
            return Err(format!(
                "the instances span {} SOP classes, more than one association can carry",
                classes.len()
            ));
        }
        for (class, syntaxes) in classes {
            if separate <= 128 {
                for ts in syntaxes.iter().filter(|t| own_context(t)) {
                    options = options.with_presentation_context(class.clone(), vec![ts.clone()]);
                }
                options = options.with_presentation_context(class, natives());
            } else {
                let mut all = syntaxes;
                for n in natives() {
                    if !all.contains(&n) {
                        all.push(n);
                    }
                }
                options = options.with_presentation_context(class, all);
            }
        }
        Ok(options)
    }

    fn audit_retrieval(
        &self,
        identifier: &Identifier,
        destination: &str,
        sent: u64,
        failure: Option<&str>,
    ) {
        let outcome = match failure {
            None => AuditOutcome::Success,
            Some(_) if sent > 0 => AuditOutcome::MinorFailure,
            Some(_) => AuditOutcome::SeriousFailure,
        };
        let mut event = Event::new(EventKind::Retrieve, outcome)
            .association(&self.calling, &self.called, self.peer)
            .instances(sent);
        if let Some(id) = key_text(identifier, tags::PATIENT_ID) {
            event = event.patient(&id);
        }
        if let Some(uid) = key_text(identifier, tags::STUDY_INSTANCE_UID) {
            event = event.study(&uid);
        }
        let detail = match failure {
            None => format!(
                "{} level retrieval to {destination}",
                identifier.level.as_str()
            ),
            Some(why) => format!(
                "{} level retrieval to {destination}: {why}",
                identifier.level.as_str()
            ),
        };
        self.services.audit.record(event.detail(detail));
    }
}

/// Sends one C-STORE-RQ and its data set.
async fn send_store<L: Link>(
    channel: &mut Channel<L>,
    pc_id: u8,
    message_id: u16,
    item: &Retrievable,
    originator: Option<&(String, u16)>,
    payload: Payload,
) -> Result<(), DimseError> {
    let mut rq = Command::new(CommandField::C_STORE_RQ);
    rq.message_id = Some(message_id);
    rq.affected_sop_class_uid = Some(item.sop_class_uid.clone());
    rq.affected_sop_instance_uid = Some(item.sop_instance_uid.clone());
    rq.priority = Some(PRIORITY_MEDIUM);
    rq.has_data_set = true;
    if let Some((ae, id)) = originator {
        rq.move_originator_ae = Some(ae.clone());
        rq.move_originator_message_id = Some(*id);
    }
    channel.send_command(pc_id, &rq).await?;
    match payload {
        Payload::Converted(bytes) => channel.send_data_set(pc_id, &bytes).await,
        Payload::File(file, length) => stream_file(channel, pc_id, file, length).await,
    }
}

/// Streams a data set from a file, one PDU at a time: memory stays at one fragment.
async fn stream_file<L: Link>(
    channel: &mut Channel<L>,
    pc_id: u8,
    file: Box<dyn FileReader>,
    length: u64,
) -> Result<(), DimseError> {
    let max = channel.max_fragment();
    let mut file = Some(file);
    let mut remaining = length;
    if remaining == 0 {
        return channel.send_data_fragment(pc_id, Vec::new(), true).await;
    }
    while remaining > 0 {
        let n = (remaining.min(max as u64)) as usize;
        let mut f = file.take().expect("file returned by the last read");
        let (f, read) = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; n];
            let r = f.read_exact(&mut buf).map(|()| buf);
            (f, r)
        })
        .await
        .expect("read task panicked");
        file = Some(f);
        let chunk = read.map_err(|e| {
            DimseError::Protocol(format!("stored file ended early or failed to read: {e}"))
        })?;
        remaining -= n as u64;
        channel
            .send_data_fragment(pc_id, chunk, remaining == 0)
            .await?;
    }
    Ok(())
}

/// Waits for the C-STORE-RSP of a sub-operation on an association Outpost opened.
async fn wait_store_response<L: Link>(
    channel: &mut Channel<L>,
    message_id: u16,
    timeout: Duration,
) -> Result<Status, DimseError> {
    match channel.next(timeout).await? {
        Incoming::Command { command, .. }
            if command.field == CommandField::C_STORE_RSP
                && command.message_id_responded_to == Some(message_id) =>
        {
            Ok(command.status.unwrap_or(Status::PROCESSING_FAILURE))
        }
        Incoming::Command { command, .. } => Err(DimseError::Protocol(format!(
            "expected C-STORE-RSP to message {message_id}, got {}",
            command.field.name()
        ))),
        Incoming::Release => Err(DimseError::Protocol(
            "the destination released mid-transfer".into(),
        )),
        Incoming::Aborted => Err(DimseError::Aborted),
    }
}
