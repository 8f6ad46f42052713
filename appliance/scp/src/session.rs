//! One association from acceptance to release: the DIMSE loop, C-ECHO, C-STORE, dispatch to
//! the query/retrieve services, and the one log line and audit events it leaves behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use audit::{Event, EventKind, Outcome as AuditOutcome};
use dicom_ul::pdu::AbortRQServiceProviderReason;
use dimse::{Channel, Command, CommandField, DimseError, Incoming, Link, Status};
use store::{IngestRequest, Outcome};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Services;
use crate::accept::{PortKind, log_accepted};
use crate::handshake::Accepted;
use crate::policy::Admitted;
use crate::statuses::store_status;

/// What an association did, for its log line and audit events.
#[derive(Default)]
pub(crate) struct Tally {
    pub stored: u64,
    pub duplicates: u64,
    pub refused: u64,
    pub bytes: u64,
    /// Instances stored per (patient ID, study UID).
    pub studies: BTreeMap<(String, String), u64>,
    pub echoes: u64,
    pub finds: u64,
    pub retrieves: u64,
    pub sent: u64,
}

pub(crate) struct Session<L: Link> {
    pub channel: Channel<L>,
    pub services: Arc<Services>,
    pub peer: SocketAddr,
    pub calling: String,
    pub called: String,
    pub admitted: Admitted,
    /// Cancelled when the shutdown grace period ends: abort now.
    pub force: CancellationToken,
    pub tally: Tally,
    /// Message IDs of the requests this session sends (C-GET sub-operations).
    next_id: u16,
}

/// Why a session ended.
enum End {
    Released,
    PeerAborted,
    ShutDown,
    Failed(DimseError),
}

impl<S> Session<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + dimse::channel::Socket,
{
    /// Runs an accepted association to its end. The permit holds its place in the
    /// association limit until then.
    pub async fn start(
        assoc: Accepted<S>,
        services: Arc<Services>,
        peer: SocketAddr,
        admitted: Admitted,
        port: PortKind,
        force: CancellationToken,
        permit: OwnedSemaphorePermit,
    ) {
        let calling = assoc.peer_ae_title().trim().to_string();
        let called = assoc.called_ae_title().trim().to_string();
        let accepted = assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
            .count();
        log_accepted(peer, &calling, port, accepted);
        services.audit.record(
            Event::new(EventKind::AssociationAccepted, AuditOutcome::Success)
                .association(&calling, &called, peer)
                .detail(format!(
                    "{accepted} presentation contexts accepted on the {port:?} port"
                )),
        );
        let dimse_timeout = services.config.dimse_timeout;
        let mut session = Session {
            channel: Channel::new(assoc, dimse_timeout),
            services,
            peer,
            calling,
            called,
            admitted,
            force,
            tally: Tally::default(),
            next_id: 1,
        };
        session.run().await;
        drop(permit);
    }
}

impl<L: Link> Session<L> {
    async fn run(&mut self) {
        let started = Instant::now();
        let idle = self.services.config.idle_timeout;
        let end = loop {
            let next = tokio::select! {
                biased;
                _ = self.force.cancelled() => break End::ShutDown,
                n = self.channel.next(idle) => n,
            };
            match next {
                Ok(Incoming::Command { pc_id, command }) => {
                    if let Err(e) = self.dispatch(pc_id, command).await {
                        break match e {
                            DimseError::Aborted => End::PeerAborted,
                            e => End::Failed(e),
                        };
                    }
                }
                Ok(Incoming::Release) => {
                    let _ = self.channel.release_reply().await;
                    break End::Released;
                }
                Ok(Incoming::Aborted) => break End::PeerAborted,
                Err(DimseError::Aborted) => break End::PeerAborted,
                Err(e) => break End::Failed(e),
            }
        };
        let how = match &end {
            End::Released => "released".to_string(),
            End::PeerAborted => "aborted by the caller".to_string(),
            End::ShutDown => {
                self.channel
                    .abort(AbortRQServiceProviderReason::ReasonNotSpecified)
                    .await;
                "aborted: the service is stopping".to_string()
            }
            End::Failed(e) => {
                if e.calls_for_abort() {
                    let reason = match e {
                        DimseError::Protocol(_) | DimseError::Command(_) => {
                            AbortRQServiceProviderReason::UnexpectedPdu
                        }
                        _ => AbortRQServiceProviderReason::ReasonNotSpecified,
                    };
                    self.channel.abort(reason).await;
                    format!("aborted: {e}")
                } else {
                    format!("lost: {e}")
                }
            }
        };
        let t = &self.tally;
        let line = format!(
            "association {}@{} ended ({how}) after {:.2} s: {} stored, {} duplicates, {} refused, {} queries, {} retrievals ({} instances sent), {} echoes",
            self.calling,
            self.peer,
            started.elapsed().as_secs_f64(),
            t.stored,
            t.duplicates,
            t.refused,
            t.finds,
            t.retrieves,
            t.sent,
            t.echoes
        );
        if matches!(end, End::Released) {
            info!("{line}");
        } else {
            warn!("{line}");
        }
        for ((patient, study), n) in &t.studies {
            self.services.audit.record(
                Event::new(EventKind::InstancesStored, AuditOutcome::Success)
                    .association(&self.calling, &self.called, self.peer)
                    .patient(patient)
                    .study(study)
                    .instances(*n),
            );
        }
        if t.refused > 0 {
            self.services.audit.record(
                Event::new(EventKind::InstancesStored, AuditOutcome::MinorFailure)
                    .association(&self.calling, &self.called, self.peer)
                    .instances(t.refused)
                    .detail("instances refused; see the service log for each reason"),
            );
        }
    }

    pub(crate) fn next_message_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    async fn dispatch(&mut self, pc_id: u8, command: Command) -> Result<(), DimseError> {
        debug!(peer = %self.peer, command = command.field.name(), id = ?command.message_id, "request");
        match command.field {
            CommandField::C_ECHO_RQ => {
                self.tally.echoes += 1;
                if command.has_data_set {
                    self.drain(pc_id).await?;
                }
                let rsp = Command::response_to(&command, CommandField::C_ECHO_RSP, Status::SUCCESS);
                self.channel.send_command(pc_id, &rsp).await
            }
            CommandField::C_STORE_RQ => self.c_store(pc_id, command).await,
            CommandField::C_FIND_RQ => self.c_find(pc_id, command).await,
            CommandField::C_MOVE_RQ => self.c_move(pc_id, command).await,
            CommandField::C_GET_RQ => self.c_get(pc_id, command).await,
            CommandField::N_EVENT_REPORT_RQ => self.n_event_report(pc_id, command).await,
            // A cancel for an operation that already ended needs no answer (PS3.7 9.3.2.3).
            CommandField::C_CANCEL_RQ => Ok(()),
            field if field.is_response() => Err(DimseError::Protocol(format!(
                "unexpected {} outside an operation that asked for it",
                field.name()
            ))),
            field => {
                warn!(peer = %self.peer, command = field.name(), "unsupported DIMSE operation; answering 0x0211");
                if command.has_data_set {
                    self.drain(pc_id).await?;
                }
                let rsp = Command::response_to(
                    &command,
                    CommandField(field.0 | 0x8000),
                    Status::UNRECOGNIZED_OPERATION,
                )
                .with_comment(format!("{} is not supported by this archive", field.name()));
                self.channel.send_command(pc_id, &rsp).await
            }
        }
    }

    /// Reads and discards the rest of a data set.
    pub(crate) async fn drain(&mut self, pc_id: u8) -> Result<(), DimseError> {
        loop {
            let (_, last) = self.next_data(pc_id).await?;
            if last {
                return Ok(());
            }
        }
    }

    /// The next data fragment, unless the service is past its shutdown grace period.
    async fn next_data(&mut self, pc_id: u8) -> Result<(Vec<u8>, bool), DimseError> {
        tokio::select! {
            biased;
            _ = self.force.cancelled() => Err(DimseError::Protocol("the service is stopping".into())),
            d = self.channel.next_data(pc_id) => d,
        }
    }

    async fn c_store(&mut self, pc_id: u8, command: Command) -> Result<(), DimseError> {
        let context = self.channel.context(pc_id).cloned();
        let sop_class = command.sop_class().to_string();
        let precheck = if !command.has_data_set {
            Some((
                Status::UNABLE_TO_PROCESS,
                "C-STORE-RQ without a data set".to_string(),
            ))
        } else if !self.admitted.permissions.store {
            Some((
                Status::NOT_AUTHORIZED,
                format!("{} may not store here", self.calling),
            ))
        } else if context
            .as_ref()
            .is_none_or(|pc| pc.abstract_syntax.trim_end_matches('\0') != sop_class)
        {
            Some((
                Status::SOP_CLASS_NOT_SUPPORTED,
                format!("SOP class {sop_class} was not negotiated on this presentation context"),
            ))
        } else if !crate::negotiate::is_storage_class(
            &sop_class,
            self.services.config.accept_unknown_sop_classes,
        ) {
            // A context of another service (Verification, a Query/Retrieve model) can carry a
            // C-STORE; it still carries nothing to store.
            Some((
                Status::SOP_CLASS_NOT_SUPPORTED,
                format!("SOP class {sop_class} is not a storage SOP class"),
            ))
        } else {
            None
        };
        let transfer_syntax = context.map(|pc| pc.transfer_syntax).unwrap_or_default();
        let result = match precheck {
            Some(refusal) => {
                if command.has_data_set {
                    self.drain(pc_id).await?;
                }
                Err(refusal)
            }
            None => {
                self.receive_instance(pc_id, &command, transfer_syntax)
                    .await?
            }
        };
        let rsp = match result {
            Ok(()) => Command::response_to(&command, CommandField::C_STORE_RSP, Status::SUCCESS),
            Err((status, comment)) => {
                self.tally.refused += 1;
                warn!(
                    peer = %self.peer,
                    calling = %self.calling,
                    sop = command.affected_sop_instance_uid.as_deref().unwrap_or(""),
                    status = %status,
                    "instance refused: {comment}"
                );
                Command::response_to(&command, CommandField::C_STORE_RSP, status)
                    .with_comment(comment)
            }
        };
        self.channel.send_command(pc_id, &rsp).await
    }

    /// Streams one instance into the archive. The outer error ends the association; the
    /// inner one refuses the instance.
    async fn receive_instance(
        &mut self,
        pc_id: u8,
        command: &Command,
        transfer_syntax: String,
    ) -> Result<Result<(), (Status, String)>, DimseError> {
        let request = IngestRequest {
            sop_class_uid: command.sop_class().to_string(),
            sop_instance_uid: command
                .affected_sop_instance_uid
                .clone()
                .unwrap_or_default(),
            transfer_syntax,
            source_ae: self.calling.clone(),
        };
        let mut ingest = match self.services.store.begin(request).await {
            Ok(i) => i,
            Err(e) => {
                self.drain(pc_id).await?;
                return Ok(Err((store_status(&e), e.to_string())));
            }
        };
        loop {
            // Dropping the ingest on an error removes its temporary file.
            let (bytes, last) = self.next_data(pc_id).await?;
            ingest.write(bytes).await;
            if last {
                break;
            }
        }
        match ingest.finish().await {
            Ok(receipt) => {
                match receipt.outcome {
                    Outcome::Stored | Outcome::Overwritten => self.tally.stored += 1,
                    Outcome::Duplicate => self.tally.duplicates += 1,
                    Outcome::Quarantined { seq } => {
                        // Answered success (the data is safe), but a person must decide where
                        // it belongs: a warning in the trail now, not a line in a tally.
                        self.services.audit.record(
                            Event::new(EventKind::InstancesStored, AuditOutcome::MinorFailure)
                                .association(&self.calling, &self.called, self.peer)
                                .patient(&receipt.patient_id)
                                .study(&receipt.study_uid)
                                .instances(1)
                                .detail(format!(
                                    "quarantined as #{seq}: its patient differs from the study's; \
                                     not queryable, retrievable or forwarded until resolved"
                                )),
                        );
                        return Ok(Ok(()));
                    }
                }
                self.tally.bytes += receipt.bytes;
                *self
                    .tally
                    .studies
                    .entry((receipt.patient_id, receipt.study_uid))
                    .or_default() += 1;
                Ok(Ok(()))
            }
            Err(e) => Ok(Err((store_status(&e), e.to_string()))),
        }
    }
}
