//! The DICOM destination: our own association, many instances per association, each
//! streamed from disk (or decompressed within the memory limit when the destination takes
//! only an uncompressed syntax).

use std::time::Duration;

use dataset::ts::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use store::Store;
use store::query::Retrievable;
use storescu::association_options_with;

use crate::Settings;
use crate::classify::{self, Verdict};
use crate::worker::{Attempt, Requested, Throttle};
use storescu::commitment::Reference;

/// The Verification SOP Class.
const VERIFICATION: &str = "1.2.840.10008.1.1";

pub(crate) struct DicomSender {
    destination: config::DicomDestination,
    tls: Option<storescu::Tls>,
    calling_ae: String,
    max_pdu: u32,
    memory_limit: u64,
    timeout: Duration,
}

impl DicomSender {
    pub fn new(
        destination: config::DicomDestination,
        tls: Option<storescu::Tls>,
        settings: &Settings,
        timeout: Duration,
    ) -> DicomSender {
        DicomSender {
            destination,
            tls,
            calling_ae: settings.calling_ae.clone(),
            max_pdu: settings.max_pdu,
            memory_limit: settings.transcode_memory_limit,
            timeout,
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.destination.host, self.destination.port)
    }

    /// Sends `items` over one association, proposing for each SOP class its stored syntaxes
    /// plus Explicit and Implicit VR Little Endian.
    pub async fn deliver(
        &self,
        store: &Store,
        items: &[Retrievable],
        throttle: Option<&Throttle>,
    ) -> Attempt {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; items.len()];
        // Verification rides along so that the association is established even when the
        // destination accepts none of the batch's SOP classes: each instance then gets its own
        // "no presentation context" dead letter, instead of the whole destination looking
        // unreachable (which a successful C-ECHO probe would contradict, forever).
        const LITTLE_ENDIAN: &[&str] = &[EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN];
        let mut extra: Vec<(&str, &[&str])> = vec![(VERIFICATION, LITTLE_ENDIAN)];
        if self.destination.storage_commitment.is_some() {
            extra.push((dimse::STORAGE_COMMITMENT, LITTLE_ENDIAN));
        }
        let options = match association_options_with(
            &self.calling_ae,
            self.destination.ae_title.as_str(),
            self.max_pdu,
            self.timeout,
            items,
            &extra,
        ) {
            Ok(o) => o,
            Err(e) => {
                // Too many SOP classes for one association: send the first half now; the
                // rest stays queued and goes with the next batch.
                let half = items.len() / 2;
                if half == 0 {
                    verdicts[0] = Some(classify::unassociable(e));
                    return Attempt {
                        verdicts,
                        commitment: None,
                    };
                }
                let first = Box::pin(self.deliver(store, &items[..half], throttle)).await;
                for (v, slot) in first.verdicts.into_iter().zip(verdicts.iter_mut()) {
                    *slot = v;
                }
                return Attempt {
                    verdicts,
                    commitment: first.commitment,
                };
            }
        };
        let address = self.address();
        let mut peer = match storescu::connect(
            options,
            &address,
            self.tls.as_ref(),
            self.timeout,
            self.timeout,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                let v = classify::transport(e);
                return Attempt {
                    verdicts: vec![Some(v); items.len()],
                    commitment: None,
                };
            }
        };
        for (item, slot) in items.iter().zip(verdicts.iter_mut()) {
            if let Some(t) = throttle {
                t.take(item.size).await;
            }
            match peer.send(store, item, self.memory_limit, None).await {
                Ok(status) => *slot = Some(classify::store_status(status, None)),
                Err(e) => {
                    *slot = Some(classify::send_error(&e));
                    if e.association_lost() {
                        // The rest of the batch waits for the next association.
                        break;
                    }
                }
            }
        }
        let commitment = if self.destination.storage_commitment.is_some() && peer.is_open() {
            self.request_commitment(&mut peer, items, &mut verdicts)
                .await
        } else {
            None
        };
        if peer.is_open() {
            let _ = peer.release().await;
        } else {
            peer.abort().await;
        }
        Attempt {
            verdicts,
            commitment,
        }
    }

    /// Asks the destination to commit to the instances it stored. Those then wait for its
    /// report instead of counting as delivered; if it will not be asked, they are sent
    /// again later (a destination configured for commitment must commit).
    async fn request_commitment(
        &self,
        peer: &mut storescu::Peer,
        items: &[Retrievable],
        verdicts: &mut [Option<Verdict>],
    ) -> Option<Requested> {
        let stored: Vec<usize> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| matches!(v, Some(Verdict::Delivered { .. })))
            .map(|(i, _)| i)
            .collect();
        if stored.is_empty() {
            return None;
        }
        let refs: Vec<Reference> = stored
            .iter()
            .map(|&i| Reference {
                sop_class_uid: items[i].sop_class_uid.clone(),
                sop_instance_uid: items[i].sop_instance_uid.clone(),
            })
            .collect();
        let transaction_uid = format!("2.25.{}", rand::random::<u128>());
        let failed = match peer
            .request_commitment(&transaction_uid, &refs, self.destination.commitment_wait)
            .await
        {
            Ok(r) if r.status.is_success() => {
                return Some(Requested {
                    transaction_uid,
                    indices: stored,
                    report: r.report,
                });
            }
            Ok(r) => format!(
                "the destination refused the Storage Commitment request with status {}",
                r.status
            ),
            Err(e) => format!("the Storage Commitment request failed: {e}"),
        };
        for i in stored {
            verdicts[i] = Some(classify::commitment_request_failed(failed.clone()));
        }
        None
    }

    /// A C-ECHO on a fresh association.
    pub async fn probe(&self) -> Result<(), String> {
        storescu::echo(
            &self.calling_ae,
            self.destination.ae_title.as_str(),
            &self.address(),
            self.tls.as_ref(),
            self.timeout,
            self.timeout,
        )
        .await
        .map_err(|e| e.to_string())
    }
}
