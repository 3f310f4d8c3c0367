//! Arbitrary bytes as a damaged taste-graph journal directory (first byte: which file): a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = taste_graph::fuzzing::journal(data);
});
