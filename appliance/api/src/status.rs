//! What `outpost status` and `outpost queue` show, as typed data both ends share: the
//! service builds it, the command line (and later the panel) reads the same types back.
//!
//! The archive's records (queue summaries, dead letters, held corrections) are twins of the
//! store's durable types with the same fields and JSON shape: the API answers in these, so
//! a change to what the index stores never changes the API unless someone changes it here.

use serde::{Deserialize, Serialize};

/// The appliance's state for people.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// The operating system (`PRETTY_NAME` of os-release) and the kernel release, which a
    /// technician needs beside the appliance's own version.
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub kernel: String,
    /// Unix seconds when the service started, and seconds since.
    pub started_at: u64,
    pub uptime_s: u64,
    pub ae_title: String,
    pub listening: Vec<String>,
    pub data_dir: String,
    pub instances: u64,
    pub usage: Option<Usage>,
    /// The eviction watermarks, percent.
    pub high_watermark: u8,
    pub low_watermark: u8,
    pub destinations: Vec<QueueRow>,
    /// Critical: what start-up repair could not finish and kept for the next start (see
    /// `store::RepairAlert`), one sentence each.
    #[serde(default)]
    pub repair_alerts: Vec<String>,
    /// RAID, data volume, SMART, UPS and the hardware alerts.
    pub hardware: Hardware,
    /// Overwritten instances kept local until released, and their bytes.
    #[serde(default)]
    pub held_corrections: u64,
    #[serde(default)]
    pub held_correction_bytes: u64,
    /// Recalled copies that differ from the evicted one (all of them: each is a lost
    /// correction to chase).
    #[serde(default)]
    pub recall_mismatches: Vec<(String, RecallMismatch)>,
    /// Instances that wait for a confirmation that will not come, per destination.
    #[serde(default)]
    pub stalled_claims: Vec<StalledClaim>,
    /// Instances held in quarantine (patient conflicts) until a person resolves them.
    #[serde(default)]
    pub quarantined: u64,
    /// The archive's own alerts, from the four above.
    #[serde(default)]
    pub archive_alerts: Vec<ArchiveAlert>,
    /// The admin panel's certificate, `None` when the panel is off.
    #[serde(default)]
    pub panel: Option<Panel>,
    /// While no administrator exists: the path of the panel's one-time setup link
    /// (`/setup?token=...`). Only the local control socket and the panel (which nobody can
    /// log in to yet) carry it; the log only says that it exists.
    #[serde(default)]
    pub setup_link: Option<String>,
}

/// The admin panel's certificate, so a technician can compare its fingerprint with the one
/// the browser shows before trusting a self-signed certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Panel {
    pub address: String,
    /// SHA-256 of the certificate, `AB:CD:...`.
    pub sha256: String,
    /// Made by Outpost because no operator certificate is configured.
    pub self_signed: bool,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: i64,
}

/// The hardware's state: each monitor's latest reading, the policy's active alerts and
/// what it holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Hardware {
    pub raid: Section<Vec<health::raid::Array>>,
    pub volume: Section<health::volume::Volume>,
    pub smart: Section<Vec<health::smart::Device>>,
    /// `None` when no UPS is configured.
    pub ups: Option<UpsSection>,
    pub alerts: Vec<policy::Alert>,
    /// Why new instances are refused, when they are.
    pub ingest_held: Option<String>,
    /// Destinations whose routine forwarding waits (found down while on battery).
    pub forwarding_held: Vec<String>,
    /// The md arrays whose failure refuses new instances.
    pub data_arrays: Vec<String>,
}

/// One monitor's latest reading, or why it has none.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Section<T> {
    pub reading: Option<T>,
    pub error: Option<String>,
    /// Unix seconds of the last sample; 0 before the first.
    pub sampled_at: u64,
}

impl<T> Default for Section<T> {
    fn default() -> Self {
        Section {
            reading: None,
            error: None,
            sampled_at: 0,
        }
    }
}

/// The UPS: its name for people and its latest reading.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpsSection {
    pub name: String,
    pub reading: Option<ups::Reading>,
    pub sampled_at: u64,
}

/// An alert about the archive's content (not its hardware), with what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveAlert {
    /// "info", "warning", "error".
    pub severity: String,
    pub message: String,
}

/// One destination's row in `outpost queue`: the durable queue and the forwarder's view.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueueRow {
    pub queue: QueueSummary,
    pub live: Option<LiveState>,
}

/// The forwarder's view of a destination.
#[derive(Debug, Serialize, Deserialize)]
pub struct LiveState {
    pub kind: String,
    /// `up`, `degraded`, `down`.
    pub state: String,
    pub since: u64,
    pub last_error: Option<String>,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Outside the delivery window: only STAT and high priority go now.
    pub outside_window: bool,
    /// On battery with the link down: only STAT and high priority go now.
    #[serde(default)]
    pub held_on_battery: bool,
    /// Storage Commitment reports keep failing to come.
    #[serde(default)]
    pub commitment_alert: Option<String>,
}

/// One held instance as `outpost quarantine list` shows it: what a person needs to decide
/// (both Patient IDs, the study, why, where it came from), not the whole index record.
#[derive(Debug, Serialize, Deserialize)]
pub struct QuarantineRow {
    /// The number `outpost quarantine assign|delete` takes.
    pub seq: u64,
    pub sop_instance_uid: String,
    pub study_uid: String,
    pub modality: String,
    /// The instance's own Patient ID.
    pub patient_id: String,
    /// The Patient ID the archive holds the study (or the colliding instance) under.
    pub study_patient_id: String,
    /// Why it was held, one sentence.
    pub reason: String,
    /// Calling AE title that sent it ("" for imports).
    pub source_ae: String,
    pub bytes: u64,
    /// When it was held, Unix seconds.
    pub held_at: u64,
}

/// The archive's use of its volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    /// Bytes in stored instances.
    pub stored_bytes: u64,
}

impl Usage {
    pub fn percent(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return 100.0;
        }
        self.used_bytes as f64 * 100.0 / self.capacity_bytes as f64
    }
}

/// One destination's queue as the index counts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    pub destination: String,
    pub depth: u64,
    pub dead: u64,
    pub paused: bool,
    /// Unix seconds the oldest waiting entry was queued.
    pub oldest_enqueued_at: Option<u64>,
    pub last_error: Option<String>,
    /// Instances sent and waiting for a Storage Commitment report.
    pub awaiting_commitment: u64,
}

/// One queued instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub sop_instance_uid: String,
    pub study_uid: String,
    /// Unix seconds.
    pub enqueued_at: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix milliseconds before which it is not tried again.
    pub not_before_ms: u64,
}

/// An instance only a person can get delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub entry: QueueEntry,
    pub rank: u8,
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// A corrected instance kept local until a person releases it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCorrection {
    pub sop_instance_uid: String,
    pub destinations: Vec<String>,
    #[serde(default)]
    pub study_uid: String,
    #[serde(default)]
    pub bytes: u64,
    /// Unix seconds.
    #[serde(default)]
    pub since: u64,
}

/// Instances that wait for a destination's confirmation that will not come.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StalledClaim {
    pub destination: String,
    /// Still configured (its dead letters wait), or removed or renamed.
    pub configured: bool,
    pub instances: u64,
    pub bytes: u64,
    /// Of them, those routed nowhere else.
    pub sole: u64,
}

/// A recalled copy that differs from the evicted one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecallMismatch {
    pub evicted_size: u64,
    pub evicted_crc32c: u32,
    pub recalled_size: u64,
    pub recalled_crc32c: u32,
    /// Unix seconds.
    pub at: u64,
}
