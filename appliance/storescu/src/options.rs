//! What Outpost proposes when it opens an association to send stored instances: per SOP
//! class, one presentation context per stored transfer syntax plus a Little Endian fallback.

use std::time::Duration;

use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dicom_ul::ClientAssociationOptions;
use store::query::Retrievable;

/// The most presentation contexts one A-ASSOCIATE-RQ can carry (odd ids 1 to 255).
const MAX_CONTEXTS: usize = 128;

/// Why no association can be proposed for a set of instances.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// Each SOP class needs a presentation context of its own, and there are only 128.
    #[error("the instances span {classes} SOP classes, more than one association can carry")]
    TooManyClasses { classes: usize },
}

/// Association options for sending `items`, proposing for each SOP class its stored transfer
/// syntaxes and the native ones.
///
/// `timeout` bounds the TCP connection and the wait for the A-ASSOCIATE-AC (dicom-ul's
/// connection and read timeouts). TLS is not set here: [`crate::connect`] adds it.
pub fn association_options(
    calling_ae: &str,
    called_ae: &str,
    max_pdu: u32,
    timeout: Duration,
    items: &[Retrievable],
) -> Result<ClientAssociationOptions<'static>, OptionsError> {
    association_options_with(calling_ae, called_ae, max_pdu, timeout, items, &[])
}

/// [`association_options`] plus `extra` contexts (abstract syntax, transfer syntaxes) such as
/// Verification or Storage Commitment, counted within the 128 an association can carry.
pub fn association_options_with(
    calling_ae: &str,
    called_ae: &str,
    max_pdu: u32,
    timeout: Duration,
    items: &[Retrievable],
    extra: &[(&str, &[&str])],
) -> Result<ClientAssociationOptions<'static>, OptionsError> {
    let max_contexts = MAX_CONTEXTS - extra.len().min(MAX_CONTEXTS);
    let mut options = base_options(calling_ae, called_ae, max_pdu, timeout);
    for (abstract_syntax, syntaxes) in extra {
        options = options.with_presentation_context(
            abstract_syntax.to_string(),
            syntaxes.iter().map(|s| s.to_string()).collect(),
        );
    }
    let mut classes: Vec<(String, Vec<String>)> = Vec::new();
    for item in items {
        match classes.iter_mut().find(|(c, _)| *c == item.sop_class_uid) {
            Some((_, syntaxes)) => {
                if !syntaxes.contains(&item.transfer_syntax) {
                    syntaxes.push(item.transfer_syntax.clone());
                }
            }
            None => classes.push((
                item.sop_class_uid.clone(),
                vec![item.transfer_syntax.clone()],
            )),
        }
    }
    let natives = || {
        vec![
            EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
            IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
        ]
    };
    // One context per stored syntax lets the receiver take each one it supports, so every
    // instance can travel as stored, with a Little Endian context per class as the
    // fallback. Explicit VR Little Endian needs no context of its own: the fallback lists
    // it first. An association carries at most 128 contexts; beyond that, one context per
    // class lists all its syntaxes.
    let own_context = |t: &String| t != EXPLICIT_VR_LITTLE_ENDIAN;
    let separate: usize = classes
        .iter()
        .map(|(_, s)| 1 + s.iter().filter(|t| own_context(t)).count())
        .sum();
    if classes.len() > max_contexts {
        return Err(OptionsError::TooManyClasses {
            classes: classes.len(),
        });
    }
    for (class, syntaxes) in classes {
        if separate <= max_contexts {
            for ts in syntaxes.iter().filter(|t| own_context(t)) {
                options = options.with_presentation_context(class.clone(), vec![ts.clone()]);
            }
            options = options.with_presentation_context(class, natives());
        } else {
            let mut all = syntaxes;
            for n in natives() {
                if !all.contains(&n) {
                    all.push(n);
                }
            }
            options = options.with_presentation_context(class, all);
        }
    }
    Ok(options)
}

/// Options proposing Verification alone, in both Little Endian syntaxes, for [`crate::echo`].
pub(crate) fn verification_options(
    calling_ae: &str,
    called_ae: &str,
    max_pdu: u32,
    timeout: Duration,
) -> ClientAssociationOptions<'static> {
    base_options(calling_ae, called_ae, max_pdu, timeout).with_presentation_context(
        dimse::VERIFICATION.to_string(),
        vec![
            EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
            IMPLICIT_VR_LITTLE_ENDIAN.to_string(),
        ],
    )
}

pub(crate) fn base_options(
    calling_ae: &str,
    called_ae: &str,
    max_pdu: u32,
    timeout: Duration,
) -> ClientAssociationOptions<'static> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling_ae.to_string())
        .called_ae_title(called_ae.to_string())
        .max_pdu_length(max_pdu)
        .connection_timeout(timeout)
        .read_timeout(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(class: &str, ts: &str) -> Retrievable {
        Retrievable {
            sop_instance_uid: "1.2.3".into(),
            sop_class_uid: class.into(),
            transfer_syntax: ts.into(),
            file: "f".into(),
            dataset_offset: 0,
            size: 0,
            study_uid: "1.2".into(),
            nearline: false,
        }
    }

    #[test]
    fn more_classes_than_contexts_are_refused_with_the_count() {
        let items: Vec<_> = (0..129)
            .map(|i| item(&format!("1.2.840.99.{i}"), EXPLICIT_VR_LITTLE_ENDIAN))
            .collect();
        let err = association_options("A", "B", 16_384, Duration::from_secs(1), &items)
            .expect_err("129 classes do not fit");
        assert_eq!(err, OptionsError::TooManyClasses { classes: 129 });
        assert!(err.to_string().contains("129 SOP classes"));
        assert!(
            association_options("A", "B", 16_384, Duration::from_secs(1), &items[..128]).is_ok()
        );
    }
}
