//! TurboQuant's row codes, as vLLM stores them (`--kv-cache-dtype turboquant_4bit_nc` and
//! `turboquant_3bit_nc`; vLLM 0.33.0, `model_executor/layers/quantization/turboquant/` and its
//! Triton store and decode kernels):
//!
//! - **Keys**: the key's norm `‖k‖` (stored f16), and the unit key rotated by the normalized
//!   Walsh–Hadamard transform `y = H k / (‖k‖ + 10⁻⁸)`, each coordinate coded by the nearest
//!   centroid of a Lloyd–Max codebook for `N(0, 1/d)` (the distribution of a coordinate of a
//!   randomly rotated unit vector, large `d`). Decoding is vLLM's norm correction (`_nc`): the
//!   centroid vector `c` is rescaled to unit length and then to the stored norm,
//!   `k̂ = ‖k‖ · Hᵀ c / √(‖c‖² + 10⁻¹⁶)`; a coordinate on a midpoint takes the upper centroid. `b·d/8 + 2` bytes per row.
//! - **Values**: not rotated; min–max over the row at `b` bits, `scale = (max − min) / (2ᵇ − 1)`
//!   (at least 10⁻⁸), `code = ⌊(v − min) / scale + ½⌋` clamped, stored with an f16 scale and an
//!   f16 zero (the minimum). `b·d/8 + 4` bytes.
//!
//! Codes are packed as vLLM packs them: 4-bit codes two per byte, the first in the low nibble;
//! 3-bit codes eight per three bytes, code `j` at bit `3j` of a little-endian 24-bit word.
//!
//! Paper: Zandieh, Daliri, Hadian, Mirrokni, "TurboQuant: Online Vector Quantization with
//! Near-optimal Distortion Rate" (arXiv 2504.19874, 2025). Where vLLM and the paper differ, this
//! follows vLLM: the rotation is the plain normalized Hadamard matrix (no random signs: vLLM
//! removed them), the codebook is Lloyd–Max on a Gaussian (the paper's is on the exact
//! marginal of a coordinate of a random unit vector, which tends to it as `d` grows), values are min–max, not rotated, and there
//! is no QJL residual on keys (vLLM omits it: "hurts attention quality"). The paper's
//! inner-product variant (`(b−1)`-bit codes plus the QJL signs of the residual) is not built.

use half::f16;

use super::hadamard;

/// vLLM's Lloyd–Max centroids at 3 bits for `N(0, 1)`, ascending: its solver's float32 codebook
/// for `d = 64` (`centroids.py`) times `√64`, so that dividing by `√d` gives its codebook exactly
/// at `d = 64` (its solver works on `N(0, 1/d)` directly; at other `d` the two may part in the
/// last bit). The tests re-derive them with exact Gaussian integrals (within 0.002: vLLM's
/// trapezoid rule).
pub const CENTROIDS_3: [f32; 8] =
    [-2.1503496, -1.3431801, -0.7556455, -0.2449836, 0.2449836, 0.7556455, 1.3431801, 2.1503496];

/// The same at 4 bits.
pub const CENTROIDS_4: [f32; 16] = [
    -2.7309222,
    -2.068447,
    -1.6178818,
    -1.2562575,
    -0.94244826,
    -0.6568799,
    -0.3881378,
    -0.12842765,
    0.12842765,
    0.3881378,
    0.6568799,
    0.94244826,
    1.2562575,
    1.6178818,
    2.068447,
    2.7309222,
];

/// Whether vLLM leaves layer `layer` of `layers` unquantized: the first and the last `n` of a
/// dense model, `n = min(2, layers / 2)` (`TurboQuantConfig.get_boundary_skip_layers`).
pub fn skips_layer(layer: usize, layers: usize) -> bool {
    let n = 2.min(layers / 2);
    layer < n || layer + n >= layers
}

/// TurboQuant at `bits` (3 or 4) for rows of `d` values.
#[derive(Debug, Clone, PartialEq)]
pub struct TurboQuant {
    bits: u32,
    d: usize,
    /// The codebook for `N(0, 1/d)`, ascending.
    centroids: Vec<f32>,
    /// The midpoints between neighbouring centroids.
    bounds: Vec<f32>,
}

impl TurboQuant {
    /// The codec at `bits` for rows of `d` values (a power of two, a multiple of 8).
    pub fn new(bits: u32, d: usize) -> Self {
        assert!(d.is_power_of_two() && d.is_multiple_of(8), "TurboQuant needs a power-of-two head of 8 or more");
        let unit: &[f32] = match bits {
            3 => &CENTROIDS_3,
            4 => &CENTROIDS_4,
            _ => panic!("TurboQuant at {bits} bits is not one of vLLM's (3 or 4)"),
        };
        let centroids: Vec<f32> = unit.iter().map(|&c| (c as f64 / (d as f64).sqrt()) as f32).collect();
        let bounds = centroids.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        Self { bits, d, centroids, bounds }
    }

    /// Bits per code.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Bytes of one key row: codes and the f16 norm.
    pub fn key_bytes(&self) -> usize {
        self.code_bytes() + 2
    }

    /// Bytes of one value row: codes, the f16 scale and the f16 zero.
    pub fn value_bytes(&self) -> usize {
        self.code_bytes() + 4
    }

    fn code_bytes(&self) -> usize {
        self.d * self.bits as usize / 8
    }

    /// The codebook index of `y`: the number of midpoints below it (a value on a midpoint goes up).
    fn index(&self, y: f32) -> u8 {
        self.bounds.partition_point(|&b| b <= y) as u8
    }

    /// Append the code of key `k` to `out` and its decoding to `wide`.
    pub fn encode_key(&self, k: &[f32], out: &mut Vec<u8>, wide: &mut Vec<f32>) {
        let norm = k.iter().map(|x| x * x).sum::<f32>().sqrt();
        let mut y: Vec<f32> = k.iter().map(|x| x / (norm + 1e-8)).collect();
        hadamard::rotate_rows(&mut y, self.d);
        let codes: Vec<u8> = y.iter().map(|&v| self.index(v)).collect();
        self.pack(&codes, out);
        let norm = f16::from_f32(norm);
        out.extend_from_slice(&norm.to_le_bytes());
        let mut c: Vec<f32> = codes.iter().map(|&i| self.centroids[i as usize]).collect();
        let c_norm = (c.iter().map(|x| x * x).sum::<f32>() + 1e-16).sqrt();
        c.iter_mut().for_each(|x| *x *= norm.to_f32() / c_norm);
        hadamard::rotate_rows(&mut c, self.d);
        wide.extend_from_slice(&c);
    }

    /// Append the code of value `v` to `out` and its decoding to `wide`.
    pub fn encode_value(&self, v: &[f32], out: &mut Vec<u8>, wide: &mut Vec<f32>) {
        let (min, max) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let top = ((1u32 << self.bits) - 1) as f32;
        let scale = ((max - min) / top).max(1e-8);
        let codes: Vec<u8> = v.iter().map(|&x| ((x - min) / scale + 0.5).floor().clamp(0.0, top) as u8).collect();
        self.pack(&codes, out);
        let (scale, zero) = (f16::from_f32(scale), f16::from_f32(min));
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(&zero.to_le_bytes());
        wide.extend(codes.iter().map(|&q| q as f32 * scale.to_f32() + zero.to_f32()));
    }

    fn pack(&self, codes: &[u8], out: &mut Vec<u8>) {
        match self.bits {
            4 => out.extend(codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4))),
            3 => {
                for eight in codes.chunks_exact(8) {
                    let word = eight.iter().enumerate().fold(0u32, |w, (j, &c)| w | (c as u32) << (3 * j));
                    out.extend_from_slice(&word.to_le_bytes()[..3]);
                }
            }
            _ => unreachable!("checked in new"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lloyd–Max for `N(0, 1)` at `n` levels from uniform centroids, with exact Gaussian
    /// integrals: each centroid becomes its cell's conditional mean.
    fn lloyd_max(n: usize) -> Vec<f64> {
        use statrs::distribution::{Continuous, ContinuousCDF, Normal};
        let g = Normal::new(0.0, 1.0).unwrap();
        let mut c: Vec<f64> = (0..n).map(|i| -3.0 + 6.0 * (i as f64 + 0.5) / n as f64).collect();
        for _ in 0..2000 {
            let mut edges = vec![f64::NEG_INFINITY];
            edges.extend(c.windows(2).map(|w| (w[0] + w[1]) / 2.0));
            edges.push(f64::INFINITY);
            // E[x | a < x < b] = (φ(a) − φ(b)) / (Φ(b) − Φ(a))
            let pdf = |x: f64| if x.is_finite() { g.pdf(x) } else { 0.0 };
            c = edges.windows(2).map(|e| (pdf(e[0]) - pdf(e[1])) / (g.cdf(e[1]) - g.cdf(e[0]))).collect();
        }
        c
    }

    #[test]
    fn the_codebooks_are_lloyd_max_for_a_gaussian() {
        for (got, want) in [(lloyd_max(8), &CENTROIDS_3[..]), (lloyd_max(16), &CENTROIDS_4[..])] {
            for (g, &w) in got.iter().zip(want) {
                // vLLM integrates by the trapezoid rule (200 steps to ±10.5σ), which leaves its
                // outer centroids up to 0.002 from the exact optimum (−2.15195 at 3 bits)
                assert!((g - w as f64).abs() < 2e-3, "{got:?}");
            }
        }
    }

    #[derive(serde::Deserialize)]
    struct Case {
        bits: u32,
        part: String,
        kind: String,
        /// The input's distance to its nearest decision boundary.
        margin: f64,
        x: Vec<f32>,
        bytes: Vec<u8>,
        decoded: Vec<f64>,
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        head_dim: usize,
        centroids: std::collections::HashMap<String, Vec<f32>>,
        skip_layers_30: Vec<usize>,
        cases: Vec<Case>,
    }

    fn reference() -> Reference {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/turboquant_reference.json");
        serde_json::from_slice(&std::fs::read(path).expect("run `cargo xtask turboquant-reference`")).unwrap()
    }

    /// vLLM's store on 800 keys and values (Gaussian, outliers, tiny and large, constant, zero,
    /// ties): the same bytes, and the same decoding. A code may differ only where the input lies
    /// within 10⁻⁴ of a decision boundary, where vLLM's own GPU summation order decides.
    #[test]
    fn codes_are_vllms_byte_for_byte() {
        let r = reference();
        let d = r.head_dim;
        for bits in [3, 4] {
            assert_eq!(TurboQuant::new(bits, d).centroids, r.centroids[&bits.to_string()], "{bits}-bit codebook");
        }
        let mut near = 0;
        for (i, case) in r.cases.iter().enumerate() {
            let tq = TurboQuant::new(case.bits, d);
            let (mut bytes, mut wide) = (Vec::new(), Vec::new());
            match case.part.as_str() {
                "key" => tq.encode_key(&case.x, &mut bytes, &mut wide),
                _ => tq.encode_value(&case.x, &mut bytes, &mut wide),
            }
            let what = format!("case {i} ({}-bit {} {}, margin {:e})", case.bits, case.part, case.kind, case.margin);
            assert_eq!(bytes.len(), if case.part == "key" { tq.key_bytes() } else { tq.value_bytes() });
            if bytes != case.bytes {
                assert!(case.margin < 1e-4, "{what}: {bytes:?} against {:?}", case.bytes);
                near += 1;
                continue;
            }
            let scale = case.decoded.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
            for (j, (got, want)) in wide.iter().zip(&case.decoded).enumerate() {
                assert!((*got as f64 - want).abs() <= 1e-5 * scale, "{what} value {j}: {got} against {want}");
            }
        }
        assert!(near <= 3, "{near} cases near a boundary coded otherwise");
        let skipped: Vec<usize> = (0..30).filter(|&l| skips_layer(l, 30)).collect();
        assert_eq!(skipped, r.skip_layers_30);
    }
}
