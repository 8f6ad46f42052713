//! Storage Commitment Push Model (PS3.4 J): the N-ACTION request's data set we send, and the
//! N-EVENT-REPORT's data set the archive answers with, on this association or a later one
//! it opens to our listener.

use dataset::encode::write_element;
use dataset::{Encoding, Tag, Vr};

const TRANSACTION_UID: Tag = Tag::new(0x0008, 0x1195);
const REFERENCED_SOP_SEQUENCE: Tag = Tag::new(0x0008, 0x1199);
const FAILED_SOP_SEQUENCE: Tag = Tag::new(0x0008, 0x1198);
const REFERENCED_SOP_CLASS: Tag = Tag::new(0x0008, 0x1150);
const REFERENCED_SOP_INSTANCE: Tag = Tag::new(0x0008, 0x1155);
const FAILURE_REASON: Tag = Tag::new(0x0008, 0x1197);
const ITEM: u32 = 0xFFFE_E000;
const ITEM_END: u32 = 0xFFFE_E00D;
const SEQUENCE_END: u32 = 0xFFFE_E0DD;
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// One instance named in a commitment request or report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// What the archive reported for one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventReport {
    pub transaction_uid: String,
    /// Instances the archive has taken responsibility for.
    pub committed: Vec<Reference>,
    /// Instances it has not, with the Failure Reason (PS3.4 J.3.2.1.3: 0x0110 processing
    /// failure, 0x0112 no such object instance, 0x0213 resource limitation, 0x0122 SOP class
    /// not supported, 0x0119 class/instance conflict, 0x0131 duplicate transaction UID).
    pub failed: Vec<(Reference, u16)>,
}

fn write_sequence_start(out: &mut Vec<u8>, enc: Encoding, tag: Tag) {
    out.extend_from_slice(&tag.group().to_le_bytes());
    out.extend_from_slice(&tag.element().to_le_bytes());
    if enc.explicit_vr {
        out.extend_from_slice(b"SQ\0\0");
    }
    out.extend_from_slice(&UNDEFINED.to_le_bytes());
}

fn write_marker(out: &mut Vec<u8>, marker: u32, length: u32) {
    out.extend_from_slice(&((marker >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(marker as u16).to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
}

/// The N-ACTION-RQ data set (Action Type 1, "Request Storage Commitment").
pub fn action_data_set(transaction_uid: &str, refs: &[Reference], enc: Encoding) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + refs.len() * 140);
    write_element(
        &mut out,
        enc,
        TRANSACTION_UID,
        Vr::UI,
        transaction_uid.as_bytes(),
    );
    write_sequence_start(&mut out, enc, REFERENCED_SOP_SEQUENCE);
    for r in refs {
        write_marker(&mut out, ITEM, UNDEFINED);
        write_element(
            &mut out,
            enc,
            REFERENCED_SOP_CLASS,
            Vr::UI,
            r.sop_class_uid.as_bytes(),
        );
        write_element(
            &mut out,
            enc,
            REFERENCED_SOP_INSTANCE,
            Vr::UI,
            r.sop_instance_uid.as_bytes(),
        );
        write_marker(&mut out, ITEM_END, 0);
    }
    write_marker(&mut out, SEQUENCE_END, 0);
    out
}

/// Why a report could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("the Storage Commitment report is cut short at byte {0}")]
    Truncated(usize),
    #[error("the Storage Commitment report nests sequences deeper than a report can (at byte {0})")]
    TooDeep(usize),
    #[error("the Storage Commitment report lacks its Transaction UID (0008,1195)")]
    NoTransaction,
}

/// An element's value: bytes, or the items of a sequence (each a list of elements).
enum Value<'a> {
    Bytes(&'a [u8]),
    Items(Vec<Vec<(u32, Value<'a>)>>),
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    explicit: bool,
    /// Sequences entered; a report has one level, so a few more are refused rather than
    /// followed (nested sequences from a peer must not exhaust the stack).
    depth: usize,
}

/// Deepest sequence nesting followed.
const MAX_DEPTH: usize = 4;

const LONG_VRS: [&[u8; 2]; 13] = [
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
];

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReportError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(ReportError::Truncated(self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, ReportError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ReportError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Tag, whether it is a sequence, and the value length.
    fn header(&mut self) -> Result<(u32, bool, u32), ReportError> {
        let tag = (u32::from(self.u16()?) << 16) | u32::from(self.u16()?);
        if tag >> 16 == 0xFFFE || !self.explicit {
            let len = self.u32()?;
            let sq = tag == REFERENCED_SOP_SEQUENCE.0 || tag == FAILED_SOP_SEQUENCE.0;
            return Ok((tag, sq || len == UNDEFINED, len));
        }
        let vr = self.take(2)?;
        let vr = [vr[0], vr[1]];
        if LONG_VRS.contains(&&vr) {
            self.take(2)?;
            Ok((tag, &vr == b"SQ", self.u32()?))
        } else {
            Ok((tag, false, u32::from(self.u16()?)))
        }
    }

    /// Elements until `end` (a byte offset) or, with `None`, until an item delimiter.
    fn elements(&mut self, end: Option<usize>) -> Result<Vec<(u32, Value<'a>)>, ReportError> {
        let mut out = Vec::new();
        loop {
            match end {
                Some(e) if self.pos >= e => return Ok(out),
                None if self.pos >= self.b.len() => return Ok(out),
                _ => {}
            }
            let (tag, sq, len) = self.header()?;
            if tag == ITEM_END {
                return Ok(out);
            }
            if sq {
                out.push((tag, Value::Items(self.items(len)?)));
            } else {
                out.push((tag, Value::Bytes(self.take(len as usize)?)));
            }
        }
    }

    fn items(&mut self, len: u32) -> Result<Vec<Vec<(u32, Value<'a>)>>, ReportError> {
        if self.depth >= MAX_DEPTH {
            return Err(ReportError::TooDeep(self.pos));
        }
        self.depth += 1;
        let items = self.items_inner(len);
        self.depth -= 1;
        items
    }

    fn items_inner(&mut self, len: u32) -> Result<Vec<Vec<(u32, Value<'a>)>>, ReportError> {
        let end = (len != UNDEFINED).then(|| self.pos + len as usize);
        let mut items = Vec::new();
        loop {
            if end.is_some_and(|e| self.pos >= e) {
                return Ok(items);
            }
            let tag = (u32::from(self.u16()?) << 16) | u32::from(self.u16()?);
            let item_len = self.u32()?;
            match tag {
                SEQUENCE_END => return Ok(items),
                ITEM if item_len == UNDEFINED => items.push(self.elements(None)?),
                ITEM => {
                    let item_end = self.pos + item_len as usize;
                    items.push(self.elements(Some(item_end))?);
                }
                _ => return Err(ReportError::Truncated(self.pos)),
            }
        }
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(dataset::encode::trim_padding(v))
        .trim()
        .to_string()
}

fn reference(item: &[(u32, Value)]) -> (Reference, Option<u16>) {
    let mut r = Reference {
        sop_class_uid: String::new(),
        sop_instance_uid: String::new(),
    };
    let mut reason = None;
    for (tag, v) in item {
        let Value::Bytes(b) = v else { continue };
        match *tag {
            t if t == REFERENCED_SOP_CLASS.0 => r.sop_class_uid = text(b),
            t if t == REFERENCED_SOP_INSTANCE.0 => r.sop_instance_uid = text(b),
            t if t == FAILURE_REASON.0 && b.len() >= 2 => {
                reason = Some(u16::from_le_bytes([b[0], b[1]]))
            }
            _ => {}
        }
    }
    (r, reason)
}

/// Reads an N-EVENT-REPORT data set (Event Type 1 or 2) in the context's encoding.
pub fn parse_event_report(bytes: &[u8], enc: Encoding) -> Result<EventReport, ReportError> {
    let mut reader = Reader {
        b: bytes,
        pos: 0,
        explicit: enc.explicit_vr,
        depth: 0,
    };
    let mut report = EventReport::default();
    for (tag, value) in reader.elements(Some(bytes.len()))? {
        match (tag, value) {
            (t, Value::Bytes(b)) if t == TRANSACTION_UID.0 => report.transaction_uid = text(b),
            (t, Value::Items(items)) if t == REFERENCED_SOP_SEQUENCE.0 => {
                report
                    .committed
                    .extend(items.iter().map(|i| reference(i).0));
            }
            (t, Value::Items(items)) if t == FAILED_SOP_SEQUENCE.0 => {
                report.failed.extend(items.iter().map(|i| {
                    let (r, reason) = reference(i);
                    (r, reason.unwrap_or(0x0110))
                }));
            }
            _ => {}
        }
    }
    if report.transaction_uid.is_empty() {
        return Err(ReportError::NoTransaction);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(n: usize) -> Vec<Reference> {
        (0..n)
            .map(|i| Reference {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: format!("1.2.3.{i}"),
            })
            .collect()
    }

    #[test]
    fn a_request_reads_back_as_a_report_in_both_encodings() {
        for enc in [Encoding::EXPLICIT_LE, Encoding::IMPLICIT_LE] {
            let bytes = action_data_set("2.25.42", &refs(3), enc);
            let report = parse_event_report(&bytes, enc).unwrap();
            assert_eq!(report.transaction_uid, "2.25.42");
            assert_eq!(report.committed, refs(3));
            assert!(report.failed.is_empty());
        }
    }

    #[test]
    fn failures_with_defined_lengths_keep_their_reasons() {
        // A report as some archives write it: defined-length sequence and items, explicit VR.
        let enc = Encoding::EXPLICIT_LE;
        let mut item = Vec::new();
        write_element(&mut item, enc, REFERENCED_SOP_CLASS, Vr::UI, b"1.2.3");
        write_element(&mut item, enc, REFERENCED_SOP_INSTANCE, Vr::UI, b"1.2.3.4");
        write_element(
            &mut item,
            enc,
            FAILURE_REASON,
            Vr::US,
            &0x0112u16.to_le_bytes(),
        );
        let mut seq = Vec::new();
        write_marker(&mut seq, ITEM, item.len() as u32);
        seq.extend_from_slice(&item);
        let mut bytes = Vec::new();
        write_element(&mut bytes, enc, TRANSACTION_UID, Vr::UI, b"2.25.7");
        bytes.extend_from_slice(&FAILED_SOP_SEQUENCE.group().to_le_bytes());
        bytes.extend_from_slice(&FAILED_SOP_SEQUENCE.element().to_le_bytes());
        bytes.extend_from_slice(b"SQ\0\0");
        bytes.extend_from_slice(&(seq.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&seq);
        let report = parse_event_report(&bytes, enc).unwrap();
        assert_eq!(report.transaction_uid, "2.25.7");
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0.sop_instance_uid, "1.2.3.4");
        assert_eq!(report.failed[0].1, 0x0112);
    }

    #[test]
    fn deeply_nested_sequences_are_refused_not_followed() {
        // Regression: the reader recursed once per nested sequence, so a peer could send a
        // report nesting a million undefined-length sequences (16 bytes a level) and
        // overflow the stack of the thread reading it, aborting the whole process.
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[0x08, 0x00, 0x99, 0x11]);
            bytes.extend_from_slice(&UNDEFINED.to_le_bytes());
            write_marker(&mut bytes, ITEM, UNDEFINED);
        }
        assert!(matches!(
            parse_event_report(&bytes, Encoding::IMPLICIT_LE),
            Err(ReportError::TooDeep(_))
        ));
    }

    #[test]
    fn cut_short_or_anonymous_reports_are_errors() {
        let bytes = action_data_set("2.25.1", &refs(2), Encoding::IMPLICIT_LE);
        assert!(matches!(
            parse_event_report(&bytes[..bytes.len() - 20], Encoding::IMPLICIT_LE),
            Err(ReportError::Truncated(_))
        ));
        assert_eq!(
            parse_event_report(&[], Encoding::IMPLICIT_LE),
            Err(ReportError::NoTransaction)
        );
    }
}
