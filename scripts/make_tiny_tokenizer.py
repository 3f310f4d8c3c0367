#!/usr/bin/env python3
"""Write a Qwen2/Qwen3-style byte-level BPE tokenizer.json for the tiny fixture checkpoints.

The tiny checkpoints made by ../shared/tools/qwen3vl_fixture.py have a 320-token vocabulary
whose special tokens start at --special-base (256) with the real Qwen relative layout
(<|endoftext|> = base, <|im_start|> = base+1, ... <|video_pad|> = base+13). This tokenizer
gives the 256 bytes ids 0..255 (GPT-2 byte-to-unicode alphabet, no merges), then the 14
special tokens in that order, and uses Qwen2's pre-tokenizer regex, NFC normalizer and
byte-level decoder, so the Rust `tokenizers` crate treats it exactly like the real
Qwen3-VL tokenizer.json.

Usage: make_tiny_tokenizer.py OUT_DIR [--special-base 256]
"""
import argparse
import json
import os

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--special-base", type=int, default=256)
    a = ap.parse_args()
    if a.special_base != 256:
        raise SystemExit("the byte-level vocabulary fills ids 0..255, so --special-base must be 256")
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": a.special_base + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, s in enumerate(SPECIALS)
        ],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    os.makedirs(a.out_dir, exist_ok=True)
    path = os.path.join(a.out_dir, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
        f.write("\n")
    # sanity check with the reference library
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(path)
    enc = t.encode("<|im_start|>user\nhé<|image_pad|><|im_end|>")
    assert enc.ids[0] == a.special_base + 1 and a.special_base + 12 in enc.ids, enc.ids
    assert t.decode(enc.ids, skip_special_tokens=True) == "user\nhé", t.decode(enc.ids)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
