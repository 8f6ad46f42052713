//! AE title bindings on the TLS port: a certificate from the modality CA may claim only the AE
//! titles bound to it.
//!
//! The story (issue 9, item 17): with `client_ca` set, any certificate the CA issued was
//! accepted with any calling AE title. A workstation's certificate could call itself the
//! central PACS (an `upstream` remote, whose instances are never forwarded and which has
//! slots beyond the limit) and be let in. Before the fix the association below claiming
//! `PACS` with the `CT1` certificate was accepted; it is refused now, permanently, with
//! calling-AE-not-recognized, and the refusal names the AE and the certificate's subject.

use dicom_ul::pdu::{AssociationRJResult, AssociationRJServiceUserReason, AssociationRJSource};
use dimse::Status;
use testkit::{IMPLICIT_LE, Scu};

use crate::support::{Pki, rejection, rejections, start_tls, tls_options};

const ECHO: &[(&str, &[&str])] = &[(dimse::VERIFICATION, &[IMPLICIT_LE])];

fn remote(ae: &str, binding: &str) -> String {
    format!(
        "[[dicom.remote]]\nae_title = \"{ae}\"\nhost = \"127.0.0.1\"\nport = 104\ntls = true\n{binding}\n"
    )
}

fn assert_calling_ae_refused<T>(result: Result<T, dicom_ul::association::Error>) {
    let rj = rejection(result);
    assert_eq!(rj.result, AssociationRJResult::Permanent);
    assert_eq!(
        rj.source,
        AssociationRJSource::ServiceUser(
            AssociationRJServiceUserReason::CallingAETitleNotRecognized
        )
    );
}

async fn echo_with(pki: &Pki, other: bool, calling: &str, addr: std::net::SocketAddr) -> Status {
    let options = tls_options(pki, true, calling, ECHO);
    let options = if other {
        options.tls_config(pki.other_client())
    } else {
        options
    };
    let mut scu = Scu::establish_tls(options, addr).await.unwrap();
    let status = scu.echo().await.unwrap();
    scu.release().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_cannot_claim_an_ae_bound_to_another() {
    let extra = remote(
        "PACS",
        "upstream = true\ncertificate_names = [\"pacs.test\"]",
    ) + &remote("CT1", "certificate_names = [\"modality.test\"]");
    let (app, pki) = start_tls("accept_unknown_callers = false", true, &extra).await;
    let tls = app.tls_addr.expect("TLS listener");
    // The CT1 certificate (SAN modality.test) claiming the upstream PACS.
    assert_calling_ae_refused(Scu::establish_tls(tls_options(&pki, true, "PACS", ECHO), tls).await);
    let lines = rejections(&app);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"calling_ae\":\"PACS\""), "{}", lines[0]);
    assert!(
        lines[0].contains("CN=CT1"),
        "the subject is not named: {}",
        lines[0]
    );
    assert!(
        lines[0].contains("pacs.test"),
        "the binding is not named: {}",
        lines[0]
    );
    // The same certificate as the AE bound to it goes on.
    assert_eq!(echo_with(&pki, false, "CT1", tls).await, Status::SUCCESS);
    // And another trusted certificate cannot be CT1.
    let options = tls_options(&pki, true, "CT1", ECHO).tls_config(pki.other_client());
    assert_calling_ae_refused(Scu::establish_tls(options, tls).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_matches_the_common_name_or_a_pinned_fingerprint() {
    // Many hospital CAs put the device (or its AE title) in the subject CN only; others pin
    // the exact certificate. Both are bindings; with both set, both must hold.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let pin = pki.client_sha256();
    let extra = remote("CT1", "certificate_names = [\"ct1\"]")
        + &remote("CT2", &format!("certificate_sha256 = [{pin:?}]"))
        + &remote(
            "CT3",
            &format!("certificate_names = [\"modality.test\"]\ncertificate_sha256 = [{pin:?}]"),
        );
    let config = format!(
        "[dicom]\nae_title = \"OUTPOST\"\naccept_unknown_callers = false\n{}\n{extra}\n",
        pki.section(true)
    );
    let app = testkit::Appliance::start_in(dir, &config).await;
    let tls = app.tls_addr.expect("TLS listener");
    for ae in ["CT1", "CT2", "CT3"] {
        assert_eq!(
            echo_with(&pki, false, ae, tls).await,
            Status::SUCCESS,
            "{ae}"
        );
        let options = tls_options(&pki, true, ae, ECHO).tls_config(pki.other_client());
        assert_calling_ae_refused(Scu::establish_tls(options, tls).await);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_binding_refuses_unbound_and_unknown_titles_on_the_tls_port() {
    let extra = "require_binding = true\n".to_string()
        + &remote("CT1", "certificate_names = [\"modality.test\"]")
        + &remote("WS1", "");
    let (app, pki) = start_tls("accept_unknown_callers = true", true, &extra).await;
    let tls = app.tls_addr.expect("TLS listener");
    assert_eq!(echo_with(&pki, false, "CT1", tls).await, Status::SUCCESS);
    // WS1 is listed but bound to nothing; STRANGER would be let in by accept_unknown_callers.
    for ae in ["WS1", "STRANGER"] {
        let options = tls_options(&pki, true, ae, ECHO).tls_config(pki.other_client());
        assert_calling_ae_refused(Scu::establish_tls(options, tls).await);
    }
    let lines = rejections(&app);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("require_binding") && l.contains("CN=WS1")),
        "{lines:?}"
    );
    // The plain port has no certificate to bind; unknown callers go on there as configured.
    crate::support::assert_serves(app.addr).await;
    app.stop().await;
}
