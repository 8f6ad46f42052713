//! Who may associate: one decision from the calling and called AE titles, the peer address and
//! the port, used on both listeners.

use std::net::IpAddr;

use config::{Permissions, UnknownCallers};
use dicom_ul::pdu::AssociationRJServiceUserReason;

use crate::PortKind;
use crate::Services;

/// An accepted caller.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub permissions: Permissions,
}

/// A refused caller: the reason sent in the A-ASSOCIATE-RJ, and the sentence for the log.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub reason: AssociationRJServiceUserReason,
    pub why: String,
    pub calling: String,
    pub called: String,
}

/// Addresses of remotes with `check_host`, resolved once per connection that needs them.
pub type Resolved = Vec<(String, Vec<IpAddr>)>;

/// Resolves the hosts of remotes that restrict their AE title to a host name.
pub async fn resolve_checked_hosts(services: &Services) -> Resolved {
    let mut out = Vec::new();
    for r in services.config.remotes.iter().filter(|r| r.check_host) {
        let ips = match r.host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((r.host.as_str(), r.port))
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .unwrap_or_default(),
        };
        out.push((r.ae_title.as_str().to_string(), ips));
    }
    out
}

pub fn admit(
    services: &Services,
    calling: &str,
    called: &str,
    peer: IpAddr,
    port: PortKind,
    resolved: &Resolved,
) -> Result<Admitted, Refusal> {
    let dicom = &services.config;
    if dicom.check_called_ae && !dicom.ae_title.matches(called) {
        return Err(Refusal {
            reason: AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            why: format!(
                "it called AE title {:?}, but this archive is {:?}",
                called.trim(),
                dicom.ae_title.as_str()
            ),
            calling: calling.trim().to_string(),
            called: called.trim().to_string(),
        });
    }
    match dicom.remote(calling) {
        Some(remote) => {
            if remote.check_host {
                let allowed = resolved
                    .iter()
                    .find(|(ae, _)| remote.ae_title.matches(ae))
                    .map(|(_, ips)| {
                        ips.contains(&peer)
                            || ips
                                .iter()
                                .any(|ip| ip.to_canonical() == peer.to_canonical())
                    })
                    .unwrap_or(false);
                if !allowed {
                    return Err(Refusal {
                        reason: AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                        why: format!(
                            "AE title {} is only accepted from {}, and this caller is at {peer}",
                            remote.ae_title, remote.host
                        ),
                        calling: calling.trim().to_string(),
                        called: called.trim().to_string(),
                    });
                }
            }
            if remote.tls && port == PortKind::Plain {
                return Err(Refusal {
                    reason: AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                    why: format!(
                        "{} is configured to use DICOM TLS, but it connected to the plain (unencrypted) port; configure the modality for TLS on port {}",
                        remote.ae_title,
                        dicom.tls.as_ref().map_or(0, |t| t.port)
                    ),
                    calling: calling.trim().to_string(),
                    called: called.trim().to_string(),
                });
            }
            Ok(Admitted {
                permissions: remote.permissions,
            })
        }
        None => {
            let allowed = match dicom.accept_unknown_callers {
                UnknownCallers::Any => true,
                UnknownCallers::Loopback => peer.to_canonical().is_loopback(),
                UnknownCallers::Reject => false,
            };
            if allowed {
                Ok(Admitted {
                    permissions: Permissions::ALL,
                })
            } else {
                let rule = match dicom.accept_unknown_callers {
                    UnknownCallers::Loopback => {
                        "unknown callers are accepted from this machine only"
                    }
                    _ => "unknown callers are not accepted",
                };
                Err(Refusal {
                    reason: AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                    why: format!(
                        "calling AE title {:?} is not in [[dicom.remote]] and {rule}",
                        calling.trim()
                    ),
                    calling: calling.trim().to_string(),
                    called: called.trim().to_string(),
                })
            }
        }
    }
}
