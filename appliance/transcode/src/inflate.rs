//! Inflating a Deflated Explicit VR Little Endian data set as a stream: the deflated bytes go
//! in through a fixed input buffer and the Explicit VR Little Endian data set comes out in
//! whatever pieces the reader asks for, so memory stays constant whatever the data set
//! inflates to (deflate reaches about 1000:1, so a 2 MB file can hold 2 GB).
//!
//! Deflated Explicit VR Little Endian is the Explicit VR Little Endian data set run through
//! raw deflate (PS3.5 A.5), so inflating it is the whole conversion: no element is touched.

use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};

/// Deflated bytes read from the source per refill.
const INPUT: usize = 64 * 1024;

/// A reader yielding the inflated data set of the deflated data set `source` reads.
///
/// A corrupt stream is an [`io::ErrorKind::InvalidData`] error, and a source that ends before
/// the deflate stream does is an [`io::ErrorKind::UnexpectedEof`] error: a truncated data set
/// is never passed on as if it were whole. Bytes after the end of the deflate stream are
/// ignored, as the ingest walker ignores them.
pub struct Inflate<R> {
    source: R,
    decompress: Decompress,
    input: Box<[u8]>,
    start: usize,
    end: usize,
    source_done: bool,
    ended: bool,
}

impl<R: Read> Inflate<R> {
    /// `source` positioned at the first byte of the deflated data set.
    pub fn new(source: R) -> Inflate<R> {
        Inflate {
            source,
            // Raw deflate, without a zlib header (PS3.5 A.5).
            decompress: Decompress::new(false),
            input: vec![0; INPUT].into_boxed_slice(),
            start: 0,
            end: 0,
            source_done: false,
            ended: false,
        }
    }

    /// Inflated bytes produced so far.
    pub fn total_out(&self) -> u64 {
        self.decompress.total_out()
    }
}

impl<R: Read> Read for Inflate<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.ended {
            return Ok(0);
        }
        loop {
            if self.start == self.end && !self.source_done {
                match self.source.read(&mut self.input) {
                    Ok(0) => self.source_done = true,
                    Ok(n) => (self.start, self.end) = (0, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let (before_in, before_out) = (self.decompress.total_in(), self.decompress.total_out());
            let status = self
                .decompress
                .decompress(
                    &self.input[self.start..self.end],
                    buf,
                    FlushDecompress::None,
                )
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the deflated data set is corrupt: {e}"),
                    )
                })?;
            let consumed = (self.decompress.total_in() - before_in) as usize;
            let produced = (self.decompress.total_out() - before_out) as usize;
            self.start += consumed;
            if status == Status::StreamEnd {
                self.ended = true;
                return Ok(produced);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 && self.start == self.end && self.source_done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the deflated data set ends before its deflate stream does",
                ));
            }
            if consumed == 0 && self.start < self.end {
                // Input and room for output, and still no progress: not a deflate stream
                // miniz can continue.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the deflated data set's deflate stream makes no progress",
                ));
            }
        }
    }
}

/// How many bytes the deflated data set `deflated` inflates to, counted through a small
/// buffer and given up as soon as it passes `cap`: `Ok(None)` then. Nothing inflated is kept.
pub fn inflated_size(deflated: &[u8], cap: u64) -> io::Result<Option<u64>> {
    let mut inflate = Inflate::new(deflated);
    let mut scratch = vec![0u8; INPUT];
    loop {
        let n = inflate.read(&mut scratch)?;
        if n == 0 {
            return Ok(Some(inflate.total_out()));
        }
        if inflate.total_out() > cap {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataset::bomb::{bomb_head, deflate_bomb};
    use dataset::synth::SynthInstance;

    fn deflated_part(file: &[u8]) -> &[u8] {
        let meta = dataset::meta::read_file_meta(&mut &file[..]).unwrap();
        &file[meta.dataset_offset as usize..]
    }

    #[test]
    fn inflates_to_the_explicit_le_data_set_in_any_piece_size() {
        let inst = SynthInstance::ct(1, 1, 1, 1);
        let file = deflate_bomb(&inst, 300_000);
        let mut expected = bomb_head(&inst, 300_000);
        expected.resize(expected.len() + 300_000, 0);
        for piece in [1, 7, 4096, 1 << 20] {
            let mut inflate = Inflate::new(deflated_part(&file));
            let mut out = Vec::new();
            let mut buf = vec![0u8; piece];
            loop {
                let n = inflate.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert!(out == expected, "piece size {piece}");
        }
    }

    #[test]
    fn a_truncated_or_corrupt_stream_is_an_error_not_a_short_data_set() {
        let inst = SynthInstance::ct(1, 1, 1, 1);
        let file = deflate_bomb(&inst, 300_000);
        let data = deflated_part(&file);
        let mut out = Vec::new();
        let e = Inflate::new(&data[..data.len() / 2])
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        let mut corrupt = data.to_vec();
        corrupt[0] = 0xFF; // block type 3 is reserved
        let e = Inflate::new(&corrupt[..])
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn counting_stops_at_the_cap() {
        let inst = SynthInstance::ct(1, 1, 1, 1);
        let file = deflate_bomb(&inst, 4 << 20);
        let data = deflated_part(&file);
        let whole = (bomb_head(&inst, 4 << 20).len() + (4 << 20)) as u64;
        assert_eq!(inflated_size(data, whole).unwrap(), Some(whole));
        assert_eq!(inflated_size(data, 1 << 20).unwrap(), None);
    }
}
