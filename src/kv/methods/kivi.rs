//! `kivi-2bit`, `kivi-4bit`: KIVI's asymmetric cache, keys per channel and values per token.
//!
//! Paper: Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache", ICML 2024
//! (arXiv 2402.02750). Reference implementation: jy-yuan/KIVI (`models/llama_kivi.py`,
//! `quant/new_pack.py`). Settings, as the reference study ran it (Yuan et al. 2024, longctx_bench):
//! - keys quantized **per channel**, in groups of **32 tokens** (a group is one channel over 32
//!   consecutive tokens), values quantized **per token**, in groups of **32 channels**;
//!   asymmetric min–max at 2 or 4 bits, f16 scale and minimum per group;
//! - the most recent tokens stay in fp16 (**residual 128**): after prefill the keys of the last
//!   `n mod 128` tokens and the values of the last 128 tokens are kept in fp16; during decode the
//!   key residual grows to exactly 128 tokens and is then quantized as a whole (4 groups of 32
//!   per channel), while the value residual is a sliding window that quantizes its oldest token
//!   whenever it would exceed 128 — both as KIVI's `LlamaAttention_KIVI.forward` does;
//! - prefill attends in full precision; the cache is quantized when prefill ends
//!   ([`Acts::AfterPrefill`]); decode attends to the dequantized codes plus the residual.
//!
//! Bytes per 32 quantized values: `32·bits/8` of codes + 4 of scale and minimum, so 3 bits per
//! value at 2 bits and 5 at 4 bits, plus the fp16 residual (16 bits per value). The nominal ratio
//! is 16 / 3 = 5.33 and 16 / 5 = 3.2, which the measured ratio approaches as the prompt grows past
//! the residual.
//!
//! Attention reads a dequantized mirror of the cache (codes decoded, residual widened), updated
//! as tokens are quantized or appended rather than rebuilt every step: the mirror holds exactly
//! the values a dequantize-everything step would, so results are the same bits, and a decode step
//! costs one token's work instead of decoding the whole cache (KIVI's fused kernels read the
//! codes directly; the mirror is this simulator's stand-in for them). [`LayerStore::bytes`]
//! counts the packed codes and the fp16 residual only.

use half::f16;
use serde_json::json;

use crate::kv::attention::{self, Heads, KvView, Queries};
use crate::kv::prefill::FullStore;
use crate::kv::quant::{QK, minmax_bytes, minmax_decode, minmax_encode};
use crate::kv::{Compressed, LayerStore, Method, Phase, PrefillCompressor, StoreContext};

/// Tokens kept in fp16 (KIVI's `residual_length`).
pub const RESIDUAL: usize = 128;

/// KIVI at 2 or 4 bits.
#[derive(Debug, Clone, Copy)]
pub struct Kivi {
    /// Bits per code: 2 or 4.
    pub bits: u32,
}

impl Method for Kivi {
    fn name(&self) -> String {
        format!("kivi-{}bit", self.bits)
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "bits": self.bits, "group": QK, "keys": "per-channel", "values": "per-token", "residual": RESIDUAL,
                "scale_and_min": "f16", "prefill": "quantized-after" })
    }

    fn description(&self) -> String {
        format!(
            "{}-bit asymmetric quantization: keys per channel in groups of {QK} tokens, values per token in groups of {QK} channels, the last {RESIDUAL} tokens in full precision; f16 scale and minimum; prefilled in full precision and quantized after",
            self.bits
        )
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(16.0 / (self.bits as f64 + 32.0 / QK as f64))
    }

    fn phase(&self) -> Phase<'_> {
        Phase::AfterPrefill(self)
    }
}

impl PrefillCompressor for Kivi {
    fn compress(&self, _ctx: &StoreContext, prefill: &FullStore) -> Compressed {
        Compressed::Into(Box::new(KiviStore::from_prefill(prefill, self.bits)))
    }
}

/// One kv head: quantized keys (blocks of 32 tokens × head_dim channel groups), quantized value
/// rows, the fp16 residuals, and the dequantized mirror attention reads.
#[derive(Debug, Clone, Default)]
struct Head {
    key_codes: Vec<u8>,
    key_tokens: usize,
    key_residual: Vec<f16>,
    value_codes: Vec<u8>,
    value_tokens: usize,
    value_residual: Vec<f16>,
    /// `[tokens, head_dim]`: the decoded codes of the first `key_tokens` rows, then the residual.
    keys: Vec<f32>,
    /// `[tokens, head_dim]`: the decoded codes of the first `value_tokens` rows, then the residual.
    values: Vec<f32>,
}

/// `x` as the f16 residual stores it, widened back.
fn through_f16(x: &[f32]) -> impl Iterator<Item = f32> + '_ {
    x.iter().map(|&v| f16::from_f32(v).to_f32())
}

/// A layer's KIVI cache.
#[derive(Debug, Clone)]
pub struct KiviStore {
    shape: Heads,
    bits: u32,
    heads: Vec<Head>,
}

impl KiviStore {
    /// Quantize a full-precision prefill.
    pub fn from_prefill(prefill: &FullStore, bits: u32) -> Self {
        let shape = prefill.shape();
        let d = shape.head_dim;
        let mut store = Self { shape, bits, heads: vec![Head::default(); shape.kv_heads] };
        for g in 0..shape.kv_heads {
            let (k, v) = (prefill.keys(g), prefill.values(g));
            let n = k.len() / d;
            // keys: whole multiples of the residual are quantized, the rest stays fp16
            let quantized = n - n % RESIDUAL;
            for block in k[..quantized * d].chunks_exact(QK * d) {
                store.push_key_block(g, block);
            }
            store.push_key_residual(g, &k[quantized * d..]);
            // values: all but the last `RESIDUAL` tokens are quantized
            let quantized = n.saturating_sub(RESIDUAL);
            for row in v[..quantized * d].chunks_exact(d) {
                store.push_value_row(g, row);
            }
            store.push_value_residual(g, &v[quantized * d..]);
        }
        store
    }

    /// Quantize 32 tokens' keys (`[32, d]`), channel by channel, and decode them into the mirror
    /// (over their residual rows, when the residual is being flushed).
    fn push_key_block(&mut self, g: usize, block: &[f32]) {
        let d = self.shape.head_dim;
        let group = minmax_bytes(QK, self.bits);
        let mut channel = [0.0f32; QK];
        let head = &mut self.heads[g];
        let first = head.key_codes.len();
        for c in 0..d {
            channel.iter_mut().enumerate().for_each(|(i, x)| *x = block[i * d + c]);
            minmax_encode(&channel, self.bits, &mut head.key_codes);
        }
        let rows = head.key_tokens * d..(head.key_tokens + QK) * d;
        if head.keys.len() < rows.end {
            head.keys.resize(rows.end, 0.0);
        }
        let mirror = &mut head.keys[rows];
        for (c, codes) in head.key_codes[first..].chunks_exact(group).enumerate() {
            minmax_decode(codes, self.bits, &mut channel);
            channel.iter().enumerate().for_each(|(i, &x)| mirror[i * d + c] = x);
        }
        head.key_tokens += QK;
    }

    /// Quantize one token's values, and decode them into the mirror (over the row's residual
    /// copy, when it leaves the residual).
    fn push_value_row(&mut self, g: usize, row: &[f32]) {
        let d = self.shape.head_dim;
        let group = minmax_bytes(QK, self.bits);
        let head = &mut self.heads[g];
        let first = head.value_codes.len();
        row.chunks_exact(QK).for_each(|group| minmax_encode(group, self.bits, &mut head.value_codes));
        let rows = head.value_tokens * d..(head.value_tokens + 1) * d;
        if head.values.len() < rows.end {
            head.values.resize(rows.end, 0.0);
        }
        for (codes, out) in head.value_codes[first..].chunks_exact(group).zip(head.values[rows].chunks_exact_mut(QK)) {
            minmax_decode(codes, self.bits, out);
        }
        head.value_tokens += 1;
    }

    fn push_key_residual(&mut self, g: usize, keys: &[f32]) {
        let head = &mut self.heads[g];
        head.key_residual.extend(keys.iter().map(|&x| f16::from_f32(x)));
        head.keys.extend(through_f16(keys));
    }

    fn push_value_residual(&mut self, g: usize, values: &[f32]) {
        let head = &mut self.heads[g];
        head.value_residual.extend(values.iter().map(|&x| f16::from_f32(x)));
        head.values.extend(through_f16(values));
    }

    /// Append one token to head `g`, flushing residuals as KIVI does.
    fn push_token(&mut self, g: usize, key: &[f32], value: &[f32]) {
        let d = self.shape.head_dim;
        self.push_key_residual(g, key);
        let head = &mut self.heads[g];
        if head.key_residual.len() == RESIDUAL * d {
            let block: Vec<f32> = std::mem::take(&mut head.key_residual).iter().map(|x| x.to_f32()).collect();
            for b in block.chunks_exact(QK * d) {
                self.push_key_block(g, b);
            }
        }
        self.push_value_residual(g, value);
        let head = &mut self.heads[g];
        if head.value_residual.len() > RESIDUAL * d {
            let oldest: Vec<f32> = head.value_residual.drain(..d).map(|x| x.to_f32()).collect();
            self.push_value_row(g, &oldest);
        }
    }

    /// Tokens in head `g`'s key residual (exposed for the flush test).
    pub fn key_residual_tokens(&self, g: usize) -> usize {
        self.heads[g].key_residual.len() / self.shape.head_dim
    }

    /// Tokens in head `g`'s value residual.
    pub fn value_residual_tokens(&self, g: usize) -> usize {
        self.heads[g].value_residual.len() / self.shape.head_dim
    }

    /// Every key and value dequantized from scratch: what the mirror must equal (tests).
    #[cfg(test)]
    fn widen(&self, head: &Head, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        use half::slice::HalfFloatSliceExt;
        let d = self.shape.head_dim;
        let group = minmax_bytes(QK, self.bits);
        let n = head.key_tokens + head.key_residual.len() / d;
        keys.resize(n * d, 0.0);
        values.resize(n * d, 0.0);
        let mut channel = [0.0f32; QK];
        for (b, block) in head.key_codes.chunks_exact(group * d).enumerate() {
            for (c, codes) in block.chunks_exact(group).enumerate() {
                minmax_decode(codes, self.bits, &mut channel);
                for (i, &x) in channel.iter().enumerate() {
                    keys[(b * QK + i) * d + c] = x;
                }
            }
        }
        head.key_residual.convert_to_f32_slice(&mut keys[head.key_tokens * d..]);
        for (codes, out) in head.value_codes.chunks_exact(group).zip(values.chunks_exact_mut(QK)) {
            minmax_decode(codes, self.bits, out);
        }
        head.value_residual.convert_to_f32_slice(&mut values[head.value_tokens * d..]);
    }
}

impl LayerStore for KiviStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let d = self.shape.head_dim;
        let width = self.shape.kv_heads * d;
        for j in 0..t {
            for g in 0..self.shape.kv_heads {
                let at = j * width + g * d;
                self.push_token(g, &keys[at..at + d], &values[at..at + d]);
            }
        }
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let views: Vec<KvView> = self.heads.iter().map(|h| KvView { keys: &h.keys, values: &h.values }).collect();
        attention::attend(self.shape, Queries::new(q, q_stride, t), &views, out);
    }

    fn bytes(&self) -> usize {
        let f16_bytes = size_of::<f16>();
        self.heads
            .iter()
            .map(|h| {
                h.key_codes.len() + h.value_codes.len() + (h.key_residual.len() + h.value_residual.len()) * f16_bytes
            })
            .sum()
    }

    fn tokens(&self) -> usize {
        self.heads.first().map_or(0, |h| h.key_tokens + h.key_residual.len() / self.shape.head_dim)
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn prefilled(n: usize, shape: Heads, rng: &mut StdRng) -> FullStore {
        let w = shape.kv_heads * shape.head_dim;
        let k: Vec<f32> = (0..n * w).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let v: Vec<f32> = (0..n * w).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut full = FullStore::new(shape);
        full.append(&k, &v, n);
        full
    }

    #[test]
    fn residual_flushes_at_exactly_128_and_bytes_match_the_packed_size() {
        let shape = Heads { heads: 3, kv_heads: 1, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(9);
        for bits in [2, 4] {
            let mut store = KiviStore::from_prefill(&prefilled(300, shape, &mut rng), bits);
            // 300 = 2·128 + 44: 256 keys quantized, 44 in fp16; values: 172 quantized, 128 fp16
            assert_eq!((store.key_residual_tokens(0), store.value_residual_tokens(0)), (44, 128));
            let row = [0.25f32; 64];
            for step in 1..=84 {
                store.append(&row, &row, 1);
                let want = if step < 84 { 44 + step } else { 0 };
                assert_eq!(store.key_residual_tokens(0), want, "after {step} decode tokens");
                assert_eq!(store.value_residual_tokens(0), 128);
            }
            assert_eq!(store.tokens(), 384);
            // theoretical: every quantized value costs bits + 32/32 (f16 scale and min per 32),
            // residual values 16 bits
            let quantized_values = (384 + (384 - 128)) * 64;
            let bits_total = quantized_values * (bits as usize + 1) + 128 * 64 * 16;
            assert_eq!(store.bytes(), bits_total / 8);
        }
    }

    #[test]
    fn the_mirror_is_the_cache_dequantized_from_scratch_at_every_step() {
        let shape = Heads { heads: 2, kv_heads: 2, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(11);
        for (bits, n) in [(2, 300), (4, 100), (2, 20)] {
            let mut store = KiviStore::from_prefill(&prefilled(n, shape, &mut rng), bits);
            // 300 decode steps cross key flushes (every 128) and value flushes (every step)
            for step in 0..=300 {
                for head in &store.heads {
                    let (mut k, mut v) = (Vec::new(), Vec::new());
                    store.widen(head, &mut k, &mut v);
                    let bits_of = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits_of(&head.keys), bits_of(&k), "keys, {bits} bits, prefill {n}, step {step}");
                    assert_eq!(bits_of(&head.values), bits_of(&v), "values, {bits} bits, prefill {n}, step {step}");
                }
                let row: Vec<f32> = (0..2 * 64).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                store.append(&row, &row, 1);
            }
        }
    }

    #[test]
    fn decode_attention_is_close_at_4_bits_and_closer_than_at_2() {
        let shape = Heads { heads: 3, kv_heads: 1, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(4);
        let full = prefilled(500, shape, &mut rng);
        let q: Vec<f32> = (0..3 * 64).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let row: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut reference = full.clone();
        reference.append(&row, &row, 1);
        let mut want = vec![0.0; 3 * 64];
        reference.attend(&q, 3 * 64, 1, &mut want);
        let mut errors = vec![];
        for bits in [4, 2] {
            let mut store = KiviStore::from_prefill(&full, bits);
            store.append(&row, &row, 1);
            let mut got = vec![0.0; 3 * 64];
            store.attend(&q, 3 * 64, 1, &mut got);
            let num: f32 = got.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
            errors.push((num / want.iter().map(|b| b * b).sum::<f32>()).sqrt());
        }
        // random values average out, so relative errors of the (small) output are large; the order is the point
        assert!(errors[0] < 0.1 && errors[0] < errors[1], "{errors:?}");
    }
}
