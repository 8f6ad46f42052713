//! The panel's TLS certificate. With no operator certificate configured, the first start makes
//! a self-signed one for the host name, `localhost` and the box's addresses and keeps it under
//! the data directory; later starts load it and never replace it, because operators pin its
//! fingerprint (the browser's warning shows it) and a silent new one would look like an attack.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// What the panel serves with, loaded and checked.
#[derive(Debug)]
pub struct WebCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub info: CertInfo,
}

/// What status shows of the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of the leaf (DER), as `openssl x509 -fingerprint -sha256` prints it.
    pub sha256: String,
    /// Made by Outpost (no operator certificate configured); HSTS is sent only when false,
    /// since pinning a browser to a certificate it warns about locks people out.
    pub self_signed: bool,
    /// The leaf's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key in it ({reason})", path.display())]
    NoKey { path: PathBuf, reason: String },
    #[error("{}: the certificate cannot be read: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("{} exists without {}; restore it or remove both to make a new certificate", present.display(), missing.display())]
    HalfPresent { present: PathBuf, missing: PathBuf },
    #[error("making the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the self-signed certificate lives: `<data_dir>/web/panel.crt` and `panel.key`.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("web");
    (dir.join("panel.crt"), dir.join("panel.key"))
}

/// The operator's certificate when one is configured, else the kept self-signed one, made
/// now if there is none. `listen` adds its address to the names of a new certificate.
pub fn ensure(
    operator: Option<(&Path, &Path)>,
    data_dir: &Path,
    listen: IpAddr,
) -> Result<WebCert, CertError> {
    if let Some((cert, key)) = operator {
        return load(cert, key, false);
    }
    let (cert, key) = self_signed_paths(data_dir);
    match (cert.exists(), key.exists()) {
        (true, true) => {}
        (false, false) => {
            generate(&cert, &key, &names(listen))?;
        }
        // One half lost: making a new pair would silently change the fingerprint.
        (true, false) => {
            return Err(CertError::HalfPresent {
                present: cert,
                missing: key,
            });
        }
        (false, true) => {
            return Err(CertError::HalfPresent {
                present: key,
                missing: cert,
            });
        }
    }
    load(&cert, &key, true)
}

/// The host name, `localhost`, the loopback addresses, the listen address when it is one
/// and every address the box's interfaces have now.
fn names(listen: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
        && h != "localhost"
    {
        names.insert(0, h.to_string());
    }
    let mut addrs: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    if !listen.is_unspecified() {
        addrs.push(listen);
    }
    if let Ok(ifs) = nix::ifaddrs::getifaddrs() {
        for i in ifs {
            let Some(a) = i.address else { continue };
            if let Some(v4) = a.as_sockaddr_in() {
                addrs.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = a.as_sockaddr_in6() {
                addrs.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    for a in addrs {
        let s = a.to_string();
        if !names.contains(&s) {
            names.push(s);
        }
    }
    names
}

fn generate(cert: &Path, key: &Path, names: &[String]) -> Result<(), CertError> {
    use chrono::Datelike;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("localhost"),
    );
    // Ten years: it is trusted by its fingerprint, not by a public CA's rules, and a renewal
    // would change what operators pinned.
    let now = chrono::Utc::now();
    params.not_before = rcgen::date_time_ymd(now.year(), now.month() as u8, 1);
    params.not_after = rcgen::date_time_ymd(now.year() + 10, now.month() as u8, 1);
    let pair = rcgen::KeyPair::generate()?;
    let made = params.self_signed(&pair)?;
    let dir = cert.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // The key first, created 0600 (never readable by others, not even for a moment); the
    // certificate last, so a crash between leaves a state `ensure` reports, not a mismatch.
    write_new(key, pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, made.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // The umask may have narrowed the mode; 0600 must hold exactly for the key.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Loads a PEM chain and key and reads the leaf's fingerprint and expiry.
pub fn load(cert: &Path, key: &Path, self_signed: bool) -> Result<WebCert, CertError> {
    let pem = fs::read(cert).map_err(|source| CertError::Io {
        path: cert.to_path_buf(),
        source,
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Unreadable {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate {
            path: cert.to_path_buf(),
        });
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| CertError::Unreadable {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    let not_after = parsed.validity().not_after.timestamp();
    let sha256 = fingerprint(leaf);
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| CertError::NoKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(WebCert {
        chain,
        key: key_der,
        info: CertInfo {
            sha256,
            self_signed,
            not_after,
        },
    })
}

/// `AB:CD:...`, the form browsers and `openssl x509 -fingerprint -sha256` show.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut s = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_with_a_private_key_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(None, dir.path(), IpAddr::from([127, 0, 0, 1])).unwrap();
        assert!(first.info.self_signed);
        assert_eq!(first.info.sha256.len(), 32 * 3 - 1);
        assert!(first.info.not_after > chrono::Utc::now().timestamp());
        let (cert, key) = self_signed_paths(dir.path());
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = ensure(None, dir.path(), IpAddr::from([127, 0, 0, 1])).unwrap();
        assert_eq!(
            first.info, second.info,
            "a restart must keep the certificate"
        );
        // One half missing is reported, never papered over with a new pair.
        fs::remove_file(&key).unwrap();
        let err = ensure(None, dir.path(), IpAddr::from([127, 0, 0, 1])).unwrap_err();
        assert!(matches!(err, CertError::HalfPresent { .. }), "{err}");
        assert!(cert.exists());
    }

    #[test]
    fn an_operator_certificate_is_loaded_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        generate(&cert, &key, &["panel.example".to_string()]).unwrap();
        let loaded = ensure(Some((&cert, &key)), dir.path(), IpAddr::from([0, 0, 0, 0])).unwrap();
        assert!(!loaded.info.self_signed);
        assert!(!self_signed_paths(dir.path()).0.exists());
    }

    #[test]
    fn the_names_cover_localhost_and_loopback() {
        let n = names(IpAddr::from([0, 0, 0, 0]));
        assert!(n.iter().any(|n| n == "localhost"));
        assert!(n.iter().any(|n| n == "127.0.0.1"));
        assert!(!n.iter().any(|n| n == "0.0.0.0"));
    }
}
