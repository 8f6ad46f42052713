//! The clean-shutdown marker: a small file written after the archive was closed in order, and
//! taken away at the next start, so that start can say whether the previous run ended cleanly
//! (a SIGTERM, a UPS power-off) or not (a power cut, a crash).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const NAME: &str = "clean-shutdown.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct Marker {
    /// Unix seconds.
    pub stopped_at: u64,
    pub reason: String,
    pub version: String,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(NAME)
}

/// Records a clean stop. The file is synced and renamed into place and the directory synced,
/// so a power cut right after the power-off command cannot leave a torn marker.
pub fn record(data_dir: &Path, reason: &str) -> std::io::Result<()> {
    let marker = Marker {
        stopped_at: store::layout::unix_now(),
        reason: reason.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let tmp = data_dir.join(format!("{NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&marker).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Takes the marker of the previous run away, returning it when there was one. Removing it
/// first thing means a crash of this run is never mistaken for a clean stop.
pub fn take(data_dir: &Path) -> std::io::Result<Option<Marker>> {
    let p = path(data_dir);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    std::fs::remove_file(&p)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(serde_json::from_slice(&text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_stop_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(take(dir.path()).unwrap().is_none());
        record(dir.path(), "SIGTERM").unwrap();
        let m = take(dir.path())
            .unwrap()
            .expect("the marker of the clean stop");
        assert_eq!(m.reason, "SIGTERM");
        assert!(m.stopped_at > 0);
        // Taken away at start: a crash of the next run is not mistaken for a clean stop.
        assert!(take(dir.path()).unwrap().is_none());
        assert!(!dir.path().join("clean-shutdown.json.tmp").exists());
    }
}
