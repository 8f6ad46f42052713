//! Splitting a held instance into a study of its own patient: the third way out of
//! quarantine, for an image that was taken of the right patient under the wrong study (a
//! worklist pick corrected mid-exam).
//!
//! The held file is copied, as a stream, with new Study and Series Instance UIDs (and a new
//! SOP Instance UID when its own collided with a stored instance of another patient), and the
//! copy is stored through [`Store::begin`] like any arriving instance: durable before this
//! returns, indexed under its own patient, queued for forwarding. Only then is the held copy
//! deleted. The new UIDs are derived from the old ones and the patient, so every instance
//! split out of one study for one patient lands in the same new study and series, and a split
//! interrupted by a crash and run again files the same copy (a duplicate, kept once).

use std::io::{Read, Seek, SeekFrom, Write};

use dataset::rewrite::{Replacement, copy_replacing};
use dataset::ts::syntax_info;
use dataset::{Capture, Tag, Walker, tags};
use tokio::sync::mpsc;

use crate::Store;
use crate::commit::Outcome;
use crate::ingest::IngestRequest;
use crate::quarantine::{Held, QuarantineError, Reason, Resolution};

/// What a split did.
#[derive(Clone, Debug)]
pub struct Split {
    /// The held instance, as it was held (now deleted).
    pub held: Held,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uid: String,
    /// How storing the copy ended ([`Outcome::Duplicate`] when a split run before stored it).
    pub outcome: Outcome,
}

/// A UID under the `2.25` root (PS3.5 B.2) from a 128-bit FNV-1a hash of what it replaces:
/// stable across versions and machines, with the UUID version 8 ("custom") and variant bits
/// set, as the root asks for a UUID.
pub fn derived_uid(kind: &str, old_uid: &str, patient_key: &str) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in [kind, old_uid, patient_key] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    // Version 8 in bits 76..80, variant 0b10 in bits 62..64 (RFC 9562).
    h = (h & !(0xF << 76)) | (0x8 << 76);
    h = (h & !(0x3 << 62)) | (0x2 << 62);
    format!("2.25.{h}")
}

/// Buffers what the copy writes and hands it on in chunks to the ingest task.
struct Chunks {
    tx: mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the ingest of the copy stopped"))
    }
}

impl Store {
    /// Files held instance `seq` as a study of its own patient; see the module documentation.
    pub async fn split_quarantined(&self, seq: u64) -> Result<Split, QuarantineError> {
        let held = self
            .quarantined()?
            .into_iter()
            .find(|h| h.seq == seq)
            .ok_or(QuarantineError::NotHeld(seq))?;
        let unsplittable = |reason: String| QuarantineError::Unsplittable { seq, reason };
        let x = &held.extracted;
        let study_uid = derived_uid("study", &x.study_uid, &x.patient_key);
        let series_uid = derived_uid("series", &x.series_uid, &x.patient_key);
        let sop_instance_uid = match held.conflict.reason {
            // Its UID is another patient's instance: it needs one of its own.
            Reason::UidOfAnotherInstance { .. } => {
                derived_uid("instance", &x.sop_instance_uid, &x.patient_key)
            }
            Reason::StudyOfAnotherPatient => x.sop_instance_uid.clone(),
        };
        let ts = held.record.transfer_syntax.clone();
        let info = syntax_info(&ts)
            .ok_or_else(|| unsplittable(format!("its transfer syntax {ts} is not known")))?;
        let path = self.layout().absolute(&held.record.file);
        let offset = held.record.dataset_offset;
        let fs = self.inner.fs.clone();
        let open = move || -> std::io::Result<Box<dyn crate::fs::FileReader>> {
            let mut f = fs.open(&path)?;
            f.seek(SeekFrom::Start(offset))?;
            Ok(f)
        };

        // 1. Where the three UIDs lie (a walk of the whole data set: a span is known only
        //    once the walk passed it, and the file is checked on the way).
        let find = open.clone();
        let spans = tokio::task::spawn_blocking(move || -> Result<Vec<_>, String> {
            let mut f = find().map_err(|e| format!("reading the held file failed: {e}"))?;
            let mut walker = Walker::new(
                info,
                Capture::Tags {
                    tags: vec![
                        tags::SOP_INSTANCE_UID,
                        tags::STUDY_INSTANCE_UID,
                        tags::SERIES_INSTANCE_UID,
                    ],
                    max_len: 64,
                },
            );
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = f
                    .read(&mut buffer)
                    .map_err(|e| format!("reading the held file failed: {e}"))?;
                if n == 0 {
                    break;
                }
                walker.feed(&buffer[..n]).map_err(|e| e.to_string())?;
            }
            Ok(walker.finish().map_err(|e| e.to_string())?.spans)
        })
        .await
        .map_err(|e| unsplittable(e.to_string()))?
        .map_err(unsplittable)?;
        let mut replacements = Vec::new();
        for (tag, value) in [
            (tags::SOP_INSTANCE_UID, &sop_instance_uid),
            (tags::STUDY_INSTANCE_UID, &study_uid),
            (tags::SERIES_INSTANCE_UID, &series_uid),
        ] {
            let span = spans
                .iter()
                .find(|s| s.tag == tag)
                .copied()
                .ok_or_else(|| unsplittable(format!("its data set has no {}", name(tag))))?;
            let mut element = Vec::new();
            dataset::encode::write_str(&mut element, info.encoding, tag, span.vr, value);
            replacements.push(Replacement { span, element });
        }
        replacements.sort_by_key(|r| r.span.start);

        // 2. The copy, stored as any arriving instance.
        let mut ingest = self
            .begin(IngestRequest {
                sop_class_uid: x.sop_class_uid.clone(),
                sop_instance_uid: sop_instance_uid.clone(),
                transfer_syntax: ts.clone(),
                source_ae: held.record.source_ae.clone(),
            })
            .await
            .map_err(|e| QuarantineError::SplitRefused(Box::new(e)))?;
        let (tx, mut rx) = mpsc::channel(4);
        let copier = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let f = open().map_err(|e| format!("reading the held file failed: {e}"))?;
            let mut chunks = Chunks {
                tx,
                buffer: Vec::with_capacity(CHUNK),
            };
            copy_replacing(f, &mut chunks, &replacements, info.deflated)
                .map_err(|e| e.to_string())?;
            chunks.flush().map_err(|e| e.to_string())
        });
        while let Some(chunk) = rx.recv().await {
            ingest.write(chunk).await;
        }
        // A failed copy drops the ingest, which removes its temporary file.
        copier
            .await
            .map_err(|e| unsplittable(e.to_string()))?
            .map_err(unsplittable)?;
        let receipt = ingest
            .finish()
            .await
            .map_err(|e| QuarantineError::SplitRefused(Box::new(e)))?;
        if let Outcome::Quarantined { seq: again } = receipt.outcome {
            return Err(unsplittable(format!(
                "its copy was held again, as quarantine number {again}"
            )));
        }

        // 3. Only now, with the copy durable, the held instance goes.
        let held = self.resolve_quarantine(seq, Resolution::Delete).await?;
        Ok(Split {
            held,
            study_uid,
            series_uid,
            sop_instance_uid,
            outcome: receipt.outcome,
        })
    }
}

fn name(tag: Tag) -> &'static str {
    match tag {
        tags::SOP_INSTANCE_UID => "SOP Instance UID (0008,0018)",
        tags::STUDY_INSTANCE_UID => "Study Instance UID (0020,000D)",
        _ => "Series Instance UID (0020,000E)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_stable_valid_and_differ_by_what_they_replace() {
        let a = derived_uid("study", "1.2.3", "P2\\");
        assert_eq!(a, derived_uid("study", "1.2.3", "P2\\"));
        assert_ne!(a, derived_uid("study", "1.2.3", "P3\\"));
        assert_ne!(a, derived_uid("series", "1.2.3", "P2\\"));
        assert_ne!(a, derived_uid("study", "1.2.4", "P2\\"));
        assert!(a.starts_with("2.25.") && a.len() <= 64, "{a}");
        assert!(a[5..].bytes().all(|b| b.is_ascii_digit()) && !a[5..].starts_with('0'));
        let n: u128 = a[5..].parse().unwrap();
        assert_eq!((n >> 76) & 0xF, 8, "UUID version 8");
        assert_eq!((n >> 62) & 0x3, 2, "RFC 9562 variant");
    }
}
