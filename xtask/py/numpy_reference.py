"""An exact reference for kvbench's numerics: the llama forward pass in float64 numpy.

Why this exists: llama.cpp, kvbench's independent engine, does not compute exactly (it rounds
activations to 8-bit blocks for its Q4_1 products and keeps an f16 cache), so where its top two
logits are close it can pick a different token than an exact computation would. This script is
the second, exact reference: weights dequantized by gguf-py (not kvbench's reader), Hugging Face's
conventions (un-permuted Q/K, rotate-half RoPE), float64 throughout, an incremental KV cache.
It shares no code with kvbench. Invoked by `cargo xtask golden`.

    python numpy_reference.py --gguf MODEL.gguf --prompts DIR --out FILE.json [--n-predict 16]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class Llama:
    def __init__(self, path):
        r = GGUFReader(path)
        self.t = {t.name: t for t in r.tensors}
        f = {k: r.fields[k] for k in r.fields}
        val = lambda k: f[k].parts[f[k].data[0]][0]
        self.L = int(val("llama.block_count"))
        self.H = int(val("llama.attention.head_count"))
        self.KV = int(val("llama.attention.head_count_kv"))
        self.D = int(val("llama.embedding_length")) // self.H
        self.base = float(val("llama.rope.freq_base"))
        self.eps = float(val("llama.attention.layer_norm_rms_epsilon"))
        self.emb = self.w("token_embd.weight")
        self.layers = []
        for l in range(self.L):
            g = lambda s: self.w(f"blk.{l}.{s}.weight")
            self.layers.append(dict(
                an=g("attn_norm"), q=self.unpermute(g("attn_q"), self.H), k=self.unpermute(g("attn_k"), self.KV),
                v=g("attn_v"), o=g("attn_output"), fn=g("ffn_norm"), gate=g("ffn_gate"), up=g("ffn_up"),
                down=g("ffn_down")))
        self.on = self.w("output_norm.weight")

    def w(self, name):
        t = self.t[name]
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        return a.reshape([int(x) for x in reversed(t.shape)])

    def unpermute(self, w, nh):
        """GGUF stores Q/K rows permuted for llama.cpp's adjacent-pair RoPE; undo it."""
        out, inp = w.shape
        return w.reshape(nh, self.D // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        d = self.D
        ang = pos[:, None] * self.base ** (-np.arange(0, d, 2) / d)[None]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    def forward(self, ids, cache):
        """Logits of the last of `ids`, appending their keys/values to `cache`."""
        n0, n = len(cache[0][0]) if cache[0][0] is not None else 0, len(ids)
        pos = np.arange(n0, n0 + n, dtype=np.float64)
        x = self.emb[ids]
        H, KV, D = self.H, self.KV, self.D
        for li, p in enumerate(self.layers):
            h = self.rms(x, p["an"])
            q = self.rope((h @ p["q"].T).reshape(n, H, D), pos)
            k = self.rope((h @ p["k"].T).reshape(n, KV, D), pos)
            v = (h @ p["v"].T).reshape(n, KV, D)
            ck, cv = cache[li]
            ck = k if ck is None else np.concatenate([ck, k])
            cv = v if cv is None else np.concatenate([cv, v])
            cache[li] = (ck, cv)
            total = len(ck)
            mask = np.triu(np.full((n, total), -np.inf), total - n + 1)
            out = np.zeros((n, H, D))
            for hh in range(H):
                g = hh // (H // KV)
                s = q[:, hh] @ ck[:, g].T / np.sqrt(D) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                out[:, hh] = (s / s.sum(-1, keepdims=True)) @ cv[:, g]
            x = x + out.reshape(n, H * D) @ p["o"].T
            h = self.rms(x, p["fn"])
            a = h @ p["gate"].T
            x = x + ((a / (1 + np.exp(-a))) * (h @ p["up"].T)) @ p["down"].T
        return self.rms(x[-1:], self.on)[0] @ self.emb.T


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompts", required=True, help="llama_cpp_reference.json (for the prompt ids)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-predict", type=int, default=16)
    args = ap.parse_args()
    model = Llama(args.gguf)
    results = []
    for p in json.load(open(args.prompts))["prompts"]:
        cache = [(None, None)] * model.L
        logits = model.forward(list(p["prompt_ids"]), cache)
        out, steps = [], []
        for _ in range(args.n_predict):
            top = np.argsort(-logits, kind="stable")[:5]
            steps.append([[int(i), round(float(logits[i]), 5)] for i in top])
            tok = int(top[0])
            out.append(tok)
            if tok == 2:
                break
            logits = model.forward([tok], cache)
        print(f"{p['name']}: {out}", file=sys.stderr, flush=True)
        results.append({"name": p["name"], "output_ids": out, "steps_top5": steps})
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"engine": "numpy float64", "n_predict": args.n_predict, "prompts": results}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
