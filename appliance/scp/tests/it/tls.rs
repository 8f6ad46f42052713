//! DICOM TLS: storage and query over TLS, client certificate verification, the caller policy
//! and permissions on the TLS port, and plain DICOM sent to the TLS port.

use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
use dicom_ul::pdu::{AssociationRJResult, AssociationRJServiceUserReason, AssociationRJSource};
use dimse::Status;
use testkit::{CT, EXPLICIT_LE, IMPLICIT_LE, Scu};

use crate::support::{
    assert_serves, identifier, instance_count, rejection, rejections, start_tls, stored,
    tls_options,
};

const ECHO: &[(&str, &[&str])] = &[(dimse::VERIFICATION, &[IMPLICIT_LE])];
const WORKLIST_FIND: &str = "1.2.840.10008.5.1.4.31";
const PRIVATE_CLASS: &str = "1.3.6.1.4.1.9999.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_find_over_tls() {
    let (app, pki) = start_tls("accept_unknown_callers = true", false, "").await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    let options = tls_options(
        &pki,
        false,
        "CT1",
        &[
            (CT, &[EXPLICIT_LE]),
            (dimse::STUDY_ROOT_FIND, &[IMPLICIT_LE]),
        ],
    );
    let mut scu = Scu::establish_tls(options, tls_addr).await.unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let data = inst.dataset(Encoding::EXPLICIT_LE);
    let rsp = scu.store(CT, &inst.sop_uid, None, &data).await.unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    assert_eq!(matches.len(), 1);
    let w = crate::support::walk(IMPLICIT_LE, &matches[0]);
    assert_eq!(
        dataset::encode::trim_padding(&crate::support::value(&w, tags::STUDY_INSTANCE_UID)),
        inst.study_uid.as_bytes()
    );
    scu.release().await.unwrap();
    assert_eq!(
        stored(&app, &inst.sop_uid),
        Some((EXPLICIT_LE.into(), data))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_is_required_when_client_ca_is_set() {
    let (app, pki) = start_tls("accept_unknown_callers = true", true, "").await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    let without = Scu::establish_tls(tls_options(&pki, false, "CT1", ECHO), tls_addr).await;
    assert!(without.is_err(), "a client without a certificate got in");
    let mut with = Scu::establish_tls(tls_options(&pki, true, "CT1", ECHO), tls_addr)
        .await
        .unwrap();
    assert_eq!(with.echo().await.unwrap(), Status::SUCCESS);
    with.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_dicom_on_the_tls_port_fails_cleanly() {
    let (app, pki) = start_tls("accept_unknown_callers = true", false, "").await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    let plain = Scu::connect(tls_addr, "CT1", "OUTPOST", ECHO, &[]).await;
    assert!(plain.is_err(), "plain DICOM was accepted on the TLS port");
    // Both listeners keep working.
    let mut scu = Scu::establish_tls(tls_options(&pki, false, "CT1", ECHO), tls_addr)
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_caller_is_rejected_on_the_tls_port() {
    let (app, pki) = start_tls("accept_unknown_callers = false", false, "").await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    let rj =
        rejection(Scu::establish_tls(tls_options(&pki, false, "STRANGER", ECHO), tls_addr).await);
    assert_eq!(rj.result, AssociationRJResult::Permanent);
    assert_eq!(
        rj.source,
        AssociationRJSource::ServiceUser(
            AssociationRJServiceUserReason::CallingAETitleNotRecognized
        )
    );
    let lines = rejections(&app);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("\"calling_ae\":\"STRANGER\""),
        "{}",
        lines[0]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_remote_is_accepted_on_the_tls_port() {
    let (app, pki) = start_tls(
        "accept_unknown_callers = false",
        true,
        "[[dicom.remote]]\nae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\ntls = true",
    )
    .await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    let mut scu = Scu::establish_tls(tls_options(&pki, true, "CT1", ECHO), tls_addr)
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    assert!(rejections(&app).is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_without_permission_over_tls_is_not_authorized() {
    // On the TLS port every service is negotiated; permissions are enforced per message.
    let (app, pki) = start_tls(
        "accept_unknown_callers = false",
        false,
        "[[dicom.remote]]\nae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\ntls = true\npermissions = [\"store\"]",
    )
    .await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    let options = tls_options(
        &pki,
        false,
        "CT1",
        &[
            (CT, &[EXPLICIT_LE]),
            (dimse::STUDY_ROOT_FIND, &[IMPLICIT_LE]),
            (dimse::STUDY_ROOT_GET, &[IMPLICIT_LE]),
        ],
    );
    let mut scu = Scu::establish_tls(options, tls_addr).await.unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let rsp = scu
        .store(
            CT,
            &inst.sop_uid,
            None,
            &inst.dataset(Encoding::EXPLICIT_LE),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS));
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert!(matches.is_empty());
    assert_eq!(last.status, Some(Status::NOT_AUTHORIZED));
    let (received, responses) = scu
        .get(dimse::STUDY_ROOT_GET, &q, Status::SUCCESS)
        .await
        .unwrap();
    assert!(received.is_empty());
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].0.status, Some(Status::NOT_AUTHORIZED));
    // The association goes on.
    let other = SynthInstance::ct(1, 1, 1, 2);
    let rsp = scu
        .store(
            CT,
            &other.sop_uid,
            None,
            &other.dataset(Encoding::EXPLICIT_LE),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worklist_context_over_tls_serves_nothing() {
    // On the TLS port the request is only seen inside dicom-ul's negotiation, so unknown
    // classes are accepted promiscuously and a Modality Worklist context may be opened.
    // Nothing is served on it: no storage, no query.
    let (app, pki) = start_tls(
        "accept_unknown_callers = true\naccept_unknown_sop_classes = true",
        false,
        "",
    )
    .await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    let options = tls_options(
        &pki,
        false,
        "CT1",
        &[
            (WORKLIST_FIND, &[IMPLICIT_LE]),
            (PRIVATE_CLASS, &[EXPLICIT_LE]),
            (dimse::VERIFICATION, &[IMPLICIT_LE]),
        ],
    );
    let mut scu = Scu::establish_tls(options, tls_addr).await.unwrap();
    assert!(scu.context(PRIVATE_CLASS, None).is_some());
    if scu.context(WORKLIST_FIND, None).is_some() {
        let mut inst = SynthInstance::ct(1, 1, 1, 1);
        inst.sop_class = WORKLIST_FIND.into();
        let rsp = scu
            .store(
                WORKLIST_FIND,
                &inst.sop_uid,
                None,
                &inst.dataset(Encoding::IMPLICIT_LE),
            )
            .await
            .unwrap();
        assert_eq!(rsp.status, Some(Status::SOP_CLASS_NOT_SUPPORTED));
        let q = identifier(
            Encoding::IMPLICIT_LE,
            &[(tags::PATIENT_ID, Vr::LO, b"PID00001")],
        );
        let (matches, last) = scu.find(WORKLIST_FIND, &q).await.unwrap();
        assert!(matches.is_empty());
        assert_eq!(last.status, Some(Status::SOP_CLASS_NOT_SUPPORTED));
    }
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 0);
    app.stop().await;
}
