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
const MPPS: &str = "1.2.840.10008.3.1.2.3.3";

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
async fn services_without_permission_are_not_negotiated_over_tls() {
    // The TLS port used to negotiate every service and refuse a forbidden one per message
    // (0x0124), because dicom-ul negotiated it before the request could be seen. The
    // listener now reads the request itself on both ports, so a store-only remote is offered
    // only what it may use, over TLS as on the plain port: its C-FIND and C-GET contexts are
    // refused at negotiation, and its stores go on.
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
    assert!(scu.context(CT, None).is_some());
    assert!(scu.context(dimse::STUDY_ROOT_FIND, None).is_none());
    assert!(scu.context(dimse::STUDY_ROOT_GET, None).is_none());
    for image in 1..=2 {
        let inst = SynthInstance::ct(1, 1, 1, image);
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
    }
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_port_refuses_services_it_does_not_provide() {
    // A modality on the TLS port proposed Modality Worklist, MPPS and Storage Commitment (as
    // SCU, asking us to commit). Because dicom-ul negotiated the TLS port without the request
    // in hand, it was promiscuous with `accept_unknown_sop_classes` and offered commitment to
    // everyone: every one of those contexts was accepted (seen before the fix: all three
    // accepted), so the modality believed this AE provides worklists and commitment. They are
    // refused now (abstract syntax not supported); storage and Verification go on.
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
            (MPPS, &[IMPLICIT_LE]),
            (dimse::STORAGE_COMMITMENT, &[IMPLICIT_LE]),
            (CT, &[EXPLICIT_LE]),
            (dimse::VERIFICATION, &[IMPLICIT_LE]),
        ],
    );
    let mut scu = Scu::establish_tls(options, tls_addr).await.unwrap();
    for uid in [WORKLIST_FIND, MPPS, dimse::STORAGE_COMMITMENT] {
        assert!(
            scu.context(uid, None).is_none(),
            "{uid} was accepted on the TLS port"
        );
    }
    assert!(scu.context(CT, None).is_some());
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_to_a_tls_destination_trusts_its_ca_bundle() {
    // A workstation asked the archive to C-MOVE a study to a `tls = true` destination. The
    // outbound TLS client trusted only `client_ca` (the modality CA): with none configured the
    // trust store was empty and every handshake failed with UnknownIssuer (seen before the fix:
    // 0xA702, nothing delivered). The remote's own `ca_bundle` is trusted now.
    let (dest, pki) = start_tls("accept_unknown_callers = true", false, "").await;
    let dest_tls = dest.tls_addr.expect("TLS listener");
    let config = format!(
        "[dicom]\nae_title = \"SOURCE\"\naccept_unknown_callers = true\n{}\n[[dicom.remote]]\nae_title = \"OUTPOST\"\nhost = \"127.0.0.1\"\nport = {}\ntls = true\nca_bundle = {:?}\n",
        pki.section(false),
        dest_tls.port(),
        pki.ca
    );
    let app = testkit::Appliance::start(&config).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let mut scu = Scu::connect(app.addr, "CT1", "SOURCE", &[(CT, &[EXPLICIT_LE])], &[])
        .await
        .unwrap();
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
    scu.release().await.unwrap();
    let mut mover = Scu::connect(
        app.addr,
        "WORKSTATION",
        "SOURCE",
        &[(dimse::STUDY_ROOT_MOVE, &[IMPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, inst.study_uid.as_bytes()),
        ],
    );
    let responses = mover
        .move_(dimse::STUDY_ROOT_MOVE, "OUTPOST", &q)
        .await
        .unwrap();
    let last = &responses.last().expect("a final response").0;
    assert_eq!(
        last.status,
        Some(Status::SUCCESS),
        "{:?}",
        last.error_comment
    );
    assert_eq!(last.completed, Some(1));
    mover.release().await.unwrap();
    assert_eq!(
        stored(&dest, &inst.sop_uid),
        Some((EXPLICIT_LE.into(), inst.dataset(Encoding::EXPLICIT_LE)))
    );
    app.stop().await;
    dest.stop().await;
}
