//! Fuzzes a C-FIND from its identifier's bytes to the matches: the identifier is read as the
//! SCP reads it (`store::query::read_identifier`: bounded inflation, at most 1,024 distinct
//! keys) in the transfer syntax the first byte picks, then run against a small archive. The
//! review's inputs (120,000 empty keys, deflated identifiers that inflate without end) took
//! gigabytes; here no input may take more heap than the guard allows, or panic.
#![no_main]

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use std::sync::{Arc, OnceLock};

use dataset::Encoding;
use dataset::synth::SynthInstance;
use dataset::ts::syntax_info;
use libfuzzer_sys::fuzz_target;
use store::crash::{MemBackend, MemFs, Power};
use store::query::Model;
use store::{IndexBackend, IngestRequest, Store, StoreConfig};

const SYNTAXES: [&str; 3] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Three patients, six studies, 36 instances: enough that keys times matches counts.
fn archive() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        runtime().block_on(async {
            let power = Power::steady();
            let mut config = StoreConfig::new("/data");
            config.min_free_bytes = 0;
            config.index_cache_bytes = 1 << 20;
            let (store, _) = Store::open_with(
                config,
                Arc::new(MemFs::new(power.clone())),
                IndexBackend::custom(MemBackend::new(power)),
            )
            .expect("an empty store opens");
            for p in 0..3 {
                for s in 0..2 {
                    for i in 0..6 {
                        let inst = SynthInstance::ct(p, s, 1, i);
                        let mut ingest = store
                            .begin(IngestRequest {
                                sop_class_uid: inst.sop_class.clone(),
                                sop_instance_uid: inst.sop_uid.clone(),
                                transfer_syntax: SYNTAXES[0].into(),
                                source_ae: "FUZZ".into(),
                            })
                            .await
                            .expect("the archive takes instances");
                        ingest.write(inst.dataset(Encoding::EXPLICIT_LE)).await;
                        ingest.finish().await.expect("stored");
                    }
                }
            }
            store
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let store = archive();
    alloc_guard::start();
    let Some((&pick, identifier)) = data.split_first() else {
        return;
    };
    let info = syntax_info(SYNTAXES[usize::from(pick & 0x7F) % SYNTAXES.len()]).expect("known");
    let model = if pick & 0x80 == 0 {
        Model::StudyRoot
    } else {
        Model::PatientRoot
    };
    let Ok(identifier) = store::query::read_identifier(info, model, identifier) else {
        return;
    };
    // As the SCP does: matches up to its cap; a refusal is an answer too.
    if let Ok(found) = store.find(model, &identifier, 10_000) {
        assert!(found.len() <= 36 * 4, "more matches than entities");
    }
    let _ = store.resolve(model, &identifier);
});
