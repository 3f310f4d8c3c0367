#!/usr/bin/env bash
# Coverage-guided fuzzing of every file parser (fuzz/, libFuzzer), on the stable toolchain.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 20 s, every target
#   MOSAIC_FUZZ_MERGE=1 scripts/fuzz.sh 300               also merge what was found into
#                                                         fuzz/corpus/ (commit it)
# Each target starts from fuzz/corpus/<target>/ (copied: the run does not write into the
# repository unless merging) and stops at its time or at the first crash; a crash leaves
# its input under target/fuzz-artifacts/<target>/ and fails the script. Replay one with
#   target/fuzz/x86_64-unknown-linux-gnu/release/<target> <file>
# and add it to fuzz/regressions/<target>/ with the fix (tests/fuzz_corpus.rs replays those).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
shift || true
ALL=(segment manifest tombstones hnsw_index npy feedback_log refresh_state checkpoint dataset adapter config preprocessor_config)
TARGETS=("${@:-${ALL[@]}}")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$PWD/target/fuzz"
# what `cargo fuzz build --sanitizer none` passes, without its nightly-only flags; the
# explicit --target keeps these flags off build scripts and proc macros
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cforce-frame-pointers"
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
echo "== building fuzz targets (${TARGETS[*]})"
(cd fuzz && cargo build --release --target "$TRIPLE" "${bins[@]}")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "$work/$t" "target/fuzz-artifacts/$t"
    if [ -d "fuzz/corpus/$t" ]; then cp -r "fuzz/corpus/$t/." "$work/$t/"; fi
    echo "== fuzzing $t for ${SECS}s ($(ls "$work/$t" | wc -l) corpus inputs)"
    if ! "$CARGO_TARGET_DIR/$TRIPLE/release/$t" "$work/$t" \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="target/fuzz-artifacts/$t/" 2> "$work/$t.log"; then
        tail -40 "$work/$t.log"
        echo "!! $t crashed: input saved under target/fuzz-artifacts/$t/"
        failed=1
    else
        grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$work/$t.log" | tr '\n' ' '
        echo
    fi
    if [ "${MOSAIC_FUZZ_MERGE:-0}" = 1 ]; then
        mkdir -p "fuzz/corpus/$t"
        "$CARGO_TARGET_DIR/$TRIPLE/release/$t" -merge=1 "fuzz/corpus/$t" "$work/$t" 2>/dev/null
    fi
done
exit $failed
