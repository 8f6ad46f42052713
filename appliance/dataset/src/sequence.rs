//! A sequence's items re-encoded for another transfer syntax: what returning a sequence
//! attribute of a stored instance in a C-FIND response takes, when the file is in one little
//! endian syntax and the response in another.
//!
//! Items come out with undefined lengths and delimiters (always allowed, PS3.5 7.5), since an
//! item's length changes when its headers do. Values are copied as they are; only headers
//! change. Big endian, values too long for an explicit short-length header, and fragments
//! (an encapsulated icon) inside an item are not handled: the caller then answers the key
//! empty.

use crate::tag::{Tag, Vr, dictionary_vr, tags};
use crate::ts::Encoding;

const UNDEFINED: u32 = 0xFFFF_FFFF;

/// The value of the sequence element `element` (header included, as stored in `from`), as the
/// items of a sequence in `to`. `None` when it cannot be converted (see the module).
pub fn reencode_element(element: &[u8], from: Encoding, to: Encoding) -> Option<Vec<u8>> {
    let (tag, vr, length, header) = header(element, from)?;
    if tag.group() == 0xFFFE || (from.explicit_vr && vr != Vr::SQ) {
        return None;
    }
    let value = &element[header..];
    let value = if length == UNDEFINED {
        value
    } else {
        value.get(..length as usize)?
    };
    reencode_items(value, from, to)
}

/// A sequence's items (the value of its element, delimiter included if it has one) from
/// `from` into `to`.
pub fn reencode_items(items: &[u8], from: Encoding, to: Encoding) -> Option<Vec<u8>> {
    if from.big_endian || to.big_endian {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() + 64);
    let rest = items_into(items, from, to, &mut out, 0)?;
    rest.is_empty().then_some(out)
}

/// Reads items until the data ends or a sequence delimitation; returns what follows.
fn items_into<'a>(
    mut data: &'a [u8],
    from: Encoding,
    to: Encoding,
    out: &mut Vec<u8>,
    depth: usize,
) -> Option<&'a [u8]> {
    if depth > 16 {
        return None;
    }
    while !data.is_empty() {
        let tag = read_tag(data)?;
        let length = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
        data = &data[8..];
        match tag {
            tags::SEQUENCE_DELIMITATION => return Some(data),
            tags::ITEM => {
                put_tag(out, tags::ITEM);
                out.extend_from_slice(&UNDEFINED.to_le_bytes());
                if length == UNDEFINED {
                    data = dataset_into(data, from, to, out, depth + 1, true)?;
                } else {
                    let (item, after) = split(data, length)?;
                    let left = dataset_into(item, from, to, out, depth + 1, false)?;
                    if !left.is_empty() {
                        return None;
                    }
                    data = after;
                }
                put_tag(out, tags::ITEM_DELIMITATION);
                out.extend_from_slice(&0u32.to_le_bytes());
            }
            _ => return None,
        }
    }
    Some(data)
}

/// Reads the elements of one item; with `delimited`, up to and past its item delimitation.
fn dataset_into<'a>(
    mut data: &'a [u8],
    from: Encoding,
    to: Encoding,
    out: &mut Vec<u8>,
    depth: usize,
    delimited: bool,
) -> Option<&'a [u8]> {
    while !data.is_empty() {
        let (tag, vr, length, header) = header(data, from)?;
        data = &data[header..];
        if tag == tags::ITEM_DELIMITATION {
            return delimited.then_some(data);
        }
        if tag.group() == 0xFFFE {
            return None;
        }
        if vr == Vr::SQ || (length == UNDEFINED && (!from.explicit_vr || vr == Vr::UN)) {
            // A sequence within: its items in turn, written with undefined lengths.
            put_header(out, to, tag, Vr::SQ, UNDEFINED)?;
            if length == UNDEFINED {
                data = items_into(data, from, to, out, depth + 1)?;
            } else {
                let (inner, after) = split(data, length)?;
                if !items_into(inner, from, to, out, depth + 1)?.is_empty() {
                    return None;
                }
                data = after;
            }
            put_tag(out, tags::SEQUENCE_DELIMITATION);
            out.extend_from_slice(&0u32.to_le_bytes());
            continue;
        }
        if length == UNDEFINED {
            // Fragments (an encapsulated icon): not worth the parser here.
            return None;
        }
        let (value, after) = split(data, length)?;
        put_header(out, to, tag, vr, length)?;
        out.extend_from_slice(value);
        data = after;
    }
    (!delimited).then_some(data)
}

/// An element header: tag, VR (from the dictionary when implicit), length, header size.
fn header(data: &[u8], enc: Encoding) -> Option<(Tag, Vr, u32, usize)> {
    let tag = read_tag(data)?;
    if tag.group() == 0xFFFE || !enc.explicit_vr {
        let length = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
        return Some((tag, dictionary_vr(tag), length, 8));
    }
    let vr = Vr::from_bytes([*data.get(4)?, *data.get(5)?])?;
    if vr.has_long_length() {
        let length = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
        Some((tag, vr, length, 12))
    } else {
        let length = u16::from_le_bytes(data.get(6..8)?.try_into().ok()?);
        Some((tag, vr, u32::from(length), 8))
    }
}

fn put_header(out: &mut Vec<u8>, enc: Encoding, tag: Tag, vr: Vr, length: u32) -> Option<()> {
    put_tag(out, tag);
    if !enc.explicit_vr {
        out.extend_from_slice(&length.to_le_bytes());
    } else if vr.has_long_length() {
        out.extend_from_slice(&vr.0);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&length.to_le_bytes());
    } else {
        out.extend_from_slice(&vr.0);
        out.extend_from_slice(&u16::try_from(length).ok()?.to_le_bytes());
    }
    Some(())
}

fn read_tag(data: &[u8]) -> Option<Tag> {
    let g = u16::from_le_bytes(data.get(0..2)?.try_into().ok()?);
    let e = u16::from_le_bytes(data.get(2..4)?.try_into().ok()?);
    Some(Tag::new(g, e))
}

fn put_tag(out: &mut Vec<u8>, tag: Tag) {
    out.extend_from_slice(&tag.group().to_le_bytes());
    out.extend_from_slice(&tag.element().to_le_bytes());
}

fn split(data: &[u8], length: u32) -> Option<(&[u8], &[u8])> {
    let n = usize::try_from(length).ok()?;
    (n <= data.len()).then(|| data.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{write_element, write_str};

    const PROCEDURE_CODE: Tag = Tag::new(0x0008, 0x1032);

    /// ProcedureCodeSequence with one item (CodeValue, CodingSchemeDesignator, a nested
    /// sequence), with defined lengths throughout.
    fn sequence(enc: Encoding) -> Vec<u8> {
        let mut nested_item = Vec::new();
        write_str(
            &mut nested_item,
            enc,
            Tag::new(0x0008, 0x0100),
            Vr::SH,
            "N1",
        );
        let mut nested = Vec::new();
        put_tag(&mut nested, tags::ITEM);
        nested.extend_from_slice(&(nested_item.len() as u32).to_le_bytes());
        nested.extend_from_slice(&nested_item);
        let mut item = Vec::new();
        write_str(&mut item, enc, Tag::new(0x0008, 0x0100), Vr::SH, "CT-CHEST");
        write_str(&mut item, enc, Tag::new(0x0008, 0x0102), Vr::SH, "LOCAL");
        write_element(&mut item, enc, Tag::new(0x0008, 0x0220), Vr::SQ, &nested);
        let mut items = Vec::new();
        put_tag(&mut items, tags::ITEM);
        items.extend_from_slice(&(item.len() as u32).to_le_bytes());
        items.extend_from_slice(&item);
        let mut element = Vec::new();
        write_element(&mut element, enc, PROCEDURE_CODE, Vr::SQ, &items);
        element
    }

    /// The same sequence as the re-encoding writes it: undefined lengths, delimiters.
    fn delimited(enc: Encoding) -> Vec<u8> {
        let mut out = Vec::new();
        put_tag(&mut out, tags::ITEM);
        out.extend_from_slice(&UNDEFINED.to_le_bytes());
        write_str(&mut out, enc, Tag::new(0x0008, 0x0100), Vr::SH, "CT-CHEST");
        write_str(&mut out, enc, Tag::new(0x0008, 0x0102), Vr::SH, "LOCAL");
        put_header(&mut out, enc, Tag::new(0x0008, 0x0220), Vr::SQ, UNDEFINED).unwrap();
        put_tag(&mut out, tags::ITEM);
        out.extend_from_slice(&UNDEFINED.to_le_bytes());
        write_str(&mut out, enc, Tag::new(0x0008, 0x0100), Vr::SH, "N1");
        put_tag(&mut out, tags::ITEM_DELIMITATION);
        out.extend_from_slice(&[0; 4]);
        put_tag(&mut out, tags::SEQUENCE_DELIMITATION);
        out.extend_from_slice(&[0; 4]);
        put_tag(&mut out, tags::ITEM_DELIMITATION);
        out.extend_from_slice(&[0; 4]);
        out
    }

    #[test]
    fn items_convert_between_implicit_and_explicit_little_endian() {
        let (ex, im) = (Encoding::EXPLICIT_LE, Encoding::IMPLICIT_LE);
        for (from, to) in [(ex, im), (im, ex), (ex, ex), (im, im)] {
            assert_eq!(
                reencode_element(&sequence(from), from, to),
                Some(delimited(to)),
                "{from:?} to {to:?}"
            );
        }
        // What was written with undefined lengths reads back the same.
        assert_eq!(reencode_items(&delimited(im), im, ex), Some(delimited(ex)));
    }

    #[test]
    fn what_it_cannot_convert_is_refused_not_guessed() {
        let ex = Encoding::EXPLICIT_LE;
        let element = sequence(ex);
        assert_eq!(
            reencode_element(&element[..element.len() - 3], ex, ex),
            None
        );
        assert_eq!(reencode_element(&element, ex, Encoding::EXPLICIT_BE), None);
        let mut not_a_sequence = Vec::new();
        write_str(
            &mut not_a_sequence,
            ex,
            Tag::new(0x0010, 0x0010),
            Vr::PN,
            "X",
        );
        assert_eq!(reencode_element(&not_a_sequence, ex, ex), None);
    }
}
