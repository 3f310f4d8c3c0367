//! The Rust image processor against transformers' Qwen2VLImageProcessor on images made by
//! scripts/make_image_fixtures.py (torchvision backend, plus Pillow's resize for reference).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vision_surgery::image_processor::{ImageProcessor, PreprocessorConfig};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

struct Case {
    name: String,
    index: usize,
    lossless: bool,
}

fn cases() -> (Vec<Case>, HashMap<String, Tensor>) {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let mut v: Vec<Case> = manifest["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, m)| Case {
            name: name.clone(),
            index: m["index"].as_u64().unwrap() as usize,
            lossless: !name.ends_with(".jpg"),
        })
        .collect();
    v.sort_by_key(|c| c.index);
    let t =
        candle_core::safetensors::load(dir().join("expected.safetensors"), &Device::Cpu).unwrap();
    (v, t)
}

/// (max, mean) |a - b| over u8 images given as (C, H, W) tensors.
fn u8_diff(ours: &image::RgbImage, want: &Tensor) -> (u8, f64) {
    let want = want.to_dtype(DType::U8).unwrap();
    let (c, h, w) = want.dims3().unwrap();
    assert_eq!(
        (c, h, w),
        (3, ours.height() as usize, ours.width() as usize)
    );
    let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    let mut max = 0u8;
    let mut sum = 0u64;
    for y in 0..h {
        for x in 0..w {
            let p = ours.get_pixel(x as u32, y as u32);
            for ch in 0..3 {
                let d = p[ch].abs_diff(want[(ch * h + y) * w + x]);
                max = max.max(d);
                sum += d as u64;
            }
        }
    }
    (max, sum as f64 / (c * h * w) as f64)
}

#[test]
fn resize_and_grids_match_the_reference_processor() {
    let proc = ImageProcessor::new(
        PreprocessorConfig::from_file(&dir().join("preprocessor_config.json")).unwrap(),
    );
    let (cases, t) = cases();
    assert!(cases.len() >= 5);
    for c in &cases {
        let img = ImageProcessor::open(&dir().join("images").join(&c.name)).unwrap();
        let ours = proc.resized(&img).unwrap();
        let grid: Vec<i64> = t[&format!("image_grid_thw_{}", c.index)]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            grid,
            vec![1, ours.height() as i64 / 16, ours.width() as i64 / 16],
            "{}: grid",
            c.name
        );
        let (tv_max, tv_mean) = u8_diff(&ours, &t[&format!("resized_{}", c.index)]);
        let (pil_max, pil_mean) = u8_diff(&ours, &t[&format!("resized_pil_{}", c.index)]);
        println!(
            "{:>20}: vs torchvision max {tv_max} mean {tv_mean:.4} | vs Pillow max {pil_max} mean {pil_mean:.4} (uint8 levels)",
            c.name
        );
        if c.lossless {
            // same decoded pixels: the Pillow port is exact, torchvision within one level
            assert_eq!(pil_max, 0, "{}", c.name);
            assert!(tv_max <= 1, "{}", c.name);
        } else {
            // JPEG decoders differ slightly (zune-jpeg vs libjpeg-turbo)
            assert!(tv_max <= 8 && tv_mean < 0.5, "{}", c.name);
        }
    }
}

#[test]
fn pixel_values_match_the_reference_processor() {
    let proc = ImageProcessor::new(
        PreprocessorConfig::from_file(&dir().join("preprocessor_config.json")).unwrap(),
    );
    let (cases, t) = cases();
    let c = cases
        .iter()
        .find(|c| t.contains_key(&format!("pixel_values_{}", c.index)))
        .expect("one image has full pixel_values");
    let img = ImageProcessor::open(&dir().join("images").join(&c.name)).unwrap();
    let out = proc.preprocess(&[img], &Device::Cpu).unwrap();
    let want = &t[&format!("pixel_values_{}", c.index)];
    assert_eq!(out.pixel_values.dims(), want.dims());
    let d = (&out.pixel_values - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!(
        "{}: pixel_values max|Δ| = {d:.3e} (one uint8 level = {:.3e})",
        c.name,
        2.0 / 255.0
    );
    assert!(d <= 2.0 / 255.0 + 1e-6, "{d}");

    // several images in one request: rows concatenated, grids in order
    let imgs: Vec<_> = cases
        .iter()
        .take(3)
        .map(|c| ImageProcessor::open(&dir().join("images").join(&c.name)).unwrap())
        .collect();
    let many = proc.preprocess(&imgs, &Device::Cpu).unwrap();
    let rows: usize = many.grids.iter().map(|g| g.patches()).sum();
    assert_eq!(many.pixel_values.dims(), &[rows, 1536]);
}

#[test]
fn bad_images_are_typed_errors() {
    let e = ImageProcessor::decode(b"not an image").unwrap_err();
    assert!(matches!(e, vision_surgery::Error::Image { .. }), "{e}");
    let e = ImageProcessor::open(Path::new("/nonexistent/x.png")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.png"), "{e}");
    let thin = image::DynamicImage::new_rgb8(2000, 5);
    let e = ImageProcessor::default().resized(&thin).unwrap_err();
    assert!(e.to_string().contains("aspect ratio"), "{e}");
}

#[test]
fn oversized_preprocessor_settings_are_config_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("preprocessor_config.json");
    for (json, field) in [
        (r#"{"max_pixels": 18446744073709551615}"#, "max_pixels"),
        (
            r#"{"size": {"shortest_edge": 1, "longest_edge": 1099511627776}}"#,
            "max_pixels",
        ),
        (r#"{"patch_size": 4294967296}"#, "patch_size"),
        (r#"{"merge_size": 100000}"#, "merge_size"),
    ] {
        std::fs::write(&path, json).unwrap();
        let e = PreprocessorConfig::from_file(&path).unwrap_err();
        assert!(
            matches!(e, vision_surgery::Error::Config { .. }) && e.to_string().contains(field),
            "{json}: {e}"
        );
    }
}
