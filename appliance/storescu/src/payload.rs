//! What one instance is sent as: its stored file streamed from disk as it is; a deflated
//! data set inflated as a stream for a receiver that takes Explicit VR Little Endian; or, when
//! the receiver only accepted another Little Endian syntax, the instance converted in memory
//! within the transcode memory limit.

use std::io::{Read, Seek, SeekFrom};

use store::fs::FileReader;
use store::query::Retrievable;

/// What one instance is sent as.
pub enum Payload {
    /// The stored data set, streamed from the file as it is: the file is positioned at the
    /// data set, and `length` bytes of it follow.
    File {
        file: Box<dyn FileReader>,
        length: u64,
    },
    /// A Deflated Explicit VR Little Endian data set going out as Explicit VR Little Endian:
    /// the file is positioned at the deflated data set, and it is inflated while it is sent,
    /// so memory is a fixed buffer however large it inflates (a 2 MB file can hold 2 GB).
    /// Its length is known only at the end of the deflate stream.
    Inflated { file: Box<dyn FileReader> },
    /// The data set converted to another transfer syntax, in memory.
    Converted(Vec<u8>),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::File { length, .. } => write!(f, "Payload::File({length} bytes)"),
            Payload::Inflated { .. } => write!(f, "Payload::Inflated"),
            Payload::Converted(bytes) => write!(f, "Payload::Converted({} bytes)", bytes.len()),
        }
    }
}

/// Why an instance's payload could not be made. Nothing was sent; the association, if any,
/// is untouched. Each variant holds a full sentence naming the file or the transfer syntaxes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The stored file cannot be opened or read.
    #[error("{0}")]
    Unreadable(String),
    /// Converting it would need more memory than the transcode memory limit allows.
    #[error("{0}")]
    TooLarge(String),
    /// The conversion to the syntax the receiver accepted failed.
    #[error("{0}")]
    Conversion(String),
}

impl PayloadError {
    /// The sentence saying why.
    pub fn reason(&self) -> &str {
        match self {
            PayloadError::Unreadable(why)
            | PayloadError::TooLarge(why)
            | PayloadError::Conversion(why) => why,
        }
    }
}

/// Opens the file of an instance when `target_ts` is its stored syntax, or converts it to
/// `target_ts` (a Little Endian syntax, as [`crate::choose_context`] picks) when the receiver
/// needs that, refusing instances larger than `memory_limit` bytes up front. The file work
/// runs on the blocking pool.
pub async fn payload(
    store: &store::Store,
    item: &Retrievable,
    target_ts: &str,
    memory_limit: u64,
) -> Result<Payload, PayloadError> {
    let store = store.clone();
    let item = item.clone();
    let file_name = item.file.clone();
    let target = target_ts.to_string();
    tokio::task::spawn_blocking(move || make_payload(&store, &item, &target, memory_limit))
        .await
        .unwrap_or_else(|e| {
            Err(PayloadError::Unreadable(format!(
                "reading {file_name} failed: {e}"
            )))
        })
}

fn make_payload(
    store: &store::Store,
    item: &Retrievable,
    target: &str,
    limit: u64,
) -> Result<Payload, PayloadError> {
    let mut file = store
        .open_file(&item.file)
        .map_err(|e| PayloadError::Unreadable(format!("cannot open {}: {e}", item.file)))?;
    if target == item.transfer_syntax {
        file.seek(SeekFrom::Start(item.dataset_offset))
            .map_err(|e| PayloadError::Unreadable(format!("cannot read {}: {e}", item.file)))?;
        return Ok(Payload::File {
            file,
            length: item.size.saturating_sub(item.dataset_offset),
        });
    }
    let deflated = dataset::ts::syntax_info(&item.transfer_syntax).is_some_and(|i| i.deflated);
    if deflated && dataset::ts::trim_uid(target) == dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN {
        // Inflating is the whole conversion (PS3.5 A.5): no codec, no object model, and no
        // memory limit to hit, since nothing is held.
        file.seek(SeekFrom::Start(item.dataset_offset))
            .map_err(|e| PayloadError::Unreadable(format!("cannot read {}: {e}", item.file)))?;
        return Ok(Payload::Inflated { file });
    }
    if item.size > limit {
        return Err(PayloadError::TooLarge(format!(
            "converting from {} needs more than the {} MB transcode memory limit",
            item.transfer_syntax,
            limit / (1024 * 1024)
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(item.size).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| PayloadError::Unreadable(format!("cannot read {}: {e}", item.file)))?;
    transcode::to_native(&bytes, target, limit)
        .map(Payload::Converted)
        .map_err(|e| {
            let why = format!(
                "cannot convert from {} to {target}: {e}",
                item.transfer_syntax
            );
            // Decompressing can need more than the limit even when the file is below it.
            match e {
                transcode::TranscodeError::TooLarge { .. } => PayloadError::TooLarge(why),
                _ => PayloadError::Conversion(why),
            }
        })
}
