"""gguf-py's dequantization of a GGUF's first blocks of each block type kvbench reads, as the
unit test `model::kquants::tests` wants them: raw bytes in hex and f32 bit patterns.

    python dequant_reference.py MODEL.gguf OUT.json

Run by `cargo xtask dequant-reference` (which fetches the Gemma GGUF and builds the environment).
"""

import importlib.metadata
import json
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGMLQuantizationType, quants

TYPES = ("Q5_0", "Q4_K", "Q6_K")
BLOCKS = 3  # blocks (or super-blocks) per tensor
TENSORS = 2  # tensors per type: the first and the last of the file with that type


def main(path, out):
    reader = GGUFReader(path)
    cases = []
    for name in TYPES:
        qtype = GGMLQuantizationType[name]
        block_len, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        tensors = [t for t in reader.tensors if t.tensor_type == qtype]
        for t in (tensors[0], tensors[-1])[:TENSORS]:
            raw = np.asarray(t.data).reshape(-1).view(np.uint8)[: BLOCKS * block_bytes].copy()
            values = quants.dequantize(raw, qtype).reshape(-1).astype(np.float32)
            assert values.size == BLOCKS * block_len
            cases.append(
                {
                    "ggml_type": name,
                    "tensor": t.name,
                    "hex": raw.tobytes().hex(),
                    "bits": values.view(np.uint32).tolist(),
                }
            )
    doc = {
        "what": "gguf-py's dequantization of the first blocks of Gemma-3-270M's tensors of each type",
        "regenerate": "cargo xtask dequant-reference",
        "gguf_py": importlib.metadata.version("gguf"),
        "cases": cases,
    }
    # one case a line: the file stays readable and its diffs small
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = [json.dumps(head)[:-1] + ', "cases": [']
    lines += [json.dumps(c) + ("," if i + 1 < len(cases) else "") for i, c in enumerate(cases)]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n]}\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
