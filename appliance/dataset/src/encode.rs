//! Encoding of single elements, for query responses and identifiers built from index values.

use crate::tag::{Tag, Vr};
use crate::ts::Encoding;

/// Appends one element with a defined length. Values of odd length are padded as PS3.5 6.2
/// asks: UIDs with NUL, other text with a space, binary with a zero byte. Binary values are
/// given in little endian and swapped for big-endian output.
pub fn write_element(out: &mut Vec<u8>, enc: Encoding, tag: Tag, vr: Vr, value: &[u8]) {
    let pad = value.len() % 2 == 1;
    let length = value.len() + usize::from(pad);
    let mut vr = vr;
    if enc.explicit_vr && !vr.has_long_length() && length > usize::from(u16::MAX) {
        // A value too long for the 16-bit length field can only travel as UN.
        vr = Vr::UN;
    }
    put_u16(out, tag.group(), enc);
    put_u16(out, tag.element(), enc);
    if enc.explicit_vr {
        out.extend_from_slice(&vr.0);
        if vr.has_long_length() {
            out.extend_from_slice(&[0, 0]);
            put_u32(out, length as u32, enc);
        } else {
            put_u16(out, length as u16, enc);
        }
    } else {
        put_u32(out, length as u32, enc);
    }
    let start = out.len();
    out.extend_from_slice(value);
    if pad {
        out.push(if vr == Vr::UI || !vr.is_text() {
            0
        } else {
            b' '
        });
    }
    if enc.big_endian
        && let Some(size) = vr.binary_word_size()
    {
        for word in out[start..].chunks_exact_mut(size) {
            word.reverse();
        }
    }
}

/// Appends a text element from a string value.
pub fn write_str(out: &mut Vec<u8>, enc: Encoding, tag: Tag, vr: Vr, value: &str) {
    write_element(out, enc, tag, vr, value.as_bytes());
}

/// Appends an element whose value is one or more little-endian `u16`.
pub fn write_u16(out: &mut Vec<u8>, enc: Encoding, tag: Tag, values: &[u16]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_element(out, enc, tag, Vr::US, &bytes);
}

fn put_u16(out: &mut Vec<u8>, v: u16, enc: Encoding) {
    if enc.big_endian {
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32, enc: Encoding) {
    if enc.big_endian {
        out.extend_from_slice(&v.to_be_bytes());
    } else {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Splits a multi-valued text value on backslashes, trimming the padding of each value.
pub fn text_values(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let trimmed = trim_padding(value);
    trimmed.split(|b| *b == b'\\').map(trim_padding)
}

/// Removes the trailing spaces and NULs that pad text values, and leading spaces, which are
/// insignificant for every VR this crate compares.
pub fn trim_padding(value: &[u8]) -> &[u8] {
    let end = value
        .iter()
        .rposition(|b| *b != b' ' && *b != 0)
        .map_or(0, |p| p + 1);
    let start = value[..end].iter().position(|b| *b != b' ').unwrap_or(end);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::tags;

    #[test]
    fn pads_and_lays_out_headers() {
        let mut out = Vec::new();
        write_str(
            &mut out,
            Encoding::EXPLICIT_LE,
            tags::SOP_INSTANCE_UID,
            Vr::UI,
            "1.2.3",
        );
        assert_eq!(&out[..8], &[0x08, 0x00, 0x18, 0x00, b'U', b'I', 6, 0]);
        assert_eq!(&out[8..], b"1.2.3\0");

        let mut out = Vec::new();
        write_str(
            &mut out,
            Encoding::IMPLICIT_LE,
            tags::PATIENT_NAME,
            Vr::PN,
            "DOE",
        );
        assert_eq!(&out[4..8], &[4, 0, 0, 0]);
        assert_eq!(&out[8..], b"DOE ");

        let mut out = Vec::new();
        write_u16(&mut out, Encoding::EXPLICIT_BE, tags::ROWS, &[512]);
        assert_eq!(out, [0x00, 0x28, 0x00, 0x10, b'U', b'S', 0, 2, 0x02, 0x00]);
    }

    #[test]
    fn splits_values() {
        let v: Vec<&[u8]> = text_values(b"CT\\MR ").collect();
        assert_eq!(v, vec![&b"CT"[..], &b"MR"[..]]);
        assert_eq!(trim_padding(b"  A B \0"), b"A B");
        assert_eq!(trim_padding(b"    "), b"");
    }
}
