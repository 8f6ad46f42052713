//! Asking a remote archive to send a study to us: a C-MOVE (Study Root) on an association
//! Outpost opens, used to recall instances evicted from the local cache.

use std::time::Duration;

use dataset::encode::write_element;
use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dataset::{Encoding, Vr, tags};
use dicom_ul::pdu::PresentationContextResultReason;
use dimse::{Command, CommandField, DimseError, Status, StatusKind};
use tracing::debug;

use crate::options::base_options;
use crate::peer::{EchoError, Tls, connect};

/// How a C-MOVE we requested ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub status: Status,
    pub completed: u16,
    pub failed: u16,
    pub warning: u16,
    pub comment: Option<String>,
}

/// Asks the archive at `address` to send every instance of `study_uid` to `destination` (an
/// AE title it knows, normally our own), and waits for its final C-MOVE-RSP: by then every
/// sub-operation has been answered. `wait` bounds the whole transfer. Connection and
/// association failures come back as [`EchoError`]; an archive that answered is `Ok` with
/// its final status and counts, whatever they are.
pub async fn move_study(
    calling_ae: &str,
    called_ae: &str,
    address: &str,
    tls: Option<&Tls>,
    study_uid: &str,
    destination: &str,
    connect_timeout: Duration,
    wait: Duration,
) -> Result<Moved, EchoError> {
    let options = base_options(calling_ae, called_ae, 64 * 1024, connect_timeout)
        .with_presentation_context(
            dimse::STUDY_ROOT_MOVE.to_string(),
            vec![
                EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
                IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
            ],
        );
    let mut peer = connect(options, address, tls, connect_timeout, wait).await?;
    let failed = |source: DimseError| EchoError::Association {
        address: address.to_string(),
        source,
    };
    let Some((pc_id, ts)) = peer
        .contexts()
        .iter()
        .find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && dataset::ts::trim_uid(&pc.abstract_syntax) == dimse::STUDY_ROOT_MOVE
        })
        .map(|pc| {
            (
                pc.id,
                dataset::ts::trim_uid(&pc.transfer_syntax).to_string(),
            )
        })
    else {
        let _ = peer.release().await;
        return Err(failed(DimseError::Protocol(format!(
            "{called_ae} accepted no presentation context for Study Root C-MOVE"
        ))));
    };
    let enc = if ts == IMPLICIT_VR_LITTLE_ENDIAN {
        Encoding::IMPLICIT_LE
    } else {
        Encoding::EXPLICIT_LE
    };
    let mut identifier = Vec::new();
    write_element(
        &mut identifier,
        enc,
        tags::QUERY_RETRIEVE_LEVEL,
        Vr::CS,
        b"STUDY",
    );
    write_element(
        &mut identifier,
        enc,
        tags::STUDY_INSTANCE_UID,
        Vr::UI,
        study_uid.as_bytes(),
    );
    let id = peer.next_message_id();
    let mut rq = Command::new(CommandField::C_MOVE_RQ);
    rq.message_id = Some(id);
    rq.affected_sop_class_uid = Some(dimse::STUDY_ROOT_MOVE.to_string());
    rq.priority = Some(0);
    rq.move_destination = Some(destination.to_string());
    rq.has_data_set = true;
    let result = peer
        .exchange(pc_id, &rq, &identifier, |rsp| {
            rsp.field == CommandField::C_MOVE_RSP && rsp.message_id_responded_to == Some(id)
        })
        .await;
    match result {
        Ok(rsp) => {
            if let Err(e) = peer.release().await {
                debug!(address, "release after C-MOVE failed: {e}");
            }
            let status = rsp.status.unwrap_or(Status::PROCESSING_FAILURE);
            Ok(Moved {
                status,
                completed: rsp.completed.unwrap_or(0),
                failed: rsp.failed.unwrap_or(0),
                warning: rsp.warning.unwrap_or(0),
                comment: rsp.error_comment,
            })
        }
        Err(e) => {
            peer.abort().await;
            Err(failed(e))
        }
    }
}

impl Moved {
    /// Whether every sub-operation succeeded.
    pub fn complete(&self) -> bool {
        self.status.kind() == StatusKind::Success && self.failed == 0
    }
}
