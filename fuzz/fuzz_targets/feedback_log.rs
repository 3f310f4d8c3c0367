//! Arbitrary bytes as a damaged feedback log (first byte: which segment): a typed error or a clean replay, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mosaic_testkit::taste_graph_fuzz::feedback_log(data);
});
