//! Choosing the accepted presentation context an instance travels on: its stored transfer
//! syntax when the receiver took it, else a Little Endian syntax it can be converted into.

use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, trim_uid};
use dicom_ul::pdu::{PresentationContextNegotiated, PresentationContextResultReason};
use store::query::Retrievable;

/// Why no presentation context can carry an instance. Both variants hold a full sentence
/// naming the SOP class and the transfer syntaxes involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoContext {
    /// The receiver accepted no context for the SOP class at all.
    #[error("{0}")]
    ForClass(String),
    /// It accepted the class, but only in syntaxes the stored one cannot be converted into.
    #[error("{0}")]
    ForSyntax(String),
}

impl NoContext {
    /// The sentence saying why.
    pub fn reason(&self) -> &str {
        match self {
            NoContext::ForClass(why) | NoContext::ForSyntax(why) => why,
        }
    }

    /// The sentence saying why, taken out.
    pub fn into_reason(self) -> String {
        match self {
            NoContext::ForClass(why) | NoContext::ForSyntax(why) => why,
        }
    }
}

/// Picks the presentation context to send an instance on, among the accepted `contexts` that
/// `usable` allows (C-GET needs the requestor's SCP role for the class): one with the stored
/// transfer syntax if the receiver accepted it, else one with a Little Endian syntax the
/// stored one can be decoded into. Returns the context id and the transfer syntax to send.
pub fn choose_context(
    contexts: &[PresentationContextNegotiated],
    item: &Retrievable,
    usable: impl Fn(&PresentationContextNegotiated) -> bool,
) -> Result<(u8, String), NoContext> {
    let accepted: Vec<&PresentationContextNegotiated> = contexts
        .iter()
        .filter(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && trim_uid(&pc.abstract_syntax) == item.sop_class_uid
                && usable(pc)
        })
        .collect();
    if accepted.is_empty() {
        return Err(NoContext::ForClass(format!(
            "the receiver accepted no presentation context for SOP class {}",
            item.sop_class_uid
        )));
    }
    if let Some(pc) = accepted
        .iter()
        .find(|pc| trim_uid(&pc.transfer_syntax) == item.transfer_syntax)
    {
        return Ok((pc.id, item.transfer_syntax.clone()));
    }
    for native in [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN] {
        let pc = accepted
            .iter()
            .find(|pc| trim_uid(&pc.transfer_syntax) == native);
        if let Some(pc) = pc
            && transcode::can_convert(&item.transfer_syntax, native)
        {
            return Ok((pc.id, native.to_string()));
        }
    }
    let offered: Vec<&str> = accepted
        .iter()
        .map(|pc| trim_uid(&pc.transfer_syntax))
        .collect();
    let why = if transcode::can_convert(&item.transfer_syntax, EXPLICIT_VR_LITTLE_ENDIAN) {
        "it can only be converted to Explicit or Implicit VR Little Endian"
    } else {
        "no codec in this build decodes it"
    };
    Err(NoContext::ForSyntax(format!(
        "the receiver accepted SOP class {} only in transfer syntax {}, not in the stored {}, \
         and {why}",
        item.sop_class_uid,
        offered.join(", "),
        item.transfer_syntax
    )))
}
