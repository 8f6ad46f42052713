//! Translation of the archive's errors into DIMSE statuses, in one exhaustive place: a new
//! error variant cannot reach a caller without a deliberate status.

use dimse::Status;
use store::query::QueryError;
use store::{IngestError, StoreError};

/// Failed: the instance's patient disagrees with the patient the archive holds its study (or
/// its SOP Instance UID) under; refused under `patient_conflict = "reject"`. PS3.4 Annex B
/// offers no status for this: 0xA900 "Data Set does not match SOP Class" says the data set is
/// wrong for its IOD, which it is not, and a sender may treat it as a coding bug. A 0xCxxx
/// "Cannot understand" failure is what PS3.4 C.4.2 leaves to the implementation, and what
/// dcm4chee-arc answers a patient mismatch with; the Error Comment (0000,0902) carries both
/// Patient IDs and the study, so the modality's operator sees what to correct. 0xC004 is next
/// after Outpost's other 0xC00x codes.
pub const PATIENT_CONFLICT: Status = Status(0xC004);

/// The C-STORE status for a refused instance.
pub fn store_status(e: &IngestError) -> Status {
    match e {
        // Refused: Out of Resources.
        IngestError::OutOfSpace { .. } => Status::OUT_OF_RESOURCES,
        IngestError::Held(_) => Status::OUT_OF_RESOURCES,
        IngestError::Write(io) if io.raw_os_error() == Some(28) => Status::OUT_OF_RESOURCES,
        IngestError::Store(
            StoreError::ShuttingDown | StoreError::IndexFull | StoreError::IndexReopening,
        ) => Status::OUT_OF_RESOURCES,
        // Error: Data Set does not match SOP Class.
        IngestError::ClassMismatch { .. } => Status::DOES_NOT_MATCH_SOP_CLASS,
        // Error: Cannot understand (0xCxxx).
        IngestError::UnknownTransferSyntax(_) => Status::UNABLE_TO_PROCESS,
        IngestError::Unparseable(_) => Status::CANNOT_PARSE,
        IngestError::TagOrder(_) => Status::CANNOT_PARSE,
        IngestError::Unindexable(_) => Status::MISSING_ATTRIBUTE,
        IngestError::InstanceMismatch { .. } => Status::INSTANCE_MISMATCH,
        IngestError::PatientConflict(_) | IngestError::Store(StoreError::PatientConflict(_)) => {
            PATIENT_CONFLICT
        }
        // Processing failure: our side failed; the sender should retry later.
        IngestError::Write(_) => Status::PROCESSING_FAILURE,
        IngestError::Store(
            StoreError::Io { .. }
            | StoreError::Locked(_)
            | StoreError::Open(_)
            | StoreError::Transaction(_)
            | StoreError::Table(_)
            | StoreError::Storage(_)
            | StoreError::Commit(_)
            | StoreError::Record(_)
            | StoreError::Inconsistent(_)
            | StoreError::Schema { .. }
            | StoreError::WriterFailed(_),
        ) => Status::PROCESSING_FAILURE,
    }
}

/// The C-FIND, C-MOVE or C-GET status for a refused query.
pub fn query_status(e: &QueryError, retrieve: bool) -> Status {
    match e {
        QueryError::MissingLevel
        | QueryError::InvalidLevel(_)
        | QueryError::LevelNotInModel { .. }
        | QueryError::MissingUniqueKey { .. }
        | QueryError::MissingRetrieveKey { .. } => Status::DOES_NOT_MATCH_SOP_CLASS,
        QueryError::TooManyMatches { .. } if retrieve => Status::OUT_OF_RESOURCES_MATCHES,
        QueryError::TooManyMatches { .. } => Status::OUT_OF_RESOURCES,
        // Unable to process: an identifier too large to answer within bounded memory.
        QueryError::TooManyKeys { .. }
        | QueryError::KeyValueTooLong { .. }
        | QueryError::InflatesTooFar { .. } => Status::UNABLE_TO_PROCESS,
        QueryError::Unreadable(_) => Status::DOES_NOT_MATCH_SOP_CLASS,
        QueryError::Store(_) => Status::UNABLE_TO_PROCESS,
    }
}
