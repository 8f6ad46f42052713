//! The redb index: table definitions, and filing one instance into (or out of) every level.
//!
//! Primary tables map a key to an encoded record: `patients` (patient key), `studies`,
//! `series` and `instances` (UIDs). Multimap tables link the levels and serve the lookups
//! C-FIND makes without a scan: a patient's studies, a study's series, a series' instances,
//! studies by date and by accession number, patients by name.

use dataset::encode::trim_padding;
use dataset::tags;
use redb::{
    MultimapTable, MultimapTableDefinition, ReadableMultimapTable, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};
use tracing::warn;

use crate::StoreError;
use crate::quarantine;
use crate::record::{
    self, Conflict, DEMOGRAPHICS, Extracted, InstanceRecord, PatientRecord, SeriesRecord,
    StudyRecord, decoded,
};

pub const PATIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("patients");
pub const STUDIES: TableDefinition<&str, &[u8]> = TableDefinition::new("studies");
pub const SERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("series");
pub const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
pub const PATIENT_STUDIES: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("patient_studies");
pub const STUDY_SERIES: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("study_series");
pub const SERIES_INSTANCES: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("series_instances");
pub const STUDIES_BY_DATE: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("studies_by_date");
pub const STUDIES_BY_ACCESSION: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("studies_by_accession");
pub const PATIENTS_BY_NAME: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("patients_by_name");
/// Studies by the patient name each study gave (which may differ from the patient record's).
pub const STUDIES_BY_NAME: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("studies_by_name");
/// Demographics conflicts, keyed `patient key NUL study UID`.
pub const CONFLICTS: TableDefinition<&str, &[u8]> = TableDefinition::new("patient_conflicts");
/// Files replaced by an overwrite, deleted once the overwrite is durable.
pub const PENDING_DELETES: TableDefinition<&str, ()> = TableDefinition::new("pending_deletes");
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The index schema version this build writes (`meta.schema_version`, the newest layout any
/// writer has used) and the version it reads as: it opens any index whose
/// `min_reader_version` is at most this.
pub const SCHEMA_VERSION: u32 = 1;

/// The oldest build (by `SCHEMA_VERSION`) that can read what this build writes. It rises only
/// when a change is one an older build would misread (a record changed in place, a table's
/// meaning changed); a change that only adds tables keeps it, so the previous image still
/// opens the index after an A/B rollback. See DESIGN.md, "Versions and rollback".
pub const MIN_READER_VERSION: u32 = 1;

/// Meta keys of the version rules (values are little-endian u32).
pub const META_SCHEMA_VERSION: &str = "schema_version";
pub const META_MIN_READER_VERSION: &str = "min_reader_version";
/// The `SCHEMA_VERSION` of the build that last opened the index for writing: derived tables
/// are rebuilt when it differs from the opening build's, since an older or newer build may
/// have changed the primary tables without keeping them.
pub const META_LAST_WRITER_VERSION: &str = "last_writer_version";

/// What filing an instance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filed {
    /// A new instance.
    New,
    /// The SOP Instance UID was already there and the first copy was kept.
    KeptFirst,
    /// The SOP Instance UID was already there and this copy replaced it; the old file is to
    /// be deleted.
    Overwrote { old_file: String, old_size: u64 },
    /// Its patient disagrees with its study's (or the stored instance's): its file is kept
    /// and a `quarantine` row names it, but it is filed at no level.
    Quarantined { seq: u64 },
}

/// The tables of one write transaction, opened once per batch.
pub struct Tables<'t> {
    pub patients: Table<'t, &'static str, &'static [u8]>,
    pub studies: Table<'t, &'static str, &'static [u8]>,
    pub series: Table<'t, &'static str, &'static [u8]>,
    pub instances: Table<'t, &'static str, &'static [u8]>,
    pub patient_studies: MultimapTable<'t, &'static str, &'static str>,
    pub study_series: MultimapTable<'t, &'static str, &'static str>,
    pub series_instances: MultimapTable<'t, &'static str, &'static str>,
    pub by_date: MultimapTable<'t, &'static str, &'static str>,
    pub by_accession: MultimapTable<'t, &'static str, &'static str>,
    pub by_name: MultimapTable<'t, &'static str, &'static str>,
    pub studies_by_name: MultimapTable<'t, &'static str, &'static str>,
    pub conflicts: Table<'t, &'static str, &'static [u8]>,
    pub pending_deletes: Table<'t, &'static str, ()>,
    pub quarantine: Table<'t, u64, &'static [u8]>,
    pub quarantine_seq: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, StoreError> {
        Ok(Tables {
            patients: txn.open_table(PATIENTS)?,
            studies: txn.open_table(STUDIES)?,
            series: txn.open_table(SERIES)?,
            instances: txn.open_table(INSTANCES)?,
            patient_studies: txn.open_multimap_table(PATIENT_STUDIES)?,
            study_series: txn.open_multimap_table(STUDY_SERIES)?,
            series_instances: txn.open_multimap_table(SERIES_INSTANCES)?,
            by_date: txn.open_multimap_table(STUDIES_BY_DATE)?,
            by_accession: txn.open_multimap_table(STUDIES_BY_ACCESSION)?,
            by_name: txn.open_multimap_table(PATIENTS_BY_NAME)?,
            studies_by_name: txn.open_multimap_table(STUDIES_BY_NAME)?,
            conflicts: txn.open_table(CONFLICTS)?,
            pending_deletes: txn.open_table(PENDING_DELETES)?,
            quarantine: txn.open_table(quarantine::QUARANTINE)?,
            quarantine_seq: txn.open_table(quarantine::SEQ)?,
        })
    }

    fn get<T: for<'de> serde::Deserialize<'de>>(
        table: &Table<'t, &'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match table.get(key)? {
            Some(v) => Ok(Some(record::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Files one instance at every level, or quarantines it when its patient disagrees with
    /// its study's (or, for a keep-first duplicate, with the stored instance's patient or
    /// study): see [`crate::quarantine`].
    pub fn file_or_quarantine(
        &mut self,
        x: &Extracted,
        instance: InstanceRecord,
        overwrite: bool,
        now: u64,
    ) -> Result<Filed, StoreError> {
        let conflict =
            quarantine::find_conflict(&self.instances, &self.series, &self.studies, x, overwrite)?;
        let Some(conflict) = conflict else {
            return self.file_instance(x, instance, overwrite, now);
        };
        let seq = self
            .quarantine_seq
            .get(quarantine::SEQ_KEY)?
            .map_or(0, |v| v.value())
            + 1;
        self.quarantine_seq.insert(quarantine::SEQ_KEY, seq)?;
        warn!(
            seq,
            sop = %x.sop_instance_uid,
            study = %conflict.study_uid,
            instance_patient = record::patient_id_of(&conflict.patient_key),
            study_patient = record::patient_id_of(&conflict.study_patient_key),
            source = %instance.source_ae,
            "patient conflict: instance quarantined (stored, answered success, not queryable, \
             retrievable or forwarded until resolved)"
        );
        let held = quarantine::Held {
            seq,
            conflict,
            extracted: x.clone(),
            record: InstanceRecord {
                study_uid: x.study_uid.clone(),
                series_uid: x.series_uid.clone(),
                ..instance
            },
            held_at: now,
        };
        self.quarantine
            .insert(seq, record::encode(&held).as_slice())?;
        Ok(Filed::Quarantined { seq })
    }

    /// Files one instance at every level. `instance` carries the file facts; its attribute
    /// fields are taken from `x`.
    pub fn file_instance(
        &mut self,
        x: &Extracted,
        instance: InstanceRecord,
        overwrite: bool,
        now: u64,
    ) -> Result<Filed, StoreError> {
        let mut filed = Filed::New;
        if let Some(old) = Self::get::<InstanceRecord>(&self.instances, &x.sop_instance_uid)? {
            if !overwrite {
                return Ok(Filed::KeptFirst);
            }
            self.unfile_instance(&x.sop_instance_uid, &old)?;
            filed = Filed::Overwrote {
                old_file: old.file,
                old_size: old.size,
            };
        }

        // An existing series decides the study, an existing study the patient.
        let existing_series = Self::get::<SeriesRecord>(&self.series, &x.series_uid)?;
        let study_uid = match &existing_series {
            Some(series) if series.study_uid != x.study_uid => {
                warn!(
                    series = %x.series_uid,
                    indexed_study = %series.study_uid,
                    instance_study = %x.study_uid,
                    "instance names a series that is indexed under another study; filed under the indexed study"
                );
                series.study_uid.clone()
            }
            _ => x.study_uid.clone(),
        };
        let existing_study = Self::get::<StudyRecord>(&self.studies, &study_uid)?;
        let patient_key = match &existing_study {
            Some(s) if s.patient_key != x.patient_key => {
                // The same study UID under another patient ID: keep the study where it is and
                // record the disagreement for a person to resolve.
                self.record_conflict(
                    &s.patient_key,
                    x,
                    &[(
                        "PatientID".into(),
                        record::patient_id_of(&s.patient_key).into(),
                        record::patient_id_of(&x.patient_key).into(),
                    )],
                    now,
                )?;
                s.patient_key.clone()
            }
            _ => x.patient_key.clone(),
        };
        let mut patient = match Self::get::<PatientRecord>(&self.patients, &patient_key)? {
            Some(p) => p,
            None => {
                let p = PatientRecord {
                    charset: x.charset.clone(),
                    attrs: x.patient.clone(),
                    studies: 0,
                    series: 0,
                    instances: 0,
                };
                let name = name_key(&decoded(&p.attrs, &p.charset, tags::PATIENT_NAME));
                self.by_name.insert(name.as_str(), patient_key.as_str())?;
                p
            }
        };
        let mut study = match existing_study {
            Some(s) => s,
            None => {
                let differences: Vec<(String, String, String)> = if patient.studies > 0 {
                    DEMOGRAPHICS
                        .iter()
                        .filter_map(|(tag, name)| {
                            let known = decoded(&patient.attrs, &patient.charset, *tag);
                            let said = decoded(&x.patient, &x.charset, *tag);
                            (known != said).then(|| ((*name).to_string(), known, said))
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                if !differences.is_empty() {
                    self.record_conflict(&patient_key, x, &differences, now)?;
                }
                let s = StudyRecord {
                    patient_key: patient_key.clone(),
                    charset: x.charset.clone(),
                    attrs: x.study.clone(),
                    series: 0,
                    instances: 0,
                    modalities: Vec::new(),
                    sop_classes: Vec::new(),
                };
                self.patient_studies
                    .insert(patient_key.as_str(), study_uid.as_str())?;
                let date = text_key(&s.attrs, tags::STUDY_DATE);
                self.by_date.insert(date.as_str(), study_uid.as_str())?;
                let accession = text_key(&s.attrs, tags::ACCESSION_NUMBER);
                if !accession.is_empty() {
                    self.by_accession
                        .insert(accession.as_str(), study_uid.as_str())?;
                }
                let name = name_key(&decoded(&s.attrs, &s.charset, tags::PATIENT_NAME));
                self.studies_by_name
                    .insert(name.as_str(), study_uid.as_str())?;
                patient.studies += 1;
                s
            }
        };

        // Series.
        let mut series = match existing_series {
            Some(s) => s,
            None => {
                self.study_series
                    .insert(study_uid.as_str(), x.series_uid.as_str())?;
                study.series += 1;
                patient.series += 1;
                SeriesRecord {
                    study_uid: study_uid.clone(),
                    charset: x.charset.clone(),
                    attrs: x.series.clone(),
                    modality: x.modality.clone(),
                    instances: 0,
                }
            }
        };
        series.instances += 1;
        study.instances += 1;
        patient.instances += 1;
        if !series.modality.is_empty() && !study.modalities.contains(&series.modality) {
            study.modalities.push(series.modality.clone());
        }
        if !study.sop_classes.contains(&x.sop_class_uid) {
            study.sop_classes.push(x.sop_class_uid.clone());
        }

        let series_uid = x.series_uid.as_str();
        self.series_instances
            .insert(series_uid, x.sop_instance_uid.as_str())?;
        self.instances.insert(
            x.sop_instance_uid.as_str(),
            record::encode(&InstanceRecord {
                study_uid: study_uid.clone(),
                series_uid: x.series_uid.clone(),
                ..instance
            })
            .as_slice(),
        )?;
        self.series
            .insert(series_uid, record::encode(&series).as_slice())?;
        self.studies
            .insert(study_uid.as_str(), record::encode(&study).as_slice())?;
        self.patients
            .insert(patient_key.as_str(), record::encode(&patient).as_slice())?;
        Ok(filed)
    }

    /// Takes an instance out of every level, removing series, studies and patients it leaves
    /// empty.
    pub fn unfile_instance(
        &mut self,
        sop_uid: &str,
        old: &InstanceRecord,
    ) -> Result<(), StoreError> {
        self.instances.remove(sop_uid)?;
        self.series_instances
            .remove(old.series_uid.as_str(), sop_uid)?;
        let Some(mut series) = Self::get::<SeriesRecord>(&self.series, &old.series_uid)? else {
            return Err(StoreError::Inconsistent(format!(
                "instance {sop_uid} names series {} that is not indexed",
                old.series_uid
            )));
        };
        let Some(mut study) = Self::get::<StudyRecord>(&self.studies, &series.study_uid)? else {
            return Err(StoreError::Inconsistent(format!(
                "series {} names study {} that is not indexed",
                old.series_uid, series.study_uid
            )));
        };
        let Some(mut patient) = Self::get::<PatientRecord>(&self.patients, &study.patient_key)?
        else {
            return Err(StoreError::Inconsistent(format!(
                "study {} names a patient that is not indexed",
                series.study_uid
            )));
        };
        series.instances = series.instances.saturating_sub(1);
        study.instances = study.instances.saturating_sub(1);
        patient.instances = patient.instances.saturating_sub(1);
        let study_uid = series.study_uid.clone();
        if series.instances == 0 {
            self.series.remove(old.series_uid.as_str())?;
            self.study_series
                .remove(study_uid.as_str(), old.series_uid.as_str())?;
            study.series = study.series.saturating_sub(1);
            patient.series = patient.series.saturating_sub(1);
            let mut modalities = Vec::new();
            for s in self.study_series.get(study_uid.as_str())? {
                let s = s?;
                if let Some(rec) = Self::get::<SeriesRecord>(&self.series, s.value())?
                    && !rec.modality.is_empty()
                    && !modalities.contains(&rec.modality)
                {
                    modalities.push(rec.modality);
                }
            }
            study.modalities = modalities;
        } else {
            self.series
                .insert(old.series_uid.as_str(), record::encode(&series).as_slice())?;
        }
        if study.series == 0 {
            self.studies.remove(study_uid.as_str())?;
            self.patient_studies
                .remove(study.patient_key.as_str(), study_uid.as_str())?;
            self.by_date.remove(
                text_key(&study.attrs, tags::STUDY_DATE).as_str(),
                study_uid.as_str(),
            )?;
            self.by_accession.remove(
                text_key(&study.attrs, tags::ACCESSION_NUMBER).as_str(),
                study_uid.as_str(),
            )?;
            let name = name_key(&decoded(&study.attrs, &study.charset, tags::PATIENT_NAME));
            self.studies_by_name
                .remove(name.as_str(), study_uid.as_str())?;
            patient.studies = patient.studies.saturating_sub(1);
        } else {
            self.studies
                .insert(study_uid.as_str(), record::encode(&study).as_slice())?;
        }
        if patient.studies == 0 {
            self.patients.remove(study.patient_key.as_str())?;
            let name = name_key(&decoded(
                &patient.attrs,
                &patient.charset,
                tags::PATIENT_NAME,
            ));
            self.by_name
                .remove(name.as_str(), study.patient_key.as_str())?;
        } else {
            self.patients.insert(
                study.patient_key.as_str(),
                record::encode(&patient).as_slice(),
            )?;
        }
        Ok(())
    }

    fn record_conflict(
        &mut self,
        patient_key: &str,
        x: &Extracted,
        differences: &[(String, String, String)],
        now: u64,
    ) -> Result<(), StoreError> {
        warn!(
            patient_id = record::patient_id_of(patient_key),
            study = %x.study_uid,
            differences = ?differences,
            "patient demographics conflict: the study disagrees with what the archive already holds for this patient; both are kept"
        );
        let key = format!("{patient_key}\u{0}{}", x.study_uid);
        let conflict = Conflict {
            patient_key: patient_key.to_string(),
            study_uid: x.study_uid.clone(),
            differences: differences.to_vec(),
            seen_at: now,
        };
        self.conflicts
            .insert(key.as_str(), record::encode(&conflict).as_slice())?;
        Ok(())
    }
}

/// The key under which a patient name is indexed: decoded, upper case, so that name prefix
/// queries (`DOE*`) become key ranges.
pub fn name_key(name: &str) -> String {
    name.trim().trim_end_matches(['^', '=', ' ']).to_uppercase()
}

/// An ASCII text attribute as an index key (dates, accession numbers).
pub fn text_key(attrs: &[record::Attr], tag: dataset::Tag) -> String {
    record::find(attrs, tag)
        .map(|a| String::from_utf8_lossy(trim_padding(&a.value)).into_owned())
        .unwrap_or_default()
}
