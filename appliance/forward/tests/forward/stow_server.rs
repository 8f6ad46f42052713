//! A small HTTP/1.1 server on 127.0.0.1:0 for the STOW-RS tests: it keeps connections alive,
//! records every request whole, and answers what the test's handler says. Hand-rolled so the
//! tests see exactly the bytes the client sent (framing, headers, Content-Length).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as on the request line.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which accepted connection carried it (0 for the first).
    pub connection: usize,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The multipart boundary of the Content-Type, which must be
    /// `multipart/related; type="application/dicom"; boundary=...`.
    pub fn boundary(&self) -> String {
        let ct = self.header("content-type").expect("a Content-Type");
        let rest = ct
            .strip_prefix("multipart/related; type=\"application/dicom\"; boundary=")
            .unwrap_or_else(|| panic!("unexpected Content-Type {ct:?}"));
        rest.to_string()
    }

    /// The parts' contents, checking the framing strictly against RFC 2046 section 5.1.1:
    /// dash-boundary CRLF, headers, CRLF CRLF, content, then CRLF before each next delimiter,
    /// and the close-delimiter followed by CRLF only. Each part must be application/dicom.
    pub fn parts(&self) -> Vec<Vec<u8>> {
        let boundary = self.boundary();
        let dash = format!("--{boundary}");
        let delimiter = format!("\r\n--{boundary}");
        let body = &self.body;
        assert!(
            body.starts_with(dash.as_bytes()),
            "body starts with --boundary"
        );
        let mut rest = &body[dash.len()..];
        let mut parts = Vec::new();
        loop {
            if let Some(after) = rest.strip_prefix(b"--") {
                assert_eq!(after, b"\r\n", "only CRLF after the close-delimiter");
                return parts;
            }
            rest = rest.strip_prefix(b"\r\n").expect("CRLF after a delimiter");
            let end = find(rest, delimiter.as_bytes()).expect("another delimiter");
            let part = &rest[..end];
            let head_end = find(part, b"\r\n\r\n").expect("part headers end");
            let head = std::str::from_utf8(&part[..head_end]).expect("ASCII part headers");
            assert_eq!(head, "Content-Type: application/dicom");
            parts.push(part[head_end + 4..].to_vec());
            rest = &rest[end + delimiter.len()..];
        }
    }
}

/// What to answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn text(status: u16, text: &str) -> Reply {
        Reply::new(status)
            .header("Content-Type", "text/plain")
            .body(text.as_bytes().to_vec())
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply::new(status)
            .header("Content-Type", "application/dicom+json")
            .body(serde_json::to_vec(value).expect("JSON"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Reply {
        self.body = body;
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    scheme: &'static str,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    handshake_failures: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Server {
    /// A plain HTTP server.
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        Server::start_with(Arc::new(handler), None).await
    }

    /// An HTTPS server with this TLS configuration.
    pub async fn start_tls(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
        tls: Arc<rustls::ServerConfig>,
    ) -> Server {
        Server::start_with(Arc::new(handler), Some(TlsAcceptor::from(tls))).await
    }

    async fn start_with(handler: Handler, tls: Option<TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn({
            let requests = requests.clone();
            let connections = connections.clone();
            let handshake_failures = handshake_failures.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let n = connections.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    let requests = requests.clone();
                    let tls = tls.clone();
                    let handshake_failures = handshake_failures.clone();
                    // A client closing or breaking the connection ends it; the test looks at
                    // what was recorded.
                    tokio::spawn(async move {
                        match tls {
                            None => {
                                let _ = serve(stream, n, handler, requests).await;
                            }
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(stream) => {
                                    let _ = serve(stream, n, handler, requests).await;
                                }
                                Err(_) => {
                                    handshake_failures.fetch_add(1, Ordering::SeqCst);
                                }
                            },
                        }
                    });
                }
            }
        });
        Server {
            addr,
            scheme,
            requests,
            connections,
            handshake_failures,
            task,
        }
    }

    /// `http(s)://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// TLS handshakes that failed (HTTPS servers only).
    pub fn handshake_failures(&self) -> usize {
        self.handshake_failures.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// Requests to a path (query ignored).
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    connection: usize,
    handler: Handler,
    requests: Arc<Mutex<Vec<Request>>>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut words = request_line.split(' ');
        let method = words.next().unwrap_or_default().to_string();
        let target = words.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        // The client under test frames every body with Content-Length; a chunked one is a
        // failure the test should see, so the connection is dropped.
        if chunked {
            return Ok(());
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let request = Request {
            method,
            target,
            headers,
            body,
            connection,
        };
        let reply = handler(&request);
        requests.lock().expect("requests lock").push(request);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            reply.status,
            reason(reply.status),
            reply.body.len()
        );
        for (n, v) in &reply.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&reply.body);
        stream.write_all(&bytes).await?;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        401 => "Unauthorized",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The MediaStorageSOPInstanceUID (0002,0003) of a Part 10 file, read from its meta group
/// (always Explicit VR Little Endian).
pub fn sop_instance_uid(part10: &[u8]) -> String {
    assert!(part10.len() > 132, "a Part 10 file");
    assert_eq!(&part10[128..132], b"DICM", "Part 10 preamble and prefix");
    let mut pos = 132;
    while pos + 8 <= part10.len() {
        let group = u16::from_le_bytes([part10[pos], part10[pos + 1]]);
        let element = u16::from_le_bytes([part10[pos + 2], part10[pos + 3]]);
        assert_eq!(group, 0x0002, "(0002,0003) is in the meta group");
        let vr = &part10[pos + 4..pos + 6];
        let (len, value_at) = if matches!(
            vr,
            b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN" | b"OD" | b"OL" | b"OV" | b"UC" | b"UR"
        ) {
            let l = &part10[pos + 8..pos + 12];
            (
                u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize,
                pos + 12,
            )
        } else {
            (
                u16::from_le_bytes([part10[pos + 6], part10[pos + 7]]) as usize,
                pos + 8,
            )
        };
        if element == 0x0003 {
            let value = &part10[value_at..value_at + len];
            return String::from_utf8_lossy(value)
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        pos = value_at + len;
    }
    panic!("no MediaStorageSOPInstanceUID")
}
