//! Arbitrary bytes as LightGCN-format train and test text: a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mosaic_testkit::taste_graph_fuzz::dataset(data);
});
