//! DIMSE status codes (PS3.7 Annex C, PS3.4 service-specific tables) that Outpost sends or
//! interprets.

use std::fmt;

/// A Status (0000,0900) value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0x0000);
    pub const PENDING: Status = Status(0xFF00);
    /// Pending, with optional keys the SCP does not support (C-FIND).
    pub const PENDING_WARNING: Status = Status(0xFF01);
    pub const CANCEL: Status = Status(0xFE00);

    /// Refused: out of resources (C-STORE, C-FIND).
    pub const OUT_OF_RESOURCES: Status = Status(0xA700);
    /// Refused: out of resources, unable to calculate number of matches (C-MOVE, C-GET).
    pub const OUT_OF_RESOURCES_MATCHES: Status = Status(0xA701);
    /// Refused: out of resources, unable to perform sub-operations (C-MOVE, C-GET).
    pub const OUT_OF_RESOURCES_SUBOPS: Status = Status(0xA702);
    /// Refused: move destination unknown (C-MOVE).
    pub const MOVE_DESTINATION_UNKNOWN: Status = Status(0xA801);
    /// Error: data set or identifier does not match SOP class.
    pub const DOES_NOT_MATCH_SOP_CLASS: Status = Status(0xA900);
    /// Failed: unable to process / cannot understand (0xCxxx family).
    pub const UNABLE_TO_PROCESS: Status = Status(0xC000);
    /// Failed: the data set could not be parsed (0xCxxx family, Outpost's code).
    pub const CANNOT_PARSE: Status = Status(0xC001);
    /// Failed: the data set lacks or garbles an attribute the archive needs (Outpost's code).
    pub const MISSING_ATTRIBUTE: Status = Status(0xC002);
    /// Failed: the data set's SOP instance UID differs from the command's (Outpost's code).
    pub const INSTANCE_MISMATCH: Status = Status(0xC003);
    /// Warning: sub-operations complete, one or more failures (C-MOVE, C-GET).
    pub const SUBOPS_WITH_FAILURES: Status = Status(0xB000);
    /// Refused: SOP class not supported (general failure code 0x0122).
    pub const SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    /// Refused: not authorized (general failure code 0x0124).
    pub const NOT_AUTHORIZED: Status = Status(0x0124);
    /// Unrecognized operation (general failure code 0x0211).
    pub const UNRECOGNIZED_OPERATION: Status = Status(0x0211);
    /// Processing failure (general failure code 0x0110).
    pub const PROCESSING_FAILURE: Status = Status(0x0110);

    pub fn kind(self) -> StatusKind {
        match self.0 {
            0x0000 => StatusKind::Success,
            0xFF00 | 0xFF01 => StatusKind::Pending,
            0xFE00 => StatusKind::Cancel,
            0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusKind::Warning,
            _ => StatusKind::Failure,
        }
    }

    pub fn is_success(self) -> bool {
        self.kind() == StatusKind::Success
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusKind {
    Success,
    Pending,
    Cancel,
    Warning,
    Failure,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04X}", self.0)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status(0x{:04X})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(Status::SUCCESS.kind(), StatusKind::Success);
        assert_eq!(Status::PENDING_WARNING.kind(), StatusKind::Pending);
        assert_eq!(Status(0xB007).kind(), StatusKind::Warning);
        assert_eq!(Status::OUT_OF_RESOURCES.kind(), StatusKind::Failure);
        assert_eq!(Status::CANNOT_PARSE.kind(), StatusKind::Failure);
        assert_eq!(Status::OUT_OF_RESOURCES.to_string(), "0xA700");
    }
}
