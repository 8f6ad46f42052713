//! The archive's records in the API's terms: each store type to its `api` twin, field by
//! field, so the durable records and the API change only when someone means them to.

/// How full the archive is.
pub fn usage(u: store::Usage) -> api::Usage {
    api::Usage {
        used_bytes: u.used_bytes,
        capacity_bytes: u.capacity_bytes,
        stored_bytes: u.stored_bytes,
    }
}

pub fn queue_summary(q: store::outbox::QueueSummary) -> api::QueueSummary {
    api::QueueSummary {
        destination: q.destination,
        depth: q.depth,
        dead: q.dead,
        paused: q.paused,
        oldest_enqueued_at: q.oldest_enqueued_at,
        last_error: q.last_error,
        awaiting_commitment: q.awaiting_commitment,
    }
}

pub fn dead_letter((seq, d): (u64, store::outbox::DeadLetter)) -> (u64, api::DeadLetter) {
    let e = d.entry;
    (
        seq,
        api::DeadLetter {
            entry: api::QueueEntry {
                sop_instance_uid: e.sop_instance_uid,
                study_uid: e.study_uid,
                enqueued_at: e.enqueued_at,
                attempts: e.attempts,
                last_error: e.last_error,
                not_before_ms: e.not_before_ms,
            },
            rank: d.rank,
            reason: d.reason,
            at: d.at,
        },
    )
}

pub fn held_correction(h: &store::outbox::HeldCorrection) -> api::HeldCorrection {
    api::HeldCorrection {
        sop_instance_uid: h.sop_instance_uid.clone(),
        destinations: h.destinations.clone(),
        study_uid: h.study_uid.clone(),
        bytes: h.bytes,
        since: h.since,
    }
}

pub fn stalled_claim(c: store::outbox::StalledClaim) -> api::StalledClaim {
    api::StalledClaim {
        destination: c.destination,
        configured: c.configured,
        instances: c.instances,
        bytes: c.bytes,
        sole: c.sole,
    }
}

pub fn recall_mismatch(
    (sop, m): (String, store::outbox::RecallMismatch),
) -> (String, api::RecallMismatch) {
    (
        sop,
        api::RecallMismatch {
            evicted_size: m.evicted_size,
            evicted_crc32c: m.evicted_crc32c,
            recalled_size: m.recalled_size,
            recalled_crc32c: m.recalled_crc32c,
            at: m.at,
        },
    )
}

/// One held instance: what a person needs to decide, not the whole index record.
pub fn quarantine_row(h: &store::Held) -> api::QuarantineRow {
    api::QuarantineRow {
        seq: h.seq,
        sop_instance_uid: h.conflict.sop_instance_uid.clone(),
        study_uid: h.conflict.study_uid.clone(),
        modality: h.extracted.modality.clone(),
        patient_id: store::record::patient_id_of(&h.conflict.patient_key).to_string(),
        study_patient_id: store::record::patient_id_of(&h.conflict.study_patient_key).to_string(),
        reason: h.conflict.to_string(),
        source_ae: h.record.source_ae.clone(),
        bytes: h.record.size,
        held_at: h.held_at,
    }
}

/// The forwarder's view of a destination.
pub fn live_state(s: &forward::DestinationStatus) -> api::LiveState {
    api::LiveState {
        kind: s.kind.to_string(),
        state: format!("{:?}", s.state).to_lowercase(),
        since: s.since,
        last_error: s.last_error.clone(),
        delivered: s.delivered,
        retried: s.retried,
        dead_lettered: s.dead_lettered,
        outside_window: s.outside_window,
        held_on_battery: s.held_on_battery,
        commitment_alert: s.commitment_alert.clone(),
    }
}
