#!/usr/bin/env python3
"""Qwen3-VL fixtures beyond the shared tool: mixture-of-experts decoders and bf16.

Runs ../shared/tools/qwen3vl_fixture.py (or $QWEN3VL_FIXTURE) with its cases, inputs and
verification unchanged, swapping in:
  --moe                 Qwen3VLMoeForConditionalGeneration (qwen3_vl_moe): a router and
                        --experts experts of width --moe-intermediate per sparse layer,
                        --experts-per-tok chosen per token, --sparse-step and
                        --mlp-only-layers as in the released configs
  --dtype bfloat16      the model cast to bf16 after the f32 random init, saved in bf16,
                        every golden computed by the reference in bf16 (stored as f32,
                        exactly)
Expert matrices get fan-in scaled random weights (the shared tool's rule reads a 3-D
tensor's fan-in wrongly), and the router N(0, 1/H) so tokens spread over experts.
Needs: torch==2.15.0 transformers==5.23.0 safetensors numpy.
  python scripts/qwen3vl_fixture_ext.py --moe --out DIR --seed 4 [shared tool flags]
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOL = pathlib.Path(os.environ.get("QWEN3VL_FIXTURE", ROOT.parent / "shared/tools/qwen3vl_fixture.py"))
sys.path.insert(0, str(TOOL.parent))
import qwen3vl_fixture as base  # noqa: E402

EXT = {"moe": False, "dtype": "float32"}
_build_arg_parser = base.build_arg_parser
_build_config = base.build_config
_randomize = base.randomize_
_save_case = base.save_case
_run_injected = base.run_injected
_run_injected_manual = base.run_injected_manual


def _cast(model, visual_embeds, deepstack):
    # caller-supplied embeddings enter the model in its dtype (the Rust side casts the
    # stored f32 values the same way: round to nearest even)
    dt = model.dtype
    return visual_embeds.to(dt), [d.to(dt) for d in deepstack]


def run_injected(model, input_ids, image_grid_thw, visual_embeds, deepstack):
    v, d = _cast(model, visual_embeds, deepstack)
    return _run_injected(model, input_ids, image_grid_thw, v, d)


def run_injected_manual(model, input_ids, position_ids, visual_embeds, deepstack):
    v, d = _cast(model, visual_embeds, deepstack)
    return _run_injected_manual(model, input_ids, position_ids, v, d)


def save_case(out_dir, name, tensors, meta):
    # bf16 goldens are stored as f32 (exact: every bf16 value is an f32 value)
    tensors = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in tensors.items()}
    _save_case(out_dir, name, tensors, meta)


def build_arg_parser():
    p = _build_arg_parser()
    p.add_argument("--moe", action="store_true", help="qwen3_vl_moe decoder")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--experts-per-tok", type=int, default=2)
    p.add_argument("--moe-intermediate", type=int, default=32)
    p.add_argument("--sparse-step", type=int, default=1)
    p.add_argument("--mlp-only-layers", default="", help="layer indexes with a dense MLP")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--min-router-margin", type=float, default=0.0,
                   help="fail unless every routed token's k-th and (k+1)-th expert probabilities "
                        "differ by at least this in every case (so routing cannot flip on rounding)")
    return p


@torch.no_grad()
def router_margin(out_dir, attn):
    """Smallest gap between the k-th and (k+1)-th router probability over every routed
    token of every case, as the reference computes it."""
    from safetensors.torch import load_file

    model = load_model(os.path.join(out_dir, "model"), attn)
    gaps = []

    def hook(mod, inp, out):
        logits, _, idx = out
        p = torch.softmax(logits.float(), -1).sort(-1, descending=True).values
        k = idx.shape[-1]
        if k < p.shape[-1]:
            gaps.append(float((p[:, k - 1] - p[:, k]).min()))

    hooks = [m.register_forward_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
    cases = os.path.join(out_dir, "cases")
    for f in sorted(os.listdir(cases)):
        if not f.endswith(".safetensors"):
            continue
        t = load_file(os.path.join(cases, f))
        if f.startswith("a_"):
            base.run_full(model, t["input_ids"])
        elif f.startswith(("b_", "c_")):
            base.run_full(model, t["input_ids"], t["pixel_values"], t["image_grid_thw"])
        elif f.startswith("d_"):
            ds = [t[k] for k in sorted(k for k in t if k.startswith("deepstack_"))]
            run_injected(model, t["input_ids"], t["image_grid_thw"], t["visual_embeds"], ds)
        elif f.startswith("e_"):
            base.greedy_decode(model, t["input_ids"], t["pixel_values"], t["image_grid_thw"],
                               t["generated_ids"].numel())
    for h in hooks:
        h.remove()
    return min(gaps) if gaps else None


def build_config(args):
    EXT["moe"], EXT["dtype"] = args.moe, args.dtype
    cfg = _build_config(args)
    if not args.moe:
        return cfg
    from transformers import Qwen3VLMoeConfig

    d = cfg.to_dict()
    text = {k: v for k, v in d["text_config"].items() if k not in ("model_type", "architectures")}
    text.update(
        num_experts=args.experts,
        num_experts_per_tok=args.experts_per_tok,
        moe_intermediate_size=args.moe_intermediate,
        decoder_sparse_step=args.sparse_step,
        mlp_only_layers=base.parse_ints(args.mlp_only_layers) if args.mlp_only_layers else [],
    )
    vision = {k: v for k, v in d["vision_config"].items() if k not in ("model_type", "architectures")}
    return Qwen3VLMoeConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id,
        vision_start_token_id=cfg.vision_start_token_id,
        vision_end_token_id=cfg.vision_end_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )


@torch.no_grad()
def randomize_(model, seed: int):
    _randomize(model, seed)
    g = torch.Generator().manual_seed(seed + 2_000_029)
    for name, p in model.named_parameters():
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            # (E, out, in) in transformers 5: fan-in is the last axis
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))


def model_class():
    import transformers

    return transformers.Qwen3VLMoeForConditionalGeneration if EXT["moe"] else transformers.Qwen3VLForConditionalGeneration


def torch_dtype():
    return torch.bfloat16 if EXT["dtype"] == "bfloat16" else torch.float32


def make_model(cfg, seed: int, attn: str):
    torch.manual_seed(seed)
    model = model_class()._from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    randomize_(model, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    if EXT["dtype"] == "float32":
        model.eval()
        return model
    # bf16 as users get it: saved, then loaded by from_pretrained (which keeps the rotary
    # inverse frequencies in f32; casting the live model would round them to bf16 too)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch_dtype()).save_pretrained(tmp, safe_serialization=True)
        return load_model(tmp, attn)


def load_model(model_dir: str, attn: str):
    m = model_class().from_pretrained(model_dir, dtype=torch_dtype(), attn_implementation=attn)
    m.eval()
    return m


def main(argv=None):
    base.build_arg_parser = build_arg_parser
    base.build_config = build_config
    base.randomize_ = randomize_
    base.make_model = make_model
    base.load_model = load_model
    base.save_case = save_case
    base.run_injected = run_injected
    base.run_injected_manual = run_injected_manual
    args = build_arg_parser().parse_args(argv)
    if args.verify_only:
        man = json.loads((pathlib.Path(args.verify_only) / "manifest.json").read_text())
        EXT["moe"] = man["args"].get("moe", False)
        EXT["dtype"] = man["args"].get("dtype", "float32")
    rc = base.main(argv)
    if args.out and not args.verify_only:
        # the shared tool labels every case float32: say what was computed
        out = pathlib.Path(args.out)
        margin = router_margin(str(out), args.attn) if args.moe else None
        for f in list((out / "cases").glob("*.json")) + [out / "manifest.json"]:
            meta = json.loads(f.read_text())
            meta["dtype"] = args.dtype
            meta["generator_ext"] = "scripts/qwen3vl_fixture_ext.py"
            if margin is not None and f.name == "manifest.json":
                meta["router_min_margin"] = margin
            f.write_text(json.dumps(meta, indent=2) + "\n")
        if margin is not None:
            print(f"smallest router margin (k-th vs (k+1)-th probability): {margin:.3g}")
            if margin < args.min_router_margin:
                raise SystemExit(f"router margin {margin:.3g} < --min-router-margin "
                                 f"{args.min_router_margin}: try another --seed")
    return rc


if __name__ == "__main__":
    sys.exit(main())
