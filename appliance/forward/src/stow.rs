//! The DICOMweb destination: STOW-RS requests and their per-instance outcomes.
//!
//! [`StowClient::send`] packs the instances it is given into as few `multipart/related;
//! type="application/dicom"` requests as the configured bounds allow, streams each stored Part
//! 10 file from disk into the request body as one part, and reads one verdict per instance
//! from the server's DICOM JSON answer (PS3.18 F.2), whatever the HTTP status says. Only when
//! the answer carries no STOW-RS response at all does the HTTP status decide, through
//! [`classify::http_status`].
//!
//! Decisions worth knowing:
//! - A success status with an empty or unreadable body counts as *not* delivered (retry):
//!   nothing in it says which instances were stored. Orthanc's DICOMweb plugin, like every
//!   conforming server, lists what it stored in ReferencedSOPSequence, so its normal success
//!   is recognised as delivered, and so is its answer for instances it already had.
//! - The request carries an exact `Content-Length` (the body is framed from the indexed file
//!   sizes), so servers that refuse chunked uploads take it too.
//! - The multipart boundary is 128 random bits; every chunk of content is also searched for
//!   it, and a request whose content happens to contain it is abandoned (and so retried with
//!   a new boundary) rather than sent malformed.
//! - Redirects are not followed: a POST body cannot be replayed, and a STOW-RS endpoint that
//!   moved is a configuration change to make, which the verdict names.
//! - Proxy environment variables are ignored; `proxy` in the configuration is the only source.
//! - OAuth2 client credentials authenticate to the token endpoint with HTTP Basic
//!   (`client_secret_basic`, which RFC 6749 section 2.3.1 requires every server to support).

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Body, RequestBuilder, Response, StatusCode, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, warn};

use crate::classify::{self, Verdict};

/// Bytes read from a stored file per body chunk.
const CHUNK: usize = 64 * 1024;
/// Body chunks buffered between the file reader and the connection: together with
/// [`CHUNK`], the bound on the memory one request holds, whatever the batch size.
const CHANNEL_CHUNKS: usize = 4;
/// Most bytes of a response body read; a STOW-RS answer for thousands of instances fits.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of a token endpoint's answer read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 1024 * 1024;
/// Characters of a server's own text kept in a verdict's reason.
const MESSAGE_CHARS: usize = 300;
/// The media type of every part, and the `type` parameter of the request.
const DICOM: &str = "application/dicom";
/// What the response should be; the DICOM JSON model is the one parsed here.
const DICOM_JSON: &str = "application/dicom+json";
/// Length of every boundary [`new_boundary`] makes ("outpost-" and 32 hex digits).
const BOUNDARY_LEN: usize = 40;
/// Longest wait for a TCP (and TLS) connection, whatever the request timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// PS3.18 F.2 response attributes.
const REFERENCED_SOP_SEQUENCE: &str = "00081199";
const FAILED_SOP_SEQUENCE: &str = "00081198";
const REFERENCED_SOP_INSTANCE_UID: &str = "00081155";
const FAILURE_REASON: &str = "00081197";
const WARNING_REASON: &str = "00081196";

/// One DICOMweb destination.
#[derive(Clone)]
pub struct StowConfig {
    /// The service root, e.g. `https://cloud.example/dicom-web`; requests go to
    /// `{url}/studies`.
    pub url: String,
    pub auth: Auth,
    /// PEM certificates trusted in addition to the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// PEM with the client certificate chain, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1, unencrypted). May be left out
    /// when `client_cert` holds the key too.
    pub client_key: Option<PathBuf>,
    /// An HTTP(S) proxy URL, e.g. `http://proxy.example:3128`.
    pub proxy: Option<String>,
    /// Most bytes in one request body; an instance larger than this is sent on its own.
    pub max_request_bytes: u64,
    /// Most instances in one request (0 is taken as 1).
    pub max_request_instances: usize,
    /// Bound on one request, from connecting to the end of the response.
    pub timeout: Duration,
}

impl fmt::Debug for StowConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StowConfig")
            .field("url", &redact_url(&self.url))
            .field("auth", &self.auth)
            .field("ca_bundle", &self.ca_bundle)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("proxy", &self.proxy.as_deref().map(redact_url))
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_request_instances", &self.max_request_instances)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How requests authenticate. `Debug` never shows a password, token or secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    /// OAuth2 client credentials grant (RFC 6749 section 4.4). The token is cached, fetched
    /// again shortly before `expires_in` runs out, and at once when the server answers 401.
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = format_args!("<redacted>");
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &hidden)
                .finish(),
            Auth::Bearer { .. } => f.debug_struct("Bearer").field("token", &hidden).finish(),
            Auth::OAuth2 {
                token_url,
                client_id,
                scope,
                ..
            } => f
                .debug_struct("OAuth2")
                .field("token_url", &redact_url(token_url))
                .field("client_id", client_id)
                .field("client_secret", &hidden)
                .field("scope", scope)
                .finish(),
        }
    }
}

/// Why a [`StowClient`] could not be set up. Each message names the setting or file at fault
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StowError {
    #[error(
        "the DICOMweb url {url:?} is not usable: {reason}; give the service root over http or https, e.g. \"https://pacs.example/dicom-web\""
    )]
    Url { url: String, reason: String },
    #[error(
        "the OAuth2 token_url {url:?} is not usable: {reason}; give the token endpoint's full address, e.g. \"https://login.example/oauth2/token\""
    )]
    TokenUrl { url: String, reason: String },
    #[error(
        "the proxy {proxy:?} is not usable: {reason}; give it as \"http://host:port\" or \"https://host:port\""
    )]
    Proxy { proxy: String, reason: String },
    #[error(
        "cannot read the CA bundle {}: {source}; check the ca_bundle path and that the outpost user may read it",
        path.display()
    )]
    CaBundleRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the CA bundle {} is not usable: {reason}; it must be PEM text with one or more \"-----BEGIN CERTIFICATE-----\" blocks",
        path.display()
    )]
    CaBundleInvalid { path: PathBuf, reason: String },
    #[error(
        "cannot read the client {what} {}: {source}; check the client_{what} path and that the outpost user may read it",
        path.display()
    )]
    ClientFileRead {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the client certificate {} (key {}) is not usable: {reason}; client_cert must be PEM with the certificate chain and client_key a PEM private key (PKCS#8, PKCS#1 or SEC1, not encrypted)",
        cert.display(),
        key.as_deref().map_or("expected in the same file".into(), |k| k.display().to_string())
    )]
    ClientIdentity {
        cert: PathBuf,
        key: Option<PathBuf>,
        reason: String,
    },
    #[error(
        "client_key {} is set without client_cert; set client_cert to the PEM certificate chain that goes with it",
        key.display()
    )]
    KeyWithoutCert { key: PathBuf },
    #[error("the {what} for {url} is not usable: {reason}")]
    Credentials {
        url: String,
        what: &'static str,
        reason: String,
    },
    #[error("cannot set up the HTTP client for {url}: {reason}")]
    Client { url: String, reason: String },
}

/// A STOW-RS client for one destination. Cheap to clone; clones share the connection pool
/// (HTTP keep-alive) and the OAuth2 token.
#[derive(Clone)]
pub struct StowClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The service root as configured, password hidden, for messages.
    shown: String,
    studies: Url,
    probe: Url,
    auth: Auth,
    token_url: Option<Url>,
    token: Mutex<Option<Token>>,
    max_request_bytes: u64,
    max_request_instances: usize,
    timeout: Duration,
}

impl fmt::Debug for StowClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StowClient")
            .field("url", &self.inner.shown)
            .field("auth", &self.inner.auth)
            .field("max_request_bytes", &self.inner.max_request_bytes)
            .field("max_request_instances", &self.inner.max_request_instances)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// A cached OAuth2 access token.
struct Token {
    value: String,
    /// When to fetch a new one; `None` when the endpoint gave no lifetime (then only a 401
    /// replaces it).
    refresh_at: Option<Instant>,
}

/// How one request ended, for [`StowClient::send`].
enum Answer {
    /// One verdict per instance of the batch.
    Verdicts(Vec<Verdict>),
    /// 413 for several instances: send each half on its own.
    Split,
    /// Nothing can get through now (no connection, no token): this verdict is for the batch
    /// and every batch still waiting, which are not tried.
    GiveUp(Verdict),
}

impl StowClient {
    /// Checks the configuration, reads the certificate files and sets up the HTTP client. No
    /// connection is made.
    pub fn new(config: StowConfig) -> Result<StowClient, StowError> {
        let shown = redact_url(&config.url);
        let root = parse_http_url(config.url.trim()).map_err(|reason| StowError::Url {
            url: shown.clone(),
            reason,
        })?;
        let studies = endpoint(&root, "studies");
        let mut probe = studies.clone();
        probe.query_pairs_mut().append_pair("limit", "1");

        let token_url = match &config.auth {
            Auth::None => None,
            // The user and password travel base64-encoded, so any other text is fine.
            Auth::Basic { user, .. } => {
                if user.contains(':') {
                    return Err(StowError::Credentials {
                        url: shown,
                        what: "basic auth user",
                        reason: "it contains ':', which HTTP Basic cannot carry in a user name"
                            .into(),
                    });
                }
                None
            }
            Auth::Bearer { token } => {
                if token.trim().is_empty() {
                    return Err(credentials(&shown, "bearer token", "it is empty".into()));
                }
                check_header_value(token, "bearer token")
                    .map_err(|reason| credentials(&shown, "bearer token", reason))?;
                None
            }
            Auth::OAuth2 {
                token_url,
                client_id,
                ..
            } => {
                if client_id.is_empty() {
                    return Err(credentials(
                        &shown,
                        "OAuth2 client_id",
                        "it is empty".into(),
                    ));
                }
                Some(
                    parse_http_url(token_url.trim()).map_err(|reason| StowError::TokenUrl {
                        url: redact_url(token_url),
                        reason,
                    })?,
                )
            }
        };

        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(true)
            .connect_timeout(config.timeout.min(MAX_CONNECT_TIMEOUT))
            .tcp_keepalive(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_bundle {
            for cert in load_ca_bundle(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), key) => {
                builder = builder.identity(load_identity(cert, key.as_deref())?);
            }
            (None, Some(key)) => return Err(StowError::KeyWithoutCert { key: key.clone() }),
            (None, None) => {}
        }
        builder = match &config.proxy {
            Some(p) => {
                let proxy = parse_proxy(p).map_err(|reason| StowError::Proxy {
                    proxy: redact_url(p),
                    reason,
                })?;
                builder.proxy(proxy)
            }
            None => builder.no_proxy(),
        };
        let http = builder.build().map_err(|e| StowError::Client {
            url: shown.clone(),
            reason: error_chain(&e),
        })?;
        Ok(StowClient {
            inner: Arc::new(Inner {
                http,
                shown,
                studies,
                probe,
                auth: config.auth,
                token_url,
                token: Mutex::new(None),
                max_request_bytes: config.max_request_bytes,
                max_request_instances: config.max_request_instances.max(1),
                timeout: config.timeout,
            }),
        })
    }

    /// One verdict per item, in the items' order. Files are opened with
    /// `store.open_file(&item.file)` and sent whole, as stored.
    pub async fn send(
        &self,
        store: &store::Store,
        items: &[store::query::Retrievable],
    ) -> Vec<Verdict> {
        let mut verdicts = check_files(store, items).await;
        let ready: Vec<(usize, u64)> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_none())
            .filter_map(|(i, _)| items.get(i).map(|item| (i, item.size)))
            .collect();
        let mut queue: VecDeque<Vec<usize>> = plan(
            &ready,
            self.inner.max_request_bytes,
            self.inner.max_request_instances,
        )
        .into();
        while let Some(batch) = queue.pop_front() {
            let members: Vec<&store::query::Retrievable> =
                batch.iter().filter_map(|&i| items.get(i)).collect();
            match self.post_batch(store, &members).await {
                Answer::Verdicts(answered) => {
                    for (&i, v) in batch.iter().zip(answered) {
                        verdicts[i] = Some(v);
                    }
                }
                Answer::Split => {
                    let (first, second) = batch.split_at(batch.len() / 2);
                    debug!(
                        url = %self.inner.shown,
                        instances = batch.len(),
                        "HTTP 413: sending the batch in halves"
                    );
                    queue.push_front(second.to_vec());
                    queue.push_front(first.to_vec());
                }
                Answer::GiveUp(verdict) => {
                    for i in batch.into_iter().chain(queue.drain(..).flatten()) {
                        verdicts[i] = Some(verdict.clone());
                    }
                }
            }
        }
        verdicts
            .into_iter()
            .map(|v| {
                // Every index is either refused by the file check or in exactly one batch,
                // so this is only a guard against a future mistake in the planning.
                v.unwrap_or_else(classify::not_sent)
            })
            .collect()
    }

    /// Cheap liveness check for a destination marked down: a QIDO-RS study query for one
    /// result. Any HTTP answer below 500 except 408 and 429 means the server is there.
    pub async fn probe(&self) -> Result<(), String> {
        let bearer = match self.inner.token_url {
            Some(_) => Some(self.bearer(None).await.map_err(|v| reason_of(&v))?),
            None => None,
        };
        let request = self
            .inner
            .http
            .get(self.inner.probe.clone())
            .header(ACCEPT, DICOM_JSON)
            .timeout(self.inner.timeout);
        let response = self
            .authorize(request, bearer.as_deref())
            .send()
            .await
            .map_err(|e| {
                format!(
                    "{} could not be reached: {}",
                    self.inner.shown,
                    describe(&e, self.inner.timeout)
                )
            })?;
        let status = response.status().as_u16();
        if status < 500 && status != 408 && status != 429 {
            // Reading the (small) answer lets the connection go back to the pool.
            let _ = read_limited(response, 64 * 1024).await;
            return Ok(());
        }
        let body = read_limited(response, 64 * 1024).await.unwrap_or_default();
        let said = shorten(&body);
        Err(if said.is_empty() {
            format!("{} answered HTTP {status}", self.inner.shown)
        } else {
            format!("{} answered HTTP {status}: {said}", self.inner.shown)
        })
    }

    /// Sends one batch, fetching a new OAuth2 token and sending again once if the server
    /// answers 401.
    async fn post_batch(
        &self,
        store: &store::Store,
        batch: &[&store::query::Retrievable],
    ) -> Answer {
        let oauth2 = self.inner.token_url.is_some();
        let mut rejected: Option<String> = None;
        let mut retried = false;
        loop {
            let bearer = if oauth2 {
                match self.bearer(rejected.as_deref()).await {
                    Ok(token) => Some(token),
                    Err(verdict) => return Answer::GiveUp(verdict),
                }
            } else {
                None
            };
            let started = Instant::now();
            let response = match self.post(store, batch, bearer.as_deref()).await {
                Ok(r) => r,
                Err(e) => {
                    // Only a connection that could not be made says the server is away; a
                    // request that failed on the way (timeout, reset mid-upload) may be this
                    // batch's doing, so it counts against its instances and moves them back
                    // in the queue instead of holding the destination on them forever.
                    let verdict =
                        classify::request_failed(e.is_connect(), describe(&e, self.inner.timeout));
                    debug!(
                        url = %self.inner.shown,
                        instances = batch.len(),
                        error = %error_chain(&e),
                        "STOW-RS request failed"
                    );
                    return if e.is_connect() {
                        Answer::GiveUp(verdict)
                    } else {
                        Answer::Verdicts(vec![verdict; batch.len()])
                    };
                }
            };
            let status = response.status();
            debug!(
                url = %self.inner.shown,
                instances = batch.len(),
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "STOW-RS request answered"
            );
            if status == StatusCode::UNAUTHORIZED && oauth2 && !retried {
                // The token may have been revoked or have expired early: a fresh one gets one
                // more try. Reading the answer first keeps the connection for that try.
                let _ = read_limited(response, 64 * 1024).await;
                rejected = bearer;
                retried = true;
                continue;
            }
            if status == StatusCode::PAYLOAD_TOO_LARGE && batch.len() > 1 {
                return Answer::Split;
            }
            let uids: Vec<&str> = batch.iter().map(|i| i.sop_instance_uid.as_str()).collect();
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            return match read_limited(response, MAX_RESPONSE_BYTES).await {
                Ok(body) => Answer::Verdicts(verdicts(
                    status.as_u16(),
                    &body,
                    retry_after,
                    location.as_deref(),
                    &uids,
                )),
                Err(e) => Answer::Verdicts(vec![
                    classify::transport(format!(
                        "the answer (HTTP {}) broke off: {}",
                        status.as_u16(),
                        describe(&e, self.inner.timeout)
                    ));
                    batch.len()
                ]),
            };
        }
    }

    /// One STOW-RS request whose body streams the batch's files from disk.
    async fn post(
        &self,
        store: &store::Store,
        batch: &[&store::query::Retrievable],
        bearer: Option<&str>,
    ) -> Result<Response, reqwest::Error> {
        let boundary = new_boundary();
        let sizes: Vec<u64> = batch.iter().map(|i| i.size).collect();
        let length = body_len(boundary.len(), &sizes);
        let files: Vec<(String, u64)> = batch.iter().map(|i| (i.file.clone(), i.size)).collect();
        let body = Body::wrap_stream(body_stream(store.clone(), boundary.clone(), files));
        let request = self
            .inner
            .http
            .post(self.inner.studies.clone())
            .header(CONTENT_TYPE, content_type(&boundary))
            .header(ACCEPT, DICOM_JSON)
            .header(CONTENT_LENGTH, length)
            // The timeout bounds the wait for the server, not the upload: each request also
            // gets the time its body takes at 1 Mbit/s, so a slow uplink is not mistaken for
            // a dead server.
            .timeout(self.inner.timeout + Duration::from_secs(length / 125_000))
            .body(body);
        self.authorize(request, bearer).send().await
    }

    fn authorize(&self, request: RequestBuilder, bearer: Option<&str>) -> RequestBuilder {
        match (&self.inner.auth, bearer) {
            (Auth::Basic { user, password }, _) => request.basic_auth(user, Some(password)),
            (Auth::Bearer { token }, _) => request.bearer_auth(token.trim()),
            (Auth::OAuth2 { .. }, Some(token)) => request.bearer_auth(token),
            (Auth::None, _) | (Auth::OAuth2 { .. }, None) => request,
        }
    }

    /// The OAuth2 access token to use: the cached one, unless it is due for renewal or is the
    /// one the server just `rejected`. Concurrent callers wait for a single fetch.
    async fn bearer(&self, rejected: Option<&str>) -> Result<String, Verdict> {
        let mut cached = self.inner.token.lock().await;
        if let Some(token) = cached.as_ref() {
            let was_rejected = rejected.is_some_and(|r| r == token.value);
            let due = token.refresh_at.is_some_and(|at| Instant::now() >= at);
            if !was_rejected && !due {
                return Ok(token.value.clone());
            }
        }
        *cached = None;
        let token = self.fetch_token().await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Asks the token endpoint for a token (client credentials grant).
    async fn fetch_token(&self) -> Result<Token, Verdict> {
        let (
            Some(url),
            Auth::OAuth2 {
                client_id,
                client_secret,
                scope,
                ..
            },
        ) = (&self.inner.token_url, &self.inner.auth)
        else {
            return Err(classify::token(classify::TokenProblem::NoEndpoint, None));
        };
        let shown = redact_url(url.as_str());
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = scope.as_deref().filter(|s| !s.trim().is_empty()) {
            form.push(("scope", scope));
        }
        let response = self
            .inner
            .http
            .post(url.clone())
            .basic_auth(form_encode(client_id), Some(form_encode(client_secret)))
            .header(ACCEPT, "application/json")
            .form(&form)
            .timeout(self.inner.timeout)
            .send()
            .await
            .map_err(|e| {
                classify::transport(format!(
                    "the OAuth2 token endpoint {shown}: {}",
                    describe(&e, self.inner.timeout)
                ))
            })?;
        let status = response.status().as_u16();
        let after = retry_after(response.headers(), SystemTime::now());
        let body = read_limited(response, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .map_err(|e| {
                classify::transport(format!(
                    "the OAuth2 token endpoint {shown}: {}",
                    describe(&e, self.inner.timeout)
                ))
            })?;
        if !(200..300).contains(&status) {
            // Like a 401 from the destination itself, a refused token is fixed in the
            // configuration, so the instances wait for it rather than being given up.
            let said = shorten(&body);
            return Err(classify::token(
                classify::TokenProblem::Refused {
                    endpoint: &shown,
                    status,
                    said: &said,
                },
                after,
            ));
        }
        let token = parse_token(&body, Instant::now()).map_err(|why| {
            classify::token(
                classify::TokenProblem::Unusable {
                    endpoint: &shown,
                    status,
                    why: &why,
                },
                None,
            )
        })?;
        let lifetime = token
            .refresh_at
            .map(|at| at.saturating_duration_since(Instant::now()));
        debug!(token_url = %shown, renew_in = ?lifetime, "fetched an OAuth2 token");
        Ok(token)
    }
}

fn credentials(url: &str, what: &'static str, reason: String) -> StowError {
    StowError::Credentials {
        url: url.to_string(),
        what,
        reason,
    }
}

fn check_header_value(value: &str, what: &str) -> Result<(), String> {
    HeaderValue::from_str(value).map(|_| ()).map_err(|_| {
        format!(
            "the {what} holds a character HTTP headers cannot carry (a line break left from the file it was copied from?)"
        )
    })
}

/// An absolute http or https URL, fragment removed.
fn parse_http_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| e.to_string())?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "the scheme is {:?}, but only http and https are spoken",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err("it names no host".into());
    }
    url.set_fragment(None);
    Ok(url)
}

/// `root` with one more path segment; a trailing slash on the root is tolerated.
fn endpoint(root: &Url, segment: &str) -> Url {
    let mut url = root.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().push(segment);
    }
    url
}

fn parse_proxy(text: &str) -> Result<reqwest::Proxy, String> {
    let url = parse_http_url(text.trim())?;
    reqwest::Proxy::all(url).map_err(|e| error_chain(&e))
}

/// A URL for messages and `Debug`: its user name and password, and its query (signed URLs
/// and function keys put their secret there), are replaced.
fn redact_url(text: &str) -> String {
    match Url::parse(text) {
        Ok(mut url) => {
            let mut hidden = true;
            if !url.username().is_empty() || url.password().is_some() {
                hidden &= url.set_password(None).is_ok();
                hidden &= url.set_username("redacted").is_ok();
            }
            if url.query().is_some() {
                url.set_query(Some("redacted"));
            }
            if hidden {
                url.to_string()
            } else {
                "<a URL with credentials>".into()
            }
        }
        // Unparseable text may still hold credentials; show it only when it cannot.
        Err(_) if text.contains('@') => "<an unparseable URL>".into(),
        Err(_) => text.to_string(),
    }
}

fn load_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, StowError> {
    let pem = std::fs::read(path).map_err(|source| StowError::CaBundleRead {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| StowError::CaBundleInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut certs = Vec::new();
    // Parsing each certificate as a trust anchor here, rather than when the client is built,
    // lets the message say which one is at fault.
    let mut anchors = rustls::RootCertStore::empty();
    for (n, der) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let der = der.map_err(|e| invalid(format!("PEM block {} cannot be read: {e}", n + 1)))?;
        anchors.add(der.clone()).map_err(|e| {
            invalid(format!(
                "certificate {} is not a usable X.509 certificate: {e}",
                n + 1
            ))
        })?;
        certs.push(
            reqwest::Certificate::from_der(&der)
                .map_err(|e| invalid(format!("certificate {}: {}", n + 1, error_chain(&e))))?,
        );
    }
    if certs.is_empty() {
        return Err(invalid("it holds no certificate".into()));
    }
    Ok(certs)
}

fn load_identity(cert: &Path, key: Option<&Path>) -> Result<reqwest::Identity, StowError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| StowError::ClientFileRead {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let unusable = |reason: String| StowError::ClientIdentity {
        cert: cert.to_path_buf(),
        key: key.map(Path::to_path_buf),
        reason,
    };
    let mut pem = read("cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("its PEM cannot be read: {e}")))?;
    if chain.is_empty() {
        return Err(unusable("client_cert holds no certificate".into()));
    }
    if let Some(key) = key {
        let key_pem = read("key", key)?;
        pem.push(b'\n');
        pem.extend_from_slice(&key_pem);
    }
    // reqwest would report a missing or encrypted key only as "private key or certificate not
    // found"; checking first gives the operator the actual reason.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => unusable(
            "no unencrypted private key was found (an encrypted key must be decrypted first, e.g. with `openssl pkey`)"
                .into(),
        ),
        other => unusable(format!("the private key cannot be read: {other}")),
    })?;
    reqwest::Identity::from_pem(&pem).map_err(|e| unusable(error_chain(&e)))
}

/// Opens every item's file once, before anything is sent: a missing file or one whose size
/// differs from the index is answered here, alone, instead of failing a whole request midway.
async fn check_files(
    store: &store::Store,
    items: &[store::query::Retrievable],
) -> Vec<Option<Verdict>> {
    let store = store.clone();
    let files: Vec<(String, u64)> = items.iter().map(|i| (i.file.clone(), i.size)).collect();
    let n = files.len();
    let checked = tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|(file, size)| check_file(&store, file, *size))
            .collect::<Vec<_>>()
    })
    .await;
    checked.unwrap_or_else(|e| {
        let error = e.to_string();
        vec![
            Some(classify::stored_file(classify::StoredFile::Unchecked {
                error: &error
            }));
            n
        ]
    })
}

fn check_file(store: &store::Store, file: &str, size: u64) -> Option<Verdict> {
    let mut reader = match store.open_file(file) {
        Ok(r) => r,
        // A stored file does not come back by waiting; someone has to look.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Some(classify::stored_file(classify::StoredFile::Missing {
                file,
            }));
        }
        Err(e) => {
            let error = format!("opening it failed: {e}");
            return Some(classify::stored_file(classify::StoredFile::Unreadable {
                file,
                error: &error,
            }));
        }
    };
    match reader.seek(SeekFrom::End(0)) {
        Ok(len) if len == size => None,
        Ok(len) => Some(classify::stored_file(classify::StoredFile::WrongSize {
            file,
            len,
            size,
        })),
        Err(e) => {
            let error = e.to_string();
            Some(classify::stored_file(classify::StoredFile::Unreadable {
                file,
                error: &error,
            }))
        }
    }
}

/// Groups `(index, size)` items, in order, into batches of at most `max_instances` instances
/// and, unless a single instance is larger on its own, at most `max_bytes` of request body.
fn plan(items: &[(usize, u64)], max_bytes: u64, max_instances: usize) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = closing_len(BOUNDARY_LEN);
    for &(index, size) in items {
        let cost = part_overhead(BOUNDARY_LEN) + size;
        if !current.is_empty()
            && (current.len() >= max_instances || bytes.saturating_add(cost) > max_bytes)
        {
            batches.push(std::mem::take(&mut current));
            bytes = closing_len(BOUNDARY_LEN);
        }
        current.push(index);
        bytes = bytes.saturating_add(cost);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// A fresh boundary: 128 random bits, so no stored file can have been made to contain it.
fn new_boundary() -> String {
    format!("outpost-{:032x}", rand::random::<u128>())
}

fn content_type(boundary: &str) -> String {
    format!("multipart/related; type=\"{DICOM}\"; boundary={boundary}")
}

/// What precedes each part's content: the dash-boundary line and the part's headers.
fn part_head(boundary: &str) -> String {
    format!("--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n")
}

/// The close-delimiter's tail after the last part's CRLF.
fn closing(boundary: &str) -> String {
    format!("--{boundary}--\r\n")
}

/// Bytes each part adds besides its content: its head and the CRLF that ends it (RFC 2046
/// counts that CRLF as part of the next delimiter).
fn part_overhead(boundary_len: usize) -> u64 {
    (2 + boundary_len + 2 + "Content-Type: ".len() + DICOM.len() + 2 + 2 + 2) as u64
}

fn closing_len(boundary_len: usize) -> u64 {
    (2 + boundary_len + 2 + 2) as u64
}

/// The exact length of a body with parts of these content sizes.
fn body_len(boundary_len: usize, sizes: &[u64]) -> u64 {
    sizes
        .iter()
        .map(|s| part_overhead(boundary_len) + s)
        .sum::<u64>()
        + closing_len(boundary_len)
}

/// One part's content to be written.
struct Part<R> {
    /// What the content is, for messages.
    label: String,
    size: u64,
    reader: R,
}

/// Writes a whole multipart body through `emit`, chunk by chunk: each part is `size` bytes
/// read from its reader. Stops quietly when `emit` returns false (the request was dropped);
/// fails when a reader ends early or its content contains the boundary.
fn write_body<R: Read>(
    boundary: &str,
    parts: impl IntoIterator<Item = io::Result<Part<R>>>,
    emit: &mut dyn FnMut(Bytes) -> bool,
) -> io::Result<()> {
    let finder = memchr::memmem::Finder::new(boundary.as_bytes());
    let head = Bytes::from(part_head(boundary));
    let keep = boundary.len().saturating_sub(1);
    for part in parts {
        let Part {
            label,
            size,
            mut reader,
        } = part?;
        if !emit(head.clone()) {
            return Ok(());
        }
        // The last bytes of the content so far, so a boundary split across two chunks is
        // found too.
        let mut tail: Vec<u8> = Vec::with_capacity(keep * 2);
        let mut remaining = size;
        while remaining > 0 {
            let want = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
            let mut chunk = vec![0u8; want];
            let got = match reader.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{label} ended after {} of its {size} bytes",
                            size - remaining
                        ),
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("reading {label}: {e}"))),
            };
            chunk.truncate(got);
            tail.extend_from_slice(&chunk[..chunk.len().min(keep)]);
            if finder.find(&chunk).is_some() || finder.find(&tail).is_some() {
                return Err(io::Error::other(format!(
                    "the multipart boundary occurs in {label}; the request was abandoned so that it is sent again with another boundary"
                )));
            }
            tail.clear();
            tail.extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
            remaining -= got as u64;
            if !emit(Bytes::from(chunk)) {
                return Ok(());
            }
        }
        if !emit(Bytes::from_static(b"\r\n")) {
            return Ok(());
        }
    }
    emit(Bytes::from(closing(boundary)));
    Ok(())
}

/// The request body: a blocking task reads the files and hands chunks over a small channel,
/// so at most [`CHANNEL_CHUNKS`] chunks wait in memory.
fn body_stream(store: store::Store, boundary: String, files: Vec<(String, u64)>) -> BodyStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let parts = files.into_iter().map(|(file, size)| {
            store
                .open_file(&file)
                .map(|reader| Part {
                    label: format!("the stored file {file}"),
                    size,
                    reader,
                })
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("opening the stored file {file}: {e}"))
                })
        });
        let written = write_body(&boundary, parts, &mut |chunk| {
            tx.blocking_send(Ok(chunk)).is_ok()
        });
        if let Err(e) = written {
            // The connection sees the body fail and abandons the request.
            let _ = tx.blocking_send(Err(e));
        }
    });
    BodyStream(rx)
}

struct BodyStream(mpsc::Receiver<io::Result<Bytes>>);

impl futures_core::Stream for BodyStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The instances a STOW-RS response names, by SOP Instance UID, with their WarningReason
/// (stored) or FailureReason (failed) when given.
#[derive(Debug, Default, PartialEq, Eq)]
struct StowResponse {
    stored: HashMap<String, Option<u16>>,
    failed: HashMap<String, Option<u16>>,
}

/// Reads a body as a PS3.18 F.2 STOW-RS response; `None` when it is not JSON or names neither
/// sequence (an error page, an empty body).
fn parse_response(body: &[u8]) -> Option<StowResponse> {
    let value: Value = serde_json::from_slice(body).ok()?;
    // The DICOM JSON model answers one object; some servers wrap it in an array.
    let object = match &value {
        Value::Object(o) => o,
        Value::Array(a) if a.len() == 1 => a.first()?.as_object()?,
        _ => return None,
    };
    if !object.contains_key(REFERENCED_SOP_SEQUENCE) && !object.contains_key(FAILED_SOP_SEQUENCE) {
        return None;
    }
    let mut response = StowResponse::default();
    for item in sequence(object, REFERENCED_SOP_SEQUENCE) {
        if let Some(uid) = uid_value(item, REFERENCED_SOP_INSTANCE_UID) {
            response.stored.insert(uid, us_value(item, WARNING_REASON));
        }
    }
    for item in sequence(object, FAILED_SOP_SEQUENCE) {
        if let Some(uid) = uid_value(item, REFERENCED_SOP_INSTANCE_UID) {
            response.failed.insert(uid, us_value(item, FAILURE_REASON));
        }
    }
    Some(response)
}

/// The items of a sequence attribute (none when absent or empty).
fn sequence<'a>(
    object: &'a Map<String, Value>,
    tag: &str,
) -> impl Iterator<Item = &'a Map<String, Value>> {
    object
        .get(tag)
        .and_then(|a| a.get("Value"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

fn first_value<'a>(item: &'a Map<String, Value>, tag: &str) -> Option<&'a Value> {
    item.get(tag)?.get("Value")?.as_array()?.first()
}

fn uid_value(item: &Map<String, Value>, tag: &str) -> Option<String> {
    let uid = first_value(item, tag)?
        .as_str()?
        .trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!uid.is_empty()).then(|| uid.to_string())
}

/// A US value; DICOM JSON gives it as a number, some servers as a decimal string.
fn us_value(item: &Map<String, Value>, tag: &str) -> Option<u16> {
    match first_value(item, tag)? {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u16::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

/// One verdict per instance (`uids`, in the batch's order) from an answer: from the STOW-RS
/// response when the body is one, otherwise from the HTTP status.
fn verdicts(
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    location: Option<&str>,
    uids: &[&str],
) -> Vec<Verdict> {
    let Some(response) = parse_response(body) else {
        let message = match location {
            Some(to) if (300..400).contains(&status) => format!(
                "moved to {to}; set the destination's url to the new address (redirects are not followed)"
            ),
            _ => shorten(body),
        };
        return vec![classify::http_status(status, &message, retry_after); uids.len()];
    };
    uids.iter()
        .map(|uid| {
            let outcome = if let Some(warning) = response.stored.get(*uid) {
                classify::StowOutcome::Stored(*warning)
            } else if let Some(reason) = response.failed.get(*uid) {
                classify::StowOutcome::Failed(*reason)
            } else {
                classify::StowOutcome::NotMentioned
            };
            classify::stow_instance(outcome, status, retry_after)
        })
        .collect()
}

fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()
        .and_then(|v| parse_retry_after(v, now))
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 section 10.2.3); a date already
/// past means now.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly many seconds are still "a long time", not "no hint".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A server's text for a verdict: markup dropped, whitespace collapsed, at most
/// [`MESSAGE_CHARS`] characters.
fn shorten(body: &[u8]) -> String {
    let head = &body[..body.len().min(64 * 1024)];
    let text = String::from_utf8_lossy(head);
    let mut plain = String::with_capacity(text.len());
    let markup = text.trim_start().starts_with('<');
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' if markup => in_tag = true,
            '>' if markup && in_tag => {
                in_tag = false;
                plain.push(' ');
            }
            _ if in_tag => {}
            c if c.is_control() => plain.push(' '),
            c => plain.push(c),
        }
    }
    let collapsed = plain.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= MESSAGE_CHARS {
        return collapsed;
    }
    let mut cut: String = collapsed.chars().take(MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Reads at most `limit` bytes of a response body; the rest is left unread.
async fn read_limited(mut response: Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            break;
        }
    }
    Ok(body)
}

/// The token endpoint's JSON answer (RFC 6749 section 5.1).
fn parse_token(body: &[u8], now: Instant) -> Result<Token, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("its answer is not JSON ({e})"))?;
    let value_str = |key: &str| value.get(key).and_then(Value::as_str);
    let Some(access) = value_str("access_token").filter(|t| !t.is_empty()) else {
        return Err("its answer has no access_token".into());
    };
    if HeaderValue::from_str(&format!("Bearer {access}")).is_err() {
        return Err("the access_token holds characters HTTP headers cannot carry".into());
    }
    if let Some(kind) = value_str("token_type")
        && !kind.eq_ignore_ascii_case("bearer")
    {
        warn!(
            token_type = kind,
            "the OAuth2 token endpoint issued a token that is not a bearer token; using it as one"
        );
    }
    let lifetime = match value.get("expires_in") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|s| s.is_finite() && *s >= 0.0)
    .map(|s| Duration::from_secs_f64(s.min(1e9)));
    Ok(Token {
        value: access.to_string(),
        refresh_at: lifetime.map(|l| now + l - refresh_margin(l)),
    })
}

/// How long before expiry a token is replaced: a minute, or half its life when shorter, so
/// a request never sets out with a token about to expire on the way.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 2).min(Duration::from_secs(60))
}

/// `application/x-www-form-urlencoded`, which RFC 6749 section 2.3.1 applies to the client
/// id and secret before they go into HTTP Basic.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// An error and its sources, joined: reqwest's own message alone rarely says what failed.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = message(error);
    let mut source = error.source();
    while let Some(e) = source {
        let text = message(e);
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// An error's own message, without the " for url (...)" reqwest appends: a URL's query (and
/// a webhook's path) may hold a key, and the destination is named beside it anyway.
fn message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    if error
        .downcast_ref::<reqwest::Error>()
        .is_some_and(|e| e.url().is_some())
        && let Some(at) = text.find(" for url (")
    {
        text.truncate(at);
    }
    text
}

/// A transport failure in words.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!(
            "no complete answer within {}s: {}",
            timeout.as_secs_f64(),
            error_chain(error)
        )
    } else {
        error_chain(error)
    }
}

fn reason_of(verdict: &Verdict) -> String {
    verdict.reason().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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

    fn referenced(uid: &str) -> Value {
        serde_json::json!({
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00081155": {"vr": "UI", "Value": [uid]},
            "00081190": {"vr": "UR", "Value": [format!("http://pacs/dicom-web/studies/1/series/2/instances/{uid}")]}
        })
    }

    fn failed(uid: &str, reason: u16) -> Value {
        serde_json::json!({
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
            "00081155": {"vr": "UI", "Value": [uid]},
            "00081197": {"vr": "US", "Value": [reason]}
        })
    }

    fn response(stored: Vec<Value>, failures: Vec<Value>) -> Vec<u8> {
        let mut object = Map::new();
        object.insert(
            "00081190".into(),
            serde_json::json!({"vr": "UR", "Value": ["http://pacs/dicom-web/studies/1"]}),
        );
        let seq = |items: Vec<Value>| {
            if items.is_empty() {
                serde_json::json!({"vr": "SQ"})
            } else {
                serde_json::json!({"vr": "SQ", "Value": items})
            }
        };
        object.insert(FAILED_SOP_SEQUENCE.into(), seq(failures));
        object.insert(REFERENCED_SOP_SEQUENCE.into(), seq(stored));
        serde_json::to_vec(&Value::Object(object)).expect("JSON")
    }

    #[test]
    fn a_200_with_every_instance_referenced_is_all_delivered() {
        let body = response(vec![referenced("1.1"), referenced("1.2")], vec![]);
        let v = verdicts(200, &body, None, None, &["1.1", "1.2"]);
        assert_eq!(v, vec![Verdict::delivered(), Verdict::delivered()]);
    }

    #[test]
    fn a_202_is_judged_per_instance() {
        let body = response(
            vec![referenced("1.1")],
            vec![
                failed("1.2", 0xA700),
                failed("1.3", 0xC000),
                failed("1.4", 0x0111),
            ],
        );
        let v = verdicts(202, &body, None, None, &["1.1", "1.2", "1.3", "1.4"]);
        assert_eq!(kinds(&v), ["delivered", "retry", "dead", "delivered"]);
        let Verdict::DeadLetter { reason } = &v[2] else {
            unreachable!()
        };
        assert!(reason.contains("0xC000"), "{reason}");
    }

    #[test]
    fn a_409_with_every_instance_failed_is_judged_per_instance() {
        let body = response(vec![], vec![failed("1.1", 0x0122), failed("1.2", 0x0110)]);
        let v = verdicts(409, &body, None, None, &["1.1", "1.2"]);
        assert_eq!(kinds(&v), ["dead", "retry"]);
    }

    #[test]
    fn a_200_listing_failures_is_believed_over_its_status() {
        let body = response(
            vec![referenced("1.1")],
            vec![failed("1.2", 0xA700), failed("1.3", 0xC000)],
        );
        let v = verdicts(200, &body, None, None, &["1.1", "1.2", "1.3"]);
        assert_eq!(kinds(&v), ["delivered", "retry", "dead"]);
    }

    #[test]
    fn an_instance_the_response_does_not_mention_is_retried() {
        let body = response(vec![referenced("1.1")], vec![]);
        let v = verdicts(200, &body, None, None, &["1.1", "1.9"]);
        let Verdict::Retry { reason, after } = &v[1] else {
            panic!("{:?}", v[1])
        };
        assert!(reason.contains("without mentioning"), "{reason}");
        assert_eq!(*after, None);
    }

    #[test]
    fn a_warning_reason_is_kept_as_a_note() {
        let mut item = referenced("1.1");
        item.as_object_mut().expect("object").insert(
            WARNING_REASON.into(),
            serde_json::json!({"vr": "US", "Value": [0xB000]}),
        );
        let body = response(vec![item], vec![]);
        let v = verdicts(202, &body, None, None, &["1.1"]);
        assert_eq!(
            v,
            vec![Verdict::Delivered {
                note: Some("stored with warning 0xB000 (coercion of data elements)".into()),
                confirmed: true,
            }]
        );
    }

    #[test]
    fn failure_reasons_given_as_strings_and_wrapped_answers_are_read() {
        let body = br#"[{"00081198": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.1"]}, "00081197": {"vr": "US", "Value": ["49152"]}},
            {"00081155": {"vr": "UI", "Value": ["1.2"]}}
        ]}}]"#;
        let r = parse_response(body).expect("a STOW-RS response");
        assert_eq!(r.failed.get("1.1"), Some(&Some(0xC000)));
        assert_eq!(r.failed.get("1.2"), Some(&None));
        let v = verdicts(409, body, None, None, &["1.1", "1.2"]);
        assert_eq!(kinds(&v), ["dead", "retry"]);
    }

    #[test]
    fn a_body_that_is_no_stow_response_leaves_it_to_the_status() {
        for body in [
            &b""[..],
            b"OK",
            b"{}",
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        ] {
            assert_eq!(parse_response(body), None);
        }
        // An empty 200 says nothing about what was stored.
        assert_eq!(kinds(&verdicts(200, b"", None, None, &["1.1"])), ["retry"]);
        let v = verdicts(
            502,
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            Some(Duration::from_secs(5)),
            None,
            &["1.1", "1.2"],
        );
        assert_eq!(
            v[0],
            Verdict::Unreachable {
                reason: "the server is unavailable or busy, HTTP 502: 502 Bad Gateway".into(),
                after: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(v[0], v[1]);
        assert_eq!(
            kinds(&verdicts(400, b"bad", None, None, &["1.1"])),
            ["dead"]
        );
        let Verdict::DeadLetter { reason } = &verdicts(
            301,
            b"",
            None,
            Some("https://new.example/dicom-web/studies"),
            &["1.1"],
        )[0] else {
            panic!("a redirect is a configuration problem")
        };
        assert!(reason.contains("https://new.example"), "{reason}");
    }

    #[test]
    fn retry_after_applies_to_retried_instances_of_a_stow_response() {
        let body = response(vec![referenced("1.1")], vec![failed("1.2", 0xA701)]);
        let hint = Some(Duration::from_secs(30));
        let v = verdicts(202, &body, hint, None, &["1.1", "1.2"]);
        assert_eq!(v[0], Verdict::delivered());
        assert!(matches!(v[1], Verdict::Retry { after, .. } if after == hint));
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        let p = |v: &str| parse_retry_after(v, now);
        assert_eq!(p("120"), Some(Duration::from_secs(120)));
        assert_eq!(p(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            p("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            p("Sun, 06 Nov 1994 08:51:37 GMT"),
            Some(Duration::from_secs(120))
        );
        // The obsolete formats recipients must still accept (RFC 9110 section 5.6.7).
        assert_eq!(
            p("Sunday, 06-Nov-94 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(p("Sun Nov  6 08:50:07 1994"), Some(Duration::from_secs(30)));
        assert_eq!(p("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(p(""), None);
        assert_eq!(p("-5"), None);
        assert_eq!(p("soon"), None);
    }

    fn build(contents: &[&[u8]], boundary: &str) -> io::Result<Vec<u8>> {
        let parts = contents.iter().enumerate().map(|(n, c)| {
            Ok(Part {
                label: format!("part {n}"),
                size: c.len() as u64,
                reader: Cursor::new(c.to_vec()),
            })
        });
        let mut body = Vec::new();
        write_body(boundary, parts, &mut |chunk| {
            body.extend_from_slice(&chunk);
            true
        })?;
        Ok(body)
    }

    /// Splits a body per RFC 2046 section 5.1.1: the parts lie between
    /// "--boundary CRLF" (first) or "CRLF --boundary CRLF" (later) and the close-delimiter.
    fn split(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
        let dash = format!("--{boundary}");
        let delimiter = format!("\r\n--{boundary}");
        assert!(
            body.starts_with(dash.as_bytes()),
            "body starts with the dash-boundary"
        );
        let mut rest = &body[dash.len()..];
        let mut parts = Vec::new();
        loop {
            if let Some(after) = rest.strip_prefix(b"--") {
                assert_eq!(after, b"\r\n", "nothing but CRLF after the close-delimiter");
                return parts;
            }
            rest = rest.strip_prefix(b"\r\n").expect("CRLF after a delimiter");
            let end = memchr::memmem::find(rest, delimiter.as_bytes()).expect("a next delimiter");
            let part = &rest[..end];
            let split_at = memchr::memmem::find(part, b"\r\n\r\n").expect("headers end");
            let headers = String::from_utf8(part[..split_at].to_vec()).expect("ASCII headers");
            parts.push((headers, part[split_at + 4..].to_vec()));
            rest = &rest[end + delimiter.len()..];
        }
    }

    #[test]
    fn the_body_is_framed_per_rfc_2046() {
        let boundary = new_boundary();
        assert_eq!(boundary.len(), BOUNDARY_LEN);
        // Contents that end in CRLF, hold lone dashes and CRLFs, or are empty.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let contents: Vec<&[u8]> = vec![b"DICM\r\n--\r\n", b"", &big, b"\r\n"];
        let body = build(&contents, &boundary).expect("body");
        let sizes: Vec<u64> = contents.iter().map(|c| c.len() as u64).collect();
        assert_eq!(body.len() as u64, body_len(boundary.len(), &sizes));
        let parts = split(&body, &boundary);
        assert_eq!(parts.len(), contents.len());
        for ((headers, content), expected) in parts.iter().zip(&contents) {
            assert_eq!(headers, "Content-Type: application/dicom");
            assert_eq!(content.as_slice(), *expected);
        }
        assert!(body.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()));
        assert_eq!(
            content_type(&boundary),
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}")
        );
    }

    #[test]
    fn content_holding_the_boundary_is_never_sent() {
        let boundary = new_boundary();
        let mut sneaky = vec![0u8; CHUNK - 10];
        sneaky.extend_from_slice(boundary.as_bytes());
        // Across a chunk edge as well as inside one.
        for content in [sneaky.clone(), boundary.clone().into_bytes()] {
            let e = build(&[b"fine", &content], &boundary).expect_err("refused");
            assert!(e.to_string().contains("boundary occurs in part 1"), "{e}");
        }
        assert_ne!(new_boundary(), boundary);
    }

    #[test]
    fn a_file_shorter_than_its_size_fails_the_body() {
        let parts = [Ok(Part {
            label: "the stored file x".into(),
            size: 10,
            reader: Cursor::new(vec![1u8; 4]),
        })];
        let e = write_body("b", parts, &mut |_| true).expect_err("short");
        assert!(
            e.to_string().contains("ended after 4 of its 10 bytes"),
            "{e}"
        );
    }

    #[test]
    fn batches_keep_to_both_bounds() {
        let items: Vec<(usize, u64)> = (0..5).map(|i| (i, 1000)).collect();
        assert_eq!(
            plan(&items, u64::MAX, 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        let per_part = part_overhead(BOUNDARY_LEN) + 1000;
        let two = closing_len(BOUNDARY_LEN) + 2 * per_part;
        assert_eq!(
            plan(&items, two, 100),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(plan(&items, two - 1, 100).len(), 5);
        // One instance larger than the bound still goes, alone.
        assert_eq!(
            plan(&[(0, 10), (1, 5000), (2, 10)], 2000, 100),
            vec![vec![0], vec![1], vec![2]]
        );
        assert_eq!(plan(&items, u64::MAX, 1).len(), 5);
        assert!(plan(&[], 1, 1).is_empty());
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let now = Instant::now();
        let t = parse_token(
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":3600}"#,
            now,
        )
        .expect("token");
        assert_eq!(t.value, "abc");
        assert_eq!(t.refresh_at, Some(now + Duration::from_secs(3540)));
        let t = parse_token(br#"{"access_token":"abc","expires_in":"10"}"#, now).expect("token");
        assert_eq!(t.refresh_at, Some(now + Duration::from_secs(5)));
        let t = parse_token(br#"{"access_token":"abc"}"#, now).expect("token");
        assert_eq!(t.refresh_at, None);
        assert!(parse_token(br#"{"token_type":"Bearer"}"#, now).is_err());
        assert!(parse_token(b"<html>", now).is_err());
    }

    #[test]
    fn client_credentials_are_form_encoded() {
        assert_eq!(form_encode("outpost-1.a_b*"), "outpost-1.a_b*");
        assert_eq!(form_encode("a b:c/d+é"), "a+b%3Ac%2Fd%2B%C3%A9");
    }

    #[test]
    fn server_text_is_shortened() {
        assert_eq!(shorten(b"  line one\r\n\tline\0two "), "line one line two");
        let long = "x".repeat(1000);
        let s = shorten(long.as_bytes());
        assert_eq!(s.chars().count(), MESSAGE_CHARS);
        assert!(s.ends_with('…'));
    }

    fn config(url: &str, auth: Auth) -> StowConfig {
        StowConfig {
            url: url.into(),
            auth,
            ca_bundle: None,
            client_cert: None,
            client_key: None,
            proxy: None,
            max_request_bytes: 1 << 20,
            max_request_instances: 10,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn endpoints_tolerate_a_trailing_slash() {
        for url in [
            "https://cloud.example/dicom-web",
            "https://cloud.example/dicom-web/",
        ] {
            let c = StowClient::new(config(url, Auth::None)).expect("client");
            assert_eq!(
                c.inner.studies.as_str(),
                "https://cloud.example/dicom-web/studies"
            );
            assert_eq!(
                c.inner.probe.as_str(),
                "https://cloud.example/dicom-web/studies?limit=1"
            );
        }
        let c = StowClient::new(config("http://pacs:8042", Auth::None)).expect("client");
        assert_eq!(c.inner.studies.as_str(), "http://pacs:8042/studies");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let auths = [
            Auth::Basic {
                user: "alice".into(),
                password: "hunter2-secret".into(),
            },
            Auth::Bearer {
                token: "tok-secret".into(),
            },
            Auth::OAuth2 {
                token_url: "https://login.example/token".into(),
                client_id: "outpost".into(),
                client_secret: "cs-secret".into(),
                scope: Some("dicom".into()),
            },
        ];
        for auth in auths {
            let mut c = config("https://u:url-secret@cloud.example/dicom-web", auth);
            c.proxy = Some("http://p:proxy-secret@proxy.example:3128".into());
            let shown = format!("{c:?}");
            let client = format!("{:?}", StowClient::new(c).expect("client"));
            for text in [shown, client] {
                assert!(!text.contains("-secret"), "{text}");
                assert!(text.contains("redacted"), "{text}");
            }
        }
    }

    #[test]
    fn setup_errors_name_the_file_or_url_and_the_fix() {
        let err = |c: StowConfig| StowClient::new(c).expect_err("refused").to_string();
        let e = err(config("ftp://pacs/dicom-web", Auth::None));
        assert!(
            e.contains("ftp://pacs/dicom-web") && e.contains("http or https"),
            "{e}"
        );
        let e = err(config("pacs/dicom-web", Auth::None));
        assert!(e.contains("service root"), "{e}");

        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config("https://pacs", Auth::None);
        c.ca_bundle = Some(dir.path().join("absent.pem"));
        let e = err(c.clone());
        assert!(e.contains("absent.pem") && e.contains("ca_bundle"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        c.ca_bundle = Some(junk.clone());
        let e = err(c.clone());
        assert!(
            e.contains("junk.pem") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        c.ca_bundle = Some(bad);
        let e = err(c.clone());
        assert!(e.contains("bad.pem") && e.contains("certificate 1"), "{e}");

        c.ca_bundle = None;
        c.client_key = Some(junk.clone());
        let e = err(c.clone());
        assert!(e.contains("junk.pem") && e.contains("client_cert"), "{e}");
        c.client_cert = Some(junk.clone());
        let e = err(c.clone());
        assert!(
            e.contains("junk.pem") && e.contains("no certificate"),
            "{e}"
        );

        let e = err(config(
            "https://pacs",
            Auth::OAuth2 {
                token_url: "login.example/token".into(),
                client_id: "id".into(),
                client_secret: "s".into(),
                scope: None,
            },
        ));
        assert!(
            e.contains("token_url") && e.contains("login.example/token"),
            "{e}"
        );
        let e = err(config(
            "https://pacs",
            Auth::Bearer {
                token: "abc\ndef".into(),
            },
        ));
        assert!(
            e.contains("bearer token") && e.contains("line break"),
            "{e}"
        );
        let mut c = config("https://pacs", Auth::None);
        c.proxy = Some("socks9://proxy".into());
        let e = err(c);
        assert!(
            e.contains("socks9://proxy") && e.contains("http://host:port"),
            "{e}"
        );
    }

    #[test]
    fn the_client_is_shareable_across_tasks() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<StowClient>();
    }
}

#[cfg(test)]
mod secrets {
    use super::*;

    fn config(url: &str, auth: Auth) -> StowConfig {
        StowConfig {
            url: url.into(),
            auth,
            ca_bundle: None,
            client_cert: None,
            client_key: None,
            proxy: None,
            max_request_bytes: 1 << 20,
            max_request_instances: 10,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn an_unreachable_destination_is_described_without_its_credentials() {
        // What a destination's failure says ends up in the log, in `outpost queue` and in
        // dead-letter reasons. It quoted reqwest's error, which ends in " for url (<the whole
        // URL>)", and the configured URL with only its password masked: a user name, or a key
        // in the query (as signed URLs and function keys carry), was logged whenever the
        // destination or its OAuth2 token endpoint was down. Only the place is shown now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let destination =
            format!("http://alice:PASSWORD1@127.0.0.1:{port}/dicom-web?code=QUERYSECRET1");
        let token_url = format!("http://bob:PASSWORD2@127.0.0.1:{port}/token?key=QUERYSECRET2");
        let oauth2 = Auth::OAuth2 {
            token_url,
            client_id: "outpost".into(),
            client_secret: "CLIENTSECRET".into(),
            scope: None,
        };
        for auth in [Auth::None, oauth2] {
            let client = StowClient::new(config(&destination, auth)).expect("client");
            let why = client.probe().await.expect_err("nothing listens there");
            for secret in [
                "alice",
                "PASSWORD1",
                "QUERYSECRET1",
                "bob",
                "PASSWORD2",
                "QUERYSECRET2",
                "CLIENTSECRET",
            ] {
                assert!(!why.contains(secret), "{secret} in {why:?}");
            }
            assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
            assert!(why.to_lowercase().contains("connection refused"), "{why}");
        }
    }
}
