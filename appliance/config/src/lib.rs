//! Outpost's configuration, in two stages: the TOML is parsed into a document, then every key
//! is checked and converted into the typed values below. Every problem is collected and
//! reported at once (file, key, what is wrong), so a technician fixes a file in one pass.
//!
//! The key names of `[dicom]`, `[[dicom.remote]]` and `[storage]` are a contract with site
//! provisioning; `configs/example.toml` documents all of them.

mod forward;
mod health;
mod read;

pub use forward::{
    Destination, DestinationKind, DicomDestination, DicomWebDestination, Forward, Priority,
    RetryPolicy, Rule, WebAuth,
};
pub use health::{Alerts, Health, Power, Ups};

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use read::Reader;

/// The configuration used when `outpost serve` runs without `--config`: loopback only, data
/// in `./outpost-data`, so a newcomer sees it work with one command.
pub const EMBEDDED_DEFAULT: &str = include_str!("../embedded.toml");

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it came from ("embedded default" or a file path), for logs and the audit trail.
    pub source: String,
    pub dicom: Dicom,
    pub storage: Storage,
    pub forward: Forward,
    pub health: Health,
    /// Present when `[ups]` is configured.
    pub ups: Option<Ups>,
    pub power: Power,
    pub alerts: Alerts,
    pub audit: Audit,
    pub log: Log,
    pub web: Web,
    /// What is valid but probably not meant (file, key, message), found by the same
    /// validation as the problems; `check-config` prints them and `serve` logs them at warn.
    pub warnings: Vec<Warning>,
}

/// An AE title: 1 to 16 characters of the default repertoire, no backslash or controls,
/// stored without its insignificant leading and trailing spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AeTitle(String);

impl AeTitle {
    pub fn parse(s: &str) -> Result<AeTitle, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("an AE title must not be empty".into());
        }
        if t.len() > 16 {
            return Err(format!(
                "AE title {t:?} is {} characters long; at most 16 are allowed",
                t.len()
            ));
        }
        if let Some(c) = t
            .chars()
            .find(|c| !c.is_ascii() || c.is_ascii_control() || *c == '\\')
        {
            return Err(format!(
                "AE title {t:?} contains {c:?}; use letters, digits, spaces and punctuation other than backslash"
            ));
        }
        Ok(AeTitle(t.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a title received on the wire (with padding) names this AE.
    pub fn matches(&self, wire: &str) -> bool {
        wire.trim() == self.0
    }
}

impl fmt::Display for AeTitle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which callers that are not listed in `[[dicom.remote]]` may associate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownCallers {
    /// Only listed remotes.
    Reject,
    /// Unlisted callers too, but only from a loopback address.
    Loopback,
    /// Anyone.
    Any,
}

#[derive(Clone, Debug)]
pub struct Dicom {
    pub ae_title: AeTitle,
    pub bind: IpAddr,
    pub port: u16,
    pub accept_unknown_callers: UnknownCallers,
    pub accept_unknown_sop_classes: bool,
    /// Refuse associations whose called AE title is not ours.
    pub check_called_ae: bool,
    pub max_associations: usize,
    /// The largest PDU we accept.
    pub max_pdu: u32,
    pub association_timeout: Duration,
    /// How long a new connection may take to send its whole A-ASSOCIATE-RQ (TLS handshake
    /// included) before it is closed; it holds no association slot meanwhile.
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub dimse_timeout: Duration,
    /// A C-FIND with more matches is refused with 0xA700.
    pub max_find_results: usize,
    /// How long in-flight associations may run on after SIGTERM before they are aborted.
    pub shutdown_grace: Duration,
    /// The most memory one C-MOVE/C-GET sub-operation may use to decompress an instance.
    pub transcode_memory_limit: u64,
    pub tls: Option<Tls>,
    pub remotes: Vec<Remote>,
}

impl Dicom {
    pub fn remote(&self, ae_title: &str) -> Option<&Remote> {
        self.remotes.iter().find(|r| r.ae_title.matches(ae_title))
    }
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub port: u16,
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// When set, callers must present a certificate issued by one of these CAs; the bundle
    /// also verifies the peers Outpost calls over TLS.
    pub client_ca: Option<PathBuf>,
    /// Every caller on the TLS port must be a remote with a [`Binding`] its certificate
    /// matches: a certificate can claim only the AE titles bound to it.
    pub require_binding: bool,
}

/// The client certificate a remote must present on the TLS port. A certificate from the
/// modality CA proves only that the CA issued it; without a binding it could claim any AE
/// title, an upstream one included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The certificate must carry one of these as a DNS or URI subject alternative name or
    /// as its subject common name (compared without regard to ASCII case). Empty: any name.
    pub names: Vec<String>,
    /// The SHA-256 of the certificate (DER) must be one of these. Empty: any certificate.
    pub sha256: Vec<[u8; 32]>,
}

/// DIMSE services a remote may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub store: bool,
    pub find: bool,
    pub move_: bool,
    pub get: bool,
}

impl Permissions {
    pub const ALL: Permissions = Permissions {
        store: true,
        find: true,
        move_: true,
        get: true,
    };
}

/// A known peer: an allowed caller and a C-MOVE destination.
#[derive(Clone, Debug)]
pub struct Remote {
    pub ae_title: AeTitle,
    pub host: String,
    pub port: u16,
    /// Accept this AE title only from `host`.
    pub check_host: bool,
    pub permissions: Permissions,
    /// This peer speaks DICOM TLS: refused on the plain port, called over TLS.
    pub tls: bool,
    /// What this peer sends came from upstream (priors pushed by the central PACS): it is
    /// kept but never forwarded.
    pub upstream: bool,
    /// Trust anchors for calling this remote over TLS (a C-MOVE destination): this CA bundle,
    /// or the system roots without one. Never the modality CA (`client_ca`).
    pub ca_bundle: Option<PathBuf>,
    /// The client certificate presented when calling this remote; without it, the server
    /// certificate of `[dicom.tls]` is presented.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The certificate this AE must present on the TLS port (`certificate_names`,
    /// `certificate_sha256`); a bound AE is TLS-only.
    pub binding: Option<Binding>,
}

/// A SHA-256 fingerprint as written in a configuration: 64 hex digits, colons allowed
/// (`openssl x509 -fingerprint -sha256` prints it that way).
fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bad = || {
        format!(
            "{s:?} is not a SHA-256 fingerprint; use 64 hex digits, colons allowed, as `openssl x509 -noout -fingerprint -sha256 -in CERT` prints"
        )
    };
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    Full,
    Relaxed { flush_interval: Duration },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duplicates {
    KeepFirst,
    Overwrite,
}

/// `[storage] patient_conflict`: an instance whose Patient ID (with issuer) differs from the
/// patient its study is already held under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatientConflict {
    /// Store it, answer success, hold it unserved until a person resolves it.
    Quarantine,
    /// Refuse it with a failure status whose Error Comment names both patients.
    Reject,
}

#[derive(Clone, Debug)]
pub struct Storage {
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub duplicates: Duplicates,
    pub patient_conflict: PatientConflict,
    pub min_free_bytes: u64,
    pub index_cache_bytes: u64,
    /// Above this percentage of the data volume, confirmed instances are evicted.
    pub high_watermark: u8,
    /// Down to this percentage.
    pub low_watermark: u8,
    /// Treat the archive as having this much room, counting only its own files.
    pub capacity_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Audit {
    pub path: PathBuf,
    /// A new file starts at this size (and at the first event of each UTC day).
    pub rotate_bytes: u64,
    /// Rotated files older than this many days are deleted (`None`: only `max_bytes` bounds).
    pub retention_days: Option<u32>,
    /// The whole trail never exceeds this; the oldest rotated files go first.
    pub max_bytes: u64,
    /// Rejected associations written per peer address and reason per minute; the rest
    /// become one summary line (0: every one is written).
    pub rejections_per_minute: u32,
}

#[derive(Clone, Debug)]
pub struct Log {
    /// A tracing filter directive such as `info` or `outpost=debug,info`.
    pub filter: String,
    pub json: bool,
}

/// The admin panel's HTTPS listener (`[web]`).
#[derive(Clone, Debug)]
pub struct Web {
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// An operator certificate (PEM chain and key); without one the panel makes and keeps a
    /// self-signed certificate under the data directory.
    pub certificate: Option<WebCertificate>,
}

#[derive(Clone, Debug)]
pub struct WebCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One problem with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// Dotted key path, such as `dicom.remote[2].port`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Something valid in a configuration that will probably not do what the site wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    /// Dotted key path, as in [`Problem`].
    pub key: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.message)
    }
}

/// The warnings of a configuration, as `check-config` prints them: a count, then one line each.
pub struct Warnings<'a>(pub &'a [Warning]);

impl fmt::Display for Warnings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} warning{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for w in self.0 {
            writeln!(f, "  {w}")?;
        }
        Ok(())
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![Problem {
                file: name.clone(),
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Config::parse(&text, &name)
    }

    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Config::parse(EMBEDDED_DEFAULT, "embedded default").expect("the embedded default is valid")
    }

    /// Parses and validates configuration text; `source` names it in messages. Unknown keys
    /// are problems (as `check-config` reports them).
    pub fn parse(text: &str, source: &str) -> Result<Config, Problems> {
        Config::parse_as(text, source, Reading::Strict)
    }

    /// Reads a configuration file as `serve` does: as [`Config::load`], except that when
    /// the file's `written_by` names a newer Outpost than this build, its unknown keys
    /// (settings this build does not have yet) are warnings, not problems. After an A/B
    /// rollback the older image then still starts on the newer image's file.
    pub fn load_for_serve(path: &Path) -> Result<Config, Problems> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![Problem {
                file: name.clone(),
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Config::parse_as(&text, &name, Reading::Serve)
    }

    /// Parses configuration text by the rules of `reading`.
    pub fn parse_as(text: &str, source: &str, reading: Reading) -> Result<Config, Problems> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| {
            Problems(vec![Problem {
                file: source.to_string(),
                key: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }])
        })?;
        let problems = std::cell::RefCell::new(Vec::new());
        let unknown = std::cell::RefCell::new(Vec::new());
        let (config, written_by) = {
            let mut root = Reader::root(&doc, source, &problems, &unknown);
            let written_by = if root.has("written_by") {
                root.parse_str("written_by", None, Version::parse)
            } else {
                None
            };
            let config = build(&mut root, source);
            root.finish();
            (config, written_by)
        };
        let mut problems = problems.into_inner();
        let unknown = unknown.into_inner();
        let newer = written_by.filter(|v| *v > Version::this_build());
        let mut demoted = Vec::new();
        match (reading, newer) {
            (Reading::Serve, Some(v)) => {
                for u in unknown {
                    demoted.push(Warning {
                        file: u.file,
                        key: u.key,
                        message: format!(
                            "unknown key, ignored: the file was written by Outpost {v}, newer than this build ({}); remove it, or boot the newer image",
                            Version::this_build()
                        ),
                    });
                }
            }
            _ => problems.extend(unknown),
        }
        if problems.is_empty() {
            let mut config = config.expect("no problems means every value was read");
            config.warnings.extend(demoted);
            Ok(config)
        } else {
            Err(Problems(problems))
        }
    }
}

/// How strictly a configuration is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Every unknown key is a problem (`check-config`, and any file no newer build wrote).
    Strict,
    /// `serve`: unknown keys are warnings when `written_by` names a newer build.
    Serve,
}

/// An Outpost release version (`major.minor.patch`), as `written_by` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    /// This build's version (the workspace's).
    pub fn this_build() -> Version {
        Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate version is major.minor.patch")
    }

    /// Parses `major.minor.patch`; a pre-release or build suffix (`-rc1`, `+abc`) is ignored.
    pub(crate) fn parse(s: &str) -> Result<Version, String> {
        let core = s.split(['-', '+']).next().unwrap_or("");
        let parts: Vec<Option<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [Some(a), Some(b), Some(c)] => Ok(Version(*a, *b, *c)),
            _ => Err(format!(
                "{s:?} is not an Outpost version; write it as major.minor.patch, such as \"{}\"",
                env!("CARGO_PKG_VERSION")
            )),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

fn build(root: &mut Reader, source: &str) -> Option<Config> {
    let mut d = root.table("dicom");
    let ae_title = d.parse_str("ae_title", Some("OUTPOST"), AeTitle::parse);
    let bind = d.parse_str("bind", Some("0.0.0.0"), |s| {
        s.parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an IP address; use 0.0.0.0 for every interface or 127.0.0.1 for loopback"))
    });
    let port = d.port("port", Some(11112));
    let accept_unknown_callers = d.unknown_callers("accept_unknown_callers");
    let accept_unknown_sop_classes = d.bool("accept_unknown_sop_classes", false);
    let check_called_ae = d.bool("check_called_ae", true);
    let max_associations = d.int("max_associations", 32, 1, 10_000);
    let max_pdu = d.int("max_pdu", 262_144, 4096, 16 * 1024 * 1024);
    let association_timeout = d.seconds("association_timeout_s", 30, 1, 3600);
    let request_timeout = d.seconds("request_timeout_s", 5, 1, 300);
    let idle_timeout = d.seconds("idle_timeout_s", 300, 1, 86_400);
    let dimse_timeout = d.seconds("dimse_timeout_s", 60, 1, 3600);
    let max_find_results = d.int("max_find_results", 10_000, 1, 10_000_000);
    let shutdown_grace = d.seconds("shutdown_grace_s", 20, 0, 3600);
    let transcode_memory_limit = d
        .int("transcode_memory_limit_mb", 512, 16, 65_536)
        .map(|mb| mb * 1024 * 1024);
    let tls = if d.has("tls") {
        let mut t = d.table("tls");
        let tls = (|| {
            Some(Tls {
                port: t.port("port", Some(2762))?,
                certificate: t.path("certificate", None)?,
                private_key: t.path("private_key", None)?,
                client_ca: t.optional_path("client_ca"),
                require_binding: t.bool("require_binding", false)?,
            })
        })();
        if let Some(tls) = &tls
            && tls.require_binding
            && tls.client_ca.is_none()
        {
            t.problem(
                "require_binding",
                "require_binding checks client certificates, but none are requested; set client_ca to the CA that issues them".into(),
            );
        }
        t.finish();
        tls
    } else {
        None
    };
    let tls_section = &tls;
    let mut remotes = Vec::new();
    for mut r in d.array_of_tables("remote") {
        let remote = (|| {
            let ae = r.parse_str("ae_title", None, AeTitle::parse);
            let host = r.string("host", None);
            let port = r.port("port", None);
            let check_host = r.bool("check_host", false);
            let permissions = r.permissions("permissions");
            let tls = r.bool("tls", false);
            let upstream = r.bool("upstream", false);
            let ca_bundle = r.optional_path("ca_bundle");
            let client_certificate = r.optional_path("client_certificate");
            let client_key = r.optional_path("client_key");
            let names = r.string_list("certificate_names");
            if let Some(names) = &names
                && names.iter().any(|n| n.trim().is_empty())
            {
                r.problem(
                    "certificate_names",
                    "a certificate name is empty; list the DNS name, URI or common name the caller's certificate carries".into(),
                );
            }
            let sha256 = r.string_list("certificate_sha256").map(|list| {
                let mut out = Vec::new();
                for s in list {
                    match parse_sha256(&s) {
                        Ok(f) => out.push(f),
                        Err(e) => r.problem("certificate_sha256", e),
                    }
                }
                out
            });
            let bound = names.as_ref().is_some_and(|n| !n.is_empty())
                || sha256.as_ref().is_some_and(|f| !f.is_empty());
            if bound && tls != Some(true) {
                r.problem(
                    "tls",
                    "a certificate binding is checked on the TLS port only; set tls = true (the AE is then refused on the plain port)".into(),
                );
            }
            if bound && tls_section.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                // Reported at the key that made the binding.
                let key = if names.as_ref().is_some_and(|n| !n.is_empty()) {
                    "certificate_names"
                } else {
                    "certificate_sha256"
                };
                r.problem(
                    key,
                    "a certificate binding needs client certificates; set client_ca in [dicom.tls] to the CA that issues them".into(),
                );
            }
            if client_certificate.is_some() != client_key.is_some() {
                r.problem(
                    "client_key",
                    "client_certificate and client_key go together; set both or neither".into(),
                );
            }
            if tls == Some(false)
                && (ca_bundle.is_some() || client_certificate.is_some() || client_key.is_some())
            {
                r.problem(
                    "tls",
                    "ca_bundle, client_certificate and client_key are used only with tls = true"
                        .into(),
                );
            }
            Some(Remote {
                ae_title: ae?,
                host: host?,
                port: port?,
                check_host: check_host?,
                permissions: permissions?,
                tls: tls?,
                upstream: upstream?,
                ca_bundle,
                client_certificate,
                client_key,
                binding: bound.then(|| Binding {
                    names: names.unwrap_or_default(),
                    sha256: sha256.unwrap_or_default(),
                }),
            })
        })();
        if let Some(remote) = &remote {
            let dup = remotes
                .iter()
                .any(|o: &Remote| o.ae_title == remote.ae_title);
            if dup {
                r.problem(
                    "ae_title",
                    format!(
                        "AE title {} is listed twice in [[dicom.remote]]",
                        remote.ae_title
                    ),
                );
            }
            if remote.tls && tls.is_none() {
                r.problem(
                    "tls",
                    "this remote requires DICOM TLS but [dicom.tls] is not configured".into(),
                );
            }
        }
        r.finish();
        remotes.extend(remote);
    }
    d.finish();

    let mut s = root.table("storage");
    let data_dir = s.path("data_dir", Some("/var/lib/outpost"));
    let durability = s.parse_str("durability", Some("full"), |v| match v {
        "full" => Ok(true),
        "relaxed" => Ok(false),
        other => Err(format!("{other:?} is not a durability; use \"full\" (acknowledged means on stable storage) or \"relaxed\"")),
    });
    let flush_ms = s.int("relaxed_flush_ms", 1000, 10, 60_000);
    let duplicates = s.parse_str("duplicates", Some("keep-first"), |v| match v {
        "keep-first" => Ok(Duplicates::KeepFirst),
        "overwrite" => Ok(Duplicates::Overwrite),
        other => Err(format!(
            "{other:?} is not a duplicate policy; use \"keep-first\" or \"overwrite\""
        )),
    });
    let patient_conflict = s.parse_str("patient_conflict", Some("quarantine"), |v| match v {
        "quarantine" => Ok(PatientConflict::Quarantine),
        "reject" => Ok(PatientConflict::Reject),
        other => Err(format!(
            "{other:?} is not a patient conflict policy; use \"quarantine\" (store, hold unserved until resolved) or \"reject\" (refuse with a failure status)"
        )),
    });
    let min_free = s.int("min_free_mb", 1024, 0, u64::MAX / (1024 * 1024));
    let cache = s.int("index_cache_mb", 64, 4, 65_536);
    let high = s.int("high_watermark", 90, 1, 100);
    let low = s.int("low_watermark", 80, 0, 99);
    if let (Some(h), Some(l)) = (high, low)
        && l >= h
    {
        s.problem(
            "low_watermark",
            format!("{l} is not below high_watermark ({h}); eviction stops at the low one"),
        );
    }
    let capacity = if s.has("capacity_mb") {
        s.int("capacity_mb", 0, 1, u64::MAX / (1024 * 1024))
            .map(Some)
    } else {
        s.int("capacity_mb", 0, 0, 0).map(|_| None)
    };
    s.finish();

    let forward = forward::read(root);
    let health = health::read_health(root);
    let ups = health::read_ups(root, source);
    if let (Some(Some(u)), Some(grace)) = (&ups, shutdown_grace) {
        // From the first low reading to the UPS cutting power: a poll and the debounce to
        // decide, the grace period, about 60 s for forwarding, the monitors and the index's
        // final flush, the outlet-off command (eight request timeouts at most), then the
        // outlet delay, during which the operating system powers off.
        let outlet = if u.profile.has_outlet_command() {
            u.outlet_off_delay
        } else {
            Duration::ZERO
        };
        let needed =
            u.poll_interval + u.debounce + grace + Duration::from_secs(60) + u.timeout * 8 + outlet;
        if !u.shutdown_below.is_zero() && u.shutdown_below < needed {
            root.problem(
                "ups.shutdown_when_runtime_below_s",
                format!(
                    "{} s of runtime does not cover the power-off: poll_interval_s ({} s), debounce_s ({} s), dicom.shutdown_grace_s ({} s), about {} s to close the archive and command the UPS, and outlet_off_delay_s ({} s) add up to {} s; raise it or shorten those",
                    u.shutdown_below.as_secs(),
                    u.poll_interval.as_secs(),
                    u.debounce.as_secs(),
                    grace.as_secs(),
                    (Duration::from_secs(60) + u.timeout * 8).as_secs(),
                    outlet.as_secs(),
                    needed.as_secs()
                ),
            );
        }
    }
    let mut warnings = Vec::new();
    if let (Some(Some(u)), Some(grace)) = (&ups, shutdown_grace)
        && let Some(lb) = u.low_battery_warning
    {
        // The stop `outpost serve` runs (serve.rs): the grace period, then at most 10 s for
        // forwarding, 5 s for the monitors and 30 s for the index's final flush. It should be
        // over before the UPS's own low-battery warning starts, which on many models also
        // starts its own countdown to cutting the outlets.
        let stop = grace + Duration::from_secs(10 + 5 + 30);
        let wanted = stop + lb;
        if !u.shutdown_below.is_zero() && u.shutdown_below < wanted {
            warnings.push(Warning {
                file: source.to_string(),
                key: "ups.shutdown_when_runtime_below_s".into(),
                message: format!(
                    "{} s of runtime leaves the stop (dicom.shutdown_grace_s {} s, then up to 45 s for forwarding, the monitors and the index's final flush: {} s) running inside the UPS's own low-battery warning (ups.low_battery_warning_s, {} s); {} s are needed: raise it to at least that, or shorten the grace period",
                    u.shutdown_below.as_secs(),
                    grace.as_secs(),
                    stop.as_secs(),
                    lb.as_secs(),
                    wanted.as_secs()
                ),
            });
        }
    }
    let power = health::read_power(root);
    let alerts = health::read_alerts(root);

    let mut a = root.table("audit");
    let audit_path = a.optional_path("path");
    let rotate_mb = a.int("rotate_mb", 64, 1, 1024 * 1024);
    let retention_days = a.int("retention_days", 0, 0, 36_500);
    let audit_max_mb = a.int("max_mb", 1024, 1, u64::MAX / (1024 * 1024));
    let rejections_per_minute = a.int("rejections_per_minute", 20, 0, 1_000_000);
    if let (Some(r), Some(m)) = (rotate_mb, audit_max_mb)
        && r > m / 2
    {
        a.problem(
            "max_mb",
            format!("{m} MB leaves no room for a rotated file of rotate_mb ({r} MB); make max_mb at least twice rotate_mb"),
        );
    }
    a.finish();

    let mut l = root.table("log");
    let filter = l.string("level", Some("info"));
    let json = l.parse_str("format", Some("text"), |v| match v {
        "text" => Ok(false),
        "json" => Ok(true),
        other => Err(format!(
            "{other:?} is not a log format; use \"text\" or \"json\""
        )),
    });
    l.finish();

    let mut w = root.table("web");
    let web_enabled = w.bool("enabled", true);
    let web_listen = w.parse_str("listen", Some("127.0.0.1:8443"), |v| {
        v.parse::<std::net::SocketAddr>()
            .map_err(|_| format!("{v:?} is not an address and port such as \"0.0.0.0:443\""))
    });
    let web_cert = w.optional_path("cert");
    let web_key = w.optional_path("key");
    // One without the other is a half-finished edit; guessing would serve the wrong key.
    let web_certificate = match (w.has("cert"), w.has("key")) {
        (true, false) => {
            w.problem(
                "key",
                "cert is set but key is not; set both or neither".into(),
            );
            None
        }
        (false, true) => {
            w.problem(
                "cert",
                "key is set but cert is not; set both or neither".into(),
            );
            None
        }
        _ => web_cert
            .zip(web_key)
            .map(|(cert, key)| WebCertificate { cert, key }),
    };
    w.finish();

    let data_dir = data_dir?;
    let durability = if durability? {
        Durability::Full
    } else {
        Durability::Relaxed {
            flush_interval: Duration::from_millis(flush_ms?),
        }
    };
    Some(Config {
        source: source.to_string(),
        dicom: Dicom {
            ae_title: ae_title?,
            bind: bind?,
            port: port?,
            accept_unknown_callers: accept_unknown_callers?,
            accept_unknown_sop_classes: accept_unknown_sop_classes?,
            check_called_ae: check_called_ae?,
            max_associations: max_associations? as usize,
            max_pdu: max_pdu? as u32,
            association_timeout: association_timeout?,
            request_timeout: request_timeout?,
            idle_timeout: idle_timeout?,
            dimse_timeout: dimse_timeout?,
            max_find_results: max_find_results? as usize,
            shutdown_grace: shutdown_grace?,
            transcode_memory_limit: transcode_memory_limit?,
            tls,
            remotes,
        },
        storage: Storage {
            data_dir: data_dir.clone(),
            durability,
            duplicates: duplicates?,
            patient_conflict: patient_conflict?,
            min_free_bytes: min_free? * 1024 * 1024,
            index_cache_bytes: cache? * 1024 * 1024,
            high_watermark: high? as u8,
            low_watermark: low? as u8,
            capacity_bytes: capacity?.map(|mb| mb * 1024 * 1024),
        },
        forward: forward?,
        health: health?,
        ups: ups?,
        power: power?,
        alerts: alerts?,
        audit: Audit {
            path: audit_path.unwrap_or_else(|| data_dir.join("audit").join("audit.jsonl")),
            rotate_bytes: rotate_mb? * 1024 * 1024,
            retention_days: retention_days.map(|d| (d > 0).then_some(d as u32))?,
            max_bytes: audit_max_mb? * 1024 * 1024,
            rejections_per_minute: rejections_per_minute? as u32,
        },
        log: Log {
            filter: filter?,
            json: json?,
        },
        web: Web {
            enabled: web_enabled?,
            listen: web_listen?,
            certificate: web_certificate,
        },
        warnings,
    })
}
