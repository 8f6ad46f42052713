//! The alert webhook: the hardware policy's alerts, raised and cleared, posted as JSON to
//! one URL, in order, each retried with backoff (what an answer means is
//! `forward::classify`'s, what follows `store::settle`'s). The URL's path and query often
//! carry the receiver's secret (Slack, Teams, Google Chat), so only its origin is ever
//! logged, and reqwest's errors lose their URL (`without_url`) before they are written.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy::Alert;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::clock::now_ms;

/// Starts the sender when `[alerts] webhook` is configured; the policy loop pushes onto
/// the queue it returns.
pub(crate) fn start(
    c: &config::Config,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Option<Arc<Webhook>> {
    c.alerts.webhook.clone().map(|url| {
        let queue = Arc::new(Webhook::default());
        let appliance = c.dicom.ae_title.as_str().to_string();
        tasks.spawn(send_webhooks(
            url,
            c.alerts.webhook_timeout,
            appliance,
            queue.clone(),
            stop,
        ));
        queue
    })
}

/// At most this many alerts wait for the webhook; beyond it the oldest are dropped, since
/// the log and the audit trail keep every alert anyway and the newest say the most.
const WEBHOOK_QUEUE: usize = 256;
/// Each alert is tried this many times (backoff 1 s doubling, about 8.5 minutes in all), then
/// given up, so one dead receiver does not hold the alerts behind it for ever.
const WEBHOOK_ATTEMPTS: u32 = 10;
const WEBHOOK_BACKOFF: store::settle::Backoff = store::settle::Backoff {
    initial_ms: 1_000,
    multiplier_milli: 2_000,
    max_ms: 256_000,
    max_attempts: Some(WEBHOOK_ATTEMPTS),
};
/// On the way out (a power-off), what is still queued gets this long in all.
const WEBHOOK_LAST_CALL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Notice {
    event: &'static str,
    alert: Alert,
}

/// The alerts waiting for the webhook, oldest first.
#[derive(Default)]
pub(crate) struct Webhook {
    queue: Mutex<VecDeque<Notice>>,
    added: Notify,
}

impl Webhook {
    fn push(&self, notice: Notice) {
        let mut q = self.queue.lock().expect("webhook queue lock");
        if q.len() >= WEBHOOK_QUEUE
            && let Some(dropped) = q.pop_front()
        {
            warn!(alert = %dropped.alert.key, "the webhook queue is full; the oldest alert reaches the log and the audit trail only");
        }
        q.push_back(notice);
        drop(q);
        self.added.notify_one();
    }

    fn pop(&self) -> Option<Notice> {
        self.queue.lock().expect("webhook queue lock").pop_front()
    }

    fn put_back(&self, notice: Notice) {
        self.queue
            .lock()
            .expect("webhook queue lock")
            .push_front(notice);
    }
}

pub(crate) fn post(webhook: Option<&Webhook>, event: &'static str, alert: &Alert) {
    if let Some(q) = webhook {
        q.push(Notice {
            event,
            alert: alert.clone(),
        });
    }
}

/// What the webhook receives for one alert: one JSON object, the same fields for every
/// receiver.
#[derive(serde::Serialize)]
struct Body<'a> {
    /// The appliance's AE title, so one receiver can serve many boxes.
    appliance: &'a str,
    /// `raised` or `cleared`.
    event: &'a str,
    key: &'a str,
    severity: policy::Severity,
    message: &'a str,
    since: u64,
}

async fn post_one(
    client: &reqwest::Client,
    url: &str,
    appliance: &str,
    notice: &Notice,
    attempt: u32,
) -> store::settle::Verdict {
    let body = Body {
        appliance,
        event: notice.event,
        key: &notice.alert.key,
        severity: notice.alert.severity,
        message: &notice.alert.message,
        since: notice.alert.since,
    };
    let key = &notice.alert.key;
    // Slack, Teams and Google Chat carry the webhook's secret in its path or query: only the
    // origin is ever logged.
    let webhook = origin(url);
    // What the answer means is `forward::classify`'s to say, as for every delivery; what
    // follows from it is `store::settle`'s (see `send_webhooks`).
    let verdict = match client.post(url).json(&body).send().await {
        Ok(r) => {
            let status = r.status();
            forward::classify::webhook(Some(status.as_u16()), status.as_str(), None)
        }
        Err(e) => forward::classify::webhook(None, &cause(e), None),
    };
    match &verdict {
        store::settle::Verdict::Delivered { .. } => {}
        store::settle::Verdict::DeadLetter { reason } => {
            warn!(%webhook, alert = %key, "the alert webhook refused the alert; not retrying it (check the webhook URL and its authorisation): {reason}")
        }
        other => {
            warn!(%webhook, alert = %key, attempt, "the alert webhook failed: {}", other.reason())
        }
    }
    verdict
}

/// `scheme://host[:port]` of a URL: what may be logged of a webhook.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.host_str().is_some() => u.origin().ascii_serialization(),
        _ => "the configured webhook".into(),
    }
}

/// A reqwest error and its sources without the URL reqwest appends to its message (which
/// would carry a webhook's secret).
fn cause(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut out = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Posts alerts in order, retrying each with backoff until the receiver takes it (2xx),
/// refuses it for good, or [`WEBHOOK_ATTEMPTS`] are spent. On stop, what is queued gets one
/// more try within [`WEBHOOK_LAST_CALL`].
async fn send_webhooks(
    url: String,
    timeout: Duration,
    appliance: String,
    queue: Arc<Webhook>,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            error!(error = %cause(e), "cannot set up the alert webhook client; alerts go to the log and the audit trail only");
            return;
        }
    };
    'alerts: loop {
        let notice = loop {
            if let Some(n) = queue.pop() {
                break n;
            }
            tokio::select! {
                _ = stop.cancelled() => break 'alerts,
                _ = queue.added.notified() => {}
            }
        };
        let mut attempts = 0;
        loop {
            let verdict = post_one(&client, &url, &appliance, &notice, attempts + 1).await;
            let wait = match store::settle::settle(
                verdict,
                attempts,
                &WEBHOOK_BACKOFF,
                now_ms(),
                true,
            ) {
                store::settle::Decision::Ack { .. } => continue 'alerts,
                store::settle::Decision::Dead { reason } => {
                    warn!(alert = %notice.alert.key, "giving up on posting this alert ({reason}); it is in the log and the audit trail");
                    continue 'alerts;
                }
                store::settle::Decision::Retry {
                    not_before_ms,
                    attempts: made,
                    ..
                } => {
                    attempts = made;
                    Duration::from_millis(not_before_ms.saturating_sub(now_ms()))
                }
                // A webhook's verdicts are never "unreachable" nor about a stored file; were
                // that to change, the alert is not held for ever.
                store::settle::Decision::Leave { .. } | store::settle::Decision::Drop => {
                    continue 'alerts;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    queue.put_back(notice);
                    break 'alerts;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    let last_call = async {
        while let Some(n) = queue.pop() {
            post_one(&client, &url, &appliance, &n, 0).await;
        }
    };
    if tokio::time::timeout(WEBHOOK_LAST_CALL, last_call)
        .await
        .is_err()
    {
        warn!("alerts still queued for the webhook at the stop were not all posted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::Severity;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Everything the tracing subscriber writes, for grepping.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// An HTTP server on 127.0.0.1 that reads each request whole and answers 500.
    async fn failing_server() -> u16 {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = server.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        port
    }

    #[test]
    fn a_failing_webhook_never_logs_its_secret_token() {
        // Slack, Teams and Google Chat put the webhook's secret in the URL's path or query.
        // A failed post logged reqwest's error, whose text ends in " for url (<the full
        // URL>)", so every outage of the receiver wrote the token to the journal, which sites
        // ship to log aggregation where anyone with read access could post as the appliance.
        // The log must still say which receiver failed (scheme, host, port) and why.
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let answers_500 = runtime.block_on(async {
            let answers_500 = failing_server().await;
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let notice = Notice {
                event: "raised",
                alert: Alert {
                    key: "raid.md0".into(),
                    severity: Severity::Critical,
                    message: "md0 has failed".into(),
                    since: 1,
                },
            };
            for port in [answers_500, refused] {
                let url =
                    format!("http://127.0.0.1:{port}/services/T000/B000/SECRETTOKEN?token=SECRET2");
                let posted = post_one(&client, &url, "outpost-test", &notice, 1).await;
                assert!(
                    matches!(posted, store::settle::Verdict::Retry { .. }),
                    "port {port}: {posted:?}"
                );
            }
            answers_500
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        for secret in ["SECRETTOKEN", "SECRET2", "/services/T000"] {
            assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
        }
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.iter().any(
                |l| l.contains(&format!("http://127.0.0.1:{answers_500}")) && l.contains("500")
            ),
            "the log does not say that 127.0.0.1:{answers_500} answered 500:\n{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("http://127.0.0.1:{refused}"))
                    && l.to_ascii_lowercase().contains("connection refused")),
            "the log does not say that 127.0.0.1:{refused} refused the connection:\n{text}"
        );
    }
}
