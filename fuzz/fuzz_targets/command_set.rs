//! Fuzzes the command set decoder: it must never panic, and what it accepts must survive an
//! encode/decode round trip unchanged, nor take more heap than the guard allows.
#![no_main]

#[path = "alloc_guard.rs"]
mod alloc_guard;

#[global_allocator]
static GUARD: alloc_guard::Guard = alloc_guard::Guard;

use dimse::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    alloc_guard::start();
    if let Ok(command) = Command::decode(data) {
        let again = Command::decode(&command.encode()).expect("an encoded command decodes");
        assert_eq!(again, command);
    }
});
