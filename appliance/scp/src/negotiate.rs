//! What an association may carry: the abstract and transfer syntaxes accepted, SCP/SCU role
//! selection for C-GET, and extended negotiation (refused: queries are hierarchical only).

use std::sync::{Arc, Mutex};

use config::Permissions;
use dataset::sop_classes::STORAGE_SOP_CLASSES;
use dicom_core::dictionary::UidDictionary;
use dicom_dictionary_std::StandardSopClassDictionary;
use dicom_ul::ServerAssociationOptions;
use dicom_ul::association::server::{AccessControl, Negotiation};
use dicom_ul::pdu::{AssociationRJServiceUserReason, AssociationRQ, RequestorRoles, UserIdentity};

use crate::policy::{self, Admitted, Refusal, Resolved};
use crate::{PortKind, Services};

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
        is_storage_class(sop_class_uid, self.accept_unknown).then_some(RequestorRoles { scu, scp })
    }
}

/// The decision the access-control hook took, read back after negotiation.
pub type Decision = Arc<Mutex<Option<Result<Admitted, Refusal>>>>;

/// The association policy as dicom-ul's access control hook, for the TLS port, where the
/// request can only be seen once the handshake is done. The decision is kept for the log.
pub struct Gate {
    services: Arc<Services>,
    peer: std::net::IpAddr,
    resolved: Resolved,
    decision: Decision,
}

impl Gate {
    pub fn new(
        services: Arc<Services>,
        peer: std::net::IpAddr,
        resolved: Resolved,
    ) -> (Gate, Decision) {
        let decision = Decision::default();
        (
            Gate {
                services,
                peer,
                resolved,
                decision: decision.clone(),
            },
            decision,
        )
    }
}

impl AccessControl for Gate {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let d = policy::admit(
            &self.services,
            calling_ae_title,
            called_ae_title,
            self.peer,
            PortKind::Tls,
            &self.resolved,
        )
        .map_err(|mut refusal| {
            refusal.calling = calling_ae_title.trim().to_string();
            refusal.called = called_ae_title.trim().to_string();
            refusal
        });
        let result = d.as_ref().map(|_| ()).map_err(|r| r.reason.clone());
        *self.decision.lock().expect("decision lock") = Some(d);
        result
    }
}

/// Everything accepted regardless of the caller's permissions or what it proposes.
pub struct Accepted;

impl AccessControl for Accepted {
    fn check_access(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        Ok(())
    }
}

/// Association options for one connection. With the request at hand (plain port), only the
/// services the caller may use are accepted, and unknown storage classes are accepted one by
/// one; without it (TLS port), every service is offered and permissions are enforced per
/// message, and unknown classes need the promiscuous mode.
pub fn options<A: AccessControl>(
    services: &Services,
    access: A,
    permissions: Permissions,
    request: Option<&AssociationRQ>,
) -> ServerAssociationOptions<'static, A, Roles> {
    let dicom = &services.config;
    let mut o = ServerAssociationOptions::new()
        .ae_access_control(access)
        .ae_title(dicom.ae_title.as_str().to_string())
        .max_pdu_length(dicom.max_pdu)
        .strict(true)
        .with_negotiation(Roles {
            accept_unknown: dicom.accept_unknown_sop_classes,
        })
        .with_abstract_syntax(dimse::VERIFICATION);
    for (uid, allowed) in QR_CLASSES {
        if allowed(&permissions) {
            o = o.with_abstract_syntax(uid);
        }
    }
    // C-GET sub-operations travel on storage contexts the requestor proposed.
    if permissions.store || permissions.get {
        for (uid, _) in STORAGE_SOP_CLASSES {
            o = o.with_abstract_syntax(*uid);
        }
        if dicom.accept_unknown_sop_classes {
            match request {
                Some(rq) => {
                    for pc in &rq.presentation_contexts {
                        let uid = pc.abstract_syntax.trim_end_matches('\0');
                        if !dataset::is_storage_sop_class(uid) && is_storage_class(uid, true) {
                            o = o.with_abstract_syntax(uid.to_string());
                        }
                    }
                }
                None => o = o.promiscuous(true),
            }
        }
    }
    for ts in dataset::ts::all_known() {
        o = o.with_transfer_syntax(ts);
    }
    o
}
