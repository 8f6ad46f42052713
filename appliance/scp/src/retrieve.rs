//! C-MOVE and C-GET SCPs: the requested instances are sent as C-STORE sub-operations, on an
//! association Outpost opens to the destination (C-MOVE) or on the requestor's own (C-GET),
//! each in a transfer syntax the receiver accepted, streamed from disk. The sending itself
//! (contexts, payloads, the C-STORE exchange, the outgoing association) is the `storescu`
//! crate's; this module runs the retrieval around it.

use audit::{Event, EventKind, Outcome as AuditOutcome};
use dataset::tags;
use dataset::{Element, Vr};
use dimse::{Command, CommandField, DimseError, Incoming, Link, Status, StatusKind};
use store::query::{Identifier, Model, Retrievable};
use storescu::{ConnectError, MoveOriginator, NoContext, Peer, SendError};
use tracing::{info, warn};

use crate::find::{Syntax, key_text};
use crate::session::Session;
use crate::statuses::query_status;

/// Sub-operation counters, as C-MOVE/C-GET responses report them. They count in `usize` and
/// saturate at the response's `u16` fields: a study of more than 65,535 instances is real
/// (a long cine, a whole-slide image), and release builds do not check overflow, so a `u16`
/// counter wrapped and told the requestor that nothing had been done.
#[derive(Default)]
struct Progress {
    total: usize,
    completed: usize,
    failed: usize,
    warning: usize,
    failed_uids: Vec<String>,
    /// Instances never attempted because the requestor cancelled; a Cancel response lists
    /// them with the failed ones (PS3.4 C.4.2.1.4), so the requestor knows what to ask again.
    unsent_uids: Vec<String>,
}

/// A count as a response's `u16` field carries it.
fn saturated(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            ..Progress::default()
        }
    }

    fn done(&self) -> usize {
        self.completed + self.failed + self.warning
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

    /// The requestor cancelled: what was not attempted yet stays unsent. Every instance is
    /// recorded once and in order, so the first `done()` items are the ones attempted.
    fn cancel(&mut self, items: &[Retrievable]) {
        self.unsent_uids = items
            .iter()
            .skip(self.done())
            .map(|i| i.sop_instance_uid.clone())
            .collect();
    }

    fn response(&self, request: &Command, field: CommandField, status: Status) -> Command {
        let mut rsp = Command::response_to(request, field, status);
        // Pending responses must carry the Remaining count; a Cancel response may, and with
        // it the requestor can tell a cancel that came too late from one that saved work.
        if status == Status::PENDING || status == Status::CANCEL {
            rsp.remaining = Some(saturated(self.total.saturating_sub(self.done())));
        }
        rsp.completed = Some(saturated(self.completed));
        rsp.failed = Some(saturated(self.failed));
        rsp.warning = Some(saturated(self.warning));
        rsp
    }

    /// The final status (PS3.4 C.4.2.1.5, C.4.3.1.5): cancelled; every sub-operation failed,
    /// which is 0xA702 as dcm4che and Google's adapter answer (0xB000 would tell the
    /// requestor that some arrived); some failed or warned; or all well.
    fn final_status(&self, cancelled: bool) -> Status {
        if cancelled {
            Status::CANCEL
        } else if self.failed > 0 && self.completed == 0 && self.warning == 0 {
            Status::OUT_OF_RESOURCES_SUBOPS
        } else if self.failed > 0 || self.warning > 0 {
            Status::SUBOPS_WITH_FAILURES
        } else {
            Status::SUCCESS
        }
    }

    /// The Failed SOP Instance UID List of the final response, if it has one.
    fn listed_uids(&self) -> Vec<&str> {
        self.failed_uids
            .iter()
            .chain(&self.unsent_uids)
            .map(String::as_str)
            .collect()
    }
}

/// A retrieval refused for a reason known before anything is resolved or recalled.
struct Refusal<'a> {
    destination: &'a str,
    status: Status,
    why: String,
}

/// How often a retrieval waiting for a recall sends a Pending response.
const RECALL_PENDING_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// How often a retrieval waiting for a recall looks for the requestor's C-CANCEL.
const CANCEL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Studies recalled at once for one retrieval. Each recall makes the upstream archive open an
/// association back to us, and the listener keeps only a few slots for upstream archives
/// beyond the general ones (`accept::UPSTREAM_RESERVE`).
const RECALLS_AT_ONCE: usize = 4;

/// How one sub-operation ended.
enum SubOutcome {
    /// The receiver answered with this status.
    Stored(Status),
    /// Nothing could be sent, for this reason.
    NotSent(String),
}

impl<L: Link> Session<L> {
    pub(crate) async fn c_move(&mut self, pc_id: u8, command: Command) -> Result<(), DimseError> {
        self.tally.retrieves += 1;
        let field = CommandField::C_MOVE_RSP;
        let destination = command.move_destination.clone().unwrap_or_default();
        let destination = destination.trim();
        // The destination is checked before anything is resolved: an unknown one must not
        // cost a recall of evicted studies from upstream first.
        let remote = self.services.config.remote(destination).cloned();
        let refusal = remote.is_none().then(|| Refusal {
            destination,
            status: Status::MOVE_DESTINATION_UNKNOWN,
            why: format!("move destination {destination:?} is not in [[dicom.remote]]"),
        });
        let Some((identifier, items)) = self
            .retrieval_request(
                pc_id,
                &command,
                field,
                self.admitted.permissions.move_,
                refusal,
            )
            .await?
        else {
            return Ok(());
        };
        let Some(remote) = remote else {
            // Refused, and answered, by `retrieval_request` before resolving.
            return Ok(());
        };
        if items.is_empty() {
            self.audit_retrieval(&identifier, destination, 0, None);
            let rsp = Progress::default().response(&command, field, Status::SUCCESS);
            return self.channel.send_command(pc_id, &rsp).await;
        }
        let dicom = &self.services.config;
        let options = match storescu::association_options(
            dicom.ae_title.as_str(),
            remote.ae_title.as_str(),
            dicom.max_pdu,
            dicom.association_timeout,
            &items,
        ) {
            Ok(o) => o,
            Err(e) => {
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, e.to_string())
                    .await;
            }
        };
        let address = format!("{}:{}", remote.host, remote.port);
        let (timeout, dimse_timeout) = (dicom.association_timeout, dicom.dimse_timeout);
        let tls = if remote.tls {
            let Some(tls) = dicom.tls.as_ref() else {
                let why = format!(
                    "{} requires DICOM TLS but [dicom.tls] is not configured",
                    remote.ae_title
                );
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, why)
                    .await;
            };
            let config = match crate::tls::client_for(&remote, tls) {
                Ok(c) => c,
                Err(e) => {
                    let why = format!("DICOM TLS to {}: {e}", remote.ae_title);
                    return self
                        .move_unreachable(pc_id, &command, &identifier, destination, why)
                        .await;
                }
            };
            Some(storescu::Tls {
                config: std::sync::Arc::new(config),
                server_name: remote.host.clone(),
            })
        } else {
            None
        };
        let connected =
            storescu::connect(options, &address, tls.as_ref(), timeout, dimse_timeout).await;
        let mut peer = match connected {
            Ok(peer) => peer,
            Err(ConnectError::TimedOut { .. }) => {
                let why = format!(
                    "association with {} at {address} timed out",
                    remote.ae_title
                );
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, why)
                    .await;
            }
            Err(e) => {
                let why = format!("association with {} failed: {e}", remote.ae_title);
                return self
                    .move_unreachable(pc_id, &command, &identifier, destination, why)
                    .await;
            }
        };
        let r = self
            .move_sub_operations(pc_id, &command, &mut peer, &items, destination)
            .await;
        let _ = peer.release().await;
        let (progress, cancelled) = r?;
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
    async fn move_sub_operations(
        &mut self,
        pc_id: u8,
        command: &Command,
        peer: &mut Peer,
        items: &[Retrievable],
        destination: &str,
    ) -> Result<(Progress, bool), DimseError> {
        let field = CommandField::C_MOVE_RSP;
        let mut progress = Progress::new(items.len());
        let originator = MoveOriginator {
            ae_title: self.calling.clone(),
            message_id: command.message_id.unwrap_or(0),
        };
        let limit = self.services.config.transcode_memory_limit;
        for item in items {
            if self.cancel_requested(command.message_id).await? {
                progress.cancel(items);
                return Ok((progress, true));
            }
            let sent = if item.nearline {
                None
            } else {
                Some(
                    peer.send(&self.services.store, item, limit, Some(&originator))
                        .await,
                )
            };
            let lost = sent
                .as_ref()
                .is_some_and(|s| s.as_ref().is_err_and(SendError::association_lost));
            let outcome = match sent {
                None => SubOutcome::NotSent(nearline(item, self.services.recall.is_some())),
                Some(Ok(status)) => SubOutcome::Stored(status),
                Some(Err(SendError::Association { source, .. })) => SubOutcome::NotSent(format!(
                    "the association with the destination failed: {source}"
                )),
                Some(Err(e)) => SubOutcome::NotSent(e.to_string()),
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
            .retrieval_request(pc_id, &command, field, self.admitted.permissions.get, None)
            .await?
        else {
            return Ok(());
        };
        let mut progress = Progress::new(items.len());
        let requestor = self.calling.clone();
        let mut cancelled = false;
        for item in &items {
            if cancelled || self.cancel_requested(command.message_id).await? {
                cancelled = true;
                break;
            }
            let link = self.channel.link();
            let chosen = storescu::choose_context(link.contexts(), item, |pc| {
                link.requestor_is_scp(&pc.abstract_syntax)
            })
            .map_err(|no| match no {
                NoContext::ForClass(why) => format!(
                    "{why} with the SCP role for the requestor (C-GET needs SCP/SCU role selection)"
                ),
                NoContext::ForSyntax(why) => why,
            });
            let outcome = match chosen {
                _ if item.nearline => {
                    SubOutcome::NotSent(nearline(item, self.services.recall.is_some()))
                }
                Err(why) => SubOutcome::NotSent(why),
                Ok((sub_pc, ts)) => match storescu::payload(
                    &self.services.store,
                    item,
                    &ts,
                    self.services.config.transcode_memory_limit,
                )
                .await
                {
                    Err(e) => SubOutcome::NotSent(e.to_string()),
                    Ok(payload) => {
                        let id = self.next_message_id();
                        storescu::send_store(&mut self.channel, sub_pc, id, item, None, payload)
                            .await?;
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
        if cancelled {
            progress.cancel(&items);
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
    /// answered) already; a `refusal` known before resolving is answered once the identifier
    /// is read, so nothing is resolved or recalled for it.
    async fn retrieval_request(
        &mut self,
        pc_id: u8,
        command: &Command,
        field: CommandField,
        permitted: bool,
        refusal: Option<Refusal<'_>>,
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
        if let Some(Refusal {
            destination,
            status,
            why,
        }) = refusal
        {
            warn!(peer = %self.peer, calling = %self.calling, %status, "{} refused: {why}", field.name());
            self.audit_retrieval(&identifier, destination, 0, Some(&why));
            let rsp = Command::response_to(command, field, status).with_comment(why);
            self.channel.send_command(pc_id, &rsp).await?;
            return Ok(None);
        }
        let store = self.services.store.clone();
        let query = identifier.clone();
        let resolved = tokio::task::spawn_blocking(move || store.resolve(model, &query))
            .await
            .expect("resolve task panicked");
        match resolved {
            Ok(items) => {
                // A retrieval is a use: it keeps the study in the cache longer, and a study
                // used this recently is not evicted while its files are being sent.
                let mut studies: Vec<String> = items.iter().map(|i| i.study_uid.clone()).collect();
                studies.sort();
                studies.dedup();
                if let Err(e) = self.services.store.touch(studies).await {
                    warn!(peer = %self.peer, error = %e, "could not record the retrieval for the cache");
                }
                let recalled = self
                    .recall_nearline(pc_id, command, field, model, &identifier, items)
                    .await?;
                Ok(recalled.map(|items| (identifier, items)))
            }
            Err(e) => {
                let status = query_status(&e, true);
                warn!(peer = %self.peer, calling = %self.calling, %status, "{} refused: {e}", field.name());
                let rsp = Command::response_to(command, field, status).with_comment(e.to_string());
                self.channel.send_command(pc_id, &rsp).await?;
                Ok(None)
            }
        }
    }

    /// Brings back the files of instances held only upstream (evicted from the local cache)
    /// through the configured recall, then resolves again; what is still upstream afterwards
    /// fails its sub-operation with the reason. `None` when the requestor cancelled during
    /// the recall (and was answered).
    ///
    /// A recall can take minutes, and requestors give up on a retrieval that says nothing
    /// for their DIMSE timeout (often 10 to 60 s), so while it runs the requestor gets a
    /// Pending response every `RECALL_PENDING_EVERY` and may cancel; studies are recalled
    /// `RECALLS_AT_ONCE` at a time.
    async fn recall_nearline(
        &mut self,
        pc_id: u8,
        command: &Command,
        field: CommandField,
        model: Model,
        identifier: &Identifier,
        items: Vec<Retrievable>,
    ) -> Result<Option<Vec<Retrievable>>, DimseError> {
        let Some(recall) = self.services.recall.clone() else {
            return Ok(Some(items));
        };
        let mut studies: Vec<String> = Vec::new();
        for item in items.iter().filter(|i| i.nearline) {
            if !studies.contains(&item.study_uid) {
                studies.push(item.study_uid.clone());
            }
        }
        if studies.is_empty() {
            return Ok(Some(items));
        }
        let waiting = Progress::new(items.len());
        let mut queued = studies.into_iter();
        // Dropping the set aborts what is still running: a cancelled retrieval stops its
        // recalls too (what already arrived stays stored).
        let mut running = tokio::task::JoinSet::new();
        let mut pending_due = tokio::time::Instant::now() + RECALL_PENDING_EVERY;
        let mut tick = tokio::time::interval(CANCEL_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while running.len() < RECALLS_AT_ONCE {
                let Some(study) = queued.next() else { break };
                info!(peer = %self.peer, study = %study, "recalling a study held only upstream");
                let recall = recall.clone();
                running.spawn(async move {
                    let result = recall.recall(study.clone()).await;
                    (study, result)
                });
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                joined = running.join_next() => {
                    match joined {
                        Some(Ok((study, Err(why)))) => {
                            warn!(peer = %self.peer, study = %study, "recall failed: {why}");
                        }
                        Some(Err(e)) => warn!(peer = %self.peer, error = %e, "a recall task failed"),
                        Some(Ok((_, Ok(())))) | None => {}
                    }
                }
                _ = tick.tick() => {
                    if self.cancel_requested(command.message_id).await? {
                        info!(peer = %self.peer, "{} cancelled while recalling", field.name());
                        drop(running);
                        let mut progress = waiting;
                        progress.cancel(&items);
                        let destination = match field {
                            CommandField::C_MOVE_RSP => command.move_destination.clone().unwrap_or_default(),
                            _ => self.calling.clone(),
                        };
                        self.finish_retrieval(pc_id, command, field, identifier, destination.trim(), progress, true)
                            .await?;
                        return Ok(None);
                    }
                    if tokio::time::Instant::now() >= pending_due {
                        let rsp = waiting.response(command, field, Status::PENDING);
                        self.channel.send_command(pc_id, &rsp).await?;
                        pending_due = tokio::time::Instant::now() + RECALL_PENDING_EVERY;
                    }
                }
            }
        }
        let store = self.services.store.clone();
        let query = identifier.clone();
        Ok(Some(
            match tokio::task::spawn_blocking(move || store.resolve(model, &query)).await {
                Ok(Ok(again)) => again,
                _ => items,
            },
        ))
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
        let sent = (progress.completed + progress.warning) as u64;
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
        let listed = progress.listed_uids();
        if listed.is_empty() {
            return self.channel.send_command(pc_id, &rsp).await;
        }
        // A final response reporting failures, or a cancel, lists them (PS3.4 C.4.2.1.4,
        // C.4.3.1.4).
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
            value: listed.join("\\").into_bytes(),
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

/// Why an instance held only upstream was not sent.
fn nearline(item: &Retrievable, recall: bool) -> String {
    if recall {
        format!(
            "instance {} is held only upstream (evicted from this cache) and the recall did not bring it back",
            item.sop_instance_uid
        )
    } else {
        format!(
            "instance {} is held only upstream (evicted from this cache); set [forward] recall_from to fetch it back",
            item.sop_instance_uid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_saturate_instead_of_wrapping() {
        // The counters were u16 and incremented unchecked: past 65,535 sub-operations a
        // release build wrapped, so a retrieval of a 70,000-frame study reported 4,464
        // completed and, in Pending responses, a nonsense Remaining count.
        let mut request = Command::new(CommandField::C_GET_RQ);
        request.message_id = Some(7);
        let mut progress = Progress::new(140_000);
        for _ in 0..70_000 {
            progress.record("1.2.3", &SubOutcome::Stored(Status::SUCCESS));
        }
        let rsp = progress.response(&request, CommandField::C_GET_RSP, Status::PENDING);
        assert_eq!(rsp.completed, Some(u16::MAX));
        assert_eq!(rsp.remaining, Some(u16::MAX));
        assert_eq!(rsp.failed, Some(0));
        assert_eq!(progress.final_status(false), Status::SUCCESS);
    }
}
