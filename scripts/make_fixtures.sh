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
  "$PY" "$GEN" --out "$OUT/$name" "$@"
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
