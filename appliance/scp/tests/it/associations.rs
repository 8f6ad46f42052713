//! Who may associate and what is negotiated: caller and called AE checks, host and TLS
//! restrictions, the association limit, per-remote permissions, and the audit trail of
//! rejections.

use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
use dicom_ul::pdu::{
    AssociationRJResult, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, Pdu, PresentationContextResultReason,
};
use dimse::Status;
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, Scu};

use crate::support::{
    RawPeer, association_rq, context_result, identifier, instance_count, open_config, rejection,
    rejections, start_tls, wait_until,
};

const ECHO: &[(&str, &[&str])] = &[(dimse::VERIFICATION, &[IMPLICIT_LE])];

fn listed_only(remote: &str) -> String {
    format!(
        "[dicom]\nae_title = \"OUTPOST\"\naccept_unknown_callers = false\n\n[[dicom.remote]]\n{remote}\n"
    )
}

fn service_user(reason: AssociationRJServiceUserReason) -> AssociationRJSource {
    AssociationRJSource::ServiceUser(reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_calling_ae_is_rejected_permanently() {
    let app = Appliance::start(&listed_only(
        "ae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104",
    ))
    .await;
    let rj = rejection(Scu::connect(app.addr, "STRANGER", "OUTPOST", ECHO, &[]).await);
    assert_eq!(rj.result, AssociationRJResult::Permanent);
    assert_eq!(
        rj.source,
        service_user(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    );
    let lines = rejections(&app);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("\"calling_ae\":\"STRANGER\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("\"called_ae\":\"OUTPOST\""),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("not in [[dicom.remote]]"), "{}", lines[0]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_remote_is_accepted() {
    let app = Appliance::start(&listed_only(
        "ae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104",
    ))
    .await;
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    assert!(rejections(&app).is_empty());
    assert!(
        app.audit_lines()
            .iter()
            .any(|l| l.contains("\"event\":\"association-accepted\"")
                && l.contains("\"calling_ae\":\"CT1\""))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_called_ae_is_rejected_when_checked() {
    let app = Appliance::start(&open_config("check_called_ae = true")).await;
    let rj = rejection(Scu::connect(app.addr, "CT1", "SOMEONE", ECHO, &[]).await);
    assert_eq!(rj.result, AssociationRJResult::Permanent);
    assert_eq!(
        rj.source,
        service_user(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
    );
    let lines = rejections(&app);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("\"called_ae\":\"SOMEONE\""),
        "{}",
        lines[0]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_called_ae_is_accepted_when_not_checked() {
    let app = Appliance::start(&open_config("check_called_ae = false")).await;
    let mut scu = Scu::connect(app.addr, "CT1", "SOMEONE", ECHO, &[])
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_host_rejects_another_address() {
    let app = Appliance::start(&listed_only(
        "ae_title = \"CT1\"\nhost = \"10.255.255.1\"\nport = 104\ncheck_host = true",
    ))
    .await;
    let rj = rejection(Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[]).await);
    assert_eq!(rj.result, AssociationRJResult::Permanent);
    assert_eq!(
        rj.source,
        service_user(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    );
    let lines = rejections(&app);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("only accepted from 10.255.255.1"),
        "{}",
        lines[0]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_host_accepts_the_listed_address() {
    let app = Appliance::start(&listed_only(
        "ae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\ncheck_host = true",
    ))
    .await;
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_remote_is_rejected_on_the_plain_port() {
    let (app, _pki) = start_tls(
        "accept_unknown_callers = false",
        false,
        "[[dicom.remote]]\nae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\ntls = true",
    )
    .await;
    let rj = rejection(Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[]).await);
    assert_eq!(rj.result, AssociationRJResult::Permanent);
    assert_eq!(
        rj.source,
        service_user(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
    );
    let lines = rejections(&app);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("configured to use DICOM TLS"),
        "{}",
        lines[0]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_unknown_callers_are_accepted_from_loopback() {
    let app = Appliance::start(
        "[dicom]\nae_title = \"OUTPOST\"\naccept_unknown_callers = \"loopback\"\n",
    )
    .await;
    let mut scu = Scu::connect(app.addr, "STRANGER", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    assert!(rejections(&app).is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn association_limit_rejects_transiently_and_the_others_go_on() {
    let app = Appliance::start(&open_config("max_associations = 2")).await;
    let mut first = Scu::connect(app.addr, "A", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    let mut second = Scu::connect(app.addr, "B", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    let rj = rejection(Scu::connect(app.addr, "C", "OUTPOST", ECHO, &[]).await);
    assert_eq!(rj.result, AssociationRJResult::Transient);
    assert_eq!(
        rj.source,
        AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded
        )
    );
    assert_eq!(first.echo().await.unwrap(), Status::SUCCESS);
    assert_eq!(second.echo().await.unwrap(), Status::SUCCESS);
    let lines = rejections(&app);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"calling_ae\":\"C\""), "{}", lines[0]);
    assert!(lines[0].contains("max_associations"), "{}", lines[0]);
    // A released association frees its place.
    first.release().await.unwrap();
    let mut third = None;
    for _ in 0..100 {
        match Scu::connect(app.addr, "C", "OUTPOST", ECHO, &[]).await {
            Ok(s) => {
                third = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let mut third = third.expect("a place frees up after a release");
    assert_eq!(third.echo().await.unwrap(), Status::SUCCESS);
    assert_eq!(second.echo().await.unwrap(), Status::SUCCESS);
    third.release().await.unwrap();
    second.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_archive_gets_a_slot_when_every_other_is_taken() {
    // A recall makes the central PACS open an association back to us while the retrievals
    // waiting for it hold their slots; with every slot taken the recall could never arrive.
    let app = Appliance::start(&format!(
        "{}\n[[dicom.remote]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\nupstream = true\n",
        open_config("max_associations = 1")
    ))
    .await;
    let busy = Scu::connect(app.addr, "VIEWER", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    let rj = rejection(Scu::connect(app.addr, "OTHER", "OUTPOST", ECHO, &[]).await);
    assert_eq!(rj.result, AssociationRJResult::Transient);
    let mut pacs = Scu::connect(app.addr, "PACS", "OUTPOST", ECHO, &[])
        .await
        .expect("the upstream archive has a slot of its own");
    assert_eq!(pacs.echo().await.unwrap(), Status::SUCCESS);
    pacs.release().await.unwrap();
    busy.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_only_remote_gets_only_find_contexts() {
    let app = Appliance::start(&listed_only(
        "ae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\npermissions = [\"find\"]",
    ))
    .await;
    let rq = association_rq(
        "CT1",
        "OUTPOST",
        &[
            (CT, &[EXPLICIT_LE]),
            (dimse::STUDY_ROOT_FIND, &[IMPLICIT_LE]),
            (dimse::PATIENT_ROOT_FIND, &[IMPLICIT_LE]),
            (dimse::STUDY_ROOT_MOVE, &[IMPLICIT_LE]),
            (dimse::STUDY_ROOT_GET, &[IMPLICIT_LE]),
            (dimse::VERIFICATION, &[IMPLICIT_LE]),
        ],
    );
    let (mut peer, ac) = RawPeer::accepted(app.addr, rq).await;
    use PresentationContextResultReason::{AbstractSyntaxNotSupported, Acceptance};
    assert_eq!(context_result(&ac, 1), AbstractSyntaxNotSupported);
    assert_eq!(context_result(&ac, 3), Acceptance);
    assert_eq!(context_result(&ac, 5), Acceptance);
    assert_eq!(context_result(&ac, 7), AbstractSyntaxNotSupported);
    assert_eq!(context_result(&ac, 9), AbstractSyntaxNotSupported);
    assert_eq!(context_result(&ac, 11), Acceptance);
    peer.send(&Pdu::ReleaseRQ).await;
    assert_eq!(peer.next().await, Some(Pdu::ReleaseRP));

    // The query itself works.
    let mut scu = Scu::connect(
        app.addr,
        "CT1",
        "OUTPOST",
        &[(dimse::STUDY_ROOT_FIND, &[IMPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    let q = identifier(
        Encoding::IMPLICIT_LE,
        &[
            (tags::QUERY_RETRIEVE_LEVEL, Vr::CS, b"STUDY"),
            (tags::STUDY_INSTANCE_UID, Vr::UI, b""),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert!(matches.is_empty());
    assert_eq!(last.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_by_a_remote_without_store_permission_is_not_authorized() {
    // C-GET needs the storage contexts, so a get-only remote has them, but may not store.
    let app = Appliance::start(&listed_only(
        "ae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\npermissions = [\"get\"]",
    ))
    .await;
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", &[(CT, &[EXPLICIT_LE])], &[])
        .await
        .unwrap();
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
    assert_eq!(rsp.status, Some(Status::NOT_AUTHORIZED));
    assert_eq!(
        rsp.affected_sop_instance_uid.as_deref(),
        Some(inst.sop_uid.as_str())
    );
    assert_eq!(instance_count(&app), 0);
    scu.release().await.unwrap();
    wait_until("the refusal is audited", crate::support::WAIT, || {
        app.audit_lines()
            .iter()
            .any(|l| l.contains("\"event\":\"instances-stored\"") && l.contains("minor-failure"))
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_archive_turns_senders_away_and_keeps_answering_queries() {
    let app = Appliance::start(&open_config("")).await;
    app.store
        .hold_ingest(Some("RAID md0 (raid5) failed at 03:12".into()));
    // A sender with nothing but instances to give is told to come back later.
    let rj =
        rejection(Scu::connect(app.addr, "CT1", "OUTPOST", &[(CT, &[EXPLICIT_LE])], &[]).await);
    assert_eq!(rj.result, AssociationRJResult::Transient);
    assert_eq!(
        rj.source,
        AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::TemporaryCongestion
        )
    );
    let lines = rejections(&app);
    assert!(
        lines.iter().any(|l| l.contains("RAID md0 (raid5) failed")),
        "{lines:?}"
    );
    // Verification alone is no sender: a modality checking the link still gets its answer.
    let mut echo = Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    assert_eq!(echo.echo().await.unwrap(), Status::SUCCESS);
    echo.release().await.unwrap();
    // An association that also queries is accepted; its C-STORE gets 0xA700 with the reason.
    let mut mixed = Scu::connect(
        app.addr,
        "VIEWER",
        "OUTPOST",
        &[
            (CT, &[EXPLICIT_LE]),
            (dimse::STUDY_ROOT_FIND, &[EXPLICIT_LE]),
        ],
        &[],
    )
    .await
    .unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let rsp = mixed
        .store(
            CT,
            &inst.sop_uid,
            None,
            &inst.dataset(Encoding::EXPLICIT_LE),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status, Some(Status::OUT_OF_RESOURCES));
    assert!(
        rsp.error_comment
            .as_deref()
            .is_some_and(|c| c.contains("not accepting instances")),
        "{:?}",
        rsp.error_comment
    );
    assert_eq!(instance_count(&app), 0);
    mixed.release().await.unwrap();
    // Released: stores are taken again.
    app.store.hold_ingest(None);
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", &[(CT, &[EXPLICIT_LE])], &[])
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
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_looping_rejected_associations_leaves_a_bounded_audit_trail() {
    // A misconfigured modality (or a scanner) retried a refused association in a tight loop.
    // Every rejection was one more line in one audit file on the data volume, without end:
    // 10,000 attempts wrote 10,000 lines. Now the first few per minute per (address, reason)
    // are written, and one summary line counts the rest.
    const ATTEMPTS: usize = 10_000;
    const LOOPS: usize = 8;
    let app = Appliance::start(&format!(
        "{}\n[audit]\nrejections_per_minute = 20\n",
        listed_only("ae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104")
    ))
    .await;
    let addr = app.addr;
    let loops: Vec<_> = (0..LOOPS)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..ATTEMPTS / LOOPS {
                    let (_, answer) =
                        RawPeer::associate(addr, association_rq("LOOPER", "OUTPOST", ECHO)).await;
                    assert!(matches!(answer, Pdu::AssociationRJ(_)), "{answer:?}");
                }
            })
        })
        .collect();
    for l in loops {
        l.await.unwrap();
    }
    let lines = rejections(&app);
    let bytes = std::fs::metadata(&app.audit_path).unwrap().len();
    eprintln!(
        "{ATTEMPTS} rejected associations: {} audit lines, {bytes} bytes",
        lines.len()
    );
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Written one by one, or counted in a summary: every attempt is accounted for.
    let accounted: u64 = parsed
        .iter()
        .map(|l| l["repeated"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(accounted, ATTEMPTS as u64);
    // A minute's window: 20 lines and a summary; a slow run may span a few windows.
    assert!(lines.len() <= 5 * 21, "{} lines", lines.len());
    let summary = parsed
        .iter()
        .find(|l| l.get("repeated").is_some())
        .expect("a summary line");
    let detail = summary["detail"].as_str().unwrap();
    assert!(
        detail.contains("more rejections of 127.0.0.1 for ")
            && detail.ends_with("in the last minute"),
        "{detail}"
    );
    // The known caller is still served.
    let mut scu = Scu::connect(addr, "CT1", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    app.stop().await;
}
