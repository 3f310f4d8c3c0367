#!/usr/bin/env python3
"""Images and reference pixel_values for the Rust Qwen3-VL image processor.

Draws a few images with PIL (a photo-like scene as JPEG, a tall PNG with text, a small
image that smart_resize upscales, an RGBA PNG with transparency, a palette GIF), runs
transformers' Qwen2VLImageProcessor (torchvision backend, the default for Qwen3-VL) and
its PIL backend with Qwen3-VL's preprocessor_config.json, and writes:

  OUT/images/*.{jpg,png,gif}
  OUT/preprocessor_config.json
  OUT/expected.safetensors   per image i: image_grid_thw_i; resized_i (uint8 CxHxW, the
                             torchvision bicubic+antialias resize the processor does) and
                             resized_pil_i (the PIL backend's); pixel_values_i for the
                             smallest image only (the others follow from resized_i, which
                             the script checks)
  OUT/manifest.json          versions, sizes

Usage: make_image_fixtures.py OUT   (needs torch, torchvision, transformers, pillow, safetensors)
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

QWEN3VL_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
    "resample": 3, "rescale_factor": 1 / 255,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
}


def scene(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 200 + 30, y / h * 180 + 40, (x + y) / (w + h) * 150 + 60], -1)
    base += rng.normal(0, 12, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        r = int(rng.integers(10, max(11, min(w, h) // 4)))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=col)
        else:
            d.rectangle([x0 - r, y0 - r // 2, x0 + r, y0 + r // 2], fill=col, outline=(0, 0, 0), width=3)
    return img.filter(ImageFilter.GaussianBlur(0.8))


def main():
    out = sys.argv[1]
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    images = {}
    img = scene(461, 347, 1)
    p = os.path.join(out, "images", "scene_461x347.jpg")
    img.save(p, quality=90)
    images["scene_461x347.jpg"] = p

    tall = scene(210, 630, 2)
    d = ImageDraw.Draw(tall)
    for i in range(0, 630, 30):
        d.text((6, i), f"line {i // 30}: visual discovery", fill=(255, 255, 255))
        d.line([(0, i), (210, i + 15)], fill=(0, 0, 0), width=1)
    p = os.path.join(out, "images", "tall_210x630.png")
    tall.save(p)
    images["tall_210x630.png"] = p

    small = scene(160, 120, 3)  # below min_pixels: smart_resize upscales it
    p = os.path.join(out, "images", "small_160x120.png")
    small.save(p)
    images["small_160x120.png"] = p

    rgba = scene(250, 190, 4).convert("RGBA")
    a = np.array(rgba)
    yy, xx = np.mgrid[0:190, 0:250]
    a[..., 3] = np.clip(255 * (xx / 250) + 30 * np.sin(yy / 9), 0, 255).astype(np.uint8)
    rgba = Image.fromarray(a, "RGBA")
    p = os.path.join(out, "images", "alpha_250x190.png")
    rgba.save(p)
    images["alpha_250x190.png"] = p

    pal = scene(300, 220, 5).quantize(colors=32)
    p = os.path.join(out, "images", "palette_300x220.gif")
    pal.save(p)
    images["palette_300x220.gif"] = p

    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(QWEN3VL_PREPROCESSOR, f, indent=2)
        f.write("\n")

    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    kw = {k: v for k, v in QWEN3VL_PREPROCESSOR.items() if k != "image_processor_type"}
    tv = Qwen2VLImageProcessor(**kw)
    pil = Qwen2VLImageProcessorPil(**kw)
    import torchvision.transforms.functional as tvF
    from transformers.image_transforms import convert_to_rgb
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    # record the resize the processor itself performs
    import transformers.image_processing_backends as backends
    real_resize = backends.tvF.resize
    captured = {}

    def recording_resize(img, size, **kw):
        out = real_resize(img, size, **kw)
        captured["in"], captured["out"] = img.clone(), out.clone()
        return out

    backends.tvF.resize = recording_resize
    tensors, meta = {}, {}
    smallest = min(images, key=lambda n: Image.open(images[n]).size[0] * Image.open(images[n]).size[1])
    for i, (name, path) in enumerate(sorted(images.items())):
        im = Image.open(path)
        r = tv(images=[im], return_tensors="pt")
        rp = pil(images=[im], return_tensors="pt")
        t, gh, gw = r["image_grid_thw"][0].tolist()
        rgb = torch.from_numpy(convert_to_rgb(im, return_numpy=True)).permute(2, 0, 1).contiguous()
        assert torch.equal(captured["in"][0], rgb), name
        h, w = smart_resize(rgb.shape[1], rgb.shape[2], factor=32, min_pixels=65536, max_pixels=16777216)
        assert (h, w) == (gh * 16, gw * 16)
        resized = captured["out"][0]
        again = real_resize(rgb[None], [h, w], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)[0]
        rerun_diff = int((again.int() - resized.int()).abs().max())
        resized_pil = torch.from_numpy(np.array(Image.fromarray(rgb.permute(1, 2, 0).numpy()).resize((w, h), Image.BICUBIC))).permute(2, 0, 1)
        # the processor's pixel_values follow from `resized`: normalise + patchify and compare
        x = (resized.float() - 127.5) / 127.5
        x = x.reshape(3, gh // 2, 2, 16, gw // 2, 2, 16).permute(1, 4, 2, 5, 0, 3, 6)
        x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, 2, -1, -1).reshape(gh * gw, 3 * 2 * 16 * 16)
        dv = float((x - r["pixel_values"]).abs().max())
        assert dv < 1e-6, (name, dv)
        tensors[f"image_grid_thw_{i}"] = r["image_grid_thw"].long().contiguous()
        tensors[f"resized_{i}"] = resized.contiguous()
        tensors[f"resized_pil_{i}"] = resized_pil.contiguous()
        if name == smallest:
            tensors[f"pixel_values_{i}"] = r["pixel_values"].float().contiguous()
        meta[name] = {"index": i, "size": list(im.size), "mode": im.mode, "resized_hw": [h, w],
                      "grid_thw": [t, gh, gw],
                      "torchvision_vs_pil_pixel_values_max_abs": float((r["pixel_values"] - rp["pixel_values"]).abs().max()),
                      "torchvision_vs_pil_resize_max_abs_u8": int((resized.int() - resized_pil.int()).abs().max()),
                      "torchvision_same_call_outside_processor_max_abs_u8": rerun_diff}
    from safetensors.torch import save_file
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    import torchvision
    import transformers
    import PIL
    manifest = {"generator": "scripts/make_image_fixtures.py", "images": meta,
                "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                             "transformers": transformers.__version__, "pillow": PIL.__version__}}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
