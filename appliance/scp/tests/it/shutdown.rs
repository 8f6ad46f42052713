//! Stopping the listener: the grace period for open associations, connections that never
//! became associations, and acknowledged instances surviving a restart.

use std::time::{Duration, Instant};

use dataset::synth::SynthInstance;
use dataset::{Encoding, Vr, tags};
use dimse::{Incoming, Status};
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, Scu};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{WAIT, association_rq, encode_pdu, identifier, open_config, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_aborts_an_idle_association_after_the_grace_period() {
    let app = Appliance::start(&open_config("shutdown_grace_s = 1")).await;
    let mut scu = Scu::connect(
        app.addr,
        "CT1",
        "OUTPOST",
        &[(dimse::VERIFICATION, &[IMPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    let started = Instant::now();
    let (_, stopped) = app.stop().await;
    let took = started.elapsed();
    assert_eq!(stopped.aborted, 1);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "stop took {took:?}"
    );
    let next = scu.channel().next(WAIT).await.unwrap();
    assert!(matches!(next, Incoming::Aborted), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_only_released_associations_is_immediate() {
    let app = Appliance::start(&open_config("shutdown_grace_s = 5")).await;
    let mut scu = Scu::connect(
        app.addr,
        "CT1",
        "OUTPOST",
        &[(dimse::VERIFICATION, &[IMPLICIT_LE])],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
    let started = Instant::now();
    let (_, stopped) = app.stop().await;
    assert_eq!(stopped.aborted, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_does_not_wait_for_connections_that_never_associated() {
    let app = Appliance::start(&open_config(
        "shutdown_grace_s = 5\nassociation_timeout_s = 30",
    ))
    .await;
    // One connection that sends nothing, one stuck half way through its request.
    let silent = TcpStream::connect(app.addr).await.unwrap();
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    let rq = encode_pdu(&dicom_ul::pdu::Pdu::AssociationRQ(association_rq(
        "CT1",
        "OUTPOST",
        &[(dimse::VERIFICATION, &[IMPLICIT_LE])],
    )));
    partial.write_all(&rq[..30]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (_, stopped) = app.stop().await;
    let took = started.elapsed();
    assert_eq!(stopped.aborted, 0);
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    drop((silent, partial));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_instance_survives_a_stop_and_restart() {
    let config = open_config("shutdown_grace_s = 1");
    let app = Appliance::start(&config).await;
    let mut scu = Scu::connect(app.addr, "CT1", "OUTPOST", &[(CT, &[EXPLICIT_LE])], &[])
        .await
        .unwrap();
    let inst = SynthInstance::ct(1, 1, 1, 1);
    let data = inst.dataset(Encoding::EXPLICIT_LE);
    let rsp = scu.store(CT, &inst.sop_uid, None, &data).await.unwrap();
    assert_eq!(rsp.status, Some(Status::SUCCESS));
    // Stopped with the association still open.
    let (dir, stopped) = app.stop().await;
    assert_eq!(stopped.aborted, 1);
    drop(scu);

    let app = Appliance::start_in(dir, &config).await;
    assert_eq!(app.store.instance_count().unwrap(), 1);
    assert_eq!(
        stored(&app, &inst.sop_uid),
        Some((EXPLICIT_LE.to_string(), data))
    );
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
            (tags::STUDY_INSTANCE_UID, Vr::UI, inst.study_uid.as_bytes()),
        ],
    );
    let (matches, last) = scu.find(dimse::STUDY_ROOT_FIND, &q).await.unwrap();
    assert_eq!(last.status, Some(Status::SUCCESS));
    assert_eq!(matches.len(), 1);
    scu.release().await.unwrap();
    app.stop().await;
}
