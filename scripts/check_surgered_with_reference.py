#!/usr/bin/env python3
"""A surgered checkpoint is usable beyond Mosaic: the reference loads it and agrees.

For each fixture, saves the Mosaic-surgered copy (`cargo run --example surgery`), loads
it with transformers' AutoModelForCausalLM (Qwen3ForCausalLM / Qwen3MoeForCausalLM, no
vision tower invented), runs the fixture's text-only case and compares the logits with
the Qwen3-VL golden. Writes crates/vision-surgery/tests/fixtures/surgered/<name>.json:
the architecture the reference built, the max |logit difference|, and the tensor names
and shapes the reference itself writes for that model (save_pretrained), which the Rust
test holds Mosaic's saved layout to. Needs torch==2.15.0 transformers==5.23.0.
    /path/to/venv/bin/python scripts/check_surgered_with_reference.py [fixture ...]
"""

import json
import pathlib
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/vision-surgery/tests/fixtures"


def tensors(d):
    out = {}
    for f in sorted(pathlib.Path(d).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = st.get_slice(k).get_shape()
    return dict(sorted(out.items()))


def check(name):
    with tempfile.TemporaryDirectory() as tmp:
        surgered = pathlib.Path(tmp) / "surgered"
        subprocess.run(
            ["cargo", "run", "-q", "--example", "surgery", "--", "--model", str(FIX / name / "model"),
             "--out", str(surgered), "--dtype", "f32"],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        model = AutoModelForCausalLM.from_pretrained(str(surgered), dtype=torch.float32,
                                                     attn_implementation="eager").eval()
        case = load_file(str(FIX / name / "cases/a_text.safetensors"))
        with torch.no_grad():
            logits = model(input_ids=case["input_ids"]).logits
        diff = float((logits.float() - case["logits"]).abs().max())
        written = pathlib.Path(tmp) / "reference"
        model.save_pretrained(str(written), safe_serialization=True)
        out = {
            "fixture": name,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "architecture": type(model).__name__,
            "a_text_logits_max_abs_diff_vs_qwen3_vl_golden": diff,
            "reference_writes": tensors(written),
        }
    (FIX / "surgered").mkdir(exist_ok=True)
    (FIX / "surgered" / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{name}: {out['architecture']}, a_text max|diff| {diff:.3g}")
    return diff


def main(names):
    worst = max(check(n) for n in (names or ["tiny-s0", "tiny-s1-tied", "tiny-s4-moe"]))
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
