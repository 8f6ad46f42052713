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

/// The start of a data set that an attacker (or a broken modality) follows with repeats: the
/// four UIDs the index needs, in ascending order.
fn uids(enc: Encoding) -> Vec<u8> {
    let mut d = Vec::new();
    write_str(
        &mut d,
        enc,
        tags::SOP_CLASS_UID,
        Vr::UI,
        "1.2.840.10008.5.1.4.1.1.2",
    );
    write_str(&mut d, enc, tags::SOP_INSTANCE_UID, Vr::UI, "1.2.3.4.5");
    write_str(&mut d, enc, tags::STUDY_INSTANCE_UID, Vr::UI, "1.2.3.4");
    write_str(&mut d, enc, Tag::new(0x0020, 0x000E), Vr::UI, "1.2.3.4.1");
    d
}

/// `count` zero-length Patient Name elements, 8 bytes each in Explicit VR Little Endian.
fn empty_names(count: usize) -> Vec<u8> {
    b"\x10\x00\x10\x00PN\x00\x00".repeat(count)
}

#[test]
fn a_repeated_top_level_tag_is_refused_while_streaming() {
    // The review (finding 4) sent the UIDs followed by 10 million zero-length PatientName
    // elements: the walker kept every one of them as a captured element, an 80 MB C-STORE
    // took the process to 1.7 GB and was answered 0x0000. PS3.5 7.1 allows each tag once;
    // the walker must refuse at the second occurrence, before the rest arrives, so that what
    // it holds stays bounded by what it captures.
    let mut walker = Walker::new(info(Encoding::EXPLICIT_LE), index_capture()).require_tag_order();
    let start = uids(Encoding::EXPLICIT_LE);
    walker.feed(&start).unwrap();
    let chunk = empty_names(4096);
    let mut refused = None;
    for _ in 0..(10_000_000 / 4096) {
        if let Err(e) = walker.feed(&chunk) {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("the repeats are refused");
    // The second Patient Name starts 8 bytes after the first.
    let at = start.len() as u64 + 8;
    assert_eq!(
        e.kind,
        WalkErrorKind::RepeatedTag {
            tag: tags::PATIENT_NAME,
            at
        }
    );
    assert_eq!(
        e.kind.to_string(),
        format!(
            "element (0010,0010) repeats at byte {at}; PS3.5 7.1 allows each tag once, in ascending order"
        )
    );
    assert!(walker.offset() < start.len() as u64 + 4096 * 8 + 8);
}

#[test]
fn a_repeated_tag_in_a_deflated_data_set_is_refused_while_inflating() {
    // The same data set deflated is 569 KB on the wire and took the process to 7.3 GB: the
    // refusal must come from the inflating walker as soon as the repeat is inflated.
    let mut z = flate2::Compress::new(flate2::Compression::default(), false);
    let mut deflated = Vec::with_capacity(1 << 20);
    let mut plain = uids(Encoding::EXPLICIT_LE);
    plain.extend(empty_names(1_000_000));
    z.compress_vec(&plain, &mut deflated, flate2::FlushCompress::Finish)
        .unwrap();
    assert!(deflated.len() < 100_000, "{}", deflated.len());
    let ts = syntax_info(crate::ts::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
    let mut walker = Walker::new(ts, index_capture()).require_tag_order();
    let e = deflated
        .chunks(1000)
        .find_map(|c| walker.feed(c).err())
        .expect("the repeats are refused");
    assert!(
        matches!(e.kind, WalkErrorKind::RepeatedTag { tag, .. } if tag == tags::PATIENT_NAME),
        "{e}"
    );
}

#[test]
fn only_the_first_occurrence_of_a_tag_is_captured() {
    // Walks that tolerate repeats (stored files being checked, whatever they hold) must not
    // keep one element per repeat either: the first occurrence is the one indexed.
    let mut d = uids(Encoding::EXPLICIT_LE);
    write_str(
        &mut d,
        Encoding::EXPLICIT_LE,
        tags::PATIENT_NAME,
        Vr::PN,
        "FIRST",
    );
    d.extend(empty_names(100_000));
    write_str(
        &mut d,
        Encoding::EXPLICIT_LE,
        tags::PATIENT_NAME,
        Vr::PN,
        "LAST",
    );
    for capture in [index_capture(), Capture::All { max_len: 64 }] {
        let w = walk_all(info(Encoding::EXPLICIT_LE), capture, &d).unwrap();
        let names: Vec<_> = w
            .elements
            .iter()
            .filter(|e| e.tag == tags::PATIENT_NAME)
            .collect();
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].value, b"FIRST ");
    }
}

#[test]
fn an_isolated_misordering_is_accepted_and_noted() {
    // Real modalities occasionally write one element out of place; refusing their images
    // would stop an exam for a cosmetic fault, so one misplaced tag is accepted and noted.
    let enc = Encoding::EXPLICIT_LE;
    let mut d = uids(enc);
    let misplaced_at = d.len() as u64;
    write_str(&mut d, enc, tags::PATIENT_NAME, Vr::PN, "LATE^NAME");
    write_u16(&mut d, enc, tags::ROWS, &[512]);
    let mut walker = Walker::new(info(enc), index_capture()).require_tag_order();
    walker.feed(&d).unwrap();
    let w = walker.finish().unwrap();
    assert_eq!(w.get(tags::PATIENT_NAME).unwrap().value, b"LATE^NAME ");
    assert_eq!(
        w.misordered,
        vec![crate::walk::Misordered {
            tag: tags::PATIENT_NAME,
            after: Tag::new(0x0020, 0x000E),
            at: misplaced_at,
        }]
    );
}

#[test]
fn more_than_a_handful_of_misorderings_are_refused() {
    // Descending tags, each distinct, are as unbounded as repeats when captured all; past
    // MAX_MISORDERED breaks of ascending order the data set is not a misplaced tag but junk.
    let enc = Encoding::EXPLICIT_LE;
    let mut d = Vec::new();
    for element in (0x1000u16..0x1000 + 20).rev() {
        write_str(&mut d, enc, Tag::new(0x0009, element), Vr::LO, "X");
    }
    let mut walker = Walker::new(info(enc), Capture::All { max_len: 64 }).require_tag_order();
    let e = walker.feed(&d).unwrap_err();
    let after = Tag::new(0x0009, 0x1000 + 20 - 1 - crate::walk::MAX_MISORDERED as u16);
    let tag = Tag::new(0x0009, after.element() - 1);
    assert_eq!(
        e.kind,
        WalkErrorKind::TooManyMisordered {
            tag,
            after,
            at: (crate::walk::MAX_MISORDERED as u64 + 1) * 10,
        }
    );
    // The same bytes walked leniently are accepted (stored files are never refused for it).
    assert!(walk_all(info(enc), Capture::All { max_len: 64 }, &d).is_ok());
}

#[test]
fn a_repeated_tag_inside_an_item_is_refused_but_repeated_items_are_not() {
    // Inside one item the same rule holds (each tag once); two items of a sequence holding
    // the same tags are ordinary.
    let enc = Encoding::EXPLICIT_LE;
    let item = |d: &mut Vec<u8>, repeats: usize| {
        header(d, enc, tags::ITEM, Vr::UN, 0xFFFF_FFFF);
        for _ in 0..repeats {
            write_str(d, enc, Tag::new(0x0008, 0x1150), Vr::UI, "1.2.3");
        }
        header(d, enc, tags::ITEM_DELIMITATION, Vr::UN, 0);
    };
    let sequence = |repeats: usize| {
        let mut d = uids(enc);
        header(&mut d, enc, Tag::new(0x0040, 0xA730), Vr::SQ, 0xFFFF_FFFF);
        item(&mut d, 1);
        item(&mut d, repeats);
        header(&mut d, enc, tags::SEQUENCE_DELIMITATION, Vr::UN, 0);
        d
    };
    let strict = |d: &[u8]| {
        let mut walker = Walker::new(info(enc), index_capture()).require_tag_order();
        walker.feed(d)?;
        walker.finish()
    };
    assert!(strict(&sequence(1)).is_ok());
    let e = strict(&sequence(2)).unwrap_err();
    assert!(
        matches!(e.kind, WalkErrorKind::RepeatedTag { tag, .. } if tag == Tag::new(0x0008, 0x1150)),
        "{e}"
    );
}
