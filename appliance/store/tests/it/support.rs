//! Helpers shared by the store tests.

use dataset::Encoding;
use dataset::synth::SynthInstance;
use dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
use store::{IngestRequest, Outcome, Store, StoreConfig};

pub fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    // Test machines may have little free space; the floor is tested on its own.
    c.min_free_bytes = 0;
    c
}

pub fn request(inst: &SynthInstance) -> IngestRequest {
    IngestRequest {
        sop_class_uid: inst.sop_class.clone(),
        sop_instance_uid: inst.sop_uid.clone(),
        transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        source_ae: "TESTSCU".into(),
    }
}

/// Stores data set bytes the way an association would: in fragments of `chunk` bytes.
pub async fn store_bytes(
    store: &Store,
    req: IngestRequest,
    bytes: &[u8],
    chunk: usize,
) -> Result<Outcome, store::IngestError> {
    let mut ingest = store.begin(req).await?;
    for piece in bytes.chunks(chunk.max(1)) {
        ingest.write(piece.to_vec()).await;
    }
    ingest.finish().await.map(|r| r.outcome)
}

pub async fn store_instance(store: &Store, inst: &SynthInstance) -> Outcome {
    store_bytes(
        store,
        request(inst),
        &inst.dataset(Encoding::EXPLICIT_LE),
        16 * 1024,
    )
    .await
    .expect("instance stored")
}

/// The data set bytes of a stored instance, read back from its file.
pub fn stored_dataset(store: &Store, sop: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let q = store::query::Identifier {
        level: store::query::Level::Image,
        charset: dataset::charset::Charset::Default,
        keys: vec![dataset::Element {
            tag: dataset::tags::SOP_INSTANCE_UID,
            vr: dataset::Vr::UI,
            value: sop.as_bytes().to_vec(),
        }],
    };
    let found = store.resolve(store::query::Model::StudyRoot, &q).ok()?;
    let item = found.into_iter().next()?;
    let mut f = store.open_file(&item.file).ok()?;
    f.seek(SeekFrom::Start(item.dataset_offset)).ok()?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).ok()?;
    Some(out)
}

/// A router sending every instance to one destination, except those from `UPSTREAM`.
#[derive(Debug)]
pub struct EveryInstanceTo(pub &'static str);

impl store::Router for EveryInstanceTo {
    fn destinations(&self) -> Vec<String> {
        vec![self.0.to_string()]
    }
    fn route(&self, source_ae: &str, _instance: &store::record::Extracted) -> Vec<store::Route> {
        if source_ae == "UPSTREAM" {
            return Vec::new();
        }
        vec![store::Route {
            destination: self.0.to_string(),
            rank: 2,
        }]
    }
}

/// The SOP Instance UIDs queued for a destination (due or not).
pub fn queued_uids(store: &Store, destination: &str) -> std::collections::HashSet<String> {
    store
        .outbox_peek(
            destination,
            usize::MAX,
            &Default::default(),
            u64::MAX,
            usize::MAX,
        )
        .expect("reading the outbox")
        .ready
        .into_iter()
        .map(|q| q.entry.sop_instance_uid)
        .collect()
}

/// The file (relative to the data directory) the index names for an instance.
pub fn stored_file(store: &Store, sop: &str) -> Option<String> {
    let q = store::query::Identifier {
        level: store::query::Level::Image,
        charset: dataset::charset::Charset::Default,
        keys: vec![dataset::Element {
            tag: dataset::tags::SOP_INSTANCE_UID,
            vr: dataset::Vr::UI,
            value: sop.as_bytes().to_vec(),
        }],
    };
    let found = store.resolve(store::query::Model::StudyRoot, &q).ok()?;
    Some(found.into_iter().next()?.file)
}
