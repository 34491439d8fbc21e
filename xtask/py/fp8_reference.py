"""torch's FP8 conversions on varied float32 inputs: the reference tests/data/fp8_reference.json holds.

Invoked by `cargo xtask fp8-reference`:

    python fp8_reference.py tests/data/fp8_reference.json

The inputs are clamped to each format's largest finite value first, as vLLM's
`scaled_fp8_conversion` does, then converted by torch (`.to(torch.float8_e4m3fn)` /
`.to(torch.float8_e5m2)`, round to nearest even); the codes are the bytes of the result. Inputs: every
finite code's value and the midpoints between neighbours (ties to even), values around the
subnormal range, out-of-range values (saturation), and 2,000 normal random values at several
scales.
"""

import json
import sys

import torch

FORMATS = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}


def inputs(dtype):
    codes = torch.arange(256, dtype=torch.uint8).view(dtype).to(torch.float32)
    finite = codes[torch.isfinite(codes)].unique().sort().values
    mids = (finite[1:] + finite[:-1]) / 2
    gen = torch.Generator().manual_seed(20261201)
    randoms = torch.cat([torch.randn(500, generator=gen) * s for s in (1e-3, 0.3, 3.0, 100.0)])
    edges = torch.tensor([0.0, -0.0, 1e-12, -1e-12, 1e6, -1e6, 500.0, -460.0, 60000.0, 2.0**-10, 2.0**-17])
    return torch.cat([finite, mids, randoms, edges])


def main():
    out = {}
    for name, (dtype, top) in FORMATS.items():
        x = inputs(dtype)
        codes = x.clamp(-top, top).to(dtype).view(torch.uint8)
        out[name] = {"inputs": x.tolist(), "codes": codes.tolist()}
    out["torch"] = torch.__version__
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
