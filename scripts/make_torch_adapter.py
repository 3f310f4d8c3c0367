#!/usr/bin/env python3
"""Write an embedding adapter from PyTorch in Mosaic's format, plus golden outputs.

The adapter-building part is the snippet of docs/adapter-format.md, verbatim; the rest
records inputs and PyTorch's outputs so that crates/vision-surgery/tests/torch_adapter.rs
can check the Rust loader computes the same soft tokens.

Usage: make_torch_adapter.py OUT_DIR   (needs torch, safetensors, numpy)
"""
import os
import sys

import numpy as np
import torch

# ---- begin docs/adapter-format.md snippet ----
import torch.nn as nn
from safetensors.torch import save_file


class EmbeddingAdapter(nn.Module):
    """item embedding [N, in_dim] -> soft tokens [N, K, H] (+ DeepStack features)."""

    def __init__(self, in_dim, hidden, k, H, deepstack_layers=0):
        super().__init__()
        self.k, self.H = k, H
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()  # exact erf GELU -> "gelu"
        self.fc2 = nn.Linear(hidden, k * H)
        self.deepstack = nn.ModuleList(nn.Linear(hidden, k * H) for _ in range(deepstack_layers))

    def forward(self, x):
        z = self.act(self.fc1(x))
        tokens = self.fc2(z).view(-1, self.k, self.H)
        return tokens, [d(z).view(-1, self.k, self.H) for d in self.deepstack]


def save_adapter(model: EmbeddingAdapter, path: str, in_dim: int):
    tensors = {name: p.detach().float().contiguous() for name, p in model.state_dict().items()}
    metadata = {
        "format": "mosaic.embedding_adapter",
        "format_version": "1",
        "in_dim": str(in_dim),
        "tokens_per_item": str(model.k),
        "hidden_size": str(model.H),
        "architecture": "mlp",
        "activation": "gelu",
        "deepstack_layers": str(len(model.deepstack)),
    }
    save_file(tensors, path, metadata=metadata)  # safetensors header metadata: str -> str
# ---- end snippet ----


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    in_dim, hidden, k, H, ds = 32, 96, 4, 64, 2  # fits tests/fixtures/tiny-s0 (H 64, 2 DeepStack levels)
    model = EmbeddingAdapter(in_dim, hidden, k, H, deepstack_layers=ds).eval()
    save_adapter(model, os.path.join(out, "adapter.safetensors"), in_dim)
    items = torch.randn(3, in_dim)
    items = items / items.norm(dim=-1, keepdim=True)  # L2-normalised, like production embeddings
    np.save(os.path.join(out, "items.npy"), items.numpy().astype(np.float32))
    with torch.no_grad():
        tokens, deep = model(items)
    golden = {"tokens": tokens.contiguous()}
    for i, d in enumerate(deep):
        golden[f"deepstack_{i}"] = d.contiguous()
    save_file(golden, os.path.join(out, "expected.safetensors"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
