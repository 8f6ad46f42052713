//! A streaming walker over data set bytes: checks the element framing and captures selected
//! top-level attributes, with memory bounded by the captured values, never by the data set.
//!
//! The walker is fed bytes as they arrive (from P-DATA fragments, or from a file), in pieces
//! of any size. It understands element headers in every layout (implicit or explicit VR,
//! little or big endian, deflated), sequences and items of defined or undefined length, and
//! encapsulated pixel data. Values it does not capture are skipped by counting, so walking a
//! 1 GB pixel data element costs nothing but the bookkeeping.
//!
//! Sequences of defined length are skipped as a whole: their contents cannot break the
//! framing of the enclosing data set, and nothing inside them is indexed. Sequences of
//! undefined length must be walked item by item to find their end.
//!
//! Only the first occurrence of a captured tag is kept, so repeats cost nothing. PS3.5 7.1
//! asks for each tag once, in ascending order; a walker built with
//! [`Walker::require_tag_order`] (ingest) refuses a repeat, or more than [`MAX_MISORDERED`]
//! breaks of order, in the top-level data set or in an item of undefined length, at the
//! element that shows it. Items of defined length are skipped unchecked, like their sequences.

use std::collections::BTreeSet;

use flate2::{Decompress, FlushDecompress, Status};

use crate::tag::{Tag, Vr, dictionary_vr, tags};
use crate::ts::{Encoding, SyntaxInfo};

/// How deep sequences may nest before the data set is refused; real data sets stay far below.
const MAX_DEPTH: usize = 64;
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;
/// How many breaks of ascending tag order one data set (or one item) may have before a walk
/// that requires tag order refuses it. Modalities occasionally misplace an element; a data
/// set with more breaks than this is not a misplaced element.
pub const MAX_MISORDERED: u32 = 8;

/// A top-level attribute taken out of a data set. Binary values are little endian whatever
/// the data set's byte order; text values are the raw bytes, in the data set's character set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub tag: Tag,
    pub vr: Vr,
    pub value: Vec<u8>,
}

/// Which top-level attributes to capture.
#[derive(Clone, Debug)]
pub enum Capture {
    /// The listed tags (sorted ascending), each value up to `max_len` bytes.
    Tags { tags: Vec<Tag>, max_len: usize },
    /// Every top-level attribute (query identifiers), each value up to `max_len` bytes.
    /// Sequences are reported with their VR and an empty value.
    All { max_len: usize },
}

impl Capture {
    fn wants(&self, tag: Tag) -> Option<usize> {
        match self {
            Capture::Tags { tags, max_len } => tags.binary_search(&tag).ok().map(|_| *max_len),
            Capture::All { max_len } => Some(*max_len),
        }
    }
}

/// What a complete walk found.
#[derive(Clone, Debug, Default)]
pub struct Walked {
    /// Captured top-level elements, in data set order.
    pub elements: Vec<Element>,
    /// Length of the (inflated) data set in bytes.
    pub length: u64,
    /// Offset of the top-level Pixel Data element's header, if there is one.
    pub pixel_data_offset: Option<u64>,
    /// Where each captured top-level element lies in the (inflated) data set, delimiter
    /// included for one of undefined length, so that it can be replaced in a copy
    /// ([`crate::rewrite`]) or read on its own ([`crate::sequence`]).
    pub spans: Vec<Span>,
    /// Elements found out of ascending order, at any level (at most [`MAX_MISORDERED`] are
    /// noted), so that the caller can log them.
    pub misordered: Vec<Misordered>,
}

/// An element whose tag is lower than the one before it in the same data set or item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misordered {
    pub tag: Tag,
    /// The element before it.
    pub after: Tag,
    /// Offset of its header in the (inflated) data set.
    pub at: u64,
}

impl Walked {
    pub fn get(&self, tag: Tag) -> Option<&Element> {
        self.elements.iter().find(|e| e.tag == tag)
    }
}

/// Why a data set's bytes cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("data set is malformed at byte {offset}: {kind}")]
pub struct WalkError {
    pub offset: u64,
    pub kind: WalkErrorKind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalkErrorKind {
    #[error("element {tag} has an invalid value representation {vr:?}")]
    InvalidVr { tag: Tag, vr: [u8; 2] },
    #[error(
        "element {tag} of VR {vr} has an undefined length, which only sequences and encapsulated pixel data may have"
    )]
    UndefinedLength { tag: Tag, vr: Vr },
    #[error("expected an item or a sequence delimiter, found {tag}")]
    ExpectedItem { tag: Tag },
    #[error("item tag {tag} appears where a data element belongs")]
    UnexpectedItemTag { tag: Tag },
    #[error("item in encapsulated pixel data has an undefined length")]
    UndefinedFragmentLength,
    #[error("delimiter {tag} has a non-zero length {length}")]
    DelimiterLength { tag: Tag, length: u32 },
    #[error("sequences nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("data set ends inside element {tag}")]
    TruncatedValue { tag: Tag },
    #[error("data set ends inside an element header")]
    TruncatedHeader,
    #[error("data set ends inside a sequence of undefined length")]
    UnclosedSequence,
    #[error("deflated data set is corrupt: {0}")]
    Deflate(String),
    #[error("deflated data set ends before its deflate stream does")]
    DeflateTruncated,
    #[error(
        "element {tag} repeats at byte {at}; PS3.5 7.1 allows each tag once, in ascending order"
    )]
    RepeatedTag { tag: Tag, at: u64 },
    #[error(
        "element {tag} at byte {at} follows {after}: more than {MAX_MISORDERED} elements out of ascending order; PS3.5 7.1 requires ascending tags"
    )]
    TooManyMisordered { tag: Tag, after: Tag, at: u64 },
}

impl WalkErrorKind {
    /// Whether the data set was refused for breaking PS3.5 7.1 (tags once each, ascending)
    /// rather than for its framing; only a walk requiring tag order gives these.
    pub fn is_tag_order(&self) -> bool {
        matches!(
            self,
            WalkErrorKind::RepeatedTag { .. } | WalkErrorKind::TooManyMisordered { .. }
        )
    }
}

#[derive(Clone, Copy, Debug)]
enum Frame {
    /// A data set: the top level, or an item of undefined length (`delimited`), with the
    /// tag of its last element and how often its order broke, for PS3.5 7.1.
    Dataset {
        enc: Encoding,
        delimited: bool,
        last: Option<Tag>,
        misordered: u32,
    },
    /// Items of a sequence of undefined length.
    Sequence { enc: Encoding },
    /// Fragments of encapsulated pixel data.
    Fragments { enc: Encoding },
}

impl Frame {
    fn encoding(self) -> Encoding {
        match self {
            Frame::Dataset { enc, .. } | Frame::Sequence { enc } | Frame::Fragments { enc } => enc,
        }
    }
}

#[derive(Debug)]
enum State {
    Header,
    Skip { remaining: u64, tag: Tag },
    Capture { remaining: usize, tag: Tag },
}

/// The bytes of one top-level element, header included: `start..end` of the (inflated) data
/// set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub tag: Tag,
    pub vr: Vr,
    pub start: u64,
    pub end: u64,
}

/// The streaming walker; see the module documentation.
pub struct Walker {
    capture: Capture,
    frames: Vec<Frame>,
    state: State,
    header: [u8; 12],
    header_len: usize,
    offset: u64,
    walked: Walked,
    current: Option<Element>,
    inflater: Option<Inflater>,
    /// Set once an error was returned; the walker refuses further input after that.
    failed: bool,
    strict: bool,
    /// Top-level tags captured so far (at most the number of elements captured).
    captured: BTreeSet<Tag>,
    /// The span of a captured top-level element of undefined length still open: its end is
    /// known when its sequence (or fragments) closes.
    open_span: Option<usize>,
}

struct Inflater {
    decompress: Decompress,
    buffer: Vec<u8>,
    ended: bool,
}

impl Walker {
    pub fn new(info: SyntaxInfo, capture: Capture) -> Walker {
        Walker {
            capture,
            frames: vec![Frame::Dataset {
                enc: info.encoding,
                delimited: false,
                last: None,
                misordered: 0,
            }],
            state: State::Header,
            header: [0; 12],
            header_len: 0,
            offset: 0,
            walked: Walked::default(),
            current: None,
            inflater: info.deflated.then(|| Inflater {
                // Deflated data sets are raw deflate streams without a zlib header (PS3.5 A.5).
                decompress: Decompress::new(false),
                buffer: vec![0; 64 * 1024],
                ended: false,
            }),
            failed: false,
            strict: false,
            captured: BTreeSet::new(),
            open_span: None,
        }
    }

    /// Makes the walk refuse a data set in which a tag repeats within one data set or item,
    /// or more than [`MAX_MISORDERED`] elements break ascending order (PS3.5 7.1). Without it
    /// such data sets are walked, and only the first occurrence of a tag is captured.
    pub fn require_tag_order(mut self) -> Walker {
        self.strict = true;
        self
    }

    /// Feeds the next bytes of the data set, as they arrived.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), WalkError> {
        if self.failed {
            return Ok(());
        }
        let result = match self.inflater.take() {
            None => self.walk(data),
            Some(mut inflater) => {
                let r = self.inflate(&mut inflater, data);
                self.inflater = Some(inflater);
                r
            }
        };
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Declares the end of the data set; fails unless it ended at an element boundary.
    pub fn finish(mut self) -> Result<Walked, WalkError> {
        if let Some(inflater) = &self.inflater
            && !inflater.ended
        {
            return Err(self.error(WalkErrorKind::DeflateTruncated));
        }
        match self.state {
            State::Header if self.header_len == 0 => {}
            State::Header => return Err(self.error(WalkErrorKind::TruncatedHeader)),
            State::Skip { tag, .. } | State::Capture { tag, .. } => {
                return Err(self.error(WalkErrorKind::TruncatedValue { tag }));
            }
        }
        if self.frames.len() != 1 {
            return Err(self.error(WalkErrorKind::UnclosedSequence));
        }
        self.walked.length = self.offset;
        Ok(std::mem::take(&mut self.walked))
    }

    /// Bytes of (inflated) data set walked so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Elements captured so far, so a caller can bound their count while bytes arrive.
    pub fn captured(&self) -> &[Element] {
        &self.walked.elements
    }

    /// Spans of the elements captured so far whose end is known (see [`Walked::spans`]), so
    /// a caller looking for a few elements can stop reading once it has them.
    pub fn spans(&self) -> &[Span] {
        match self.open_span {
            Some(i) => &self.walked.spans[..i],
            None => &self.walked.spans,
        }
    }

    /// Called after a frame is popped: a top-level element of undefined length ends here.
    fn close_span(&mut self) {
        if self.frames.len() == 1
            && let Some(i) = self.open_span.take()
        {
            self.walked.spans[i].end = self.offset;
        }
    }

    fn inflate(&mut self, inflater: &mut Inflater, mut data: &[u8]) -> Result<(), WalkError> {
        while !data.is_empty() && !inflater.ended {
            let before_in = inflater.decompress.total_in();
            let before_out = inflater.decompress.total_out();
            let status = inflater
                .decompress
                .decompress(data, &mut inflater.buffer, FlushDecompress::None)
                .map_err(|e| self.error(WalkErrorKind::Deflate(e.to_string())))?;
            let consumed = (inflater.decompress.total_in() - before_in) as usize;
            let produced = (inflater.decompress.total_out() - before_out) as usize;
            data = &data[consumed..];
            let out = inflater.buffer[..produced].to_vec();
            self.walk(&out)?;
            if status == Status::StreamEnd {
                inflater.ended = true;
            } else if consumed == 0 && produced == 0 {
                break;
            }
        }
        // Drain output still buffered inside the decompressor.
        while !inflater.ended {
            let before_out = inflater.decompress.total_out();
            let status = inflater
                .decompress
                .decompress(&[], &mut inflater.buffer, FlushDecompress::None)
                .map_err(|e| self.error(WalkErrorKind::Deflate(e.to_string())))?;
            let produced = (inflater.decompress.total_out() - before_out) as usize;
            if produced > 0 {
                let out = inflater.buffer[..produced].to_vec();
                self.walk(&out)?;
            }
            if status == Status::StreamEnd {
                inflater.ended = true;
            }
            if produced == 0 {
                break;
            }
        }
        Ok(())
    }

    fn error(&self, kind: WalkErrorKind) -> WalkError {
        WalkError {
            offset: self.offset,
            kind,
        }
    }

    fn walk(&mut self, mut data: &[u8]) -> Result<(), WalkError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Skip { remaining, .. } => {
                    let n = (*remaining).min(data.len() as u64);
                    *remaining -= n;
                    self.offset += n;
                    data = &data[n as usize..];
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                }
                State::Capture { remaining, .. } => {
                    let n = (*remaining).min(data.len());
                    *remaining -= n;
                    let done = *remaining == 0;
                    if let Some(current) = &mut self.current {
                        current.value.extend_from_slice(&data[..n]);
                    }
                    self.offset += n as u64;
                    data = &data[n..];
                    if done {
                        self.finish_capture();
                        self.state = State::Header;
                    }
                }
                State::Header => {
                    let need = self.header_need();
                    let take = (need - self.header_len).min(data.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&data[..take]);
                    self.header_len += take;
                    self.offset += take as u64;
                    data = &data[take..];
                    if self.header_len == need {
                        // An explicit-VR header may turn out to need four more bytes.
                        if self.header_need() == need {
                            self.on_header()?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// How many header bytes the current frame needs, given what has been read so far.
    fn header_need(&self) -> usize {
        let frame = *self
            .frames
            .last()
            .expect("the top-level frame is never popped");
        match frame {
            Frame::Sequence { .. } | Frame::Fragments { .. } => 8,
            Frame::Dataset { enc, .. } => {
                if !enc.explicit_vr || self.header_len < 6 {
                    return 8;
                }
                let tag = read_tag(&self.header, enc);
                if tag.group() == 0xFFFE {
                    return 8;
                }
                match Vr::from_bytes([self.header[4], self.header[5]]) {
                    Some(vr) if vr.has_long_length() => 12,
                    _ => 8,
                }
            }
        }
    }

    fn on_header(&mut self) -> Result<(), WalkError> {
        let frame = *self
            .frames
            .last()
            .expect("the top-level frame is never popped");
        let enc = frame.encoding();
        let header_start = self.offset - self.header_len as u64;
        let tag = read_tag(&self.header, enc);
        self.header_len = 0;
        match frame {
            Frame::Sequence { enc } => {
                let length = read_u32(&self.header[4..8], enc);
                match tag {
                    tags::ITEM if length == UNDEFINED_LENGTH => self.push(Frame::Dataset {
                        enc,
                        delimited: true,
                        last: None,
                        misordered: 0,
                    })?,
                    tags::ITEM => self.skip(length, tag),
                    tags::SEQUENCE_DELIMITATION => {
                        self.check_delimiter(tag, length)?;
                        self.frames.pop();
                        self.close_span();
                    }
                    _ => return Err(self.error(WalkErrorKind::ExpectedItem { tag })),
                }
            }
            Frame::Fragments { .. } => {
                let length = read_u32(&self.header[4..8], enc);
                match tag {
                    tags::ITEM if length == UNDEFINED_LENGTH => {
                        return Err(self.error(WalkErrorKind::UndefinedFragmentLength));
                    }
                    tags::ITEM => self.skip(length, tag),
                    tags::SEQUENCE_DELIMITATION => {
                        self.check_delimiter(tag, length)?;
                        self.frames.pop();
                        self.close_span();
                    }
                    _ => return Err(self.error(WalkErrorKind::ExpectedItem { tag })),
                }
            }
            Frame::Dataset { delimited, .. } => {
                if tag.group() == 0xFFFE {
                    let length = read_u32(&self.header[4..8], enc);
                    if delimited && tag == tags::ITEM_DELIMITATION {
                        self.check_delimiter(tag, length)?;
                        self.frames.pop();
                        return Ok(());
                    }
                    return Err(self.error(WalkErrorKind::UnexpectedItemTag { tag }));
                }
                let (vr, length) = if enc.explicit_vr {
                    let raw = [self.header[4], self.header[5]];
                    let vr = Vr::from_bytes(raw)
                        .ok_or_else(|| self.error(WalkErrorKind::InvalidVr { tag, vr: raw }))?;
                    let length = if vr.has_long_length() {
                        read_u32(&self.header[8..12], enc)
                    } else {
                        u32::from(read_u16(&self.header[6..8], enc))
                    };
                    (vr, length)
                } else {
                    (dictionary_vr(tag), read_u32(&self.header[4..8], enc))
                };
                self.check_order(tag, header_start)?;
                let top_level = self.frames.len() == 1;
                if top_level && tag == tags::PIXEL_DATA && self.walked.pixel_data_offset.is_none() {
                    self.walked.pixel_data_offset = Some(header_start);
                }
                let wanted = if top_level {
                    self.capture.wants(tag)
                } else {
                    None
                };
                // Only the first occurrence is captured: repeats would otherwise cost one
                // element each, without limit.
                let wanted = match wanted {
                    Some(_) if !self.captured.insert(tag) => {
                        if self.strict {
                            return Err(self.error(WalkErrorKind::RepeatedTag {
                                tag,
                                at: header_start,
                            }));
                        }
                        None
                    }
                    w => w,
                };
                if wanted.is_some() {
                    // The header is consumed: the value runs from here for `length` bytes, or,
                    // undefined, until its delimiter closes it.
                    if length == UNDEFINED_LENGTH {
                        self.open_span = Some(self.walked.spans.len());
                    }
                    self.walked.spans.push(Span {
                        tag,
                        vr,
                        start: header_start,
                        end: if length == UNDEFINED_LENGTH {
                            0
                        } else {
                            self.offset + u64::from(length)
                        },
                    });
                }
                if length == UNDEFINED_LENGTH {
                    let inner = if !enc.explicit_vr || vr == Vr::SQ {
                        Frame::Sequence { enc }
                    } else if vr == Vr::UN {
                        // Sequences of unknown VR are encoded in Implicit VR Little Endian
                        // whatever the transfer syntax (PS3.5 6.2.2, CP-246).
                        Frame::Sequence {
                            enc: Encoding::IMPLICIT_LE,
                        }
                    } else if vr == Vr::OB || vr == Vr::OW {
                        Frame::Fragments { enc }
                    } else {
                        return Err(self.error(WalkErrorKind::UndefinedLength { tag, vr }));
                    };
                    if wanted.is_some() {
                        let vr = if matches!(inner, Frame::Sequence { .. }) {
                            Vr::SQ
                        } else {
                            vr
                        };
                        self.walked.elements.push(Element {
                            tag,
                            vr,
                            value: Vec::new(),
                        });
                    }
                    self.push(inner)?;
                } else {
                    match wanted {
                        Some(max_len) if vr == Vr::SQ || (length as usize) > max_len => {
                            // Sequences of defined length and oversized values are only
                            // noted as present; their contents are skipped.
                            self.walked.elements.push(Element {
                                tag,
                                vr,
                                value: Vec::new(),
                            });
                            self.skip(length, tag);
                        }
                        Some(_) => {
                            self.current = Some(Element {
                                tag,
                                vr,
                                value: Vec::with_capacity(length as usize),
                            });
                            if length == 0 {
                                self.finish_capture();
                            } else {
                                self.state = State::Capture {
                                    remaining: length as usize,
                                    tag,
                                };
                            }
                        }
                        None => self.skip(length, tag),
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks an element's tag against the one before it in the same data set or item. Only
    /// neighbours are compared (a repeat further back is caught for captured tags, and
    /// otherwise counts as a break of order), so this costs no memory per element.
    fn check_order(&mut self, tag: Tag, at: u64) -> Result<(), WalkError> {
        let strict = self.strict;
        let Some(Frame::Dataset {
            last, misordered, ..
        }) = self.frames.last_mut()
        else {
            unreachable!("elements are read only in data set frames");
        };
        let previous = last.replace(tag);
        let Some(after) = previous.filter(|&p| tag <= p) else {
            return Ok(());
        };
        if tag == after {
            if strict {
                return Err(self.error(WalkErrorKind::RepeatedTag { tag, at }));
            }
            return Ok(());
        }
        *misordered += 1;
        if strict && *misordered > MAX_MISORDERED {
            return Err(self.error(WalkErrorKind::TooManyMisordered { tag, after, at }));
        }
        if self.walked.misordered.len() < MAX_MISORDERED as usize {
            self.walked.misordered.push(Misordered { tag, after, at });
        }
        Ok(())
    }

    fn skip(&mut self, length: u32, tag: Tag) {
        if length > 0 {
            self.state = State::Skip {
                remaining: u64::from(length),
                tag,
            };
        }
    }

    fn push(&mut self, frame: Frame) -> Result<(), WalkError> {
        if self.frames.len() >= MAX_DEPTH {
            return Err(self.error(WalkErrorKind::TooDeep));
        }
        self.frames.push(frame);
        Ok(())
    }

    fn check_delimiter(&self, tag: Tag, length: u32) -> Result<(), WalkError> {
        if length != 0 {
            return Err(self.error(WalkErrorKind::DelimiterLength { tag, length }));
        }
        Ok(())
    }

    fn finish_capture(&mut self) {
        let Some(mut element) = self.current.take() else {
            return;
        };
        let enc = self.frames[0].encoding();
        if enc.big_endian
            && let Some(size) = element.vr.binary_word_size()
        {
            for word in element.value.chunks_exact_mut(size) {
                word.reverse();
            }
        }
        self.walked.elements.push(element);
    }
}

fn read_u16(b: &[u8], enc: Encoding) -> u16 {
    let b = [b[0], b[1]];
    if enc.big_endian {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    }
}

fn read_u32(b: &[u8], enc: Encoding) -> u32 {
    let b = [b[0], b[1], b[2], b[3]];
    if enc.big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

fn read_tag(b: &[u8], enc: Encoding) -> Tag {
    Tag::new(read_u16(&b[0..2], enc), read_u16(&b[2..4], enc))
}

/// Walks a whole in-memory data set at once.
pub fn walk_all(info: SyntaxInfo, capture: Capture, data: &[u8]) -> Result<Walked, WalkError> {
    let mut walker = Walker::new(info, capture);
    walker.feed(data)?;
    walker.finish()
}
