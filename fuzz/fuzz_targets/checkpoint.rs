//! Arbitrary bytes as a LightGCN trainer checkpoint: a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mosaic_testkit::taste_graph_fuzz::checkpoint(data);
});
