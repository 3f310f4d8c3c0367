//! Arbitrary bytes as a damaged refresher state directory (first byte: which file): a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mosaic_testkit::taste_graph_fuzz::refresh_state(data);
});
