//! The outbox: per-destination queues of instances to forward, kept in the index file and
//! written in the same transaction as the index entry, so that stored implies queued.
//!
//! The store knows destinations only by name. Which destinations an instance goes to is
//! decided by a [`Router`] the process hands in (`forward` implements it from the routing
//! rules); the store calls it while filing a new or overwritten instance and writes one entry
//! per route. Delivery state that only matters while the process runs (which entries a worker
//! holds) stays in the worker's memory: after a restart every entry is simply pending again,
//! which is what at-least-once delivery asks for.
//!
//! Tables, per destination `d`:
//! - `outbox/d`: key `(rank, seq)`, value a [`QueueEntry`]. Lower rank goes first (a STAT
//!   rule has rank 0); within a rank, arrival order (seq is one counter for the whole store).
//! - `dead/d`: key `seq`, value a [`DeadLetter`].
//!
//! And for all destinations: `upstream` (SOP Instance UID to the destinations it was routed
//! to and those that confirmed a copy, which is what cache eviction relies on),
//! `outbox_paused` (names of paused destinations), and `outbox_seq` in `meta`.

use std::collections::HashSet;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::cache::{EVICTED, UpstreamState};
use crate::index::{INSTANCES, META};
use crate::query::Retrievable;
use crate::record::{self, Extracted, InstanceRecord};
use crate::settle::{Backoff, Decision, settle_unconfirmed};
use crate::{Store, StoreError};

/// SOP Instance UID to its [`UpstreamState`]: where it was routed, who confirmed it.
pub(crate) const UPSTREAM: TableDefinition<&str, &[u8]> = TableDefinition::new("upstream");
pub(crate) const PAUSED: TableDefinition<&str, ()> = TableDefinition::new("outbox_paused");
/// Transaction UID to a [`Commitment`]: instances delivered to a destination that confirms by
/// Storage Commitment, waiting for its report.
pub(crate) const COMMITMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("commitments");
/// Reports that arrived before their transaction was recorded (a quick archive reports on
/// its own association while the delivering worker is still writing the transaction down):
/// transaction UID to (received at, report). Kept for an hour. Version 2: the report names
/// its sender and SOP classes; the version 1 table (`commitment_early_reports`) is no
/// longer read (its reports were at most an hour old; their transactions expire and go
/// again).
pub(crate) const EARLY_REPORTS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("commitment_early_reports_v2");
const EARLY_REPORT_LIFETIME_S: u64 = 3600;
/// Instances overwritten by a corrected copy (`duplicates = "overwrite"`): SOP Instance UID
/// to the destinations that acknowledged the corrected copy without that proving they hold
/// it (a keep-first PACS, Orthanc by default, answers success and keeps its old copy), as a
/// `Vec<String>`. While an instance is here, only destinations that replace their copies
/// ([`Router::replaces_copies`]) confirm it; the others' acknowledgements wait here until a
/// person releases them, so the only copy of a correction is never evicted on their word.
pub(crate) const OVERWRITTEN: TableDefinition<&str, &[u8]> =
    TableDefinition::new("overwritten_held");
/// Recalled copies that differ from the copy that was evicted: SOP Instance UID to a
/// [`RecallMismatch`]. The upstream archive held another version than the one we evicted.
pub(crate) const RECALL_MISMATCHES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("recall_mismatches");
/// At most this many early reports are kept per reporting AE (so one peer's flood cannot
/// crowd out another's), this many in all, of at most this many instances each.
pub const MAX_EARLY_REPORTS_PER_PEER: usize = 16;
const MAX_EARLY_REPORTS: u64 = 1024;
const MAX_EARLY_REPORT_SIZE: usize = 10_000;
const SEQ_KEY: &str = "outbox_seq";

/// Decides where a newly filed instance is forwarded. Called by the index writer inside its
/// transaction, so it must be quick and must not block.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// Every destination that can ever be routed to (their queues are created up front).
    fn destinations(&self) -> Vec<String>;
    /// The destinations (and rank, 0 most urgent) for an instance received from `source_ae`.
    fn route(&self, source_ae: &str, instance: &Extracted) -> Vec<Route>;
    /// Whether `destination` replaces the copy it holds when sent a new one of the same SOP
    /// Instance UID. Unless it does, its acknowledgement of an overwritten instance does not
    /// confirm the correction. The default is the safe assumption: it keeps its first copy.
    fn replaces_copies(&self, _destination: &str) -> bool {
        false
    }
}

/// An overwritten instance that stays local because destinations acknowledged the
/// correction without that proving they hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCorrection {
    pub sop_instance_uid: String,
    pub destinations: Vec<String>,
    /// The study of the corrected copy, its size, and when it was stored (Unix seconds):
    /// held since then.
    #[serde(default)]
    pub study_uid: String,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub since: u64,
}

/// Instances that wait for a confirmation from a destination that will not give it: the
/// destination dead-lettered them, or is no longer configured (removed or renamed). They are
/// never evicted until the letters are resubmitted and delivered or a person releases the
/// destination's claim ([`QueueOp::ReleaseClaim`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StalledClaim {
    pub destination: String,
    /// Still configured: the instances are its dead letters. Otherwise every instance routed
    /// to it and not confirmed waits for ever.
    pub configured: bool,
    pub instances: u64,
    pub bytes: u64,
    /// Of those, the instances routed to no other destination: releasing the claim leaves
    /// them with no upstream copy, so they stay local (they are not evicted).
    pub sole: u64,
}

/// A recalled copy that is not the copy that was evicted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecallMismatch {
    pub evicted_size: u64,
    pub evicted_crc32c: u32,
    pub recalled_size: u64,
    pub recalled_crc32c: u32,
    /// Unix seconds.
    pub at: u64,
}

/// One destination an instance is queued for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: String,
    pub rank: u8,
}

/// Where an entry sits in its destination's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    pub rank: u8,
    pub seq: u64,
}

/// One queued delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub sop_instance_uid: String,
    pub study_uid: String,
    /// Unix seconds when it was first queued.
    pub enqueued_at: u64,
    /// Failed attempts that counted against the retry policy.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix milliseconds before which it is not to be tried again.
    pub not_before_ms: u64,
}

/// A delivery given up on, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub entry: QueueEntry,
    pub rank: u8,
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// Instances delivered under one Storage Commitment transaction, waiting for the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    pub destination: String,
    /// Unix seconds when the commitment was requested.
    pub requested_at: u64,
    pub items: Vec<CommitItem>,
    /// The destination's backoff, carried with the transaction so that settling it can
    /// reschedule the instances the destination would not commit to, or give up on them.
    pub retry: Backoff,
}

/// One instance of a commitment transaction, with what it takes to queue it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitItem {
    pub rank: u8,
    pub sop_class_uid: String,
    /// The stored file that was delivered, so a commitment confirms only that copy.
    pub file: String,
    pub entry: QueueEntry,
}

/// What a destination reported for a commitment transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitmentReport {
    pub transaction_uid: String,
    /// SOP Instance UIDs it committed to.
    pub committed: Vec<String>,
    /// SOP Instance UIDs it did not, with the reason in words.
    pub failed: Vec<(String, String)>,
    /// (SOP Instance UID, SOP Class UID) of every instance the report names, as it named
    /// them: checked against the classes the transaction asked about.
    pub sop_classes: Vec<(String, String)>,
    /// Who sent it, when it came to the listener; `None` when it came on the association
    /// that requested the commitment (the destination itself, by construction).
    pub from: Option<Reporter>,
}

/// The sender of a report on the listener: its calling AE title and the destinations that
/// AE (from that host) may report for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reporter {
    pub ae_title: String,
    pub destinations: Vec<String>,
}

/// One peer that may send Storage Commitment reports to the listener: the AE title of a
/// destination configured for commitment, and the host it must come from (`Some` when the
/// AE is a remote with `check_host`). `outpost` builds the list from the forwarding
/// configuration and hands it to the listener as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MayReport {
    pub destination: String,
    pub ae_title: String,
    pub host: Option<String>,
}

/// What became of a report handed to [`Store::record_commitment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Its transaction was settled.
    Settled,
    /// Its transaction is not recorded (yet): the report waits for it.
    Kept,
    /// Not accepted; the transaction, if any, stays open.
    Refused(ReportRefusal),
}

/// Why a report was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefusal {
    #[error(
        "transaction {transaction_uid} was sent to destination {destination:?}; {ae_title} may report only for {allowed:?}"
    )]
    NotItsDestination {
        transaction_uid: String,
        destination: String,
        ae_title: String,
        allowed: Vec<String>,
    },
    #[error(
        "the report names instance {sop_instance_uid} as SOP class {reported}, but it was sent as {sent}"
    )]
    SopClassMismatch {
        sop_instance_uid: String,
        reported: String,
        sent: String,
    },
    #[error(
        "{ae_title} already has {MAX_EARLY_REPORTS_PER_PEER} reports waiting for transactions not recorded here; report {transaction_uid} is not kept"
    )]
    TooManyEarly {
        ae_title: String,
        transaction_uid: String,
    },
    #[error(
        "the report names {count} instances; at most {MAX_EARLY_REPORT_SIZE} are kept for a transaction not recorded here"
    )]
    TooLargeEarly { count: usize },
}

/// Why `report` may not settle `record`, if it may not: sent by an AE that is not the
/// transaction's destination, or naming an instance under another SOP class than it was
/// sent as.
fn refusal(
    transaction_uid: &str,
    record: &Commitment,
    report: &CommitmentReport,
) -> Option<ReportRefusal> {
    if let Some(from) = &report.from
        && !from.destinations.contains(&record.destination)
    {
        return Some(ReportRefusal::NotItsDestination {
            transaction_uid: transaction_uid.to_string(),
            destination: record.destination.clone(),
            ae_title: from.ae_title.clone(),
            allowed: from.destinations.clone(),
        });
    }
    for (sop, class) in &report.sop_classes {
        if let Some(item) = record
            .items
            .iter()
            .find(|i| &i.entry.sop_instance_uid == sop)
            && &item.sop_class_uid != class
        {
            return Some(ReportRefusal::SopClassMismatch {
                sop_instance_uid: sop.clone(),
                reported: class.clone(),
                sent: item.sop_class_uid.clone(),
            });
        }
    }
    None
}

/// Why an early report (its transaction not recorded) may not be kept, if it may not.
fn early_refusal(
    early: &impl ReadableTable<&'static str, &'static [u8]>,
    report: &CommitmentReport,
) -> Result<Option<ReportRefusal>, StoreError> {
    let size = report.committed.len() + report.failed.len();
    if size > MAX_EARLY_REPORT_SIZE {
        return Ok(Some(ReportRefusal::TooLargeEarly { count: size }));
    }
    let peer = report
        .from
        .as_ref()
        .map(|f| f.ae_title.as_str())
        .unwrap_or("");
    let mut held = 0;
    for row in early.iter()? {
        let (k, v) = row?;
        if k.value() == report.transaction_uid {
            // Replacing its own earlier copy does not count twice.
            continue;
        }
        let (_, r): (u64, CommitmentReport) = record::decode(v.value())?;
        if r.from.as_ref().map(|f| f.ae_title.as_str()).unwrap_or("") == peer {
            held += 1;
        }
    }
    if held >= MAX_EARLY_REPORTS_PER_PEER || early.len()? >= MAX_EARLY_REPORTS {
        return Ok(Some(ReportRefusal::TooManyEarly {
            ae_title: peer.to_string(),
            transaction_uid: report.transaction_uid.clone(),
        }));
    }
    Ok(None)
}

/// What settling a transaction came to.
enum Settle {
    Settled,
    /// No such transaction recorded.
    Unknown,
    Refused,
}

/// A queued delivery ready to be attempted, with the instance as it is stored now (`None`
/// when the instance is no longer in the archive).
#[derive(Clone, Debug)]
pub struct Queued {
    pub key: QueueKey,
    pub entry: QueueEntry,
    pub instance: Option<Retrievable>,
}

/// The ready entries at the head of a queue.
#[derive(Clone, Debug, Default)]
pub struct Peeked {
    pub ready: Vec<Queued>,
    /// The earliest `not_before_ms` among the entries skipped because they were not due.
    pub next_due_ms: Option<u64>,
}

/// A queue's state, for people.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSummary {
    pub destination: String,
    pub depth: u64,
    pub dead: u64,
    pub paused: bool,
    /// Unix seconds when the oldest pending entry was queued.
    pub oldest_enqueued_at: Option<u64>,
    /// The most recent per-instance error among pending entries.
    pub last_error: Option<String>,
    /// Delivered instances waiting for the destination's Storage Commitment report.
    pub awaiting_commitment: u64,
}

/// A change to the queues, applied by the index writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueOp {
    /// Delivered: remove the entry; `confirmed` records the upstream copy for eviction, if
    /// the archive still holds the very file that was delivered (`file`): a copy that
    /// replaced it meanwhile is not what the destination has.
    Ack {
        destination: String,
        key: QueueKey,
        sop_instance_uid: String,
        file: String,
        confirmed: bool,
    },
    /// Try again at `not_before_ms`; the entry moves behind its rank's newer entries.
    Retry {
        destination: String,
        key: QueueKey,
        reason: String,
        not_before_ms: u64,
        counts: bool,
    },
    /// Give up: move the entry to the dead letters with the reason.
    Dead {
        destination: String,
        key: QueueKey,
        reason: String,
    },
    /// Remove the entry without delivering (the instance is gone from the archive).
    Drop {
        destination: String,
        key: QueueKey,
    },
    /// Move dead letters back into the queue (all of them when `seqs` is empty).
    Resubmit {
        destination: String,
        seqs: Vec<u64>,
    },
    /// Make every waiting entry due now.
    RetryNow {
        destination: String,
    },
    Pause {
        destination: String,
        paused: bool,
    },
    /// Delivered, and Storage Commitment requested under `transaction_uid`: the entries leave
    /// the queue and wait for the report (`sop_class_uid` per entry, for a resend).
    AwaitCommitment {
        destination: String,
        transaction_uid: String,
        /// Queue key, SOP class and delivered file of each instance.
        items: Vec<(QueueKey, String, String)>,
        /// How soon, and how often, an instance the destination would not commit to is sent
        /// again.
        retry: Backoff,
    },
    /// The destination's report: committed instances count as confirmed upstream; the others
    /// are queued again with the reason.
    Committed(CommitmentReport),
    /// A person released held corrections (see [`Store::held_corrections`]).
    ReleaseCorrections {
        sop_instance_uids: Vec<String>,
    },
    /// A person gave up on `destination` confirming its instances: they no longer wait on
    /// it for eviction (only its dead-lettered ones when `dead_only`; every unconfirmed one
    /// for a destination no longer configured).
    ReleaseClaim {
        destination: String,
        dead_only: bool,
    },
    /// No report in time: every instance of the transaction is queued again.
    CommitmentExpired {
        transaction_uid: String,
        reason: String,
    },
}

impl QueueOp {
    pub fn destination(&self) -> &str {
        match self {
            QueueOp::Ack { destination, .. }
            | QueueOp::Retry { destination, .. }
            | QueueOp::Dead { destination, .. }
            | QueueOp::Drop { destination, .. }
            | QueueOp::Resubmit { destination, .. }
            | QueueOp::RetryNow { destination }
            | QueueOp::AwaitCommitment { destination, .. }
            | QueueOp::Pause { destination, .. } => destination,
            // These name a transaction; its record names the destination.
            QueueOp::Committed(_)
            | QueueOp::CommitmentExpired { .. }
            | QueueOp::ReleaseCorrections { .. }
            | QueueOp::ReleaseClaim { .. } => "",
        }
    }
}

fn queue_name(destination: &str) -> String {
    format!("outbox/{destination}")
}

fn dead_name(destination: &str) -> String {
    format!("dead/{destination}")
}

fn queue_def(name: &str) -> TableDefinition<'_, (u8, u64), &'static [u8]> {
    TableDefinition::new(name)
}

fn dead_def(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

/// Creates the queues of every destination the router knows, so readers never meet a
/// missing table.
pub(crate) fn create_tables(
    txn: &redb::WriteTransaction,
    destinations: &[String],
) -> Result<(), StoreError> {
    txn.open_table(UPSTREAM)?;
    txn.open_table(PAUSED)?;
    txn.open_table(COMMITMENTS)?;
    txn.open_table(EARLY_REPORTS)?;
    txn.open_table(OVERWRITTEN)?;
    txn.open_table(RECALL_MISMATCHES)?;
    for d in destinations {
        txn.open_table(queue_def(&queue_name(d)))?;
        txn.open_table(dead_def(&dead_name(d)))?;
    }
    Ok(())
}

fn read_seq(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META)?;
    let seq = meta.get(SEQ_KEY)?.map(|v| {
        let mut b = [0u8; 8];
        let v = v.value();
        let n = v.len().min(8);
        b[..n].copy_from_slice(&v[..n]);
        u64::from_le_bytes(b)
    });
    Ok(seq.unwrap_or(0))
}

fn write_seq(txn: &redb::WriteTransaction, seq: u64) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    meta.insert(SEQ_KEY, seq.to_le_bytes().as_slice())?;
    Ok(())
}

/// Queues filed instances within the index writer's transaction. Built once per
/// transaction: it reads the sequence counter at the start and writes it back at the end.
pub(crate) struct Enqueuer<'r> {
    router: &'r dyn Router,
    seq: u64,
    queued: usize,
}

impl<'r> Enqueuer<'r> {
    pub fn new(
        router: &'r dyn Router,
        txn: &redb::WriteTransaction,
    ) -> Result<Enqueuer<'r>, StoreError> {
        Ok(Enqueuer {
            router,
            seq: read_seq(txn)?,
            queued: 0,
        })
    }

    /// Queues one instance, new or overwritten, for every destination it routes to.
    pub fn enqueue(
        &mut self,
        txn: &redb::WriteTransaction,
        x: &Extracted,
        source_ae: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let routes = self.router.route(source_ae, x);
        // A new copy starts unconfirmed everywhere it goes; one routed nowhere has no
        // upstream state at all, so it is never evicted.
        let mut upstream = txn.open_table(UPSTREAM)?;
        if routes.is_empty() {
            upstream.remove(x.sop_instance_uid.as_str())?;
        } else {
            let state = UpstreamState {
                routed: routes.iter().map(|r| r.destination.clone()).collect(),
                confirmed: Vec::new(),
            };
            upstream.insert(
                x.sop_instance_uid.as_str(),
                record::encode(&state).as_slice(),
            )?;
        }
        drop(upstream);
        for route in routes {
            self.seq += 1;
            let entry = QueueEntry {
                sop_instance_uid: x.sop_instance_uid.clone(),
                study_uid: x.study_uid.clone(),
                enqueued_at: now,
                attempts: 0,
                last_error: None,
                not_before_ms: 0,
            };
            let name = queue_name(&route.destination);
            let mut table = txn.open_table(queue_def(&name))?;
            table.insert((route.rank, self.seq), record::encode(&entry).as_slice())?;
            self.queued += 1;
        }
        Ok(())
    }

    /// Saves the sequence counter; returns how many entries were queued.
    pub fn finish(self, txn: &redb::WriteTransaction) -> Result<usize, StoreError> {
        if self.queued > 0 {
            write_seq(txn, self.seq)?;
        }
        Ok(self.queued)
    }
}

/// Applies queue operations within the index writer's transaction.
pub(crate) fn apply(
    txn: &redb::WriteTransaction,
    ops: &[QueueOp],
    now: u64,
    router: Option<&dyn Router>,
) -> Result<(), StoreError> {
    let mut seq = None;
    for op in ops {
        match op {
            QueueOp::ReleaseCorrections { sop_instance_uids } => {
                for sop in sop_instance_uids {
                    release_correction(txn, sop)?;
                }
                continue;
            }
            QueueOp::ReleaseClaim {
                destination,
                dead_only,
            } => {
                release_claim(txn, destination, *dead_only)?;
                continue;
            }
            QueueOp::Committed(report) => {
                if let Settle::Unknown = settle_commitment(txn, report, None, &mut seq, router)? {
                    // Kept for its transaction, within bounds per reporting peer: a peer
                    // reporting transactions that are not ours can neither fill the index
                    // nor crowd out another peer's early reports.
                    let mut early = txn.open_table(EARLY_REPORTS)?;
                    if early_refusal(&early, report)?.is_none() {
                        early.insert(
                            report.transaction_uid.as_str(),
                            record::encode(&(now, report.clone())).as_slice(),
                        )?;
                    }
                }
                continue;
            }
            QueueOp::CommitmentExpired {
                transaction_uid,
                reason,
            } => {
                let report = CommitmentReport {
                    transaction_uid: transaction_uid.clone(),
                    ..CommitmentReport::default()
                };
                settle_commitment(txn, &report, Some(reason), &mut seq, router)?;
                continue;
            }
            _ => {}
        }
        let name = queue_name(op.destination());
        let mut queue = txn.open_table(queue_def(&name))?;
        match op {
            QueueOp::Committed(_)
            | QueueOp::CommitmentExpired { .. }
            | QueueOp::ReleaseCorrections { .. }
            | QueueOp::ReleaseClaim { .. } => {}
            QueueOp::AwaitCommitment {
                destination,
                transaction_uid,
                items,
                retry,
            } => {
                let mut record = Commitment {
                    destination: destination.clone(),
                    requested_at: now,
                    items: Vec::new(),
                    retry: retry.clone(),
                };
                for (key, class, file) in items {
                    let Some(old) = queue.remove((key.rank, key.seq))? else {
                        continue;
                    };
                    let entry: QueueEntry = record::decode(old.value())?;
                    drop(old);
                    record.items.push(CommitItem {
                        rank: key.rank,
                        sop_class_uid: class.clone(),
                        file: file.clone(),
                        entry,
                    });
                }
                drop(queue);
                if !record.items.is_empty() {
                    txn.open_table(COMMITMENTS)?
                        .insert(transaction_uid.as_str(), record::encode(&record).as_slice())?;
                }
                // The report may already be here; old unclaimed ones are dropped.
                let mut early_report = None;
                {
                    let mut early = txn.open_table(EARLY_REPORTS)?;
                    let mut stale = Vec::new();
                    for row in early.iter()? {
                        let (k, v) = row?;
                        let (at, report): (u64, CommitmentReport) = record::decode(v.value())?;
                        if k.value() == transaction_uid.as_str() {
                            early_report = Some(report);
                            stale.push(k.value().to_string());
                        } else if now.saturating_sub(at) > EARLY_REPORT_LIFETIME_S {
                            stale.push(k.value().to_string());
                        }
                    }
                    for k in stale {
                        early.remove(k.as_str())?;
                    }
                }
                if let Some(report) = early_report {
                    settle_commitment(txn, &report, None, &mut seq, router)?;
                }
            }
            QueueOp::Ack {
                destination,
                key,
                sop_instance_uid,
                file,
                confirmed,
            } => {
                queue.remove((key.rank, key.seq))?;
                if *confirmed && still_stored(txn, sop_instance_uid, file)? {
                    confirm(txn, sop_instance_uid, destination, router)?;
                }
            }
            QueueOp::Retry {
                key,
                reason,
                not_before_ms,
                counts,
                ..
            } => {
                let Some(old) = queue.remove((key.rank, key.seq))? else {
                    continue;
                };
                let mut entry: QueueEntry = record::decode(old.value())?;
                drop(old);
                if *counts {
                    entry.attempts = entry.attempts.saturating_add(1);
                }
                entry.last_error = Some(reason.clone());
                entry.not_before_ms = *not_before_ms;
                let next = next_seq(txn, &mut seq)?;
                queue.insert((key.rank, next), record::encode(&entry).as_slice())?;
            }
            QueueOp::Dead {
                destination,
                key,
                reason,
            } => {
                let Some(old) = queue.remove((key.rank, key.seq))? else {
                    continue;
                };
                let mut entry: QueueEntry = record::decode(old.value())?;
                drop(old);
                entry.attempts = entry.attempts.saturating_add(1);
                entry.last_error = Some(reason.clone());
                let letter = DeadLetter {
                    entry,
                    rank: key.rank,
                    reason: reason.clone(),
                    at: now,
                };
                let dname = dead_name(destination);
                let mut dead = txn.open_table(dead_def(&dname))?;
                dead.insert(key.seq, record::encode(&letter).as_slice())?;
            }
            QueueOp::Drop { key, .. } => {
                queue.remove((key.rank, key.seq))?;
            }
            QueueOp::Resubmit { destination, seqs } => {
                let dname = dead_name(destination);
                let mut dead = txn.open_table(dead_def(&dname))?;
                let chosen: Vec<u64> = if seqs.is_empty() {
                    dead.iter()?
                        .map(|r| r.map(|(k, _)| k.value()))
                        .collect::<Result<_, _>>()?
                } else {
                    seqs.clone()
                };
                for s in chosen {
                    let Some(v) = dead.remove(s)? else { continue };
                    let letter: DeadLetter = record::decode(v.value())?;
                    drop(v);
                    let mut entry = letter.entry;
                    entry.attempts = 0;
                    entry.not_before_ms = 0;
                    let next = next_seq(txn, &mut seq)?;
                    queue.insert((letter.rank, next), record::encode(&entry).as_slice())?;
                }
            }
            QueueOp::RetryNow { .. } => {
                let waiting: Vec<((u8, u64), QueueEntry)> = queue
                    .iter()?
                    .filter_map(|r| match r {
                        Ok((k, v)) => match record::decode::<QueueEntry>(v.value()) {
                            Ok(e) if e.not_before_ms > 0 => Some(Ok((k.value(), e))),
                            Ok(_) => None,
                            Err(e) => Some(Err(StoreError::from(e))),
                        },
                        Err(e) => Some(Err(e.into())),
                    })
                    .collect::<Result<_, StoreError>>()?;
                for (k, mut e) in waiting {
                    e.not_before_ms = 0;
                    queue.insert(k, record::encode(&e).as_slice())?;
                }
            }
            QueueOp::Pause {
                destination,
                paused,
            } => {
                let mut table = txn.open_table(PAUSED)?;
                if *paused {
                    table.insert(destination.as_str(), ())?;
                } else {
                    table.remove(destination.as_str())?;
                }
            }
        }
    }
    if let Some(s) = seq {
        write_seq(txn, s)?;
    }
    Ok(())
}

/// Settles a commitment transaction: instances the report committed count as confirmed by
/// its destination; every other one (failed, not mentioned, or all of them when `expired`)
/// is queued again with the reason. An unknown transaction (not recorded yet, settled
/// before, or never ours) changes nothing, nor does a report [`refusal`] refuses: the
/// transaction stays open for its destination's own report.
fn settle_commitment(
    txn: &redb::WriteTransaction,
    report: &CommitmentReport,
    expired: Option<&String>,
    seq: &mut Option<u64>,
    router: Option<&dyn Router>,
) -> Result<Settle, StoreError> {
    let record: Commitment = {
        let mut table = txn.open_table(COMMITMENTS)?;
        let record: Commitment = match table.get(report.transaction_uid.as_str())? {
            Some(v) => record::decode(v.value())?,
            None => return Ok(Settle::Unknown),
        };
        if expired.is_none() && refusal(&report.transaction_uid, &record, report).is_some() {
            return Ok(Settle::Refused);
        }
        table.remove(report.transaction_uid.as_str())?;
        record
    };
    let name = queue_name(&record.destination);
    for item in record.items {
        let sop = item.entry.sop_instance_uid.clone();
        let committed = expired.is_none() && report.committed.contains(&sop);
        if committed && !still_stored(txn, &sop, &item.file)? {
            // Replaced by a newer copy since: that copy has its own queue entry.
            continue;
        }
        if committed {
            // A commitment proves the UID, not the content: a keep-first PACS commits to the
            // copy it already held, so an overwritten instance is held like an Ack.
            confirm(txn, &sop, &record.destination, router)?;
            continue;
        }
        let reason = match expired {
            Some(r) => r.clone(),
            None => report
                .failed
                .iter()
                .find(|(uid, _)| uid == &sop)
                .map(|(_, why)| format!("Storage Commitment failed: {why}"))
                .unwrap_or_else(|| {
                    "the Storage Commitment report did not mention this instance".to_string()
                }),
        };
        let mut entry = item.entry;
        let next = next_seq(txn, seq)?;
        let decision = settle_unconfirmed(reason, entry.attempts, &record.retry, now_ms());
        entry.attempts = entry.attempts.saturating_add(1);
        match decision {
            Decision::Dead { reason } => {
                entry.last_error = Some(reason.clone());
                let letter = DeadLetter {
                    entry,
                    rank: item.rank,
                    reason,
                    at: crate::layout::unix_now(),
                };
                txn.open_table(dead_def(&dead_name(&record.destination)))?
                    .insert(next, record::encode(&letter).as_slice())?;
            }
            Decision::Retry {
                reason,
                not_before_ms,
                ..
            } => {
                entry.last_error = Some(reason);
                entry.not_before_ms = not_before_ms;
                txn.open_table(queue_def(&name))?
                    .insert((item.rank, next), record::encode(&entry).as_slice())?;
            }
            // A retry verdict settles as a retry or a dead letter; were that ever to change,
            // the instance goes back in the queue at once rather than vanish.
            Decision::Ack { .. } | Decision::Drop | Decision::Leave { .. } => {
                txn.open_table(queue_def(&name))?
                    .insert((item.rank, next), record::encode(&entry).as_slice())?;
            }
        }
    }
    Ok(Settle::Settled)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether the archive still holds `file` for the instance (not replaced or evicted since).
/// Counts `destination`'s copy of `sop` as confirmed upstream, which is what lets the cache
/// evict it; for an overwritten instance and a destination that keeps its first copy, the
/// acknowledgement is only recorded, for a person to release.
fn confirm(
    txn: &redb::WriteTransaction,
    sop: &str,
    destination: &str,
    router: Option<&dyn Router>,
) -> Result<(), StoreError> {
    if !router.is_some_and(|r| r.replaces_copies(destination)) {
        let mut held = txn.open_table(OVERWRITTEN)?;
        let acknowledged = match held.get(sop)? {
            Some(v) => Some(record::decode::<Vec<String>>(v.value())?),
            None => None,
        };
        if let Some(mut acknowledged) = acknowledged {
            if !acknowledged.iter().any(|d| d == destination) {
                acknowledged.push(destination.to_string());
                held.insert(sop, record::encode(&acknowledged).as_slice())?;
            }
            return Ok(());
        }
    }
    let mut copies = txn.open_table(UPSTREAM)?;
    let mut state: UpstreamState = match copies.get(sop)? {
        Some(v) => record::decode(v.value())?,
        None => UpstreamState::default(),
    };
    if !state.confirmed.iter().any(|d| d == destination) {
        state.confirmed.push(destination.to_string());
        copies.insert(sop, record::encode(&state).as_slice())?;
    }
    Ok(())
}

/// Records that `sop` was just overwritten by a new copy: acknowledgements of the old copy
/// are forgotten with it, and those of the new one confirm it only from destinations that
/// replace their copies.
pub(crate) fn mark_overwritten(txn: &redb::WriteTransaction, sop: &str) -> Result<(), StoreError> {
    txn.open_table(OVERWRITTEN)?
        .insert(sop, record::encode(&Vec::<String>::new()).as_slice())?;
    Ok(())
}

/// A person released a held correction: the destinations that acknowledged it count as
/// confirmed, and later acknowledgements confirm as for any instance.
fn release_correction(txn: &redb::WriteTransaction, sop: &str) -> Result<(), StoreError> {
    let acknowledged = match txn.open_table(OVERWRITTEN)?.remove(sop)? {
        Some(v) => record::decode::<Vec<String>>(v.value())?,
        None => return Ok(()),
    };
    if !still_indexed(txn, sop)? {
        return Ok(());
    }
    for destination in acknowledged {
        confirm(txn, sop, &destination, None)?;
    }
    Ok(())
}

/// The SOP Instance UIDs among a destination's dead letters.
fn dead_sops(dead: &impl ReadableTable<u64, &'static [u8]>) -> Result<HashSet<String>, StoreError> {
    let mut out = HashSet::new();
    for row in dead.iter()? {
        let (_, v) = row?;
        out.insert(
            record::decode::<DeadLetter>(v.value())?
                .entry
                .sop_instance_uid,
        );
    }
    Ok(out)
}

/// A person released `destination`'s claim: its unconfirmed instances (only the
/// dead-lettered ones when `dead_only`) are no longer routed to it, so eviction waits only
/// for the other destinations; one routed nowhere else keeps no upstream state, which means
/// it stays local, like any instance routed nowhere.
fn release_claim(
    txn: &redb::WriteTransaction,
    destination: &str,
    dead_only: bool,
) -> Result<(), StoreError> {
    let dead = if dead_only {
        let name = dead_name(destination);
        dead_sops(&txn.open_table(dead_def(&name))?)?
    } else {
        HashSet::new()
    };
    let mut upstream = txn.open_table(UPSTREAM)?;
    let mut changed = Vec::new();
    for row in upstream.iter()? {
        let (k, v) = row?;
        let state: UpstreamState = record::decode(v.value())?;
        let waits = state.routed.iter().any(|d| d == destination)
            && !state.confirmed.iter().any(|d| d == destination);
        if waits && (!dead_only || dead.contains(k.value())) {
            changed.push((k.value().to_string(), state));
        }
    }
    for (sop, mut state) in changed {
        state.routed.retain(|d| d != destination);
        if state.routed.is_empty() {
            upstream.remove(sop.as_str())?;
        } else {
            upstream.insert(sop.as_str(), record::encode(&state).as_slice())?;
        }
    }
    Ok(())
}

fn still_indexed(txn: &redb::WriteTransaction, sop: &str) -> Result<bool, StoreError> {
    Ok(txn.open_table(INSTANCES)?.get(sop)?.is_some())
}

/// Records that a recalled copy of `sop` differs from the copy that was evicted.
pub(crate) fn record_recall_mismatch(
    txn: &redb::WriteTransaction,
    sop: &str,
    mismatch: &RecallMismatch,
) -> Result<(), StoreError> {
    txn.open_table(RECALL_MISMATCHES)?
        .insert(sop, record::encode(mismatch).as_slice())?;
    Ok(())
}

fn still_stored(txn: &redb::WriteTransaction, sop: &str, file: &str) -> Result<bool, StoreError> {
    let instances = txn.open_table(INSTANCES)?;
    let Some(v) = instances.get(sop)? else {
        return Ok(false);
    };
    let rec: InstanceRecord = record::decode(v.value())?;
    Ok(rec.file == file)
}

fn next_seq(txn: &redb::WriteTransaction, seq: &mut Option<u64>) -> Result<u64, StoreError> {
    let next = match *seq {
        Some(s) => s + 1,
        None => read_seq(txn)? + 1,
    };
    *seq = Some(next);
    Ok(next)
}

fn missing_is_empty<T: Default>(r: Result<T, redb::TableError>) -> Result<T, StoreError> {
    match r {
        Ok(t) => Ok(t),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(T::default()),
        Err(e) => Err(e.into()),
    }
}

impl Store {
    /// The ready entries at the head of a destination's queue, most urgent first, skipping
    /// those in `held` (leased by a worker) and those not due at `now_ms`. Looks at no more
    /// than `scan` entries, so a long queue of waiting entries costs a bounded read.
    pub fn outbox_peek(
        &self,
        destination: &str,
        limit: usize,
        held: &HashSet<QueueKey>,
        now_ms: u64,
        scan: usize,
    ) -> Result<Peeked, StoreError> {
        let txn = self.db()?.begin_read()?;
        let name = queue_name(destination);
        let queue = match txn.open_table(queue_def(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Peeked::default()),
            Err(e) => return Err(e.into()),
        };
        let instances = txn.open_table(INSTANCES)?;
        let evicted = txn.open_table(EVICTED)?;
        let mut out = Peeked::default();
        for row in queue.iter()?.take(scan) {
            let (k, v) = row?;
            let (rank, seq) = k.value();
            let key = QueueKey { rank, seq };
            if held.contains(&key) {
                continue;
            }
            let entry: QueueEntry = record::decode(v.value())?;
            if entry.not_before_ms > now_ms {
                out.next_due_ms = Some(
                    out.next_due_ms
                        .map_or(entry.not_before_ms, |d| d.min(entry.not_before_ms)),
                );
                continue;
            }
            let gone = evicted.get(entry.sop_instance_uid.as_str())?.is_some();
            let instance = match instances.get(entry.sop_instance_uid.as_str())? {
                // Evicted means every destination it was routed to confirmed it, so an entry
                // left for it is a repeat with nothing to send.
                Some(_) if gone => None,
                Some(v) => Some(Retrievable::of(
                    entry.sop_instance_uid.clone(),
                    record::decode(v.value())?,
                    false,
                )),
                None => None,
            };
            out.ready.push(Queued {
                key,
                entry,
                instance,
            });
            if out.ready.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Depth, dead letters, pause state, oldest entry and last error of a destination's queue.
    /// Reads every pending entry (for the oldest and the last error): meant for people, not
    /// for the delivery path.
    pub fn outbox_summary(&self, destination: &str) -> Result<QueueSummary, StoreError> {
        let txn = self.db()?.begin_read()?;
        let mut summary = QueueSummary {
            destination: destination.to_string(),
            ..QueueSummary::default()
        };
        let name = queue_name(destination);
        if let Some(queue) = missing_is_empty(txn.open_table(queue_def(&name)).map(Some))? {
            summary.depth = queue.len()?;
            let mut latest_error_seq = 0;
            for row in queue.iter()? {
                let (k, v) = row?;
                let entry: QueueEntry = record::decode(v.value())?;
                summary.oldest_enqueued_at = Some(
                    summary
                        .oldest_enqueued_at
                        .map_or(entry.enqueued_at, |o| o.min(entry.enqueued_at)),
                );
                let seq = k.value().1;
                if entry.last_error.is_some() && seq >= latest_error_seq {
                    latest_error_seq = seq;
                    summary.last_error = entry.last_error;
                }
            }
        }
        let dname = dead_name(destination);
        if let Some(dead) = missing_is_empty(txn.open_table(dead_def(&dname)).map(Some))? {
            summary.dead = dead.len()?;
        }
        if let Some(paused) = missing_is_empty(txn.open_table(PAUSED).map(Some))? {
            summary.paused = paused.get(destination)?.is_some();
        }
        drop(txn);
        summary.awaiting_commitment = self
            .commitments(destination)?
            .iter()
            .map(|(_, c)| c.items.len() as u64)
            .sum();
        Ok(summary)
    }

    /// Whether a destination is paused.
    pub fn outbox_paused(&self, destination: &str) -> Result<bool, StoreError> {
        let txn = self.db()?.begin_read()?;
        match missing_is_empty(txn.open_table(PAUSED).map(Some))? {
            Some(t) => Ok(t.get(destination)?.is_some()),
            None => Ok(false),
        }
    }

    /// A destination's dead letters, oldest first, at most `limit`.
    pub fn dead_letters(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let dname = dead_name(destination);
        let Some(dead) = missing_is_empty(txn.open_table(dead_def(&dname)).map(Some))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in dead.iter()?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), record::decode(v.value())?));
        }
        Ok(out)
    }

    /// Whether the archive still holds `file` as the current copy of an instance (not
    /// replaced by an overwrite, evicted or deleted since it was queued).
    pub fn holds_file(&self, sop_instance_uid: &str, file: &str) -> Result<bool, StoreError> {
        let txn = self.db()?.begin_read()?;
        if txn.open_table(EVICTED)?.get(sop_instance_uid)?.is_some() {
            return Ok(false);
        }
        let instances = txn.open_table(INSTANCES)?;
        let Some(v) = instances.get(sop_instance_uid)? else {
            return Ok(false);
        };
        let rec: InstanceRecord = record::decode(v.value())?;
        Ok(rec.file == file)
    }

    /// A destination's commitment transactions waiting for their reports.
    pub fn commitments(&self, destination: &str) -> Result<Vec<(String, Commitment)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let Some(table) = missing_is_empty(txn.open_table(COMMITMENTS).map(Some))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let c: Commitment = record::decode(v.value())?;
            if c.destination == destination {
                out.push((k.value().to_string(), c));
            }
        }
        Ok(out)
    }

    /// Records a destination's Storage Commitment report (from whichever association it
    /// came on). A report from an AE that may not report for the transaction's destination,
    /// or naming an instance under another SOP class, is refused and changes nothing; so is
    /// an early one beyond its sender's bound. The writer checks again in its transaction.
    pub async fn record_commitment(
        &self,
        report: CommitmentReport,
    ) -> Result<Recorded, StoreError> {
        let known = {
            let txn = self.db()?.begin_read()?;
            let record = match missing_is_empty(txn.open_table(COMMITMENTS).map(Some))? {
                Some(table) => match table.get(report.transaction_uid.as_str())? {
                    Some(v) => Some(record::decode::<Commitment>(v.value())?),
                    None => None,
                },
                None => None,
            };
            match record {
                Some(record) => {
                    if let Some(r) = refusal(&report.transaction_uid, &record, &report) {
                        return Ok(Recorded::Refused(r));
                    }
                    true
                }
                None => {
                    if let Some(early) = missing_is_empty(txn.open_table(EARLY_REPORTS).map(Some))?
                        && let Some(r) = early_refusal(&early, &report)?
                    {
                        return Ok(Recorded::Refused(r));
                    }
                    false
                }
            }
        };
        self.outbox_apply(vec![QueueOp::Committed(report)]).await?;
        Ok(if known {
            Recorded::Settled
        } else {
            Recorded::Kept
        })
    }

    /// Which of `seqs` are dead letters of a destination.
    pub fn dead_letters_present(
        &self,
        destination: &str,
        seqs: &[u64],
    ) -> Result<Vec<u64>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let dname = dead_name(destination);
        let Some(dead) = missing_is_empty(txn.open_table(dead_def(&dname)).map(Some))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for s in seqs {
            if dead.get(*s)?.is_some() {
                out.push(*s);
            }
        }
        Ok(out)
    }

    /// The destinations that confirmed a copy of an instance.
    pub fn upstream_copies(&self, sop_instance_uid: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let Some(copies) = missing_is_empty(txn.open_table(UPSTREAM).map(Some))? else {
            return Ok(Vec::new());
        };
        match copies.get(sop_instance_uid)? {
            Some(v) => Ok(record::decode::<UpstreamState>(v.value())?.confirmed),
            None => Ok(Vec::new()),
        }
    }

    /// Overwritten instances kept local because destinations acknowledged the correction
    /// without that proving they hold it (see [`Router::replaces_copies`]).
    pub fn held_corrections(&self) -> Result<Vec<HeldCorrection>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let Some(held) = missing_is_empty(txn.open_table(OVERWRITTEN).map(Some))? else {
            return Ok(Vec::new());
        };
        let instances = txn.open_table(INSTANCES)?;
        let mut out = Vec::new();
        for row in held.iter()? {
            let (k, v) = row?;
            let destinations: Vec<String> = record::decode(v.value())?;
            if !destinations.is_empty() {
                let rec = match instances.get(k.value())? {
                    Some(r) => Some(record::decode::<InstanceRecord>(r.value())?),
                    None => None,
                };
                out.push(HeldCorrection {
                    sop_instance_uid: k.value().to_string(),
                    destinations,
                    study_uid: rec
                        .as_ref()
                        .map(|r| r.study_uid.clone())
                        .unwrap_or_default(),
                    bytes: rec.as_ref().map_or(0, |r| r.size),
                    since: rec.as_ref().map_or(0, |r| r.received_at),
                });
            }
        }
        Ok(out)
    }

    /// A person has checked that the destinations hold the corrections (or accepts that
    /// they may not): their acknowledgements count as confirmation, so the instances may be
    /// evicted. Returns how many of `sop_instance_uids` were held.
    pub async fn release_corrections(
        &self,
        sop_instance_uids: Vec<String>,
    ) -> Result<usize, StoreError> {
        let held: HashSet<String> = self
            .held_corrections()?
            .into_iter()
            .map(|h| h.sop_instance_uid)
            .collect();
        let released = sop_instance_uids
            .iter()
            .filter(|s| held.contains(s.as_str()))
            .count();
        self.outbox_apply(vec![QueueOp::ReleaseCorrections { sop_instance_uids }])
            .await?;
        Ok(released)
    }

    /// Per destination, the instances kept local because they wait for a confirmation that
    /// will not come (see [`StalledClaim`]); `configured` names the destinations of the
    /// running configuration. Reads every upstream record: meant for people, not for the
    /// delivery path.
    pub fn stalled_claims(&self, configured: &[String]) -> Result<Vec<StalledClaim>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let Some(upstream) = missing_is_empty(txn.open_table(UPSTREAM).map(Some))? else {
            return Ok(Vec::new());
        };
        let instances = txn.open_table(INSTANCES)?;
        let evicted = txn.open_table(EVICTED)?;
        let mut dead: std::collections::HashMap<String, HashSet<String>> = Default::default();
        for d in configured {
            let name = dead_name(d);
            if let Some(t) = missing_is_empty(txn.open_table(dead_def(&name)).map(Some))? {
                dead.insert(d.clone(), dead_sops(&t)?);
            }
        }
        let mut claims: std::collections::BTreeMap<String, StalledClaim> = Default::default();
        for row in upstream.iter()? {
            let (k, v) = row?;
            let sop = k.value();
            let state: UpstreamState = record::decode(v.value())?;
            let mut size = None;
            for d in &state.routed {
                if state.confirmed.contains(d) {
                    continue;
                }
                let is_configured = configured.contains(d);
                let stalled = if is_configured {
                    dead.get(d).is_some_and(|s| s.contains(sop))
                } else {
                    true
                };
                if !stalled {
                    continue;
                }
                let bytes = match size {
                    Some(b) => b,
                    None => {
                        let b = match instances.get(sop)? {
                            Some(_) if evicted.get(sop)?.is_some() => 0,
                            Some(r) => record::decode::<InstanceRecord>(r.value())?.size,
                            None => 0,
                        };
                        size = Some(b);
                        b
                    }
                };
                let c = claims.entry(d.clone()).or_insert_with(|| StalledClaim {
                    destination: d.clone(),
                    configured: is_configured,
                    ..StalledClaim::default()
                });
                c.instances += 1;
                c.bytes += bytes;
                if state.routed.len() == 1 {
                    c.sole += 1;
                }
            }
        }
        Ok(claims.into_values().collect())
    }

    /// Releases `destination`'s claim on the instances that wait for it in vain (see
    /// [`StalledClaim`]): for a configured destination its dead-lettered instances, for one
    /// no longer configured every unconfirmed instance. Returns what was released, as read
    /// just before.
    pub async fn release_claim(
        &self,
        destination: &str,
        configured: &[String],
    ) -> Result<StalledClaim, StoreError> {
        let is_configured = configured.iter().any(|d| d == destination);
        let claim = self
            .stalled_claims(configured)?
            .into_iter()
            .find(|c| c.destination == destination)
            .unwrap_or_else(|| StalledClaim {
                destination: destination.to_string(),
                configured: is_configured,
                ..StalledClaim::default()
            });
        if claim.instances > 0 {
            self.outbox_apply(vec![QueueOp::ReleaseClaim {
                destination: destination.to_string(),
                dead_only: is_configured,
            }])
            .await?;
        }
        Ok(claim)
    }

    /// Recalled copies that differ from the copy that was evicted.
    pub fn recall_mismatches(&self) -> Result<Vec<(String, RecallMismatch)>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let Some(t) = missing_is_empty(txn.open_table(RECALL_MISMATCHES).map(Some))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), record::decode(v.value())?));
        }
        Ok(out)
    }

    /// Applies queue operations through the index writer (durable at its next checkpoint).
    pub async fn outbox_apply(&self, ops: Vec<QueueOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.inner.committer.queue(ops).await
    }

    /// Changes whenever entries are queued or made due, so idle workers can wait on it.
    pub fn outbox_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.outbox_changes.subscribe()
    }
}
