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
//! removed them), the codebook is Lloyd–Max on a Gaussian (the paper's is on the exact marginal
//! of a coordinate of a random unit vector, which tends to it as `d` grows), values are min–max,
//! not rotated, and there is no QJL residual on keys (vLLM omits it: "hurts attention quality").
//!
//! The paper's inner-product variant, TurboQuant_prod, is [`TurboQuant::with_qjl`]
//! (`turboquant-4bit-qjl`), as the reference implementation vLLM's codebook cites
//! (tonbistudio/turboquant-pytorch `TurboQuantProd`) builds it: `b − 1`-bit codes as above, then
//! the residual `r = k − k̂` in the key's own space, one bit per coordinate of `sign(S r)` (zero
//! counts as +) for a `d × d` projection `S` of i.i.d. standard normals, and `‖r‖` in f16; the key
//! reads back as `k̂ + ‖r‖ · √(π/2) / d · Sᵀ sign(S r)`, whose inner product with any query is the
//! reference's unbiased estimator. `S` is drawn once per head size from kvbench's own generator
//! ([`QJL_SEED`]); the reference draws it from torch's, so codes cannot be compared with it bit
//! for bit, and the unit tests hold the variant to the estimator's unbiasedness instead.

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
    /// Bits per value code, and per key coordinate in all.
    bits: u32,
    d: usize,
    /// The key codebook for `N(0, 1/d)`, ascending: at `bits`, or `bits − 1` with QJL.
    centroids: Vec<f32>,
    /// The midpoints between neighbouring centroids.
    bounds: Vec<f32>,
    /// The paper's inner-product variant: the QJL projection `S` (`[d, d]`, i.i.d. `N(0, 1)`,
    /// row-major) whose signs of the key's residual take the last bit.
    qjl: Option<std::sync::Arc<Vec<f32>>>,
}

/// The seed of the QJL projection (one matrix per head size, shared by every layer and head).
pub const QJL_SEED: u64 = 43;

impl TurboQuant {
    /// vLLM's codec at `bits` for rows of `d` values (a power of two, a multiple of 8).
    pub fn new(bits: u32, d: usize) -> Self {
        assert!(d.is_power_of_two() && d.is_multiple_of(8), "TurboQuant needs a power-of-two head of 8 or more");
        let unit: &[f32] = match bits {
            3 => &CENTROIDS_3,
            4 => &CENTROIDS_4,
            _ => panic!("TurboQuant at {bits} bits is not one of vLLM's (3 or 4)"),
        };
        let centroids: Vec<f32> = unit.iter().map(|&c| (c as f64 / (d as f64).sqrt()) as f32).collect();
        let bounds = centroids.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        Self { bits, d, centroids, bounds, qjl: None }
    }

    /// The paper's TurboQuant_prod for keys at `bits` (4): `bits − 1`-bit codes as [`Self::new`],
    /// then one sign bit per coordinate of `S r` for the residual `r = k − k̂`, and `‖r‖` in f16;
    /// values as vLLM's at `bits`.
    pub fn with_qjl(bits: u32, d: usize) -> Self {
        Self::with_qjl_seed(bits, d, QJL_SEED)
    }

    fn with_qjl_seed(bits: u32, d: usize, seed: u64) -> Self {
        assert_eq!(bits, 4, "the QJL variant is built at 4 bits (3-bit codes and a sign)");
        let codes = Self::new(bits - 1, d);
        // splitmix64, then Box–Muller on 53-bit uniforms in (0, 1]
        let mut state = seed;
        let mut uniform = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON / 2.0
        };
        let mut normal = || ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32;
        let s: Vec<f32> = (0..d * d).map(|_| normal()).collect();
        Self { bits, qjl: Some(std::sync::Arc::new(s)), ..codes }
    }

    /// Bits per code.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Bytes of one key row: codes and the f16 norm (with QJL: `d` sign bits and the residual's
    /// f16 norm too).
    pub fn key_bytes(&self) -> usize {
        match self.qjl {
            None => self.code_bytes(self.bits) + 2,
            Some(_) => self.code_bytes(self.bits - 1) + self.d / 8 + 4,
        }
    }

    /// Bytes of one value row: codes, the f16 scale and the f16 zero.
    pub fn value_bytes(&self) -> usize {
        self.code_bytes(self.bits) + 4
    }

    fn code_bytes(&self, bits: u32) -> usize {
        self.d * bits as usize / 8
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
        let key_bits = if self.qjl.is_some() { self.bits - 1 } else { self.bits };
        pack(&codes, key_bits, out);
        let norm = f16::from_f32(norm);
        out.extend_from_slice(&norm.to_le_bytes());
        let mut c: Vec<f32> = codes.iter().map(|&i| self.centroids[i as usize]).collect();
        let c_norm = (c.iter().map(|x| x * x).sum::<f32>() + 1e-16).sqrt();
        c.iter_mut().for_each(|x| *x *= norm.to_f32() / c_norm);
        hadamard::rotate_rows(&mut c, self.d);
        if let Some(s) = &self.qjl {
            // the residual's signs under S, and ‖r‖: k̂ + ‖r‖ √(π/2) / d · Sᵀ sign(S r) is the
            // estimator whose inner product with any query is unbiased
            let d = self.d;
            let r: Vec<f32> = k.iter().zip(&c).map(|(a, b)| a - b).collect();
            let signs: Vec<bool> =
                s.chunks_exact(d).map(|row| row.iter().zip(&r).map(|(a, b)| a * b).sum::<f32>() >= 0.0).collect();
            out.extend(signs.chunks_exact(8).map(|b| b.iter().enumerate().fold(0u8, |w, (j, &s)| w | (s as u8) << j)));
            let gamma = f16::from_f32(r.iter().map(|x| x * x).sum::<f32>().sqrt());
            out.extend_from_slice(&gamma.to_le_bytes());
            let scale = gamma.to_f32() * (std::f32::consts::PI / 2.0).sqrt() / d as f32;
            for (row, &sign) in s.chunks_exact(d).zip(&signs) {
                let z = if sign { scale } else { -scale };
                c.iter_mut().zip(row).for_each(|(c, s)| *c += z * s);
            }
        }
        wide.extend_from_slice(&c);
    }

    /// Append the code of value `v` to `out` and its decoding to `wide`.
    pub fn encode_value(&self, v: &[f32], out: &mut Vec<u8>, wide: &mut Vec<f32>) {
        let (min, max) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let top = ((1u32 << self.bits) - 1) as f32;
        let scale = ((max - min) / top).max(1e-8);
        let codes: Vec<u8> = v.iter().map(|&x| ((x - min) / scale + 0.5).floor().clamp(0.0, top) as u8).collect();
        pack(&codes, self.bits, out);
        let (scale, zero) = (f16::from_f32(scale), f16::from_f32(min));
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(&zero.to_le_bytes());
        wide.extend(codes.iter().map(|&q| q as f32 * scale.to_f32() + zero.to_f32()));
    }
}

/// Pack `bits`-bit codes as vLLM does: 4-bit two per byte, the first low; 3-bit eight per three
/// bytes, code `j` at bit `3j` of a little-endian 24-bit word.
fn pack(codes: &[u8], bits: u32, out: &mut Vec<u8>) {
    match bits {
        4 => out.extend(codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4))),
        3 => {
            for eight in codes.chunks_exact(8) {
                let word = eight.iter().enumerate().fold(0u32, |w, (j, &c)| w | (c as u32) << (3 * j));
                out.extend_from_slice(&word.to_le_bytes()[..3]);
            }
        }
        _ => unreachable!("TurboQuant codes are 3 or 4 bits"),
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

    /// With QJL, `q·k̂` is unbiased over the draw of `S`: for the query along the residual, where
    /// the codes alone are most biased (by `−‖r‖`), the mean over 400 projections is within 3
    /// standard errors of the truth.
    #[test]
    fn the_qjl_estimator_is_unbiased_where_the_codes_alone_are_not() {
        let d = 64;
        let k: Vec<f32> = (0..d).map(|i| ((i * 37 % 17) as f32 - 8.0) / 4.0 + if i == 5 { 6.0 } else { 0.0 }).collect();
        let (mut codes, mut mse) = (Vec::new(), Vec::new());
        TurboQuant::new(3, d).encode_key(&k, &mut codes, &mut mse);
        let r: Vec<f32> = k.iter().zip(&mse).map(|(a, b)| a - b).collect();
        let r_norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        let q: Vec<f32> = r.iter().map(|x| x / r_norm).collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let truth = dot(&q, &k);
        assert!((dot(&q, &mse) - truth + r_norm as f64).abs() < 1e-3, "the codes alone miss by ‖r‖");
        let errors: Vec<f64> = (0..400)
            .map(|seed| {
                let tq = TurboQuant::with_qjl_seed(4, d, 1000 + seed);
                let (mut codes, mut wide) = (Vec::new(), Vec::new());
                tq.encode_key(&k, &mut codes, &mut wide);
                assert_eq!(codes.len(), tq.key_bytes());
                dot(&q, &wide) - truth
            })
            .collect();
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        let sd = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (errors.len() - 1) as f64).sqrt();
        let se = sd / (errors.len() as f64).sqrt();
        assert!(mean.abs() < 3.0 * se, "mean error {mean} (se {se}) against the codes' {}", -r_norm);
        assert!(se < 0.1 * r_norm as f64, "the estimate is informative: se {se}");
    }
}
