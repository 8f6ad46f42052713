//! The one place that turns how a delivery ended into what happens to its queue entry:
//! acknowledged, tried again after the backoff, given up on (dead-lettered), dropped, or left
//! as it is.
//!
//! Two steps, two places. `forward::classify` says what kind of ending it was, from the
//! destination's own terms (a DIMSE status, an HTTP status, a transport error) to a
//! [`Verdict`]. [`settle`] then says what follows, from the verdict, the attempts the entry
//! has made, the destination's [`Backoff`] and the time. Every path goes through it: a
//! worker's delivery, a Storage Commitment refusal or expiry (settled inside the index
//! writer's transaction, with the backoff the transaction was recorded with), and the alert
//! webhook's posts. So one backoff formula exists, and a verdict is never turned into another
//! anywhere else.

use serde::{Deserialize, Serialize};

use crate::outbox::{QueueKey, QueueOp};

/// How delivering one instance to one destination ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The destination has it. `note` keeps a warning the destination gave (coercion,
    /// "already stored"), for the log. `confirmed` is false when the warning says the copy
    /// upstream is not the whole instance (elements discarded, data set not matching its
    /// class): delivered, but not a copy the local one may be evicted for.
    Delivered {
        note: Option<String>,
        confirmed: bool,
    },
    /// Try again later; `after` is the destination's own hint (HTTP Retry-After), which
    /// overrides the backoff when longer.
    Retry {
        reason: String,
        after: Option<std::time::Duration>,
    },
    /// Give up until someone resubmits it.
    DeadLetter { reason: String },
    /// The destination as a whole is unreachable or unavailable (connection refused, TLS
    /// failure, timeout, HTTP 502/503/504/408/429): nothing is wrong with the instance, so
    /// the attempt does not count against it; the destination is marked down and probed.
    Unreachable {
        reason: String,
        after: Option<std::time::Duration>,
    },
}

impl Verdict {
    pub fn retry(reason: impl Into<String>) -> Verdict {
        Verdict::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    pub fn dead(reason: impl Into<String>) -> Verdict {
        Verdict::DeadLetter {
            reason: reason.into(),
        }
    }

    pub fn delivered() -> Verdict {
        Verdict::Delivered {
            note: None,
            confirmed: true,
        }
    }

    /// The reason in words ("delivered" for a delivery).
    pub fn reason(&self) -> &str {
        match self {
            Verdict::Retry { reason, .. }
            | Verdict::Unreachable { reason, .. }
            | Verdict::DeadLetter { reason } => reason,
            Verdict::Delivered { .. } => "delivered",
        }
    }
}

/// A destination's retry policy: `initial_ms` after the first failure, multiplied by
/// `multiplier_milli / 1000` after each further one, never more than `max_ms`; given up after
/// `max_attempts` (`None`: never).
///
/// Durable: a Storage Commitment transaction is recorded with the backoff its instances are
/// settled by (the field order is the record's format; see `appliance/store/DESIGN.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial_ms: u64,
    /// The multiplier, in thousandths (2.0 is 2000).
    pub multiplier_milli: u32,
    pub max_ms: u64,
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// The wait after the `attempts`-th failed attempt (1 for the first).
    pub fn delay_ms(&self, attempts: u32) -> u64 {
        let m = f64::from(self.multiplier_milli) / 1000.0;
        let f = m.powi(attempts.saturating_sub(1).min(64) as i32);
        ((self.initial_ms as f64) * f)
            .min(self.max_ms as f64)
            .round() as u64
    }
}

/// What happens to the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Delivered: acknowledge it (confirmed upstream, or not, as the verdict says).
    Ack {
        confirmed: bool,
        note: Option<String>,
    },
    /// Try again no sooner than `not_before_ms`; `counts` whether this attempt counts
    /// against the instance (not when the destination as a whole asked for a pause).
    Retry {
        reason: String,
        not_before_ms: u64,
        counts: bool,
        attempts: u32,
    },
    /// Give up until someone resubmits it.
    Dead { reason: String },
    /// The file it was for is no longer the stored one (replaced by a newer copy, which has
    /// its own entry, or evicted once every destination had it): nothing is lost by
    /// dropping the entry, and a dead letter would send a technician after nothing.
    Drop,
    /// Nothing wrong with the instance and no pause asked for: the entry stays as it is.
    Leave { reason: String },
}

/// What follows from `verdict` for an entry that had made `attempts` attempts before this one,
/// under `backoff`, at `now_ms` (Unix milliseconds). `file_stored`: whether the file the
/// attempt was for is still the stored one.
pub fn settle(
    verdict: Verdict,
    attempts: u32,
    backoff: &Backoff,
    now_ms: u64,
    file_stored: bool,
) -> Decision {
    match verdict {
        Verdict::Delivered { note, confirmed } => Decision::Ack { confirmed, note },
        Verdict::Retry { reason, after } => {
            let attempts = attempts.saturating_add(1);
            if backoff.max_attempts.is_some_and(|max| attempts >= max) {
                return Decision::Dead {
                    reason: format!("gave up after {attempts} attempts: {reason}"),
                };
            }
            // A server's Retry-After is honoured up to the policy's longest delay, so a bogus
            // hint cannot park an instance for centuries.
            let hint = after.map_or(0, |a| (a.as_millis() as u64).min(backoff.max_ms));
            Decision::Retry {
                reason,
                not_before_ms: now_ms + backoff.delay_ms(attempts).max(hint),
                counts: true,
                attempts,
            }
        }
        Verdict::DeadLetter { .. } if !file_stored => Decision::Drop,
        Verdict::DeadLetter { reason } => Decision::Dead { reason },
        Verdict::Unreachable { reason, after } => match after {
            Some(after) => Decision::Retry {
                reason,
                not_before_ms: now_ms + (after.as_millis() as u64).min(backoff.max_ms),
                counts: false,
                attempts,
            },
            None => Decision::Leave { reason },
        },
    }
}

/// An instance of a Storage Commitment transaction that was not confirmed: the destination
/// refused to commit to it, or no report came in time. Either counts as a failed attempt and
/// waits the backoff, so an archive that never commits, or never manages to report (behind
/// NAT), is not sent everything again every timeout for ever.
pub fn settle_unconfirmed(
    reason: String,
    attempts: u32,
    backoff: &Backoff,
    now_ms: u64,
) -> Decision {
    settle(Verdict::retry(reason), attempts, backoff, now_ms, true)
}

impl Decision {
    /// The queue operation that carries out this decision for entry `key` of `destination`
    /// (the instance and the file the attempt was for); `None` for [`Decision::Leave`].
    pub fn into_op(
        self,
        destination: &str,
        key: QueueKey,
        sop_instance_uid: &str,
        file: &str,
    ) -> Option<QueueOp> {
        let destination = destination.to_string();
        Some(match self {
            Decision::Ack { confirmed, .. } => QueueOp::Ack {
                destination,
                key,
                sop_instance_uid: sop_instance_uid.to_string(),
                file: file.to_string(),
                confirmed,
            },
            Decision::Retry {
                reason,
                not_before_ms,
                counts,
                ..
            } => QueueOp::Retry {
                destination,
                key,
                reason,
                not_before_ms,
                counts,
            },
            Decision::Dead { reason } => QueueOp::Dead {
                destination,
                key,
                reason,
            },
            Decision::Drop => QueueOp::Drop { destination, key },
            Decision::Leave { .. } => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backoff(max_attempts: Option<u32>) -> Backoff {
        Backoff {
            initial_ms: 10_000,
            multiplier_milli: 2_000,
            max_ms: 3_600_000,
            max_attempts,
        }
    }

    #[test]
    fn a_retry_waits_the_backoff_then_gives_up_at_the_limit() {
        let b = backoff(Some(3));
        let d = settle(Verdict::retry("busy"), 0, &b, 1_000, true);
        assert_eq!(
            d,
            Decision::Retry {
                reason: "busy".into(),
                not_before_ms: 11_000,
                counts: true,
                attempts: 1
            }
        );
        let d = settle(Verdict::retry("busy"), 1, &b, 1_000, true);
        assert!(
            matches!(
                d,
                Decision::Retry {
                    not_before_ms: 21_000,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = settle(Verdict::retry("busy"), 2, &b, 1_000, true);
        assert_eq!(
            d,
            Decision::Dead {
                reason: "gave up after 3 attempts: busy".into()
            }
        );
        // The delay stops growing at the maximum.
        let d = settle(Verdict::retry("busy"), 40, &backoff(None), 0, true);
        assert!(
            matches!(
                d,
                Decision::Retry {
                    not_before_ms: 3_600_000,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn a_retry_after_hint_counts_up_to_the_longest_delay() {
        let b = backoff(None);
        let hinted = |after| Verdict::Retry {
            reason: "busy".into(),
            after: Some(after),
        };
        let d = settle(hinted(Duration::from_secs(60)), 0, &b, 0, true);
        assert!(
            matches!(
                d,
                Decision::Retry {
                    not_before_ms: 60_000,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = settle(hinted(Duration::from_secs(1)), 0, &b, 0, true);
        assert!(
            matches!(
                d,
                Decision::Retry {
                    not_before_ms: 10_000,
                    ..
                }
            ),
            "{d:?}"
        );
        let d = settle(hinted(Duration::from_secs(1 << 40)), 0, &b, 0, true);
        assert!(
            matches!(
                d,
                Decision::Retry {
                    not_before_ms: 3_600_000,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn an_unreachable_destination_costs_the_instance_nothing() {
        let b = backoff(Some(1));
        let d = settle(
            Verdict::Unreachable {
                reason: "refused".into(),
                after: None,
            },
            5,
            &b,
            0,
            true,
        );
        assert_eq!(
            d,
            Decision::Leave {
                reason: "refused".into()
            }
        );
        let d = settle(
            Verdict::Unreachable {
                reason: "HTTP 503".into(),
                after: Some(Duration::from_secs(30)),
            },
            5,
            &b,
            0,
            true,
        );
        assert_eq!(
            d,
            Decision::Retry {
                reason: "HTTP 503".into(),
                not_before_ms: 30_000,
                counts: false,
                attempts: 5
            }
        );
    }

    #[test]
    fn a_dead_letter_for_a_file_no_longer_stored_is_dropped() {
        let b = backoff(None);
        assert_eq!(
            settle(Verdict::dead("refused"), 0, &b, 0, true),
            Decision::Dead {
                reason: "refused".into()
            }
        );
        assert_eq!(
            settle(Verdict::dead("refused"), 0, &b, 0, false),
            Decision::Drop
        );
        assert_eq!(
            settle(Verdict::delivered(), 0, &b, 0, false),
            Decision::Ack {
                confirmed: true,
                note: None
            }
        );
    }
}
