"""gguf-py's quantization of fixed blocks in llama.cpp's cache types, for kvbench's codecs.

Why this exists: kvbench's `q8_0`, `q4_0`, `q4_1`, `q5_0` and `q5_1` blocks (src/kv/quant.rs)
must be ggml's, byte for byte; gguf-py's `quants.py` reproduces ggml's reference quantizers
(`quantize_row_<type>_ref`) in numpy, written independently of kvbench. It is invoked by
`cargo xtask kv-quant-reference`, which writes tests/data/kv_quant_reference.json.

    python kv_quant_reference.py OUT.json

The blocks: seeded normal values at several scales, outliers, all-positive and all-negative
blocks, zeros, a constant block, and ties of magnitude (the first of equal magnitudes decides
the sign of q4_0's and q5_0's scale).
"""

import importlib.metadata
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, quants


def blocks():
    rng = np.random.default_rng(20261201)
    out = [rng.normal(0, s, 32) for s in (0.01, 1.0, 3.0, 30.0) for _ in range(8)]
    out += [rng.normal(0, 1, 32) * np.where(rng.random(32) < 0.1, 20, 1) for _ in range(8)]
    out += [np.abs(rng.normal(2, 1, 32)), -np.abs(rng.normal(2, 1, 32)), rng.uniform(-1, 1, 32)]
    out += [np.zeros(32), np.full(32, 0.7), np.array([(-1) ** i * (i % 4) for i in range(32)], dtype=np.float64)]
    return [np.asarray(b, dtype=np.float32) for b in out]


def main():
    data = blocks()
    doc = {"gguf_py": importlib.metadata.version("gguf"), "blocks": [[float(v) for v in b] for b in data]}
    for name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        qtype = GGMLQuantizationType[name]
        coded = [quants.quantize(b.reshape(1, 32), qtype) for b in data]
        doc[name.lower()] = [c.tobytes().hex() for c in coded]
        doc[name.lower() + "_values"] = [[float(v) for v in quants.dequantize(c, qtype).reshape(-1)] for c in coded]
    json.dump(doc, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
