//! Qwen3-VL image preprocessing (Qwen2VLImageProcessor): decode, RGB, smart_resize,
//! bicubic resize with antialias, rescale + normalise, patchify into `pixel_values`.
//!
//! The resize is a port of Pillow's separable resampling (`Resample.c`): Keys cubic
//! (a = -0.5) whose support widens with the downscale factor (antialias), horizontal
//! pass then vertical pass, fixed-point weights with 22 fractional bits and a uint8
//! round-and-clamp after each pass. torchvision's uint8 antialiased bicubic, which the
//! reference processor uses, follows the same algorithm; `docs/vision-surgery.md` gives
//! the measured differences.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::vision::PatchGrid;

fn img_err(message: impl Into<String>) -> Error {
    Error::Image {
        message: message.into(),
    }
}

/// Largest `max_pixels` (longest edge setting) a preprocessor config may declare: 2^28
/// pixels, 16x the released default.
pub const MAX_PIXELS: usize = 1 << 28;

/// Settings read from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessorConfig {
    /// Spatial patch side P.
    pub patch_size: usize,
    /// Frames per temporal patch (a still image is repeated this many times).
    pub temporal_patch_size: usize,
    /// Side of the square of patches merged into one token.
    pub merge_size: usize,
    /// Fewest pixels after resizing (`size.shortest_edge`).
    pub min_pixels: usize,
    /// Most pixels after resizing (`size.longest_edge`).
    pub max_pixels: usize,
    /// Per-channel mean (after rescaling).
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation (after rescaling).
    pub image_std: [f64; 3],
    /// Rescale factor applied before normalising (1/255).
    pub rescale_factor: f64,
}

impl Default for PreprocessorConfig {
    /// Qwen3-VL's published `preprocessor_config.json`.
    fn default() -> Self {
        Self {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 65_536,
            max_pixels: 16_777_216,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

#[derive(Deserialize)]
struct RawSize {
    shortest_edge: Option<usize>,
    longest_edge: Option<usize>,
}

#[derive(Deserialize)]
struct RawPreprocessor {
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    merge_size: Option<usize>,
    size: Option<RawSize>,
    min_pixels: Option<usize>,
    max_pixels: Option<usize>,
    image_mean: Option<[f64; 3]>,
    image_std: Option<[f64; 3]>,
    rescale_factor: Option<f64>,
    resample: Option<u32>,
}

impl PreprocessorConfig {
    /// Read `preprocessor_config.json`. Absent keys take Qwen3-VL's values; both the
    /// `size {shortest_edge, longest_edge}` and the older `min_pixels`/`max_pixels` keys are read.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: RawPreprocessor = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(r) = raw.resample
            && r != 3
        {
            return Err(Error::config(
                "preprocessor_config.resample",
                format!("only bicubic (3) is implemented, found {r}"),
            ));
        }
        let d = Self::default();
        let c = Self {
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            min_pixels: raw
                .size
                .as_ref()
                .and_then(|s| s.shortest_edge)
                .or(raw.min_pixels)
                .unwrap_or(d.min_pixels),
            max_pixels: raw
                .size
                .as_ref()
                .and_then(|s| s.longest_edge)
                .or(raw.max_pixels)
                .unwrap_or(d.max_pixels),
            image_mean: raw.image_mean.unwrap_or(d.image_mean),
            image_std: raw.image_std.unwrap_or(d.image_std),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
        };
        if c.patch_size == 0 || c.merge_size == 0 || c.temporal_patch_size == 0 {
            return Err(Error::config(
                "preprocessor_config",
                "patch_size, merge_size and temporal_patch_size must be > 0",
            ));
        }
        // images are resized to at most max_pixels and cut into patches of these sizes:
        // bounded before any buffer is sized by them
        for (name, v, max) in [
            ("patch_size", c.patch_size, 1024),
            ("temporal_patch_size", c.temporal_patch_size, 64),
            ("merge_size", c.merge_size, 64),
            ("max_pixels", c.max_pixels, MAX_PIXELS),
        ] {
            if v > max {
                return Err(Error::config(
                    format!("preprocessor_config.{name}"),
                    format!("{v} is past the limit of {max}"),
                ));
            }
        }
        if c.min_pixels > c.max_pixels {
            return Err(Error::config(
                "preprocessor_config.size",
                format!(
                    "shortest_edge (min pixels) {} exceeds longest_edge (max pixels) {}",
                    c.min_pixels, c.max_pixels
                ),
            ));
        }
        if c.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(Error::config(
                "preprocessor_config.image_std",
                "must be finite and non-zero",
            ));
        }
        Ok(c)
    }

    /// Width of one `pixel_values` row: C * Tp * P * P.
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// Python's `round` (ties to even) of a non-negative value.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc() - 0.5).abs() < 1e-12 && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    }
}

/// The reference `smart_resize`: both sides multiples of `factor`, area within
/// [min_pixels, max_pixels], aspect ratio kept as far as possible.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(img_err(format!("image is {width}x{height}: empty")));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(img_err(format!(
            "absolute aspect ratio must be smaller than 200, got {}",
            h.max(w) / h.min(w)
        )));
    }
    let mut hb = round_half_even(h / f) * f;
    let mut wb = round_half_even(w / f) * f;
    if hb * wb > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        hb = f.max((h / beta / f).floor() * f);
        wb = f.max((w / beta / f).floor() * f);
    } else if hb * wb < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        hb = (h * beta / f).ceil() * f;
        wb = (w * beta / f).ceil() * f;
    }
    Ok((hb as usize, wb as usize))
}

/// RGB with any transparency composited onto white, as the reference `convert_to_rgb`.
pub fn to_rgb(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for c in 0..3 {
            o[c] = ((p[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index, tap count, and fixed-point weights.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax) {
            *wx = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *wx;
        }
        for (x, wx) in w.iter().enumerate().take(xmax) {
            let v = if total != 0.0 { wx / total } else { *wx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64 + if v < 0.0 { -0.5 } else { 0.5 };
            weights[xx * ksize + x] = fixed as i32;
        }
        bounds.push((xmin, xmax));
    }
    Taps {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize an RGB image to `out_w` x `out_h` with antialiased bicubic (Pillow's algorithm).
pub fn resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    // horizontal pass
    let horizontal: Vec<u8> = if out_w == in_w {
        src.clone()
    } else {
        let t = taps(in_w, out_w);
        let mut out = vec![0u8; in_h * out_w * 3];
        for y in 0..in_h {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (xx, &(xmin, n)) in t.bounds.iter().enumerate() {
                let k = &t.weights[xx * t.ksize..xx * t.ksize + n];
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (j, &kj) in k.iter().enumerate() {
                    let p = &row[(xmin + j) * 3..(xmin + j) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * kj;
                    }
                }
                let o = (y * out_w + xx) * 3;
                for c in 0..3 {
                    out[o + c] = clip8(acc[c]);
                }
            }
        }
        out
    };
    // vertical pass
    let data = if out_h == in_h {
        horizontal
    } else {
        let t = taps(in_h, out_h);
        let mut out = vec![0u8; out_h * out_w * 3];
        for (yy, &(ymin, n)) in t.bounds.iter().enumerate() {
            let k = &t.weights[yy * t.ksize..yy * t.ksize + n];
            for x in 0..out_w {
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (j, &kj) in k.iter().enumerate() {
                    let o = ((ymin + j) * out_w + x) * 3;
                    for c in 0..3 {
                        acc[c] += horizontal[o + c] as i32 * kj;
                    }
                }
                let o = (yy * out_w + x) * 3;
                for c in 0..3 {
                    out[o + c] = clip8(acc[c]);
                }
            }
        }
        out
    };
    RgbImage::from_raw(out_w as u32, out_h as u32, data)
        .unwrap_or_else(|| RgbImage::new(out_w as u32, out_h as u32))
}

/// Images ready for the vision tower.
#[derive(Debug, Clone)]
pub struct PixelValues {
    /// (total patches, C * Tp * P * P) rows, images in order, each in merge-block order.
    pub pixel_values: Tensor,
    /// Each image's grid in patches.
    pub grids: Vec<PatchGrid>,
}

/// The Qwen3-VL image processor.
#[derive(Debug, Clone, Default)]
pub struct ImageProcessor {
    cfg: PreprocessorConfig,
}

impl ImageProcessor {
    /// A processor with these settings.
    pub fn new(cfg: PreprocessorConfig) -> Self {
        Self { cfg }
    }

    /// The settings.
    pub fn config(&self) -> &PreprocessorConfig {
        &self.cfg
    }

    /// Decode an image file (PNG, JPEG, GIF, WebP).
    pub fn open(path: &Path) -> Result<DynamicImage> {
        image::open(path).map_err(|e| img_err(format!("{}: {e}", path.display())))
    }

    /// Decode an image from bytes.
    pub fn decode(bytes: &[u8]) -> Result<DynamicImage> {
        image::load_from_memory(bytes).map_err(|e| img_err(e.to_string()))
    }

    /// RGB conversion and resize to the smart_resize target: what the vision tower sees.
    pub fn resized(&self, img: &DynamicImage) -> Result<RgbImage> {
        let rgb = to_rgb(img);
        let c = &self.cfg;
        let (h, w) = smart_resize(
            rgb.height() as usize,
            rgb.width() as usize,
            c.patch_size * c.merge_size,
            c.min_pixels,
            c.max_pixels,
        )?;
        if (h, w) == (rgb.height() as usize, rgb.width() as usize) {
            return Ok(rgb);
        }
        Ok(resize_bicubic(&rgb, w, h))
    }

    /// Normalise and patchify an already resized image, appending its rows to `out`.
    pub fn patchify_into(&self, rgb: &RgbImage, out: &mut Vec<f32>) -> Result<PatchGrid> {
        let c = &self.cfg;
        let (p, m, tp) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        if h % (p * m) != 0 || w % (p * m) != 0 {
            return Err(img_err(format!(
                "{w}x{h} is not a multiple of patch_size * merge_size = {}",
                p * m
            )));
        }
        // fused rescale + normalise, as the reference: (x - mean / r) / (std / r) in f32
        let mean: [f32; 3] = std::array::from_fn(|i| (c.image_mean[i] / c.rescale_factor) as f32);
        let std: [f32; 3] = std::array::from_fn(|i| (c.image_std[i] / c.rescale_factor) as f32);
        let (gh, gw) = (h / p, w / p);
        let raw = rgb.as_raw();
        out.reserve(gh * gw * c.patch_dim());
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (r0, c0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for ch in 0..3 {
                            for _ in 0..tp {
                                for y in 0..p {
                                    let row = (r0 + y) * w;
                                    for x in 0..p {
                                        let v = raw[(row + c0 + x) * 3 + ch] as f32;
                                        out.push((v - mean[ch]) / std[ch]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(PatchGrid { t: 1, h: gh, w: gw })
    }

    /// Preprocess several images into one `pixel_values` matrix and their grids.
    pub fn preprocess(&self, images: &[DynamicImage], device: &Device) -> Result<PixelValues> {
        let mut data = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for img in images {
            let resized = self.resized(img)?;
            grids.push(self.patchify_into(&resized, &mut data)?);
        }
        let rows: usize = grids.iter().map(PatchGrid::patches).sum();
        Ok(PixelValues {
            pixel_values: Tensor::from_vec(data, (rows, self.cfg.patch_dim()), device)?,
            grids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_the_reference_rules() {
        // rounding to the factor, ties to even: 48/32 = 1.5 -> 2, 80/32 = 2.5 -> 2
        assert_eq!(
            smart_resize(480, 640, 32, 0, usize::MAX).unwrap(),
            (480, 640)
        );
        assert_eq!(smart_resize(48, 80, 32, 0, usize::MAX).unwrap(), (64, 64));
        // below min_pixels: scaled up
        assert_eq!(
            smart_resize(120, 160, 32, 65536, 16777216).unwrap(),
            (224, 320)
        );
        // above max_pixels: scaled down, floor
        let (h, w) = smart_resize(4000, 3000, 32, 0, 1 << 20).unwrap();
        assert!(h * w <= 1 << 20 && h % 32 == 0 && w % 32 == 0, "{h}x{w}");
        assert!(smart_resize(10, 2100, 32, 0, usize::MAX).is_err());
    }

    #[test]
    fn identity_and_constant_resizes() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 11) as u8, 200])
        });
        assert_eq!(resize_bicubic(&img, 37, 23), img);
        let flat = RgbImage::from_pixel(50, 40, image::Rgb([90, 140, 250]));
        for (w, h) in [(17, 13), (96, 64), (50, 81)] {
            let r = resize_bicubic(&flat, w, h);
            assert!(r.pixels().all(|p| p.0 == [90, 140, 250]), "{w}x{h}");
        }
    }
}
