//! Specific Character Set (0008,0005): decoding text values for matching, and deciding when
//! raw bytes from one character set can travel in a response declaring another.
//!
//! Single-byte sets and UTF-8 are decoded with dicom-encoding's codecs. ISO 2022 code
//! extensions (several values, escape sequences switching sets mid-string) are not decoded:
//! such values are kept and returned byte for byte, and only ASCII values among them match.

use dicom_encoding::text::{SpecificCharacterSet, TextCodec};

use crate::encode::{text_values, trim_padding};

/// A parsed Specific Character Set.
#[derive(Clone, Debug, PartialEq)]
pub enum Charset {
    /// No Specific Character Set: the default repertoire (ASCII).
    Default,
    /// One character set that dicom-encoding can decode.
    Single(SpecificCharacterSet),
    /// Code extensions or a term this build cannot decode; values are kept raw.
    Undecodable(String),
}

impl Charset {
    /// Parses the raw value of (0008,0005).
    pub fn from_raw(raw: &[u8]) -> Charset {
        let terms: Vec<String> = text_values(raw)
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        let non_empty: Vec<&String> = terms.iter().filter(|t| !t.is_empty()).collect();
        match non_empty.as_slice() {
            [] => Charset::Default,
            // "ISO 2022 IR 6" alone is the default repertoire in ISO 2022 form.
            [only] if terms.len() == 1 && only.as_str() == "ISO_IR 6" => Charset::Default,
            [only] if terms.len() == 1 => match SpecificCharacterSet::from_code(only) {
                Some(set) => Charset::Single(set),
                None => Charset::Undecodable(only.to_string()),
            },
            _ => Charset::Undecodable(String::from_utf8_lossy(trim_padding(raw)).into_owned()),
        }
    }

    /// Decodes a text value. `None` when the value cannot be decoded in this set; callers then
    /// keep the raw bytes and treat the value as unmatchable.
    pub fn decode(&self, value: &[u8]) -> Option<String> {
        if value.is_ascii() && !value.contains(&0x1B) {
            return Some(String::from_utf8(value.to_vec()).expect("ASCII is UTF-8"));
        }
        match self {
            // Undeclared 8-bit text is in practice Latin-1 from older modalities.
            Charset::Default => SpecificCharacterSet::ISO_IR_100.decode(value).ok(),
            Charset::Single(set) => set.decode(value).ok(),
            Charset::Undecodable(_) => None,
        }
    }

    /// Encodes text in this set, for converting values between sets. `None` if it cannot.
    pub fn encode(&self, text: &str) -> Option<Vec<u8>> {
        if text.is_ascii() {
            return Some(text.as_bytes().to_vec());
        }
        match self {
            Charset::Default | Charset::Undecodable(_) => None,
            Charset::Single(set) => set.encode(text).ok(),
        }
    }
}

/// Whether raw text bytes mean the same in every character set DICOM allows: plain ASCII
/// without escape sequences.
pub fn is_charset_neutral(value: &[u8]) -> bool {
    value.is_ascii() && !value.contains(&0x1B)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_terms() {
        assert_eq!(Charset::from_raw(b""), Charset::Default);
        assert_eq!(
            Charset::from_raw(b"ISO_IR 100"),
            Charset::Single(SpecificCharacterSet::ISO_IR_100)
        );
        assert!(matches!(
            Charset::from_raw(b"\\ISO 2022 IR 87"),
            Charset::Undecodable(_)
        ));
    }

    #[test]
    fn decodes_latin1_and_utf8() {
        let latin1 = Charset::from_raw(b"ISO_IR 100");
        assert_eq!(latin1.decode(b"M\xfcller").as_deref(), Some("Müller"));
        let utf8 = Charset::from_raw(b"ISO_IR 192");
        assert_eq!(utf8.decode("Müller".as_bytes()).as_deref(), Some("Müller"));
        assert_eq!(latin1.encode("Müller").as_deref(), Some(&b"M\xfcller"[..]));
        let jis = Charset::from_raw(b"\\ISO 2022 IR 87");
        assert_eq!(
            jis.decode(b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"),
            None
        );
        assert_eq!(jis.decode(b"YAMADA").as_deref(), Some("YAMADA"));
    }
}
