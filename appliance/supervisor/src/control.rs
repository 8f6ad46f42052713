//! The local control socket: how `outpost queue`, `outpost quarantine` and `outpost status`
//! talk to the running service, which alone holds the index. One JSON [`Request`] per
//! connection, one JSON [`Response`] line back, answered by the same [`Handler`] every face
//! uses; the socket is `control.sock` in the data directory, readable by the service's user
//! and group only. [`call`] is the client side.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use api::{ApiError, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::handle::Handler;

/// Largest request accepted; requests are a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

/// Why the control socket could not be set up or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding or restricting the socket failed.
    #[error("cannot {what} the control socket {}: {source}", path.display())]
    Socket {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The service is not running, or this user may not open its socket.
    #[error("cannot reach the running service at {} (is `outpost serve` running with this configuration, and may this user open its socket?): {source}", path.display())]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The connection failed midway.
    #[error("talking to the running service at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The answer was not a control response (a service of another version?).
    #[error("the service's answer is not a control response: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Where the control socket of the archive in `data_dir` is.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Binds the socket, replacing one a previous run left behind (the index lock, taken
/// before this, guarantees no other service runs on this data directory).
pub(crate) fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| ControlError::Socket {
        what: "create",
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        ControlError::Socket {
            what: "restrict",
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// Accepts connections until `stop`; each is answered on its own task on `tasks`.
pub(crate) async fn run(
    listener: UnixListener,
    handler: Handler,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tasks.spawn(async move {
            if let Err(e) = serve_one(stream, &handler).await {
                debug!(error = %e, "control request failed");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, handler: &Handler) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handler.handle(request).await,
        Err(e) => ApiError::NotARequest(e.to_string()).into(),
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Sends one request to the running service and returns its answer.
pub async fn call(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream =
        UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Unreachable {
                path: path.to_path_buf(),
                source,
            })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    Ok(serde_json::from_str(&answer)?)
}
