//! Attribute tags and value representations, as plain copyable values.

use std::fmt;

/// A DICOM attribute tag, `group << 16 | element`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u32);

impl Tag {
    pub const fn new(group: u16, element: u16) -> Tag {
        Tag(((group as u32) << 16) | element as u32)
    }
    pub const fn group(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub const fn element(self) -> u16 {
        self.0 as u16
    }
    /// Private attributes live in odd groups.
    pub const fn is_private(self) -> bool {
        self.group() % 2 == 1
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:04X},{:04X})", self.group(), self.element())
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A value representation, kept as its two ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vr(pub [u8; 2]);

macro_rules! vrs {
    ($($name:ident),*) => {
        impl Vr {
            $(pub const $name: Vr = Vr(*stringify!($name).as_bytes().first_chunk::<2>().unwrap());)*
            /// Every value representation PS3.5 defines.
            pub const ALL: &'static [Vr] = &[$(Vr::$name),*];
        }
    };
}
vrs!(
    AE, AS, AT, CS, DA, DS, DT, FD, FL, IS, LO, LT, OB, OD, OF, OL, OV, OW, PN, SH, SL, SQ, SS, ST,
    SV, TM, UC, UI, UL, UN, UR, US, UT, UV
);

impl Vr {
    /// Parses the two VR bytes of an explicit-VR element header.
    pub fn from_bytes(bytes: [u8; 2]) -> Option<Vr> {
        let vr = Vr(bytes);
        Vr::ALL.contains(&vr).then_some(vr)
    }

    /// Explicit-VR headers of these VRs carry two reserved bytes and a 32-bit length (PS3.5 7.1.2).
    pub fn has_long_length(self) -> bool {
        matches!(
            self,
            Vr::OB
                | Vr::OD
                | Vr::OF
                | Vr::OL
                | Vr::OV
                | Vr::OW
                | Vr::SQ
                | Vr::UC
                | Vr::UN
                | Vr::UR
                | Vr::UT
                | Vr::SV
                | Vr::UV
        )
    }

    /// Character-string VRs whose values are padded with a trailing space.
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Vr::AE
                | Vr::AS
                | Vr::CS
                | Vr::DA
                | Vr::DS
                | Vr::DT
                | Vr::IS
                | Vr::LO
                | Vr::LT
                | Vr::PN
                | Vr::SH
                | Vr::ST
                | Vr::TM
                | Vr::UC
                | Vr::UR
                | Vr::UT
                | Vr::UI
        )
    }

    /// Text VRs whose values are affected by the Specific Character Set (PS3.5 6.1.2.3).
    pub fn uses_character_set(self) -> bool {
        matches!(
            self,
            Vr::LO | Vr::LT | Vr::PN | Vr::SH | Vr::ST | Vr::UC | Vr::UT
        )
    }

    /// The size of one binary value, for byte swapping between endiannesses.
    pub fn binary_word_size(self) -> Option<usize> {
        match self {
            Vr::US | Vr::SS | Vr::OW => Some(2),
            Vr::UL | Vr::SL | Vr::FL | Vr::OF | Vr::OL | Vr::AT => Some(4),
            Vr::FD | Vr::OD | Vr::SV | Vr::UV | Vr::OV => Some(8),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Vr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Vr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VR the standard data dictionary gives a tag, for implicit-VR data and for encoding
/// attributes we only know by tag. Tags the dictionary does not know (private ones) are `UN`.
pub fn dictionary_vr(tag: Tag) -> Vr {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    if tag.element() == 0 {
        // Group lengths are UL in every group.
        return Vr::UL;
    }
    let dict = dicom_dictionary_std::StandardDataDictionary;
    let Some(entry) = dict.by_tag(dicom_core::Tag(tag.group(), tag.element())) else {
        return Vr::UN;
    };
    let vr = match entry.vr() {
        VirtualVr::Exact(vr) => vr,
        VirtualVr::Xs => dicom_core::VR::US,
        VirtualVr::Ox | VirtualVr::Px => dicom_core::VR::OW,
        VirtualVr::Lt => dicom_core::VR::US,
        _ => return Vr::UN,
    };
    Vr::from_bytes(
        *vr.to_string()
            .as_bytes()
            .first_chunk::<2>()
            .unwrap_or(b"UN"),
    )
    .unwrap_or(Vr::UN)
}

/// Tags this workspace refers to by name.
pub mod tags {
    use super::Tag;

    pub const FILE_META_GROUP_LENGTH: Tag = Tag::new(0x0002, 0x0000);
    pub const FILE_META_VERSION: Tag = Tag::new(0x0002, 0x0001);
    pub const MEDIA_STORAGE_SOP_CLASS_UID: Tag = Tag::new(0x0002, 0x0002);
    pub const MEDIA_STORAGE_SOP_INSTANCE_UID: Tag = Tag::new(0x0002, 0x0003);
    pub const TRANSFER_SYNTAX_UID: Tag = Tag::new(0x0002, 0x0010);
    pub const IMPLEMENTATION_CLASS_UID: Tag = Tag::new(0x0002, 0x0012);
    pub const IMPLEMENTATION_VERSION_NAME: Tag = Tag::new(0x0002, 0x0013);
    pub const SOURCE_AE_TITLE: Tag = Tag::new(0x0002, 0x0016);

    pub const SPECIFIC_CHARACTER_SET: Tag = Tag::new(0x0008, 0x0005);
    pub const IMAGE_TYPE: Tag = Tag::new(0x0008, 0x0008);
    pub const SOP_CLASS_UID: Tag = Tag::new(0x0008, 0x0016);
    pub const SOP_INSTANCE_UID: Tag = Tag::new(0x0008, 0x0018);
    pub const STUDY_DATE: Tag = Tag::new(0x0008, 0x0020);
    pub const SERIES_DATE: Tag = Tag::new(0x0008, 0x0021);
    pub const ACQUISITION_DATE: Tag = Tag::new(0x0008, 0x0022);
    pub const CONTENT_DATE: Tag = Tag::new(0x0008, 0x0023);
    pub const STUDY_TIME: Tag = Tag::new(0x0008, 0x0030);
    pub const SERIES_TIME: Tag = Tag::new(0x0008, 0x0031);
    pub const ACQUISITION_TIME: Tag = Tag::new(0x0008, 0x0032);
    pub const CONTENT_TIME: Tag = Tag::new(0x0008, 0x0033);
    pub const ACCESSION_NUMBER: Tag = Tag::new(0x0008, 0x0050);
    pub const QUERY_RETRIEVE_LEVEL: Tag = Tag::new(0x0008, 0x0052);
    pub const RETRIEVE_AE_TITLE: Tag = Tag::new(0x0008, 0x0054);
    pub const INSTANCE_AVAILABILITY: Tag = Tag::new(0x0008, 0x0056);
    pub const FAILED_SOP_INSTANCE_UID_LIST: Tag = Tag::new(0x0008, 0x0058);
    pub const MODALITY: Tag = Tag::new(0x0008, 0x0060);
    pub const MODALITIES_IN_STUDY: Tag = Tag::new(0x0008, 0x0061);
    pub const SOP_CLASSES_IN_STUDY: Tag = Tag::new(0x0008, 0x0062);
    pub const MANUFACTURER: Tag = Tag::new(0x0008, 0x0070);
    pub const INSTITUTION_NAME: Tag = Tag::new(0x0008, 0x0080);
    pub const REFERRING_PHYSICIAN_NAME: Tag = Tag::new(0x0008, 0x0090);
    pub const STATION_NAME: Tag = Tag::new(0x0008, 0x1010);
    pub const STUDY_DESCRIPTION: Tag = Tag::new(0x0008, 0x1030);
    pub const SERIES_DESCRIPTION: Tag = Tag::new(0x0008, 0x103E);
    pub const PERFORMING_PHYSICIAN_NAME: Tag = Tag::new(0x0008, 0x1050);
    pub const NAME_OF_PHYSICIANS_READING_STUDY: Tag = Tag::new(0x0008, 0x1060);
    pub const OPERATORS_NAME: Tag = Tag::new(0x0008, 0x1070);
    pub const ADMITTING_DIAGNOSES_DESCRIPTION: Tag = Tag::new(0x0008, 0x1080);
    pub const MANUFACTURER_MODEL_NAME: Tag = Tag::new(0x0008, 0x1090);
    pub const AVAILABLE_TRANSFER_SYNTAX_UID: Tag = Tag::new(0x0008, 0x3002);

    pub const PATIENT_NAME: Tag = Tag::new(0x0010, 0x0010);
    pub const PATIENT_ID: Tag = Tag::new(0x0010, 0x0020);
    pub const ISSUER_OF_PATIENT_ID: Tag = Tag::new(0x0010, 0x0021);
    pub const PATIENT_BIRTH_DATE: Tag = Tag::new(0x0010, 0x0030);
    pub const PATIENT_BIRTH_TIME: Tag = Tag::new(0x0010, 0x0032);
    pub const PATIENT_SEX: Tag = Tag::new(0x0010, 0x0040);
    pub const OTHER_PATIENT_IDS: Tag = Tag::new(0x0010, 0x1000);
    pub const OTHER_PATIENT_NAMES: Tag = Tag::new(0x0010, 0x1001);
    pub const PATIENT_AGE: Tag = Tag::new(0x0010, 0x1010);
    pub const PATIENT_SIZE: Tag = Tag::new(0x0010, 0x1020);
    pub const PATIENT_WEIGHT: Tag = Tag::new(0x0010, 0x1030);
    pub const ETHNIC_GROUP: Tag = Tag::new(0x0010, 0x2160);
    pub const OCCUPATION: Tag = Tag::new(0x0010, 0x2180);
    pub const ADDITIONAL_PATIENT_HISTORY: Tag = Tag::new(0x0010, 0x21B0);
    pub const PATIENT_COMMENTS: Tag = Tag::new(0x0010, 0x4000);

    pub const BODY_PART_EXAMINED: Tag = Tag::new(0x0018, 0x0015);
    pub const PROTOCOL_NAME: Tag = Tag::new(0x0018, 0x1030);

    pub const STUDY_INSTANCE_UID: Tag = Tag::new(0x0020, 0x000D);
    pub const SERIES_INSTANCE_UID: Tag = Tag::new(0x0020, 0x000E);
    pub const STUDY_ID: Tag = Tag::new(0x0020, 0x0010);
    pub const SERIES_NUMBER: Tag = Tag::new(0x0020, 0x0011);
    pub const ACQUISITION_NUMBER: Tag = Tag::new(0x0020, 0x0012);
    pub const INSTANCE_NUMBER: Tag = Tag::new(0x0020, 0x0013);
    pub const FRAME_OF_REFERENCE_UID: Tag = Tag::new(0x0020, 0x0052);
    pub const LATERALITY: Tag = Tag::new(0x0020, 0x0060);
    pub const NUMBER_OF_PATIENT_RELATED_STUDIES: Tag = Tag::new(0x0020, 0x1200);
    pub const NUMBER_OF_PATIENT_RELATED_SERIES: Tag = Tag::new(0x0020, 0x1202);
    pub const NUMBER_OF_PATIENT_RELATED_INSTANCES: Tag = Tag::new(0x0020, 0x1204);
    pub const NUMBER_OF_STUDY_RELATED_SERIES: Tag = Tag::new(0x0020, 0x1206);
    pub const NUMBER_OF_STUDY_RELATED_INSTANCES: Tag = Tag::new(0x0020, 0x1208);
    pub const NUMBER_OF_SERIES_RELATED_INSTANCES: Tag = Tag::new(0x0020, 0x1209);

    pub const NUMBER_OF_FRAMES: Tag = Tag::new(0x0028, 0x0008);
    pub const ROWS: Tag = Tag::new(0x0028, 0x0010);
    pub const COLUMNS: Tag = Tag::new(0x0028, 0x0011);
    pub const BITS_ALLOCATED: Tag = Tag::new(0x0028, 0x0100);

    pub const PERFORMED_PROCEDURE_STEP_START_DATE: Tag = Tag::new(0x0040, 0x0244);
    pub const PERFORMED_PROCEDURE_STEP_START_TIME: Tag = Tag::new(0x0040, 0x0245);

    pub const PIXEL_DATA: Tag = Tag::new(0x7FE0, 0x0010);
    pub const ITEM: Tag = Tag::new(0xFFFE, 0xE000);
    pub const ITEM_DELIMITATION: Tag = Tag::new(0xFFFE, 0xE00D);
    pub const SEQUENCE_DELIMITATION: Tag = Tag::new(0xFFFE, 0xE0DD);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_knows_common_vrs() {
        assert_eq!(dictionary_vr(tags::PATIENT_NAME), Vr::PN);
        assert_eq!(dictionary_vr(tags::ROWS), Vr::US);
        assert_eq!(dictionary_vr(tags::STUDY_INSTANCE_UID), Vr::UI);
        assert_eq!(dictionary_vr(Tag::new(0x0009, 0x1010)), Vr::UN);
        assert_eq!(dictionary_vr(Tag::new(0x0018, 0x0000)), Vr::UL);
    }

    #[test]
    fn tags_print_like_the_standard() {
        assert_eq!(tags::PIXEL_DATA.to_string(), "(7FE0,0010)");
    }
}
