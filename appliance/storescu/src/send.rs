//! The C-STORE exchange on any DIMSE channel, generic over the association's role: the
//! request and its data set streamed one PDU at a time, and the wait for the response. The
//! C-GET SCP uses these on the requestor's own association; [`crate::Peer`] on one Outpost
//! opened.

use std::io::Read;
use std::time::Duration;

use dimse::command::PRIORITY_MEDIUM;
use dimse::{Channel, Command, CommandField, DimseError, Incoming, Link, Status};
use store::fs::FileReader;
use store::query::Retrievable;

use crate::payload::Payload;

/// The C-MOVE request a C-STORE sub-operation serves (Move Originator Application Entity
/// Title and Message ID, PS3.7 9.1.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOriginator {
    pub ae_title: String,
    pub message_id: u16,
}

/// Why a C-STORE request could not be sent whole. Either way the association cannot carry
/// anything more: the receiver holds a data set that will never be finished.
#[derive(Debug, thiserror::Error)]
pub enum SendStoreError {
    /// The stored file failed (ended early or could not be read) while its data set was being
    /// sent.
    #[error("stored file {file} ended early or failed to read: {source}")]
    File {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The association failed.
    #[error(transparent)]
    Association(#[from] DimseError),
}

impl From<SendStoreError> for DimseError {
    /// For code that ends the association on any error (the C-GET SCP): a file that fails
    /// mid-transfer leaves the data set unfinished, which only an A-ABORT can end.
    fn from(e: SendStoreError) -> DimseError {
        match e {
            SendStoreError::File { source, .. } => DimseError::Protocol(format!(
                "stored file ended early or failed to read: {source}"
            )),
            SendStoreError::Association(e) => e,
        }
    }
}

/// Sends one C-STORE-RQ for `item` on presentation context `pc_id` and its data set.
pub async fn send_store<L: Link>(
    channel: &mut Channel<L>,
    pc_id: u8,
    message_id: u16,
    item: &Retrievable,
    originator: Option<&MoveOriginator>,
    payload: Payload,
) -> Result<(), SendStoreError> {
    let mut rq = Command::new(CommandField::C_STORE_RQ);
    rq.message_id = Some(message_id);
    rq.affected_sop_class_uid = Some(item.sop_class_uid.clone());
    rq.affected_sop_instance_uid = Some(item.sop_instance_uid.clone());
    rq.priority = Some(PRIORITY_MEDIUM);
    rq.has_data_set = true;
    if let Some(originator) = originator {
        rq.move_originator_ae = Some(originator.ae_title.clone());
        rq.move_originator_message_id = Some(originator.message_id);
    }
    channel.send_command(pc_id, &rq).await?;
    match payload {
        Payload::Converted(bytes) => Ok(channel.send_data_set(pc_id, &bytes).await?),
        Payload::File { file, length } => {
            stream_file(channel, pc_id, &item.file, file, length).await
        }
        Payload::Inflated { file } => {
            let inflated = transcode::inflate::Inflate::new(file);
            stream_to_end(channel, pc_id, &item.file, Box::new(inflated)).await
        }
    }
}

/// Bytes read from a stored file per trip to the blocking pool. A trip costs more than
/// reading a PDU's worth from the page cache, and receivers often announce 16 KiB PDUs, so
/// one fragment per trip would make the thread hops, not the network, the limit.
const READ_AHEAD: usize = 256 * 1024;

/// Streams `length` bytes of a data set from `file` (named `name` in errors), in fragments
/// of the receiver's PDU size, reading the next stretch of the file while the current one is
/// being sent: memory stays at two stretches of `READ_AHEAD` bytes.
pub async fn stream_file<L: Link>(
    channel: &mut Channel<L>,
    pc_id: u8,
    name: &str,
    file: Box<dyn FileReader>,
    length: u64,
) -> Result<(), SendStoreError> {
    let max = channel.max_fragment();
    if length == 0 {
        return Ok(channel.send_data_fragment(pc_id, Vec::new(), true).await?);
    }
    let failed = |source: std::io::Error| SendStoreError::File {
        file: name.to_string(),
        source,
    };
    let per_trip = (READ_AHEAD / max).max(1) as u64 * max as u64;
    // Reads the next stretch as separate fragments, so none is copied again to be sent.
    let read = |mut reader: Box<dyn FileReader>, n: u64| {
        tokio::task::spawn_blocking(move || {
            let mut fragments = Vec::new();
            let mut left = n;
            while left > 0 {
                let take = left.min(max as u64) as usize;
                let mut buf = vec![0u8; take];
                if let Err(e) = reader.read_exact(&mut buf) {
                    return (reader, Err(e));
                }
                fragments.push(buf);
                left -= take as u64;
            }
            (reader, Ok(fragments))
        })
    };
    let mut remaining = length;
    let first = remaining.min(per_trip);
    remaining -= first;
    let mut next = Some(read(file, first));
    while let Some(task) = next.take() {
        let (reader, fragments) = task
            .await
            .map_err(|e| failed(std::io::Error::other(format!("the read task failed: {e}"))))?;
        let fragments = fragments.map_err(failed)?;
        if remaining > 0 {
            let n = remaining.min(per_trip);
            remaining -= n;
            next = Some(read(reader, n));
        }
        let count = fragments.len();
        for (i, fragment) in fragments.into_iter().enumerate() {
            let last = next.is_none() && i + 1 == count;
            channel.send_data_fragment(pc_id, fragment, last).await?;
        }
    }
    Ok(())
}

/// Streams a data set of unknown length, everything `reader` yields until its end (an
/// inflating reader), in fragments of the receiver's PDU size, reading the next stretch
/// while the current one is sent. The last fragment of each stretch is held back until the
/// next stretch shows whether more follows, since only the final fragment may say "last".
/// Memory stays at two stretches of `READ_AHEAD` bytes however long the data set is.
pub async fn stream_to_end<L: Link>(
    channel: &mut Channel<L>,
    pc_id: u8,
    name: &str,
    reader: Box<dyn Read + Send>,
) -> Result<(), SendStoreError> {
    let max = channel.max_fragment();
    let failed = |source: std::io::Error| SendStoreError::File {
        file: name.to_string(),
        source,
    };
    let per_trip = (READ_AHEAD / max).max(1) * max;
    // Reads up to `per_trip` bytes as fragments of `max`; fewer than asked means the end.
    let read = |mut reader: Box<dyn Read + Send>| {
        tokio::task::spawn_blocking(move || {
            let mut fragments = Vec::new();
            let mut total = 0;
            while total < per_trip {
                let mut buf = vec![0u8; max];
                let mut filled = 0;
                while filled < max {
                    match reader.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return (reader, Err(e)),
                    }
                }
                buf.truncate(filled);
                total += filled;
                let short = filled < max;
                if filled > 0 {
                    fragments.push(buf);
                }
                if short {
                    return (reader, Ok((fragments, true)));
                }
            }
            (reader, Ok((fragments, false)))
        })
    };
    let mut held: Option<Vec<u8>> = None;
    let mut next = Some(read(reader));
    while let Some(task) = next.take() {
        let (reader, result) = task
            .await
            .map_err(|e| failed(std::io::Error::other(format!("the read task failed: {e}"))))?;
        let (fragments, ended) = result.map_err(failed)?;
        if !ended {
            next = Some(read(reader));
        }
        for fragment in fragments {
            if let Some(previous) = held.replace(fragment) {
                channel.send_data_fragment(pc_id, previous, false).await?;
            }
        }
    }
    // An empty data set still needs its one (empty) last fragment.
    Ok(channel
        .send_data_fragment(pc_id, held.unwrap_or_default(), true)
        .await?)
}

/// Waits up to `timeout` for the C-STORE-RSP to `message_id` on an association Outpost
/// opened (where nothing else may arrive meanwhile), and returns its status; a response
/// without one counts as a processing failure.
pub async fn wait_store_response<L: Link>(
    channel: &mut Channel<L>,
    message_id: u16,
    timeout: Duration,
) -> Result<Status, DimseError> {
    match channel.next(timeout).await? {
        Incoming::Command { command, .. }
            if command.field == CommandField::C_STORE_RSP
                && command.message_id_responded_to == Some(message_id) =>
        {
            Ok(command.status.unwrap_or(Status::PROCESSING_FAILURE))
        }
        Incoming::Command { command, .. } => Err(DimseError::Protocol(format!(
            "expected C-STORE-RSP to message {message_id}, got {}",
            command.field.name()
        ))),
        Incoming::Release => Err(DimseError::Protocol(
            "the destination released mid-transfer".into(),
        )),
        Incoming::Aborted => Err(DimseError::Aborted),
    }
}
