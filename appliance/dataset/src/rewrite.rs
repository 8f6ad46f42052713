//! Copying a data set with a few top-level elements replaced, as a stream: what giving a held
//! instance a study of its own takes (new Study, Series and perhaps SOP Instance UIDs), for
//! an instance of any size, in memory bounded by the chunk size.
//!
//! A first [`crate::Walker`] pass finds where the elements lie ([`crate::Walked::spans`]);
//! [`copy_replacing`] then copies the data set, writing each replacement instead of the bytes
//! of its span. A deflated data set is inflated on the way and deflated again, so the copy
//! keeps its transfer syntax; spans are offsets in the inflated data set, as the walker gives
//! them.

use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;

use crate::walk::Span;

/// One element to write in place of the bytes `span.start..span.end`.
#[derive(Clone, Debug)]
pub struct Replacement {
    pub span: Span,
    /// The whole new element, header included, in the data set's encoding.
    pub element: Vec<u8>,
}

/// Why a copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("replacements overlap or are out of order at offset {0}")]
    Overlap(u64),
    #[error("the data set ended at offset {at}, before element {tag} at {start}")]
    Truncated {
        at: u64,
        tag: crate::Tag,
        start: u64,
    },
    #[error("reading or writing the data set failed: {0}")]
    Io(#[from] io::Error),
}

/// Copies the data set read from `input` to `output` with `replacements` (sorted by offset,
/// not overlapping) applied; returns the bytes written to `output`. With `deflated`, `input`
/// is a raw deflate stream and so is what is written.
pub fn copy_replacing(
    input: impl Read,
    output: impl Write,
    replacements: &[Replacement],
    deflated: bool,
) -> Result<u64, RewriteError> {
    for pair in replacements.windows(2) {
        if pair[1].span.start < pair[0].span.end {
            return Err(RewriteError::Overlap(pair[1].span.start));
        }
    }
    if deflated {
        let mut out = Counting::new(DeflateEncoder::new(output, Compression::default()));
        copy_plain(DeflateDecoder::new(input), &mut out, replacements)?;
        let written = out.written;
        out.inner.finish()?;
        Ok(written)
    } else {
        let mut out = Counting::new(output);
        copy_plain(input, &mut out, replacements)?;
        Ok(out.written)
    }
}

const CHUNK: usize = 64 * 1024;

fn copy_plain(
    mut input: impl Read,
    output: &mut impl Write,
    replacements: &[Replacement],
) -> Result<(), RewriteError> {
    let mut buffer = vec![0u8; CHUNK];
    let mut at = 0u64;
    for r in replacements {
        copy_exact(&mut input, output, r.span.start - at, &mut buffer)
            .map_err(|e| truncated(e, at, r))?;
        at = r.span.start;
        // The old element is read past, not written.
        copy_exact(&mut input, &mut io::sink(), r.span.end - at, &mut buffer)
            .map_err(|e| truncated(e, at, r))?;
        at = r.span.end;
        output.write_all(&r.element)?;
    }
    loop {
        let n = match input.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        output.write_all(&buffer[..n])?;
    }
}

fn truncated(e: io::Error, at: u64, r: &Replacement) -> RewriteError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        RewriteError::Truncated {
            at,
            tag: r.span.tag,
            start: r.span.start,
        }
    } else {
        RewriteError::Io(e)
    }
}

/// Copies exactly `n` bytes.
fn copy_exact(
    input: &mut impl Read,
    output: &mut impl Write,
    mut n: u64,
    buffer: &mut [u8],
) -> io::Result<()> {
    while n > 0 {
        let want = buffer.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let got = match input.read(&mut buffer[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        output.write_all(&buffer[..got])?;
        n -= got as u64;
    }
    Ok(())
}

/// Counts the (uncompressed) bytes written through it.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W> Counting<W> {
    fn new(inner: W) -> Counting<W> {
        Counting { inner, written: 0 }
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::write_str;
    use crate::ts::{Encoding, syntax_info};
    use crate::{Capture, Tag, Vr, Walker, tags};

    fn dataset(enc: Encoding, study: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_str(&mut out, enc, tags::SOP_INSTANCE_UID, Vr::UI, "1.2.3.4");
        write_str(&mut out, enc, Tag::new(0x0010, 0x0020), Vr::LO, "P2");
        write_str(&mut out, enc, tags::STUDY_INSTANCE_UID, Vr::UI, study);
        write_str(&mut out, enc, tags::SERIES_INSTANCE_UID, Vr::UI, "1.2.3.6");
        crate::encode::write_element(&mut out, enc, tags::PIXEL_DATA, Vr::OW, &[7u8; 1000]);
        out
    }

    fn replace_study(data: &[u8], ts: &str, new_study: &str) -> Vec<u8> {
        let info = syntax_info(ts).unwrap();
        let mut walker = Walker::new(
            info,
            Capture::Tags {
                tags: vec![tags::STUDY_INSTANCE_UID],
                max_len: 64,
            },
        );
        walker.feed(data).unwrap();
        let walked = walker.finish().unwrap();
        let span = walked.spans[0];
        assert_eq!(span.tag, tags::STUDY_INSTANCE_UID);
        let mut element = Vec::new();
        write_str(&mut element, info.encoding, span.tag, span.vr, new_study);
        let mut out = Vec::new();
        copy_replacing(
            data,
            &mut out,
            &[Replacement { span, element }],
            info.deflated,
        )
        .unwrap();
        out
    }

    #[test]
    fn an_element_is_replaced_and_everything_else_copied_as_it_was() {
        for (ts, enc) in [
            ("1.2.840.10008.1.2", Encoding::IMPLICIT_LE),
            ("1.2.840.10008.1.2.1", Encoding::EXPLICIT_LE),
        ] {
            let before = dataset(enc, "1.2.3.5");
            let after = replace_study(&before, ts, "2.25.1234567890");
            assert_eq!(after, dataset(enc, "2.25.1234567890"), "{ts}");
        }
    }

    #[test]
    fn a_deflated_data_set_is_rewritten_and_deflated_again() {
        let plain = dataset(Encoding::EXPLICIT_LE, "1.2.3.5");
        let mut deflated = Vec::new();
        {
            let mut e = DeflateEncoder::new(&mut deflated, Compression::default());
            e.write_all(&plain).unwrap();
            e.finish().unwrap();
        }
        let after = replace_study(&deflated, "1.2.840.10008.1.2.1.99", "2.25.99");
        let mut inflated = Vec::new();
        DeflateDecoder::new(&after[..])
            .read_to_end(&mut inflated)
            .unwrap();
        assert_eq!(inflated, dataset(Encoding::EXPLICIT_LE, "2.25.99"));
    }

    #[test]
    fn a_data_set_shorter_than_its_spans_is_an_error() {
        let data = dataset(Encoding::EXPLICIT_LE, "1.2.3.5");
        let span = Span {
            tag: tags::STUDY_INSTANCE_UID,
            vr: Vr::UI,
            start: data.len() as u64 + 10,
            end: data.len() as u64 + 20,
        };
        let r = copy_replacing(
            &data[..],
            io::sink(),
            &[Replacement {
                span,
                element: Vec::new(),
            }],
            false,
        );
        assert!(matches!(r, Err(RewriteError::Truncated { .. })), "{r:?}");
    }
}
