//! Transfer syntaxes: how a data set's bytes are laid out, which is all this crate needs of them.

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
pub const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
pub const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";
const JPIP_REFERENCED_DEFLATE: &str = "1.2.840.10008.1.2.4.95";
const JPIP_HTJ2K_REFERENCED_DEFLATE: &str = "1.2.840.10008.1.2.4.205";

/// The byte layout of a data set's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    pub const IMPLICIT_LE: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
    };
    pub const EXPLICIT_LE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };
    pub const EXPLICIT_BE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: true,
    };
}

/// What a transfer syntax UID means for the data set bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntaxInfo {
    pub encoding: Encoding,
    /// The whole data set is a raw deflate stream (PS3.5 A.5).
    pub deflated: bool,
    /// Pixel data is encapsulated in fragments (compressed or otherwise encoded).
    pub encapsulated: bool,
}

/// Strips the trailing NUL or space padding that UIDs and other text values carry on the wire.
pub fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

/// Looks a transfer syntax up; `None` when the registry does not know the UID, in which case
/// the data set cannot be read and must not be accepted.
pub fn syntax_info(uid: &str) -> Option<SyntaxInfo> {
    let uid = trim_uid(uid);
    let ts = TransferSyntaxRegistry.get(uid)?;
    let encoding = match uid {
        IMPLICIT_VR_LITTLE_ENDIAN => Encoding::IMPLICIT_LE,
        EXPLICIT_VR_BIG_ENDIAN => Encoding::EXPLICIT_BE,
        // Every other transfer syntax encodes its data set in Explicit VR Little Endian
        // (PS3.5 A.4); only the pixel data differs.
        _ => Encoding::EXPLICIT_LE,
    };
    let deflated = matches!(
        uid,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
            | JPIP_REFERENCED_DEFLATE
            | JPIP_HTJ2K_REFERENCED_DEFLATE
    );
    Some(SyntaxInfo {
        encoding,
        deflated,
        encapsulated: ts.is_encapsulated_pixel_data(),
    })
}

/// Native (unencapsulated, undeflated) syntaxes: any reader can take these without a codec.
pub fn is_native(uid: &str) -> bool {
    matches!(
        trim_uid(uid),
        IMPLICIT_VR_LITTLE_ENDIAN | EXPLICIT_VR_LITTLE_ENDIAN | EXPLICIT_VR_BIG_ENDIAN
    )
}

/// Every transfer syntax UID the registry knows, for accepting what callers propose as is.
pub fn all_known() -> Vec<&'static str> {
    TransferSyntaxRegistry.iter().map(|ts| ts.uid()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let i = syntax_info("1.2.840.10008.1.2\0").unwrap();
        assert_eq!(i.encoding, Encoding::IMPLICIT_LE);
        assert!(!i.encapsulated);
        let j = syntax_info("1.2.840.10008.1.2.4.50").unwrap();
        assert_eq!(j.encoding, Encoding::EXPLICIT_LE);
        assert!(j.encapsulated);
        let d = syntax_info(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
        assert!(d.deflated);
        assert!(syntax_info("1.2.3.4").is_none());
        assert!(all_known().contains(&"1.2.840.10008.1.2.4.90"));
    }
}
