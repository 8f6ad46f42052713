//! The index's records, one per patient, study, series and instance, and how a walked data
//! set is split into them.
//!
//! Each record keeps the attributes C-FIND matches or returns at its level as raw bytes in
//! the character set of the instance that created the record, together with that character
//! set, so responses can return them byte for byte. Records are encoded with postcard behind
//! a version byte.

use dataset::charset::Charset;
use dataset::encode::trim_padding;
use dataset::{Tag, Vr, Walked, tags};
use serde::{Deserialize, Serialize};

/// The record version this build writes.
const RECORD_VERSION: u8 = 1;

/// The record versions this build decodes. The rule (DESIGN.md, "Versions and rollback"): a
/// record's encoding is never changed in place; a new field goes in a new table keyed like
/// the record, so a previous build, which knows only its own versions, never meets a record
/// it cannot read. Today that is exactly the version written.
const READS: &[u8] = &[RECORD_VERSION];

/// Longest value kept in the index; longer values (rare: long comments) are not indexed.
pub const MAX_INDEXED_VALUE: usize = 4096;

/// One attribute as stored in the index: binary values little endian, text values raw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub tag: u32,
    pub vr: [u8; 2],
    pub value: Vec<u8>,
}

impl Attr {
    pub fn tag(&self) -> Tag {
        Tag(self.tag)
    }
    pub fn vr(&self) -> Vr {
        Vr(self.vr)
    }
}

/// Attributes of one record, in tag order.
pub type Attrs = Vec<Attr>;

pub fn find(attrs: &[Attr], tag: Tag) -> Option<&Attr> {
    attrs.iter().find(|a| a.tag == tag.0)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientRecord {
    /// Raw Specific Character Set of the instance that created the record.
    pub charset: Vec<u8>,
    pub attrs: Attrs,
    pub studies: u32,
    pub series: u32,
    pub instances: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyRecord {
    pub patient_key: String,
    pub charset: Vec<u8>,
    /// Study attributes, plus the patient's demographics as this study gave them.
    pub attrs: Attrs,
    pub series: u32,
    pub instances: u64,
    pub modalities: Vec<String>,
    pub sop_classes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesRecord {
    pub study_uid: String,
    pub charset: Vec<u8>,
    pub attrs: Attrs,
    pub modality: String,
    pub instances: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    /// File path relative to the data directory.
    pub file: String,
    pub size: u64,
    /// CRC-32C of the whole file.
    pub crc32c: u32,
    pub dataset_offset: u64,
    pub charset: Vec<u8>,
    pub attrs: Attrs,
    /// When it was stored, seconds since the Unix epoch.
    pub received_at: u64,
    /// Calling AE title of the association that stored it ("" for imports).
    pub source_ae: String,
}

/// A patient-demographics disagreement between a study and the patient record it joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub patient_key: String,
    pub study_uid: String,
    /// `(attribute keyword, patient record value, value the study gave)`.
    pub differences: Vec<(String, String, String)>,
    pub seen_at: u64,
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_stdvec(record).expect("records always serialize"));
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RecordError> {
    match bytes.split_first() {
        Some((v, rest)) if READS.contains(v) => {
            postcard::from_bytes(rest).map_err(RecordError::Corrupt)
        }
        Some((v, _)) => Err(RecordError::Version(*v)),
        None => Err(RecordError::Empty),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("index record is corrupt: {0}")]
    Corrupt(postcard::Error),
    #[error(
        "index record has version {0}, this build reads versions {READS:?}; it was written by \
         another Outpost build: boot that image, or run `outpost verify`"
    )]
    Version(u8),
    #[error("index record is empty")]
    Empty,
}

/// Attributes indexed at the patient level (PS3.4 C.6.1.1.2 plus common optional keys).
pub const PATIENT_TAGS: &[Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::ISSUER_OF_PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_BIRTH_TIME,
    tags::PATIENT_SEX,
    tags::OTHER_PATIENT_IDS,
    tags::OTHER_PATIENT_NAMES,
    tags::ETHNIC_GROUP,
    tags::PATIENT_COMMENTS,
];

/// Attributes indexed at the study level (PS3.4 C.6.1.1.3 / C.6.2.1.2).
pub const STUDY_TAGS: &[Tag] = &[
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_DESCRIPTION,
    tags::NAME_OF_PHYSICIANS_READING_STUDY,
    tags::ADMITTING_DIAGNOSES_DESCRIPTION,
    tags::PATIENT_AGE,
    tags::PATIENT_SIZE,
    tags::PATIENT_WEIGHT,
    tags::OCCUPATION,
    tags::ADDITIONAL_PATIENT_HISTORY,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_ID,
];

/// Attributes indexed at the series level (PS3.4 C.6.1.1.4).
pub const SERIES_TAGS: &[Tag] = &[
    tags::SERIES_DATE,
    tags::SERIES_TIME,
    tags::MODALITY,
    tags::MANUFACTURER,
    tags::INSTITUTION_NAME,
    tags::STATION_NAME,
    tags::SERIES_DESCRIPTION,
    tags::PERFORMING_PHYSICIAN_NAME,
    tags::OPERATORS_NAME,
    tags::MANUFACTURER_MODEL_NAME,
    tags::BODY_PART_EXAMINED,
    tags::PROTOCOL_NAME,
    tags::SERIES_INSTANCE_UID,
    tags::SERIES_NUMBER,
    tags::FRAME_OF_REFERENCE_UID,
    tags::LATERALITY,
    tags::PERFORMED_PROCEDURE_STEP_START_DATE,
    tags::PERFORMED_PROCEDURE_STEP_START_TIME,
];

/// Attributes indexed at the instance level (PS3.4 C.6.1.1.5).
pub const INSTANCE_TAGS: &[Tag] = &[
    tags::IMAGE_TYPE,
    tags::SOP_CLASS_UID,
    tags::SOP_INSTANCE_UID,
    tags::ACQUISITION_DATE,
    tags::CONTENT_DATE,
    tags::ACQUISITION_TIME,
    tags::CONTENT_TIME,
    tags::ACQUISITION_NUMBER,
    tags::INSTANCE_NUMBER,
    tags::NUMBER_OF_FRAMES,
    tags::ROWS,
    tags::COLUMNS,
    tags::BITS_ALLOCATED,
];

/// Every tag the ingest walker captures, sorted.
pub fn capture_tags() -> Vec<Tag> {
    let mut all: Vec<Tag> = [PATIENT_TAGS, STUDY_TAGS, SERIES_TAGS, INSTANCE_TAGS]
        .concat()
        .into_iter()
        .chain([tags::SPECIFIC_CHARACTER_SET])
        .collect();
    all.sort();
    all.dedup();
    all
}

/// A data set's identity and per-level attributes, checked and ready for the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub patient_key: String,
    pub charset: Vec<u8>,
    pub patient: Attrs,
    pub study: Attrs,
    pub series: Attrs,
    pub instance: Attrs,
    pub modality: String,
}

/// Why a data set cannot be indexed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtractError {
    #[error("data set lacks {name} {tag}, which the archive needs to file it")]
    Missing { name: &'static str, tag: Tag },
    #[error("{name} {tag} is not a valid UID: {value:?}")]
    InvalidUid {
        name: &'static str,
        tag: Tag,
        value: String,
    },
}

/// Splits a walked data set into per-level attributes, checking the identifying UIDs.
pub fn extract(walked: &Walked) -> Result<Extracted, ExtractError> {
    let uid = |tag: Tag, name: &'static str| -> Result<String, ExtractError> {
        let e = walked.get(tag).ok_or(ExtractError::Missing { name, tag })?;
        let v = String::from_utf8_lossy(trim_padding(&e.value)).into_owned();
        if v.is_empty() {
            return Err(ExtractError::Missing { name, tag });
        }
        // UIDs are at most 64 characters of digits and dots (PS3.5 9.1); anything with
        // separators or controls would break the index's keys and is refused.
        if v.len() > 64 || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(ExtractError::InvalidUid {
                name,
                tag,
                value: v.chars().take(80).collect(),
            });
        }
        Ok(v)
    };
    let sop_instance_uid = uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    let sop_class_uid = uid(tags::SOP_CLASS_UID, "SOPClassUID")?;
    let study_uid = uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let series_uid = uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    let charset_raw = walked
        .get(tags::SPECIFIC_CHARACTER_SET)
        .map(|e| trim_padding(&e.value).to_vec())
        .unwrap_or_default();
    let charset = Charset::from_raw(&charset_raw);
    let text = |tag: Tag| -> String {
        walked
            .get(tag)
            .map(|e| {
                let v = trim_padding(&e.value);
                charset
                    .decode(v)
                    .unwrap_or_else(|| String::from_utf8_lossy(v).into_owned())
            })
            .unwrap_or_default()
    };
    let patient_key = patient_key(&text(tags::PATIENT_ID), &text(tags::ISSUER_OF_PATIENT_ID));
    let modality = text(tags::MODALITY);
    let pick = |level: &[Tag]| -> Attrs {
        walked
            .elements
            .iter()
            .filter(|e| level.contains(&e.tag) && e.value.len() <= MAX_INDEXED_VALUE)
            .map(|e| Attr {
                tag: e.tag.0,
                vr: e.vr.0,
                value: e.value.clone(),
            })
            .collect()
    };
    let study_level: Vec<Tag> = [STUDY_TAGS, PATIENT_TAGS].concat();
    Ok(Extracted {
        sop_instance_uid,
        sop_class_uid,
        study_uid,
        series_uid,
        patient_key,
        charset: charset_raw,
        patient: pick(PATIENT_TAGS),
        study: pick(&study_level),
        series: pick(SERIES_TAGS),
        instance: pick(INSTANCE_TAGS),
        modality,
    })
}

/// Patients are keyed by Patient ID plus Issuer of Patient ID: the same ID from two issuers
/// is two patients.
pub fn patient_key(patient_id: &str, issuer: &str) -> String {
    format!("{patient_id}\u{0}{issuer}")
}

/// The Patient ID part of a patient key.
pub fn patient_id_of(key: &str) -> &str {
    key.split('\u{0}').next().unwrap_or("")
}

/// The demographics compared when a study joins an existing patient.
pub const DEMOGRAPHICS: &[(Tag, &str)] = &[
    (tags::PATIENT_NAME, "PatientName"),
    (tags::PATIENT_BIRTH_DATE, "PatientBirthDate"),
    (tags::PATIENT_SEX, "PatientSex"),
];

/// Decoded, trimmed value of an attribute in a record's character set ("" when absent).
pub fn decoded(attrs: &[Attr], charset: &[u8], tag: Tag) -> String {
    find(attrs, tag)
        .map(|a| {
            let v = trim_padding(&a.value);
            Charset::from_raw(charset)
                .decode(v)
                .unwrap_or_else(|| String::from_utf8_lossy(v).into_owned())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataset::Element;

    /// The rule of `READS`: a version this build knows decodes; any other (a newer build's,
    /// were one ever to change a record in place) is refused by number, never guessed at.
    #[test]
    fn a_record_decodes_only_under_a_version_this_build_reads() {
        let bytes = encode(&Conflict {
            patient_key: "P".into(),
            study_uid: "1.2".into(),
            differences: Vec::new(),
            seen_at: 7,
        });
        assert_eq!(bytes[0], RECORD_VERSION);
        let back: Conflict = decode(&bytes).unwrap();
        assert_eq!(back.seen_at, 7);
        let mut newer = bytes.clone();
        newer[0] = RECORD_VERSION + 1;
        let err = decode::<Conflict>(&newer).unwrap_err();
        assert!(matches!(err, RecordError::Version(v) if v == RECORD_VERSION + 1));
        assert!(err.to_string().contains("another Outpost build"), "{err}");
    }

    fn el(tag: Tag, vr: Vr, v: &[u8]) -> Element {
        Element {
            tag,
            vr,
            value: v.to_vec(),
        }
    }

    #[test]
    fn splits_levels_and_checks_uids() {
        let mut w = Walked {
            elements: vec![
                el(tags::SPECIFIC_CHARACTER_SET, Vr::CS, b"ISO_IR 100"),
                el(tags::SOP_CLASS_UID, Vr::UI, b"1.2.840.10008.5.1.4.1.1.2\0"),
                el(tags::SOP_INSTANCE_UID, Vr::UI, b"1.2.3.4\0"),
                el(tags::MODALITY, Vr::CS, b"CT"),
                el(tags::PATIENT_NAME, Vr::PN, b"M\xfcller"),
                el(tags::PATIENT_ID, Vr::LO, b"PID1"),
                el(tags::STUDY_INSTANCE_UID, Vr::UI, b"1.2.3\0"),
                el(tags::SERIES_INSTANCE_UID, Vr::UI, b"1.2.3.1"),
            ],
            ..Walked::default()
        };
        let x = extract(&w).unwrap();
        assert_eq!(x.sop_instance_uid, "1.2.3.4");
        assert_eq!(x.patient_key, "PID1\u{0}");
        assert_eq!(x.modality, "CT");
        assert_eq!(
            find(&x.patient, tags::PATIENT_NAME).unwrap().value,
            b"M\xfcller"
        );
        assert!(find(&x.study, tags::PATIENT_NAME).is_some());
        assert!(find(&x.series, tags::PATIENT_NAME).is_none());
        assert_eq!(
            decoded(&x.patient, &x.charset, tags::PATIENT_NAME),
            "Müller"
        );

        w.elements[2] = el(tags::SOP_INSTANCE_UID, Vr::UI, b"1.2.3\\4");
        assert!(matches!(extract(&w), Err(ExtractError::InvalidUid { .. })));
        w.elements.remove(2);
        assert!(matches!(extract(&w), Err(ExtractError::Missing { .. })));
    }

    #[test]
    fn records_round_trip_and_refuse_other_versions() {
        let r = SeriesRecord {
            study_uid: "1.2".into(),
            charset: vec![],
            attrs: vec![],
            modality: "MR".into(),
            instances: 3,
        };
        let bytes = encode(&r);
        assert_eq!(decode::<SeriesRecord>(&bytes).unwrap(), r);
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(
            decode::<SeriesRecord>(&other),
            Err(RecordError::Version(9))
        ));
    }
}
