//! Per-token quantized storage, shared by the methods that quantize every key and value as it is
//! written (llama.cpp's types `q8_0` … `q5_1` and `iq4_nl`, rotated or not, and `flexgen-4bit`): each token's key and value row of one kv
//! head is cut into groups of 32 channels, each group encoded by a [`RowCodec`] into one byte
//! block (codes with their scale and, for min–max codes, minimum), and appended to that head's
//! byte vector. Attention sees only decoded values, including for the chunk being prefilled, as
//! in llama.cpp where a chunk's keys are written to the cache before attention reads it.
//!
//! Attention reads a dequantized mirror of the codes, extended as rows are appended: a row's
//! decoding depends on its own blocks only, so the mirror is what decoding the whole cache before
//! every attention call gave, bit for bit, at the cost of decoding each row once. (llama.cpp's
//! kernels read the codes directly; the mirror is this simulator's stand-in.)
//! [`LayerStore::bytes`] counts the codes only.

use super::attention::{self, Heads, KvView, Queries};
use super::hadamard;
use super::quant::{self, QK};
use crate::kv::LayerStore;

/// How one group of 32 values is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowCodec {
    /// llama.cpp `q8_0`.
    Q8_0,
    /// llama.cpp `q4_0`.
    Q4_0,
    /// llama.cpp `q4_1`.
    Q4_1,
    /// llama.cpp `q5_0`.
    Q5_0,
    /// llama.cpp `q5_1`.
    Q5_1,
    /// llama.cpp `iq4_nl`.
    Iq4Nl,
    /// Asymmetric min–max at this many bits (FlexGen).
    MinMax(u32),
}

impl RowCodec {
    /// Bytes of one encoded group of 32.
    pub fn group_bytes(self) -> usize {
        match self {
            Self::Q8_0 => quant::Q8_0_BYTES,
            Self::Q4_0 => quant::Q4_0_BYTES,
            Self::Q4_1 => quant::Q4_1_BYTES,
            Self::Q5_0 => quant::Q5_0_BYTES,
            Self::Q5_1 => quant::Q5_1_BYTES,
            Self::Iq4Nl => quant::IQ4_NL_BYTES,
            Self::MinMax(bits) => quant::minmax_bytes(QK, bits),
        }
    }

    /// Append the encoding of 32 values to `out`.
    pub fn encode(self, x: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::Q8_0 => quant::q8_0_encode(x, out),
            Self::Q4_0 => quant::q4_0_encode(x, out),
            Self::Q4_1 => quant::q4_1_encode(x, out),
            Self::Q5_0 => quant::q5_0_encode(x, out),
            Self::Q5_1 => quant::q5_1_encode(x, out),
            Self::Iq4Nl => quant::iq4_nl_encode(x, out),
            Self::MinMax(bits) => quant::minmax_encode(x, bits, out),
        }
    }

    /// Decode one group of 32 values.
    pub fn decode(self, block: &[u8], out: &mut [f32]) {
        match self {
            Self::Q8_0 => quant::q8_0_decode(block, out),
            Self::Q4_0 => quant::q4_0_decode(block, out),
            Self::Q4_1 => quant::q4_1_decode(block, out),
            Self::Q5_0 => quant::q5_0_decode(block, out),
            Self::Q5_1 => quant::q5_1_decode(block, out),
            Self::Iq4Nl => quant::iq4_nl_decode(block, out),
            Self::MinMax(bits) => quant::minmax_decode(block, bits, out),
        }
    }
}

/// A layer's keys and values, every token quantized per row.
#[derive(Debug, Clone)]
pub struct RowQuantStore {
    shape: Heads,
    codec: RowCodec,
    rotate: bool,
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    /// Per kv head, `[tokens, head_dim]`: `keys` and `values` decoded.
    wide_keys: Vec<Vec<f32>>,
    wide_values: Vec<Vec<f32>>,
    tokens: usize,
}

impl RowQuantStore {
    /// Empty storage; with `rotate`, rows are Hadamard-rotated before quantizing (see [`hadamard`]).
    pub fn new(shape: Heads, codec: RowCodec, rotate: bool) -> Self {
        assert_eq!(shape.head_dim % QK, 0, "head_dim must be a multiple of {QK}");
        let (codes, wide) = (vec![Vec::new(); shape.kv_heads], vec![Vec::new(); shape.kv_heads]);
        Self {
            shape,
            codec,
            rotate,
            keys: codes.clone(),
            values: codes,
            wide_keys: wide.clone(),
            wide_values: wide,
            tokens: 0,
        }
    }

    /// Encode `t` rows of `[t, kv_heads, head_dim]` onto each head's codes, and append their
    /// decoding to the head's mirror.
    fn encode_rows(&self, rows: &[f32], t: usize, heads: &mut [Vec<u8>], wide: &mut [Vec<f32>]) {
        let first: Vec<usize> = heads.iter().map(Vec::len).collect();
        let d = self.shape.head_dim;
        let mut row = vec![0.0f32; d];
        for j in 0..t {
            for (g, head) in heads.iter_mut().enumerate() {
                row.copy_from_slice(&rows[(j * self.shape.kv_heads + g) * d..][..d]);
                if self.rotate {
                    hadamard::rotate_rows(&mut row, d);
                }
                row.chunks_exact(QK).for_each(|group| self.codec.encode(group, head));
            }
        }
        for ((head, wide), first) in heads.iter().zip(wide).zip(first) {
            self.decode_onto(&head[first..], wide);
        }
    }

    /// Decode whole blocks of `bytes` onto the end of `out`.
    fn decode_onto(&self, bytes: &[u8], out: &mut Vec<f32>) {
        let gb = self.codec.group_bytes();
        let start = out.len();
        out.resize(start + bytes.len() / gb * QK, 0.0);
        for (block, o) in bytes.chunks_exact(gb).zip(out[start..].chunks_exact_mut(QK)) {
            self.codec.decode(block, o);
        }
    }
}

impl LayerStore for RowQuantStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let (mut k, mut v) = (std::mem::take(&mut self.keys), std::mem::take(&mut self.values));
        let (mut wk, mut wv) = (std::mem::take(&mut self.wide_keys), std::mem::take(&mut self.wide_values));
        self.encode_rows(keys, t, &mut k, &mut wk);
        self.encode_rows(values, t, &mut v, &mut wv);
        (self.keys, self.values, self.wide_keys, self.wide_values) = (k, v, wk, wv);
        self.tokens += t;
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let Heads { heads, head_dim: d, .. } = self.shape;
        let rotated;
        let (q, q_stride) = if self.rotate {
            let mut r: Vec<f32> = (0..t).flat_map(|j| q[j * q_stride..][..heads * d].iter().copied()).collect();
            hadamard::rotate_rows(&mut r, d);
            rotated = r;
            (&rotated[..], heads * d)
        } else {
            (q, q_stride)
        };
        let views: Vec<KvView> =
            self.wide_keys.iter().zip(&self.wide_values).map(|(k, v)| KvView { keys: k, values: v }).collect();
        attention::attend(self.shape, Queries::new(q, q_stride, t), &views, out);
        if self.rotate {
            hadamard::rotate_rows(out, d);
        }
    }

    fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(Vec::len).sum()
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
    use crate::kv::prefill::FullStore;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
        (num / b.iter().map(|y| y * y).sum::<f32>()).sqrt()
    }

    #[test]
    fn bytes_are_the_packed_size_and_errors_order_by_bits() {
        let shape = Heads { heads: 6, kv_heads: 2, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(5);
        let n = 100;
        let k: Vec<f32> = (0..n * 128).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let v: Vec<f32> = (0..n * 128).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let q: Vec<f32> = (0..6 * 64).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut full = FullStore::new(shape);
        full.append(&k, &v, n);
        let mut want = vec![0.0; 6 * 64];
        full.attend(&q, 6 * 64, 1, &mut want);
        let mut errors = Vec::new();
        for (codec, rotate, bits_per_value) in [
            (RowCodec::Q8_0, false, 8.5),
            (RowCodec::Q4_0, false, 4.5),
            (RowCodec::Q4_0, true, 4.5),
            (RowCodec::MinMax(4), false, 5.0),
            (RowCodec::Q4_1, false, 5.0),
            (RowCodec::Q5_0, false, 5.5),
            (RowCodec::Q5_1, true, 6.0),
        ] {
            let mut store = RowQuantStore::new(shape, codec, rotate);
            store.append(&k, &v, n);
            // theoretical: 2 (K and V) · n · kv_heads · head_dim values at `bits_per_value`
            assert_eq!(store.bytes() as f64, 2.0 * (n * 128) as f64 * bits_per_value / 8.0);
            let mut got = vec![0.0; 6 * 64];
            // the query's token is the last one appended
            store.attend(&q, 6 * 64, 1, &mut got);
            errors.push(rel_err(&got, &want));
        }
        assert!(errors[0] < 0.01, "{errors:?}");
        assert!(errors[0] < errors[1] && errors[3] < errors[1], "{errors:?}");
        // a fifth bit halves the step: q5_0 below q4_0, q5_1 below q4_1
        assert!(errors[5] < errors[1] && errors[6] < errors[4], "{errors:?}");
    }

    #[test]
    fn the_mirror_is_the_codes_decoded_from_scratch() {
        let shape = Heads { heads: 4, kv_heads: 2, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(8);
        for (codec, rotate) in [(RowCodec::Q8_0, false), (RowCodec::Q4_0, true), (RowCodec::MinMax(4), false)] {
            let mut store = RowQuantStore::new(shape, codec, rotate);
            // a prefill in chunks, then decode steps
            for t in [7, 32, 1, 1, 1] {
                let rows: Vec<f32> = (0..t * 128).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                store.append(&rows, &rows, t);
                for (codes, wide) in
                    store.keys.iter().chain(&store.values).zip(store.wide_keys.iter().chain(&store.wide_values))
                {
                    let mut fresh = Vec::new();
                    store.decode_onto(codes, &mut fresh);
                    let bits_of = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits_of(wide), bits_of(&fresh), "{codec:?}, rotate {rotate}");
                }
            }
        }
    }
}
