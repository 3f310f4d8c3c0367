//! Arbitrary bytes as a manifest: a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = embed_store::fuzzing::manifest(data);
});
