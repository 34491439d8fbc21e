"""llama.cpp's iq4_nl cache blocks, for kvbench's codec (src/kv/quant.rs, `iq4_nl_encode`).

Why this exists: gguf-py dequantizes IQ4_NL but does not quantize it, so this script ports the
quantizer llama.cpp's CPU backend runs when it writes an iq4_nl KV cache, ggml's
`quantize_row_iq4_nl_ref` (ggml-quants.c: `quantize_row_iq4_nl_impl` with no importance weights
and `ntry = -1`, i.e. no scale search), in numpy float32, one rounding per C operation and in
the C order (no fused multiply-add). The port was checked against the compiled C reference on
20,000 random blocks (no byte differed) when it was written; that check needs ggml's sources and
is not part of the repository. The decoded values come from gguf-py's own IQ4_NL dequantizer,
written independently of both. Invoked by `cargo xtask iq4-nl-reference`:

    python iq4_nl_reference.py OUT.json

Blocks: seeded normal values at several scales, outliers, one-signed and uniform blocks, a
constant block, ties of magnitude, values on the midpoint between two levels, and zeros. For an
all-zero block ggml stores d = 0 and leaves the nibbles as the previous block's; its bytes are
listed in `any_nibbles` and only d and the (zero) values are compared.
"""

import importlib.metadata
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants

F = np.float32
LEVELS = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def best_index(x):
    """ggml's best_index_int8 on a float32 x: nearest level, a tie to the upper one."""
    if x <= F(LEVELS[0]):
        return 0
    if x >= F(LEVELS[15]):
        return 15
    lo, hi = 0, 15
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if x < F(LEVELS[mid]):
            hi = mid
        else:
            lo = mid
    return hi - 1 if F(x - F(LEVELS[hi - 1])) < F(F(LEVELS[hi]) - x) else hi


def quantize(block, previous):
    amax, vmax = F(0), F(0)
    for v in block:
        if abs(v) > amax:
            amax, vmax = abs(v), v
    if amax < F(1e-15):
        codes, d = previous, F(0)
    else:
        d = F(vmax / F(-127))
        inv = F(F(1) / d)
        sumqx, sumq2, codes = F(0), F(0), []
        for v in block:
            code = best_index(F(inv * v))
            codes.append(code)
            q, w = F(LEVELS[code]), F(v * v)
            sumqx = F(sumqx + F(F(w * q) * v))
            sumq2 = F(sumq2 + F(F(w * q) * q))
        d = F(sumqx / sumq2) if sumq2 > 0 else F(0)
    nibbles = bytes(codes[j] | (codes[j + 16] << 4) for j in range(16))
    return np.float16(d).tobytes() + nibbles, codes


def blocks():
    rng = np.random.default_rng(20261202)
    out = [rng.normal(0, s, 32) for s in (1e-3, 0.05, 1.0, 3.0, 30.0) for _ in range(60)]
    out += [rng.normal(0, 1, 32) * np.where(rng.random(32) < 0.1, 20, 1) for _ in range(40)]
    out += [np.abs(rng.normal(2, 1, 32)) for _ in range(10)] + [-np.abs(rng.normal(2, 1, 32)) for _ in range(10)]
    out += [rng.uniform(-1, 1, 32) for _ in range(20)]
    out += [np.full(32, 0.7), np.array([(-1) ** i * (i % 4) for i in range(32)], dtype=np.float64)]
    # midpoints between neighbouring levels, at a scale where x / d is exact: d = max / -127 = -1
    mids = [(a + b) / 2 for a, b in zip(LEVELS, LEVELS[1:])]
    out += [np.array([127.0] + [-m for m in mids] + [0.5] * 16)]
    out += [np.zeros(32)]
    return [np.asarray(b, dtype=np.float32) for b in out]


def main():
    data = blocks()
    coded, previous, any_nibbles = [], [0] * 32, []
    for i, b in enumerate(data):
        raw, previous = quantize(b, previous)
        if not np.any(b):
            any_nibbles.append(i)
        coded.append(raw)
    qtype = GGMLQuantizationType.IQ4_NL
    values = [quants.dequantize(np.frombuffer(c, dtype=np.uint8).reshape(1, 18), qtype).reshape(-1) for c in coded]
    doc = {
        "gguf_py": importlib.metadata.version("gguf"),
        "blocks": [[float(v) for v in b] for b in data],
        "iq4_nl": [c.hex() for c in coded],
        "iq4_nl_values": [[float(v) for v in vs] for vs in values],
        "any_nibbles": any_nibbles,
    }
    json.dump(doc, open(sys.argv[1], "w"), indent=0)


if __name__ == "__main__":
    main()
