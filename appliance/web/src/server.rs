//! The HTTPS listener: TLS on an already-bound socket (so tests bind 127.0.0.1:0), HTTP/1.1 on
//! each connection, the security headers on every response, and a stop on the shutdown
//! token with every connection tracked.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cert::WebCert;
use crate::pages;

/// How long a client may take to finish its TLS handshake or send a request's headers; a
/// connection that dawdles holds a task and a socket.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// No script or style from anywhere but the panel itself, and no inline script, so an
/// injected value cannot run; no framing (clickjacking).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the panel's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the panel's routes call: the accounts (logins) and the trail their events go to.
#[derive(Clone)]
pub struct Panel {
    pub accounts: accounts::Accounts,
    pub audit: audit::Audit,
    /// The supervisor's one dispatcher (`Running::handle`), the same the control socket uses.
    pub dispatch: Dispatch,
}

/// Answers one API request; the panel reaches the appliance only through this. A refusal
/// comes back typed, so its HTTP status is the one [`api::ApiError::answer`] decides.
pub type Dispatch = Arc<
    dyn Fn(
            api::Request,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<api::Response, api::ApiError>> + Send>>
        + Send
        + Sync,
>;

/// Serves the panel on `listener` until `shutdown`; connections run on `tracker`.
pub fn spawn(
    listener: TcpListener,
    cert: WebCert,
    panel: Panel,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), ServeError> {
    // HSTS pins browsers to HTTPS for this host; with a certificate they warn about, that
    // would leave no way past the warning, so only an operator certificate gets it.
    let hsts = !cert.info.self_signed;
    // The process-wide provider the DICOM listener installs too; whoever is first wins.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let connections = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like pass; a tight loop would not help them pass.
                        tracing::warn!(error = %e, "panel accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            let panel = panel.clone();
            connections.spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "panel TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let panel = panel.clone();
                    async move { Ok::<_, Infallible>(respond(req, &panel, peer.ip(), hsts).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(tls), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "panel connection ended");
                        }
                    }
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
    });
    Ok(())
}

/// The largest request body the panel takes: a login or an action is a few hundred bytes,
/// and nothing here uploads files.
pub const MAX_BODY: u64 = 64 * 1024;

async fn respond(
    req: Request<Incoming>,
    panel: &Panel,
    from: std::net::IpAddr,
    hsts: bool,
) -> Response<Full<Bytes>> {
    // Refused before routing, so an anonymous client cannot make anyone read a large body.
    // (Bodies are read through a limit as well once routes read them.)
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut res = if declared.is_some_and(|n| n > MAX_BODY) {
        json(
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"error":"the request body is larger than 64 KiB"}"#,
        )
    } else if req.method() == Method::POST && req.uri().path() == "/api/v1/login" {
        login(req, panel, from).await
    } else if req.method() == Method::GET && req.uri().path() == "/api/v1/session" {
        session(req.headers(), &panel.accounts)
    } else if req.method() == Method::POST && req.uri().path() == "/api/v1/logout" {
        logout(req.headers(), panel, from)
    } else if req.method() == Method::POST && req.uri().path() == "/login" {
        login_form(req, panel, from).await
    } else if req.method() == Method::POST && req.uri().path() == "/logout" {
        logout_form(req, panel, from).await
    } else if req.uri().path() == "/setup" && matches!(*req.method(), Method::GET | Method::POST) {
        setup(req, panel, from).await
    } else if req.method() == Method::GET
        && req.uri().path() == "/"
        && let Some((_, session)) = cookie_session(req.headers(), &panel.accounts)
    {
        dashboard(panel, &session).await
    } else if let (&Method::POST, Some((destination, action))) =
        (req.method(), queue_action(req.uri().path()))
    {
        act(req, panel, from, destination, action).await
    } else if let (&Method::GET, Some(request)) = (req.method(), read_request(req.uri().path()))
        && authenticated(req.headers(), &panel.accounts)
    {
        let mut answer = (panel.dispatch)(request).await;
        // The setup link makes its holder the administrator; only the local control socket
        // (root or the service's user) hands it out, never a remote reader of the panel.
        if let Ok(api::Response::Status(s)) = &mut answer {
            s.setup_link = None;
        }
        let (status, text) = answered(&answer);
        let mut res = Response::new(Full::new(Bytes::from(text)));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    } else {
        route(req.method(), req.uri().path())
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    res
}

/// The rest of the API is not served yet (401), and every page but
/// the login page and its stylesheet sends the browser to log in.
fn route(method: &Method, path: &str) -> Response<Full<Bytes>> {
    if path.starts_with("/api/") {
        return unauthenticated();
    }
    match (method, path) {
        (&Method::GET, "/assets/app.css") => body(StatusCode::OK, "text/css", APP_CSS),
        (&Method::GET, "/login") => html(StatusCode::OK, pages::login(None)),
        (&Method::GET, _) => {
            body(StatusCode::SEE_OTHER, "text/plain", "").with(header::LOCATION, "/login")
        }
        _ => body(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        ),
    }
}

#[derive(serde::Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// `POST /api/v1/login`: 204 and the session cookie, 401 for wrong credentials, 429 with
/// Retry-After while locked out. Every attempt is audited.
async fn login(
    req: Request<Incoming>,
    panel: &Panel,
    from: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    if !same_origin(req.headers()) {
        return json(
            StatusCode::FORBIDDEN,
            r#"{"error":"the request comes from another site"}"#,
        );
    }
    use http_body_util::BodyExt;
    let bytes = match http_body_util::Limited::new(req.into_body(), MAX_BODY as usize)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"error":"the request body is larger than 64 KiB"}"#,
            );
        }
    };
    let Ok(c) = serde_json::from_slice::<Credentials>(&bytes) else {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"expected JSON {\"username\": ..., \"password\": ...}"}"#,
        );
    };
    let attempt = panel.accounts.login(&c.username, &c.password, from).await;
    // The same wait for success and failure, so its length tells nothing.
    tokio::time::sleep(attempt.delay).await;
    panel.audit.record(attempt.event);
    match attempt.result {
        Ok(l) => {
            let mut res = body(StatusCode::NO_CONTENT, "text/plain", "");
            let cookie = format!(
                "outpost_session={}; Secure; HttpOnly; SameSite=Strict; Path=/",
                l.session
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(accounts::AccountError::LockedOut { retry_after, .. }) => {
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins; try again later",
            );
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
            res
        }
        // Wrong name, wrong password and a disabled account look alike from outside; the
        // trail tells them apart.
        Err(
            accounts::AccountError::BadCredentials { .. }
            | accounts::AccountError::Disabled(_)
            | accounts::AccountError::UnknownUser(_),
        ) => error(StatusCode::UNAUTHORIZED, "wrong user name or password"),
        Err(e) => {
            tracing::error!(error = %e, "panel login failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the login could not be checked",
            )
        }
    }
}

/// An `Origin` header, when sent, must name this host over HTTPS (a browser sends it on
/// every cross-site POST, so this refuses login CSRF).
fn same_origin(h: &http::HeaderMap) -> bool {
    let Some(origin) = h.get(header::ORIGIN) else {
        return true;
    };
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(o), Some(host)) => o == format!("https://{host}"),
        _ => false,
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// The read-only API requests, which any role may make.
fn read_request(path: &str) -> Option<api::Request> {
    match path {
        "/api/v1/status" => Some(api::Request::Status),
        "/api/v1/queue" => Some(api::Request::Queue),
        _ => None,
    }
}

/// A bearer token alone when one is sent (cookies are then ignored), else the session
/// cookie. Reads only: state-changing routes will also check the role and the CSRF token.
fn authenticated(h: &http::HeaderMap, accounts: &accounts::Accounts) -> bool {
    if let Some(auth) = h.get(header::AUTHORIZATION) {
        return auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| accounts.verify_token(t.trim()).is_ok());
    }
    session_ids(h).any(|s| accounts.authenticate(s).is_ok())
}

/// The status and JSON body of a dispatcher's answer: 200 and the response, or the
/// refusal's own status and `{"error": message}`.
fn answered(answer: &Result<api::Response, api::ApiError>) -> (StatusCode, Vec<u8>) {
    match answer {
        Ok(r) => (StatusCode::OK, serde_json::to_vec(r).unwrap_or_default()),
        Err(e) => {
            let a = e.answer();
            (
                StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                serde_json::to_vec(&ErrorBody { error: &a.message }).unwrap_or_default(),
            )
        }
    }
}

/// What an operator can do to a destination's queue from the panel.
#[derive(Clone, Copy, Debug)]
enum QueueAction {
    Retry,
    Pause,
    Resume,
    Resubmit,
}

impl QueueAction {
    fn name(self) -> &'static str {
        match self {
            QueueAction::Retry => "retry",
            QueueAction::Pause => "pause",
            QueueAction::Resume => "resume",
            QueueAction::Resubmit => "resubmit",
        }
    }
}

/// `/api/v1/queue/{destination}/{action}`. Destination names are the configuration's, so a
/// name with a `/` or a percent sign is simply not one of them (the dispatcher says so).
fn queue_action(path: &str) -> Option<(String, QueueAction)> {
    let rest = path.strip_prefix("/api/v1/queue/")?;
    let (destination, action) = rest.rsplit_once('/')?;
    if destination.is_empty() || destination.contains('/') {
        return None;
    }
    let action = match action {
        "retry" => QueueAction::Retry,
        "pause" => QueueAction::Pause,
        "resume" => QueueAction::Resume,
        "resubmit" => QueueAction::Resubmit,
        _ => return None,
    };
    Some((destination.to_string(), action))
}

/// `resubmit`'s optional body: the dead letters' numbers (all of them when absent).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResubmitBody {
    #[serde(default)]
    seqs: Vec<u64>,
}

/// `POST /api/v1/queue/{destination}/{action}`: a technician's action on a queue. A session
/// needs the technician role and its CSRF token; API tokens only read, so a bearer request
/// is refused whatever its user's role. Each action is audited with who and from where.
async fn act(
    req: Request<Incoming>,
    panel: &Panel,
    from: std::net::IpAddr,
    destination: String,
    action: QueueAction,
) -> Response<Full<Bytes>> {
    let h = req.headers();
    if let Some(auth) = h.get(header::AUTHORIZATION) {
        let valid = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| panel.accounts.verify_token(t.trim()).is_ok());
        return if valid {
            error(
                StatusCode::FORBIDDEN,
                "API tokens may only read; log in as a technician to change the queue",
            )
        } else {
            unauthenticated()
        };
    }
    let Some((_, session)) = cookie_session(h, &panel.accounts) else {
        return unauthenticated();
    };
    if !session.role.allows(accounts::Role::Technician) {
        return error(
            StatusCode::FORBIDDEN,
            "changing the queue needs the technician or admin role",
        );
    }
    if !csrf_ok(h, &session) {
        return error(StatusCode::FORBIDDEN, "missing or invalid CSRF token");
    }
    let request = match action {
        QueueAction::Retry => api::Request::Retry {
            destination: destination.clone(),
        },
        QueueAction::Pause => api::Request::Pause {
            destination: destination.clone(),
        },
        QueueAction::Resume => api::Request::Resume {
            destination: destination.clone(),
        },
        QueueAction::Resubmit => {
            use http_body_util::BodyExt;
            let Ok(bytes) = http_body_util::Limited::new(req.into_body(), MAX_BODY as usize)
                .collect()
                .await
                .map(|b| b.to_bytes())
            else {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than 64 KiB",
                );
            };
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                ResubmitBody::default()
            } else {
                match serde_json::from_slice::<ResubmitBody>(&bytes) {
                    Ok(b) => b,
                    Err(_) => {
                        return error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "expected no body, or JSON {\"seqs\": [dead letter numbers]}",
                        );
                    }
                }
            };
            api::Request::Resubmit {
                destination: destination.clone(),
                seqs: body.seqs,
            }
        }
    };
    let answer = (panel.dispatch)(request).await;
    let (outcome, what) = match &answer {
        Ok(api::Response::Done(done)) => (audit::Outcome::Success, done.clone()),
        Ok(_) => (audit::Outcome::Success, String::new()),
        Err(e) => (audit::Outcome::MinorFailure, e.to_string()),
    };
    panel.audit.record(
        audit::Event::new(audit::EventKind::OperatorAction, outcome)
            .actor(&session.user, Some(session.role.as_str()))
            .peer(from)
            .detail(format!(
                "panel: queue {} {destination}: {what}",
                action.name()
            )),
    );
    let (status, text) = answered(&answer);
    let mut res = Response::new(Full::new(Bytes::from(text)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// An HTML page with its status.
fn html(status: StatusCode, page: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(page)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages show the state of the box and CSRF tokens: never from a cache.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn see_other(to: &'static str) -> Response<Full<Bytes>> {
    body(StatusCode::SEE_OTHER, "text/plain", "").with(header::LOCATION, to)
}

/// A form's fields (`application/x-www-form-urlencoded`), read through the body limit.
async fn form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_BODY as usize)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(form_urlencoded::parse(&bytes).into_owned().collect())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn session_cookie(session: &str) -> String {
    format!("outpost_session={session}; Secure; HttpOnly; SameSite=Strict; Path=/")
}

/// `POST /login` from the login page: the same checks as the API's login, answered with a
/// redirect to the dashboard or the form again with why.
async fn login_form(
    req: Request<Incoming>,
    panel: &Panel,
    from: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    if !same_origin(req.headers()) {
        return html(
            StatusCode::FORBIDDEN,
            pages::login(Some("This form was sent from another site.")),
        );
    }
    let Some(fields) = form(req).await else {
        return html(
            StatusCode::PAYLOAD_TOO_LARGE,
            pages::login(Some("The form is too large.")),
        );
    };
    let attempt = panel
        .accounts
        .login(field(&fields, "username"), field(&fields, "password"), from)
        .await;
    tokio::time::sleep(attempt.delay).await;
    panel.audit.record(attempt.event);
    match attempt.result {
        Ok(l) => {
            let mut res = see_other("/");
            if let Ok(v) = HeaderValue::from_str(&session_cookie(&l.session)) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(accounts::AccountError::LockedOut { retry_after, .. }) => {
            let mut res = html(
                StatusCode::TOO_MANY_REQUESTS,
                pages::login(Some(&format!(
                    "Too many failed logins. Try again in {}.",
                    api::show::age(retry_after.as_secs().max(1))
                ))),
            );
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
            res
        }
        Err(
            accounts::AccountError::BadCredentials { .. }
            | accounts::AccountError::Disabled(_)
            | accounts::AccountError::UnknownUser(_),
        ) => html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Wrong user name or password.")),
        ),
        Err(e) => {
            tracing::error!(error = %e, "panel login failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::login(Some("The login could not be checked; see the log.")),
            )
        }
    }
}

/// `POST /logout` from the dashboard's button: the CSRF token comes in the form.
async fn logout_form(
    req: Request<Incoming>,
    panel: &Panel,
    from: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    let Some((id, session)) = cookie_session(req.headers(), &panel.accounts) else {
        return see_other("/login");
    };
    let fields = form(req).await.unwrap_or_default();
    if !same_token(field(&fields, "csrf_token"), session.csrf()) {
        return html(
            StatusCode::FORBIDDEN,
            pages::login(Some(
                "The logout form had no valid token; you are still logged in.",
            )),
        );
    }
    if let Ok(event) = panel.accounts.logout(&id, from) {
        panel.audit.record(event);
    }
    see_other("/login").with(
        header::SET_COOKIE,
        "outpost_session=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
    )
}

/// `GET /setup?token=...` shows the form while the link is valid; `POST /setup` creates the
/// first administrator and only then uses the token up.
async fn setup(
    req: Request<Incoming>,
    panel: &Panel,
    from: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    let valid = |token: &str| {
        panel
            .accounts
            .setup_token()
            .is_some_and(|t| same_token(token, &t))
    };
    if req.method() == Method::GET {
        let token = req
            .uri()
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        return if valid(&token) {
            html(StatusCode::OK, pages::setup(&token, None))
        } else {
            html(StatusCode::NOT_FOUND, pages::setup_void())
        };
    }
    if !same_origin(req.headers()) {
        return html(StatusCode::FORBIDDEN, pages::setup_void());
    }
    let Some(fields) = form(req).await else {
        return html(StatusCode::PAYLOAD_TOO_LARGE, pages::setup_void());
    };
    let token = field(&fields, "token");
    if !valid(token) {
        return html(StatusCode::NOT_FOUND, pages::setup_void());
    }
    if field(&fields, "password") != field(&fields, "confirm") {
        return html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::setup(token, Some("The two passwords differ.")),
        );
    }
    match panel
        .accounts
        .setup_admin(
            token,
            field(&fields, "username"),
            field(&fields, "password"),
            from,
        )
        .await
    {
        Ok((_, event)) => {
            panel.audit.record(event);
            see_other("/login")
        }
        Err(accounts::AccountError::SetupTokenInvalid | accounts::AccountError::SetupDone) => {
            html(StatusCode::NOT_FOUND, pages::setup_void())
        }
        Err(
            e @ (accounts::AccountError::PasswordTooShort { .. }
            | accounts::AccountError::InvalidUserName { .. }),
        ) => html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::setup(token, Some(&e.to_string())),
        ),
        Err(e) => {
            tracing::error!(error = %e, "creating the first administrator failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::setup(
                    token,
                    Some("The administrator could not be created; see the log."),
                ),
            )
        }
    }
}

/// `GET /` for a session: the dashboard, rendered from the dispatcher's status.
async fn dashboard(panel: &Panel, session: &accounts::Session) -> Response<Full<Bytes>> {
    match (panel.dispatch)(api::Request::Status).await {
        Ok(api::Response::Status(s)) => html(
            StatusCode::OK,
            pages::dashboard(&s, &session.user, session.role.as_str(), session.csrf()),
        ),
        Ok(_) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            pages::login(Some("The service answered status with something else.")),
        ),
        Err(e) => {
            let a = e.answer();
            html(
                StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                pages::login(Some(&a.message)),
            )
        }
    }
}

/// The session ids the request's cookies carry (a browser may send more than one cookie of
/// a name; any valid one counts).
fn session_ids(h: &http::HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("outpost_session="))
}

/// The valid session of a cookie-authenticated request, with its id.
fn cookie_session(
    h: &http::HeaderMap,
    accounts: &accounts::Accounts,
) -> Option<(String, accounts::Session)> {
    session_ids(h).find_map(|id| Some((id.to_string(), accounts.authenticate(id).ok()?)))
}

fn unauthenticated() -> Response<Full<Bytes>> {
    json(
        StatusCode::UNAUTHORIZED,
        r#"{"error":"authentication required"}"#,
    )
    .with(header::WWW_AUTHENTICATE, r#"Bearer realm="outpost""#)
}

/// Whether a cookie-authenticated request carries its session's CSRF token in
/// `X-CSRF-Token`. The comparison takes the same time wherever the first difference is, so
/// its timing does not reveal the token byte by byte.
fn csrf_ok(h: &http::HeaderMap, session: &accounts::Session) -> bool {
    let Some(sent) = h.get("x-csrf-token").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    same_token(sent, session.csrf())
}

/// Compares two secrets in the same time wherever they first differ.
fn same_token(sent: &str, want: &str) -> bool {
    let (sent, want) = (sent.as_bytes(), want.as_bytes());
    sent.len() == want.len() && sent.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

#[derive(serde::Serialize)]
struct SessionBody<'a> {
    username: &'a str,
    role: &'a str,
    /// What every state-changing request of this session sends in `X-CSRF-Token`.
    csrf_token: &'a str,
}

/// `GET /api/v1/session`: who the session cookie belongs to and its CSRF token, so a page's
/// script can make state-changing requests. Only a session has one; a bearer token is
/// refused here like an anonymous request.
fn session(h: &http::HeaderMap, accounts: &accounts::Accounts) -> Response<Full<Bytes>> {
    let Some((_, s)) = cookie_session(h, accounts) else {
        return unauthenticated();
    };
    let text = serde_json::to_vec(&SessionBody {
        username: &s.user,
        role: s.role.as_str(),
        csrf_token: s.csrf(),
    })
    .unwrap_or_default();
    let mut res = Response::new(Full::new(Bytes::from(text)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The CSRF token must not sit in a shared cache.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `POST /api/v1/logout`: ends the cookie's session (it needs the session's CSRF token, as
/// every state-changing cookie request does), clears the cookie and audits it.
fn logout(h: &http::HeaderMap, panel: &Panel, from: std::net::IpAddr) -> Response<Full<Bytes>> {
    let Some((id, s)) = cookie_session(h, &panel.accounts) else {
        return unauthenticated();
    };
    if !csrf_ok(h, &s) {
        return error(StatusCode::FORBIDDEN, "missing or invalid CSRF token");
    }
    match panel.accounts.logout(&id, from) {
        Ok(event) => panel.audit.record(event),
        // Ended meanwhile (expired, or another logout): the outcome is the same.
        Err(e) => tracing::debug!(error = %e, "panel logout of an ended session"),
    }
    body(StatusCode::NO_CONTENT, "text/plain", "").with(
        header::SET_COOKIE,
        "outpost_session=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
    )
}

fn error(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let text = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_default();
    let mut res = Response::new(Full::new(Bytes::from(text)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

const APP_CSS: &str = include_str!("../assets/app.css");

fn json(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    body(status, "application/json", text)
}

fn body(status: StatusCode, kind: &'static str, text: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    res
}

trait With {
    fn with(self, name: header::HeaderName, value: &'static str) -> Self;
}

impl With for Response<Full<Bytes>> {
    fn with(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers_mut()
            .insert(name, HeaderValue::from_static(value));
        self
    }
}
