//! Arbitrary bytes as .npy import input (u16 length, vectors file, ids file): a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = embed_store::fuzzing::npy(data);
});
