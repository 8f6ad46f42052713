//! Connections whose A-ASSOCIATE-RQ has not arrived yet, bounded apart from the association
//! slots: at most [`PER_SOURCE`] per source address and [`TOTAL`] in all.
//!
//! The AE title is known only once the request is read, and a flood often shares its address
//! with the real caller (NAT, loopback). So a new connection is never refused: over a limit,
//! the oldest incomplete connection of its source (or, over the total, of the source holding
//! the most) is closed instead. A real caller sends its request at once and leaves the
//! registry long before a flood's newer connections push it out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

pub(crate) const PER_SOURCE: usize = 64;
pub(crate) const TOTAL: usize = 256;

#[derive(Default)]
struct Inner {
    next: u64,
    total: usize,
    /// Per source, oldest first: (id, token cancelled to close the connection).
    by_source: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
}

#[derive(Default)]
pub(crate) struct Pending {
    inner: Mutex<Inner>,
}

/// One connection's place; dropping it (request read, or connection gone) frees it.
pub(crate) struct Ticket {
    pending: Arc<Pending>,
    source: IpAddr,
    id: u64,
    /// Cancelled when a newer connection pushed this one out.
    pub cut: CancellationToken,
}

impl Pending {
    /// Registers a new connection from `source`, closing older incomplete ones over a limit.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Ticket {
        let source = source.to_canonical();
        let cut = CancellationToken::new();
        let mut inner = self.inner.lock().expect("pending lock");
        let id = inner.next;
        inner.next += 1;
        let mine = inner.by_source.entry(source).or_default();
        mine.push_back((id, cut.clone()));
        let mut evicted = Vec::new();
        if mine.len() > PER_SOURCE
            && let Some(old) = mine.pop_front()
        {
            evicted.push(old.1);
        }
        inner.total += 1;
        inner.total -= evicted.len();
        if inner.total > TOTAL {
            // The source holding the most places pays its oldest; on a tie another source
            // does, so that a newcomer's only connection is never the one closed.
            let heaviest = inner
                .by_source
                .iter()
                .max_by_key(|(ip, q)| (q.len(), **ip != source))
                .map(|(ip, _)| *ip)
                .unwrap_or(source);
            if let Some(q) = inner.by_source.get_mut(&heaviest)
                && let Some(old) = q.pop_front()
            {
                evicted.push(old.1);
                inner.total -= 1;
            }
        }
        inner.by_source.retain(|_, q| !q.is_empty());
        drop(inner);
        for token in evicted {
            token.cancel();
        }
        Ticket {
            pending: self.clone(),
            source,
            id,
            cut,
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.inner.lock().expect("pending lock").total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.pending.inner.lock().expect("pending lock");
        let mut removed = false;
        if let Some(q) = inner.by_source.get_mut(&self.source)
            && let Some(i) = q.iter().position(|(id, _)| *id == self.id)
        {
            q.remove(i);
            removed = true;
            if q.is_empty() {
                inner.by_source.remove(&self.source);
            }
        }
        if removed {
            inner.total -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_source_limit_the_oldest_is_cut_and_the_new_one_kept() {
        let pending = Arc::new(Pending::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let tickets: Vec<Ticket> = (0..PER_SOURCE + 3).map(|_| pending.admit(ip)).collect();
        assert!(tickets[..3].iter().all(|t| t.cut.is_cancelled()));
        assert!(tickets[3..].iter().all(|t| !t.cut.is_cancelled()));
        assert_eq!(pending.count(), PER_SOURCE);
        drop(tickets);
        assert_eq!(pending.count(), 0);
    }

    #[test]
    fn over_the_total_the_heaviest_source_pays() {
        let pending = Arc::new(Pending::default());
        let mut tickets = Vec::new();
        for i in 0..TOTAL {
            let ip: IpAddr = format!("10.0.{}.{}", i / PER_SOURCE, i % PER_SOURCE)
                .parse()
                .unwrap();
            tickets.push(pending.admit(ip));
        }
        let flood: IpAddr = "10.9.9.9".parse().unwrap();
        let first = pending.admit(flood);
        assert_eq!(pending.count(), TOTAL);
        // Every source holds one: another source's connection is closed, the newcomer kept.
        assert!(!first.cut.is_cancelled());
        assert_eq!(tickets.iter().filter(|t| t.cut.is_cancelled()).count(), 1);
        // Now the flood is the heaviest source: it loses its own oldest.
        let second = pending.admit(flood);
        assert!(first.cut.is_cancelled());
        assert!(!second.cut.is_cancelled());
        assert_eq!(pending.count(), TOTAL);
    }
}
