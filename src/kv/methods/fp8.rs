//! `fp8-e4m3`, `fp8-e5m2`: FP8 keys and values with one scale per layer for keys and one for
//! values, as vLLM stores them (`--kv-cache-dtype fp8_e4m3` / `fp8_e5m2`) and SGLang too.
//!
//! Reference: vLLM's attention layer (`Attention.calc_kv_scales`, `scaled_fp8_conversion` in its
//! cache kernels): a stored code is `fp8(clamp(x / scale, ±max))` and reads back as
//! `decode(code) · scale`. Where a checkpoint brings no calibrated scales, vLLM's
//! `calculate_kv_scales` sets them from the first forward pass: `k_scale = max|k| / 200` and
//! `v_scale = max|v| / 100` (its `K_SCALE_CONSTANT` and `V_SCALE_CONSTANT` defaults). Here that
//! first pass is the first prefill chunk, per layer over every kv head (a per-tensor scale), so
//! later tokens have 448 / 200 = 2.2× headroom on keys in E4M3 before they saturate. The codes
//! are the OCP formats bit for bit ([`crate::kv::fp8`], held to torch's `float8_e4m3fn` and
//! `float8_e5m2`). E5M2 is scaled the same way, so the two differ only in format: 3 mantissa
//! bits and a 448 range against 2 bits and 57,344.
//!
//! Bytes: one per value, plus the two f32 scales of the layer; the nominal ratio is 2 against
//! fp16. Attention reads the decoded cache, the chunk being prefilled included, as vLLM's kernels
//! read the fp8 cache they have just written.

use serde_json::json;

use crate::kv::fp8::{Format, K_RANGE, V_RANGE};
use crate::kv::rowcode::{CodedStore, RowCode};
use crate::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};

/// An FP8 cache.
#[derive(Debug, Clone, Copy)]
pub struct Fp8Cache {
    /// The format.
    pub format: Format,
}

impl Method for Fp8Cache {
    fn name(&self) -> String {
        format!("fp8-{}", self.format.name())
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "format": self.format.name(), "scale": "per-layer-tensor", "calibration": "first-chunk-amax",
                "k_range": K_RANGE, "v_range": V_RANGE, "saturate": true })
    }

    fn description(&self) -> String {
        format!(
            "FP8 {} keys and values with one scale per layer each, set from the first prefill chunk as vLLM's calculate_kv_scales does",
            self.format.name().to_uppercase()
        )
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(2.0)
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }

    fn row_code(&self) -> Option<RowCode> {
        Some(RowCode::Fp8(self.format))
    }
}

impl StoreFactory for Fp8Cache {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(CodedStore::new(ctx.shape, RowCode::Fp8(self.format)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Heads;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn bytes_are_one_per_value_and_the_error_is_within_the_format() {
        let shape = Heads { heads: 6, kv_heads: 2, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(8);
        let n = 200;
        let k: Vec<f32> = (0..n * 128).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let v: Vec<f32> = (0..n * 128).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for (format, mantissa_bits) in [(Format::E4M3, 3), (Format::E5M2, 2)] {
            let mut store = CodedStore::new(shape, RowCode::Fp8(format));
            store.append(&k[..64 * 128], &v[..64 * 128], 64);
            store.append(&k[64 * 128..], &v[64 * 128..], n - 64);
            // codes plus two f32 scales: within 5% of the packed size (it is the packed size)
            assert_eq!(store.bytes(), 2 * n * 128 + 8);
            let (ks, vs) = store.coder().unwrap().scales();
            // round to nearest: half a unit in the last place, relative, above the subnormals
            let half_ulp = 0.5f32.powi(mantissa_bits + 1);
            let decoded = |g, keys| if keys { store.decoded(g).0 } else { store.decoded(g).1 };
            for (keys, raw, scale) in [(true, &k, ks), (false, &v, vs)] {
                for g in 0..2 {
                    let wide = decoded(g, keys);
                    for i in 0..n {
                        for c in 0..64 {
                            let (x, y) = (raw[(i * 2 + g) * 64 + c], wide[i * 64 + c]);
                            // a subnormal's error is at most half its fixed step
                            let floor = match format {
                                Format::E4M3 => 2f32.powi(-10),
                                Format::E5M2 => 2f32.powi(-17),
                            } * scale;
                            assert!((x - y).abs() <= half_ulp * x.abs() + floor, "{format:?}: {x} read as {y}");
                        }
                    }
                }
            }
        }
    }
}
