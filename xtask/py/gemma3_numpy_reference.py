"""An exact reference for kvbench's Gemma 3: the forward pass in float64 numpy.

It shares no code with kvbench: weights dequantized by gguf-py, the architecture written from
transformers' `modeling_gemma3.py` (RMSNorm in float, the GGUF's norm weights already `1 + w`,
embeddings times sqrt(hidden), q/k RMSNorm per head before rotate-half RoPE, base 10,000 on
sliding layers and the GGUF's on global ones, a sliding window where `kv > q - window`,
attention scale head_dim^-0.5, GeGLU with tanh GELU, pre and post norms around both blocks, the
head tied to the embedding), float64 throughout, an incremental KV cache.

    python gemma3_numpy_reference.py --gguf MODEL.gguf --prompts IDS.json --out FILE.json [--n-predict 16]

IDS.json: {"name": [token ids, BOS included], ...}. The output holds, per prompt, the greedy ids
and the top-5 logits of each step, for kvbench's test to compare with.
"""

import argparse
import json

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class Gemma3:
    def __init__(self, path):
        r = GGUFReader(path)
        self.t = {t.name: t for t in r.tensors}
        f = r.fields
        val = lambda k: f[k].parts[f[k].data[0]][0]
        a = "gemma3"
        self.L = int(val(f"{a}.block_count"))
        self.H = int(val(f"{a}.attention.head_count"))
        self.KV = int(val(f"{a}.attention.head_count_kv"))
        self.D = int(val(f"{a}.attention.key_length"))
        self.hidden = int(val(f"{a}.embedding_length"))
        self.eps = float(val(f"{a}.attention.layer_norm_rms_epsilon"))
        self.window = int(val(f"{a}.attention.sliding_window"))
        self.base_global = float(val(f"{a}.rope.freq_base"))
        key = f"{a}.rope.freq_base_swa"
        self.base_local = float(val(key)) if key in f else 10_000.0
        self.w = {}

    def weight(self, name):
        if name not in self.w:
            t = self.t[name]
            x = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
            shape = [int(s) for s in reversed(list(t.shape))]  # gguf: ne0 fastest
            self.w[name] = x.reshape(shape)
        return self.w[name]

    def is_sliding(self, l):
        return (l + 1) % 6 != 0

    def norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, positions, base):
        # x: [T, heads, D]; rotate_half pairing
        d = self.D
        inv = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
        ang = positions[:, None].astype(np.float64) * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def forward(self, ids, positions, cache):
        """Logits of the last position; `cache[l]` = (keys, values) of all earlier positions."""
        x = self.weight("token_embd.weight")[ids] * np.sqrt(self.hidden)
        T = len(ids)
        for l in range(self.L):
            p = f"blk.{l}."
            h = self.norm(x, self.weight(p + "attn_norm.weight"))
            q = (h @ self.weight(p + "attn_q.weight").T).reshape(T, self.H, self.D)
            k = (h @ self.weight(p + "attn_k.weight").T).reshape(T, self.KV, self.D)
            v = (h @ self.weight(p + "attn_v.weight").T).reshape(T, self.KV, self.D)
            q = self.norm(q, self.weight(p + "attn_q_norm.weight"))
            k = self.norm(k, self.weight(p + "attn_k_norm.weight"))
            base = self.base_local if self.is_sliding(l) else self.base_global
            q, k = self.rope(q, positions, base), self.rope(k, positions, base)
            pk, pv = cache[l]
            K = np.concatenate([pk, k], axis=0)
            V = np.concatenate([pv, v], axis=0)
            cache[l] = (K, V)
            n = K.shape[0]
            kpos = np.arange(n)
            qpos = positions
            allowed = kpos[None, :] <= qpos[:, None]
            if self.is_sliding(l):
                allowed &= kpos[None, :] > qpos[:, None] - self.window
            group = self.H // self.KV
            out = np.empty((T, self.H, self.D))
            for hh in range(self.H):
                g = hh // group
                s = (q[:, hh, :] @ K[:, g, :].T) * self.D ** -0.5
                s = np.where(allowed, s, -np.inf)
                s = s - s.max(axis=1, keepdims=True)
                e = np.exp(s)
                out[:, hh, :] = (e / e.sum(axis=1, keepdims=True)) @ V[:, g, :]
            o = out.reshape(T, self.H * self.D) @ self.weight(p + "attn_output.weight").T
            x = x + self.norm(o, self.weight(p + "post_attention_norm.weight"))
            h = self.norm(x, self.weight(p + "ffn_norm.weight"))
            gate = h @ self.weight(p + "ffn_gate.weight").T
            up = h @ self.weight(p + "ffn_up.weight").T
            gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
            d = (gelu * up) @ self.weight(p + "ffn_down.weight").T
            x = x + self.norm(d, self.weight(p + "post_ffw_norm.weight"))
        x = self.norm(x[-1:], self.weight("output_norm.weight"))
        return (x @ self.weight("token_embd.weight").T)[0]

    def greedy(self, ids, n_predict, chunk=512):
        cache = [(np.zeros((0, self.KV, self.D)), np.zeros((0, self.KV, self.D))) for _ in range(self.L)]
        pos = 0
        for start in range(0, len(ids), chunk):
            part = np.array(ids[start : start + chunk])
            logits = self.forward(part, np.arange(pos, pos + len(part)), cache)
            pos += len(part)
        out, tops = [], []
        for _ in range(n_predict):
            order = np.argsort(-logits)[:5]
            tops.append([[int(i), float(logits[i])] for i in order])
            nxt = int(order[0])
            out.append(nxt)
            if nxt == 1:  # EOS
                break
            logits = self.forward(np.array([nxt]), np.array([pos]), cache)
            pos += 1
        return out, tops


def parse_args():
    """The arguments both Gemma references take (gemma3_transformers_reference.py imports this)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-predict", type=int, default=16)
    return ap.parse_args()


def main():
    args = parse_args()
    model = Gemma3(args.gguf)
    prompts = json.load(open(args.prompts))
    results = []
    for name, ids in prompts.items():
        out, tops = model.greedy(ids, args.n_predict)
        results.append({"name": name, "prompt_ids": ids, "output_ids": out, "top5": tops})
        print(name, len(ids), out, flush=True)
    json.dump({"engine": "numpy float64 (xtask/py/gemma3_numpy_reference.py)", "prompts": results}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
