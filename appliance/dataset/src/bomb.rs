//! Deflate bombs for tests: a Deflated Explicit VR Little Endian instance whose data set ends
//! with a private OB of any number of zeros, built in a few megabytes without the inflated
//! data set ever existing in memory. (Feature `synth`.)
//!
//! The deflate stream is pieced together from independently compressed parts: each part
//! comes from a fresh compressor and ends with a sync flush (byte-aligned, not final), so its
//! back-references stay inside it and the parts concatenate into one valid stream. One
//! megabyte of zeros is compressed once and repeated, so even a 2 GB bomb costs one megabyte
//! of compression work.

use flate2::{Compress, Compression, FlushCompress};

use crate::encode::{write_element, write_str};
use crate::meta::encode_file_meta;
use crate::synth::SynthInstance;
use crate::tag::{Tag, Vr};
use crate::ts::{DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, Encoding};

/// The private creator and element that carry the zeros; group 7FE1 sorts after Pixel Data,
/// so the zeros are the last bytes of the data set.
pub const BOMB_CREATOR: Tag = Tag::new(0x7FE1, 0x0010);
pub const BOMB_ELEMENT: Tag = Tag::new(0x7FE1, 0x1010);

const CHUNK: usize = 1 << 20;

/// The inflated data set up to the zeros: the instance's Explicit VR LE data set, the private
/// creator and the OB element's header announcing `zeros` bytes. The inflated data set is
/// this followed by `zeros` zero bytes.
pub fn bomb_head(inst: &SynthInstance, zeros: u32) -> Vec<u8> {
    assert!(zeros.is_multiple_of(2), "an OB value has an even length");
    let enc = Encoding::EXPLICIT_LE;
    let mut head = inst.dataset(enc);
    write_str(&mut head, enc, BOMB_CREATOR, Vr::LO, "OUTPOST BOMB");
    // The header alone: an empty value written with the OB's long-length layout, its length
    // field then set to the number of zeros that follow.
    write_element(&mut head, enc, BOMB_ELEMENT, Vr::OB, &[]);
    let n = head.len();
    head[n - 4..].copy_from_slice(&zeros.to_le_bytes());
    head
}

/// A complete Part 10 file in Deflated Explicit VR Little Endian whose data set inflates to
/// [`bomb_head`] followed by `zeros` zero bytes (`zeros` a multiple of two).
pub fn deflate_bomb(inst: &SynthInstance, zeros: u32) -> Vec<u8> {
    let mut out = encode_file_meta(
        &inst.sop_class,
        &inst.sop_uid,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        None,
    );
    out.extend(compress_part(&bomb_head(inst, zeros), FlushCompress::Sync));
    let zero_chunk = compress_part(&vec![0u8; CHUNK], FlushCompress::Sync);
    let mut left = zeros as usize;
    while left >= CHUNK {
        out.extend_from_slice(&zero_chunk);
        left -= CHUNK;
    }
    // The rest of the zeros, and the final block.
    out.extend(compress_part(&vec![0u8; left], FlushCompress::Finish));
    out
}

/// `data` raw-deflated by a fresh compressor, ended by `flush`.
fn compress_part(data: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut z = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 100 + 1024);
    loop {
        let consumed = z.total_in() as usize;
        let status = z
            .compress_vec(&data[consumed..], &mut out, flush)
            .expect("compressing into memory cannot fail");
        let done = z.total_in() as usize == data.len()
            && (status == flate2::Status::StreamEnd
                || (flush == FlushCompress::Sync && out.len() < out.capacity()));
        if done {
            return out;
        }
        out.reserve(64 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn the_bomb_inflates_to_its_head_and_zeros() {
        let inst = SynthInstance::ct(1, 1, 1, 1);
        let zeros = 3 * CHUNK as u32 + 10;
        let file = deflate_bomb(&inst, zeros);
        assert!(file.len() < 64 * 1024, "{} bytes", file.len());
        let meta = crate::meta::read_file_meta(&mut &file[..]).unwrap();
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&file[meta.dataset_offset as usize..])
            .read_to_end(&mut inflated)
            .unwrap();
        let head = bomb_head(&inst, zeros);
        assert_eq!(inflated.len(), head.len() + zeros as usize);
        assert_eq!(&inflated[..head.len()], &head[..]);
        assert!(inflated[head.len()..].iter().all(|b| *b == 0));
        let info = crate::ts::syntax_info(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
        let walked = crate::walk::walk_all(
            info,
            crate::Capture::All { max_len: 64 },
            &file[meta.dataset_offset as usize..],
        )
        .unwrap();
        assert_eq!(walked.length, inflated.len() as u64);
    }
}
