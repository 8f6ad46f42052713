//! Fuzzes the whole way from wire bytes to the index: the input is read as a stream of PDUs
//! (dicom-ul's parser), command fragments are reassembled and decoded as C-STORE requests,
//! and data fragments stream into a real store (over the in-memory backends) exactly as an
//! association would feed it. Nothing may panic, and whatever the store accepts must be
//! found in the index and read back byte for byte. No input may take more heap than the
//! guard allows (`alloc_guard`).
#![no_main]

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use std::sync::{Arc, OnceLock};

use dicom_ul::pdu::{PDataValueType, Pdu, read_pdu};
use dimse::{Command, CommandField};
use libfuzzer_sys::fuzz_target;
use store::crash::{MemBackend, MemFs, Power};
use store::{IndexBackend, IngestRequest, Store, StoreConfig};

const SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
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

fuzz_target!(|data: &[u8]| {
    alloc_guard::start();
    let Some((&ts, mut rest)) = data.split_first() else {
        return;
    };
    let ts = SYNTAXES[usize::from(ts) % SYNTAXES.len()];
    let mut fragments = Vec::new();
    while !rest.is_empty() {
        match read_pdu(rest, 1 << 20, true) {
            Ok(Some(pdu)) => {
                let consumed = pdu_length(rest);
                rest = &rest[consumed..];
                if let Pdu::PData { data } = pdu {
                    fragments.extend(data);
                }
            }
            _ => break,
        }
    }
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
        let mut command_bytes = Vec::new();
        let mut fragments = fragments.into_iter();
        while let Some(pdv) = fragments.next() {
            if pdv.value_type != PDataValueType::Command {
                continue;
            }
            command_bytes.extend_from_slice(&pdv.data);
            if !pdv.is_last {
                continue;
            }
            let Ok(command) = Command::decode(&std::mem::take(&mut command_bytes)) else {
                continue;
            };
            if command.field != CommandField::C_STORE_RQ || !command.has_data_set {
                continue;
            }
            let request = IngestRequest {
                sop_class_uid: command.sop_class().to_string(),
                sop_instance_uid: command
                    .affected_sop_instance_uid
                    .clone()
                    .unwrap_or_default(),
                transfer_syntax: ts.to_string(),
                source_ae: "FUZZ".into(),
            };
            let Ok(mut ingest) = store.begin(request).await else {
                continue;
            };
            let mut sent = Vec::new();
            for d in fragments.by_ref() {
                if d.value_type != PDataValueType::Data {
                    break;
                }
                sent.extend_from_slice(&d.data);
                ingest.write(d.data).await;
                if d.is_last {
                    break;
                }
            }
            if let Ok(receipt) = ingest.finish().await {
                let q = store::query::Identifier {
                    level: store::query::Level::Image,
                    charset: dataset::charset::Charset::Default,
                    keys: vec![dataset::Element {
                        tag: dataset::tags::SOP_INSTANCE_UID,
                        vr: dataset::Vr::UI,
                        value: receipt.sop_instance_uid.clone().into_bytes(),
                    }],
                };
                let found = store
                    .resolve(store::query::Model::StudyRoot, &q)
                    .expect("a stored instance resolves");
                assert_eq!(found.len(), 1);
                let mut file = store
                    .open_file(&found[0].file)
                    .expect("the stored file opens");
                let mut back = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut back).expect("readable");
                if receipt.outcome == store::Outcome::Stored {
                    assert_eq!(&back[found[0].dataset_offset as usize..], &sent[..]);
                }
            }
        }
        store.close().await.expect("the store closes");
    });
});

fn pdu_length(bytes: &[u8]) -> usize {
    6 + u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize
}
