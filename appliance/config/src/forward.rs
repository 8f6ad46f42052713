//! `[forward]`: the destinations studies are forwarded to, their retry policy, and the routing
//! rules that pick destinations and priorities per instance.

use std::path::PathBuf;
use std::time::Duration;

use crate::AeTitle;
use crate::read::Reader;

/// Store-and-forward settings.
#[derive(Clone, Debug, Default)]
pub struct Forward {
    pub destinations: Vec<Destination>,
    /// Checked in order; the first that matches decides. With no rule matching, an instance
    /// goes to every destination at normal priority.
    pub rules: Vec<Rule>,
    /// A DICOM destination to fetch evicted studies back from (by C-MOVE to our AE title);
    /// without one, a retrieval of an evicted instance fails with the reason.
    pub recall_from: Option<String>,
}

/// One place instances are forwarded to.
#[derive(Clone, Debug)]
pub struct Destination {
    /// Letters, digits, `-` and `_`; names the queue.
    pub name: String,
    pub kind: DestinationKind,
    /// Parallel associations or HTTP requests.
    pub concurrency: usize,
    /// Most instances per association (DICOM) taken from the queue at once.
    pub batch: usize,
    /// Per DIMSE message or HTTP request.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// While the destination is down, how often it is probed (C-ECHO or an HTTP request).
    pub probe_interval: Duration,
    /// Most bytes per second sent to it, averaged; `None` for no cap.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Local times of day between which normal- and low-priority instances are sent
    /// (minutes after midnight, start and end; a window may wrap past midnight). STAT and
    /// high priority go at any time.
    pub window: Option<(u16, u16)>,
    /// The destination replaces the copy it holds when sent a new one of the same SOP
    /// Instance UID. Only then does its acknowledgement of an overwritten (corrected)
    /// instance prove it holds the correction, and only then may the local copy be evicted.
    pub overwrites: bool,
}

impl Destination {
    /// Whether `minute` (after local midnight) is inside the delivery window.
    pub fn in_window(&self, minute: u16) -> bool {
        match self.window {
            None => true,
            Some((start, end)) if start <= end => minute >= start && minute < end,
            Some((start, end)) => minute >= start || minute < end,
        }
    }
}

/// Parses `"22:00-06:00"`.
fn parse_window(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!("{s:?} is not a time window; write it as \"22:00-06:00\" (local time, start-end)")
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    match (minute(a), minute(b)) {
        (Some(x), Some(y)) if x != y => Ok((x, y)),
        (Some(_), Some(_)) => Err(format!(
            "{s:?} starts and ends at the same time; leave window out to send at any time"
        )),
        _ => Err(bad()),
    }
}

#[derive(Clone, Debug)]
pub enum DestinationKind {
    Dicom(DicomDestination),
    DicomWeb(DicomWebDestination),
}

/// A C-STORE SCP, such as a central PACS.
#[derive(Clone, Debug)]
pub struct DicomDestination {
    pub ae_title: AeTitle,
    pub host: String,
    pub port: u16,
    /// DICOM TLS, verifying the server against `ca_bundle` (or the system roots).
    pub tls: bool,
    pub ca_bundle: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Count an instance as held upstream only once the PACS commits to it (Storage
    /// Commitment Push Model), waiting at most this long for its report before sending the
    /// instances again; `None` counts a C-STORE success.
    pub storage_commitment: Option<Duration>,
    /// With Storage Commitment, how long the association stays open after the N-ACTION-RSP
    /// so the PACS can send its report on it (PS3.4 J.3.3): the only way a report reaches
    /// an appliance the PACS cannot open an association to (NAT, a clinic firewall).
    pub commitment_wait: Duration,
}

/// A DICOMweb service accepting STOW-RS.
#[derive(Clone)]
pub struct DicomWebDestination {
    /// The service root, such as `https://cloud.example/dicom-web`.
    pub url: String,
    pub auth: WebAuth,
    pub ca_bundle: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub proxy: Option<String>,
    pub max_request_bytes: u64,
    pub max_request_instances: usize,
}

impl std::fmt::Debug for DicomWebDestination {
    // Credentials stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DicomWebDestination")
            .field("url", &self.url)
            .field("auth", &self.auth.kind())
            .field("ca_bundle", &self.ca_bundle)
            .field("client_certificate", &self.client_certificate)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub enum WebAuth {
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    /// OAuth2 client credentials; the token is refreshed on expiry or on a 401.
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scope: Option<String>,
    },
}

impl WebAuth {
    pub fn kind(&self) -> &'static str {
        match self {
            WebAuth::None => "none",
            WebAuth::Basic { .. } => "basic",
            WebAuth::Bearer { .. } => "bearer",
            WebAuth::OAuth2 { .. } => "oauth2",
        }
    }
}

/// When to try a failed instance again: `initial`, then multiplied each time up to `max`
/// (the delays themselves are worked out by `store::settle`, the one place that does).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub multiplier: f64,
    pub max: Duration,
    /// `None` retries forever.
    pub max_attempts: Option<u32>,
}

/// How urgent a routed instance is; lower goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Stat = 0,
    High = 1,
    Normal = 2,
    Low = 3,
}

/// A routing rule: every condition given must hold.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// Any of these calling AE titles (empty: any).
    pub calling_ae: Vec<AeTitle>,
    /// Any of these modalities (empty: any).
    pub modality: Vec<String>,
    /// Attribute (group << 16 | element) and a pattern with `*` and `?` wildcards,
    /// compared with the attribute's text value, case-insensitively.
    pub matches: Vec<(u32, String)>,
    pub destinations: Vec<String>,
    pub priority: Priority,
}

fn valid_name(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{s:?} is not a usable destination name; use 1 to 64 letters, digits, '-' or '_'"
        ));
    }
    Ok(s.to_string())
}

/// Parses `(0008,1030)`, `0008,1030` or `00081030`.
fn parse_tag(s: &str) -> Result<u32, String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | ',' | ' '))
        .collect();
    if hex.len() == 8
        && let Ok(t) = u32::from_str_radix(&hex, 16)
    {
        return Ok(t);
    }
    Err(format!(
        "{s:?} is not a tag; write it as \"(0008,1030)\" or \"00081030\""
    ))
}

fn web_url(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) || s.len() < 10 {
        return Err(format!(
            "{s:?} is not a DICOMweb service root; use a URL such as \"https://cloud.example/dicom-web\""
        ));
    }
    Ok(s.trim_end_matches('/').to_string())
}

pub(crate) fn read(root: &mut Reader) -> Option<Forward> {
    let mut f = root.table("forward");
    let mut destinations: Vec<Destination> = Vec::new();
    let mut ok = true;
    for mut d in f.array_of_tables("destination") {
        let dest = read_destination(&mut d);
        if let Some(dest) = &dest
            && destinations.iter().any(|o| o.name == dest.name)
        {
            d.problem(
                "name",
                format!(
                    "destination {:?} is listed twice in [[forward.destination]]",
                    dest.name
                ),
            );
        }
        d.finish();
        ok &= dest.is_some();
        destinations.extend(dest);
    }
    let mut rules = Vec::new();
    for (i, mut r) in f.array_of_tables("rule").into_iter().enumerate() {
        let rule = read_rule(&mut r, i, &destinations, ok);
        r.finish();
        ok &= rule.is_some();
        rules.extend(rule);
    }
    let recall_from = if f.has("recall_from") {
        f.string("recall_from", None).and_then(|name| {
            match destinations.iter().find(|d| d.name == name) {
                Some(d) if matches!(d.kind, DestinationKind::Dicom(_)) => Some(name),
                Some(_) => {
                    f.problem(
                        "recall_from",
                        format!(
                            "{name:?} is a dicomweb destination; recall needs a DICOM one (C-MOVE)"
                        ),
                    );
                    None
                }
                None if !ok => None,
                None => {
                    f.problem(
                        "recall_from",
                        format!("{name:?} is not a [[forward.destination]]"),
                    );
                    None
                }
            }
        })
    } else {
        f.string("recall_from", Some("")).filter(|s| !s.is_empty())
    };
    let recall_ok = recall_from.is_some() || !f.has("recall_from");
    f.finish();
    (ok && recall_ok).then_some(Forward {
        destinations,
        rules,
        recall_from,
    })
}

fn read_destination(d: &mut Reader) -> Option<Destination> {
    let name = d.parse_str("name", None, valid_name);
    let kind = d.parse_str("kind", None, |k| match k {
        "dicom" | "dicomweb" => Ok(k.to_string()),
        other => Err(format!(
            "{other:?} is not a destination kind; use \"dicom\" (C-STORE) or \"dicomweb\" (STOW-RS)"
        )),
    });
    let concurrency = d.int("concurrency", 1, 1, 16);
    let batch = d.int("batch", 100, 1, 10_000);
    let timeout = d.seconds("timeout_s", 60, 1, 3600);
    let initial = d.seconds("retry_initial_s", 10, 1, 86_400);
    let multiplier = d.float("retry_multiplier", 2.0, 1.0, 10.0);
    let max = d.seconds("retry_max_s", 3600, 1, 7 * 86_400);
    let attempts = d.int("max_attempts", 0, 0, 1_000_000);
    let probe = d.seconds("probe_interval_s", 5, 1, 3600);
    let bandwidth = d.int("bandwidth_kbps", 0, 0, 100_000_000);
    let overwrites = d.bool("overwrites", false);
    let window = if d.has("window") {
        d.parse_str("window", None, parse_window).map(Some)
    } else {
        d.string("window", Some("")).map(|_| None)
    };
    let ca_bundle = d.optional_path("ca_bundle");
    let client_certificate = d.optional_path("client_certificate");
    let client_key = d.optional_path("client_key");
    if client_certificate.is_some() != client_key.is_some() {
        d.problem(
            "client_key",
            "client_certificate and client_key go together; set both or neither".into(),
        );
    }
    let kind = match kind?.as_str() {
        "dicom" => {
            let ae_title = d.parse_str("ae_title", None, AeTitle::parse);
            let host = d.string("host", None);
            let port = d.port("port", None);
            let tls = d.bool("tls", false);
            let commitment = d.bool("storage_commitment", false);
            let commitment_timeout = d.seconds("commitment_timeout_s", 3600, 10, 7 * 86_400);
            let commitment_wait = d.seconds("commitment_wait_s", 0, 0, 600);
            if let (Some(wait), Some(timeout)) = (commitment_wait, commitment_timeout)
                && wait >= timeout
            {
                d.problem(
                    "commitment_wait_s",
                    format!(
                        "{} s is not shorter than commitment_timeout_s ({} s); the association would outlast the wait for the report",
                        wait.as_secs(),
                        timeout.as_secs()
                    ),
                );
            }
            if !tls.unwrap_or(false) && (ca_bundle.is_some() || client_certificate.is_some()) {
                d.problem(
                    "tls",
                    "ca_bundle and client_certificate are used only with tls = true".into(),
                );
            }
            DestinationKind::Dicom(DicomDestination {
                ae_title: ae_title?,
                host: host?,
                port: port?,
                tls: tls?,
                ca_bundle,
                client_certificate,
                client_key,
                storage_commitment: if commitment? {
                    Some(commitment_timeout?)
                } else {
                    commitment_timeout?;
                    None
                },
                commitment_wait: commitment_wait?,
            })
        }
        _ => {
            let url = d.parse_str("url", None, web_url);
            let auth = read_auth(d);
            let proxy = if d.has("proxy") {
                d.parse_str("proxy", None, |p| {
                    if p.contains("://") {
                        Ok(p.to_string())
                    } else {
                        Err(format!(
                            "{p:?} is not a proxy URL; use one such as \"http://proxy.example:3128\""
                        ))
                    }
                })
            } else {
                d.string("proxy", Some("")).filter(|s| !s.is_empty())
            };
            let max_mb = d.int("max_request_mb", 32, 1, 4096);
            let max_instances = d.int("max_request_instances", 50, 1, 10_000);
            DestinationKind::DicomWeb(DicomWebDestination {
                url: url?,
                auth: auth?,
                ca_bundle,
                client_certificate,
                client_key,
                proxy,
                max_request_bytes: max_mb? * 1024 * 1024,
                max_request_instances: max_instances? as usize,
            })
        }
    };
    let (initial, max) = (initial?, max?);
    if max < initial {
        d.problem(
            "retry_max_s",
            format!(
                "{} s is shorter than retry_initial_s ({} s)",
                max.as_secs(),
                initial.as_secs()
            ),
        );
        return None;
    }
    Some(Destination {
        name: name?,
        kind,
        concurrency: concurrency? as usize,
        batch: batch? as usize,
        timeout: timeout?,
        retry: RetryPolicy {
            initial,
            multiplier: multiplier?,
            max,
            max_attempts: match attempts? {
                0 => None,
                n => Some(n as u32),
            },
        },
        probe_interval: probe?,
        bandwidth_bytes_per_s: match bandwidth? {
            0 => None,
            kbps => Some(kbps * 1000 / 8),
        },
        window: window?,
        overwrites: overwrites?,
    })
}

fn read_auth(d: &mut Reader) -> Option<WebAuth> {
    let kind = d.parse_str("auth", Some("none"), |a| match a {
        "none" | "basic" | "bearer" | "oauth2" => Ok(a.to_string()),
        other => Err(format!(
            "{other:?} is not an auth method; use \"none\", \"basic\", \"bearer\" or \"oauth2\""
        )),
    })?;
    Some(match kind.as_str() {
        "basic" => WebAuth::Basic {
            username: d.string("username", None)?,
            password: d.string("password", None)?,
        },
        "bearer" => WebAuth::Bearer {
            token: d.string("token", None)?,
        },
        "oauth2" => {
            let token_url = d.parse_str("token_url", None, web_url);
            let client_id = d.string("client_id", None);
            let client_secret = d.string("client_secret", None);
            let scope = d.string("scope", Some("")).filter(|s| !s.is_empty());
            WebAuth::OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                scope,
            }
        }
        _ => WebAuth::None,
    })
}

fn read_rule(
    r: &mut Reader,
    index: usize,
    destinations: &[Destination],
    destinations_ok: bool,
) -> Option<Rule> {
    let name = r.string("name", Some(&format!("rule {}", index + 1)));
    let calling_ae = r.string_list("calling_ae").and_then(|list| {
        let mut out = Vec::new();
        for ae in list {
            match AeTitle::parse(&ae) {
                Ok(a) => out.push(a),
                Err(e) => {
                    r.problem("calling_ae", e);
                    return None;
                }
            }
        }
        Some(out)
    });
    let modality = r.string_list("modality").map(|l| {
        l.into_iter()
            .map(|m| m.trim().to_ascii_uppercase())
            .collect()
    });
    let matches = r.string_map("match").and_then(|pairs| {
        let mut out = Vec::new();
        let mut ok = true;
        for (tag, pattern) in pairs {
            match parse_tag(&tag) {
                Ok(t) => out.push((t, pattern)),
                Err(e) => {
                    r.problem("match", e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    });
    let targets = r.string_list("destinations");
    if !r.has("destinations") {
        r.problem(
            "destinations",
            "is required; list destination names, or [] to forward matching instances nowhere"
                .into(),
        );
    }
    if let Some(targets) = &targets
        && destinations_ok
    {
        for t in targets {
            if !destinations.iter().any(|d| &d.name == t) {
                let known: Vec<&str> = destinations.iter().map(|d| d.name.as_str()).collect();
                r.problem(
                    "destinations",
                    format!(
                        "{t:?} is not a [[forward.destination]]; known: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }
    let priority = r.parse_str("priority", Some("normal"), |p| match p {
        "stat" => Ok(Priority::Stat),
        "high" => Ok(Priority::High),
        "normal" => Ok(Priority::Normal),
        "low" => Ok(Priority::Low),
        other => Err(format!(
            "{other:?} is not a priority; use \"stat\", \"high\", \"normal\" or \"low\""
        )),
    });
    Some(Rule {
        name: name?,
        calling_ae: calling_ae?,
        modality: modality?,
        matches: matches?,
        destinations: targets?,
        priority: priority?,
    })
}
