//! How a quantizer stores one kept token's row when it is composed with a token method
//! (`snapkv-4x+q4_0-rot`): the token method decides which rows a kv head keeps, the [`RowCode`]
//! how each kept row is held. Only quantizers whose code of a row depends on that row alone (and
//! on per-layer scales) compose: llama.cpp's block types, FlexGen's groups, FP8 and TurboQuant.
//! KIVI's keys are quantized per channel over groups of 32 tokens, so dropping one token from a
//! group would have to re-quantize its neighbours; it does not compose here.
//!
//! A coded row is held as its codes, and attention reads a decoded mirror (as
//! [`crate::kv::rowquant`] does): a rotated code's mirror is rotated back, which is the same
//! attention as rotating queries and outputs (`H` is orthogonal and its own inverse), so the
//! token method's scoring and attention run unchanged. Rows arrive as the token method holds
//! them (f16 for a selection made from the prefill), so a composition quantizes the f16 rounding
//! of the prefill's values; the difference is below half an f16 ulp, far under any code's step.

use super::attention::{self, Heads, KvView, Queries};
use super::fp8::{Format, K_RANGE, V_RANGE, scale_of};
use super::hadamard;
use super::quant::QK;
use super::rowquant::RowCodec;
use super::turboquant::{self, TurboQuant};
use crate::kv::LayerStore;

/// How a composable quantizer codes one kv head's row of one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowCode {
    /// Groups of 32 channels, each encoded by `codec`, after a Walsh–Hadamard rotation of the
    /// head with `rotate`.
    Blocks {
        /// The group's codec.
        codec: RowCodec,
        /// Rotate the row before coding it.
        rotate: bool,
    },
    /// FP8, with one scale per layer for keys and one for values, set from the first rows coded
    /// (vLLM's `calculate_kv_scales`, as the `fp8-*` caches).
    Fp8(Format),
    /// TurboQuant at `bits` ([`crate::kv::turboquant`]; with `qjl`, the paper's inner-product
    /// variant for keys), which vLLM does not apply to the first two and last two layers
    /// ([`Self::codes_layer`]).
    TurboQuant {
        /// Bits per key coordinate and per value.
        bits: u32,
        /// The last key bit is the sign of the residual's QJL projection.
        qjl: bool,
    },
}

impl RowCode {
    /// Whether it can code rows of `d` values, or why not.
    pub fn supports(&self, d: usize) -> Result<(), String> {
        match self {
            Self::Blocks { .. } if !d.is_multiple_of(QK) => Err(format!("a head of {d} is not whole blocks of {QK}")),
            Self::Blocks { rotate: true, .. } if !d.is_power_of_two() => {
                Err(format!("the Walsh-Hadamard rotation needs a power-of-two head, not {d}"))
            }
            Self::TurboQuant { .. } if !(d.is_power_of_two() && d >= 8) => {
                Err(format!("TurboQuant's rotation needs a power-of-two head of 8 or more, not {d}"))
            }
            _ => Ok(()),
        }
    }

    /// Whether the quantizer codes layer `layer` of `layers` (vLLM keeps TurboQuant's boundary
    /// layers in the model's precision; here f16).
    pub fn codes_layer(&self, layer: usize, layers: usize) -> bool {
        match self {
            Self::TurboQuant { .. } => !turboquant::skips_layer(layer, layers),
            _ => true,
        }
    }
}

/// Keys or values (they may be scaled apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Keys.
    Keys,
    /// Values.
    Values,
}

/// A [`RowCode`] ready to code a layer's rows of `d` values: with its scales, once set.
#[derive(Debug, Clone, PartialEq)]
pub struct Coder {
    code: RowCode,
    /// FP8's `(k_scale, v_scale)`.
    scales: (f32, f32),
    /// TurboQuant's codebook for rows of this head size.
    turbo: Option<TurboQuant>,
}

impl Coder {
    /// `code` for a layer of `d`-value rows whose first rows to code are `keys` and `values` (any
    /// number of heads and tokens: the per-layer scales are set from them).
    pub fn calibrated(code: RowCode, d: usize, keys: &[f32], values: &[f32]) -> Self {
        let scales = match code {
            RowCode::Fp8(_) => (scale_of(keys, K_RANGE), scale_of(values, V_RANGE)),
            _ => (1.0, 1.0),
        };
        let turbo = match code {
            RowCode::TurboQuant { bits, qjl: false } => Some(TurboQuant::new(bits, d)),
            RowCode::TurboQuant { bits, qjl: true } => Some(TurboQuant::with_qjl(bits, d)),
            _ => None,
        };
        Self { code, scales, turbo }
    }

    /// FP8's `(k_scale, v_scale)` (1 for the other codes).
    pub fn scales(&self) -> (f32, f32) {
        self.scales
    }

    /// Bytes of one coded row of `d` keys or values.
    pub fn row_bytes(&self, part: Part, d: usize) -> usize {
        match (self.code, &self.turbo, part) {
            (RowCode::Blocks { codec, .. }, ..) => d / QK * codec.group_bytes(),
            (RowCode::Fp8(_), ..) => d,
            (_, Some(turbo), Part::Keys) => turbo.key_bytes(),
            (_, Some(turbo), Part::Values) => turbo.value_bytes(),
            (RowCode::TurboQuant { .. }, None, _) => unreachable!("calibrated builds the codebook"),
        }
    }

    /// Bytes of one token's coded key and value rows of `d` values.
    pub fn token_bytes(&self, d: usize) -> usize {
        self.row_bytes(Part::Keys, d) + self.row_bytes(Part::Values, d)
    }

    /// Bytes of the layer's own state beside its rows (FP8's two f32 scales).
    pub fn layer_bytes(&self) -> usize {
        match self.code {
            RowCode::Fp8(_) => 2 * size_of::<f32>(),
            _ => 0,
        }
    }

    /// Append the codes of `row` to `codes` and its decoding to `wide`.
    pub fn encode(&self, part: Part, row: &[f32], codes: &mut Vec<u8>, wide: &mut Vec<f32>) {
        let at = wide.len();
        match self.code {
            RowCode::Blocks { codec, rotate } => {
                let d = row.len();
                assert!(d.is_multiple_of(QK), "a row of {d} values is not whole groups of {QK}");
                let mut x = row.to_vec();
                if rotate {
                    hadamard::rotate_rows(&mut x, d);
                }
                let first = codes.len();
                x.chunks_exact(QK).for_each(|group| codec.encode(group, codes));
                wide.resize(at + d, 0.0);
                let gb = codec.group_bytes();
                for (block, out) in codes[first..].chunks_exact(gb).zip(wide[at..].chunks_exact_mut(QK)) {
                    codec.decode(block, out);
                }
                if rotate {
                    hadamard::rotate_rows(&mut wide[at..], d);
                }
            }
            RowCode::TurboQuant { .. } => {
                let turbo = self.turbo.as_ref().expect("calibrated builds the codebook");
                match part {
                    Part::Keys => turbo.encode_key(row, codes, wide),
                    Part::Values => turbo.encode_value(row, codes, wide),
                }
            }
            RowCode::Fp8(format) => {
                let scale = if part == Part::Keys { self.scales.0 } else { self.scales.1 };
                for &x in row {
                    let code = format.encode(x / scale);
                    codes.push(code);
                    wide.push(format.decode(code) * scale);
                }
            }
        }
    }
}

/// A layer's every token, each row coded by a [`RowCode`] as it is written: the store of the
/// quantizers made of row codes alone (FP8, TurboQuant). Attention reads the decoded mirror, the chunk
/// being prefilled included; the bytes are the codes and the layer's scales.
#[derive(Debug, Clone)]
pub struct CodedStore {
    shape: Heads,
    code: RowCode,
    /// Set from the first chunk.
    coder: Option<Coder>,
    /// Per kv head: codes, and their decoding `[tokens, head_dim]`.
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    wide_keys: Vec<Vec<f32>>,
    wide_values: Vec<Vec<f32>>,
    tokens: usize,
}

impl CodedStore {
    /// Empty storage.
    pub fn new(shape: Heads, code: RowCode) -> Self {
        let empty = || vec![Vec::new(); shape.kv_heads];
        let wide = || vec![Vec::new(); shape.kv_heads];
        Self {
            shape,
            code,
            coder: None,
            keys: empty(),
            values: empty(),
            wide_keys: wide(),
            wide_values: wide(),
            tokens: 0,
        }
    }
}

impl CodedStore {
    /// The coder, once the first chunk has set it.
    pub fn coder(&self) -> Option<&Coder> {
        self.coder.as_ref()
    }

    /// Kv head `g`'s decoded keys and values, `[tokens, head_dim]` each.
    pub fn decoded(&self, g: usize) -> (&[f32], &[f32]) {
        (&self.wide_keys[g], &self.wide_values[g])
    }
}

impl LayerStore for CodedStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let d = self.shape.head_dim;
        let coder = self.coder.get_or_insert_with(|| Coder::calibrated(self.code, d, keys, values));
        for j in 0..t {
            for g in 0..self.shape.kv_heads {
                let at = (j * self.shape.kv_heads + g) * d;
                coder.encode(Part::Keys, &keys[at..][..d], &mut self.keys[g], &mut self.wide_keys[g]);
                coder.encode(Part::Values, &values[at..][..d], &mut self.values[g], &mut self.wide_values[g]);
            }
        }
        self.tokens += t;
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let views: Vec<KvView> =
            self.wide_keys.iter().zip(&self.wide_values).map(|(k, v)| KvView { keys: k, values: v }).collect();
        attention::attend(self.shape, Queries::new(q, q_stride, t), &views, out);
    }

    fn bytes(&self) -> usize {
        let codes: usize = self.keys.iter().chain(&self.values).map(Vec::len).sum();
        codes + self.coder.as_ref().map_or(0, Coder::layer_bytes)
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
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::kv::rowquant::RowQuantStore;

    #[test]
    fn a_block_row_codes_as_llama_cache_rows_do_and_rotation_comes_back() {
        let mut rng = StdRng::seed_from_u64(3);
        let d = 64;
        let row: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        for rotate in [false, true] {
            let coder = Coder::calibrated(RowCode::Blocks { codec: RowCodec::Q4_0, rotate }, d, &row, &row);
            let (mut codes, mut wide) = (Vec::new(), Vec::new());
            coder.encode(Part::Keys, &row, &mut codes, &mut wide);
            assert_eq!(codes.len(), coder.row_bytes(Part::Keys, d));
            // as many bytes as llama.cpp's cache type holds for the row
            let mut store = RowQuantStore::new(Heads { heads: 1, kv_heads: 1, head_dim: d }, RowCodec::Q4_0, rotate);
            store.append(&row, &row, 1);
            assert_eq!(store.bytes(), 2 * codes.len());
            // decoded and rotated back: close to the row (q4_0's step), not to its rotation
            let err = row.iter().zip(&wide).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 0.3, "rotate {rotate}: {err}");
        }
    }

    #[test]
    fn fp8_rows_are_scaled_per_part_from_the_first_rows() {
        let keys = [4.0f32, -2.0, 1.0, 0.5];
        let values = [1.0f32, 0.25, -0.5, 0.0];
        let coder = Coder::calibrated(RowCode::Fp8(Format::E4M3), 4, &keys, &values);
        assert_eq!(coder.scales, (4.0 / K_RANGE, 1.0 / V_RANGE));
        let (mut codes, mut wide) = (Vec::new(), Vec::new());
        coder.encode(Part::Values, &values, &mut codes, &mut wide);
        assert_eq!((codes.len(), coder.layer_bytes()), (4, 8));
        // values over their scale: 100, 25, −50, 0; E4M3 holds them within half a step (1/16)
        for (w, x) in wide.iter().zip(values) {
            assert!((w - x).abs() <= x.abs() / 16.0, "{w} for {x}");
        }
        assert_eq!(wide[0], 96.0 * coder.scales.1, "100 rounds to 96 (steps of 8 above 64)");
    }
}
