#!/usr/bin/env python3
"""Paired HNSW timing: embed-store's `ann_bench` and hnswlib searching at the same time,
each pinned to its own core, cores swapped every round, one ef per pair of runs.

Both indexes must exist already (built by `ann_bench --index-dir DIR` and by
`ann_compare.py --out OUT`, which saves hnswlib.bin beside the data). Prints one line per
(round, ef) and the median ratio per ef:

    python3 scripts/hnsw_paired.py --out /tmp/ann --index-dir /tmp/ann/idx8 \\
        --ef 32,64 --rounds 4 --repeat 150 [--int8-graph]

Single-threaded search on both sides; needs 2 cores, `taskset`, numpy and hnswlib.
Run by hand; CI never runs it.
"""
import argparse
import re
import statistics
import subprocess
import sys

LINE = re.compile(r"ef=(\d+) recall@(\d+)=([0-9.]+) qps=(\d+)")


def run_pair(args, ef, their_ef, ours_core, theirs_core):
    ours = [
        "taskset", "-c", str(ours_core), args.ann_bench,
        "--base", f"{args.out}/base.npy", "--queries", f"{args.out}/queries.npy",
        "--gt", f"{args.out}/gt.npy", "--threads", "1", "--index-dir", args.index_dir,
        "--repeat", str(args.repeat), "--ef", str(ef),
    ] + (["--int8-graph"] if args.int8_graph else [])
    theirs = [
        "taskset", "-c", str(theirs_core), sys.executable, "scripts/ann_compare.py",
        "--out", args.out, "--reuse", "--skip-flat", "--repeat", str(args.repeat),
        "--ef", str(their_ef),
    ]
    a = subprocess.Popen(ours, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    b = subprocess.Popen(theirs, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_a, _ = a.communicate()
    out_b, _ = b.communicate()
    if a.returncode or b.returncode:
        sys.exit(f"a run failed:\n{out_a}\n{out_b}")

    def parse(text, prefix, want):
        for line in text.splitlines():
            m = LINE.search(line)
            if m and line.startswith(prefix) and int(m.group(1)) == want:
                return float(m.group(3)), int(m.group(4))
        sys.exit(f"no ef={want} line in:\n{text}")

    return parse(out_a, "ef=", ef), parse(out_b, "hnswlib ef=", their_ef)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/ann", help="data and hnswlib.bin (ann_compare.py --out)")
    ap.add_argument("--index-dir", required=True, help="ann_bench's saved index")
    ap.add_argument("--ann-bench", default="target/release/examples/ann_bench")
    ap.add_argument(
        "--ef",
        default="32,64",
        help="comma-separated ef values, or OURS:THEIRS pairs (each library at the ef "
        "where it reaches a recall target)",
    )
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=150, help="timed passes over the queries")
    ap.add_argument("--int8-graph", action="store_true", help="ours walks int8 codes")
    args = ap.parse_args()
    efs = [tuple(int(x) for x in (e.split(":") * 2)[:2]) for e in args.ef.split(",")]
    ratios = {ef: [] for ef in efs}
    print("round ef_ours:ef_hnswlib ours_core recall_ours recall_hnswlib qps_ours qps_hnswlib ratio")
    for r in range(args.rounds):
        cores = (0, 1) if r % 2 == 0 else (1, 0)
        for ef in efs:
            (rec_a, qps_a), (rec_b, qps_b) = run_pair(args, *ef, *cores)
            ratio = qps_a / qps_b
            ratios[ef].append(ratio)
            print(f"{r + 1} {ef[0]}:{ef[1]} {cores[0]} {rec_a:.3f} {rec_b:.3f} {qps_a} {qps_b} "
                  f"{ratio:.2f}", flush=True)
    for ef in efs:
        rs = ratios[ef]
        print(f"ef={ef[0]}:{ef[1]} median_ratio={statistics.median(rs):.2f} "
              f"range={min(rs):.2f}-{max(rs):.2f} rounds={len(rs)}")


if __name__ == "__main__":
    main()
