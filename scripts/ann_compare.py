#!/usr/bin/env python3
"""The issue-4 comparison data and baselines: hnswlib and FAISS on one mixture.

Writes base.npy / queries.npy / gt.npy (exact top-100 by FAISS IndexFlatIP) of N
L2-normalised 64-d points from a 1000-cluster Gaussian mixture (unit centres, within-
cluster std 0.35 over the vector, as `ann_bench --synthetic`; `--dim 96 --shape uneven`
gives the second data set of another shape), and prints FAISS flat and
hnswlib (M=16, ef_construction=200) lines in `ann_bench`'s format, so the Rust index can
be run on the same files in the same session:

    python3 scripts/ann_compare.py --n 1000000 --out /tmp/ann
    python3 scripts/ann_compare.py --reuse --flat-only --out /tmp/ann   # exact search only
    cargo run --release --example ann_bench -- --base /tmp/ann/base.npy \\
        --queries /tmp/ann/queries.npy --gt /tmp/ann/gt.npy --threads 1 --build-threads 2

Needs `pip install numpy faiss-cpu hnswlib`. Run by hand; CI never runs it.
"""
import argparse
import os
import time

import numpy as np


def mixture(rng, n, d, centres):
    c = rng.integers(0, len(centres), size=n)
    x = centres[c] + rng.standard_normal((n, d), dtype=np.float32) * (0.35 / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def uneven(rng, n, d, centres, spread, weight, basis, noise_share):
    """Clusters of unequal size (`weight`) and spread (`spread`), each stretched along its
    own low-dimensional subspace (`basis[c]`, rank r: embeddings vary along few
    directions), plus a `noise_share` of points uniform on the sphere."""
    x = np.empty((n, d), dtype=np.float32)
    noise = rng.random(n) < noise_share
    k = int(noise.sum())
    x[noise] = rng.standard_normal((k, d), dtype=np.float32)
    c = rng.choice(len(centres), size=n - k, p=weight)
    r = basis.shape[2]
    z = rng.standard_normal((n - k, r), dtype=np.float32) * (spread[c, None] / np.sqrt(r))
    x[~noise] = (centres[c] + np.einsum("nr,ndr->nd", z, basis[c])
                 + rng.standard_normal((n - k, d), dtype=np.float32) * (0.02 / np.sqrt(d)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", default="/tmp/ann")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument(
        "--shape",
        choices=["mixture", "uneven"],
        default="mixture",
        help="mixture: 1000 equal clusters (std 0.35); uneven: 300 clusters of sizes "
        "~ 1/sqrt(rank), spreads 0.2-0.8 (log-uniform) along a 12-d subspace each, plus 5%% "
        "uniform noise in the base",
    )
    ap.add_argument("--repeat", type=int, default=1, help="timed passes over the queries per ef")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse base/queries/gt and the hnswlib index saved in --out (no FAISS, no rebuild)",
    )
    ap.add_argument("--ef", default="16,32,64,128,256,512", help="ef values to time, comma-separated")
    ap.add_argument("--skip-flat", action="store_true", help="with --reuse: hnswlib only, no FAISS")
    ap.add_argument("--flat-only", action="store_true",
                    help="time FAISS flat search at --k (BLAS path and scan) and stop: no hnswlib")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    d = args.dim
    if args.reuse:
        base = np.load(os.path.join(args.out, "base.npy"))
        queries = np.load(os.path.join(args.out, "queries.npy"))
        gt = np.load(os.path.join(args.out, "gt.npy"))
        args.n, args.queries = len(base), len(queries)
        if args.flat_only:
            flat(args, base, queries, args.k)
            return
        if not args.skip_flat:
            flat(args, base, queries, args.k)
        hnsw(args, base, queries, gt)
        return
    rng = np.random.default_rng(2026)
    if args.shape == "mixture":
        centres = rng.standard_normal((1000, d), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        base = mixture(rng, args.n, d, centres)
        queries = mixture(rng, args.queries, d, centres)
    else:
        centres = rng.standard_normal((300, d), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        spread = np.exp(rng.uniform(np.log(0.2), np.log(0.8), 300)).astype(np.float32)
        weight = 1.0 / np.sqrt(np.arange(1, 301))
        weight /= weight.sum()
        basis = np.linalg.qr(rng.standard_normal((300, d, 12)))[0].astype(np.float32)
        # the noise is in the base only: a uniform query in 96-d has no near neighbours
        base = uneven(rng, args.n, d, centres, spread, weight, basis, 0.05)
        queries = uneven(rng, args.queries, d, centres, spread, weight, basis, 0.0)
    np.save(os.path.join(args.out, "base.npy"), base)
    np.save(os.path.join(args.out, "queries.npy"), queries)

    gt = flat(args, base, queries, 100)
    np.save(os.path.join(args.out, "gt.npy"), gt.astype(np.int64))
    if args.flat_only:
        flat(args, base, queries, args.k)
        return
    hnsw(args, base, queries, gt)


def flat(args, base, queries, k):
    """FAISS IndexFlatIP at k neighbours on 1 and --build-threads threads; its ids.

    FAISS searches a batch through BLAS (sgemm + top-k) only when the batch has at least
    `distance_compute_blas_threshold` queries; the pip wheel's default (20 in the source,
    128000 in some builds) can leave a 1,000-query batch on its per-query scan. Its best
    configuration is the BLAS path, so that is the line to compare against
    (`faiss_flat_ip ... path=blas`); the scan line is printed too, labelled."""
    import faiss

    default = faiss.cvar.distance_compute_blas_threshold
    for threads in (1, args.build_threads):
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        for path, threshold in (("blas", 20), ("scan", 1 << 30)):
            faiss.cvar.distance_compute_blas_threshold = threshold
            t = time.perf_counter()
            _, ids = index.search(queries, k)
            s = time.perf_counter() - t
            print(f"faiss_flat_ip k={k} threads={threads} path={path} search_s={s:.3f} "
                  f"qps={args.queries / s:.0f} (wheel default threshold {default})")
    faiss.cvar.distance_compute_blas_threshold = default
    return ids


def hnsw(args, base, queries, gt):
    import hnswlib

    d = base.shape[1]
    saved = os.path.join(args.out, "hnswlib.bin")
    p = hnswlib.Index(space="ip", dim=d)
    if args.reuse and os.path.exists(saved):
        t = time.perf_counter()
        p.load_index(saved, max_elements=args.n)
        print(f"hnswlib load_s={time.perf_counter() - t:.2f} (saved index {saved})")
    else:
        p.init_index(max_elements=args.n, M=16, ef_construction=200, random_seed=42)
        p.set_num_threads(args.build_threads)
        t = time.perf_counter()
        p.add_items(base, np.arange(args.n))
        print(f"hnswlib build_s={time.perf_counter() - t:.2f} build_threads={args.build_threads} m=16 ef_construction=200")
        p.save_index(saved)
    p.set_num_threads(1)
    k = args.k
    truth = [set(r[:k]) for r in gt]
    for ef in (int(e) for e in args.ef.split(",")):
        p.set_ef(max(ef, k))
        t = time.perf_counter()
        for _ in range(args.repeat):
            labels, _ = p.knn_query(queries, k=k)
        s = time.perf_counter() - t
        rec = np.mean([len(truth[i] & set(labels[i])) / k for i in range(len(truth))])
        print(f"hnswlib ef={ef} recall@{k}={rec:.3f} qps={args.repeat * args.queries / s:.0f}")


if __name__ == "__main__":
    main()
