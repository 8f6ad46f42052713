//! The panel over real HTTPS on 127.0.0.1:0, its self-signed certificate added as the only
//! root, so these tests see what a browser sees: status codes, redirects and headers.

use std::net::IpAddr;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Panel {
    base: String,
    accounts: accounts::Accounts,
    audit: audit::Audit,
    client: reqwest::Client,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _dir: tempfile::TempDir,
}

async fn start() -> Panel {
    // No supervisor here: an empty answer is enough to see authentication at work.
    start_with(std::sync::Arc::new(|_| {
        Box::pin(async { Ok(api::Response::Queue(Vec::new())) })
    }))
    .await
}

async fn start_with(dispatch: web::Dispatch) -> Panel {
    let dir = tempfile::tempdir().unwrap();
    let cert = web::cert::ensure(None, dir.path(), IpAddr::from([127, 0, 0, 1])).unwrap();
    let pem = std::fs::read(web::cert::self_signed_paths(dir.path()).0).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    // No growing delay here, so the lockout test does not wait seconds for it.
    let options = accounts::Options {
        logins: accounts::LoginPolicy {
            slow_after: 100,
            ..accounts::LoginPolicy::default()
        },
        ..accounts::Options::default()
    };
    let accounts = accounts::Accounts::open_with(dir.path(), options).unwrap();
    let audit = audit::Audit::open(&dir.path().join("audit.jsonl")).unwrap();
    let routes = web::Panel {
        accounts: accounts.clone(),
        audit: audit.clone(),
        dispatch,
    };
    web::spawn(listener, cert, routes, shutdown.clone(), &tracker).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Panel {
        base: format!("https://127.0.0.1:{port}"),
        client,
        accounts,
        audit,
        shutdown,
        tracker,
        _dir: dir,
    }
}

impl Panel {
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("the panel stops on the shutdown token");
    }
}

fn assert_security_headers(r: &reqwest::Response) {
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    // Self-signed: no HSTS, or a browser could never get past its warning again.
    assert!(h.get("strict-transport-security").is_none());
}

#[tokio::test]
async fn an_anonymous_api_request_is_told_to_authenticate() {
    let p = start().await;
    let r = p
        .client
        .get(format!("{}/api/v1/status", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="outpost""#);
    assert_security_headers(&r);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"error":"authentication required"}"#
    );
    p.stop().await;
}

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

impl Panel {
    async fn with_admin(self) -> Panel {
        let token = self.accounts.setup_token().unwrap();
        self.accounts
            .setup_admin(&token, "admin", "correct horse battery", LOCAL)
            .await
            .unwrap();
        self
    }

    async fn login(&self, user: &str, password: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/api/v1/login", self.base))
            .body(format!(
                r#"{{"username":"{user}","password":"{password}"}}"#
            ))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_login_sets_a_strict_session_cookie_and_a_wrong_password_is_401() {
    let p = start().await.with_admin().await;
    let r = p.login("admin", "correct horse battery").await;
    assert_eq!(r.status(), 204);
    assert_security_headers(&r);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} in {cookie}");
    }
    // The cookie opens the read API.
    let session = cookie.split("; ").next().unwrap();
    let r = p
        .client
        .get(format!("{}/api/v1/status", p.base))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers(&r);
    let r = p.login("admin", "not the password").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"error":"wrong user name or password"}"#
    );
    p.stop().await;
}

#[tokio::test]
async fn a_bearer_token_alone_opens_the_read_api_and_a_bad_one_does_not() {
    let p = start().await.with_admin().await;
    let (token, _) = p
        .accounts
        .create_token(
            "admin",
            accounts::Scope::Read,
            &accounts::Actor::local("root"),
        )
        .await
        .unwrap();
    let get = |auth: String| {
        p.client
            .get(format!("{}/api/v1/queue", p.base))
            .header("authorization", auth)
            .send()
    };
    let r = get(format!("Bearer {}", token.secret)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"queue":[]}"#);
    let r = get("Bearer outpost_not_a_token".into()).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="outpost""#);
    p.stop().await;
}

#[tokio::test]
async fn repeated_failures_lock_the_login_out_with_retry_after() {
    let p = start().await.with_admin().await;
    let mut last = None;
    for _ in 0..6 {
        let r = p.login("admin", "not the password").await;
        last = Some(r);
        if last.as_ref().unwrap().status() == 429 {
            break;
        }
    }
    let r = last.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    // The right password too, while locked out.
    assert_eq!(
        p.login("admin", "correct horse battery").await.status(),
        429
    );
    p.stop().await;
}

#[tokio::test]
async fn a_login_from_another_site_is_refused() {
    let p = start().await.with_admin().await;
    let r = p
        .client
        .post(format!("{}/api/v1/login", p.base))
        .header("origin", "https://evil.example")
        .body(r#"{"username":"admin","password":"correct horse battery"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    p.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let p = start().await;
    let r = p
        .client
        .post(format!("{}/api/v1/login", p.base))
        .body(vec![b'x'; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_security_headers(&r);
    p.stop().await;
}

#[tokio::test]
async fn an_anonymous_page_request_is_sent_to_the_login_page_and_every_response_has_the_headers() {
    let p = start().await;
    let r = p.client.get(format!("{}/", p.base)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    assert_security_headers(&r);
    for path in ["/login", "/assets/app.css"] {
        let r = p
            .client
            .get(format!("{}{path}", p.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_security_headers(&r);
        let text = r.text().await.unwrap();
        assert!(!text.contains("<script"), "{path} carries no inline script");
    }
    p.stop().await;
}

#[tokio::test]
async fn the_supervisor_serves_the_panel_with_a_kept_self_signed_certificate() {
    let app = testkit::Appliance::start("").await;
    let data_dir = &app.config.storage.data_dir;
    let pem = std::fs::read(web::cert::self_signed_paths(data_dir).0)
        .expect("the supervisor made the self-signed certificate under the data directory");
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://{}/api/v1/status", app.config.web.listen))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_security_headers(&r);
    // Status shows the fingerprint the browser's warning shows.
    let api::Response::Status(status) = app.running().handle(api::Request::Status).await else {
        panic!("status answers with a Status");
    };
    let link = status
        .setup_link
        .expect("no administrator yet: a setup link");
    assert!(link.starts_with("/setup?token="), "{link}");
    let log = app.audit_lines().join("\n");
    assert!(
        !log.contains(&link["/setup?token=".len()..]),
        "the token is in no trail"
    );
    let panel = status.panel.expect("the panel runs");
    assert!(panel.self_signed);
    assert_eq!(
        panel.sha256,
        web::cert::load(
            &web::cert::self_signed_paths(data_dir).0,
            &web::cert::self_signed_paths(data_dir).1,
            true
        )
        .unwrap()
        .info
        .sha256
    );
    app.stop().await;
}

// The supervisor's status carries the one-time setup link for `outpost status` on the
// control socket, and the panel's status route answered with that same status: anyone
// holding an account or a read token could have read the link that makes its holder the
// administrator. The panel now drops it from every answer.
#[tokio::test]
async fn the_panel_never_hands_out_the_setup_link() {
    let app = testkit::Appliance::start("").await;
    let api::Response::Status(status) = app.running().handle(api::Request::Status).await else {
        panic!("status answers with a Status");
    };
    assert!(
        status.setup_link.is_some(),
        "no administrator: a link exists"
    );
    let real = serde_json::to_string(&api::Response::Status(status)).unwrap();
    app.stop().await;
    let p = start_with(std::sync::Arc::new(move |_| {
        let real = real.clone();
        Box::pin(async move { Ok(serde_json::from_str(&real).unwrap()) })
    }))
    .await
    .with_admin()
    .await;
    let r = p.login("admin", "correct horse battery").await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let r = p
        .client
        .get(format!("{}/api/v1/status", p.base))
        .header("cookie", cookie.split("; ").next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: api::Response = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let api::Response::Status(status) = answer else {
        panic!("the panel answers status with a Status");
    };
    assert!(status.setup_link.is_none(), "{:?}", status.setup_link);
    p.stop().await;
}

#[tokio::test]
async fn logout_needs_the_sessions_csrf_token_then_ends_the_session_and_clears_the_cookie() {
    let p = start().await.with_admin().await;
    let r = p.login("admin", "correct horse battery").await;
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split("; ").next().unwrap().to_string();
    let session = |cookie: String| {
        p.client
            .get(format!("{}/api/v1/session", p.base))
            .header("cookie", cookie)
            .send()
    };
    let r = session(cookie.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_security_headers(&r);
    #[derive(serde::Deserialize)]
    struct Who {
        username: String,
        role: String,
        csrf_token: String,
    }
    let who: Who = r.json().await.unwrap();
    assert_eq!(
        (who.username.as_str(), who.role.as_str()),
        ("admin", "admin")
    );
    assert!(who.csrf_token.len() >= 32, "{}", who.csrf_token);
    let logout = |csrf: Option<String>| {
        let mut b = p
            .client
            .post(format!("{}/api/v1/logout", p.base))
            .header("cookie", cookie.clone());
        if let Some(t) = csrf {
            b = b.header("x-csrf-token", t);
        }
        b.send()
    };
    // Without the token, or with a wrong one of the same length: refused, still logged in.
    for csrf in [None, Some("x".repeat(who.csrf_token.len()))] {
        let r = logout(csrf).await.unwrap();
        assert_eq!(r.status(), 403);
        assert_security_headers(&r);
        assert_eq!(session(cookie.clone()).await.unwrap().status(), 200);
    }
    let r = logout(Some(who.csrf_token.clone())).await.unwrap();
    assert_eq!(r.status(), 204);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with("outpost_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie opens nothing now.
    let r = session(cookie.clone()).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = p
        .client
        .get(format!("{}/api/v1/status", p.base))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The logout is in the trail, with who.
    p.audit.close();
    let trail = std::fs::read_to_string(p._dir.path().join("audit.jsonl")).unwrap();
    let line = trail
        .lines()
        .find(|l| l.contains("logged out"))
        .expect("the logout is audited");
    assert!(line.contains("\"admin\""), "{line}");
    p.stop().await;
}

#[tokio::test]
async fn an_anonymous_or_bearer_request_has_no_session_and_cannot_log_out() {
    let p = start().await.with_admin().await;
    let (token, _) = p
        .accounts
        .create_token(
            "admin",
            accounts::Scope::Read,
            &accounts::Actor::local("root"),
        )
        .await
        .unwrap();
    for auth in [None, Some(format!("Bearer {}", token.secret))] {
        for (method, path) in [("GET", "/api/v1/session"), ("POST", "/api/v1/logout")] {
            let mut b = p
                .client
                .request(method.parse().unwrap(), format!("{}{path}", p.base));
            if let Some(a) = &auth {
                b = b.header("authorization", a);
            }
            let r = b.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], r#"Bearer realm="outpost""#);
        }
    }
    p.stop().await;
}

/// A dispatcher that keeps every request it is given and answers as the real one would:
/// `central` is the only destination.
fn recording() -> (
    web::Dispatch,
    std::sync::Arc<std::sync::Mutex<Vec<api::Request>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    let dispatch: web::Dispatch = std::sync::Arc::new(move |r: api::Request| {
        kept.lock().unwrap().push(r.clone());
        Box::pin(async move {
            let d = match &r {
                api::Request::Pause { destination }
                | api::Request::Resume { destination }
                | api::Request::Retry { destination }
                | api::Request::Resubmit { destination, .. } => destination.clone(),
                _ => return Ok(api::Response::Queue(Vec::new())),
            };
            if d == "central" {
                Ok(api::Response::Done(format!("{d}: done")))
            } else {
                Err(api::ApiError::UnknownDestination {
                    name: d,
                    known: vec!["central".into()],
                })
            }
        })
    });
    (dispatch, seen)
}

impl Panel {
    /// Logs in and returns the session cookie and its CSRF token.
    async fn session(&self, user: &str, password: &str) -> (String, String) {
        let r = self.login(user, password).await;
        assert_eq!(r.status(), 204, "{user} logs in");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        let cookie = set.split("; ").next().unwrap().to_string();
        let r = self
            .client
            .get(format!("{}/api/v1/session", self.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        (cookie, v["csrf_token"].as_str().unwrap().to_string())
    }

    async fn add(&self, name: &str, role: accounts::Role) {
        self.accounts
            .add_user(
                name,
                role,
                "a long enough password",
                &accounts::Actor::local("root"),
            )
            .await
            .unwrap();
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base))
    }
}

#[tokio::test]
async fn a_queue_action_needs_a_technician_session_and_its_csrf_token() {
    let (dispatch, seen) = recording();
    let p = start_with(dispatch).await.with_admin().await;
    p.add("tech", accounts::Role::Technician).await;
    p.add("view", accounts::Role::Viewer).await;
    let (tech, tech_csrf) = p.session("tech", "a long enough password").await;
    let (view, view_csrf) = p.session("view", "a long enough password").await;
    let (token, _) = p
        .accounts
        .create_token(
            "admin",
            accounts::Scope::Read,
            &accounts::Actor::local("root"),
        )
        .await
        .unwrap();
    // Refused, and the dispatcher never hears of it: anonymous (401), a viewer (403), a
    // technician without the CSRF token or with another session's (403), an admin's API
    // token (403: tokens only read).
    let r = p.post("/api/v1/queue/central/pause").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = p
        .post("/api/v1/queue/central/pause")
        .header("cookie", &view)
        .header("x-csrf-token", &view_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_security_headers(&r);
    for csrf in [None, Some(view_csrf.clone())] {
        let mut b = p
            .post("/api/v1/queue/central/pause")
            .header("cookie", &tech);
        if let Some(c) = csrf {
            b = b.header("x-csrf-token", c);
        }
        let r = b.send().await.unwrap();
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.text().await.unwrap(),
            r#"{"error":"missing or invalid CSRF token"}"#
        );
    }
    let r = p
        .post("/api/v1/queue/central/pause")
        .header("authorization", format!("Bearer {}", token.secret))
        .header("cookie", &tech)
        .header("x-csrf-token", &tech_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a bearer request ignores the cookie");
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    // A technician with the token: done, and audited with who.
    let r = p
        .post("/api/v1/queue/central/pause")
        .header("cookie", &tech)
        .header("x-csrf-token", &tech_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"done":"central: done"}"#);
    let r = p
        .post("/api/v1/queue/central/resubmit")
        .header("cookie", &tech)
        .header("x-csrf-token", &tech_csrf)
        .body(r#"{"seqs": [3, 4]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            api::Request::Pause {
                destination: "central".into()
            },
            api::Request::Resubmit {
                destination: "central".into(),
                seqs: vec![3, 4]
            },
        ]
    );
    p.audit.close();
    let trail = std::fs::read_to_string(p._dir.path().join("audit.jsonl")).unwrap();
    let line = trail
        .lines()
        .find(|l| l.contains("panel: queue pause central"))
        .expect("the action is audited");
    assert!(line.contains("\"tech\""), "{line}");
    assert!(line.contains("technician"), "{line}");
    p.stop().await;
}

#[tokio::test]
async fn a_refused_action_answers_with_the_status_its_error_decides() {
    let (dispatch, _) = recording();
    let p = start_with(dispatch).await.with_admin().await;
    let (admin, csrf) = p.session("admin", "correct horse battery").await;
    let r = p
        .post("/api/v1/queue/nowhere/retry")
        .header("cookie", &admin)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("\"nowhere\\\" is not a configured destination"),
        "{text}"
    );
    let r = p
        .post("/api/v1/queue/central/resubmit")
        .header("cookie", &admin)
        .header("x-csrf-token", &csrf)
        .body("seqs=3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    p.stop().await;
}

fn form_post(p: &Panel, path: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body: String = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.bytes()
                    .map(|b| if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    })
                    .collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    p.post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

#[tokio::test]
async fn the_setup_link_shows_a_form_and_only_its_post_creates_the_administrator_once() {
    let p = start().await;
    let token = p.accounts.setup_token().expect("no administrator yet");
    let get = |t: String| p.client.get(format!("{}/setup?token={t}", p.base)).send();
    assert_eq!(get("wrong".into()).await.unwrap().status(), 404);
    // A link previewer's GET, twice: the form, and the token is still good.
    for _ in 0..2 {
        let r = get(token.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_security_headers(&r);
        let page = r.text().await.unwrap();
        assert!(page.contains(&format!("value=\"{token}\"")), "{page}");
        assert!(!page.contains("<script"));
    }
    assert_eq!(p.accounts.setup_token().as_deref(), Some(token.as_str()));
    let send = |user: &'static str, password: &'static str, confirm: &'static str| {
        form_post(
            &p,
            "/setup",
            &[
                ("token", &token),
                ("username", user),
                ("password", password),
                ("confirm", confirm),
            ],
        )
        .send()
    };
    let r = send("admin", "correct horse battery", "correct horse batterx")
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("The two passwords differ.")
    );
    let r = send("admin", "short", "short").await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("at least 12"));
    assert!(p.accounts.users().is_empty(), "refusals create nobody");
    let r = send("admin", "correct horse battery", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    assert_eq!(p.accounts.users().len(), 1);
    assert!(p.accounts.setup_token().is_none());
    // Used up: a second POST and the link itself are void.
    let r = send("second", "correct horse battery", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(get(token.clone()).await.unwrap().status(), 404);
    assert_eq!(p.accounts.users().len(), 1);
    // A cross-site form is refused before anything.
    let r = p
        .post("/setup")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    p.stop().await;
}

#[tokio::test]
async fn the_login_form_leads_to_the_dashboard_and_its_logout_button_needs_the_token() {
    // The dashboard rendered from the real supervisor's status.
    let app = testkit::Appliance::start("").await;
    let api::Response::Status(status) = app.running().handle(api::Request::Status).await else {
        panic!("status answers with a Status");
    };
    let real = serde_json::to_string(&api::Response::Status(status)).unwrap();
    app.stop().await;
    let p = start_with(std::sync::Arc::new(move |_| {
        let real = real.clone();
        Box::pin(async move { Ok(serde_json::from_str(&real).unwrap()) })
    }))
    .await
    .with_admin()
    .await;
    let r = form_post(
        &p,
        "/login",
        &[("username", "admin"), ("password", "not the password")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Wrong user name or password.")
    );
    let r = form_post(
        &p,
        "/login",
        &[("username", "admin"), ("password", "correct horse battery")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.split("; ").any(|f| f == flag), "{flag} in {set}");
    }
    let cookie = set.split("; ").next().unwrap().to_string();
    let dashboard = || {
        p.client
            .get(format!("{}/", p.base))
            .header("cookie", &cookie)
            .send()
    };
    let r = dashboard().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers(&r);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = r.text().await.unwrap();
    for part in [
        "Alerts",
        "Archive",
        "Forwarding",
        "Instances",
        "Logged in as admin",
    ] {
        assert!(page.contains(part), "{part} in {page}");
    }
    assert!(!page.contains("<script"));
    let csrf = page
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the logout form carries the CSRF token")
        .to_string();
    // Without the token the button logs nobody out.
    let r = form_post(&p, "/logout", &[("csrf_token", "nope")])
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(dashboard().await.unwrap().status(), 200);
    let r = form_post(&p, "/logout", &[("csrf_token", &csrf)])
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = dashboard().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    p.stop().await;
}
