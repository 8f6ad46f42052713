//! Translation of the archive's errors into DIMSE statuses, in one exhaustive place: a new
//! error variant cannot reach a caller without a deliberate status.

use dimse::Status;
use store::query::QueryError;
use store::{IngestError, StoreError};

/// The C-STORE status for a refused instance.
pub fn store_status(e: &IngestError) -> Status {
    match e {
        // Refused: Out of Resources.
        IngestError::OutOfSpace { .. } => Status::OUT_OF_RESOURCES,
        IngestError::Held(_) => Status::OUT_OF_RESOURCES,
        IngestError::Write(io) if io.raw_os_error() == Some(28) => Status::OUT_OF_RESOURCES,
        IngestError::Store(StoreError::ShuttingDown) => Status::OUT_OF_RESOURCES,
        // Error: Data Set does not match SOP Class.
        IngestError::ClassMismatch { .. } => Status::DOES_NOT_MATCH_SOP_CLASS,
        // Error: Cannot understand (0xCxxx).
        IngestError::UnknownTransferSyntax(_) => Status::UNABLE_TO_PROCESS,
        IngestError::Unparseable(_) => Status::CANNOT_PARSE,
        IngestError::TagOrder(_) => Status::CANNOT_PARSE,
        IngestError::Unindexable(_) => Status::MISSING_ATTRIBUTE,
        IngestError::InstanceMismatch { .. } => Status::INSTANCE_MISMATCH,
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
        QueryError::TooManyKeys { .. } | QueryError::KeyValueTooLong { .. } => {
            Status::UNABLE_TO_PROCESS
        }
        QueryError::Store(_) => Status::UNABLE_TO_PROCESS,
    }
}
