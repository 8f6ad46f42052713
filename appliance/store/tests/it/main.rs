//! Integration tests of the store: ingest, duplicates, the free-space floor, start-up repair,
//! power cuts at the I/O seam, and C-FIND matching over a real index.

mod ingest;
mod power_cut;
mod query;
mod reconcile;
mod support;
