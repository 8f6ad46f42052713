//! Fuzzes the conversion a C-MOVE, C-GET or forwarding does for a receiver that cannot take
//! the stored transfer syntax: the input is a stored Part 10 file, converted to each native
//! syntax under a 64 MiB transcode limit (a configuration the appliance accepts). The review
//! found deflate bombs inflated whole and codecs that allocate by a codestream's own
//! dimensions; here a conversion may fail, but it may not panic nor take more heap than the
//! guard allows.
#![no_main]

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use libfuzzer_sys::fuzz_target;

const TARGETS: [&str; 3] = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.2",
];

const LIMIT: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    alloc_guard::start();
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let target = TARGETS[usize::from(pick) % TARGETS.len()];
    if let Ok(converted) = transcode::to_native(file, target, LIMIT) {
        assert!(
            converted.len() as u64 <= LIMIT,
            "{} bytes converted past the limit",
            converted.len()
        );
    }
});
