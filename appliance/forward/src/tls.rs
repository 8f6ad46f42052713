//! The rustls client configuration for a DICOM destination reached over DICOM TLS.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Trusts `ca_bundle` (or the system's roots without one) and presents the client
/// certificate when one is configured. The reasons name the file and what is wrong with it.
pub(crate) fn client_config(d: &config::DicomDestination) -> Result<storescu::Tls, String> {
    // Both rustls and reqwest may pull in a crypto provider; install ours explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match &d.ca_bundle {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "the CA bundle {} holds no PEM certificate",
                    path.display()
                ));
            }
            for c in certs {
                roots.add(c).map_err(|e| {
                    format!("a certificate in {} is not usable: {e}", path.display())
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(
                    "no system CA certificates found; set ca_bundle to the PACS's CA".into(),
                );
            }
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let config = match (&d.client_certificate, &d.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!("cannot read the client certificate {}: {e}", cert.display())
                })?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read the client key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(storescu::Tls {
        config: Arc::new(config),
        server_name: d.host.clone(),
    })
}

/// The TLS settings of a DICOM destination, when it uses DICOM TLS.
pub(crate) fn for_destination(
    d: &config::Destination,
    dicom: &config::DicomDestination,
) -> Result<Option<storescu::Tls>, crate::ForwardError> {
    if !dicom.tls {
        return Ok(None);
    }
    client_config(dicom)
        .map(Some)
        .map_err(|message| crate::ForwardError::Tls {
            destination: d.name.clone(),
            message,
        })
}
