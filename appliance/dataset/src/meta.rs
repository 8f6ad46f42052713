//! The DICOM Part 10 file header: 128-byte preamble, `DICM`, and the group 0002 file meta
//! information, always in Explicit VR Little Endian (PS3.10 7.1).

use std::io::Read;

use crate::encode::{trim_padding, write_element, write_str};
use crate::tag::{Tag, Vr, tags};
use crate::ts::Encoding;

/// Outpost's implementation class UID (a UUID-derived UID under the 2.25 root).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.260815934779913478311271526302925733507";
/// Outpost's implementation version name, at most 16 characters.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("OUTPOST_", env!("CARGO_PKG_VERSION"));

/// Largest file meta group accepted when reading; real ones are a few hundred bytes.
const MAX_META_LENGTH: u32 = 64 * 1024;

/// The parts of the file meta information Outpost uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
    pub source_ae_title: Option<String>,
    /// Offset of the data set from the start of the file.
    pub dataset_offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("not a DICOM Part 10 file: no DICM marker after the 128-byte preamble")]
    NoMarker,
    #[error("file meta information is truncated or unreadable: {0}")]
    Io(#[from] std::io::Error),
    #[error("file meta information is malformed: {0}")]
    Malformed(String),
    #[error("file meta information lacks {0}")]
    Missing(&'static str),
}

/// Encodes a complete Part 10 header for a data set about to follow it.
pub fn encode_file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
    source_ae_title: Option<&str>,
) -> Vec<u8> {
    let enc = Encoding::EXPLICIT_LE;
    let mut group = Vec::with_capacity(256);
    write_element(&mut group, enc, tags::FILE_META_VERSION, Vr::OB, &[0, 1]);
    write_str(
        &mut group,
        enc,
        tags::MEDIA_STORAGE_SOP_CLASS_UID,
        Vr::UI,
        sop_class_uid,
    );
    write_str(
        &mut group,
        enc,
        tags::MEDIA_STORAGE_SOP_INSTANCE_UID,
        Vr::UI,
        sop_instance_uid,
    );
    write_str(
        &mut group,
        enc,
        tags::TRANSFER_SYNTAX_UID,
        Vr::UI,
        transfer_syntax,
    );
    write_str(
        &mut group,
        enc,
        tags::IMPLEMENTATION_CLASS_UID,
        Vr::UI,
        IMPLEMENTATION_CLASS_UID,
    );
    write_str(
        &mut group,
        enc,
        tags::IMPLEMENTATION_VERSION_NAME,
        Vr::SH,
        IMPLEMENTATION_VERSION_NAME,
    );
    if let Some(ae) = source_ae_title.filter(|ae| !ae.is_empty()) {
        write_str(&mut group, enc, tags::SOURCE_AE_TITLE, Vr::AE, ae);
    }
    let mut out = Vec::with_capacity(128 + 4 + 12 + group.len());
    out.resize(128, 0);
    out.extend_from_slice(b"DICM");
    write_element(
        &mut out,
        enc,
        tags::FILE_META_GROUP_LENGTH,
        Vr::UL,
        &(group.len() as u32).to_le_bytes(),
    );
    out.extend_from_slice(&group);
    out
}

/// Reads the Part 10 header from the start of a file, leaving the reader at the data set.
pub fn read_file_meta(reader: &mut impl Read) -> Result<FileMeta, MetaError> {
    let mut preamble = [0u8; 132];
    reader.read_exact(&mut preamble)?;
    if &preamble[128..132] != b"DICM" {
        return Err(MetaError::NoMarker);
    }
    let mut offset = 132u64;
    let mut group_end: Option<u64> = None;
    let (mut sop_class, mut sop_instance, mut ts, mut source) = (None, None, None, None);
    loop {
        if group_end.is_some_and(|end| offset >= end) {
            break;
        }
        let mut header = [0u8; 8];
        if group_end.is_none() {
            // Without a group length the group ends at the first tag outside group 0002,
            // so peek at the tag before consuming it.
            reader.read_exact(&mut header[..2])?;
            if u16::from_le_bytes([header[0], header[1]]) != 0x0002 {
                return Err(MetaError::Malformed(
                    "file meta information has no group length and cannot be delimited".into(),
                ));
            }
            reader.read_exact(&mut header[2..])?;
        } else {
            reader.read_exact(&mut header)?;
        }
        offset += 8;
        let tag = Tag::new(
            u16::from_le_bytes([header[0], header[1]]),
            u16::from_le_bytes([header[2], header[3]]),
        );
        if tag.group() != 0x0002 {
            return Err(MetaError::Malformed(format!(
                "element {tag} inside the file meta group"
            )));
        }
        let vr = Vr::from_bytes([header[4], header[5]]).ok_or_else(|| {
            MetaError::Malformed(format!(
                "element {tag} has an invalid VR {:?}",
                &header[4..6]
            ))
        })?;
        let length = if vr.has_long_length() {
            let mut l = [0u8; 4];
            reader.read_exact(&mut l)?;
            offset += 4;
            u32::from_le_bytes(l)
        } else {
            u32::from(u16::from_le_bytes([header[6], header[7]]))
        };
        if length > MAX_META_LENGTH {
            return Err(MetaError::Malformed(format!(
                "element {tag} claims {length} bytes"
            )));
        }
        let mut value = vec![0u8; length as usize];
        reader.read_exact(&mut value)?;
        offset += u64::from(length);
        let text = || String::from_utf8_lossy(trim_padding(&value)).into_owned();
        match tag {
            tags::FILE_META_GROUP_LENGTH if value.len() == 4 => {
                let len = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
                if len > MAX_META_LENGTH {
                    return Err(MetaError::Malformed(format!(
                        "file meta group length {len} is implausible"
                    )));
                }
                group_end = Some(offset + u64::from(len));
            }
            tags::MEDIA_STORAGE_SOP_CLASS_UID => sop_class = Some(text()),
            tags::MEDIA_STORAGE_SOP_INSTANCE_UID => sop_instance = Some(text()),
            tags::TRANSFER_SYNTAX_UID => ts = Some(text()),
            tags::SOURCE_AE_TITLE => source = Some(text()),
            _ => {}
        }
    }
    Ok(FileMeta {
        sop_class_uid: sop_class
            .ok_or(MetaError::Missing("MediaStorageSOPClassUID (0002,0002)"))?,
        sop_instance_uid: sop_instance
            .ok_or(MetaError::Missing("MediaStorageSOPInstanceUID (0002,0003)"))?,
        transfer_syntax: ts.ok_or(MetaError::Missing("TransferSyntaxUID (0002,0010)"))?,
        source_ae_title: source.filter(|s| !s.is_empty()),
        dataset_offset: offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode_file_meta(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
            Some("CT1"),
        );
        let meta = read_file_meta(&mut &bytes[..]).unwrap();
        assert_eq!(meta.sop_class_uid, "1.2.840.10008.5.1.4.1.1.2");
        assert_eq!(meta.sop_instance_uid, "1.2.3.4");
        assert_eq!(meta.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(meta.source_ae_title.as_deref(), Some("CT1"));
        assert_eq!(meta.dataset_offset, bytes.len() as u64);
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
    }

    #[test]
    fn refuses_non_dicom() {
        let bytes = [0u8; 200];
        assert!(matches!(
            read_file_meta(&mut &bytes[..]),
            Err(MetaError::NoMarker)
        ));
    }
}
