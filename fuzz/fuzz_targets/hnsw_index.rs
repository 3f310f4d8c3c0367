//! Arbitrary bytes as an HNSW index file of `embed_store::fuzzing::index_snapshot`: a
//! typed error or searches that return, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = embed_store::fuzzing::hnsw_index(data);
});
