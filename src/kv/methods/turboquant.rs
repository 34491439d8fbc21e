//! `turboquant-4bit`, `turboquant-3bit`: vLLM's TurboQuant KV cache, `--kv-cache-dtype
//! turboquant_4bit_nc` and `turboquant_3bit_nc` (4-bit keys and values; 3-bit keys and values;
//! both with norm correction). The codes are [`crate::kv::turboquant`]'s: Hadamard-rotated unit
//! keys on a Lloyd–Max codebook with an f16 norm, min–max values with an f16 scale and zero; at
//! `d = 64`, 70 and 54 bytes per token and kv head against fp16's 256. `turboquant-4bit-qjl` is
//! the paper's inner-product variant, which vLLM leaves out: 3-bit key codes plus the QJL signs
//! of the residual and its norm, values as `turboquant-4bit` (72 bytes).
//!
//! As vLLM by default, the first two and the last two layers keep the model's precision (here
//! f16, as the `fp16` cache): on SmolLM2's 30 layers, 26 are quantized, so the measured ratio is
//! below the nominal one (16 / 4.375 and 16 / 3.375, the coded layers' bits per value). Every key
//! and value of a coded layer is coded as it is written, prefill included, and attention reads
//! them decoded. (vLLM's first prefill chunk attends over the raw keys and values; here it reads
//! the decoded ones, as the other quantizers do.) vLLM's other TurboQuant settings, `k8v4` (FP8
//! keys) and `k3v4_nc` (3-bit keys, 4-bit values), are not built.

use serde_json::json;

use super::fp16::Fp16Store;
use crate::kv::rowcode::{CodedStore, RowCode};
use crate::kv::tokens::TokenRows;
use crate::kv::turboquant::{QJL_SEED, TurboQuant, skips_layer};
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// TurboQuant at 3 or 4 bits.
#[derive(Debug, Clone, Copy)]
pub struct TurboQuantCache {
    /// Bits per key and value code.
    pub bits: u32,
    /// The paper's QJL variant for keys (`turboquant-4bit-qjl`).
    pub qjl: bool,
}

impl TurboQuantCache {
    fn code(self) -> RowCode {
        RowCode::TurboQuant { bits: self.bits, qjl: self.qjl }
    }

    /// Bits per value of a coded layer at `d = 64`, norms and scales included.
    fn bits_per_value(self) -> f64 {
        let codec = if self.qjl { TurboQuant::with_qjl(self.bits, 64) } else { TurboQuant::new(self.bits, 64) };
        8.0 * (codec.key_bytes() + codec.value_bytes()) as f64 / 128.0
    }
}

impl Method for TurboQuantCache {
    fn name(&self) -> String {
        let qjl = if self.qjl { "-qjl" } else { "" };
        format!("turboquant-{}bit{qjl}", self.bits)
    }

    fn settings(&self) -> serde_json::Value {
        let mut settings = json!({ "bits": self.bits, "vllm_dtype": format!("turboquant_{}bit_nc", self.bits),
                "rotation": "walsh-hadamard", "key_codebook": "lloyd-max-gaussian", "key_norm": "f16",
                "norm_correction": true, "values": "min-max-per-row", "value_scale_zero": "f16",
                "qjl": self.qjl, "unquantized_layers": "first-2-last-2" });
        if self.qjl {
            settings["vllm_dtype"] = json!("none");
            settings["key_codebook_bits"] = json!(self.bits - 1);
            settings["qjl_projection"] = json!({ "rows": "head_dim", "entries": "gaussian", "seed": QJL_SEED });
        }
        settings
    }

    fn description(&self) -> String {
        let b = self.bits;
        if self.qjl {
            format!(
                "the TurboQuant paper's inner-product keys: Hadamard-rotated unit keys on a {}-bit Lloyd-Max codebook \
                 with an f16 norm, plus the signs of the residual's Gaussian projection (QJL) and its f16 norm; {b}-bit \
                 min-max values as vLLM's; the first and last two layers in f16",
                b - 1
            )
        } else {
            format!(
                "vLLM's turboquant_{b}bit_nc: Hadamard-rotated unit keys on a {b}-bit Lloyd-Max codebook with an f16 \
                 norm, {b}-bit min-max values; the first and last two layers in f16"
            )
        }
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(16.0 / self.bits_per_value())
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }

    fn row_code(&self) -> Option<RowCode> {
        Some(self.code())
    }
}

impl StoreFactory for TurboQuantCache {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        if skips_layer(ctx.layer, ctx.layers) {
            Box::new(Fp16Store(TokenRows::new(ctx.shape)))
        } else {
            Box::new(CodedStore::new(ctx.shape, self.code()))
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::kv::Heads;
    use crate::kv::turboquant::TurboQuant;

    #[test]
    fn bytes_are_vllms_slots_and_the_boundary_layers_stay_f16() {
        let shape = Heads { heads: 9, kv_heads: 3, head_dim: 64 };
        let (n, w) = (50, 3 * 64);
        let mut rng = StdRng::seed_from_u64(4);
        let rows: Vec<f32> = (0..n * w).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        // QJL: 24 bytes of 3-bit codes, 8 of signs, the two f16 norms; values as 4-bit
        for (bits, qjl, slot) in [(4, false, 70), (3, false, 54), (4, true, 72)] {
            let method = TurboQuantCache { bits, qjl };
            for layer in 0..30 {
                let ctx = StoreContext { layer, layers: 30, ..StoreContext::for_tests(shape, n) };
                let mut store = method.layer_store(&ctx);
                store.append(&rows, &rows, n);
                let coded = !skips_layer(layer, 30);
                let want = if coded { n * 3 * slot } else { n * 3 * (2 * 64 * 2 + 4) };
                assert_eq!(store.bytes(), want, "{bits}-bit layer {layer}");
            }
            // the nominal ratio is a coded layer's: 256 bytes of fp16 against the slot
            assert!((method.nominal_ratio().unwrap() - 256.0 / slot as f64).abs() < 1e-12);
        }
    }

    /// The paper's bound on a unit key's mean squared error at `b` bits (Theorem 1:
    /// `√3·π/2 · 4⁻ᵇ`), on random Gaussian keys; each value within half its step (and f16's
    /// rounding of the scale and zero).
    #[test]
    fn round_trip_errors_are_within_the_formats_bounds() {
        let d = 64;
        let mut rng = StdRng::seed_from_u64(9);
        let mut normal = || {
            let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        };
        for bits in [3u32, 4] {
            let tq = TurboQuant::new(bits, d);
            let (mut mse, n) = (0.0f64, 500);
            for _ in 0..n {
                let k: Vec<f32> = (0..d).map(|_| 3.0 * normal()).collect();
                let (mut codes, mut wide) = (Vec::new(), Vec::new());
                tq.encode_key(&k, &mut codes, &mut wide);
                let norm2: f32 = k.iter().map(|x| x * x).sum();
                mse += (k.iter().zip(&wide).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / norm2) as f64;
                let v: Vec<f32> = (0..d).map(|_| normal()).collect();
                let (mut codes, mut wide) = (Vec::new(), Vec::new());
                tq.encode_value(&v, &mut codes, &mut wide);
                let (min, max) = v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                let step = (max - min) / ((1 << bits) - 1) as f32;
                for (x, y) in v.iter().zip(&wide) {
                    assert!((x - y).abs() <= step / 2.0 + 2e-3 * max.abs().max(min.abs()), "{bits}-bit value {x}: {y}");
                }
            }
            let bound = 3f64.sqrt() * std::f64::consts::PI / 2.0 * 4f64.powi(-(bits as i32));
            assert!(mse / n as f64 <= bound, "{bits}-bit keys: MSE {} above the paper's {bound}", mse / n as f64);
        }
    }
}
