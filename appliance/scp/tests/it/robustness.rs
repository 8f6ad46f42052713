//! Misbehaving peers: garbage, truncated and oversized PDUs, invalid command sets, data on a
//! rejected context, a peer vanishing mid-instance, a connection flood and idle associations.
//! After each, a new association is served.

use std::time::{Duration, Instant};

use dataset::synth::{SynthInstance, noise};
use dataset::{Encoding, Vr, tags};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason,
};
use dimse::{Command, CommandField, Incoming, Status};
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, Scu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    RawPeer, WAIT, assert_serves, association_rq, context_result, encode_pdu, identifier,
    instance_count, open_config, serves_within, tmp_files, wait_until,
};

const ECHO: &[(&str, &[&str])] = &[(dimse::VERIFICATION, &[IMPLICIT_LE])];

fn pdata(pc_id: u8, value_type: PDataValueType, is_last: bool, data: Vec<u8>) -> Pdu {
    Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type,
            is_last,
            data,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_get_an_a_abort() {
    let app = Appliance::start(&open_config("")).await;
    let mut peer = RawPeer::connect(app.addr).await;
    peer.write(b"GET / HTTP/1.1\r\nHost: outpost\r\n\r\n").await;
    let source = peer.expect_provider_abort().await;
    assert_eq!(
        source,
        AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnrecognizedPdu)
    );
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_association_request_then_close_frees_its_place() {
    // One place only, and a long association timeout: the place must come back because the
    // listener sees the close, not because a timer ran out.
    let app = Appliance::start(&open_config(
        "max_associations = 1\nassociation_timeout_s = 30",
    ))
    .await;
    let full = encode_pdu(&Pdu::AssociationRQ(association_rq("CT1", "OUTPOST", ECHO)));
    let mut peer = RawPeer::connect(app.addr).await;
    peer.write(&full[..40]).await;
    peer.stream.shutdown().await.unwrap();
    peer.expect_closed().await;
    serves_within(app.addr, Duration::from_secs(2)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn association_request_completed_with_garbage_is_aborted() {
    let app = Appliance::start(&open_config("")).await;
    let full = encode_pdu(&Pdu::AssociationRQ(association_rq("CT1", "OUTPOST", ECHO)));
    let mut peer = RawPeer::connect(app.addr).await;
    peer.write(&full[..40]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The length announced the rest; what follows is not an association request.
    let garbage = vec![0xEE; full.len() - 40];
    peer.write(&garbage).await;
    let source = peer.expect_provider_abort().await;
    assert_eq!(
        source,
        AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnrecognizedPdu)
    );
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_data_longer_than_the_negotiated_maximum_is_aborted() {
    let app = Appliance::start(&open_config("max_pdu = 4096")).await;
    let (mut peer, ac) = RawPeer::accepted(app.addr, association_rq("CT1", "OUTPOST", ECHO)).await;
    assert!(
        ac.user_variables
            .contains(&dicom_ul::pdu::UserVariableItem::MaxLength(4096))
    );
    // One PDU of 8000 + 6 bytes of PDV: twice what the listener said it takes.
    peer.send(&pdata(1, PDataValueType::Command, true, vec![0; 8000]))
        .await;
    peer.expect_provider_abort().await;
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_command_set_is_aborted() {
    let app = Appliance::start(&open_config("")).await;
    let (mut peer, ac) = RawPeer::accepted(app.addr, association_rq("CT1", "OUTPOST", ECHO)).await;
    assert_eq!(
        context_result(&ac, 1),
        PresentationContextResultReason::Acceptance
    );
    let junk = noise(42, 200);
    assert!(Command::decode(&junk).is_err());
    peer.send(&pdata(1, PDataValueType::Command, true, junk))
        .await;
    let source = peer.expect_provider_abort().await;
    assert_eq!(
        source,
        AbortRQSource::ServiceProvider(AbortRQServiceProviderReason::UnexpectedPdu)
    );
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_on_a_rejected_context_is_aborted() {
    let app = Appliance::start(&open_config("")).await;
    let rq = association_rq(
        "CT1",
        "OUTPOST",
        &[
            (dimse::VERIFICATION, &[IMPLICIT_LE]),
            ("1.3.6.1.4.1.9999.1", &[EXPLICIT_LE]),
        ],
    );
    let (mut peer, ac) = RawPeer::accepted(app.addr, rq).await;
    assert_eq!(
        context_result(&ac, 3),
        PresentationContextResultReason::AbstractSyntaxNotSupported
    );
    peer.send(&pdata(3, PDataValueType::Data, true, vec![0; 64]))
        .await;
    peer.expect_provider_abort().await;
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_set_fragment_on_another_context_than_its_command_is_aborted() {
    let app = Appliance::start(&open_config("")).await;
    let rq = association_rq(
        "CT1",
        "OUTPOST",
        &[(dimse::VERIFICATION, &[IMPLICIT_LE]), (CT, &[EXPLICIT_LE])],
    );
    let (mut peer, _) = RawPeer::accepted(app.addr, rq).await;
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let mut store = Command::new(CommandField::C_STORE_RQ);
    store.message_id = Some(1);
    store.affected_sop_class_uid = Some(CT.into());
    store.affected_sop_instance_uid = Some(inst.sop_uid.clone());
    store.priority = Some(0);
    store.has_data_set = true;
    peer.send(&pdata(3, PDataValueType::Command, true, store.encode()))
        .await;
    peer.send(&pdata(
        1,
        PDataValueType::Data,
        true,
        inst.dataset(Encoding::EXPLICIT_LE),
    ))
    .await;
    peer.expect_provider_abort().await;
    assert_eq!(instance_count(&app), 0);
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_closing_mid_data_set_leaves_nothing_behind() {
    let app = Appliance::start(&open_config("")).await;
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", &[(CT, &[EXPLICIT_LE])], &[])
        .await
        .unwrap();
    let (pc, _) = scu.context(CT, None).unwrap();
    let mut inst = SynthInstance::ct(1, 1, 1, 1);
    inst.pixel_bytes = 1 << 20;
    let data = inst.dataset(Encoding::EXPLICIT_LE);
    let mut rq = Command::new(CommandField::C_STORE_RQ);
    rq.message_id = Some(1);
    rq.affected_sop_class_uid = Some(CT.into());
    rq.affected_sop_instance_uid = Some(inst.sop_uid.clone());
    rq.priority = Some(0);
    rq.has_data_set = true;
    scu.channel().send_command(pc, &rq).await.unwrap();
    let max = scu.channel().max_fragment();
    scu.channel()
        .send_data_fragment(pc, data[..max].to_vec(), false)
        .await
        .unwrap();
    wait_until("the instance's temporary file", WAIT, || {
        !tmp_files(&app).is_empty()
    })
    .await;
    drop(scu);
    wait_until("the temporary file to go", WAIT, || {
        tmp_files(&app).is_empty()
    })
    .await;
    assert_eq!(instance_count(&app), 0);
    assert_serves(app.addr).await;
    // The same instance, sent whole, is stored.
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", &[(CT, &[EXPLICIT_LE])], &[])
        .await
        .unwrap();
    let rsp = scu.store(CT, &inst.sop_uid, None, &data).await.unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS));
    scu.release().await.unwrap();
    assert_eq!(instance_count(&app), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_survived() {
    // Rewritten for issue 9 A.1: this test used to assert that a real caller behind 100
    // silent connections was refused (A-ASSOCIATE-RJ transient, every slot taken). Silent
    // connections no longer hold association slots, so the caller is now served during the
    // flood, and the silent ones are closed after request_timeout_s.
    let app = Appliance::start(&open_config("request_timeout_s = 1\nmax_associations = 8")).await;
    let started = Instant::now();
    // 100 connections at once: most send nothing, some a partial request.
    let partial = encode_pdu(&Pdu::AssociationRQ(association_rq("CT1", "OUTPOST", ECHO)));
    let mut flood = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        if i % 10 == 0 {
            s.write_all(&partial[..20]).await.unwrap();
        }
        flood.push(s);
    }
    // A real caller is served while they hang on.
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[])
        .await
        .expect("the caller is accepted during the flood");
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    // The listener closes every silent connection after request_timeout_s (or sooner, when
    // newer ones from the same address push it out)...
    for s in &mut flood {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the listener closes a silent connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "a silent connection got {:?}", &buf[..n]);
    }
    let closed = started.elapsed();
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    drop(flood);
    // ...and serves again.
    serves_within(app.addr, Duration::from_secs(2)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_association_is_aborted_after_the_idle_timeout() {
    let app = Appliance::start(&open_config("idle_timeout_s = 1")).await;
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    let idle_from = Instant::now();
    let next = scu.channel().next(WAIT).await.unwrap();
    let after = idle_from.elapsed();
    assert!(matches!(next, Incoming::Aborted), "{next:?}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "aborted after {after:?}"
    );
    assert_serves(app.addr).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_operation_gets_0211_and_the_association_goes_on() {
    let app = Appliance::start(&open_config("")).await;
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", ECHO, &[])
        .await
        .unwrap();
    let (pc, _) = scu.context(dimse::VERIFICATION, None).unwrap();
    // N-ECHO does not exist; 0x0130 is N-ACTION-RQ, which this archive does not offer.
    let mut rq = Command::new(CommandField(0x0130));
    rq.message_id = Some(7);
    rq.affected_sop_class_uid = Some(dimse::VERIFICATION.into());
    rq.has_data_set = true;
    scu.channel().send_command(pc, &rq).await.unwrap();
    scu.channel()
        .send_data_set(
            pc,
            &identifier(Encoding::IMPLICIT_LE, &[(tags::PATIENT_ID, Vr::LO, b"X")]),
        )
        .await
        .unwrap();
    let rsp = scu.response().await.unwrap();
    assert_eq!(rsp.field, CommandField(0x8130));
    assert_eq!(rsp.message_id_responded_to, Some(7));
    assert_eq!(rsp.status, Some(Status::UNRECOGNIZED_OPERATION));
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    app.stop().await;
}
