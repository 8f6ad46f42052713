//! A stand-in for systemd's notify socket: a Unix datagram socket that collects what the
//! service sends to `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct NotifySocket {
    pub path: PathBuf,
    socket: UnixDatagram,
    pub received: Vec<String>,
}

impl NotifySocket {
    pub fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set timeout");
        NotifySocket {
            path,
            socket,
            received: Vec::new(),
        }
    }

    /// Waits until a message containing `needle` arrives (collecting everything before it),
    /// or fails after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        if let Some(m) = self.received.iter().find(|m| m.contains(needle)) {
            return Ok(m.clone());
        }
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.received.push(msg.clone());
                if msg.contains(needle) {
                    return Ok(msg);
                }
            }
        }
        Err(format!(
            "no notification with {needle:?} within {timeout:?}; got {:?}",
            self.received
        ))
    }
}
