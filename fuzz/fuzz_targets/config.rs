//! Arbitrary bytes as a Qwen3-VL config.json: a typed error or a clean read-back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vision_surgery::fuzzing::config(data);
});
