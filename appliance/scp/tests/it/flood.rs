//! Floods before association (issue 9, A.1). An attacker on the modality network held 40
//! silent TCP connections open (more than the 32 association slots), and the CT's C-ECHO was
//! refused for the whole association timeout: silent sockets held association slots. With
//! 2,000 connections that each sent 4 bytes of a PDU header, every one of them kept a 64 KiB
//! peek buffer and a 2 ms polling timer, and the caller was refused too. On the TLS port, with
//! every slot taken, the listener read the A-ASSOCIATE-RQ with the 4 GiB maximum, so a client
//! claiming a 4 GiB request was buffered without bound. The flood and the real caller share an
//! address here (loopback), as they do behind NAT.
//!
//! Also (item 21): the A-ASSOCIATE-AC carried dicom-ul's Implementation Class UID and version
//! name, not Outpost's own, which its files carry.

use std::time::{Duration, Instant};

use dicom_ul::pdu::{Pdu, UserVariableItem};
use dimse::Status;
use testkit::{Appliance, IMPLICIT_LE, Scu};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{RawPeer, association_rq, open_config, start_tls, tls_options};

const ECHO: &[(&str, &[&str])] = &[(dimse::VERIFICATION, &[IMPLICIT_LE])];

/// The configured modality.
fn ct_config() -> String {
    "[dicom]\nae_title = \"OUTPOST\"\naccept_unknown_callers = false\n\n\
     [[dicom.remote]]\nae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\n"
        .to_string()
}

/// A C-ECHO from CT1 answered with success within `within`, from connect to release.
async fn echo_within(addr: std::net::SocketAddr, within: Duration) {
    let started = Instant::now();
    let run = async {
        let mut scu = Scu::connect(addr, "CT1", "OUTPOST", ECHO, &[])
            .await
            .expect("CT1 is accepted during the flood");
        assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
        scu.release().await.unwrap();
    };
    tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| panic!("no C-ECHO answer within {within:?}"));
    eprintln!("C-ECHO during the flood took {:?}", started.elapsed());
}

/// A /proc/self/status field in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Resets the peak RSS to the current RSS (Linux `clear_refs` 5) and returns the current RSS.
fn reset_peak_kib() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("peak RSS can be reset");
    status_kib("VmRSS:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_silent_sockets_do_not_hold_association_slots() {
    let app = Appliance::start(&ct_config()).await;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // Let the listener accept them all before the real caller comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    echo_within(app.addr, Duration::from_secs(2)).await;
    drop(silent);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_headers_leave_the_caller_served_in_bounded_memory() {
    let app = Appliance::start(&ct_config()).await;
    let baseline = reset_peak_kib();
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut half = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        // An A-ASSOCIATE-RQ header's first 4 bytes: type, reserved, half the length.
        s.write_all(&[0x01, 0x00, 0x00, 0x00]).await.unwrap();
        half.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo_within(app.addr, Duration::from_secs(2)).await;
    let grown_mib = status_kib("VmHWM:").saturating_sub(baseline) / 1024;
    let rss_mib = status_kib("VmRSS:") / 1024;
    eprintln!("peak growth {grown_mib} MiB, RSS now {rss_mib} MiB");
    assert!(rss_mib < 200, "RSS {rss_mib} MiB during the flood");
    assert!(grown_mib < 100, "peak RSS grew by {grown_mib} MiB");
    drop(half);
    drop(silent);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_request_claiming_four_gib_is_refused_unbuffered() {
    let (app, pki) = start_tls(
        "accept_unknown_callers = true\nmax_associations = 1",
        false,
        "",
    )
    .await;
    let tls_addr = app.tls_addr.expect("TLS listener");
    // Take the one association slot, so that the claim meets the overload path as well.
    let holder = Scu::establish_tls(tls_options(&pki, false, "CT1", ECHO), tls_addr)
        .await
        .unwrap();
    let baseline = reset_peak_kib();
    let connector = tokio_rustls::TlsConnector::from(pki.client(false));
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // An A-ASSOCIATE-RQ header claiming 0xFFFF_FFF0 bytes, then 64 MiB of them.
    tls.write_all(&[0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xF0])
        .await
        .unwrap();
    let chunk = vec![0x10u8; 1024 * 1024];
    let mut sent = 0usize;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_secs(3), tls.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                Ok(Err(_)) => return "write failed: the listener closed",
                Err(_) => return "write stalled: the listener stopped reading",
            }
        }
        "all 64 MiB accepted"
    })
    .await
    .unwrap_or("timed out");
    let grown_mib = status_kib("VmHWM:").saturating_sub(baseline) / 1024;
    eprintln!(
        "{outcome} after {} MiB; peak grew by {grown_mib} MiB",
        sent >> 20
    );
    assert_ne!(outcome, "all 64 MiB accepted");
    assert!(grown_mib < 16, "peak RSS grew by {grown_mib} MiB");
    // What came back, if anything, is a refusal, never an acceptance.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    if !answer.is_empty() {
        assert!(
            answer[0] == 0x03 || answer[0] == 0x07,
            "answer type 0x{:02X}",
            answer[0]
        );
    }
    drop(holder);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_claiming_four_gib_is_refused_unbuffered() {
    let app = Appliance::start(&open_config("max_associations = 1")).await;
    let mut peer = RawPeer::connect(app.addr).await;
    peer.write(&[0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xF0]).await;
    match peer.next().await {
        None | Some(Pdu::AssociationRJ(_)) | Some(Pdu::AbortRQ { .. }) => {}
        Some(other) => panic!("expected a refusal, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_association_ac_carries_outposts_implementation_class_uid() {
    let app = Appliance::start(&open_config("")).await;
    let (_peer, ac) = RawPeer::accepted(app.addr, association_rq("CT1", "OUTPOST", ECHO)).await;
    let class = ac.user_variables.iter().find_map(|v| match v {
        UserVariableItem::ImplementationClassUID(uid) => Some(uid.trim_end_matches('\0')),
        _ => None,
    });
    let version = ac.user_variables.iter().find_map(|v| match v {
        UserVariableItem::ImplementationVersionName(name) => Some(name.trim()),
        _ => None,
    });
    assert_eq!(class, Some(dataset::meta::IMPLEMENTATION_CLASS_UID));
    assert_eq!(version, Some(dataset::meta::IMPLEMENTATION_VERSION_NAME));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_host_name_that_never_resolves_stalls_no_one() {
    // Before the fix every connection resolved every check_host name with getaddrinfo, one
    // after another and without a timeout, before its policy decision: during a DNS outage
    // (often part of a WAN outage) every modality waited. Names are now resolved in the
    // background. (A stalling resolver cannot be staged here; `.invalid` fails at once, so
    // this checks the outcome: CT1 is served at once, CT2's unresolved name matches no one.)
    let app = Appliance::start(
        "[dicom]\nae_title = \"OUTPOST\"\naccept_unknown_callers = false\n\n\
         [[dicom.remote]]\nae_title = \"CT1\"\nhost = \"127.0.0.1\"\nport = 104\n\n\
         [[dicom.remote]]\nae_title = \"CT2\"\nhost = \"pacs.outpost-test.invalid\"\nport = 104\ncheck_host = true\n",
    )
    .await;
    echo_within(app.addr, Duration::from_secs(2)).await;
    let refused = Scu::connect(app.addr, "CT2", "OUTPOST", ECHO, &[]).await;
    assert!(
        refused.is_err(),
        "CT2 accepted although its host never resolved"
    );
    app.stop().await;
}
