//! Synthetic instances for tests and benchmarks: small, valid data sets with the attributes
//! an archive files them by, built without any DICOM library. (Feature `synth`.)

use crate::encode::{write_element, write_str, write_u16};
use crate::meta::encode_file_meta;
use crate::tag::{Tag, Vr, tags};
use crate::ts::Encoding;

/// One synthetic instance; every field is public so tests can vary exactly what they need.
#[derive(Clone, Debug)]
pub struct SynthInstance {
    pub charset: Option<Vec<u8>>,
    pub patient_name: Vec<u8>,
    pub patient_id: String,
    pub issuer: Option<String>,
    pub birth_date: String,
    pub sex: String,
    pub study_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub accession: String,
    pub study_description: Vec<u8>,
    pub series_uid: String,
    pub series_number: u32,
    pub modality: String,
    pub sop_class: String,
    pub sop_uid: String,
    pub instance_number: u32,
    pub rows: u16,
    pub columns: u16,
    /// Bytes of (native, 16-bit) pixel data; filled deterministically from `seed`.
    pub pixel_bytes: usize,
    pub seed: u64,
    /// Further elements, written in tag order with the rest.
    pub extra: Vec<(Tag, Vr, Vec<u8>)>,
}

impl SynthInstance {
    /// A CT slice of a small image for patient `p`, study `s`, series `r`, instance `i`.
    pub fn ct(p: u32, s: u32, r: u32, i: u32) -> SynthInstance {
        let root = "1.2.826.0.1.3680043.10.1234";
        SynthInstance {
            charset: Some(b"ISO_IR 100".to_vec()),
            patient_name: format!("PATIENT{p}^TEST").into_bytes(),
            patient_id: format!("PID{p:05}"),
            issuer: None,
            birth_date: "19700101".into(),
            sex: "O".into(),
            study_uid: format!("{root}.{p}.{s}"),
            study_date: format!("202601{:02}", 1 + (s % 28)),
            study_time: "101500".into(),
            accession: format!("ACC{p}{s:03}"),
            study_description: b"CT CHEST".to_vec(),
            series_uid: format!("{root}.{p}.{s}.{r}"),
            series_number: r,
            modality: "CT".into(),
            sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_uid: format!("{root}.{p}.{s}.{r}.{i}"),
            instance_number: i,
            rows: 16,
            columns: 16,
            pixel_bytes: 512,
            seed: u64::from(p) << 48 | u64::from(s) << 32 | u64::from(r) << 16 | u64::from(i),
            extra: Vec::new(),
        }
    }

    /// The data set bytes in the given layout.
    pub fn dataset(&self, enc: Encoding) -> Vec<u8> {
        let mut elements: Vec<(Tag, Vr, Vec<u8>)> = vec![
            (
                tags::SOP_CLASS_UID,
                Vr::UI,
                self.sop_class.clone().into_bytes(),
            ),
            (
                tags::SOP_INSTANCE_UID,
                Vr::UI,
                self.sop_uid.clone().into_bytes(),
            ),
            (
                tags::STUDY_DATE,
                Vr::DA,
                self.study_date.clone().into_bytes(),
            ),
            (
                tags::CONTENT_DATE,
                Vr::DA,
                self.study_date.clone().into_bytes(),
            ),
            (
                tags::STUDY_TIME,
                Vr::TM,
                self.study_time.clone().into_bytes(),
            ),
            (
                tags::ACCESSION_NUMBER,
                Vr::SH,
                self.accession.clone().into_bytes(),
            ),
            (tags::MODALITY, Vr::CS, self.modality.clone().into_bytes()),
            (
                tags::REFERRING_PHYSICIAN_NAME,
                Vr::PN,
                b"REFERRER^DEMO".to_vec(),
            ),
            (
                tags::STUDY_DESCRIPTION,
                Vr::LO,
                self.study_description.clone(),
            ),
            (tags::PATIENT_NAME, Vr::PN, self.patient_name.clone()),
            (
                tags::PATIENT_ID,
                Vr::LO,
                self.patient_id.clone().into_bytes(),
            ),
            (
                tags::PATIENT_BIRTH_DATE,
                Vr::DA,
                self.birth_date.clone().into_bytes(),
            ),
            (tags::PATIENT_SEX, Vr::CS, self.sex.clone().into_bytes()),
            (
                tags::STUDY_INSTANCE_UID,
                Vr::UI,
                self.study_uid.clone().into_bytes(),
            ),
            (
                tags::SERIES_INSTANCE_UID,
                Vr::UI,
                self.series_uid.clone().into_bytes(),
            ),
            (tags::STUDY_ID, Vr::SH, b"1".to_vec()),
            (
                tags::SERIES_NUMBER,
                Vr::IS,
                self.series_number.to_string().into_bytes(),
            ),
            (
                tags::INSTANCE_NUMBER,
                Vr::IS,
                self.instance_number.to_string().into_bytes(),
            ),
        ];
        if let Some(cs) = &self.charset {
            elements.push((tags::SPECIFIC_CHARACTER_SET, Vr::CS, cs.clone()));
        }
        if let Some(issuer) = &self.issuer {
            elements.push((
                tags::ISSUER_OF_PATIENT_ID,
                Vr::LO,
                issuer.clone().into_bytes(),
            ));
        }
        elements.extend(self.extra.iter().cloned());
        elements.sort_by_key(|e| e.0);
        let mut out = Vec::with_capacity(self.pixel_bytes + 1024);
        for (tag, vr, value) in &elements {
            write_element(&mut out, enc, *tag, *vr, value);
        }
        write_u16(&mut out, enc, Tag::new(0x0028, 0x0002), &[1]);
        write_str(
            &mut out,
            enc,
            Tag::new(0x0028, 0x0004),
            Vr::CS,
            "MONOCHROME2",
        );
        write_u16(&mut out, enc, tags::ROWS, &[self.rows]);
        write_u16(&mut out, enc, tags::COLUMNS, &[self.columns]);
        write_u16(&mut out, enc, tags::BITS_ALLOCATED, &[16]);
        write_u16(&mut out, enc, Tag::new(0x0028, 0x0101), &[12]);
        write_u16(&mut out, enc, Tag::new(0x0028, 0x0102), &[11]);
        write_u16(&mut out, enc, Tag::new(0x0028, 0x0103), &[0]);
        write_element(
            &mut out,
            enc,
            tags::PIXEL_DATA,
            Vr::OW,
            &noise(self.seed, self.pixel_bytes),
        );
        out
    }

    /// A complete Part 10 file.
    pub fn part10(&self, transfer_syntax: &str, enc: Encoding) -> Vec<u8> {
        let mut out = encode_file_meta(&self.sop_class, &self.sop_uid, transfer_syntax, None);
        out.extend(self.dataset(enc));
        out
    }
}

/// Deterministic pseudo-random bytes (xorshift), so the same instance is the same bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
