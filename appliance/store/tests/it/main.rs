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
mod versions;

/// Files in a store's temporary directory, but for the empty spares it makes ahead for the
/// next instances (an instance being received into a spare has bytes, and counts).
pub(crate) fn tmp_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data_dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !(p.extension().is_some_and(|e| e == "spare")
                && std::fs::metadata(p).is_ok_and(|m| m.len() == 0))
        })
        .collect()
}
