//! Converting a stored instance into a native transfer syntax (Explicit or Implicit VR Little
//! Endian) for a receiver that does not accept the stored one.
//!
//! Deflated Explicit VR Little Endian becomes Explicit VR Little Endian as a stream
//! ([`inflate::Inflate`]): no object model, constant memory whatever it inflates to. Every
//! other conversion goes through dicom-object in memory ([`to_native`]), the only place in
//! Outpost that loads an instance, so it is bounded: the caller states a memory limit, and
//! instances whose decoded size would exceed it are refused with the reason before anything
//! is decoded. A deflated data set is counted while it inflates and given up at the limit;
//! compressed pixel data is checked against the data set's geometry ([`codestream`]) so no
//! codec allocates by a codestream's own, larger, dimensions. The ingest path never
//! transcodes.
//!
//! Codecs: JPEG baseline/extended/lossless, RLE, deflate (pure Rust) and JPEG 2000
//! (OpenJPEG), as dicom-pixeldata provides them. Text values are decoded and re-encoded by
//! dicom-object, which does not support ISO 2022 code extensions.

pub mod codestream;
pub mod inflate;

use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, is_native, trim_uid};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::OpenFileOptions;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use codestream::Geometry;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("target {0} is not a native transfer syntax")]
    Target(String),
    #[error("no codec in this build decodes transfer syntax {0}")]
    NoCodec(String),
    #[error("decompressing needs about {needed_mb} MB, above the limit of {limit_mb} MB")]
    TooLarge { needed_mb: u64, limit_mb: u64 },
    /// Counted while inflating, and given up at the limit: the whole size is not known.
    #[error(
        "the deflated data set inflates to more than {inflated_mb} MB, which with the file \
         and the re-encoded copy is above the limit of {limit_mb} MB; a receiver that accepts \
         Explicit VR Little Endian gets it streamed instead"
    )]
    InflatesBeyond { inflated_mb: u64, limit_mb: u64 },
    #[error(
        "the {codec} codestream in pixel data fragment {fragment} declares {width} x {height} \
         pixels with {components} components, more than the data set's Columns {columns}, \
         Rows {rows}, Samples per Pixel {samples}; it is not decoded"
    )]
    CodestreamTooLarge {
        codec: &'static str,
        fragment: usize,
        width: u32,
        height: u32,
        components: u32,
        columns: u32,
        rows: u32,
        samples: u32,
    },
    #[error("the {codec} pixel data in fragment {fragment} is malformed: {why}")]
    Codestream {
        codec: &'static str,
        fragment: usize,
        why: String,
    },
    #[error(
        "pixel data in transfer syntax {0} has no codestream check in this build, so it is not \
         decoded"
    )]
    Unchecked(String),
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

/// The image geometry an instance declares (1 for what it leaves out).
fn geometry(file: &[u8]) -> Result<Geometry, TranscodeError> {
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
                    .map(|b| u32::from(u16::from_le_bytes(*b)))
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
    Ok(Geometry {
        rows: us(tags::ROWS),
        columns: us(tags::COLUMNS),
        samples: us(samples).max(1),
        bits_allocated: us(tags::BITS_ALLOCATED),
        frames: frames.max(1),
    })
}

/// Decoded pixel data bytes an instance would need, from its image attributes.
fn native_size(g: &Geometry) -> u64 {
    u64::from(g.rows)
        * u64::from(g.columns)
        * u64::from(g.samples)
        * g.frames
        * u64::from(g.bits_allocated.div_ceil(8))
}

/// Converts a whole Part 10 file to a data set encoded in `target`, refusing when the
/// conversion would need more than `limit` bytes of memory (the file, the decoded pixels and
/// the encoded output). A deflated data set is first inflated into nothing but a counter,
/// which gives up at the limit; compressed pixel data is checked against the data set's
/// geometry before a codec sees it.
pub fn to_native(file: &[u8], target: &str, limit: u64) -> Result<Vec<u8>, TranscodeError> {
    let target = trim_uid(target);
    if !matches!(
        target,
        EXPLICIT_VR_LITTLE_ENDIAN | IMPLICIT_VR_LITTLE_ENDIAN
    ) {
        return Err(TranscodeError::Target(target.to_string()));
    }
    let meta = dataset::meta::read_file_meta(&mut &file[..])
        .map_err(|e| TranscodeError::Read(e.to_string()))?;
    let stored = meta.transfer_syntax;
    if !can_convert(&stored, target) {
        return Err(TranscodeError::NoCodec(stored));
    }
    let info =
        dataset::ts::syntax_info(&stored).ok_or_else(|| TranscodeError::NoCodec(stored.clone()))?;
    let too_large = |needed: u64| TranscodeError::TooLarge {
        needed_mb: needed.div_ceil(1024 * 1024),
        limit_mb: limit / (1024 * 1024),
    };
    let file_len = file.len() as u64;
    // dicom-object holds the inflated data set, and writing it makes a second copy.
    let inflated = if info.deflated {
        let budget = limit.saturating_sub(file_len) / 2;
        let data = file.get(meta.dataset_offset as usize..).unwrap_or(&[]);
        match inflate::inflated_size(data, budget) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return Err(TranscodeError::InflatesBeyond {
                    inflated_mb: budget / (1024 * 1024),
                    limit_mb: limit / (1024 * 1024),
                });
            }
            Err(e) => return Err(TranscodeError::Read(e.to_string())),
        }
    } else {
        0
    };
    let geometry = geometry(file)?;
    let native = native_size(&geometry);
    let mut needed = file_len + 2 * native.max(inflated);
    if info.encapsulated {
        // The codecs' own working memory for one frame: OpenJPEG holds 32 bits a sample.
        needed += 4
            * u64::from(geometry.rows)
            * u64::from(geometry.columns)
            * u64::from(geometry.samples);
    }
    if needed > limit {
        return Err(too_large(needed));
    }
    let mut obj = OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(file)
        .map_err(|e| TranscodeError::Read(e.to_string()))?;
    if info.encapsulated
        && let Ok(pixels) = obj.element(dicom_dictionary_std::tags::PIXEL_DATA)
        && let Some(fragments) = pixels.value().fragments()
    {
        codestream::check(&stored, &geometry, fragments)?;
    }
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

    const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

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

    /// Deflated, then inflated whole by dicom-object: a 2 MB file with a 2 GB private OB of
    /// zeros, stored with 0x0000, took the process to 6.3 GB when a receiver needed Little
    /// Endian, because the limit was checked against Rows x Columns only. The OOM-kill lost
    /// the delivery's outcome, so the same entry was taken again after the restart: a crash
    /// loop. The inflated size must be counted, and the conversion refused at the limit,
    /// before dicom-object allocates any of it.
    #[test]
    fn a_deflate_bomb_is_refused_before_it_is_inflated_into_memory() {
        let inst = SynthInstance::ct(1, 1, 1, 1);
        let file = dataset::bomb::deflate_bomb(&inst, 256 << 20);
        assert!(file.len() < 1 << 20, "the bomb is {} bytes", file.len());
        let r = to_native(&file, IMPLICIT_VR_LITTLE_ENDIAN, 64 << 20);
        assert!(
            matches!(
                r,
                Err(TranscodeError::InflatesBeyond {
                    inflated_mb: 31,
                    limit_mb: 64
                })
            ),
            "{:?}",
            r.map(|v| v.len())
        );
    }

    #[test]
    fn a_deflated_instance_within_the_limit_converts_to_implicit() {
        let inst = SynthInstance::ct(1, 1, 1, 1);
        let file = dataset::bomb::deflate_bomb(&inst, 1 << 20);
        let out = to_native(&file, IMPLICIT_VR_LITTLE_ENDIAN, 64 << 20).unwrap();
        let w = walk_all(
            syntax_info(IMPLICIT_VR_LITTLE_ENDIAN).unwrap(),
            Capture::All { max_len: 1 << 20 },
            &out,
        )
        .unwrap();
        assert_eq!(
            w.get(dataset::bomb::BOMB_ELEMENT).unwrap().value,
            vec![0u8; 1 << 20]
        );
        assert_eq!(
            dataset::encode::trim_padding(&w.get(tags::SOP_INSTANCE_UID).unwrap().value),
            inst.sop_uid.as_bytes()
        );
    }

    /// A JPEG whose SOF claims 8192 x 8192 in an instance of 16 x 16: jpeg-decoder
    /// allocates by the SOF, so the estimate from Rows and Columns said nothing about what
    /// decoding it would take.
    #[test]
    fn a_jpeg_claiming_more_than_rows_and_columns_is_not_decoded() {
        let mut inst = SynthInstance::ct(1, 1, 1, 1);
        inst.pixel_bytes = 0;
        let mut file = inst.part10(JPEG_BASELINE, Encoding::EXPLICIT_LE);
        // The empty native Pixel Data element (12 bytes) becomes encapsulated pixel data:
        // an empty offset table and one fragment.
        file.truncate(file.len() - 12);
        let fragment = codestream::tests::jpeg(8192, 8192);
        file.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        file.extend_from_slice(&u32::MAX.to_le_bytes());
        file.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        file.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        file.extend_from_slice(&(fragment.len() as u32).to_le_bytes());
        file.extend_from_slice(&fragment);
        file.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let r = to_native(&file, EXPLICIT_VR_LITTLE_ENDIAN, 1 << 30);
        assert!(
            matches!(
                r,
                Err(TranscodeError::CodestreamTooLarge {
                    width: 8192,
                    height: 8192,
                    columns: 16,
                    rows: 16,
                    ..
                })
            ),
            "{:?}",
            r.map(|v| v.len())
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
