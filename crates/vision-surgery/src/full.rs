//! The unmodified Qwen3-VL: image preprocessing, the vision tower and the decoder, every
//! image encoded at request time. This is the baseline the surgery is measured against
//! and the teacher that adapter distillation learns from.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::DynamicImage;

use crate::checkpoint::{Checkpoint, ModelSource};
use crate::config::Qwen3VlConfig;
use crate::error::{Error, Result};
use crate::image_processor::{ImageProcessor, PreprocessorConfig};
use crate::model::{SequenceInput, TextModel, VisualInput};
use crate::prompt::{Prompt, PromptTokenizer};
use crate::quant::WeightFormat;
use crate::vision::VisionTower;
use crate::weights::Weights;

/// Name of the image processor's settings in a checkpoint.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// Qwen3-VL with its vision tower: the full-encoder path.
pub struct FullModel {
    config: Qwen3VlConfig,
    model: TextModel,
    vision: VisionTower,
    processor: ImageProcessor,
    tokenizer: Option<PromptTokenizer>,
    weight_bytes: WeightBytes,
}

/// Bytes of weights the full model holds, split by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightBytes {
    /// `model.visual.*` tensors, as stored.
    pub vision: u64,
    /// Every other tensor (decoder and head), as stored.
    pub decoder: u64,
}

impl std::fmt::Debug for FullModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullModel")
            .field("weight_bytes", &self.weight_bytes)
            .finish()
    }
}

impl FullModel {
    /// Load a checkpoint (directory or hub id) with its vision tower, in `dtype` on `device`.
    /// The image processor reads `preprocessor_config.json` when the checkpoint has one
    /// and uses Qwen3-VL's published settings otherwise.
    pub fn load(spec: &str, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with(spec, dtype, device, WeightFormat::Dense)
    }

    /// [`FullModel::load`] with the decoder's projections and head held in `format`
    /// (the vision tower stays in `dtype`), so both paths of a comparison can share
    /// one decoder setting.
    pub fn load_with(
        spec: &str,
        dtype: DType,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(&ModelSource::parse(spec), None)?;
        let config = Qwen3VlConfig::from_file(&checkpoint.config_file()?)?;
        let files = checkpoint.fetch_files(|_| true)?;
        let weights = Weights::open(&files.shards)?;
        let model = TextModel::with_format(&config, &weights, dtype, device, format)?;
        let vision = VisionTower::new(&config, &weights, dtype, device)?;
        let pre = checkpoint.fetch_if_present(PREPROCESSOR_CONFIG)?;
        let pre = match pre {
            Some(p) => PreprocessorConfig::from_file(&p)?,
            None => PreprocessorConfig::default(),
        };
        let processor = Self::checked_processor(&config, pre)?;
        let tokenizer = crate::surgered::load_tokenizer(&files, &config)?;
        let mut weight_bytes = WeightBytes::default();
        for (name, e) in weights.entries() {
            if crate::decoder::is_visual_tensor(name) {
                weight_bytes.vision += (e.range.1 - e.range.0) as u64;
            } else {
                weight_bytes.decoder += (e.range.1 - e.range.0) as u64;
            }
        }
        Ok(Self {
            config,
            model,
            vision,
            processor,
            tokenizer,
            weight_bytes,
        })
    }

    fn checked_processor(cfg: &Qwen3VlConfig, pre: PreprocessorConfig) -> Result<ImageProcessor> {
        let v = cfg.vision_config()?;
        if pre.patch_size != v.patch_size
            || pre.temporal_patch_size != v.temporal_patch_size
            || pre.merge_size != v.spatial_merge_size
        {
            return Err(Error::config(
                "preprocessor_config",
                format!(
                    "patch {} / temporal {} / merge {} disagree with the vision tower's {} / {} / {}",
                    pre.patch_size,
                    pre.temporal_patch_size,
                    pre.merge_size,
                    v.patch_size,
                    v.temporal_patch_size,
                    v.spatial_merge_size
                ),
            ));
        }
        Ok(ImageProcessor::new(pre))
    }

    /// Replace the image processor's settings (min/max pixels, say).
    pub fn set_preprocessor(&mut self, pre: PreprocessorConfig) -> Result<()> {
        self.processor = Self::checked_processor(&self.config, pre)?;
        Ok(())
    }

    /// The parsed config.
    pub fn config(&self) -> &Qwen3VlConfig {
        &self.config
    }

    /// The language model (shared maths with the surgered model).
    pub fn text_model(&self) -> &TextModel {
        &self.model
    }

    /// The vision tower.
    pub fn vision(&self) -> &VisionTower {
        &self.vision
    }

    /// The image processor.
    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    /// The tokenizer, when the checkpoint has one.
    pub fn tokenizer(&self) -> Option<&PromptTokenizer> {
        self.tokenizer.as_ref()
    }

    /// Weight bytes of the vision tower and of the rest.
    pub fn weight_bytes(&self) -> WeightBytes {
        self.weight_bytes
    }

    /// Preprocess `images` and run them through the vision tower: merged visual tokens
    /// of every image in order, their DeepStack features and merged grids.
    pub fn encode_images(&self, images: &[DynamicImage]) -> Result<VisualInput> {
        if images.is_empty() {
            return Err(Error::Input {
                message: "no image to encode".into(),
            });
        }
        let px = self
            .processor
            .preprocess(images, self.model.decoder().device())?;
        let values = px.pixel_values.to_dtype(self.model.decoder().dtype())?;
        self.vision.forward(&values, &px.grids)
    }

    /// Token ids of `prompt` (with one `<item>` marker per image, or none) and the
    /// visual input of `images`, encoded now.
    pub fn prepare(&self, prompt: &Prompt, images: &[DynamicImage]) -> Result<SequenceInput> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            message: "the checkpoint has no tokenizer.json".into(),
        })?;
        if images.is_empty() {
            return Ok(SequenceInput {
                ids: tok.encode_prompt(prompt, 0, 0)?,
                visual: None,
            });
        }
        let visual = self.encode_images(images)?;
        let runs: Vec<usize> = visual.grids.iter().map(|g| g.t * g.h * g.w).collect();
        Ok(SequenceInput {
            ids: tok.encode_prompt_runs(prompt, &runs)?,
            visual: Some(visual),
        })
    }

    /// Decode and encode the image file at `path` (convenience for tools).
    pub fn encode_file(&self, path: &Path) -> Result<VisualInput> {
        self.encode_images(&[ImageProcessor::open(path)?])
    }

    /// Merged visual tokens of one image pooled to `grid` (t x h x w) tokens: the
    /// distillation target for an adapter with that token grid. DeepStack features are
    /// pooled the same way. Returns `(tokens (K, H), deepstack levels (K, H) each)`.
    pub fn pooled_tokens(
        &self,
        image: &DynamicImage,
        grid: crate::position::VisualGrid,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let v = self.encode_images(std::slice::from_ref(image))?;
        let from = v.grids.first().copied().ok_or_else(|| Error::Input {
            message: "the vision tower returned no grid".into(),
        })?;
        let pool =
            adaptive_pool_matrix(from, grid, v.embeds.device())?.to_dtype(v.embeds.dtype())?;
        let tokens = pool.matmul(&v.embeds)?;
        let deepstack = v
            .deepstack
            .iter()
            .map(|d| pool.matmul(d))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((tokens, deepstack))
    }
}

/// The (K, n) averaging matrix of PyTorch's `adaptive_avg_pool3d` from grid `from` to
/// grid `to` (row-major t, h, w on both sides): output cell i along an axis of length
/// `n -> m` averages input cells `floor(i n / m) .. ceil((i + 1) n / m)`.
pub fn adaptive_pool_matrix(
    from: crate::position::VisualGrid,
    to: crate::position::VisualGrid,
    device: &Device,
) -> Result<Tensor> {
    if [from.t, from.h, from.w, to.t, to.h, to.w].contains(&0) {
        return Err(Error::Input {
            message: format!("cannot pool a {from:?} grid to {to:?}"),
        });
    }
    let span = |i: usize, n: usize, m: usize| (i * n / m, ((i + 1) * n).div_ceil(m));
    let (k, n) = (to.t * to.h * to.w, from.t * from.h * from.w);
    let mut m = vec![0f32; k * n];
    for ot in 0..to.t {
        for oh in 0..to.h {
            for ow in 0..to.w {
                let row = (ot * to.h + oh) * to.w + ow;
                let (t0, t1) = span(ot, from.t, to.t);
                let (h0, h1) = span(oh, from.h, to.h);
                let (w0, w1) = span(ow, from.w, to.w);
                let weight = 1.0 / ((t1 - t0) * (h1 - h0) * (w1 - w0)) as f32;
                for t in t0..t1 {
                    for h in h0..h1 {
                        for w in w0..w1 {
                            m[row * n + (t * from.h + h) * from.w + w] = weight;
                        }
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (k, n), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::VisualGrid;

    #[test]
    fn pool_matrix_matches_adaptive_avg_pool() {
        // 1x3x5 -> 1x2x2: rows {0,1},{1,2}; cols {0,1,2},{2,3,4}
        let m = adaptive_pool_matrix(
            VisualGrid::still(3, 5),
            VisualGrid::still(2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let m: Vec<Vec<f32>> = m.to_vec2().unwrap();
        let cell = |r: usize, c: usize| r * 5 + c;
        let expect_ones = |row: &Vec<f32>, cells: &[usize]| {
            for (i, &v) in row.iter().enumerate() {
                let want = if cells.contains(&i) {
                    1.0 / cells.len() as f32
                } else {
                    0.0
                };
                assert!((v - want).abs() < 1e-7, "{i}: {v} vs {want}");
            }
        };
        expect_ones(
            &m[0],
            &[
                cell(0, 0),
                cell(0, 1),
                cell(0, 2),
                cell(1, 0),
                cell(1, 1),
                cell(1, 2),
            ],
        );
        expect_ones(
            &m[3],
            &[
                cell(1, 2),
                cell(1, 3),
                cell(1, 4),
                cell(2, 2),
                cell(2, 3),
                cell(2, 4),
            ],
        );
        assert!(
            adaptive_pool_matrix(
                VisualGrid::still(0, 5),
                VisualGrid::still(1, 1),
                &Device::Cpu
            )
            .is_err()
        );
    }
}
