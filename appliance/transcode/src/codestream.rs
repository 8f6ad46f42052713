//! Checking compressed pixel data against the data set's own geometry before any codec sees
//! it. The memory estimate trusts Rows, Columns, Samples per Pixel and Bits Allocated, but
//! the decoders dicom-pixeldata 0.10 uses allocate by what the codestream says:
//! jpeg-decoder by the SOF's dimensions (up to 65535 x 65535 per component), OpenJPEG by the
//! SIZ's (32-bit), the RLE adapter by the header's segment count (`vec![0; n]` with `n` read
//! from the fragment) and by what each PackBits segment expands to, and the Deflated Image
//! Frame adapter inflates each fragment with no bound at all. A codestream that claims more
//! than the data set declares is refused here, so allocation stays within the estimate.

use dataset::ts::trim_uid;

use crate::TranscodeError;

/// The image geometry the data set declares.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    pub rows: u32,
    pub columns: u32,
    pub samples: u32,
    pub bits_allocated: u32,
    pub frames: u64,
}

impl Geometry {
    fn frame_bytes(&self) -> u64 {
        u64::from(self.rows)
            * u64::from(self.columns)
            * u64::from(self.samples)
            * u64::from(self.bits_allocated.div_ceil(8))
    }
}

/// Which check a stored transfer syntax's pixel data gets.
enum Family {
    Jpeg,
    Jpeg2000,
    Rle,
    DeflatedFrames,
    /// Fragments copied as they are (Encapsulated Uncompressed): nothing is allocated
    /// beyond the fragments themselves.
    Copied,
}

fn family(ts: &str) -> Option<Family> {
    Some(match trim_uid(ts) {
        "1.2.840.10008.1.2.4.50"
        | "1.2.840.10008.1.2.4.51"
        | "1.2.840.10008.1.2.4.57"
        | "1.2.840.10008.1.2.4.70" => Family::Jpeg,
        "1.2.840.10008.1.2.4.90"
        | "1.2.840.10008.1.2.4.91"
        | "1.2.840.10008.1.2.4.92"
        | "1.2.840.10008.1.2.4.93"
        | "1.2.840.10008.1.2.4.201"
        | "1.2.840.10008.1.2.4.202"
        | "1.2.840.10008.1.2.4.203" => Family::Jpeg2000,
        "1.2.840.10008.1.2.5" => Family::Rle,
        "1.2.840.10008.1.2.8.1" => Family::DeflatedFrames,
        "1.2.840.10008.1.2.1.98" => Family::Copied,
        _ => return None,
    })
}

/// Checks every fragment of the encapsulated pixel data of an instance stored in `ts`
/// against `geometry`. A syntax without a check here is refused: a codec added to the build
/// later must get its check before it may decode.
pub fn check(ts: &str, geometry: &Geometry, fragments: &[Vec<u8>]) -> Result<(), TranscodeError> {
    let Some(family) = family(ts) else {
        return Err(TranscodeError::Unchecked(trim_uid(ts).to_string()));
    };
    match family {
        Family::Jpeg => check_jpeg(geometry, fragments),
        Family::Jpeg2000 => check_jpeg2000(geometry, fragments),
        Family::Rle => check_rle(geometry, fragments),
        Family::DeflatedFrames => check_deflated_frames(geometry, fragments),
        Family::Copied => Ok(()),
    }
}

fn malformed(codec: &'static str, fragment: usize, why: impl Into<String>) -> TranscodeError {
    TranscodeError::Codestream {
        codec,
        fragment,
        why: why.into(),
    }
}

/// The dimensions a codestream claims, refused when any exceeds the data set's.
fn within(
    codec: &'static str,
    fragment: usize,
    g: &Geometry,
    (width, height, components): (u32, u32, u32),
) -> Result<(), TranscodeError> {
    if width == 0 || height == 0 || components == 0 {
        return Err(malformed(
            codec,
            fragment,
            format!("it declares {width} x {height} pixels with {components} components"),
        ));
    }
    if width > g.columns || height > g.rows || components > g.samples {
        return Err(TranscodeError::CodestreamTooLarge {
            codec,
            fragment,
            width,
            height,
            components,
            columns: g.columns,
            rows: g.rows,
            samples: g.samples,
        });
    }
    Ok(())
}

/// Which fragment byte `pos` of the concatenated fragments lies in.
fn fragment_of(fragments: &[Vec<u8>], pos: usize) -> usize {
    let mut end = 0;
    for (i, f) in fragments.iter().enumerate() {
        end += f.len();
        if pos < end {
            return i;
        }
    }
    fragments.len().saturating_sub(1)
}

/// JPEG: walks the marker segments of every codestream the way the JPEG adapter finds them
/// (the fragments concatenated, each frame starting at the next SOI), checking every SOF.
fn check_jpeg(g: &Geometry, fragments: &[Vec<u8>]) -> Result<(), TranscodeError> {
    const CODEC: &str = "JPEG";
    let data: Vec<u8> = fragments.concat();
    let mut pos = 0usize;
    let mut frames = 0u64;
    loop {
        // The next SOI: at the very start for the first frame, as the decoder requires.
        if frames > 0 {
            match data[pos..].windows(2).position(|w| w == [0xFF, 0xD8]) {
                Some(p) => pos += p,
                None => break,
            }
        }
        let fragment = fragment_of(fragments, pos);
        if data.get(pos..pos + 2) != Some(&[0xFF, 0xD8]) {
            return Err(malformed(
                CODEC,
                fragment,
                "no SOI marker where a frame begins",
            ));
        }
        pos += 2;
        let mut seen_sof = false;
        loop {
            // Markers may be preceded by fill bytes 0xFF.
            while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
                pos += 1;
            }
            let (Some(0xFF), Some(&marker)) = (data.get(pos), data.get(pos + 1)) else {
                // Truncated: the decoder fails on it, having allocated only what a checked
                // SOF allowed.
                break;
            };
            pos += 2;
            match marker {
                0xD9 => break,
                0x01 | 0xD0..=0xD8 => continue,
                _ => {}
            }
            let Some(len) = data
                .get(pos..pos + 2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            else {
                break;
            };
            if len < 2 {
                return Err(malformed(
                    CODEC,
                    fragment_of(fragments, pos),
                    format!("marker 0xFF{marker:02X} has a segment length of {len}"),
                ));
            }
            let segment = data.get(pos + 2..pos + len).unwrap_or(&[]);
            let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
            if is_sof {
                let fragment = fragment_of(fragments, pos);
                if segment.len() < 6 {
                    return Err(malformed(CODEC, fragment, "its SOF segment is truncated"));
                }
                let precision = u32::from(segment[0]);
                let height = u32::from(u16::from_be_bytes([segment[1], segment[2]]));
                let width = u32::from(u16::from_be_bytes([segment[3], segment[4]]));
                let components = u32::from(segment[5]);
                if height == 0 {
                    return Err(malformed(
                        CODEC,
                        fragment,
                        "its SOF leaves the height to a DNL marker, which is not supported",
                    ));
                }
                within(CODEC, fragment, g, (width, height, components))?;
                // Samples of more than 8 bits come out of the decoder as 16 bits.
                if precision.div_ceil(8) > g.bits_allocated.div_ceil(8) {
                    return Err(malformed(
                        CODEC,
                        fragment,
                        format!(
                            "its SOF declares {precision}-bit samples, more than Bits Allocated {}",
                            g.bits_allocated
                        ),
                    ));
                }
                seen_sof = true;
            }
            pos += len;
            if marker == 0xDA {
                // Entropy-coded data: 0xFF is followed by 0x00 (stuffing) or a restart
                // marker inside it; anything else is the next marker.
                while pos + 1 < data.len() {
                    if data[pos] == 0xFF && !matches!(data[pos + 1], 0x00 | 0xD0..=0xD7) {
                        break;
                    }
                    pos += 1;
                }
            }
        }
        if !seen_sof {
            return Err(malformed(CODEC, fragment, "a frame has no SOF marker"));
        }
        frames += 1;
        if pos >= data.len() {
            break;
        }
    }
    Ok(())
}

/// JPEG 2000: the SIZ marker segment that follows SOC, in every fragment that starts a
/// codestream (or a JP2 file around one).
fn check_jpeg2000(g: &Geometry, fragments: &[Vec<u8>]) -> Result<(), TranscodeError> {
    const CODEC: &str = "JPEG 2000";
    const SOC_SIZ: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    const JP2: [u8; 8] = [0, 0, 0, 0x0C, b'j', b'P', b' ', b' '];
    let mut checked = 0;
    for (i, f) in fragments.iter().enumerate() {
        let start = if f.starts_with(&SOC_SIZ) {
            0
        } else if f.starts_with(&JP2) {
            f.windows(4)
                .position(|w| w == SOC_SIZ)
                .ok_or_else(|| malformed(CODEC, i, "a JP2 file without a codestream"))?
        } else {
            // The continuation of a frame that began in an earlier fragment.
            continue;
        };
        // SOC, SIZ, Lsiz, Rsiz, then Xsiz Ysiz XOsiz YOsiz (32 bits each), the tile
        // geometry (4 x 32 bits), Csiz, and three bytes per component.
        let siz = f
            .get(start + 4..)
            .filter(|s| s.len() >= 38)
            .ok_or_else(|| malformed(CODEC, i, "its SIZ marker segment is truncated"))?;
        let u32_at = |o: usize| u32::from_be_bytes([siz[o], siz[o + 1], siz[o + 2], siz[o + 3]]);
        let (x, y, x0, y0) = (u32_at(4), u32_at(8), u32_at(12), u32_at(16));
        let components = u32::from(u16::from_be_bytes([siz[36], siz[37]]));
        if x0 >= x || y0 >= y {
            return Err(malformed(
                CODEC,
                i,
                format!("its SIZ has an image offset ({x0}, {y0}) outside the image ({x}, {y})"),
            ));
        }
        within(CODEC, i, g, (x - x0, y - y0, components))?;
        let per_component = siz
            .get(38..38 + 3 * components as usize)
            .ok_or_else(|| malformed(CODEC, i, "its SIZ marker segment is truncated"))?;
        for c in per_component.chunks_exact(3) {
            let depth = u32::from(c[0] & 0x7F) + 1;
            if c[1] == 0 || c[2] == 0 {
                return Err(malformed(
                    CODEC,
                    i,
                    "a component has a subsampling factor of 0",
                ));
            }
            if depth.div_ceil(8) > g.bits_allocated.div_ceil(8) {
                return Err(malformed(
                    CODEC,
                    i,
                    format!(
                        "a component has {depth}-bit samples, more than Bits Allocated {}",
                        g.bits_allocated
                    ),
                ));
            }
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(malformed(
            CODEC,
            0,
            "no fragment starts a JPEG 2000 codestream",
        ));
    }
    Ok(())
}

/// RLE: the 64-byte header of each frame's fragment (segment count and offsets), and what
/// each segment expands to, counted without expanding it.
fn check_rle(g: &Geometry, fragments: &[Vec<u8>]) -> Result<(), TranscodeError> {
    const CODEC: &str = "RLE";
    let plane = u64::from(g.rows) * u64::from(g.columns);
    // PS3.5 G.3.1: a segment decodes to Rows x Columns bytes; allow for encoders that add a
    // little, while keeping every allocation proportional to the declared geometry.
    let max_segment = 2 * plane + 256;
    let expected = u64::from(g.samples) * u64::from(g.bits_allocated.div_ceil(8));
    for (i, f) in fragments.iter().enumerate() {
        if f.len() < 64 {
            return Err(malformed(
                CODEC,
                i,
                format!("a fragment of {} bytes has no RLE header", f.len()),
            ));
        }
        let word =
            |k: usize| u32::from_le_bytes([f[4 * k], f[4 * k + 1], f[4 * k + 2], f[4 * k + 3]]);
        let segments = word(0);
        if segments == 0 || segments > 15 || u64::from(segments) < expected {
            return Err(malformed(
                CODEC,
                i,
                format!(
                    "its header declares {segments} segments; the data set needs {expected} (at most 15)"
                ),
            ));
        }
        let mut offsets: Vec<usize> = (1..=segments as usize).map(|k| word(k) as usize).collect();
        offsets.push(f.len());
        for (s, w) in offsets.windows(2).enumerate() {
            if w[0] < 64 || w[0] > w[1] {
                return Err(malformed(
                    CODEC,
                    i,
                    format!(
                        "segment {} has offsets {}..{} outside the fragment",
                        s + 1,
                        w[0],
                        w[1]
                    ),
                ));
            }
            let decoded = packbits_length(&f[w[0]..w[1]], max_segment);
            if decoded > max_segment {
                return Err(malformed(
                    CODEC,
                    i,
                    format!(
                        "segment {} expands to more than {decoded} bytes, beyond {} Rows x {} Columns",
                        s + 1,
                        g.rows,
                        g.columns
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The bytes a PackBits segment decodes to, counted the way the RLE adapter decodes it,
/// stopping once past `cap`.
fn packbits_length(segment: &[u8], cap: u64) -> u64 {
    let (mut pos, mut out) = (0usize, 0u64);
    while pos < segment.len() && out <= cap {
        let h = segment[pos] as i8;
        pos += 1;
        if h >= 0 {
            let n = h as usize + 1;
            out += n.min(segment.len() - pos) as u64;
            pos += n;
        } else if h != -128 {
            out += (1 - isize::from(h)) as u64;
            pos += 1;
        }
    }
    out
}

/// Deflated Image Frame Compression: each fragment is one deflated frame, and none may
/// inflate to more than a frame's bytes.
fn check_deflated_frames(g: &Geometry, fragments: &[Vec<u8>]) -> Result<(), TranscodeError> {
    const CODEC: &str = "Deflated Image Frame";
    let frame = g.frame_bytes().next_multiple_of(2);
    for (i, f) in fragments.iter().enumerate() {
        match crate::inflate::inflated_size(f, frame) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(malformed(
                    CODEC,
                    i,
                    format!("it inflates to more than a frame's {frame} bytes"),
                ));
            }
            Err(e) => return Err(malformed(CODEC, i, e.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const G: Geometry = Geometry {
        rows: 16,
        columns: 16,
        samples: 1,
        bits_allocated: 8,
        frames: 1,
    };

    /// A JPEG codestream with just the markers the walk looks at: SOI, SOF0, SOS with a
    /// little entropy-coded data (with a stuffed 0xFF), EOI.
    pub(crate) fn jpeg(width: u16, height: u16) -> Vec<u8> {
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8];
        j.extend_from_slice(&height.to_be_bytes());
        j.extend_from_slice(&width.to_be_bytes());
        j.extend_from_slice(&[1, 1, 0x11, 0]);
        j.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0x3F, 0]);
        j.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34]);
        j.extend_from_slice(&[0xFF, 0xD9]);
        j
    }

    pub(crate) fn j2k(width: u32, height: u32) -> Vec<u8> {
        let mut j = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [width, height, 0, 0, width, height, 0, 0] {
            j.extend_from_slice(&v.to_be_bytes());
        }
        j.extend_from_slice(&[0, 1, 7, 1, 1]);
        j.extend_from_slice(&[0xFF, 0xD9]);
        j
    }

    #[test]
    fn codestreams_within_the_geometry_pass() {
        check("1.2.840.10008.1.2.4.50", &G, &[jpeg(16, 16)]).unwrap();
        check(
            "1.2.840.10008.1.2.4.50",
            &G,
            &[[jpeg(16, 16), jpeg(8, 8)].concat()],
        )
        .unwrap();
        check("1.2.840.10008.1.2.4.90", &G, &[j2k(16, 16)]).unwrap();
        let mut rle = vec![0u8; 64];
        rle[0] = 1;
        rle[4] = 64;
        // 256 bytes of zeros: two repeat runs of 128.
        rle.extend_from_slice(&[0x81, 0, 0x81, 0]);
        check("1.2.840.10008.1.2.5", &G, &[rle]).unwrap();
    }

    #[test]
    fn codestreams_claiming_more_than_the_data_set_are_refused() {
        let second_frame_too_large = [jpeg(16, 16), jpeg(16, 60000)].concat();
        for (ts, fragments) in [
            ("1.2.840.10008.1.2.4.50", vec![jpeg(60000, 60000)]),
            ("1.2.840.10008.1.2.4.70", vec![second_frame_too_large]),
            ("1.2.840.10008.1.2.4.91", vec![j2k(16, 1 << 30)]),
        ] {
            let r = check(ts, &G, &fragments);
            assert!(
                matches!(r, Err(TranscodeError::CodestreamTooLarge { .. })),
                "{ts}: {r:?}"
            );
        }
        let mut rle = vec![0u8; 64];
        rle[0..4].copy_from_slice(&0x4000_0000u32.to_le_bytes());
        let r = check("1.2.840.10008.1.2.5", &G, &[rle]);
        assert!(matches!(r, Err(TranscodeError::Codestream { .. })), "{r:?}");
        // One segment of 2 MB of zeros from 32 KB of repeat runs.
        let mut rle = vec![0u8; 64];
        rle[0] = 1;
        rle[4] = 64;
        for _ in 0..16_384 {
            rle.extend_from_slice(&[0x81, 0]);
        }
        let r = check("1.2.840.10008.1.2.5", &G, &[rle]);
        assert!(matches!(r, Err(TranscodeError::Codestream { .. })), "{r:?}");
        assert!(matches!(
            check("1.2.840.10008.1.2.4.80", &G, &[jpeg(16, 16)]),
            Err(TranscodeError::Unchecked(_))
        ));
    }
}
