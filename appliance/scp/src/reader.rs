//! Reading the PDUs of an established association, with P-DATA-TF values read from the
//! socket straight into the buffers the channel hands on.
//!
//! dicom-ul's reader gathers a whole PDU in its buffer, copies it out as `Bytes`, then copies
//! each value again into a new `Vec`: two copies of every data set byte, into memory freshly
//! faulted in. At one association those copies were a tenth of the process's CPU on the
//! ingest path (perf, 300 instances of 512 KB). Here a P-DATA-TF value's bytes go from the
//! socket into its own `Vec`, sized from its item header; only bytes that arrived together
//! with a header are copied, once. Every other PDU still goes through dicom-ul's reader.
//!
//! Memory follows the PDU limit as before: a value's buffer is at most the PDU's length,
//! which is refused above `max_pdu` before anything is allocated for it.

use bytes::{Buf, BytesMut};
use dicom_ul::association::Error;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, ReadError};
use snafu::GenerateImplicitData;
use tokio::io::{AsyncRead, AsyncReadExt};

/// PDU type of P-DATA-TF (PS3.8 9.3.5).
const P_DATA_TF: u8 = 0x04;
/// PDU header: type, reserved, 4-byte length.
const PDU_HEADER: usize = 6;
/// PDV item header: 4-byte length, context ID, message control header.
const ITEM_HEADER: usize = 6;
/// Most bytes read into the shared buffer at once while a header is wanted: enough for many
/// small PDUs in one read, small enough that a large value's bytes mostly bypass it.
const HEADER_READ: usize = 16 * 1024;

/// Reads PDUs from one association's stream; see the module documentation.
pub(crate) struct PduReader {
    /// Bytes read but not yet consumed: headers, small PDUs, the start of a value.
    buffer: BytesMut,
    /// The P-DATA-TF PDU being read, kept here so that a read dropped in a `select!` loses
    /// nothing.
    partial: Option<Partial>,
    max_pdu: u32,
}

struct Partial {
    /// Bytes of the PDU's body (item headers and values) not yet consumed.
    body_left: usize,
    values: Vec<PDataValue>,
    /// Bytes the last value still lacks.
    value_left: usize,
}

impl PduReader {
    pub(crate) fn new(max_pdu: u32) -> PduReader {
        PduReader {
            buffer: BytesMut::new(),
            partial: None,
            max_pdu,
        }
    }

    /// The next PDU. Cancel-safe: state changes only after a read has returned.
    pub(crate) async fn read<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Pdu, Error> {
        loop {
            let Some(partial) = self.partial.as_mut() else {
                if self.buffer.len() < PDU_HEADER {
                    self.fill(stream).await?;
                    continue;
                }
                let length = u32::from_be_bytes(self.buffer[2..6].try_into().expect("4 bytes"));
                if self.buffer[0] != P_DATA_TF || length > self.max_pdu {
                    // Anything else, and a P-DATA-TF over the limit (refused there, as before).
                    return dicom_ul::association::read_pdu_from_wire_async(
                        stream,
                        &mut self.buffer,
                        self.max_pdu,
                        true,
                    )
                    .await;
                }
                self.buffer.advance(PDU_HEADER);
                self.partial = Some(Partial {
                    body_left: length as usize,
                    values: Vec::new(),
                    value_left: 0,
                });
                continue;
            };
            if partial.value_left > 0 {
                let data = &mut partial.values.last_mut().expect("a value is open").data;
                let buffered = partial.value_left.min(self.buffer.len());
                if buffered > 0 {
                    data.extend_from_slice(&self.buffer[..buffered]);
                    self.buffer.advance(buffered);
                    partial.value_left -= buffered;
                    continue;
                }
                let want = partial.value_left as u64;
                let got = (&mut *stream)
                    .take(want)
                    .read_buf(data)
                    .await
                    .map_err(read_error)?;
                if got == 0 {
                    return Err(closed());
                }
                partial.value_left -= got;
                continue;
            }
            if partial.body_left == 0 {
                let values = std::mem::take(&mut partial.values);
                self.partial = None;
                return Ok(Pdu::PData { data: values });
            }
            if partial.body_left < ITEM_HEADER {
                return Err(invalid_length());
            }
            if self.buffer.len() < ITEM_HEADER {
                self.fill(stream).await?;
                continue;
            }
            let item_length = u32::from_be_bytes(self.buffer[0..4].try_into().expect("4 bytes"));
            if item_length < 2 {
                return Err(Error::ReceivePdu {
                    source: ReadError::InvalidItemLength {
                        length: item_length,
                    },
                });
            }
            if item_length as usize + 4 > partial.body_left {
                return Err(invalid_length());
            }
            let presentation_context_id = self.buffer[4];
            let header = self.buffer[5];
            self.buffer.advance(ITEM_HEADER);
            partial.body_left -= item_length as usize + 4;
            let len = item_length as usize - 2;
            partial.value_left = len;
            partial.values.push(PDataValue {
                presentation_context_id,
                value_type: if header & 0x01 != 0 {
                    PDataValueType::Command
                } else {
                    PDataValueType::Data
                },
                is_last: header & 0x02 != 0,
                data: Vec::with_capacity(len),
            });
        }
    }

    /// Reads what the socket has, up to [`HEADER_READ`] bytes, into the shared buffer.
    async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> Result<(), Error> {
        self.buffer.reserve(HEADER_READ);
        let got = (&mut *stream)
            .take(HEADER_READ as u64)
            .read_buf(&mut self.buffer)
            .await
            .map_err(read_error)?;
        if got == 0 {
            return Err(closed());
        }
        Ok(())
    }
}

fn closed() -> Error {
    Error::ConnectionClosed {
        backtrace: snafu::Backtrace::generate(),
    }
}

fn invalid_length() -> Error {
    Error::ReceivePdu {
        source: ReadError::InvalidPduFieldLength {
            backtrace: snafu::Backtrace::generate(),
        },
    }
}

fn read_error(source: std::io::Error) -> Error {
    Error::ReceivePdu {
        source: ReadError::ReadPdu {
            source,
            backtrace: snafu::Backtrace::generate(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream handing out its bytes in the given pieces, one per read.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn encode(pdu: &Pdu) -> Vec<u8> {
        let mut out = Vec::new();
        dicom_ul::pdu::write_pdu(&mut out, pdu).unwrap();
        out
    }

    fn value(id: u8, last: bool, data: Vec<u8>) -> PDataValue {
        PDataValue {
            presentation_context_id: id,
            value_type: PDataValueType::Data,
            is_last: last,
            data,
        }
    }

    fn pdata(values: Vec<PDataValue>) -> Pdu {
        Pdu::PData { data: values }
    }

    #[tokio::test]
    async fn pdus_split_anywhere_read_as_dicom_ul_reads_them() {
        let pdus = vec![
            pdata(vec![PDataValue {
                presentation_context_id: 1,
                value_type: PDataValueType::Command,
                is_last: true,
                data: vec![7; 90],
            }]),
            pdata(vec![
                value(1, false, (0..70_000u32).map(|i| i as u8).collect()),
                value(3, true, vec![]),
            ]),
            Pdu::ReleaseRQ,
            pdata(vec![value(5, true, vec![1, 2, 3])]),
        ];
        let wire: Vec<u8> = pdus.iter().flat_map(encode).collect();
        for step in [1, 5, 6, 7, 13, 4096, 70_000, wire.len()] {
            let pieces = wire.chunks(step).map(<[u8]>::to_vec).collect();
            let mut stream = Pieces(pieces);
            let mut reader = PduReader::new(1 << 20);
            for expected in &pdus {
                let got = reader.read(&mut stream).await.unwrap();
                assert_eq!(&got, expected, "pieces of {step} bytes");
            }
            assert!(matches!(
                reader.read(&mut stream).await,
                Err(Error::ConnectionClosed { .. })
            ));
        }
    }

    #[tokio::test]
    async fn a_pdata_over_the_limit_is_refused_before_its_body_is_read() {
        let wire = encode(&pdata(vec![value(1, true, vec![0; 5000])]));
        let mut stream = Pieces([wire[..PDU_HEADER].to_vec()].into());
        let mut reader = PduReader::new(4096);
        let e = reader.read(&mut stream).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::ReceivePdu {
                    source: ReadError::PduTooLarge { .. }
                }
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn an_item_longer_than_its_pdu_is_refused() {
        let mut wire = encode(&pdata(vec![value(1, true, vec![0; 100])]));
        // Item length 4 bytes after the PDU header: claim more than the PDU holds.
        wire[6..10].copy_from_slice(&200u32.to_be_bytes());
        let mut reader = PduReader::new(4096);
        let e = reader.read(&mut Pieces([wire].into())).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::ReceivePdu {
                    source: ReadError::InvalidPduFieldLength { .. }
                }
            ),
            "{e:?}"
        );
        let mut wire = encode(&pdata(vec![value(1, true, vec![0; 100])]));
        wire[6..10].copy_from_slice(&1u32.to_be_bytes());
        let mut reader = PduReader::new(4096);
        let e = reader.read(&mut Pieces([wire].into())).await;
        assert!(matches!(
            e,
            Err(Error::ReceivePdu {
                source: ReadError::InvalidItemLength { length: 1 }
            })
        ));
    }
}
