//! What an association may carry: the abstract and transfer syntaxes accepted, SCP/SCU role
//! selection for C-GET and for Storage Commitment reports, and extended negotiation (refused:
//! queries are hierarchical only).

use config::Permissions;
use dataset::sop_classes::STORAGE_SOP_CLASSES;
use dicom_core::dictionary::UidDictionary;
use dicom_dictionary_std::StandardSopClassDictionary;
use dicom_ul::association::server::Negotiation;
use dicom_ul::pdu::{AssociationRQ, RequestorRoles, UserVariableItem};

use crate::Services;

/// Which permission a Query/Retrieve SOP class needs.
type Needs = fn(&Permissions) -> bool;

const QR_CLASSES: [(&str, Needs); 6] = [
    (dimse::PATIENT_ROOT_FIND, |p| p.find),
    (dimse::STUDY_ROOT_FIND, |p| p.find),
    (dimse::PATIENT_ROOT_MOVE, |p| p.move_),
    (dimse::STUDY_ROOT_MOVE, |p| p.move_),
    (dimse::PATIENT_ROOT_GET, |p| p.get),
    (dimse::STUDY_ROOT_GET, |p| p.get),
];

/// Whether a SOP class UID is one this archive treats as storage: a standard Storage SOP
/// Class, or (when allowed) a class the standard does not define at all (private ones).
/// Standard classes of other services (worklist, MPPS, print) are never taken for storage.
pub fn is_storage_class(uid: &str, accept_unknown: bool) -> bool {
    dataset::is_storage_sop_class(uid)
        || (accept_unknown
            && StandardSopClassDictionary
                .by_uid(uid.trim_end_matches('\0'))
                .is_none())
}

/// Role selection: a C-GET requestor asks to be SCP for the storage classes it wants to
/// receive; we grant exactly what it asks for those classes.
pub struct Roles {
    pub accept_unknown: bool,
}

impl Negotiation for Roles {
    fn extended_negotiation(&self, sop_class_uid: &str, input: &[u8]) -> Option<Vec<u8>> {
        // Relational queries, combined date-time matching, fuzzy matching and the rest are
        // not offered: answering every requested option with 0 says so (PS3.4 C.5).
        QR_CLASSES
            .iter()
            .any(|(uid, _)| *uid == sop_class_uid)
            .then(|| vec![0; input.len().min(7)])
    }

    fn negotiate_roles(&self, sop_class_uid: &str, scu: bool, scp: bool) -> Option<RequestorRoles> {
        // An archive reporting Storage Commitment on its own association asks for the SCP
        // role of that class (PS3.4 J.3.3); it is granted like a C-GET requestor's.
        (is_storage_class(sop_class_uid, self.accept_unknown)
            || sop_class_uid.trim_end_matches('\0') == dimse::STORAGE_COMMITMENT)
            .then_some(RequestorRoles { scu, scp })
    }
}

/// What one connection is offered: abstract and transfer syntaxes, and the role and extended
/// negotiation answers.
pub struct Offer {
    pub abstract_syntaxes: Vec<String>,
    pub transfer_syntaxes: Vec<String>,
    pub roles: Roles,
}

/// The offer for one connection, made from the caller's A-ASSOCIATE-RQ, which both ports
/// read before negotiating: only the services the caller may use are offered (so the TLS
/// port, too, refuses worklist, MPPS, print and commitment asked of us), and unknown storage
/// classes are accepted one by one, never by a promiscuous mode that would accept those too.
pub fn options(services: &Services, permissions: Permissions, request: &AssociationRQ) -> Offer {
    let dicom = &services.config;
    let mut o = Offer {
        abstract_syntaxes: vec![dimse::VERIFICATION.to_string()],
        transfer_syntaxes: Vec::new(),
        roles: Roles {
            accept_unknown: dicom.accept_unknown_sop_classes,
        },
    };
    // Archives we forward to send their Storage Commitment reports here, asking for the SCP
    // role of the class. A modality asking us to commit (the SCU role) is refused the context
    // up front, as before: this archive does not offer commitment to modalities.
    // Several PACS propose the context without role selection (PS3.7 D.3.3.4 leaves the
    // roles to the SOP class definition); a destination configured for commitment is
    // trusted to be reporting, not asking.
    let reports_commitment = request.user_variables.iter().any(|v| {
        matches!(v, UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles)
            if uid.trim_end_matches('\0') == dimse::STORAGE_COMMITMENT && roles.scp)
    }) || is_reporter(services, &request.calling_ae_title);
    if reports_commitment {
        o.abstract_syntaxes
            .push(dimse::STORAGE_COMMITMENT.to_string());
    }
    for (uid, allowed) in QR_CLASSES {
        if allowed(&permissions) {
            o.abstract_syntaxes.push(uid.to_string());
        }
    }
    // C-GET sub-operations travel on storage contexts the requestor proposed.
    if permissions.store || permissions.get {
        for (uid, _) in STORAGE_SOP_CLASSES {
            o.abstract_syntaxes.push(uid.to_string());
        }
        if dicom.accept_unknown_sop_classes {
            for pc in &request.presentation_contexts {
                let uid = pc.abstract_syntax.trim_end_matches('\0');
                if !dataset::is_storage_sop_class(uid) && is_storage_class(uid, true) {
                    o.abstract_syntaxes.push(uid.to_string());
                }
            }
        }
    }
    let avoided = avoided_syntaxes(request);
    for ts in dataset::ts::all_known() {
        if !avoided.iter().any(|a| a == ts) {
            o.transfer_syntaxes.push(ts.to_string());
        }
    }
    o
}

/// Whether `calling` is the AE title of a destination that may send Storage Commitment
/// reports.
fn is_reporter(services: &Services, calling: &str) -> bool {
    services
        .reporters
        .iter()
        .any(|r| config::AeTitle::parse(&r.ae_title).is_ok_and(|ae| ae.matches(calling.trim())))
}

/// Transfer syntaxes to refuse so that a C-GET requestor's storage contexts settle on one we
/// can always send in.
///
/// The acceptor picks a context's transfer syntax, and dicom-ul picks the first the
/// requestor listed among those the acceptor supports. A C-GET requestor that lists RLE or
/// Big Endian ahead of Little Endian in one context (DCMTK's `getscu +xr`, `+xb`) would then
/// get a context that instances stored in any other syntax cannot travel on: nothing encodes
/// into those syntaxes here. So, on an association that only retrieves (every storage
/// context asks for the SCP role alone, so the caller will not store), a syntax other than
/// Explicit or Implicit VR Little Endian is refused when some context lists it ahead of one
/// of those two and this build can decode it into them. A context that proposes a
/// compressed syntax on its own keeps it, so instances stored that way still travel as
/// stored.
fn avoided_syntaxes(rq: &AssociationRQ) -> Vec<String> {
    let roles: Vec<(&str, &RequestorRoles)> = rq
        .user_variables
        .iter()
        .filter_map(|v| match v {
            UserVariableItem::ScuScpRoleSelectionSubItem(uid, roles) => {
                Some((uid.trim_end_matches('\0'), roles))
            }
            _ => None,
        })
        .collect();
    let storage: Vec<_> = rq
        .presentation_contexts
        .iter()
        .filter(|pc| dataset::is_storage_sop_class(pc.abstract_syntax.trim_end_matches('\0')))
        .collect();
    let retrieves_only = !storage.is_empty()
        && storage.iter().all(|pc| {
            let uid = pc.abstract_syntax.trim_end_matches('\0');
            roles
                .iter()
                .any(|(class, r)| *class == uid && r.scp && !r.scu)
        });
    if !retrieves_only {
        return Vec::new();
    }
    let little = |ts: &str| {
        matches!(
            dataset::ts::trim_uid(ts),
            dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN | dataset::ts::IMPLICIT_VR_LITTLE_ENDIAN
        )
    };
    let mut avoided: Vec<String> = Vec::new();
    for pc in storage {
        let Some(first_little) = pc.transfer_syntaxes.iter().position(|ts| little(ts)) else {
            continue;
        };
        for ts in &pc.transfer_syntaxes[..first_little] {
            let ts = dataset::ts::trim_uid(ts).to_string();
            // A syntax nothing here decodes stays: instances stored in it can travel in no
            // other, so refusing it would strand them instead.
            let decodable = transcode::can_convert(&ts, dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN);
            if decodable && !avoided.contains(&ts) {
                avoided.push(ts);
            }
        }
    }
    avoided
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_ul::pdu::PresentationContextProposed;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const RLE: &str = "1.2.840.10008.1.2.5";
    const BE: &str = "1.2.840.10008.1.2.2";
    const ELE: &str = "1.2.840.10008.1.2.1";
    const ILE: &str = "1.2.840.10008.1.2";
    const JPEG: &str = "1.2.840.10008.1.2.4.50";

    fn request(contexts: &[&[&str]], scu: bool, scp: bool) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "GETSCU".into(),
            called_ae_title: "OUTPOST".into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: contexts
                .iter()
                .enumerate()
                .map(|(i, syntaxes)| PresentationContextProposed {
                    id: 2 * i as u8 + 1,
                    abstract_syntax: CT.into(),
                    transfer_syntaxes: syntaxes.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            user_variables: vec![UserVariableItem::ScuScpRoleSelectionSubItem(
                CT.into(),
                RequestorRoles { scu, scp },
            )],
        }
    }

    #[test]
    fn a_retrieve_only_association_settles_on_little_endian() {
        let rq = request(&[&[RLE, ELE, BE, ILE], &[JPEG]], false, true);
        assert_eq!(avoided_syntaxes(&rq), vec![RLE.to_string()]);
        let rq = request(&[&[BE, ILE]], false, true);
        assert_eq!(avoided_syntaxes(&rq), vec![BE.to_string()]);
    }

    #[test]
    fn a_syntax_nothing_decodes_is_kept() {
        // MPEG-2 has no decoder here: refusing it would strand instances stored that way.
        const MPEG2: &str = "1.2.840.10008.1.2.4.100";
        let rq = request(&[&[MPEG2, RLE, ELE]], false, true);
        assert_eq!(avoided_syntaxes(&rq), vec![RLE.to_string()]);
    }

    #[test]
    fn a_caller_that_stores_keeps_its_preference() {
        // Instances are stored as received, so a storing caller's first choice stands.
        let rq = request(&[&[RLE, ELE]], true, true);
        assert!(avoided_syntaxes(&rq).is_empty());
        let mut rq = request(&[&[RLE, ELE]], false, true);
        rq.user_variables.clear();
        assert!(avoided_syntaxes(&rq).is_empty());
    }
}
