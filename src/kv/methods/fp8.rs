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

use crate::kv::attention::{self, Heads, KvView, Queries};
use crate::kv::fp8::{Format, K_RANGE, V_RANGE, scale_of};
use crate::kv::rowcode::RowCode;
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
        Box::new(Fp8Store::new(ctx.shape, self.format))
    }
}

/// A layer's FP8 keys and values.
#[derive(Debug, Clone)]
pub struct Fp8Store {
    shape: Heads,
    format: Format,
    /// `(k_scale, v_scale)`, once the first chunk has set them.
    scales: Option<(f32, f32)>,
    /// Per kv head, `[tokens, head_dim]` codes.
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    /// The codes decoded, what attention reads.
    wide_keys: Vec<Vec<f32>>,
    wide_values: Vec<Vec<f32>>,
    tokens: usize,
}

impl Fp8Store {
    /// Empty storage.
    pub fn new(shape: Heads, format: Format) -> Self {
        let empty = vec![Vec::new(); shape.kv_heads];
        let wide = vec![Vec::new(); shape.kv_heads];
        Self {
            shape,
            format,
            scales: None,
            keys: empty.clone(),
            values: empty,
            wide_keys: wide.clone(),
            wide_values: wide,
            tokens: 0,
        }
    }

    /// The per-layer scales, if set.
    pub fn scales(&self) -> Option<(f32, f32)> {
        self.scales
    }
}

/// Encode `t` token-major rows onto each head's codes and their decoding.
fn push(
    format: Format,
    scale: f32,
    shape: Heads,
    rows: &[f32],
    t: usize,
    codes: &mut [Vec<u8>],
    wide: &mut [Vec<f32>],
) {
    let d = shape.head_dim;
    for j in 0..t {
        for (g, (c, w)) in codes.iter_mut().zip(wide.iter_mut()).enumerate() {
            for &x in &rows[(j * shape.kv_heads + g) * d..][..d] {
                let code = format.encode(x / scale);
                c.push(code);
                w.push(format.decode(code) * scale);
            }
        }
    }
}

impl LayerStore for Fp8Store {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let (ks, vs) = *self.scales.get_or_insert_with(|| (scale_of(keys, K_RANGE), scale_of(values, V_RANGE)));
        push(self.format, ks, self.shape, keys, t, &mut self.keys, &mut self.wide_keys);
        push(self.format, vs, self.shape, values, t, &mut self.values, &mut self.wide_values);
        self.tokens += t;
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let views: Vec<KvView> =
            self.wide_keys.iter().zip(&self.wide_values).map(|(k, v)| KvView { keys: k, values: v }).collect();
        attention::attend(self.shape, Queries::new(q, q_stride, t), &views, out);
    }

    fn bytes(&self) -> usize {
        let codes: usize = self.keys.iter().chain(&self.values).map(Vec::len).sum();
        codes + if self.scales.is_some() { 2 * size_of::<f32>() } else { 0 }
    }

    fn tokens(&self) -> usize {
        self.tokens
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn bytes_are_one_per_value_and_the_error_is_within_the_format() {
        let shape = Heads { heads: 6, kv_heads: 2, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(8);
        let n = 200;
        let k: Vec<f32> = (0..n * 128).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let v: Vec<f32> = (0..n * 128).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for (format, mantissa_bits) in [(Format::E4M3, 3), (Format::E5M2, 2)] {
            let mut store = Fp8Store::new(shape, format);
            store.append(&k[..64 * 128], &v[..64 * 128], 64);
            store.append(&k[64 * 128..], &v[64 * 128..], n - 64);
            // codes plus two f32 scales: within 5% of the packed size (it is the packed size)
            assert_eq!(store.bytes(), 2 * n * 128 + 8);
            let (ks, vs) = store.scales().unwrap();
            // round to nearest: half a unit in the last place, relative, above the subnormals
            let half_ulp = 0.5f32.powi(mantissa_bits + 1);
            for (wide, raw, scale) in [(&store.wide_keys, &k, ks), (&store.wide_values, &v, vs)] {
                for g in 0..2 {
                    for i in 0..n {
                        for c in 0..64 {
                            let (x, y) = (raw[(i * 2 + g) * 64 + c], wide[g][i * 64 + c]);
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
