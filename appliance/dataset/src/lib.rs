//! DICOM data set bytes without an object model.
//!
//! Outpost never loads an instance into memory to store, index or send it. This crate holds
//! what that takes: a streaming [`walk::Walker`] that checks a data set's framing and captures
//! the attributes the index needs as the bytes go by, element and Part 10 header encoding,
//! transfer syntax layouts, and character set decoding.
//!
//! It knows nothing of the network, the disk or the index.

#[cfg(feature = "synth")]
pub mod bomb;
pub mod charset;
pub mod encode;
pub mod meta;
pub mod rewrite;
pub mod sequence;
pub mod sop_classes;
#[cfg(feature = "synth")]
pub mod synth;
pub mod tag;
pub mod ts;
pub mod walk;

pub use tag::{Tag, Vr, tags};
pub use ts::{Encoding, SyntaxInfo};
pub use walk::{Capture, Element, Misordered, Span, WalkError, Walked, Walker};

/// Whether a SOP class UID is one of the standard's Storage SOP Classes.
pub fn is_storage_sop_class(uid: &str) -> bool {
    let uid = ts::trim_uid(uid);
    sop_classes::STORAGE_SOP_CLASSES
        .iter()
        .any(|(u, _)| *u == uid)
}

#[cfg(test)]
mod tests;
