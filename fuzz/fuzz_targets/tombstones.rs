//! Arbitrary bytes as a tombstone file (the first two bytes, little-endian, give the
//! segment's row count): a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let [a, b, file @ ..] = data {
        let rows = u16::from_le_bytes([*a, *b]) as usize;
        let _ = embed_store::fuzzing::tombstones(file, rows);
    }
});
