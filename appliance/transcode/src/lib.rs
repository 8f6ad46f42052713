//! Converting a stored instance into a native transfer syntax (Explicit or Implicit VR Little
//! Endian) for a receiver that does not accept the stored one.
//!
//! This is the only place in Outpost that loads an instance into memory, so it is bounded:
//! the caller states a memory limit and instances whose decompressed size would exceed it are
//! refused with the reason, before anything is decoded. The ingest path never transcodes.
//!
//! Codecs: JPEG baseline/extended/lossless, RLE, deflate (pure Rust) and JPEG 2000
//! (OpenJPEG), as dicom-pixeldata provides them. Text values are decoded and re-encoded by
//! dicom-object, which does not support ISO 2022 code extensions.

use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, is_native, trim_uid};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("target {0} is not a native transfer syntax")]
    Target(String),
    #[error("no codec in this build decodes transfer syntax {0}")]
    NoCodec(String),
    #[error("decompressing needs about {needed_mb} MB, above the limit of {limit_mb} MB")]
    TooLarge { needed_mb: u64, limit_mb: u64 },
    #[error("cannot read the stored instance: {0}")]
    Read(String),
    #[error("cannot decode the pixel data: {0}")]
    Decode(String),
    #[error("cannot encode the data set: {0}")]
    Write(String),
}

/// Whether an instance stored in `stored` can be delivered in `target` by this crate.
pub fn can_convert(stored: &str, target: &str) -> bool {
    let (stored, target) = (trim_uid(stored), trim_uid(target));
    if stored == target {
        return true;
    }
    if !matches!(
        target,
        EXPLICIT_VR_LITTLE_ENDIAN | IMPLICIT_VR_LITTLE_ENDIAN
    ) {
        return false;
    }
    TransferSyntaxRegistry
        .get(stored)
        .is_some_and(|ts| is_native(stored) || ts.can_decode_all())
}

/// Decoded pixel data bytes an instance would need, from its image attributes.
fn native_size(file: &[u8]) -> Result<u64, TranscodeError> {
    use dataset::{Capture, Tag, tags, walk::walk_all};
    let mut reader = file;
    let meta = dataset::meta::read_file_meta(&mut reader)
        .map_err(|e| TranscodeError::Read(e.to_string()))?;
    let info = dataset::ts::syntax_info(&meta.transfer_syntax)
        .ok_or_else(|| TranscodeError::NoCodec(meta.transfer_syntax.clone()))?;
    let samples = Tag::new(0x0028, 0x0002);
    let wanted = vec![
        samples,
        tags::NUMBER_OF_FRAMES,
        tags::ROWS,
        tags::COLUMNS,
        tags::BITS_ALLOCATED,
    ];
    let walked = walk_all(
        info,
        Capture::Tags {
            tags: wanted,
            max_len: 64,
        },
        reader,
    )
    .map_err(|e| TranscodeError::Read(e.to_string()))?;
    let us = |tag| {
        walked
            .get(tag)
            .and_then(|e| {
                e.value
                    .first_chunk::<2>()
                    .map(|b| u64::from(u16::from_le_bytes(*b)))
            })
            .unwrap_or(1)
    };
    let frames = walked
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| {
            String::from_utf8_lossy(dataset::encode::trim_padding(&e.value))
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(1);
    Ok(us(tags::ROWS)
        * us(tags::COLUMNS)
        * us(samples).max(1)
        * frames.max(1)
        * us(tags::BITS_ALLOCATED).div_ceil(8))
}

/// Converts a whole Part 10 file to a data set encoded in `target`, refusing when the
/// conversion would need more than `limit` bytes of memory (the file, the decoded pixels and
/// the encoded output).
pub fn to_native(file: &[u8], target: &str, limit: u64) -> Result<Vec<u8>, TranscodeError> {
    let target = trim_uid(target);
    if !matches!(
        target,
        EXPLICIT_VR_LITTLE_ENDIAN | IMPLICIT_VR_LITTLE_ENDIAN
    ) {
        return Err(TranscodeError::Target(target.to_string()));
    }
    let stored = dataset::meta::read_file_meta(&mut &file[..])
        .map_err(|e| TranscodeError::Read(e.to_string()))?
        .transfer_syntax;
    if !can_convert(&stored, target) {
        return Err(TranscodeError::NoCodec(stored));
    }
    let needed = file.len() as u64 + 2 * native_size(file)?;
    if needed > limit {
        return Err(TranscodeError::TooLarge {
            needed_mb: needed.div_ceil(1024 * 1024),
            limit_mb: limit / (1024 * 1024),
        });
    }
    let mut obj = OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(file)
        .map_err(|e| TranscodeError::Read(e.to_string()))?;
    let ts = TransferSyntaxRegistry
        .get(target)
        .expect("native syntaxes are always registered");
    obj.transcode(ts)
        .map_err(|e| TranscodeError::Decode(e.to_string()))?;
    let mut out = Vec::new();
    obj.write_dataset(&mut out)
        .map_err(|e| TranscodeError::Write(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataset::synth::SynthInstance;
    use dataset::{Capture, Encoding, tags, ts::syntax_info, walk::walk_all};

    #[test]
    fn explicit_to_implicit_keeps_the_attributes() {
        let inst = SynthInstance::ct(1, 1, 1, 1);
        let file = inst.part10(EXPLICIT_VR_LITTLE_ENDIAN, Encoding::EXPLICIT_LE);
        let out = to_native(&file, IMPLICIT_VR_LITTLE_ENDIAN, 1 << 30).unwrap();
        assert_eq!(out, inst.dataset(Encoding::IMPLICIT_LE));
        let w = walk_all(
            syntax_info(IMPLICIT_VR_LITTLE_ENDIAN).unwrap(),
            Capture::All { max_len: 1 << 20 },
            &out,
        )
        .unwrap();
        assert_eq!(
            w.get(tags::PIXEL_DATA).unwrap().value.len(),
            inst.pixel_bytes
        );
    }

    #[test]
    fn refuses_what_does_not_fit_or_has_no_codec() {
        let mut inst = SynthInstance::ct(1, 1, 1, 1);
        inst.rows = 1024;
        inst.columns = 1024;
        let file = inst.part10(EXPLICIT_VR_LITTLE_ENDIAN, Encoding::EXPLICIT_LE);
        let r = to_native(&file, IMPLICIT_VR_LITTLE_ENDIAN, 1 << 20);
        assert!(
            matches!(
                r,
                Err(TranscodeError::TooLarge {
                    needed_mb: 5,
                    limit_mb: 1
                })
            ),
            "{r:?}"
        );
        assert!(can_convert(
            "1.2.840.10008.1.2.4.50",
            EXPLICIT_VR_LITTLE_ENDIAN
        ));
        assert!(can_convert(
            "1.2.840.10008.1.2.5",
            IMPLICIT_VR_LITTLE_ENDIAN
        ));
        assert!(!can_convert(
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.90"
        ));
        // MPEG-2 video has no decoder here.
        assert!(!can_convert(
            "1.2.840.10008.1.2.4.100",
            EXPLICIT_VR_LITTLE_ENDIAN
        ));
    }
}
