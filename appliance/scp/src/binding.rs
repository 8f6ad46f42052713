//! AE title bindings: whether the client certificate a TLS caller presented may claim the
//! calling AE title it sent. The modality CA vouches only that it issued a certificate; without
//! a binding any certificate it issued could claim any AE title, an upstream one included.

use config::Binding;
use x509_parser::extensions::GeneralName;

/// What of a caller's certificate a binding is compared with, and the log shows.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    /// The subject as OpenSSL prints it (`CN=CT1, O=Hospital`), for the log and the audit.
    pub subject: String,
    /// Its DNS and URI subject alternative names and subject common names.
    pub names: Vec<String>,
    pub sha256: [u8; 32],
}

impl PeerCertificate {
    /// Reads the end-entity certificate of a completed handshake. rustls has verified it
    /// already; one x509-parser cannot read keeps its fingerprint and claims no name.
    pub fn parse(der: &[u8]) -> PeerCertificate {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        let mut names = Vec::new();
        let subject = match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                if let Ok(Some(san)) = cert.subject_alternative_name() {
                    for name in &san.value.general_names {
                        match name {
                            GeneralName::DNSName(n) | GeneralName::URI(n) => {
                                names.push((*n).to_string())
                            }
                            _ => {}
                        }
                    }
                }
                for cn in cert.subject().iter_common_name() {
                    if let Ok(cn) = cn.as_str() {
                        names.push(cn.to_string());
                    }
                }
                cert.subject().to_string()
            }
            Err(_) => "(unreadable subject)".into(),
        };
        PeerCertificate {
            subject,
            names,
            sha256,
        }
    }

    /// The fingerprint as `openssl x509 -fingerprint -sha256` prints it, for the log.
    pub fn fingerprint(&self) -> String {
        hex(&self.sha256)
    }

    /// Whether this certificate is the one `binding` names: one of its names (ASCII case
    /// ignored, as DNS names are compared) when names are bound, and one of the pinned
    /// fingerprints when those are.
    pub fn satisfies(&self, binding: &Binding) -> bool {
        let named = binding.names.is_empty()
            || binding
                .names
                .iter()
                .any(|b| self.names.iter().any(|n| n.eq_ignore_ascii_case(b.trim())));
        let pinned = binding.sha256.is_empty() || binding.sha256.contains(&self.sha256);
        named && pinned
    }

    /// The certificate in one phrase for a refusal: subject, names and fingerprint.
    pub fn describe(&self) -> String {
        format!(
            "subject {:?}, names [{}], SHA-256 {}",
            self.subject,
            self.names.join(", "),
            self.fingerprint()
        )
    }
}

/// What a binding asks for, in one phrase for a refusal.
pub fn describe(binding: &Binding) -> String {
    let mut parts = Vec::new();
    if !binding.names.is_empty() {
        parts.push(format!("a name in [{}]", binding.names.join(", ")));
    }
    if !binding.sha256.is_empty() {
        let pins: Vec<String> = binding.sha256.iter().map(|f| hex(f)).collect();
        parts.push(format!("SHA-256 in [{}]", pins.join(", ")));
    }
    parts.join(" and ")
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
