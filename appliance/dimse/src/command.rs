//! Command sets (PS3.7 9.3, 10.3): the group 0000 elements that head every DIMSE message,
//! always encoded in Implicit VR Little Endian.

use dataset::encode::{text_values, trim_padding, write_element};
use dataset::{Encoding, Tag, Vr};

use crate::status::Status;

/// Command Field (0000,0100) values Outpost sends or understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandField(pub u16);

impl CommandField {
    pub const C_STORE_RQ: CommandField = CommandField(0x0001);
    pub const C_STORE_RSP: CommandField = CommandField(0x8001);
    pub const C_GET_RQ: CommandField = CommandField(0x0010);
    pub const C_GET_RSP: CommandField = CommandField(0x8010);
    pub const C_FIND_RQ: CommandField = CommandField(0x0020);
    pub const C_FIND_RSP: CommandField = CommandField(0x8020);
    pub const C_MOVE_RQ: CommandField = CommandField(0x0021);
    pub const C_MOVE_RSP: CommandField = CommandField(0x8021);
    pub const C_ECHO_RQ: CommandField = CommandField(0x0030);
    pub const C_ECHO_RSP: CommandField = CommandField(0x8030);
    pub const C_CANCEL_RQ: CommandField = CommandField(0x0FFF);
    pub const N_EVENT_REPORT_RQ: CommandField = CommandField(0x0100);
    pub const N_EVENT_REPORT_RSP: CommandField = CommandField(0x8100);
    pub const N_ACTION_RQ: CommandField = CommandField(0x0130);
    pub const N_ACTION_RSP: CommandField = CommandField(0x8130);

    pub fn is_response(self) -> bool {
        self.0 & 0x8000 != 0
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            0x0001 => "C-STORE-RQ",
            0x8001 => "C-STORE-RSP",
            0x0010 => "C-GET-RQ",
            0x8010 => "C-GET-RSP",
            0x0020 => "C-FIND-RQ",
            0x8020 => "C-FIND-RSP",
            0x0021 => "C-MOVE-RQ",
            0x8021 => "C-MOVE-RSP",
            0x0030 => "C-ECHO-RQ",
            0x8030 => "C-ECHO-RSP",
            0x0FFF => "C-CANCEL-RQ",
            0x0100 => "N-EVENT-REPORT-RQ",
            0x8100 => "N-EVENT-REPORT-RSP",
            0x8130 => "N-ACTION-RSP",
            0x0110 => "N-GET-RQ",
            0x0120 => "N-SET-RQ",
            0x0130 => "N-ACTION-RQ",
            0x0140 => "N-CREATE-RQ",
            0x0150 => "N-DELETE-RQ",
            _ => "unknown command",
        }
    }
}

/// Command Data Set Type (0000,0800) value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// Priority (0000,0700).
pub const PRIORITY_MEDIUM: u16 = 0x0000;

/// A decoded command set. Fields a message type does not use stay `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub field: CommandField,
    pub message_id: Option<u16>,
    pub message_id_responded_to: Option<u16>,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub priority: Option<u16>,
    /// Whether a data set follows this command.
    pub has_data_set: bool,
    pub status: Option<Status>,
    pub error_comment: Option<String>,
    pub offending_elements: Vec<Tag>,
    pub move_destination: Option<String>,
    pub remaining: Option<u16>,
    pub completed: Option<u16>,
    pub failed: Option<u16>,
    pub warning: Option<u16>,
    pub move_originator_ae: Option<String>,
    pub move_originator_message_id: Option<u16>,
    /// Requested SOP Class UID (0000,0003), N-ACTION and other N-service requests.
    pub requested_sop_class_uid: Option<String>,
    /// Requested SOP Instance UID (0000,1001).
    pub requested_sop_instance_uid: Option<String>,
    /// Event Type ID (0000,1002), N-EVENT-REPORT.
    pub event_type_id: Option<u16>,
    /// Action Type ID (0000,1008), N-ACTION.
    pub action_type_id: Option<u16>,
}

impl Command {
    pub fn new(field: CommandField) -> Command {
        Command {
            field,
            message_id: None,
            message_id_responded_to: None,
            affected_sop_class_uid: None,
            affected_sop_instance_uid: None,
            priority: None,
            has_data_set: false,
            status: None,
            error_comment: None,
            offending_elements: Vec::new(),
            move_destination: None,
            remaining: None,
            completed: None,
            failed: None,
            warning: None,
            move_originator_ae: None,
            move_originator_message_id: None,
            requested_sop_class_uid: None,
            requested_sop_instance_uid: None,
            event_type_id: None,
            action_type_id: None,
        }
    }

    /// A response to `request` with the given command field and status. The SOP class and
    /// instance are echoed back as PS3.7 asks for every C-service response.
    pub fn response_to(request: &Command, field: CommandField, status: Status) -> Command {
        let mut rsp = Command::new(field);
        rsp.message_id_responded_to = request.message_id;
        rsp.affected_sop_class_uid = request.affected_sop_class_uid.clone();
        if field == CommandField::C_STORE_RSP {
            rsp.affected_sop_instance_uid = request.affected_sop_instance_uid.clone();
        }
        rsp.status = Some(status);
        rsp
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Command {
        let mut c: String = comment.into();
        // Error Comment is LO: at most 64 characters.
        if c.len() > 64 {
            let mut end = 64;
            while !c.is_char_boundary(end) {
                end -= 1;
            }
            c.truncate(end);
        }
        self.error_comment = Some(c);
        self
    }

    /// The SOP class a request is about, trimmed of padding.
    pub fn sop_class(&self) -> &str {
        self.affected_sop_class_uid.as_deref().unwrap_or("")
    }

    pub fn encode(&self) -> Vec<u8> {
        let enc = Encoding::IMPLICIT_LE;
        let mut body = Vec::with_capacity(256);
        let u16v = |v: u16| v.to_le_bytes();
        if let Some(uid) = &self.affected_sop_class_uid {
            write_element(&mut body, enc, tag(0x0002), Vr::UI, uid.as_bytes());
        }
        if let Some(uid) = &self.requested_sop_class_uid {
            write_element(&mut body, enc, tag(0x0003), Vr::UI, uid.as_bytes());
        }
        write_element(&mut body, enc, tag(0x0100), Vr::US, &u16v(self.field.0));
        if let Some(id) = self.message_id {
            write_element(&mut body, enc, tag(0x0110), Vr::US, &u16v(id));
        }
        if let Some(id) = self.message_id_responded_to {
            write_element(&mut body, enc, tag(0x0120), Vr::US, &u16v(id));
        }
        if let Some(dest) = &self.move_destination {
            write_element(&mut body, enc, tag(0x0600), Vr::AE, dest.as_bytes());
        }
        if let Some(p) = self.priority {
            write_element(&mut body, enc, tag(0x0700), Vr::US, &u16v(p));
        }
        let data_set_type = if self.has_data_set {
            0x0000
        } else {
            NO_DATA_SET
        };
        write_element(&mut body, enc, tag(0x0800), Vr::US, &u16v(data_set_type));
        if let Some(status) = self.status {
            write_element(&mut body, enc, tag(0x0900), Vr::US, &u16v(status.0));
        }
        if !self.offending_elements.is_empty() {
            let v: Vec<u8> = self
                .offending_elements
                .iter()
                .flat_map(|t| {
                    let mut b = t.group().to_le_bytes().to_vec();
                    b.extend_from_slice(&t.element().to_le_bytes());
                    b
                })
                .collect();
            write_element(&mut body, enc, tag(0x0901), Vr::AT, &v);
        }
        if let Some(c) = &self.error_comment {
            write_element(&mut body, enc, tag(0x0902), Vr::LO, c.as_bytes());
        }
        if let Some(uid) = &self.affected_sop_instance_uid {
            write_element(&mut body, enc, tag(0x1000), Vr::UI, uid.as_bytes());
        }
        if let Some(uid) = &self.requested_sop_instance_uid {
            write_element(&mut body, enc, tag(0x1001), Vr::UI, uid.as_bytes());
        }
        if let Some(v) = self.event_type_id {
            write_element(&mut body, enc, tag(0x1002), Vr::US, &u16v(v));
        }
        if let Some(v) = self.action_type_id {
            write_element(&mut body, enc, tag(0x1008), Vr::US, &u16v(v));
        }
        for (t, v) in [
            (0x1020, self.remaining),
            (0x1021, self.completed),
            (0x1022, self.failed),
            (0x1023, self.warning),
        ] {
            if let Some(v) = v {
                write_element(&mut body, enc, tag(t), Vr::US, &u16v(v));
            }
        }
        if let Some(ae) = &self.move_originator_ae {
            write_element(&mut body, enc, tag(0x1030), Vr::AE, ae.as_bytes());
        }
        if let Some(id) = self.move_originator_message_id {
            write_element(&mut body, enc, tag(0x1031), Vr::US, &u16v(id));
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        write_element(
            &mut out,
            enc,
            tag(0x0000),
            Vr::UL,
            &(body.len() as u32).to_le_bytes(),
        );
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
        let mut field = None;
        let mut c = Command::new(CommandField(0));
        let mut data_set_type = None;
        let mut pos = 0usize;
        let mut group_end = None;
        while pos < bytes.len() {
            if bytes.len() - pos < 8 {
                return Err(CommandError::Truncated { offset: pos });
            }
            let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
            let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
            let len = u32::from_le_bytes([
                bytes[pos + 4],
                bytes[pos + 5],
                bytes[pos + 6],
                bytes[pos + 7],
            ]) as usize;
            let t = Tag::new(group, element);
            if group != 0x0000 {
                return Err(CommandError::ForeignElement(t));
            }
            pos += 8;
            if len > bytes.len() - pos {
                return Err(CommandError::ValueOverrun {
                    tag: t,
                    length: len,
                });
            }
            let value = &bytes[pos..pos + len];
            pos += len;
            let us = || -> Result<u16, CommandError> {
                value
                    .first_chunk::<2>()
                    .map(|b| u16::from_le_bytes(*b))
                    .ok_or(CommandError::BadValue(t))
            };
            let text = || String::from_utf8_lossy(trim_padding(value)).into_owned();
            match element {
                0x0000 => {
                    let v = value
                        .first_chunk::<4>()
                        .map(|b| u32::from_le_bytes(*b))
                        .ok_or(CommandError::BadValue(t))?;
                    group_end = Some((pos, v as usize));
                }
                0x0002 => c.affected_sop_class_uid = Some(text()),
                // Requested SOP Class UID (N-services); also kept where the class lives, for
                // code that only asks which class a request is about.
                0x0003 => {
                    c.requested_sop_class_uid = Some(text());
                    if c.affected_sop_class_uid.is_none() {
                        c.affected_sop_class_uid = Some(text());
                    }
                }
                0x0100 => field = Some(CommandField(us()?)),
                0x0110 => c.message_id = Some(us()?),
                0x0120 => c.message_id_responded_to = Some(us()?),
                0x0600 => c.move_destination = Some(text()),
                0x0700 => c.priority = Some(us()?),
                0x0800 => data_set_type = Some(us()?),
                0x0900 => c.status = Some(Status(us()?)),
                0x0901 => {
                    c.offending_elements = value
                        .chunks_exact(4)
                        .map(|b| {
                            Tag::new(
                                u16::from_le_bytes([b[0], b[1]]),
                                u16::from_le_bytes([b[2], b[3]]),
                            )
                        })
                        .collect()
                }
                0x0902 => c.error_comment = Some(text()),
                0x1000 => c.affected_sop_instance_uid = Some(text()),
                0x1001 => c.requested_sop_instance_uid = Some(text()),
                0x1002 => c.event_type_id = Some(us()?),
                0x1008 => c.action_type_id = Some(us()?),
                0x1020 => c.remaining = Some(us()?),
                0x1021 => c.completed = Some(us()?),
                0x1022 => c.failed = Some(us()?),
                0x1023 => c.warning = Some(us()?),
                0x1030 => c.move_originator_ae = Some(text()),
                0x1031 => c.move_originator_message_id = Some(us()?),
                // Other command elements (retired ones, N-service ones) are not ours to read.
                _ => {}
            }
        }
        if let Some((start, len)) = group_end
            && start + len != bytes.len()
        {
            return Err(CommandError::GroupLength {
                declared: len,
                actual: bytes.len() - start,
            });
        }
        c.field = field.ok_or(CommandError::Missing("CommandField (0000,0100)"))?;
        c.has_data_set = data_set_type
            .ok_or(CommandError::Missing("CommandDataSetType (0000,0800)"))?
            != NO_DATA_SET;
        Ok(c)
    }
}

/// Values of multi-valued text (such as a list of UIDs) in a command element.
pub fn split_values(value: &str) -> Vec<String> {
    text_values(value.as_bytes())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

const fn tag(element: u16) -> Tag {
    Tag::new(0x0000, element)
}

/// Why bytes are not a valid command set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command set is truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("command set element {tag} claims {length} bytes, more than remain")]
    ValueOverrun { tag: Tag, length: usize },
    #[error("command set contains {0}, which is not a command element")]
    ForeignElement(Tag),
    #[error("command set element {0} has a malformed value")]
    BadValue(Tag),
    #[error("command group length says {declared} bytes but {actual} follow")]
    GroupLength { declared: usize, actual: usize },
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut c = Command::new(CommandField::C_MOVE_RSP);
        c.message_id_responded_to = Some(7);
        c.affected_sop_class_uid = Some("1.2.840.10008.5.1.4.1.2.2.2".into());
        c.status = Some(Status::PENDING);
        c.remaining = Some(3);
        c.completed = Some(1);
        c.failed = Some(0);
        c.warning = Some(0);
        c.offending_elements = vec![Tag::new(0x0010, 0x0020)];
        let c = c.with_comment("x".repeat(100));
        let d = Command::decode(&c.encode()).unwrap();
        assert_eq!(d.error_comment.as_deref().map(str::len), Some(64));
        assert_eq!(d, c);
    }

    #[test]
    fn n_action_and_n_event_report_fields_round_trip() {
        let mut a = Command::new(CommandField::N_ACTION_RQ);
        a.message_id = Some(3);
        a.requested_sop_class_uid = Some(crate::STORAGE_COMMITMENT.into());
        a.requested_sop_instance_uid = Some(crate::STORAGE_COMMITMENT_INSTANCE.into());
        a.action_type_id = Some(1);
        a.has_data_set = true;
        let d = Command::decode(&a.encode()).unwrap();
        assert_eq!(d.requested_sop_class_uid, a.requested_sop_class_uid);
        assert_eq!(d.requested_sop_instance_uid, a.requested_sop_instance_uid);
        assert_eq!(d.action_type_id, Some(1));
        // The class is also where code asking "which class" looks.
        assert_eq!(d.sop_class(), crate::STORAGE_COMMITMENT);

        let mut e = Command::new(CommandField::N_EVENT_REPORT_RQ);
        e.message_id = Some(9);
        e.affected_sop_class_uid = Some(crate::STORAGE_COMMITMENT.into());
        e.affected_sop_instance_uid = Some(crate::STORAGE_COMMITMENT_INSTANCE.into());
        e.event_type_id = Some(2);
        e.has_data_set = true;
        assert_eq!(Command::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn rejects_inconsistent_sets() {
        let mut bytes = Command::new(CommandField::C_ECHO_RQ).encode();
        bytes.push(0);
        assert!(Command::decode(&bytes).is_err());
        assert_eq!(
            Command::decode(&[]).unwrap_err(),
            CommandError::Missing("CommandField (0000,0100)")
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::decode(&bytes);
        }
    }
}
