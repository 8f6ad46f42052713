//! C-FIND SCP (Patient Root and Study Root, hierarchical): pending responses one match at a
//! time, with C-CANCEL honoured between them.

use std::io::Write;

use audit::{Event, EventKind, Outcome as AuditOutcome};
use dataset::encode::{trim_padding, write_element};
use dataset::ts::syntax_info;
use dataset::{Element, Encoding, Tag, Vr, tags};
use dimse::{Command, CommandField, DimseError, Incoming, Link, Status};
use store::query::{Found, Identifier, Model};
use tracing::{info, warn};

use crate::session::Session;
use crate::statuses::query_status;

/// Largest identifier accepted; real ones are a few hundred bytes.
const MAX_IDENTIFIER: usize = 1024 * 1024;

/// How an identifier is encoded on a presentation context.
#[derive(Clone, Copy)]
pub(crate) struct Syntax {
    pub encoding: Encoding,
    pub deflated: bool,
}

impl Syntax {
    pub fn of(ts: &str) -> Option<Syntax> {
        syntax_info(ts).map(|i| Syntax {
            encoding: i.encoding,
            deflated: i.deflated,
        })
    }

    pub fn encode(self, elements: &[Element]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in elements {
            if e.vr == Vr::SQ && !e.value.is_empty() && self.encoding != Encoding::EXPLICIT_LE {
                // A stored sequence comes as Explicit VR Little Endian items; one that cannot
                // be put in this syntax is answered empty rather than mislabelled.
                let items = dataset::sequence::reencode_items(
                    &e.value,
                    Encoding::EXPLICIT_LE,
                    self.encoding,
                )
                .unwrap_or_default();
                write_element(&mut out, self.encoding, e.tag, e.vr, &items);
                continue;
            }
            write_element(&mut out, self.encoding, e.tag, e.vr, &e.value);
        }
        if self.deflated {
            let mut z =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&out).expect("writing to memory");
            out = z.finish().expect("writing to memory");
        }
        out
    }
}

pub(crate) fn model_of(abstract_syntax: &str) -> Option<Model> {
    match abstract_syntax.trim_end_matches('\0') {
        dimse::PATIENT_ROOT_FIND | dimse::PATIENT_ROOT_MOVE | dimse::PATIENT_ROOT_GET => {
            Some(Model::PatientRoot)
        }
        dimse::STUDY_ROOT_FIND | dimse::STUDY_ROOT_MOVE | dimse::STUDY_ROOT_GET => {
            Some(Model::StudyRoot)
        }
        _ => None,
    }
}

impl<L: Link> Session<L> {
    /// Reads and parses the identifier of a query or retrieve request. The outer error ends
    /// the association; the inner one is the failure status to answer with.
    pub(crate) async fn read_identifier(
        &mut self,
        pc_id: u8,
        command: &Command,
    ) -> Result<Result<(Model, Identifier, Syntax), (Status, String)>, DimseError> {
        let context = self.channel.context(pc_id).cloned();
        let Some((model, syntax)) = context.as_ref().and_then(|pc| {
            Some((
                model_of(&pc.abstract_syntax)?,
                Syntax::of(&pc.transfer_syntax)?,
            ))
        }) else {
            if command.has_data_set {
                self.drain(pc_id).await?;
            }
            return Ok(Err((
                Status::SOP_CLASS_NOT_SUPPORTED,
                "request on a presentation context of another SOP class".into(),
            )));
        };
        if !command.has_data_set {
            return Ok(Err((
                Status::DOES_NOT_MATCH_SOP_CLASS,
                "request without an identifier".into(),
            )));
        }
        let bytes = match self.channel.read_data_set(pc_id, MAX_IDENTIFIER).await? {
            Ok(b) => b,
            Err(size) => {
                return Ok(Err((
                    Status::UNABLE_TO_PROCESS,
                    format!("identifier of {size} bytes exceeds {MAX_IDENTIFIER}"),
                )));
            }
        };
        let ts = context.map(|pc| pc.transfer_syntax).unwrap_or_default();
        let info = syntax_info(&ts).expect("negotiated syntaxes are known");
        match store::query::read_identifier(info, model, &bytes) {
            Ok(id) => Ok(Ok((model, id, syntax))),
            Err(e) => Ok(Err((query_status(&e, false), e.to_string()))),
        }
    }

    pub(crate) async fn c_find(&mut self, pc_id: u8, command: Command) -> Result<(), DimseError> {
        self.tally.finds += 1;
        let refuse = |status: Status, comment: String| {
            Command::response_to(&command, CommandField::C_FIND_RSP, status).with_comment(comment)
        };
        if !self.admitted.permissions.find {
            if command.has_data_set {
                self.drain(pc_id).await?;
            }
            let rsp = refuse(
                Status::NOT_AUTHORIZED,
                format!("{} may not query here", self.calling),
            );
            return self.channel.send_command(pc_id, &rsp).await;
        }
        let (model, identifier, syntax) = match self.read_identifier(pc_id, &command).await? {
            Ok(parsed) => parsed,
            Err((status, comment)) => {
                warn!(peer = %self.peer, calling = %self.calling, %status, "C-FIND refused: {comment}");
                return self
                    .channel
                    .send_command(pc_id, &refuse(status, comment))
                    .await;
            }
        };
        let cap = self.services.config.max_find_results;
        let store = self.services.store.clone();
        let query = identifier.clone();
        let found = tokio::task::spawn_blocking(move || store.find(model, &query, cap))
            .await
            .expect("query task panicked");
        let found = match found {
            Ok(f) => f,
            Err(e) => {
                let status = query_status(&e, false);
                warn!(
                    peer = %self.peer,
                    calling = %self.calling,
                    level = identifier.level.as_str(),
                    %status,
                    "C-FIND refused: {e}"
                );
                self.audit_query(&identifier, None, Some(e.to_string()));
                return self
                    .channel
                    .send_command(pc_id, &refuse(status, e.to_string()))
                    .await;
            }
        };
        let matches = found.len();
        // Keys the archive cannot match were ignored for matching: say so on every match.
        let unmatched = identifier.unmatched_keys();
        let pending = if unmatched.is_empty() {
            Status::PENDING
        } else {
            Status::PENDING_WARNING
        };
        let mut cancelled = false;
        for f in found {
            if self.cancel_requested(command.message_id).await? {
                cancelled = true;
                break;
            }
            let elements = self.response_elements(&identifier, f);
            let mut rsp = Command::response_to(&command, CommandField::C_FIND_RSP, pending);
            rsp.has_data_set = true;
            self.channel.send_command(pc_id, &rsp).await?;
            self.channel
                .send_data_set(pc_id, &syntax.encode(&elements))
                .await?;
        }
        let status = if cancelled {
            Status::CANCEL
        } else {
            Status::SUCCESS
        };
        info!(
            peer = %self.peer,
            calling = %self.calling,
            level = identifier.level.as_str(),
            matches,
            cancelled,
            not_matched_on = %unmatched.iter().map(Tag::to_string).collect::<Vec<_>>().join(" "),
            "C-FIND answered"
        );
        self.audit_query(&identifier, Some(matches), None);
        let rsp = Command::response_to(&command, CommandField::C_FIND_RSP, status);
        self.channel.send_command(pc_id, &rsp).await
    }

    /// Whether a C-CANCEL-RQ for `message_id` has arrived; anything else arriving now is a
    /// protocol violation (one operation at a time is negotiated).
    pub(crate) async fn cancel_requested(
        &mut self,
        message_id: Option<u16>,
    ) -> Result<bool, DimseError> {
        match self.channel.poll_next().await? {
            None => Ok(false),
            Some(Incoming::Command { command, .. })
                if command.field == CommandField::C_CANCEL_RQ
                    && command.message_id_responded_to == message_id =>
            {
                Ok(true)
            }
            Some(Incoming::Aborted) => Err(DimseError::Aborted),
            Some(other) => Err(DimseError::Protocol(format!(
                "{other:?} arrived while an operation was running (only one at a time was negotiated)"
            ))),
        }
    }

    /// The response identifier: the keys asked for, in tag order, with the level, the
    /// character set and the values only this archive knows (its AE title, availability).
    fn response_elements(&self, identifier: &Identifier, found: Found) -> Vec<Element> {
        let mut elements = found.elements;
        for e in &mut elements {
            if !e.value.is_empty() {
                continue;
            }
            match e.tag {
                tags::RETRIEVE_AE_TITLE => {
                    e.value = self.services.config.ae_title.as_str().as_bytes().to_vec();
                    e.vr = Vr::AE;
                }
                tags::INSTANCE_AVAILABILITY => {
                    e.value = b"ONLINE".to_vec();
                    e.vr = Vr::CS;
                }
                _ => {}
            }
        }
        elements.retain(|e| {
            e.tag != tags::QUERY_RETRIEVE_LEVEL && e.tag != tags::SPECIFIC_CHARACTER_SET
        });
        elements.push(Element {
            tag: tags::QUERY_RETRIEVE_LEVEL,
            vr: Vr::CS,
            value: identifier.level.as_str().as_bytes().to_vec(),
        });
        if !trim_padding(&found.charset).is_empty() {
            elements.push(Element {
                tag: tags::SPECIFIC_CHARACTER_SET,
                vr: Vr::CS,
                value: found.charset,
            });
        }
        elements.sort_by_key(|e| e.tag);
        elements.dedup_by_key(|e| e.tag);
        elements
    }

    fn audit_query(
        &self,
        identifier: &Identifier,
        matches: Option<usize>,
        refusal: Option<String>,
    ) {
        let mut event = Event::new(
            EventKind::Query,
            if refusal.is_some() {
                AuditOutcome::MinorFailure
            } else {
                AuditOutcome::Success
            },
        )
        .association(&self.calling, &self.called, self.peer);
        if let Some(id) = key_text(identifier, tags::PATIENT_ID) {
            event = event.patient(&id);
        }
        if let Some(uid) = key_text(identifier, tags::STUDY_INSTANCE_UID) {
            event = event.study(&uid);
        }
        if let Some(n) = matches {
            event = event.instances(n as u64);
        }
        let level = identifier.level.as_str();
        let keys: Vec<String> = identifier
            .keys
            .iter()
            .filter(|k| !trim_padding(&k.value).is_empty())
            .map(|k| k.tag.to_string())
            .collect();
        event = event.detail(match refusal {
            Some(why) => format!("{level} query refused: {why}"),
            None => format!(
                "{level} query matching on {}",
                if keys.is_empty() {
                    "nothing (universal)".into()
                } else {
                    keys.join(" ")
                }
            ),
        });
        self.services.audit.record(event);
    }
}

/// The printable value of a key, if given.
pub(crate) fn key_text(identifier: &Identifier, tag: Tag) -> Option<String> {
    identifier
        .keys
        .iter()
        .find(|k| k.tag == tag)
        .map(|k| String::from_utf8_lossy(trim_padding(&k.value)).into_owned())
        .filter(|v| !v.is_empty())
}
