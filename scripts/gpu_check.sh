#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md#gpu, run on a machine with an NVIDIA GPU and no
# Rust toolchain, from x86-64 binaries built elsewhere. On the build machine:
#
#   export CUDA_HOME=<nvcc no newer than the GPU driver's CUDA, e.g. the 13.0.88 wheels>
#   export PATH=$CUDA_HOME/bin:$PATH CUDA_COMPUTE_CAP=90 CARGO_TARGET_DIR=target-cuda
#   cargo test --release --features cuda --workspace --no-run
#   mkdir -p .gpu/bin && cp <the test binaries device-*, matrix-*, cuda-*> .gpu/bin/
#     (as t_taste_device, t_store_matrix, t_surgery_cuda) and
#     target-cuda/release/examples/{gowalla,gowalla_stream,ann_bench,bench_surgery}
#   strip .gpu/bin/*; xz .gpu/bin/*; cp <gowalla>/{train,test}.txt .gpu/ && xz .gpu/*.txt
#
# then run `bash scripts/gpu_check.sh` from the repository root on the GPU machine.
# The binaries read fixtures through the absolute paths compiled into them
# (CARGO_MANIFEST_DIR), hence the /work/main link; the CUDA libraries come from the
# machine's Python wheels.
set -u
T0=$(date +%s)
mkdir -p /work
[ -e /work/main ] || ln -s "$PWD" /work/main
SITE=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
LIBDIRS=$(find "$SITE/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBDIRS}/usr/local/nvidia/lib64:/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
B=.gpu/bin
for f in $B/*.xz .gpu/*.xz; do [ -e "$f" ] && xz -d "$f"; done
chmod +x $B/*
ldd $B/t_taste_device | grep -E "not found|cuda|nvrtc|cublas|curand"
for t in t_taste_device t_store_matrix t_surgery_cuda; do
  echo "=== $t"
  timeout 45 $B/$t --test-threads=1 --nocapture 2>&1 | grep -vE "^\s*$" | tail -40
done
echo "=== gowalla on cuda (t=$(( $(date +%s) - T0 ))s)"
timeout 205 $B/gowalla --data .gpu --device cuda --epochs 400 --eval-every 20 --quiet 2>&1 | tail -40
echo "=== ann_bench exact on cuda"
timeout 50 $B/ann_bench --synthetic 200000 --threads 16 --device cuda --ef-construction 100 2>&1 | tail -10
echo "=== bench_surgery on cuda bf16 (t=$(( $(date +%s) - T0 ))s)"
timeout 150 $B/bench_surgery --device cuda --dtype bf16 --no-rss --items 1,8 --k 1,4,16 --reps 2 --checkpoint /tmp/ckpt28 2>&1 | tail -14
echo "=== gowalla_stream on cuda (t=$(( $(date +%s) - T0 ))s)"
timeout 175 $B/gowalla_stream --data .gpu --device auto --epochs 50 2>&1 | grep -v "epoch [0-9]*[1-9]:" | tail -30
echo "=== done t=$(( $(date +%s) - T0 ))s"
