//! DICOM TLS settings: the server side of the TLS listener (certificate, key, optional client
//! certificate verification) and the client side Outpost uses to call TLS peers.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Clone)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("{0}")]
    Rustls(String),
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |reason: String| TlsError::Read {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| read(e.to_string()))?;
    if certs.is_empty() {
        return Err(read("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Builds both TLS sides from `[dicom.tls]`.
pub fn load(tls: &config::Tls) -> Result<TlsConfigs, TlsError> {
    // Both rustls and dicom-ul may pull in a crypto provider; install ours explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let chain = certs(&tls.certificate, "the certificate")?;
    let key = PrivateKeyDer::from_pem_file(&tls.private_key).map_err(|e| TlsError::Read {
        what: "the private key",
        path: tls.private_key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.client_ca {
        for cert in certs(ca, "the CA bundle")? {
            roots
                .add(cert)
                .map_err(|e| TlsError::Rustls(format!("CA bundle {}: {e}", ca.display())))?;
        }
    }
    let builder = ServerConfig::builder();
    let server = if tls.client_ca.is_some() {
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots.clone()))
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    }
    .with_single_cert(chain.clone(), key.clone_key())
    .map_err(|e| {
        TlsError::Rustls(format!(
            "certificate and key do not form a usable pair: {e}"
        ))
    })?;
    Ok(TlsConfigs {
        server: Arc::new(server),
    })
}

/// The client side for calling `remote` over TLS (a C-MOVE destination). The modality CA
/// (`client_ca`) is never a trust anchor here: it would be the only one, and with none every
/// handshake failed (UnknownIssuer). The remote's `ca_bundle` is trusted, or the system roots
/// without one; its own client certificate is presented, or else the server certificate.
pub fn client_for(remote: &config::Remote, tls: &config::Tls) -> Result<ClientConfig, TlsError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    match &remote.ca_bundle {
        Some(ca) => {
            for cert in certs(ca, "the CA bundle")? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Rustls(format!("CA bundle {}: {e}", ca.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::Rustls(format!(
                    "no system CA certificates found to verify {}; set ca_bundle on its [[dicom.remote]]",
                    remote.ae_title
                )));
            }
        }
    }
    let (cert, key) = match (&remote.client_certificate, &remote.client_key) {
        (Some(c), Some(k)) => (c, k),
        _ => (&tls.certificate, &tls.private_key),
    };
    let chain = certs(cert, "the client certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        what: "the client key",
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "the client certificate {} and its key do not go together: {e}",
                cert.display()
            ))
        })
}
