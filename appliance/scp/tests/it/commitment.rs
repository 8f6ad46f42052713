//! Storage Commitment reports (N-EVENT-REPORT) sent to the listener: only the transaction's
//! destination may settle it, and only for the SOP classes it was sent.

use std::collections::HashSet;

use dataset::Encoding;
use dataset::synth::SynthInstance;
use dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
use dimse::{Command, CommandField, Status};
use store::outbox::QueueOp;
use storescu::commitment::{Reference, action_data_set};
use testkit::{Appliance, Scu};

use crate::support::{WAIT, store_all, wait_until};

/// An archive forwarding to `central` (AE CENTRAL, never reachable here: nothing listens on
/// port 9) with Storage Commitment, taking reports from loopback callers.
fn config() -> String {
    r#"
[dicom]
ae_title = "OUTPOST"
accept_unknown_callers = "loopback"

[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "CENTRAL"
host = "127.0.0.1"
port = 9
storage_commitment = true
"#
    .to_string()
}

/// Stores one instance and records it as awaiting `central`'s report under `txn` (as the
/// delivering worker would after the N-ACTION).
async fn awaiting(app: &Appliance, inst: &SynthInstance, txn: &str) {
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(&inst.sop_class, &[EXPLICIT_VR_LITTLE_ENDIAN])],
        &[],
    )
    .await
    .unwrap();
    store_all(
        &mut scu,
        std::slice::from_ref(inst),
        EXPLICIT_VR_LITTLE_ENDIAN,
        Encoding::EXPLICIT_LE,
    )
    .await;
    scu.release().await.unwrap();
    let peek = || {
        app.store
            .outbox_peek("central", 10, &HashSet::new(), u64::MAX / 2, usize::MAX)
            .unwrap()
            .ready
    };
    wait_until("the instance is queued", WAIT, || !peek().is_empty()).await;
    let items = peek()
        .iter()
        .map(|q| {
            let i = q.instance.as_ref().unwrap();
            (q.key, i.sop_class_uid.clone(), i.file.clone())
        })
        .collect();
    app.store
        .outbox_apply(vec![QueueOp::AwaitCommitment {
            destination: "central".into(),
            transaction_uid: txn.into(),
            items,
            retry: store::settle::Backoff {
                initial_ms: 10_000,
                multiplier_milli: 2000,
                max_ms: 3_600_000,
                max_attempts: None,
            },
        }])
        .await
        .unwrap();
}

/// Sends a success report (event type 1) for `txn` naming `refs` as `calling`, asking for
/// the SCP role of the class as an archive does, and returns the N-EVENT-REPORT-RSP.
async fn report(app: &Appliance, calling: &str, txn: &str, refs: &[Reference]) -> Command {
    report_with_roles(app, calling, txn, refs, &[dimse::STORAGE_COMMITMENT]).await
}

/// [`report`], proposing role selection for `scp_roles` only.
async fn report_with_roles(
    app: &Appliance,
    calling: &str,
    txn: &str,
    refs: &[Reference],
    scp_roles: &[&str],
) -> Command {
    let mut scu = Scu::connect(
        app.addr,
        calling,
        "OUTPOST",
        &[(dimse::STORAGE_COMMITMENT, &[EXPLICIT_VR_LITTLE_ENDIAN])],
        scp_roles,
    )
    .await
    .unwrap();
    let (pc, _) = scu
        .context(dimse::STORAGE_COMMITMENT, None)
        .expect("the report context is accepted");
    let mut rq = Command::new(CommandField::N_EVENT_REPORT_RQ);
    rq.message_id = Some(scu.next_id());
    rq.affected_sop_class_uid = Some(dimse::STORAGE_COMMITMENT.to_string());
    rq.affected_sop_instance_uid = Some(dimse::STORAGE_COMMITMENT_INSTANCE.to_string());
    rq.event_type_id = Some(1);
    rq.has_data_set = true;
    scu.channel().send_command(pc, &rq).await.unwrap();
    // The success report carries what the request did: the Transaction UID and the
    // Referenced SOP Sequence.
    let data = action_data_set(txn, refs, Encoding::EXPLICIT_LE);
    scu.channel().send_data_set(pc, &data).await.unwrap();
    let rsp = scu.response().await.unwrap();
    assert_eq!(rsp.field, CommandField::N_EVENT_REPORT_RSP);
    let _ = scu.release().await;
    rsp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_destination_may_settle_its_transaction_and_only_for_its_classes() {
    // Regression (review finding 13): any caller that could associate, here an unknown
    // loopback AE, sent an N-EVENT-REPORT for a real transaction UID and was answered
    // success; the instance then counted as held upstream (and became evictable) although
    // the destination never committed to it. A report naming the instance under another
    // SOP class was taken just as well.
    let app = Appliance::start(&config()).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    awaiting(&app, &inst, "2.25.4242").await;
    let right = [Reference {
        sop_class_uid: inst.sop_class.clone(),
        sop_instance_uid: inst.sop_uid.clone(),
    }];

    let rsp = report(&app, "INTRUDER", "2.25.4242", &right).await;
    assert_eq!(
        rsp.status,
        Some(Status::NOT_AUTHORIZED),
        "{:?}",
        rsp.error_comment
    );
    assert!(app.store.upstream_copies(&inst.sop_uid).unwrap().is_empty());
    assert_eq!(app.store.commitments("central").unwrap().len(), 1);

    let wrong = [Reference {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
        sop_instance_uid: inst.sop_uid.clone(),
    }];
    let rsp = report(&app, "CENTRAL", "2.25.4242", &wrong).await;
    assert_eq!(rsp.status, Some(Status(0x0119)), "{:?}", rsp.error_comment);
    assert!(app.store.upstream_copies(&inst.sop_uid).unwrap().is_empty());
    assert_eq!(app.store.commitments("central").unwrap().len(), 1);

    let rsp = report(&app, "CENTRAL", "2.25.4242", &right).await;
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    assert_eq!(
        app.store.upstream_copies(&inst.sop_uid).unwrap(),
        ["central"]
    );
    assert!(app.store.commitments("central").unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_may_report_without_role_selection_and_others_may_not() {
    // Regression (review finding 18): the Storage Commitment context was accepted only with
    // SCP/SCU role selection (SCP = 1). Several PACS propose it without; their report
    // association had the context refused, the report never arrived, and every instance
    // was sent again each commitment_timeout_s.
    let app = Appliance::start(&config()).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    awaiting(&app, &inst, "2.25.4343").await;
    let refs = [Reference {
        sop_class_uid: inst.sop_class.clone(),
        sop_instance_uid: inst.sop_uid.clone(),
    }];
    // Anyone else proposing it without the role is still refused the context (a modality
    // asking us to commit).
    let other = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[(dimse::STORAGE_COMMITMENT, &[EXPLICIT_VR_LITTLE_ENDIAN])],
        &[],
    )
    .await;
    if let Ok(scu) = other {
        assert!(scu.context(dimse::STORAGE_COMMITMENT, None).is_none());
        let _ = scu.release().await;
    }
    let rsp = report_with_roles(&app, "CENTRAL", "2.25.4343", &refs, &[]).await;
    assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    assert_eq!(
        app.store.upstream_copies(&inst.sop_uid).unwrap(),
        ["central"]
    );
    app.stop().await;
}
