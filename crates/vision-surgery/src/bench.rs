//! The two request paths the surgery is measured on, shared by `cargo bench --bench
//! surgery_vs_full_encoder` and `cargo run --example bench_surgery`.
//!
//! One request: a prompt with N items and one scored continuation, on the same decoder
//! with the same settings (weight format, prefix cache): the prompt's leading text (the
//! chat header, system prompt and instructions, the same on every request) is what a
//! prefix cache holds, so with one both paths start after it.
//! - **Full path** (the unmodified model): decode each item's image (JPEG bytes),
//!   preprocess it, encode it with the vision tower, prefill the prompt with its merged
//!   tokens (and DeepStack features), score the continuation.
//! - **Surgery path**: run the adapter on the items' precomputed embeddings, prefill the
//!   prompt with K soft tokens per item (and the adapter's DeepStack features), score the
//!   same continuation.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageFormat, RgbImage};

use crate::adapter::EmbeddingAdapter;
use crate::error::{Error, Result};
use crate::full::FullModel;
use crate::image_processor::ImageProcessor;
use crate::model::{ContinuationScore, SequenceInput, TextModel};

/// Text around the items of a benchmark request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestText {
    /// Prompt tokens before the first item (chat header, system prompt, instructions).
    pub head: Vec<u32>,
    /// Prompt tokens after the last item (end of turn and assistant header).
    pub tail: Vec<u32>,
    /// The continuation to score.
    pub continuation: Vec<u32>,
}

impl RequestText {
    /// Deterministic pseudo-random text ids below `special_base` (36 head, 4 tail, 4
    /// continuation tokens): the decoder's cost does not depend on which ids they are.
    /// The same `seed` gives the same head (the shared instructions).
    pub fn synthetic(special_base: u32, seed: u64) -> Self {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % special_base.max(1) as u64) as u32
                })
                .collect()
        };
        Self {
            head: next(36),
            tail: next(4),
            continuation: next(4),
        }
    }

    /// The prompt ids with one visual run of `runs[i]` placeholders per item.
    pub fn prompt(&self, model: &TextModel, runs: &[usize]) -> Vec<u32> {
        let t = model.tokens();
        let mut ids = self.head.clone();
        for &n in runs {
            ids.push(t.vision_start_token_id);
            ids.extend(std::iter::repeat_n(t.image_token_id, n));
            ids.push(t.vision_end_token_id);
        }
        ids.extend_from_slice(&self.tail);
        ids
    }
}

/// Deterministic `side` x `side` test images, JPEG-encoded (quality 90): smooth colour
/// fields with per-image structure, so decoding and resizing do real work.
pub fn synthetic_jpegs(n: usize, side: u32, seed: u64) -> Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|i| {
            let k = (seed as f32 + i as f32 * 0.37).sin();
            let img = RgbImage::from_fn(side, side, |x, y| {
                let (fx, fy) = (x as f32 / side as f32, y as f32 / side as f32);
                let r = 127.0 + 120.0 * (6.0 * fx + 3.0 * k).sin();
                let g = 127.0 + 120.0 * (5.0 * fy - 2.0 * k).cos();
                let b = 127.0 + 120.0 * (9.0 * (fx * fy) + k).sin();
                image::Rgb([r as u8, g as u8, b as u8])
            });
            let mut bytes = std::io::Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(img)
                .write_to(&mut bytes, ImageFormat::Jpeg)
                .map_err(|e| Error::Image {
                    message: format!("encoding test image {i}: {e}"),
                })?;
            Ok(bytes.into_inner())
        })
        .collect()
}

/// Where the full path's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FullTiming {
    /// Decoding, resizing, normalising and patchifying the images.
    pub preprocess: Duration,
    /// The vision tower (blocks, merger, DeepStack mergers).
    pub vision: Duration,
    /// Prefill of the prompt and scoring of the continuation.
    pub decoder: Duration,
}

impl FullTiming {
    /// The whole request.
    pub fn total(&self) -> Duration {
        self.preprocess + self.vision + self.decoder
    }
}

/// Where the surgery path's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SurgeryTiming {
    /// The adapter on the item embeddings.
    pub adapter: Duration,
    /// Prefill of the prompt and scoring of the continuation.
    pub decoder: Duration,
}

impl SurgeryTiming {
    /// The whole request.
    pub fn total(&self) -> Duration {
        self.adapter + self.decoder
    }
}

/// One request on the full path: `images` are encoded image files, encoded by
/// `full`'s vision tower; `model` is the decoder to run (`full.text_model()`, or a clone
/// of it with its own prefix cache).
pub fn run_full(
    full: &FullModel,
    model: &TextModel,
    images: &[Vec<u8>],
    text: &RequestText,
) -> Result<(FullTiming, ContinuationScore)> {
    let t0 = Instant::now();
    let decoded = images
        .iter()
        .map(|b| ImageProcessor::decode(b))
        .collect::<Result<Vec<_>>>()?;
    let device = model.decoder().device().clone();
    let px = full.processor().preprocess(&decoded, &device)?;
    let values = px.pixel_values.to_dtype(model.decoder().dtype())?;
    sync(&device)?;
    let t1 = Instant::now();
    let visual = full.vision().forward(&values, &px.grids)?;
    sync(&device)?;
    let t2 = Instant::now();
    let runs: Vec<usize> = visual.grids.iter().map(|g| g.t * g.h * g.w).collect();
    let seq = SequenceInput {
        ids: text.prompt(model, &runs),
        visual: Some(visual),
    };
    let score = first_score(model.score(seq, std::slice::from_ref(&text.continuation))?)?;
    let t3 = Instant::now();
    Ok((
        FullTiming {
            preprocess: t1 - t0,
            vision: t2 - t1,
            decoder: t3 - t2,
        },
        score,
    ))
}

/// One request on the surgery path: `items` (N, in_dim) are precomputed embeddings.
pub fn run_surgery(
    model: &TextModel,
    adapter: &EmbeddingAdapter,
    items: &Tensor,
    text: &RequestText,
) -> Result<(SurgeryTiming, ContinuationScore)> {
    let device = model.decoder().device().clone();
    let t0 = Instant::now();
    let n = items.dim(0)?;
    let k = adapter.spec().tokens_per_item;
    let visual = adapter.visual_input(items)?;
    sync(&device)?;
    let t1 = Instant::now();
    let seq = SequenceInput {
        ids: text.prompt(model, &vec![k; n]),
        visual: Some(visual),
    };
    let score = first_score(model.score(seq, std::slice::from_ref(&text.continuation))?)?;
    let t2 = Instant::now();
    Ok((
        SurgeryTiming {
            adapter: t1 - t0,
            decoder: t2 - t1,
        },
        score,
    ))
}

fn first_score(mut v: Vec<ContinuationScore>) -> Result<ContinuationScore> {
    v.pop().ok_or_else(|| Error::Input {
        message: "scoring returned nothing".into(),
    })
}

fn sync(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes; `None` where
/// `/proc` is unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reset this process's peak resident set size to the current one (Linux
/// `/proc/self/clear_refs`, value 5); returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
