//! Who may associate: one decision from the calling and called AE titles, the peer address and
//! the port, used on both listeners.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::Duration;

use config::{Permissions, UnknownCallers};
use dicom_ul::pdu::AssociationRJServiceUserReason;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::PortKind;
use crate::Services;
use crate::binding::{self, PeerCertificate};

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
}

/// Addresses of remotes with `check_host`: (AE title, addresses its host resolved to).
pub type Resolved = Vec<(String, Vec<IpAddr>)>;

/// How often `check_host` names are resolved again, and how long one lookup may take.
const REFRESH: Duration = Duration::from_secs(60);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses of `check_host` remotes, resolved in the background. Connections are matched
/// against what is cached, so a DNS outage (often part of a WAN outage) never stalls
/// admission: a name never resolved matches no one, and a name that stops resolving keeps
/// its last addresses.
#[derive(Default)]
pub struct HostCache {
    resolved: RwLock<Resolved>,
}

impl HostCache {
    /// The cache with literal addresses filled in at once; names follow from [`Self::refresh`].
    pub fn new(services: &Services) -> HostCache {
        let resolved = checked(services)
            .map(|(ae, host, _)| {
                (
                    ae,
                    host.parse::<IpAddr>()
                        .map(|ip| vec![ip])
                        .unwrap_or_default(),
                )
            })
            .collect();
        HostCache {
            resolved: RwLock::new(resolved),
        }
    }

    pub fn snapshot(&self) -> Resolved {
        self.resolved.read().expect("host cache lock").clone()
    }

    /// Resolves every `check_host` name now and then every [`REFRESH`], until `stop`.
    pub async fn refresh(&self, services: &Services, stop: CancellationToken) {
        let mut failing: HashSet<String> = HashSet::new();
        loop {
            for (ae, host, port) in checked(services) {
                if host.parse::<IpAddr>().is_ok() {
                    continue;
                }
                let looked = tokio::time::timeout(
                    LOOKUP_TIMEOUT,
                    tokio::net::lookup_host((host.as_str(), port)),
                )
                .await;
                match looked {
                    Ok(Ok(addrs)) => {
                        let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                        failing.remove(&host);
                        let mut cache = self.resolved.write().expect("host cache lock");
                        if let Some(entry) = cache.iter_mut().find(|(a, _)| *a == ae) {
                            entry.1 = ips;
                        }
                    }
                    failed => {
                        // Logged once per outage, not once per refresh.
                        if failing.insert(host.clone()) {
                            let error = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => format!("no answer within {LOOKUP_TIMEOUT:?}"),
                            };
                            warn!(
                                ae_title = ae,
                                host,
                                error,
                                "check_host: the remote's host name does not resolve; its last known addresses (if any) are kept, and until it resolves that AE title is accepted from none"
                            );
                        }
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }
}

/// The remotes with `check_host`: AE title, host, port.
fn checked(services: &Services) -> impl Iterator<Item = (String, String, u16)> + '_ {
    services
        .config
        .remotes
        .iter()
        .filter(|r| r.check_host)
        .map(|r| (r.ae_title.as_str().to_string(), r.host.clone(), r.port))
}

pub fn admit(
    services: &Services,
    calling: &str,
    called: &str,
    peer: IpAddr,
    port: PortKind,
    resolved: &Resolved,
    certificate: Option<&PeerCertificate>,
) -> Result<Admitted, Refusal> {
    let dicom = &services.config;
    let require_binding =
        port == PortKind::Tls && dicom.tls.as_ref().is_some_and(|t| t.require_binding);
    let presented = || {
        certificate.map_or_else(
            || "the caller presented no certificate".to_string(),
            |c| format!("the caller's certificate has {}", c.describe()),
        )
    };
    if dicom.check_called_ae && !dicom.ae_title.matches(called) {
        return Err(Refusal {
            reason: AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            why: format!(
                "it called AE title {:?}, but this archive is {:?}",
                called.trim(),
                dicom.ae_title.as_str()
            ),
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
                });
            }
            // A bound remote is TLS-only (config refuses a binding without tls = true), so
            // the plain port never reaches here with one.
            if port == PortKind::Tls {
                let bound = remote.binding.as_ref();
                let refused = match bound {
                    Some(b) => !certificate.is_some_and(|c| c.satisfies(b)),
                    None => require_binding,
                };
                if refused {
                    let why = match bound {
                        Some(b) => format!(
                            "AE title {} is bound to a certificate with {}, and {}; a certificate from the CA cannot claim this AE (if the modality's certificate was renewed, update certificate_names or certificate_sha256 of its [[dicom.remote]])",
                            remote.ae_title,
                            binding::describe(b),
                            presented()
                        ),
                        None => format!(
                            "[dicom.tls] require_binding is set and AE title {} has no certificate binding, so no certificate may claim it; {} (add certificate_names or certificate_sha256 to its [[dicom.remote]])",
                            remote.ae_title,
                            presented()
                        ),
                    };
                    return Err(Refusal {
                        reason: AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                        why,
                    });
                }
            }
            Ok(Admitted {
                permissions: remote.permissions,
            })
        }
        None if require_binding => Err(Refusal {
            reason: AssociationRJServiceUserReason::CallingAETitleNotRecognized,
            why: format!(
                "[dicom.tls] require_binding is set and calling AE title {:?} is not in [[dicom.remote]], so no certificate may claim it; {}",
                calling.trim(),
                presented()
            ),
        }),
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
                })
            }
        }
    }
}
