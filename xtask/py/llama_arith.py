"""Where llama.cpp's logits part from kvbench's: its arithmetic, op by op, reproduced in numpy.

Why this exists: kvbench and the float64 reference (numpy_reference.py) agree to 0.005 logits,
while llama.cpp differs from both by up to about 1 logit and so picks the other token at some
near-ties (tests/reference.rs). This script shows where that difference comes from. It captures
every tensor of llama.cpp's forward pass (llama-cpp-python's `cb_eval` hook) and recomputes each
op from llama.cpp's own inputs with llama.cpp's CPU arithmetic written out: Q4_1 weights times
activations rounded to Q8_1 blocks (scale amax/127 stored as f16, the block sum `s` as f16), the
Q8_0 output head times Q8_0 activations, K/V stored in f16, Q and the softmax probabilities
rounded to f16 before their products. Then it chains the same arithmetic from the token ids
alone and prints, layer by layer, how far its residual stream is from llama.cpp's, beside exact
products (float64 on the dequantized weights, what kvbench computes in fp32).

The emulation is not bit-exact: it sums in other orders than ggml's AVX2 kernels and uses numpy's
exp, so its ops agree with llama.cpp's to about 1e-6, not to the bit. It checks the prompt's
batched evaluation (last position's logits), not one-token decode steps. The tensor hook reads
`struct ggml_tensor` at the offsets of the ggml that llama-cpp-python 0.3.36 ships.

    python llama_arith.py --gguf MODEL.gguf --reference golden/llama_cpp_reference.json [--prompt NAME]

It shares no code with kvbench. Invoked by `cargo xtask llama-arith`.
"""

import argparse
import ctypes
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
import llama_cpp
import llama_cpp.llama_cpp as capi

GGML_TYPE_F32 = 0
# `struct ggml_tensor`'s layout (type @0, ne[4] @16, nb[4] @48, data @248, name[64] @256) is
# that of the ggml in this llama-cpp-python release; another could move the fields.
LLAMA_CPP_PYTHON = "0.3.36"


def f16(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


class Quantized:
    """A Q4_1 or Q8_0 weight matrix kept as its blocks, multiplied the way ggml's CPU does."""

    def __init__(self, t):
        self.kind = t.tensor_type.name
        rows, cols = [int(x) for x in reversed(t.shape)]
        self.nb = cols // 32
        raw = np.asarray(t.data, dtype=np.uint8).reshape(rows, self.nb, -1)
        half = lambda a, b: raw[:, :, a:b].copy().view(np.float16)[:, :, 0].astype(np.float32)
        self.d = half(0, 2)
        if self.kind == "Q4_1":
            self.m = half(2, 4)
            qs = raw[:, :, 4:20]  # element i in the low nibble, i + 16 in the high one
            self.q = np.concatenate([qs & 15, qs >> 4], -1).astype(np.float32)
        elif self.kind == "Q8_0":
            self.q = raw[:, :, 2:34].copy().view(np.int8).astype(np.float32)
        else:
            raise SystemExit(f"llama_arith: unsupported weight type {self.kind}")

    def rows(self, ids):
        """Dequantized rows (the embedding lookup), for Q8_0 weights."""
        assert self.kind == "Q8_0", "rows() dequantizes Q8_0 only"
        return (self.d[ids][:, :, None] * self.q[ids]).reshape(len(ids), -1)

    def __call__(self, x, exact=False):
        """`x · Wᵀ` with `x` rounded to 8-bit blocks first (Q8_1 for Q4_1, Q8_0 for Q8_0), or
        with `exact` in float64 on the dequantized weights (what kvbench computes, in fp32)."""
        x = np.asarray(x, np.float32)
        if exact:
            w = self.d[:, :, None] * self.q + (self.m[:, :, None] if self.kind == "Q4_1" else 0)
            return (x.astype(np.float64) @ w.reshape(len(w), -1).T).astype(np.float32)
        xb = x.reshape(len(x), self.nb, 32)
        amax = np.abs(xb).max(-1)
        d = amax / np.float32(127)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
        qx = np.round(xb * inv[:, :, None]).astype(np.float32)  # round half to even, as AVX2
        out = np.zeros((len(x), len(self.q)), np.float64)
        for b in range(self.nb):
            sumi = qx[:, b, :] @ self.q[:, b, :].T  # integers below 2^24: exact in f32
            out += (self.d[None, :, b] * f16(d[:, b])[:, None]) * sumi
            if self.kind == "Q4_1":
                s = f16(d[:, b] * qx[:, b, :].sum(-1))
                out += self.m[None, :, b] * s[:, None]
        return out.astype(np.float32)


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        t = {x.name: x for x in r.tensors}
        val = lambda k: r.fields[k].parts[r.fields[k].data[0]][0]
        self.L = int(val("llama.block_count"))
        self.H = int(val("llama.attention.head_count"))
        self.KV = int(val("llama.attention.head_count_kv"))
        self.D = int(val("llama.embedding_length")) // self.H
        self.base = float(val("llama.rope.freq_base"))
        self.eps = float(val("llama.attention.layer_norm_rms_epsilon"))
        dense = lambda n: dequantize(t[n].data, t[n].tensor_type).astype(np.float32).reshape(-1)
        names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
        self.layers = [
            dict(attn_norm=dense(f"blk.{l}.attn_norm.weight"), ffn_norm=dense(f"blk.{l}.ffn_norm.weight"),
                 **{k: Quantized(t[f"blk.{l}.{k}.weight"]) for k in names})
            for l in range(self.L)
        ]
        self.emb = Quantized(t["token_embd.weight"])
        # the output head is the embedding (tied) unless the file has its own
        self.head = Quantized(t["output.weight"]) if "output.weight" in t else self.emb
        self.out_norm = dense("output_norm.weight")

    def rms(self, x, w):
        mean = (x.astype(np.float64) ** 2).mean(-1, keepdims=True)
        return (x * (1.0 / np.sqrt(mean + self.eps)).astype(np.float32)) * w

    def rope(self, x, n_heads):
        """llama.cpp's NORM rope: adjacent pairs (GGUF's Q/K rows are permuted for it)."""
        n = len(x)
        x = x.reshape(n, n_heads, self.D // 2, 2)
        theta = np.arange(n)[:, None] * self.base ** (-np.arange(0, self.D, 2) / self.D)[None]
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(n, n_heads, self.D).astype(np.float32)

    def attend(self, q, k, v, half=f16):
        """Causal GQA over f16 K/V, with Q and the probabilities rounded to f16 as ggml does."""
        n, group = len(q), self.H // self.KV
        out = np.zeros((n, self.H, self.D), np.float32)
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        for h in range(self.H):
            s = (half(q[:, h]) @ half(k[:, h // group]).T) * np.float32(1 / np.sqrt(self.D)) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            out[:, h] = half(p / p.sum(-1, keepdims=True)) @ half(v[:, h // group])
        return out.reshape(n, -1)

    def attend_exact(self, q, k, v):
        return self.attend(q, k, v, half=lambda a: a)


def capture(gguf, ids):
    """Every f32 tensor llama.cpp computes for `ids`, by name, in order of computation."""
    seen, failures = {}, []

    @llama_cpp.ggml_backend_sched_eval_callback
    def hook(tensor, ask, _user):
        if ask:
            return True
        try:
            head = ctypes.string_at(tensor, 320)
            ne = [int(x) for x in np.frombuffer(head[16:48], np.int64)]
            nb = [int(x) for x in np.frombuffer(head[48:80], np.uint64)]
            data = int.from_bytes(head[248:256], "little")
            dense = nb[0] == 4 and all(nb[i] == nb[i - 1] * ne[i - 1] for i in range(1, 4))
            if int.from_bytes(head[0:4], "little") == GGML_TYPE_F32 and data and dense:
                count = int(np.prod(ne))
                a = np.ctypeslib.as_array((ctypes.c_float * count).from_address(data)).copy()
                name = head[256:320].split(b"\0")[0].decode()
                seen.setdefault(name, []).append(a.reshape(list(reversed(ne))))
        except Exception as e:  # an exception here would only stop ggml's graph, silently
            failures.append(e)
            return False
        return True

    defaults = capi.llama_context_default_params

    def with_hook():
        params = defaults()
        params.cb_eval = hook
        return params

    capi.llama_context_default_params = with_hook
    try:
        llm = llama_cpp.Llama(model_path=gguf, n_ctx=max(512, len(ids) + 1), n_batch=max(512, len(ids)),
                              n_threads=1, n_threads_batch=1, flash_attn=False, verbose=False)
        llm.eval(ids)
    finally:
        capi.llama_context_default_params = defaults
    if failures:
        raise failures[0]
    return seen


def aligned(a, b):
    """`a` and `b` as float64 of `a`'s shape, `b` cut to its last rows if `a` has fewer (llama.cpp
    keeps only the last position's row after the last layer's attention)."""
    a = np.asarray(a, np.float64)
    rows = a.size // a.shape[-1]
    return a, np.asarray(b, np.float64).reshape(-1, a.shape[-1])[-rows:].reshape(a.shape)


def rel(a, b):
    """Largest difference relative to the largest magnitude."""
    a, b = aligned(a, b)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def rel_rms(a, b):
    """Norm of the difference relative to the norm of `a`."""
    a, b = aligned(a, b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--reference", required=True, help="llama_cpp_reference.json (prompt ids)")
    ap.add_argument("--prompt", default="01-capital")
    args = ap.parse_args()
    prompts = {p["name"]: p for p in json.load(open(args.reference))["prompts"]}
    if args.prompt not in prompts:
        raise SystemExit(f"llama_arith: no prompt {args.prompt!r} in {args.reference}; have {sorted(prompts)}")
    ids = list(prompts[args.prompt]["prompt_ids"])
    if len(ids) > 512:
        raise SystemExit("llama_arith: prompts over 512 tokens are evaluated in several batches; pick a shorter one")
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON:
        raise SystemExit(f"llama_arith: reads ggml's tensors at the offsets of llama-cpp-python "
                         f"{LLAMA_CPP_PYTHON}, this is {llama_cpp.__version__}")
    m, n = Model(args.gguf), len(ids)
    got = capture(args.gguf, ids)
    needed = ["embd", "result_norm", "result_output"] + [
        f"{name}-{l}" for l in range(m.L) for name in
        ["attn_norm", "Qcur", "Kcur", "Vcur", "kqv_out", "attn_out", "ffn_inp", "ffn_norm", "ffn_gate",
         "ffn_up", "ffn_swiglu", "ffn_out", "l_out"]]
    missing = [name for name in needed if name not in got]
    if missing:
        raise SystemExit(f"llama_arith: llama.cpp's graph has no tensor {missing[0]} "
                         f"({len(missing)} missing): another llama.cpp or another model")
    if got["embd"][0].shape[-1] != m.D * m.H:
        raise SystemExit(f"llama_arith: embd is {got['embd'][0].shape}, not rows of {m.D * m.H}: wrong layout")
    last = lambda name, i=0: got[name][i].reshape(-1, got[name][i].shape[-1])

    # 1. Each op from llama.cpp's own inputs.
    worst = {}
    note = lambda op, r: worst.__setitem__(op, max(worst.get(op, 0.0), r))
    note("get_rows (embedding)", rel(last("embd"), m.emb.rows(np.array(ids))))
    for l, p in enumerate(m.layers):
        x = last("embd") if l == 0 else last(f"l_out-{l - 1}")
        h = m.rms(x, p["attn_norm"])
        note("rms_norm", rel(last(f"attn_norm-{l}"), h))
        h = last(f"attn_norm-{l}")
        q, k, v = p["attn_q"](h), p["attn_k"](h), p["attn_v"](h)
        for name, mine in [("Qcur", q), ("Kcur", k), ("Vcur", v)]:
            note("mul_mat Q4_1 x Q8_1", rel(last(f"{name}-{l}"), mine))
        q_roped, k_roped = got[f"Qcur-{l}"][-1].reshape(n, m.H, m.D), got[f"Kcur-{l}"][-1].reshape(n, m.KV, m.D)
        note("rope", rel(q_roped, m.rope(last(f"Qcur-{l}"), m.H)))
        note("rope", rel(k_roped, m.rope(last(f"Kcur-{l}"), m.KV)))
        att = m.attend(q_roped, k_roped, last(f"Vcur-{l}").reshape(n, m.KV, m.D))
        note("attention (f16 K/V/Q/probs)", rel(last(f"kqv_out-{l}"), att))
        note("mul_mat Q4_1 x Q8_1", rel(last(f"attn_out-{l}"), p["attn_output"](last(f"kqv_out-{l}"))))
        hn = last(f"ffn_norm-{l}")
        note("rms_norm", rel(hn, m.rms(last(f"ffn_inp-{l}"), p["ffn_norm"])))
        g, u = p["ffn_gate"](hn), p["ffn_up"](hn)
        note("mul_mat Q4_1 x Q8_1", max(rel(last(f"ffn_gate-{l}"), g), rel(last(f"ffn_up-{l}"), u)))
        gl, ul = last(f"ffn_gate-{l}"), last(f"ffn_up-{l}")
        note("swiglu", rel(last(f"ffn_swiglu-{l}"), gl / (1 + np.exp(-gl)) * ul))
        note("mul_mat Q4_1 x Q8_1", rel(last(f"ffn_out-{l}"), p["ffn_down"](last(f"ffn_swiglu-{l}"))))
    final = got["result_norm"][0].reshape(-1, m.emb.nb * 32)
    note("mul_mat Q8_0 x Q8_0 (head)", rel(got["result_output"][0].reshape(-1), m.head(final)[-1]))
    print(f"{args.prompt} ({n} tokens): each op of llama.cpp recomputed from its own inputs, worst relative error")
    for op, r in worst.items():
        print(f"  {op:32s} {r:.1e}")

    # 2. Chained from the token ids alone: llama.cpp's arithmetic, and exact products.
    emulated, exact = chain(m, ids, exact=False), chain(m, ids, exact=True)
    print("chained from the token ids: each layer's output against llama.cpp's, relative to its")
    print("largest value (max) and to its norm (rms)")
    print("  layer  llama.cpp arithmetic (max, rms)  exact products (max, rms)")
    for l in range(m.L):
        ref = last(f"l_out-{l}")
        a, b = emulated[0][l], exact[0][l]
        print(f"  {l:5d}  {rel(ref, a):13.1e} {rel_rms(ref, a):9.1e}  {rel(ref, b):17.1e} {rel_rms(ref, b):8.1e}")
    ref = got["result_output"][0].reshape(-1)
    top = np.argsort(-ref)[:5]
    for name, (_, logits) in [("llama.cpp arithmetic", emulated), ("exact products", exact)]:
        print(f"logits, {name}: largest difference {np.abs(logits - ref).max():.3f}, "
              f"on llama.cpp's top 5 {np.abs(logits[top] - ref[top]).max():.3f}")


def chain(m, ids, exact):
    """Each layer's output and the last position's logits, from the token ids alone."""
    n, x, outs = len(ids), m.emb.rows(np.array(ids)), []
    mm = lambda w, a: w(a, exact=exact)
    att = (lambda q, k, v: m.attend(q, k, v)) if not exact else m.attend_exact
    for p in m.layers:
        h = m.rms(x, p["attn_norm"])
        q, k = m.rope(mm(p["attn_q"], h), m.H), m.rope(mm(p["attn_k"], h), m.KV)
        x = x + mm(p["attn_output"], att(q, k, mm(p["attn_v"], h).reshape(n, m.KV, m.D)))
        hn = m.rms(x, p["ffn_norm"])
        g = mm(p["ffn_gate"], hn)
        x = x + mm(p["ffn_down"], g / (1 + np.exp(-g)) * mm(p["ffn_up"], hn))
        outs.append(x)
    return outs, mm(m.head, m.rms(x[-1:], m.out_norm))[0]

if __name__ == "__main__":
    sys.exit(main())
