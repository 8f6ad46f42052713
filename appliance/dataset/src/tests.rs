//! Walker tests over data sets built by hand in every layout.

use proptest::prelude::*;

use crate::encode::{write_element, write_str, write_u16};
use crate::tag::{Tag, Vr, tags};
use crate::ts::{Encoding, SyntaxInfo, syntax_info};
use crate::walk::{Capture, WalkErrorKind, Walker, walk_all};

fn info(enc: Encoding) -> SyntaxInfo {
    SyntaxInfo {
        encoding: enc,
        deflated: false,
        encapsulated: false,
    }
}

fn header(out: &mut Vec<u8>, enc: Encoding, tag: Tag, vr: Vr, len: u32) {
    let put16 = |out: &mut Vec<u8>, v: u16| {
        if enc.big_endian {
            out.extend_from_slice(&v.to_be_bytes())
        } else {
            out.extend_from_slice(&v.to_le_bytes())
        }
    };
    let put32 = |out: &mut Vec<u8>, v: u32| {
        if enc.big_endian {
            out.extend_from_slice(&v.to_be_bytes())
        } else {
            out.extend_from_slice(&v.to_le_bytes())
        }
    };
    put16(out, tag.group());
    put16(out, tag.element());
    if tag.group() == 0xFFFE {
        put32(out, len);
    } else if enc.explicit_vr {
        out.extend_from_slice(&vr.0);
        if vr.has_long_length() {
            out.extend_from_slice(&[0, 0]);
            put32(out, len);
        } else {
            put16(out, len as u16);
        }
    } else {
        put32(out, len);
    }
}

/// A CT-like data set with a nested sequence of undefined length, a private element and
/// (optionally encapsulated) pixel data.
fn sample(enc: Encoding, encapsulated: bool) -> Vec<u8> {
    let mut d = Vec::new();
    write_str(
        &mut d,
        enc,
        tags::SPECIFIC_CHARACTER_SET,
        Vr::CS,
        "ISO_IR 100",
    );
    write_str(
        &mut d,
        enc,
        tags::SOP_CLASS_UID,
        Vr::UI,
        "1.2.840.10008.5.1.4.1.1.2",
    );
    write_str(&mut d, enc, tags::SOP_INSTANCE_UID, Vr::UI, "1.2.3.4.5");
    write_str(&mut d, enc, tags::STUDY_DATE, Vr::DA, "20260101");
    // Referenced Study Sequence (0008,1110), undefined length, one item of undefined length.
    header(&mut d, enc, Tag::new(0x0008, 0x1110), Vr::SQ, 0xFFFF_FFFF);
    header(&mut d, enc, tags::ITEM, Vr::UN, 0xFFFF_FFFF);
    write_str(&mut d, enc, Tag::new(0x0008, 0x1150), Vr::UI, "1.2.3");
    write_str(&mut d, enc, tags::PATIENT_NAME, Vr::PN, "NESTED^NOT^TOP");
    header(&mut d, enc, tags::ITEM_DELIMITATION, Vr::UN, 0);
    header(&mut d, enc, tags::SEQUENCE_DELIMITATION, Vr::UN, 0);
    write_element(&mut d, enc, tags::PATIENT_NAME, Vr::PN, b"M\xfcller^Hans");
    write_str(&mut d, enc, tags::PATIENT_ID, Vr::LO, "PID1");
    write_element(&mut d, enc, Tag::new(0x0009, 0x1001), Vr::LO, b"private");
    write_str(&mut d, enc, tags::STUDY_INSTANCE_UID, Vr::UI, "1.2.3.4");
    write_u16(&mut d, enc, tags::ROWS, &[512]);
    if encapsulated {
        header(&mut d, enc, tags::PIXEL_DATA, Vr::OB, 0xFFFF_FFFF);
        header(&mut d, enc, tags::ITEM, Vr::UN, 0);
        header(&mut d, enc, tags::ITEM, Vr::UN, 6);
        d.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        header(&mut d, enc, tags::SEQUENCE_DELIMITATION, Vr::UN, 0);
    } else {
        write_element(&mut d, enc, tags::PIXEL_DATA, Vr::OW, &[7u8; 1000]);
    }
    d
}

fn index_capture() -> Capture {
    Capture::Tags {
        tags: vec![
            tags::SOP_INSTANCE_UID,
            tags::PATIENT_NAME,
            tags::STUDY_INSTANCE_UID,
            tags::ROWS,
        ],
        max_len: 1024,
    }
}

#[test]
fn captures_top_level_only_in_every_layout() {
    for enc in [
        Encoding::IMPLICIT_LE,
        Encoding::EXPLICIT_LE,
        Encoding::EXPLICIT_BE,
    ] {
        for encapsulated in [false, true] {
            if encapsulated && !enc.explicit_vr {
                continue;
            }
            let data = sample(enc, encapsulated);
            let w = walk_all(info(enc), index_capture(), &data).unwrap();
            assert_eq!(w.length, data.len() as u64);
            assert_eq!(w.get(tags::SOP_INSTANCE_UID).unwrap().value, b"1.2.3.4.5\0");
            assert_eq!(w.get(tags::PATIENT_NAME).unwrap().value, b"M\xfcller^Hans ");
            assert_eq!(w.get(tags::ROWS).unwrap().value, 512u16.to_le_bytes());
            assert_eq!(w.get(tags::ROWS).unwrap().vr, Vr::US);
            assert_eq!(w.elements.len(), 4, "{enc:?}: {:?}", w.elements);
            assert!(w.pixel_data_offset.is_some());
        }
    }
}

#[test]
fn truncation_inside_an_element_is_an_error() {
    let data = sample(Encoding::EXPLICIT_LE, true);
    // Where the top-level elements end: a cut there leaves a shorter but valid data set.
    let all = walk_all(
        info(Encoding::EXPLICIT_LE),
        Capture::All { max_len: 0 },
        &data,
    )
    .unwrap();
    let mut boundaries = Vec::new();
    for cut in 1..data.len() {
        if walk_all(info(Encoding::EXPLICIT_LE), index_capture(), &data[..cut]).is_ok() {
            boundaries.push(cut);
        }
    }
    // One boundary per top-level element but the last, and none inside the sequence.
    assert_eq!(boundaries.len(), all.elements.len() - 1, "{boundaries:?}");
}

#[test]
fn garbage_is_refused() {
    let r = walk_all(
        info(Encoding::EXPLICIT_LE),
        index_capture(),
        b"\x08\x00\x18\x00ZZ\x02\x00ab",
    );
    assert!(matches!(
        r.unwrap_err().kind,
        WalkErrorKind::InvalidVr { .. }
    ));
    // An element that claims more bytes than follow.
    let mut d = Vec::new();
    header(&mut d, Encoding::EXPLICIT_LE, tags::PIXEL_DATA, Vr::OB, 100);
    d.extend_from_slice(&[0; 10]);
    let r = walk_all(info(Encoding::EXPLICIT_LE), index_capture(), &d);
    assert!(matches!(
        r.unwrap_err().kind,
        WalkErrorKind::TruncatedValue { .. }
    ));
}

#[test]
fn nesting_is_bounded() {
    let mut d = Vec::new();
    for _ in 0..100 {
        header(
            &mut d,
            Encoding::EXPLICIT_LE,
            Tag::new(0x0008, 0x1110),
            Vr::SQ,
            0xFFFF_FFFF,
        );
        header(
            &mut d,
            Encoding::EXPLICIT_LE,
            tags::ITEM,
            Vr::UN,
            0xFFFF_FFFF,
        );
    }
    let r = walk_all(info(Encoding::EXPLICIT_LE), index_capture(), &d);
    assert!(matches!(r.unwrap_err().kind, WalkErrorKind::TooDeep));
}

#[test]
fn deflated_data_sets_are_inflated() {
    use std::io::Write;
    let data = sample(Encoding::EXPLICIT_LE, false);
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&data).unwrap();
    let deflated = z.finish().unwrap();
    let ts = syntax_info(crate::ts::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
    let mut walker = Walker::new(ts, index_capture());
    for chunk in deflated.chunks(7) {
        walker.feed(chunk).unwrap();
    }
    let w = walker.finish().unwrap();
    assert_eq!(w.length, data.len() as u64);
    assert_eq!(w.get(tags::PATIENT_ID), None);
    assert_eq!(w.get(tags::STUDY_INSTANCE_UID).unwrap().value, b"1.2.3.4\0");
    let mut walker = Walker::new(ts, index_capture());
    walker.feed(&deflated[..deflated.len() / 2]).unwrap();
    assert!(walker.finish().is_err());
}

#[test]
fn capture_all_reports_sequences_empty() {
    let data = sample(Encoding::IMPLICIT_LE, false);
    let w = walk_all(
        info(Encoding::IMPLICIT_LE),
        Capture::All { max_len: 64 },
        &data,
    )
    .unwrap();
    let seq = w.get(Tag::new(0x0008, 0x1110)).unwrap();
    assert_eq!(seq.vr, Vr::SQ);
    assert!(seq.value.is_empty());
    // Pixel data is larger than the cap: present, value not kept.
    assert!(w.get(tags::PIXEL_DATA).unwrap().value.is_empty());
}

proptest! {
    #[test]
    fn any_split_gives_the_same_walk(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
        let data = sample(Encoding::EXPLICIT_LE, true);
        let whole = walk_all(info(Encoding::EXPLICIT_LE), index_capture(), &data).unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % data.len()).collect();
        cuts.sort();
        let mut walker = Walker::new(info(Encoding::EXPLICIT_LE), index_capture());
        let mut last = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            walker.feed(&data[last..c]).unwrap();
            last = c;
        }
        let split = walker.finish().unwrap();
        prop_assert_eq!(split.elements, whole.elements);
        prop_assert_eq!(split.length, whole.length);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for enc in [Encoding::IMPLICIT_LE, Encoding::EXPLICIT_LE, Encoding::EXPLICIT_BE] {
            let _ = walk_all(info(enc), Capture::All { max_len: 64 }, &bytes);
        }
    }
}
