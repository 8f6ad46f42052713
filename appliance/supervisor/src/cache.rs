//! Cache upkeep: whenever the data volume is above its high watermark, evict the confirmed
//! instances of the least recently used studies, and say so in the log, the audit trail and
//! an [`api::Event`].

use std::time::Duration;

use audit::{Audit, Event, EventKind, Outcome};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the cache is checked against its watermarks.
const CACHE_CHECK: Duration = Duration::from_secs(10);
/// After a pass above the watermark that found nothing to evict: finding candidates walks the
/// studies, so with nothing confirmed (a destination down for days) it is not repeated
/// every ten seconds.
const CACHE_RECHECK_WHEN_STUCK: Duration = Duration::from_secs(300);

/// Evicts confirmed instances of the least recently used studies whenever the data volume
/// is above the high watermark, and says so in the log and the audit trail.
pub(crate) async fn maintain(
    store: store::Store,
    audit: Audit,
    events: broadcast::Sender<api::Event>,
    stop: CancellationToken,
) {
    let mut warned_full = false;
    let mut wait = CACHE_CHECK;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = CACHE_CHECK;
        match store.maintain_cache().await {
            Ok(None) => warned_full = false,
            Ok(Some(r)) if r.instances == 0 => {
                wait = CACHE_RECHECK_WHEN_STUCK;
                if !warned_full {
                    warn!(
                        "the data volume is above its high watermark and nothing can be evicted: no instance has a confirmed upstream copy; ingest stops at the free-space floor"
                    );
                    warned_full = true;
                }
            }
            Ok(Some(r)) => {
                warned_full = false;
                info!(
                    instances = r.instances,
                    studies = r.studies,
                    megabytes = r.bytes / 1_000_000,
                    percent_after = format!("{:.1}", r.percent_after),
                    "evicted confirmed instances from the cache"
                );
                let _ = events.send(api::Event::Evicted {
                    instances: r.instances,
                    studies: r.studies,
                    bytes: r.bytes,
                });
                audit.record(Event::new(EventKind::InstancesEvicted, Outcome::Success).detail(
                    format!(
                        "cache eviction: {} instance(s) of {} study(ies), {} MB, held upstream only now",
                        r.instances,
                        r.studies,
                        r.bytes / 1_000_000
                    ),
                ));
            }
            Err(e) => warn!(error = %e, "cache maintenance failed"),
        }
    }
}
