#!/usr/bin/env python3
"""The issue-5 baseline: LightGCN epochs in PyTorch, as the reference code trains them.

Follows gusye1234/LightGCN-PyTorch (the paper's public code) step for step: the
symmetric-normalised adjacency D^-1/2 A D^-1/2 of the user-item graph as one
torch.sparse tensor; per batch, K propagations with torch.sparse.mm over the whole
graph, the layer mean, the BPR loss on the batch and L2 (weight 1e-4) on the batch's
ego embeddings, Adam (lr 1e-3); an epoch is one uniformly sampled (user, positive,
negative) triple per training interaction (the reference's sampler), shuffled, in
batches of 2048. Prints one line per epoch in `gowalla`'s format:

    python3 scripts/lightgcn_torch.py --data ../shared/datasets/gowalla --epochs 1 --threads 2
    epoch=1 loss=0.5... epoch_s=183.2 sample_s=... threads=2 torch=2.15.0

`--path csr` (the default: PyTorch's fastest CPU path we know) stores the adjacency as
CSR and takes the backward of `y = G x` as `G dy` through a custom autograd function
(G is symmetric: the same gradient, no autograd through the sparse product);
`--path autograd` is the reference's COO tensor with autograd through torch.sparse.mm.
Each epoch line says which path ran.

Needs `pip install torch numpy`. Run by hand beside
`cargo run --release --example gowalla -- --data ... --epochs 1 --quiet`; CI never runs it.
Measured with torch 2.15.0 on 2026-12-01: docs/benchmarks.md, "LightGCN epoch time
against PyTorch, same run".
"""
import argparse
import os
import time

import numpy as np


def load(path):
    users, items = [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            u = int(parts[0])
            for i in parts[1:]:
                users.append(u)
                items.append(int(i))
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/datasets/gowalla")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--path", choices=["csr", "autograd"], default="csr",
                    help="csr: CSR adjacency, backward as G dy (fastest); autograd: the reference's COO + autograd")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    users, items = load(os.path.join(args.data, "train.txt"))
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    if os.path.exists(os.path.join(args.data, "test.txt")):
        tu, ti = load(os.path.join(args.data, "test.txt"))
        if len(tu):
            n_users = max(n_users, int(tu.max()) + 1)
            n_items = max(n_items, int(ti.max()) + 1)
    n_train = len(users)
    positives = [[] for _ in range(n_users)]
    for u, i in zip(users, items):
        positives[u].append(i)
    pos_sets = [set(p) for p in positives]
    train_users = np.array([u for u in range(n_users) if positives[u]], dtype=np.int64)

    # D^-1/2 A D^-1/2 over the (users + items) square graph
    n = n_users + n_items
    rows = np.concatenate([users, items + n_users])
    cols = np.concatenate([items + n_users, users])
    deg = np.bincount(rows, minlength=n).astype(np.float32)
    d_inv = np.where(deg > 0, deg ** -0.5, 0.0).astype(np.float32)
    vals = d_inv[rows] * d_inv[cols]
    graph = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows, cols])),
        torch.from_numpy(vals),
        (n, n),
        check_invariants=False,
    ).coalesce()
    if args.path == "csr":
        csr = graph.to_sparse_csr()

        class Propagate(torch.autograd.Function):
            """y = G x with the backward G dy (G symmetric, so G^T = G)."""

            @staticmethod
            def forward(ctx, x):
                return csr @ x

            @staticmethod
            def backward(ctx, dy):
                return csr @ dy

        propagate = Propagate.apply
    else:
        def propagate(x):
            return torch.sparse.mm(graph, x)

    user_emb = torch.nn.Embedding(n_users, args.dim)
    item_emb = torch.nn.Embedding(n_items, args.dim)
    torch.nn.init.normal_(user_emb.weight, std=0.1)
    torch.nn.init.normal_(item_emb.weight, std=0.1)
    opt = torch.optim.Adam(list(user_emb.parameters()) + list(item_emb.parameters()), lr=args.lr)

    def computer():
        all_emb = torch.cat([user_emb.weight, item_emb.weight])
        embs = [all_emb]
        for _ in range(args.layers):
            all_emb = propagate(all_emb)
            embs.append(all_emb)
        out = torch.stack(embs, dim=1).mean(dim=1)
        return torch.split(out, [n_users, n_items])

    print(
        f"users={n_users} items={n_items} train={n_train} dim={args.dim} layers={args.layers} "
        f"batch={args.batch} threads={args.threads} path={args.path} torch={torch.__version__}",
        flush=True,
    )
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        # the reference's uniform sampler: one triple per training interaction
        su = train_users[rng.integers(0, len(train_users), size=n_train)]
        sp = np.empty(n_train, dtype=np.int64)
        sn = np.empty(n_train, dtype=np.int64)
        for k, u in enumerate(su):
            p = positives[u]
            sp[k] = p[rng.integers(len(p))]
            while True:
                j = int(rng.integers(n_items))
                if j not in pos_sets[u]:
                    break
            sn[k] = j
        sample_s = time.perf_counter() - t0
        order = rng.permutation(n_train)
        su, sp, sn = (torch.from_numpy(a[order]) for a in (su, sp, sn))
        total, batches = 0.0, 0
        for s in range(0, n_train, args.batch):
            bu, bp, bn = su[s : s + args.batch], sp[s : s + args.batch], sn[s : s + args.batch]
            all_users, all_items = computer()
            u, p, q = all_users[bu], all_items[bp], all_items[bn]
            u0, p0, q0 = user_emb(bu), item_emb(bp), item_emb(bn)
            reg = 0.5 * (u0.norm(2).pow(2) + p0.norm(2).pow(2) + q0.norm(2).pow(2)) / len(bu)
            pos, neg = (u * p).sum(dim=1), (u * q).sum(dim=1)
            loss = torch.nn.functional.softplus(neg - pos).mean() + args.decay * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            batches += 1
        epoch_s = time.perf_counter() - t0
        print(
            f"epoch={epoch} loss={total / batches:.4f} epoch_s={epoch_s:.1f} "
            f"sample_s={sample_s:.1f} threads={args.threads} path={args.path} torch={torch.__version__}",
            flush=True,
        )


if __name__ == "__main__":
    main()
