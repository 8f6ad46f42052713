//! Shared helpers: configurations, identifiers, reading instances back from the archive, raw
//! PDUs on a bare socket, and a throwaway PKI for DICOM TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dataset::encode::write_element;
use dataset::synth::SynthInstance;
use dataset::{Encoding, Tag, Vr, Walked, tags};
use dicom_ul::pdu::{
    AbortRQSource, AssociationAC, AssociationRJ, AssociationRQ, Pdu, PresentationContextProposed,
    PresentationContextResultReason, UserVariableItem,
};
use dimse::{Command, CommandField, Status};
use store::query::{Identifier, Model};
use testkit::{Appliance, Scu};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Every test's bound on a single wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// An appliance that accepts any caller, with further `[dicom]` keys.
pub fn open_config(dicom_keys: &str) -> String {
    format!("[dicom]\nae_title = \"OUTPOST\"\naccept_unknown_callers = true\n{dicom_keys}\n")
}

/// An identifier in the given encoding; keys are written in the order given.
pub fn identifier(enc: Encoding, keys: &[(Tag, Vr, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, vr, value) in keys {
        write_element(&mut out, enc, *tag, *vr, value);
    }
    out
}

/// Walks a data set (identifier or instance) in a transfer syntax, capturing everything.
pub fn walk(ts: &str, bytes: &[u8]) -> Walked {
    dataset::walk::walk_all(
        dataset::ts::syntax_info(ts).expect("known transfer syntax"),
        dataset::Capture::All { max_len: 1 << 20 },
        bytes,
    )
    .expect("well-formed data set")
}

/// The raw value of an attribute of a walked data set.
pub fn value(w: &Walked, tag: Tag) -> Vec<u8> {
    w.get(tag)
        .unwrap_or_else(|| panic!("{tag} missing"))
        .value
        .clone()
}

/// The transfer syntax and data set bytes the archive holds for an instance, if any.
pub fn stored(app: &Appliance, sop_uid: &str) -> Option<(String, Vec<u8>)> {
    let id = Identifier::from_elements(
        Model::StudyRoot,
        vec![
            dataset::Element {
                tag: tags::QUERY_RETRIEVE_LEVEL,
                vr: Vr::CS,
                value: b"IMAGE ".to_vec(),
            },
            dataset::Element {
                tag: tags::SOP_INSTANCE_UID,
                vr: Vr::UI,
                value: sop_uid.as_bytes().to_vec(),
            },
        ],
    )
    .expect("identifier");
    let items = app.store.resolve(Model::StudyRoot, &id).expect("resolve");
    let item = items.into_iter().next()?;
    let mut file = app.store.open_file(&item.file).expect("stored file opens");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).expect("stored file reads");
    assert_eq!(bytes.len() as u64, item.size);
    Some((
        item.transfer_syntax,
        bytes[item.dataset_offset as usize..].to_vec(),
    ))
}

pub fn instance_count(app: &Appliance) -> u64 {
    app.store.instance_count().expect("instance count")
}

/// Files left in the store's temporary directory, but for the empty spares it makes ahead
/// for the next instances (an instance being received into a spare has bytes, and counts).
pub fn tmp_files(app: &Appliance) -> Vec<PathBuf> {
    match std::fs::read_dir(app.dir.path().join("data").join("tmp")) {
        Ok(d) => d
            .map(|e| e.expect("dir entry").path())
            .filter(|p| !is_empty_spare(p))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn is_empty_spare(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "spare")
        && std::fs::metadata(path).is_ok_and(|m| m.len() == 0)
}

/// Waits until `cond` holds, polling; panics after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Audit trail lines of rejected associations.
pub fn rejections(app: &Appliance) -> Vec<String> {
    app.audit_lines()
        .into_iter()
        .filter(|l| l.contains("\"event\":\"association-rejected\""))
        .collect()
}

/// The A-ASSOCIATE-RJ an association attempt ended with.
pub fn rejection<T>(result: Result<T, dicom_ul::association::Error>) -> AssociationRJ {
    match result {
        Err(dicom_ul::association::Error::Rejected { association_rj, .. }) => association_rj,
        Err(e) => panic!("expected A-ASSOCIATE-RJ, got error {e}"),
        Ok(_) => panic!("expected A-ASSOCIATE-RJ, the association was accepted"),
    }
}

/// Proves the listener serves: a fresh association, a C-ECHO, a release.
pub async fn assert_serves(addr: SocketAddr) {
    let mut scu = Scu::connect(
        addr,
        "PROBE",
        "OUTPOST",
        &[(dimse::VERIFICATION, &[testkit::IMPLICIT_LE])],
        &[],
    )
    .await
    .expect("a new association is accepted");
    assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
    scu.release().await.unwrap();
}

/// Like [`assert_serves`], retrying while the listener refuses (a place is freeing up);
/// panics if it does not serve within `timeout`.
pub async fn serves_within(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = Scu::connect(
            addr,
            "PROBE",
            "OUTPOST",
            &[(dimse::VERIFICATION, &[testkit::IMPLICIT_LE])],
            &[],
        )
        .await;
        match attempt {
            Ok(mut scu) => {
                assert_eq!(scu.echo().await.unwrap(), Status::SUCCESS);
                scu.release().await.unwrap();
                return;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "not served within {timeout:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stores instances and asserts each succeeded.
pub async fn store_all(scu: &mut Scu, instances: &[SynthInstance], ts: &str, enc: Encoding) {
    for inst in instances {
        let rsp = scu
            .store(&inst.sop_class, &inst.sop_uid, Some(ts), &inst.dataset(enc))
            .await
            .unwrap();
        assert_eq!(rsp.status, Some(Status::SUCCESS), "{:?}", rsp.error_comment);
    }
}

/// A C-STORE request on an explicit presentation context, with the data set, and its response.
pub async fn store_on(
    scu: &mut Scu,
    pc_id: u8,
    sop_class: &str,
    sop_instance: &str,
    data: &[u8],
) -> Command {
    let mut rq = Command::new(CommandField::C_STORE_RQ);
    rq.message_id = Some(scu.next_id());
    rq.affected_sop_class_uid = Some(sop_class.to_string());
    rq.affected_sop_instance_uid = Some(sop_instance.to_string());
    rq.priority = Some(0);
    rq.has_data_set = true;
    scu.channel().send_command(pc_id, &rq).await.unwrap();
    scu.channel().send_data_set(pc_id, data).await.unwrap();
    let rsp = scu.response().await.unwrap();
    assert_eq!(rsp.field, CommandField::C_STORE_RSP);
    assert_eq!(rsp.message_id_responded_to, rq.message_id);
    rsp
}

// ---------------------------------------------------------------------------------------------
// Raw PDUs.

pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// An A-ASSOCIATE-RQ proposing each abstract syntax with its transfer syntaxes as contexts
/// 1, 3, 5, ...
pub fn association_rq(calling: &str, called: &str, contexts: &[(&str, &[&str])]) -> AssociationRQ {
    AssociationRQ {
        protocol_version: 1,
        calling_ae_title: calling.to_string(),
        called_ae_title: called.to_string(),
        application_context_name: APPLICATION_CONTEXT.to_string(),
        presentation_contexts: contexts
            .iter()
            .enumerate()
            .map(|(i, (a, ts))| PresentationContextProposed {
                id: (2 * i + 1) as u8,
                abstract_syntax: a.to_string(),
                transfer_syntaxes: ts.iter().map(|t| t.to_string()).collect(),
            })
            .collect(),
        user_variables: vec![
            UserVariableItem::MaxLength(16_384),
            UserVariableItem::ImplementationClassUID("1.2.826.0.1.3680043.10.1234.99".into()),
        ],
    }
}

pub fn encode_pdu(pdu: &Pdu) -> Vec<u8> {
    let mut buf = Vec::new();
    dicom_ul::pdu::write_pdu(&mut buf, pdu).expect("PDU encodes");
    buf
}

/// A bare TCP connection that speaks PDUs the test builds itself.
pub struct RawPeer {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        RawPeer {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and sends an A-ASSOCIATE-RQ; returns the peer and the answer.
    pub async fn associate(addr: SocketAddr, rq: AssociationRQ) -> (RawPeer, Pdu) {
        let mut peer = RawPeer::connect(addr).await;
        peer.send(&Pdu::AssociationRQ(rq)).await;
        let answer = peer.next().await.expect("an answer to the A-ASSOCIATE-RQ");
        (peer, answer)
    }

    /// Like [`RawPeer::associate`], asserting acceptance; returns the A-ASSOCIATE-AC.
    pub async fn accepted(addr: SocketAddr, rq: AssociationRQ) -> (RawPeer, AssociationAC) {
        match RawPeer::associate(addr, rq).await {
            (peer, Pdu::AssociationAC(ac)) => (peer, ac),
            (_, other) => panic!("expected A-ASSOCIATE-AC, got {other:?}"),
        }
    }

    pub async fn send(&mut self, pdu: &Pdu) {
        self.write(&encode_pdu(pdu)).await;
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next PDU, or `None` once the connection is closed (or reset).
    pub async fn next(&mut self) -> Option<Pdu> {
        tokio::time::timeout(
            WAIT,
            dicom_ul::association::read_pdu_from_wire_async(
                &mut self.stream,
                &mut self.buf,
                dicom_ul::pdu::MAXIMUM_PDU_SIZE,
                false,
            ),
        )
        .await
        .expect("the listener answers in time")
        .ok()
    }

    /// Asserts the listener aborts as service provider and closes the connection.
    pub async fn expect_provider_abort(&mut self) -> AbortRQSource {
        let source = match self.next().await {
            Some(Pdu::AbortRQ { source }) => source,
            other => panic!("expected A-ABORT, got {other:?}"),
        };
        assert!(
            matches!(source, AbortRQSource::ServiceProvider(_)),
            "{source:?}"
        );
        self.expect_closed().await;
        source
    }

    /// Asserts the listener closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        if let Some(pdu) = self.next().await {
            panic!("expected the connection to close, got {pdu:?}");
        }
    }
}

/// The result reason of presentation context `id` in an A-ASSOCIATE-AC.
pub fn context_result(ac: &AssociationAC, id: u8) -> PresentationContextResultReason {
    ac.presentation_contexts
        .iter()
        .find(|pc| pc.id == id)
        .unwrap_or_else(|| panic!("no result for presentation context {id}"))
        .reason
        .clone()
}

// ---------------------------------------------------------------------------------------------
// DICOM TLS.

/// A CA, a server certificate for localhost and 127.0.0.1 and a client certificate, written
/// as PEM files into a directory.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    client_cert_der: rustls::pki_types::CertificateDer<'static>,
    client_key_der: Vec<u8>,
    /// A second client certificate from the same CA (SAN `workstation.test`, CN `WS1`):
    /// trusted, but another identity than the first.
    other_cert_der: rustls::pki_types::CertificateDer<'static>,
    other_key_der: Vec<u8>,
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Outpost test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.use_authority_key_identifier_extension = true;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![eku];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert, key)
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["modality.test".into()],
            "CT1",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (other, other_key) = leaf(
            vec!["workstation.test".into()],
            "WS1",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: write("ca.crt", ca.pem()),
            server_cert: write("server.crt", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            ca_der: ca.der().clone(),
            client_cert_der: client.der().clone(),
            client_key_der: client_key.serialize_der(),
            other_cert_der: other.der().clone(),
            other_key_der: other_key.serialize_der(),
        }
    }

    /// A `[dicom.tls]` section for these files.
    pub fn section(&self, require_client_cert: bool) -> String {
        let mut s = format!(
            "[dicom.tls]\nport = 2762\ncertificate = {:?}\nprivate_key = {:?}\n",
            self.server_cert, self.server_key
        );
        if require_client_cert {
            s += &format!("client_ca = {:?}\n", self.ca);
        }
        s
    }

    /// A client configuration trusting the CA, with or without the client certificate.
    pub fn client(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        Arc::new(if with_cert {
            builder
                .with_client_auth_cert(
                    vec![self.client_cert_der.clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(self.client_key_der.clone().into()),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        })
    }

    /// A client configuration presenting the second certificate (`workstation.test`, `WS1`).
    pub fn other_client(&self) -> Arc<rustls::ClientConfig> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![self.other_cert_der.clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(self.other_key_der.clone().into()),
                )
                .unwrap(),
        )
    }

    /// The SHA-256 of the first client certificate, as a configuration pins it.
    pub fn client_sha256(&self) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.client_cert_der);
        d.as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Starts an appliance with a `[dicom.tls]` section (and `extra` after it, such as remotes)
/// in a directory that holds the PKI too.
pub async fn start_tls(
    dicom_keys: &str,
    require_client_cert: bool,
    extra: &str,
) -> (Appliance, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let config = format!(
        "[dicom]\nae_title = \"OUTPOST\"\n{dicom_keys}\n{}\n{extra}\n",
        pki.section(require_client_cert)
    );
    (Appliance::start_in(dir, &config).await, pki)
}

/// Options for a TLS association to the appliance.
pub fn tls_options(
    pki: &Pki,
    with_cert: bool,
    calling: &str,
    contexts: &[(&str, &[&str])],
) -> dicom_ul::ClientAssociationOptions<'static> {
    testkit::options(calling, "OUTPOST", contexts, &[])
        .tls_config(pki.client(with_cert))
        .server_name("localhost")
}
