//! Quarantine: instances whose patient disagrees with the study (or the stored instance) they
//! name, held durably but served to nobody until a person decides where they belong.
//!
//! The review's case (archive-review §8): a CT for patient P1 in study S, then an MR for P2
//! naming the same S (a technologist picked the wrong worklist entry and corrected the Patient
//! ID mid-exam). Filing the MR under S would show P2's images as P1's, with P1's demographics;
//! answering it with a failure makes the modality retry forever. So by default the instance's
//! file is kept (linked, counted, made durable by the checkpoint like any other) and a
//! `quarantine` row names it, in the same transaction that would have filed it, but it gets no
//! index entry at any level: C-FIND, C-MOVE and C-GET, which read the index only, never see it;
//! no outbox entry is written, so it is not forwarded; and eviction, which picks from the
//! index, never picks it. A person then assigns it to the study's patient, splits it into a
//! study of its own, or deletes it ([`crate::Store::resolve_quarantine`]).
//!
//! Identity is Patient ID plus Issuer of Patient ID, trailing padding trimmed (the patient key):
//! an empty Patient ID against a set one is a conflict like any other.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::record::{self, Extracted, InstanceRecord, SeriesRecord, StudyRecord};

/// Held instances by quarantine sequence number.
pub const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
/// The last quarantine sequence number handed out (under [`SEQ_KEY`]), never reused, so a
/// number in the audit trail names one instance only.
pub const SEQ: TableDefinition<&str, u64> = TableDefinition::new("quarantine_seq");
pub const SEQ_KEY: &str = "last";

/// What to do with an instance whose patient disagrees with its study's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PatientConflictPolicy {
    /// Keep it, answer success, serve it to nobody until a person resolves it.
    #[default]
    Quarantine,
    /// Refuse it with a failure status naming both patients and the study.
    Reject,
}

/// Why an instance was held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Its study (or the study its series is indexed under) belongs to another patient.
    StudyOfAnotherPatient,
    /// Its SOP Instance UID is already stored for another patient or study (a keep-first
    /// duplicate that is not a copy of the stored instance: a bad UID generator).
    UidOfAnotherInstance {
        stored_study: String,
        stored_patient_key: String,
    },
}

/// The disagreement found for one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientConflict {
    pub sop_instance_uid: String,
    /// The study the instance would be filed under (its own, or its series' study).
    pub study_uid: String,
    /// The instance's own patient key.
    pub patient_key: String,
    /// The patient the archive holds the study (or the colliding instance) under.
    pub study_patient_key: String,
    pub reason: Reason,
}

impl std::fmt::Display for PatientConflict {
    /// Leads with both Patient IDs, since a sender sees only the first 64 characters (Error
    /// Comment).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ours = record::patient_id_of(&self.patient_key);
        let theirs = record::patient_id_of(&self.study_patient_key);
        match &self.reason {
            Reason::StudyOfAnotherPatient => write!(
                f,
                "PatientID \"{ours}\" but study is \"{theirs}\": study {}",
                self.study_uid
            ),
            Reason::UidOfAnotherInstance { stored_study, .. } => write!(
                f,
                "PatientID \"{ours}\" but stored SOP UID is \"{theirs}\": study {stored_study} (SOP Instance UID {} is already stored for another patient or study)",
                self.sop_instance_uid
            ),
        }
    }
}

/// One held instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub seq: u64,
    pub conflict: PatientConflict,
    /// What the index would have filed, kept so the instance can be filed once resolved.
    pub extracted: Extracted,
    /// The file facts (path, size, CRC, source AE, time received).
    pub record: InstanceRecord,
    /// When it was held, seconds since the Unix epoch.
    pub held_at: u64,
}

/// What a person decided for a held instance (the third way out, a study of its own, is
/// [`crate::Store::split_quarantined`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// File it under the patient of the study it names (its data set keeps its own Patient ID).
    Assign,
    /// Remove it: its row now, its file after the next checkpoint.
    Delete,
}

/// Why a resolution was not applied.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error(
        "no instance is held under quarantine number {0}; `Store::quarantined` lists those held"
    )]
    NotHeld(u64),
    #[error(
        "SOP Instance UID {0} is already stored for another patient or study, so it cannot be filed beside it; delete the held copy (or the stored one first)"
    )]
    UidTaken(String),
    #[error("quarantine number {seq} cannot be split: {reason}; assign or delete it instead")]
    Unsplittable { seq: u64, reason: String },
    #[error("the archive refused the split copy: {0}")]
    SplitRefused(Box<crate::IngestError>),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Whether filing `x` would put it under another patient: the patient of the study it names
/// (its series' study when the series is indexed), or, for a keep-first duplicate, the
/// patient or study of the stored instance. An overwrite of a study's only instance is a
/// correction, not a conflict: the study goes with the old copy.
pub fn find_conflict<I, S, T>(
    instances: &I,
    series: &S,
    studies: &T,
    x: &Extracted,
    overwrite: bool,
) -> Result<Option<PatientConflict>, StoreError>
where
    I: ReadableTable<&'static str, &'static [u8]>,
    S: ReadableTable<&'static str, &'static [u8]>,
    T: ReadableTable<&'static str, &'static [u8]>,
{
    let study_of = |uid: &str| -> Result<Option<StudyRecord>, StoreError> {
        match studies.get(uid)? {
            Some(v) => Ok(Some(record::decode(v.value())?)),
            None => Ok(None),
        }
    };
    let old: Option<InstanceRecord> = match instances.get(x.sop_instance_uid.as_str())? {
        Some(v) => Some(record::decode(v.value())?),
        None => None,
    };
    if let Some(old) = &old
        && !overwrite
    {
        let stored_patient = study_of(&old.study_uid)?
            .map(|s| s.patient_key)
            .unwrap_or_default();
        if old.study_uid != x.study_uid || stored_patient != x.patient_key {
            return Ok(Some(PatientConflict {
                sop_instance_uid: x.sop_instance_uid.clone(),
                study_uid: x.study_uid.clone(),
                patient_key: x.patient_key.clone(),
                study_patient_key: stored_patient.clone(),
                reason: Reason::UidOfAnotherInstance {
                    stored_study: old.study_uid.clone(),
                    stored_patient_key: stored_patient,
                },
            }));
        }
        // A copy of what is stored: kept first, nothing to compare further.
        return Ok(None);
    }
    let study_uid = match series.get(x.series_uid.as_str())? {
        Some(v) => record::decode::<SeriesRecord>(v.value())?.study_uid,
        None => x.study_uid.clone(),
    };
    let Some(study) = study_of(&study_uid)? else {
        return Ok(None);
    };
    if study.patient_key == x.patient_key {
        return Ok(None);
    }
    if let Some(old) = &old
        && old.study_uid == study_uid
        && study.instances <= 1
    {
        return Ok(None);
    }
    Ok(Some(PatientConflict {
        sop_instance_uid: x.sop_instance_uid.clone(),
        study_uid,
        patient_key: x.patient_key.clone(),
        study_patient_key: study.patient_key,
        reason: Reason::StudyOfAnotherPatient,
    }))
}

/// Every held instance, oldest first.
pub fn list(txn: &redb::ReadTransaction) -> Result<Vec<Held>, StoreError> {
    let table = txn.open_table(QUARANTINE)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        out.push(record::decode(row?.1.value())?);
    }
    Ok(out)
}
