//! Integration tests of sending stored instances: real associations on 127.0.0.1 from one
//! whole appliance's store to a second appliance's listener, plain and DICOM TLS, and the
//! errors a caller acts on (refused, rejected, no context, TLS failure).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dataset::synth::SynthInstance;
use dataset::{Element, Encoding, Vr, tags};
use dicom_ul::pdu::{AssociationRJResult, AssociationRJServiceUserReason, AssociationRJSource};
use dimse::Status;
use store::query::{Identifier, Model, Retrievable};
use storescu::{ConnectError, EchoError, NoContext, SendError, Tls};
use testkit::{Appliance, CT, EXPLICIT_LE, IMPLICIT_LE, MR, Scu};

/// Every test's bound on a single wait.
const WAIT: Duration = Duration::from_secs(10);
/// The transcode memory limit the sends are given.
const LIMIT: u64 = 64 * 1024 * 1024;

/// The receiving appliance: AE title DEST, any caller, a small PDU so that instances travel
/// in many fragments, and `extra` (more `[dicom]` keys, then any sections).
async fn receiver(extra: &str) -> Appliance {
    Appliance::start(&format!(
        "[dicom]\nae_title = \"DEST\"\naccept_unknown_callers = true\nmax_pdu = 16384\n{extra}\n"
    ))
    .await
}

/// An appliance holding `instances`, each stored in the transfer syntax given with it.
async fn source(instances: &[(SynthInstance, &str, Encoding)]) -> Appliance {
    let app =
        Appliance::start("[dicom]\nae_title = \"OUTPOST\"\naccept_unknown_callers = true\n").await;
    let mut scu = Scu::connect(
        app.addr,
        "MODALITY",
        "OUTPOST",
        &[
            (CT, &[EXPLICIT_LE]),
            (CT, &[IMPLICIT_LE]),
            (MR, &[EXPLICIT_LE]),
        ],
        &[],
    )
    .await
    .expect("the source accepts the modality");
    for (inst, ts, enc) in instances {
        let rsp = scu
            .store(
                &inst.sop_class,
                &inst.sop_uid,
                Some(ts),
                &inst.dataset(*enc),
            )
            .await
            .expect("C-STORE to the source");
        assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    }
    scu.release().await.expect("release");
    app
}

/// An MR instance of the same patient, in a series of its own.
fn mr(i: u32) -> SynthInstance {
    let mut inst = SynthInstance::ct(1, 1, 2, i);
    inst.sop_class = MR.into();
    inst.modality = "MR".into();
    inst
}

/// What an appliance's store resolves for a query at `level` on `key`.
fn resolve(app: &Appliance, level: &[u8], key: (dataset::Tag, &str)) -> Vec<Retrievable> {
    let id = Identifier::from_elements(
        Model::StudyRoot,
        vec![
            Element {
                tag: tags::QUERY_RETRIEVE_LEVEL,
                vr: Vr::CS,
                value: level.to_vec(),
            },
            Element {
                tag: key.0,
                vr: Vr::UI,
                value: key.1.as_bytes().to_vec(),
            },
        ],
    )
    .expect("identifier");
    app.store.resolve(Model::StudyRoot, &id).expect("resolve")
}

/// The transfer syntax and the data set bytes (from the data set offset on) an appliance
/// holds for an instance, if any.
fn stored(app: &Appliance, sop_uid: &str) -> Option<(String, Vec<u8>)> {
    let item = resolve(app, b"IMAGE ", (tags::SOP_INSTANCE_UID, sop_uid))
        .into_iter()
        .next()?;
    let mut file = app.store.open_file(&item.file).expect("stored file opens");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).expect("stored file reads");
    Some((
        item.transfer_syntax,
        bytes[item.dataset_offset as usize..].to_vec(),
    ))
}

/// Options for sending `items` from OUTPOST to `called`.
fn options(called: &str, items: &[Retrievable]) -> dicom_ul::ClientAssociationOptions<'static> {
    storescu::association_options("OUTPOST", called, 16_384, WAIT, items)
        .expect("options for the instances")
}

/// An address on which nothing listens: a port the kernel handed out and that was closed.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    drop(listener);
    addr.to_string()
}

fn assert_refused(e: &ConnectError, address: &str) {
    match e {
        ConnectError::Unreachable { address: a, source } => {
            assert_eq!(a, address);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert!(e.to_string().contains(address), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_instances_arrive_byte_for_byte() {
    // A CT series stored in two syntaxes, a large CT, and an MR: two SOP classes, several
    // contexts, and data sets many PDUs long.
    let mut large = SynthInstance::ct(1, 1, 1, 4);
    large.pixel_bytes = 200_000;
    let instances = vec![
        (
            SynthInstance::ct(1, 1, 1, 1),
            EXPLICIT_LE,
            Encoding::EXPLICIT_LE,
        ),
        (
            SynthInstance::ct(1, 1, 1, 2),
            IMPLICIT_LE,
            Encoding::IMPLICIT_LE,
        ),
        (
            SynthInstance::ct(1, 1, 1, 3),
            EXPLICIT_LE,
            Encoding::EXPLICIT_LE,
        ),
        (large, EXPLICIT_LE, Encoding::EXPLICIT_LE),
        (mr(1), EXPLICIT_LE, Encoding::EXPLICIT_LE),
    ];
    let src = source(&instances).await;
    let dest = receiver("").await;
    let study = instances[0].0.study_uid.clone();
    let items = resolve(&src, b"STUDY", (tags::STUDY_INSTANCE_UID, &study));
    assert_eq!(items.len(), instances.len());

    let address = dest.addr.to_string();
    let mut peer = storescu::connect(options("DEST", &items), &address, None, WAIT, WAIT)
        .await
        .expect("association with the receiver");
    assert!(!peer.is_tls());
    assert_eq!(peer.address(), address);
    for item in &items {
        let status = peer
            .send(&src.store, item, LIMIT, None)
            .await
            .unwrap_or_else(|e| panic!("sending {}: {e}", item.sop_instance_uid));
        assert_eq!(status, Status::SUCCESS, "{}", item.sop_instance_uid);
    }
    assert!(peer.is_open());
    peer.release().await.expect("release");

    for (inst, ts, _) in &instances {
        let sent = stored(&src, &inst.sop_uid).expect("in the source");
        assert_eq!(sent.0, *ts);
        assert_eq!(
            stored(&dest, &inst.sop_uid),
            Some(sent),
            "{} differs at the receiver",
            inst.sop_uid
        );
    }
    src.stop().await;
    dest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_a_context_is_refused_and_the_association_goes_on() {
    let ct = SynthInstance::ct(1, 1, 1, 1);
    let instances = vec![
        (ct.clone(), EXPLICIT_LE, Encoding::EXPLICIT_LE),
        (mr(1), EXPLICIT_LE, Encoding::EXPLICIT_LE),
    ];
    let src = source(&instances).await;
    let dest = receiver("").await;
    let items = resolve(&src, b"STUDY", (tags::STUDY_INSTANCE_UID, &ct.study_uid));
    let (ct_items, mr_items): (Vec<_>, Vec<_>) =
        items.into_iter().partition(|i| i.sop_class_uid == CT);
    // Propose the MR class only: the CT instance has no context to travel on.
    let mut peer = storescu::connect(
        options("DEST", &mr_items),
        &dest.addr.to_string(),
        None,
        WAIT,
        WAIT,
    )
    .await
    .expect("association with the receiver");
    let e = peer
        .send(&src.store, &ct_items[0], LIMIT, None)
        .await
        .expect_err("no context for CT");
    match &e {
        SendError::NoContext(NoContext::ForClass(why)) => assert!(why.contains(CT), "{why}"),
        other => panic!("expected no context for the class, got {other:?}"),
    }
    assert!(!e.association_lost());
    assert!(peer.is_open());
    let status = peer
        .send(&src.store, &mr_items[0], LIMIT, None)
        .await
        .expect("the MR instance goes through");
    assert_eq!(status, Status::SUCCESS);
    peer.release().await.expect("release");
    assert!(stored(&dest, &mr(1).sop_uid).is_some());
    assert!(stored(&dest, &ct.sop_uid).is_none());
    src.stop().await;
    dest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_fails_mid_transfer_aborts_the_association() {
    let mut large = SynthInstance::ct(1, 1, 1, 1);
    large.pixel_bytes = 200_000;
    let src = source(&[(large.clone(), EXPLICIT_LE, Encoding::EXPLICIT_LE)]).await;
    let dest = receiver("").await;
    let items = resolve(&src, b"STUDY", (tags::STUDY_INSTANCE_UID, &large.study_uid));
    // Cut the stored file short behind the store's back, as a failing disk would: the index
    // still promises the whole size, so the read fails after some fragments went out.
    let path = src.store.layout().absolute(&items[0].file);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("the stored file opens for writing");
    file.set_len(items[0].size / 2).expect("truncate");
    drop(file);

    let mut peer = storescu::connect(
        options("DEST", &items),
        &dest.addr.to_string(),
        None,
        WAIT,
        WAIT,
    )
    .await
    .expect("association with the receiver");
    let e = peer
        .send(&src.store, &items[0], LIMIT, None)
        .await
        .expect_err("the file ends early");
    match &e {
        SendError::Interrupted { reason, .. } => {
            assert!(reason.contains(&large.sop_uid), "{reason}")
        }
        other => panic!("expected an interrupted send, got {other:?}"),
    }
    assert!(e.association_lost());
    assert!(!peer.is_open());
    match peer.send(&src.store, &items[0], LIMIT, None).await {
        Err(SendError::Closed { .. }) => {}
        other => panic!("expected the lost association to refuse, got {other:?}"),
    }
    peer.release()
        .await
        .expect("releasing a lost association only closes it");
    assert!(stored(&dest, &large.sop_uid).is_none());
    // The receiver is unharmed.
    storescu::echo("OUTPOST", "DEST", &dest.addr.to_string(), None, WAIT, WAIT)
        .await
        .expect("C-ECHO after the abort");
    src.stop().await;
    dest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_reaches_a_listening_receiver() {
    let dest = receiver("").await;
    storescu::echo("OUTPOST", "DEST", &dest.addr.to_string(), None, WAIT, WAIT)
        .await
        .expect("C-ECHO succeeds");
    dest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_reported_as_refused() {
    let address = closed_port().await;
    match storescu::echo("OUTPOST", "DEST", &address, None, WAIT, WAIT).await {
        Err(EchoError::Connect(e)) => assert_refused(&e, &address),
        other => panic!("expected a connection error, got {other:?}"),
    }
    let item = Retrievable {
        sop_instance_uid: "1.2.3.4".into(),
        sop_class_uid: CT.into(),
        transfer_syntax: EXPLICIT_LE.into(),
        file: "unused".into(),
        dataset_offset: 0,
        size: 0,
        study_uid: "1.2.3".into(),
        nearline: false,
    };
    match storescu::connect(options("DEST", &[item]), &address, None, WAIT, WAIT).await {
        Err(e) => assert_refused(&e, &address),
        Ok(_) => panic!("an association on a closed port"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_called_ae_title_is_a_permanent_rejection() {
    let dest = receiver("check_called_ae = true").await;
    let address = dest.addr.to_string();
    let e = match storescu::echo("OUTPOST", "NOBODY", &address, None, WAIT, WAIT).await {
        Err(EchoError::Connect(e)) => e,
        other => panic!("expected a rejection, got {other:?}"),
    };
    match &e {
        ConnectError::Rejected {
            address: a,
            result,
            reason,
        } => {
            assert_eq!(a, &address);
            assert_eq!(*result, AssociationRJResult::Permanent);
            assert_eq!(
                *reason,
                AssociationRJSource::ServiceUser(
                    AssociationRJServiceUserReason::CalledAETitleNotRecognized
                )
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(e.is_permanent_rejection());
    let text = e.to_string();
    assert!(
        text.contains("permanently") && text.contains("called AE title not recognized"),
        "{text}"
    );
    // The right title is accepted.
    storescu::echo("OUTPOST", "DEST", &address, None, WAIT, WAIT)
        .await
        .expect("C-ECHO to DEST succeeds");
    dest.stop().await;
}

// ---------------------------------------------------------------------------------------------
// DICOM TLS.

/// A CA and a server certificate for localhost, as PEM files in `dir`, and the CA's DER.
fn pki(dir: &Path) -> (String, rustls::pki_types::CertificateDer<'static>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "storescu test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("server parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let cert_path = dir.join("server.crt");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
    let section = format!(
        "[dicom.tls]\nport = 2762\ncertificate = {cert_path:?}\nprivate_key = {key_path:?}\n"
    );
    (section, ca.der().clone())
}

/// A client configuration trusting `roots` (none: it trusts nobody).
fn client(roots: &[rustls::pki_types::CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root certificate");
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sends_and_echoes_and_reports_an_untrusted_certificate() {
    let pki_dir = tempfile::tempdir().expect("temporary directory");
    let (section, ca) = pki(pki_dir.path());
    let dest = receiver(&section).await;
    let tls_address = dest.tls_addr.expect("TLS listener").to_string();
    let trusted = Tls {
        config: client(&[ca]),
        server_name: "localhost".into(),
    };

    storescu::echo("OUTPOST", "DEST", &tls_address, Some(&trusted), WAIT, WAIT)
        .await
        .expect("C-ECHO over TLS succeeds");

    let inst = SynthInstance::ct(1, 1, 1, 1);
    let src = source(&[(inst.clone(), EXPLICIT_LE, Encoding::EXPLICIT_LE)]).await;
    let items = resolve(&src, b"STUDY", (tags::STUDY_INSTANCE_UID, &inst.study_uid));
    let mut peer = storescu::connect(
        options("DEST", &items),
        &tls_address,
        Some(&trusted),
        WAIT,
        WAIT,
    )
    .await
    .expect("association over TLS");
    assert!(peer.is_tls());
    let status = peer
        .send(&src.store, &items[0], LIMIT, None)
        .await
        .expect("sent over TLS");
    assert_eq!(status, Status::SUCCESS);
    peer.release().await.expect("release");
    assert_eq!(stored(&dest, &inst.sop_uid), stored(&src, &inst.sop_uid));

    let untrusted = Tls {
        config: client(&[]),
        server_name: "localhost".into(),
    };
    match storescu::echo(
        "OUTPOST",
        "DEST",
        &tls_address,
        Some(&untrusted),
        WAIT,
        WAIT,
    )
    .await
    {
        Err(EchoError::Connect(ConnectError::Tls { address, reason })) => {
            assert_eq!(address, tls_address);
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    src.stop().await;
    dest.stop().await;
}
