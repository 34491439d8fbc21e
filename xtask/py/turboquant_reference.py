"""Reference encoder for vLLM's TurboQuant KV-cache store (presets turboquant_4bit_nc, turboquant_3bit_nc).

Why this exists: kvbench's TurboQuant codec must match vLLM byte for byte. This script
re-implements, in numpy only (it does not import vllm; vllm needs CUDA), what vLLM 0.33.0
(PyPI wheel, vllm/_version.py commit g4ba787ec9) does when it stores one token's K and V for
one KV head, and how its decode reads them back. Written from the wheel's source, not from
any summary of it:

    python turboquant_reference.py [OUT.json]     (default: tests/data/turboquant_reference.json)

    e.g. target/xtask-hf-venv/bin/python xtask/py/turboquant_reference.py tests/data/turboquant_reference.json

What vLLM does (file:line in the 0.33.0 wheel; the default CUDA path, i.e. the AoS store
`triton_turboquant_store`, which is used whenever FlyDSL is not available = everything but AMD gfx950):

Codebook, model_executor/layers/quantization/turboquant/centroids.py:31-87
  Lloyd-Max for N(0, 1/d) in pure Python floats: start at lo+(hi-lo)*(i+.5)/2^b with
  lo,hi = -/+3.5 sigma; cells bounded by midpoints, outer edges -/+10.5 sigma (lo*3, hi*3);
  trapezoid rule n=200 for both integrals; <=200 iterations; stops when the max change < 1e-10,
  keeping the *previous* iterate (break before `centroids = new_centroids`). Cast to float32.
  Midpoints used by the store are recomputed in float32 from the float32 centroids:
  (c[:-1] + c[1:]) / 2 (backends/turboquant_attn.py:471-472). The centroids come out exactly
  antisymmetric in float32, so the middle midpoint is exactly 0.0.

Rotation, backends/turboquant_attn.py:115-120, 455-464
  Sylvester Hadamard H (H_{2n} = [[H, H], [H, -H]]), divided by sqrt(d) in float32 (+-0.125
  exactly at d=64). PiT = Pi = H/sqrt(d) (symmetric); no random signs, no seed (config.py:92:
  seed "no longer used").

Key store, ops/triton_turboquant_store.py:413-417 and 278-325
  k = key.float() (fp32); norm = ||k||_2 in fp32; x_hat = k / (norm + 1e-8) (1e-8 added to the
  fp32 norm, after the norm, not inside the sqrt); y = x_hat @ PiT (row vector times H/sqrt(d),
  fp32 cuBLAS GEMM). Index: binary search, MSE_BITS steps, `lo = where(y >= mid, mid+1, lo)`
  (:284-293) == numpy.searchsorted(midpoints, y, side="right"), i.e. the number of midpoints
  <= y. Tie rule: y exactly equal to a midpoint takes the UPPER centroid; an all-zero key (and
  every exactly-zero coordinate, e.g. coordinates 1..63 of a constant key) gets index 2^b/2
  (8 for 4-bit, 4 for 3-bit) because the middle midpoint is exactly 0.0 and 0 >= 0.
  Packing (:296-315): 4-bit byte i = idx[2i] | idx[2i+1] << 4; 3-bit: each group of 8 indices
  forms a 24-bit word sum(idx[8g+j] << 3j) stored little-endian as bytes 3g, 3g+1, 3g+2, so
  idx[j] sits at bit 3j of the little-endian bit stream (the decode reads it back with
  (byte[3j//8] | byte[3j//8+1] << 8) >> (3j % 8) & 7, triton_turboquant_decode.py:113-118,
  178-190). Then (:317-325) the fp32 norm (the norm of k BEFORE normalisation, without the
  1e-8) cast to fp16 (round to nearest even), little-endian, at offset MSE_BYTES.

Key decode with norm correction, triton_turboquant_decode.py:193-223 (scores) and 379-409
(full dequant)
  c = centroids[idx]; c_hat = c / sqrt(sum(c^2) + 1e-16); k_rot = norm_f16 * c_hat. The decode
  scores against q_rot = q.float() @ PiT (:519-528) and never un-rotates K; the large-chunk
  continuation path stores k_rot as fp16 and multiplies by H/sqrt(d) in fp16
  (turboquant_attn.py:1031-1036). This script reports the exact value in the ORIGINAL basis,
  k_hat = (H/sqrt(d)) @ k_rot, computed in float64 (no fp16 intermediate rounding).

Values, ops/triton_turboquant_store.py:25-136 (not rotated)
  v = value.float(); mn, mx over the 64 lanes (fp32); scale = (mx - mn) / (2^b - 1) in fp32,
  then `where(scale > 1e-8, scale, 1e-8)`; q = clamp(int32((v - mn) / scale + 0.5), 0, 2^b-1)
  using the fp32 scale (NOT the fp16-rounded one). The int32 cast truncates, and its argument
  is >= 0.5, so it is floor: round half up (away from mn). Packing as for keys (4-bit pairs,
  3-bit 8-per-3-bytes). Then fp16(scale) and fp16(mn), in that order, each little-endian.
  Decode (triton_turboquant_decode.py:271-299, 413-450): v_hat = q * f32(scale_f16) +
  f32(zero_f16). This script reports v_hat in float64 (it is exact there). Note: a constant row
  has scale floored to 1e-8, which is 0 in fp16, so v_hat = fp16(mn) everywhere.

Slot bytes per token per KV head, config.py:129-175, turboquant_attn.py:141-153
  [K codes ceil(d*kb/8) | K norm fp16 | V codes ceil(d*vb/8) | V scale fp16 | V zero fp16],
  total rounded up to even (slot_size_aligned). d=64: 4bit_nc 32+2+32+4 = 70, 3bit_nc
  24+2+24+4 = 54, k3v4_nc 26+36 = 62, k8v4 64+36 = 100; no padding byte at d=64.

Skipped layers, config.py:178-213, engine/arg_utils.py:2334-2351, layers/attention/attention.py:299-314
  For any turboquant_* dtype the boundary layers keep the model dtype ("auto"): dense models skip
  the first n and last n layers with n = min(2, num_layers // 2); hybrid models skip none.
  The list is unioned with --kv-cache-dtype-skip-layers.

Where the prior research report (/tmp/turboquant_research.md) was wrong or incomplete:
  - It did not say the AoS layout is only the default path: on AMD gfx950 with FlyDSL, the SoA
    store (ops/turboquant_soa/triton_turboquant_store.py:340-352) separates data and metadata
    per block AND folds norm correction into the store (stores fp16(||k|| / ||c||)).
  - It omitted the tie rule (upper centroid), that the middle midpoint is exactly 0, that
    midpoints are recomputed in fp32 from fp32 centroids, that the codes use the fp32 (not
    fp16) value scale, that the floored 1e-8 scale is stored as fp16 0, the n=min(2, L//2)
    cap and the hybrid exemption.
  - Its other formulas and line numbers checked out against the wheel.

Precision caveats (why each case carries a "margin"):
  - vLLM computes the norm and y in fp32 on the GPU (cuBLAS / torch reduction order); this
    script computes norm = fp32(sqrt(sum k^2) in float64), x_hat in IEEE fp32, and y in
    float64 from the fp32 x_hat. A key coordinate within ~1e-6 of a midpoint can therefore land
    on either side in another fp32 implementation. Key "margin" = min_j |y_j - nearest
    midpoint| (0 for the constant and zero rows, whose zero coordinates sit exactly on the
    middle midpoint 0.0 and whose answer is exact under any summation order).
  - Triton lowers fp32 `/` to div.full.f32 on NVIDIA (<=2 ulp, triton-lang/triton#10661), so
    the GPU's value scale and (v - mn)/scale can be an ulp off IEEE. This script uses IEEE fp32
    (numpy float32). Value "margin" = min_j distance of (v_j - mn)/scale + 0.5 from an integer,
    in code steps. The exact-tie rows (margin 0; integers/half-integers with range 2^b-1, scale
    exactly 1) are well defined only under IEEE division: round half up.
  - vLLM's inputs are fp16/bf16 model activations; here inputs are any float32 (some rows are
    bf16- or fp16-exact to mimic that).
"""

import json
import math
import os
import sys

import numpy as np

D = 64
SOURCE_FILES = [
    "vllm/model_executor/layers/quantization/turboquant/centroids.py",
    "vllm/model_executor/layers/quantization/turboquant/config.py",
    "vllm/v1/attention/backends/turboquant_attn.py",
    "vllm/v1/attention/ops/triton_turboquant_store.py",
    "vllm/v1/attention/ops/triton_turboquant_decode.py",
    "vllm/v1/attention/ops/turboquant_soa/triton_turboquant_store.py",
    "vllm/config/cache.py",
    "vllm/engine/arg_utils.py",
    "vllm/model_executor/layers/attention/attention.py",
]
F32 = np.float32


# ── codebook: a literal port of centroids.py (pure Python floats, then float32) ──────────────


def _gaussian_pdf(x, sigma2):
    return (1.0 / math.sqrt(2 * math.pi * sigma2)) * math.exp(-x * x / (2 * sigma2))


def _trapz(f, a, b, n=200):
    h = (b - a) / n
    result = 0.5 * (f(a) + f(b))
    for i in range(1, n):
        result += f(a + i * h)
    return result * h


def solve_lloyd_max(d, bits, max_iter=200, tol=1e-10):
    n_levels = 2**bits
    sigma2 = 1.0 / d
    sigma = math.sqrt(sigma2)

    def pdf(x):
        return _gaussian_pdf(x, sigma2)

    lo, hi = -3.5 * sigma, 3.5 * sigma
    centroids = [lo + (hi - lo) * (i + 0.5) / n_levels for i in range(n_levels)]
    for _ in range(max_iter):
        boundaries = [(centroids[i] + centroids[i + 1]) / 2.0 for i in range(n_levels - 1)]
        edges = [lo * 3] + boundaries + [hi * 3]
        new_centroids = []
        for i in range(n_levels):
            a, b = edges[i], edges[i + 1]
            num = _trapz(lambda x: x * pdf(x), a, b)
            den = _trapz(pdf, a, b)
            new_centroids.append(num / den if den > 1e-15 else centroids[i])
        if max(abs(new_centroids[i] - centroids[i]) for i in range(n_levels)) < tol:
            break
        centroids = new_centroids
    return np.array(centroids, dtype=F32)


def midpoints_f32(c):
    c = np.sort(c)
    return ((c[:-1] + c[1:]) / F32(2)).astype(F32)  # float32 arithmetic, as torch does


def hadamard_f32(d):
    h = np.array([[1.0]], dtype=F32)
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return (h / F32(math.sqrt(d))).astype(F32)


# ── fp16 / bit helpers ────────────────────────────────────────────────────────────────────────


def f16_bytes(x32):
    """fp32 -> fp16 (round to nearest even), little-endian bytes."""
    u = int(np.array([x32], dtype=F32).astype(np.float16).view(np.uint16)[0])
    return [u & 0xFF, u >> 8]


def f16_value(bs):
    return float(np.array([bs[0] | (bs[1] << 8)], dtype=np.uint16).view(np.float16)[0])


def pack(idx, bits):
    idx = [int(i) for i in idx]
    if bits == 4:
        return [(idx[2 * i] & 0xF) | ((idx[2 * i + 1] & 0xF) << 4) for i in range(len(idx) // 2)]
    assert bits == 3 and len(idx) % 8 == 0
    out = []
    for g in range(len(idx) // 8):
        w = sum((idx[8 * g + j] & 7) << (3 * j) for j in range(8))
        out += [w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF]
    return out


def unpack_like_decode(data, bits, d):
    """The decode kernels' reader: two bytes at bit offset j*bits, shift, mask."""
    buf = list(data) + [0]
    out = []
    for j in range(d):
        off = j * bits
        raw16 = buf[off // 8] | (buf[off // 8 + 1] << 8)
        out.append((raw16 >> (off % 8)) & ((1 << bits) - 1))
    return out


def to_bf16(x):
    u = np.asarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(F32)


# ── the store + decode ────────────────────────────────────────────────────────────────────────


def encode_key(k, bits, cent, mids, h32):
    k = np.asarray(k, dtype=F32)
    norm = F32(math.sqrt(float(np.sum(k.astype(np.float64) ** 2))))
    x_hat = (k / (norm + F32(1e-8))).astype(F32)
    y = x_hat.astype(np.float64) @ h32.astype(np.float64)
    idx = np.searchsorted(mids.astype(np.float64), y, side="right")
    # the kernel's binary search, literally, as a check of the searchsorted equivalence
    n = 2**bits
    lo, hi = np.zeros(D, dtype=np.int64), np.full(D, n - 1, dtype=np.int64)
    for _ in range(bits):
        mid = (lo + hi) >> 1
        mv = mids.astype(np.float64)[np.minimum(mid, n - 2)]
        ge = y >= mv
        lo, hi = np.where(ge, mid + 1, lo), np.where(ge, hi, mid)
    assert np.array_equal(np.minimum(lo, n - 1), idx)
    data = pack(idx, bits) + f16_bytes(norm)
    margin = float(np.min(np.abs(y[:, None] - mids.astype(np.float64)[None, :])))
    # decode (norm correction), float64, back to the original basis
    mse_bytes = math.ceil(D * bits / 8)
    idx_back = unpack_like_decode(data[:mse_bytes], bits, D)
    assert idx_back == [int(i) for i in idx]
    c = cent.astype(np.float64)[idx_back]
    c_hat = c / math.sqrt(float(np.sum(c * c)) + 1e-16)
    k_rot = f16_value(data[mse_bytes:]) * c_hat
    k_hat = h32.astype(np.float64) @ k_rot
    return data, k_hat, margin


def encode_value(v, bits):
    v = np.asarray(v, dtype=F32)
    levels = 2**bits - 1
    mn, mx = F32(v.min()), F32(v.max())
    scale = F32(F32(mx - mn) / F32(levels))
    if not scale > F32(1e-8):
        scale = F32(1e-8)
    diff = (v - mn).astype(F32)
    t = ((diff / scale).astype(F32) + F32(0.5)).astype(F32)
    q = np.clip(np.trunc(t).astype(np.int64), 0, levels)
    t64 = diff.astype(np.float64) / np.float64(scale) + 0.5
    margin = float(np.min(np.abs(t64 - np.round(t64))))
    data = pack(q, bits) + f16_bytes(scale) + f16_bytes(mn)
    nb = math.ceil(D * bits / 8)
    q_back = unpack_like_decode(data[:nb], bits, D)
    assert q_back == [int(x) for x in q]
    s16, z16 = f16_value(data[nb:nb + 2]), f16_value(data[nb + 2:nb + 4])
    return data, np.array(q_back, dtype=np.float64) * s16 + z16, margin


# ── inputs ────────────────────────────────────────────────────────────────────────────────────


def rows(part, bits):
    rng = np.random.default_rng(20261202 + 10 * bits + (0 if part == "key" else 1))
    out = []  # (kind, row)
    out += [("gauss", rng.normal(0, 1, D)) for _ in range(40)]
    out += [("gauss_bf16", to_bf16(rng.normal(0, 1, D).astype(F32))) for _ in range(60)]
    for _ in range(20):
        r = rng.normal(0, 1, D)
        r[rng.integers(D)] = rng.choice([-1, 1]) * rng.uniform(15, 60)
        out.append(("outlier", r))
    out += [("small_1e-3", rng.normal(0, 1e-3, D)) for _ in range(15)]
    out += [("large_50", rng.normal(0, 50, D)) for _ in range(15)]
    out += [("fp16_exact", rng.normal(0, rng.choice([0.05, 1.0, 8.0]), D).astype(np.float16)) for _ in range(20)]
    out += [("uniform", rng.uniform(-1, 1, D)) for _ in range(8)]
    out.append(("constant", np.full(D, 0.75)))
    out.append(("constant_neg", np.full(D, -3.1)))
    if part == "key":
        out.append(("zero", np.zeros(D)))
        for j in (0, 5, 63):
            r = np.zeros(D)
            r[j] = 2.5
            out.append(("one_hot", r))
        r = np.zeros(D)
        r[[3, 40]] = [1.0, -1.0]
        out.append(("two_hot", r))
        out += [("sparse", rng.normal(0, 1, D) * (rng.random(D) < 0.1)) for _ in range(11)]
    else:
        out.append(("zero", np.zeros(D)))
        # exact ties: range 2^b-1 on a half-integer grid -> scale exactly 1, (v-mn)/scale+.5 integral
        levels = 2**bits - 1
        for _ in range(12):
            mn = int(rng.integers(-8, 2))
            k = rng.integers(0, 2 * levels + 1, D)
            k[:2] = [0, 2 * levels]
            out.append(("tie_half", mn + rng.permutation(k) / 2.0))
        # range of one ulp at 0.5 (5.96e-8 < 7e-8): scale floors to 1e-8 (fp16 0) at both widths
        tiny = np.full(D, 0.5, dtype=F32)
        tiny[rng.random(D) < 0.5] = np.nextafter(F32(0.5), F32(1.0))
        out.append(("scale_floor", tiny))
        out.append(("positive", np.abs(rng.normal(3, 1, D))))
        out.append(("negative", -np.abs(rng.normal(3, 1, D))))
    assert len(out) <= 200, len(out)
    while len(out) < 200:
        out.append(("gauss", rng.normal(0, 1, D)))
    return [(kind, np.asarray(r, dtype=F32)) for kind, r in out]


def sig9(x):
    return float(f"{x:.9g}") + 0.0  # +0.0 turns -0.0 into 0.0


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data", "turboquant_reference.json")
    h32 = hadamard_f32(D)
    assert np.array_equal(h32, h32.T) and np.allclose(h32 @ h32, np.eye(D))
    cents = {b: np.sort(solve_lloyd_max(D, b)) for b in (4, 3)}
    mids = {b: midpoints_f32(cents[b]) for b in (4, 3)}
    for b in (4, 3):
        assert mids[b][len(mids[b]) // 2] == 0.0

    def slot(kb, vb):
        kps = D if kb == 8 else math.ceil(D * kb / 8) + 2
        vps = math.ceil(D * vb / 8) + 4
        s = kps + vps
        return {"key_bits": kb, "value_bits": vb, "key_bytes": kps, "value_bytes": vps,
                "slot_bytes": s, "slot_bytes_aligned": s + s % 2}

    n_layers = 30
    n = min(2, n_layers // 2)
    skip30 = sorted(set(range(n)) | set(range(n_layers - n, n_layers)))
    doc = {
        "source": "vllm 0.33.0 (4ba787ec9) files read: " + json.dumps(SOURCE_FILES),
        "head_dim": D,
        "centroids": {str(b): [float(x) for x in cents[b]] for b in (4, 3)},
        "midpoints": {str(b): [float(x) for x in mids[b]] for b in (4, 3)},
        "presets": {
            "turboquant_4bit_nc": slot(4, 4),
            "turboquant_3bit_nc": slot(3, 3),
            "turboquant_k3v4_nc": slot(3, 4),
            "turboquant_k8v4": slot(8, 4),
        },
        "slot_layout": "[K codes ceil(d*kb/8) | K norm fp16 LE | V codes ceil(d*vb/8) | V scale fp16 LE | "
                       "V zero(min) fp16 LE | pad to even]; key case bytes = K codes + K norm, value case "
                       "bytes = V codes + V scale + V zero",
        "skip_layers_rule": "vLLM keeps the model dtype (kv_cache_dtype 'auto') on boundary layers for every "
                            "turboquant_* dtype: dense models skip layers [0, n) and [L-n, L) with "
                            "n = min(2, L // 2) (TurboQuantConfig.get_boundary_skip_layers, n=2); hybrid "
                            "(attention + mamba/linear) models skip none; the set is unioned with "
                            "--kv-cache-dtype-skip-layers",
        "skip_layers_30": skip30,
        "margin_note": "key: min_j |y_j - nearest fp32 midpoint| (y = rotated unit key, float64); value: "
                       "min_j distance of (v_j-min)/scale+0.5 from an integer, in code steps; 0 = exact tie "
                       "resolved by IEEE fp32 (key: upper centroid; value: round half up)",
        "cases": [],
    }
    for b in (4, 3):
        for part in ("key", "value"):
            for kind, x in rows(part, b):
                if part == "key":
                    data, dec, margin = encode_key(x, b, cents[b], mids[b], h32)
                else:
                    data, dec, margin = encode_value(x, b)
                doc["cases"].append({
                    "bits": b, "part": part, "kind": kind, "margin": float(f"{margin:.3g}"),
                    "x": [float(np.float32(v)) for v in x],
                    "bytes": data,
                    "decoded": [sig9(v) for v in dec],
                })
    text = json.dumps(doc, separators=(",", ":"))
    # one case per line: compact but readable
    text = text.replace(',"cases":[{', ',\n"cases":[\n{').replace('},{"bits"', '},\n{"bits"')
    with open(out_path, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
