//! The STOW-RS client against a real HTTP server on 127.0.0.1 that parses each multipart body
//! and answers crafted STOW-RS responses.

#[path = "stow_server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dataset::Encoding;
use dataset::charset::Charset;
use dataset::synth::SynthInstance;
use dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
use dataset::{Element, Vr, tags};
use forward::Verdict;
use forward::stow::{Auth, StowClient, StowConfig};
use serde_json::{Value, json};
use server::{Reply, Request, Server, sop_instance_uid};
use store::query::{Identifier, Level, Model, Retrievable};
use store::{IngestRequest, Store, StoreConfig};

/// An archive in a temporary directory holding one study of synthetic CT instances.
struct Archive {
    _dir: tempfile::TempDir,
    store: Store,
    items: Vec<Retrievable>,
}

impl Archive {
    /// `n` instances; the second is large enough to take several body chunks.
    async fn with(n: u32) -> Archive {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = StoreConfig::new(dir.path().join("data"));
        config.min_free_bytes = 0;
        let (store, _) = Store::open(config).expect("store opens");
        let mut study = String::new();
        for i in 1..=n {
            let mut inst = SynthInstance::ct(1, 1, 1, i);
            if i == 2 {
                inst.rows = 256;
                inst.columns = 256;
                inst.pixel_bytes = 256 * 256 * 2;
            }
            study.clone_from(&inst.study_uid);
            let mut ingest = store
                .begin(IngestRequest {
                    sop_class_uid: inst.sop_class.clone(),
                    sop_instance_uid: inst.sop_uid.clone(),
                    transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
                    source_ae: "MODALITY".into(),
                })
                .await
                .expect("ingest begins");
            ingest.write(inst.dataset(Encoding::EXPLICIT_LE)).await;
            ingest.finish().await.expect("instance stored");
        }
        let query = Identifier {
            level: Level::Study,
            charset: Charset::Default,
            keys: vec![Element {
                tag: tags::STUDY_INSTANCE_UID,
                vr: Vr::UI,
                value: study.into_bytes(),
            }],
        };
        let mut items = store
            .resolve(Model::StudyRoot, &query)
            .expect("instances resolve");
        items.sort_by(|a, b| a.sop_instance_uid.cmp(&b.sop_instance_uid));
        assert_eq!(items.len(), n as usize);
        Archive {
            _dir: dir,
            store,
            items,
        }
    }

    /// The stored file of an item, as on disk.
    fn file(&self, item: &Retrievable) -> Vec<u8> {
        std::fs::read(self.store.layout().absolute(&item.file)).expect("stored file")
    }

    fn uids(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|i| i.sop_instance_uid.clone())
            .collect()
    }

    async fn close(self) {
        self.store.close().await.expect("store closes");
    }
}

fn config(url: String) -> StowConfig {
    StowConfig {
        url,
        auth: Auth::None,
        ca_bundle: None,
        client_cert: None,
        client_key: None,
        proxy: None,
        max_request_bytes: 64 << 20,
        max_request_instances: 100,
        timeout: Duration::from_secs(10),
    }
}

fn client(config: StowConfig) -> StowClient {
    StowClient::new(config).expect("client set up")
}

/// A ReferencedSOPSequence or FailedSOPSequence item.
fn item(uid: &str, failure: Option<u16>) -> Value {
    let mut item = json!({
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    });
    if let Some(code) = failure {
        item["00081197"] = json!({"vr": "US", "Value": [code]});
    }
    item
}

/// A STOW-RS response (PS3.18 F.2) naming these instances.
fn stow_response(stored: &[String], failed: &[(String, u16)]) -> Value {
    let mut response = json!({});
    if !stored.is_empty() {
        let items: Vec<Value> = stored.iter().map(|u| item(u, None)).collect();
        response["00081199"] = json!({"vr": "SQ", "Value": items});
    }
    if !failed.is_empty() {
        let items: Vec<Value> = failed.iter().map(|(u, c)| item(u, Some(*c))).collect();
        response["00081198"] = json!({"vr": "SQ", "Value": items});
    }
    response
}

/// The SOP Instance UIDs of a request's parts, in order.
fn part_uids(request: &Request) -> Vec<String> {
    request
        .parts()
        .iter()
        .map(|p| sop_instance_uid(p))
        .collect()
}

/// A server that stores everything it is sent.
fn stores_everything(request: &Request) -> Reply {
    Reply::json(200, &stow_response(&part_uids(request), &[]))
}

fn kind(v: &Verdict) -> &'static str {
    match v {
        Verdict::Delivered { .. } => "delivered",
        Verdict::Retry { .. } => "retry",
        Verdict::DeadLetter { .. } => "dead",
        Verdict::Unreachable { .. } => "unreachable",
    }
}

fn kinds(vs: &[Verdict]) -> Vec<&'static str> {
    vs.iter().map(kind).collect()
}

fn reason(v: &Verdict) -> &str {
    match v {
        Verdict::Retry { reason, .. }
        | Verdict::DeadLetter { reason }
        | Verdict::Unreachable { reason, .. } => reason,
        Verdict::Delivered { .. } => "",
    }
}

#[tokio::test]
async fn a_batch_goes_in_one_request_carrying_each_stored_file_whole() {
    let archive = Archive::with(3).await;
    let server = Server::start(stores_everything).await;
    // A trailing slash on the service root is tolerated.
    let client = client(config(server.url("/dicom-web/")));

    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered"; 3]);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/dicom-web/studies");
    assert_eq!(r.header("accept"), Some("application/dicom+json"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "an exact Content-Length, not chunked"
    );
    assert!(r.header("authorization").is_none());
    let parts = r.parts();
    assert_eq!(parts.len(), 3);
    for (part, item) in parts.iter().zip(&archive.items) {
        assert_eq!(part.len() as u64, item.size);
        assert!(part.len() > 128 * 1024 || item != &archive.items[1]);
        assert_eq!(*part, archive.file(item), "the stored file as-is");
    }
    let boundary = r.boundary();

    // The same connection carries the next request (keep-alive), with a new boundary.
    let again = client.send(&archive.store, &archive.items[..1]).await;
    assert_eq!(kinds(&again), ["delivered"]);
    assert_eq!(server.connections(), 1);
    let requests = server.requests();
    assert_eq!(requests[1].connection, 0);
    assert_ne!(requests[1].boundary(), boundary);
    archive.close().await;
}

#[tokio::test]
async fn failures_listed_in_a_200_are_judged_per_instance() {
    let archive = Archive::with(4).await;
    // Stores the first, is out of resources for the second, cannot parse the third, and does
    // not mention the fourth: all in a 200, as some servers answer.
    let server = Server::start(|r: &Request| {
        let uids = part_uids(r);
        Reply::json(
            200,
            &stow_response(
                &uids[..1],
                &[(uids[1].clone(), 0xA700), (uids[2].clone(), 0xC000)],
            ),
        )
    })
    .await;
    let client = client(config(server.url("/dicom-web")));
    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered", "retry", "dead", "retry"]);
    assert!(reason(&verdicts[1]).contains("0xA700"), "{verdicts:?}");
    assert!(reason(&verdicts[2]).contains("0xC000"), "{verdicts:?}");
    assert!(
        reason(&verdicts[3]).contains("without mentioning this instance"),
        "{verdicts:?}"
    );
    archive.close().await;
}

#[tokio::test]
async fn a_202_and_a_409_are_read_per_instance_too() {
    let archive = Archive::with(2).await;
    let server = Server::start(|r: &Request| {
        let uids = part_uids(r);
        if uids.len() == 2 {
            // Mixed: one stored, one already there (0x0111 counts as delivered).
            Reply::json(
                202,
                &stow_response(&uids[..1], &[(uids[1].clone(), 0x0111)]),
            )
        } else {
            Reply::json(409, &stow_response(&[], &[(uids[0].clone(), 0x0122)]))
        }
    })
    .await;
    let client = client(config(server.url("/dicom-web")));
    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered", "delivered"]);
    let verdicts = client.send(&archive.store, &archive.items[..1]).await;
    assert_eq!(kinds(&verdicts), ["dead"]);
    archive.close().await;
}

#[tokio::test]
async fn a_413_halves_the_batch_until_each_request_fits() {
    let archive = Archive::with(4).await;
    let server = Server::start(|r: &Request| {
        if r.parts().len() > 1 {
            Reply::text(413, "too large")
        } else {
            stores_everything(r)
        }
    })
    .await;
    let client = client(config(server.url("/dicom-web")));
    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered"; 4]);
    let sent: Vec<Vec<String>> = server.requests().iter().map(part_uids).collect();
    let u = archive.uids();
    assert_eq!(
        sent,
        vec![
            u.clone(),
            u[..2].to_vec(),
            u[..1].to_vec(),
            u[1..2].to_vec(),
            u[2..].to_vec(),
            u[2..3].to_vec(),
            u[3..].to_vec(),
        ]
    );
    archive.close().await;
}

#[tokio::test]
async fn a_single_instance_refused_as_too_large_is_dead_lettered() {
    let archive = Archive::with(2).await;
    let server = Server::start(|_: &Request| Reply::text(413, "Request Entity Too Large")).await;
    let client = client(config(server.url("/dicom-web")));
    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["dead", "dead"]);
    assert!(
        reason(&verdicts[0]).contains("HTTP 413: Request Entity Too Large"),
        "{verdicts:?}"
    );
    let sizes: Vec<usize> = server.requests().iter().map(|r| r.parts().len()).collect();
    assert_eq!(sizes, [2, 1, 1]);
    archive.close().await;
}

#[tokio::test]
async fn an_oauth2_token_is_cached_and_renewed_after_a_401() {
    let archive = Archive::with(2).await;
    let issued = Arc::new(AtomicUsize::new(0));
    let server = Server::start({
        let issued = issued.clone();
        move |r: &Request| {
            if r.path() == "/oauth/token" {
                let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                return Reply::json(
                    200,
                    &json!({"access_token": format!("token-{n}"), "token_type": "Bearer", "expires_in": 3600}),
                );
            }
            // The first token was revoked behind the client's back.
            if r.header("authorization") != Some("Bearer token-2") {
                Reply::text(401, "invalid token")
            } else if r.method == "GET" {
                Reply::json(200, &json!([]))
            } else {
                stores_everything(r)
            }
        }
    })
    .await;
    let mut c = config(server.url("/dicom-web"));
    c.auth = Auth::OAuth2 {
        token_url: server.url("/oauth/token"),
        client_id: "outpost".into(),
        client_secret: "s3cret".into(),
        scope: Some("dicom.write".into()),
    };
    let client = client(c);

    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered", "delivered"]);
    assert_eq!(
        issued.load(Ordering::SeqCst),
        2,
        "one refresh after the 401"
    );
    let stow = server.requests_to("/dicom-web/studies");
    assert_eq!(stow.len(), 2, "the request was sent again once");
    assert_eq!(stow[0].header("authorization"), Some("Bearer token-1"));
    assert_eq!(part_uids(&stow[1]), archive.uids(), "the whole batch again");

    let token_requests = server.requests_to("/oauth/token");
    let t = &token_requests[0];
    assert_eq!(t.method, "POST");
    // HTTP Basic of "outpost:s3cret" (client_secret_basic).
    assert_eq!(
        t.header("authorization"),
        Some("Basic b3V0cG9zdDpzM2NyZXQ=")
    );
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        String::from_utf8_lossy(&t.body),
        "grant_type=client_credentials&scope=dicom.write"
    );

    // The renewed token is cached for the next delivery and the probe.
    let verdicts = client.send(&archive.store, &archive.items[..1]).await;
    assert_eq!(kinds(&verdicts), ["delivered"]);
    client.probe().await.expect("reachable");
    assert_eq!(issued.load(Ordering::SeqCst), 2);
    let probe = server
        .requests_to("/dicom-web/studies")
        .pop()
        .expect("probed");
    assert_eq!(probe.method, "GET");
    assert_eq!(probe.header("authorization"), Some("Bearer token-2"));
    archive.close().await;
}

#[tokio::test]
async fn a_token_endpoint_that_refuses_leaves_every_instance_waiting() {
    let archive = Archive::with(3).await;
    let server = Server::start(|r: &Request| {
        if r.path() == "/oauth/token" {
            Reply::json(400, &json!({"error": "invalid_client"}))
        } else {
            stores_everything(r)
        }
    })
    .await;
    let mut c = config(server.url("/dicom-web"));
    c.max_request_instances = 1;
    c.auth = Auth::OAuth2 {
        token_url: server.url("/oauth/token"),
        client_id: "outpost".into(),
        client_secret: "wrong".into(),
        scope: None,
    };
    let verdicts = client(c).send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["retry"; 3]);
    assert!(
        reason(&verdicts[0]).contains("invalid_client"),
        "{verdicts:?}"
    );
    assert!(
        reason(&verdicts[0]).contains("client_secret"),
        "{verdicts:?}"
    );
    // Three batches, but the endpoint is asked once: the refusal stands for them all.
    assert_eq!(server.requests_to("/oauth/token").len(), 1);
    assert!(server.requests_to("/dicom-web/studies").is_empty());
    archive.close().await;
}

#[tokio::test]
async fn a_503_with_retry_after_holds_every_instance_back() {
    let archive = Archive::with(2).await;
    let server = Server::start(|_: &Request| {
        Reply::text(503, "down for maintenance").header("Retry-After", "120")
    })
    .await;
    let client = client(config(server.url("/dicom-web")));
    let verdicts = client.send(&archive.store, &archive.items).await;
    let expected = Verdict::Unreachable {
        reason: "the server is unavailable or busy, HTTP 503: down for maintenance".into(),
        after: Some(Duration::from_secs(120)),
    };
    assert_eq!(verdicts, vec![expected.clone(), expected]);
    let probe = client.probe().await.expect_err("503 is down");
    assert!(probe.contains("HTTP 503"), "{probe}");
    archive.close().await;
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_for_every_instance() {
    let archive = Archive::with(3).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut c = config(format!("http://127.0.0.1:{port}/dicom-web"));
    c.max_request_instances = 2;
    let client = client(c);
    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["unreachable"; 3]);
    assert!(
        reason(&verdicts[0]).contains("could not be reached"),
        "{verdicts:?}"
    );
    let probe = client.probe().await.expect_err("nothing listens");
    assert!(probe.contains("could not be reached"), "{probe}");
    archive.close().await;
}

#[tokio::test]
async fn the_probe_counts_any_answer_below_500_as_up() {
    for (status, up) in [
        (200, true),
        (204, true),
        (401, true),
        (404, true),
        (408, false),
        (429, false),
        (500, false),
        (503, false),
    ] {
        let server = Server::start(move |_: &Request| Reply::new(status)).await;
        let mut c = config(server.url("/dicom-web"));
        c.auth = Auth::Bearer {
            token: "static-token".into(),
        };
        let result = client(c).probe().await;
        assert_eq!(result.is_ok(), up, "HTTP {status}: {result:?}");
        let r = &server.requests()[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.target, "/dicom-web/studies?limit=1");
        assert_eq!(r.header("authorization"), Some("Bearer static-token"));
    }
}

#[tokio::test]
async fn batches_keep_to_the_count_and_byte_bounds_with_basic_auth() {
    let archive = Archive::with(5).await;
    let server = Server::start(stores_everything).await;
    let mut c = config(server.url("/dicom-web"));
    c.auth = Auth::Basic {
        user: "outpost".into(),
        password: "s3cret".into(),
    };
    c.max_request_instances = 2;
    let verdicts = client(c.clone()).send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered"; 5]);
    let sizes: Vec<usize> = server.requests().iter().map(|r| r.parts().len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
    for r in server.requests() {
        assert_eq!(
            r.header("authorization"),
            Some("Basic b3V0cG9zdDpzM2NyZXQ=")
        );
    }

    // A byte bound below two small instances sends one per request.
    let smallest = archive.items.iter().map(|i| i.size).min().unwrap_or(0);
    c.max_request_instances = 100;
    c.max_request_bytes = smallest * 2;
    let verdicts = client(c).send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered"; 5]);
    let sizes: Vec<usize> = server.requests()[3..]
        .iter()
        .map(|r| r.parts().len())
        .collect();
    assert_eq!(sizes, [1; 5]);
    archive.close().await;
}

#[tokio::test]
async fn a_missing_stored_file_is_dead_lettered_and_the_rest_still_go() {
    let archive = Archive::with(3).await;
    std::fs::remove_file(archive.store.layout().absolute(&archive.items[1].file))
        .expect("file removed");
    let server = Server::start(stores_everything).await;
    let client = client(config(server.url("/dicom-web")));
    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered", "dead", "delivered"]);
    assert!(reason(&verdicts[1]).contains("is missing"), "{verdicts:?}");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        part_uids(&requests[0]),
        [archive.uids()[0].clone(), archive.uids()[2].clone()]
    );
    archive.close().await;
}

#[tokio::test]
async fn an_empty_200_is_not_taken_for_delivery() {
    let archive = Archive::with(1).await;
    let server = Server::start(|_: &Request| Reply::new(200)).await;
    let client = client(config(server.url("/dicom-web")));
    let verdicts = client.send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["retry"]);
    assert!(
        reason(&verdicts[0]).contains("without saying which instances it stored"),
        "{verdicts:?}"
    );
    archive.close().await;
}

/// A CA, a server configuration for 127.0.0.1 that requires a client certificate from that
/// CA, and the PEM files a client needs.
struct Pki {
    ca: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    /// The client certificate and its key in one file.
    client_both: std::path::PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn generate(dir: &std::path::Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Outpost STOW test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, eku: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(names).expect("leaf params");
            p.distinguished_name.push(DnType::CommonName, "leaf");
            p.use_authority_key_identifier_extension = true;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![eku];
            let key = KeyPair::generate().expect("leaf key");
            let cert = p.signed_by(&key, &issuer).expect("leaf certificate");
            (cert, key)
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["outpost.test".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("CA is a trust anchor");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .expect("server configuration");

        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("PEM file written");
            p
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            client_both: write(
                "client-and-key.pem",
                format!("{}{}", client.pem(), client_key.serialize_pem()),
            ),
            server: Arc::new(server_config),
        }
    }
}

#[tokio::test]
async fn https_trusts_the_ca_bundle_and_presents_the_client_certificate() {
    let archive = Archive::with(2).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = Pki::generate(dir.path());
    let server = Server::start_tls(stores_everything, pki.server.clone()).await;
    let mut c = config(server.url("/dicom-web"));
    c.ca_bundle = Some(pki.ca.clone());
    c.client_cert = Some(pki.client_cert.clone());
    c.client_key = Some(pki.client_key.clone());
    let verdicts = client(c.clone()).send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered", "delivered"]);

    // The certificate and key may share one file.
    let mut both = c.clone();
    both.client_cert = Some(pki.client_both.clone());
    both.client_key = None;
    let verdicts = client(both).send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["delivered", "delivered"]);
    assert_eq!(server.requests().len(), 2);

    // Without the CA bundle the server's certificate is not trusted.
    let mut untrusted = c.clone();
    untrusted.ca_bundle = None;
    let verdicts = client(untrusted).send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["unreachable", "unreachable"]);
    assert!(reason(&verdicts[0]).contains("certificate"), "{verdicts:?}");

    // Without a client certificate the server refuses the session. With TLS 1.3 that
    // refusal arrives only as the connection breaking under the upload, which this side
    // cannot tell from a failure the batch itself caused, so the instances are retried
    // (counted, and moved behind the rest) rather than the destination marked down.
    let mut anonymous = c;
    anonymous.client_cert = None;
    anonymous.client_key = None;
    let verdicts = client(anonymous).send(&archive.store, &archive.items).await;
    assert_eq!(kinds(&verdicts), ["retry", "retry"], "{verdicts:?}");
    assert_eq!(server.requests().len(), 2, "no request got through");
    assert!(server.handshake_failures() >= 2);
    archive.close().await;
}
