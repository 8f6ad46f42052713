//! Fuzzes the command set decoder: it must never panic, and what it accepts must survive an
//! encode/decode round trip unchanged.
#![no_main]

use dimse::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = Command::decode(data) {
        let again = Command::decode(&command.encode()).expect("an encoded command decodes");
        assert_eq!(again, command);
    }
});
