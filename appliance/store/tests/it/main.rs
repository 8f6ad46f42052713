//! Integration tests of the store: ingest, duplicates, the free-space floor, start-up repair,
//! power cuts at the I/O seam, and C-FIND matching over a real index.

mod cache;
mod disk;
mod ingest;
mod outbox;
mod power_cut;
mod quarantine;
mod query;
pub(crate) mod reconcile;
mod support;
