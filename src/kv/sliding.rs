//! The cache of a sliding-window layer (Gemma 3's local layers): the architecture's, not a
//! method's. It holds the last `window − 1` tokens between calls, so that the next token's query,
//! which sees itself and the `window − 1` before it, finds exactly those; a prefill chunk of `t`
//! tokens is appended whole, each of its queries attends over its own window
//! ([`attention::attend_window`]), and the store then drops what no later query can see.
//!
//! Keys and values stay in fp32 (the precision the runtime computes in), so what it holds is at
//! most `(window − 1 + chunk) · kv_heads · head_dim · 2 · 4` bytes during a prefill chunk and
//! `(window − 1)` tokens' worth after it, whatever the context — unless the method is a
//! quantizer that codes rows on their own ([`RowCode`]: llama.cpp's types, FP8, TurboQuant, and
//! the quantizer of a composition): then the window is held in that code, as llama.cpp and vLLM
//! store a sliding-window layer in the cache type of every other ([`SlidingStore::coded`],
//! [`LayerStore::recode`]). Attention reads the decoded rows; the bytes are the codes.

use crate::codec;
use crate::kv::LayerStore;
use crate::kv::attention::{self, Heads, KvView, Queries};
use crate::kv::prefill::append_head_major;
use crate::kv::rowcode::{Coder, Part, RowCode};

/// Keys and values of the last tokens, per kv head (`[tokens, head_dim]` each).
#[derive(Debug, Clone)]
pub struct SlidingStore {
    shape: Heads,
    window: usize,
    /// fp32 rows, or the decoding of the coded ones.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// The rows' codes, per kv head, when a quantizer codes the window.
    coded: Option<Coded>,
    /// Tokens the last [`LayerStore::attend`] read (per kv head, before the trim).
    last_read: usize,
}

/// A window held in a row code.
#[derive(Debug, Clone)]
struct Coded {
    code: RowCode,
    /// Set from the first rows coded.
    coder: Option<Coder>,
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
}

impl SlidingStore {
    /// An empty store whose queries see `window` tokens, their own included.
    ///
    /// # Panics
    /// If `window` is 0.
    pub fn new(shape: Heads, window: usize) -> Self {
        assert!(window >= 1, "a sliding window holds at least the query's own token");
        Self {
            shape,
            window,
            keys: vec![Vec::new(); shape.kv_heads],
            values: vec![Vec::new(); shape.kv_heads],
            coded: None,
            last_read: 0,
        }
    }

    /// This store holding its rows in `code`, if one (its scales set from the first rows).
    pub fn coded(mut self, code: Option<RowCode>) -> Self {
        let empty = vec![Vec::new(); self.shape.kv_heads];
        self.coded = code.map(|code| Coded { code, coder: None, keys: empty.clone(), values: empty });
        self
    }

    /// The heads' shape.
    pub fn shape(&self) -> Heads {
        self.shape
    }

    /// The window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Append a full-precision window (the shared prefill's: no code) to `out`, bit-exact, for the
    /// prefill cache on disk; `None` for a coded window, which no shared prefill holds.
    pub fn encode(&self, out: &mut Vec<u8>) -> Option<()> {
        if self.coded.is_some() {
            return None;
        }
        codec::put_u64(out, self.window as u64);
        codec::put_u64(out, self.last_read as u64);
        for (k, v) in self.keys.iter().zip(&self.values) {
            codec::put_f32s(out, k);
            codec::put_f32s(out, v);
        }
        Some(())
    }

    /// The window [`Self::encode`] wrote for `shape`; `None` if the bytes do not hold one (every
    /// head the same whole number of rows, fewer than the window).
    pub fn decode(shape: Heads, input: &mut &[u8]) -> Option<Self> {
        let (window, last_read) = (codec::take_usize(input)?, codec::take_usize(input)?);
        if window == 0 || shape.kv_heads == 0 || shape.head_dim == 0 {
            return None;
        }
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for _ in 0..shape.kv_heads {
            keys.push(codec::take_f32s(input)?);
            values.push(codec::take_f32s(input)?);
        }
        let rows = keys[0].len() / shape.head_dim;
        let consistent = rows < window && keys.iter().chain(&values).all(|h| h.len() == rows * shape.head_dim);
        consistent.then_some(Self { shape, window, keys, values, coded: None, last_read })
    }

    /// Bytes of one token's key and value rows of one kv head as held.
    fn token_bytes(&self) -> usize {
        match self.coded.as_ref().and_then(|c| c.coder.as_ref()) {
            Some(coder) => coder.token_bytes(self.shape.head_dim),
            None => self.shape.head_dim * 2 * size_of::<f32>(),
        }
    }
}

impl LayerStore for SlidingStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let Some(coded) = &mut self.coded else {
            append_head_major(&mut self.keys, keys, t, self.shape.head_dim);
            append_head_major(&mut self.values, values, t, self.shape.head_dim);
            return;
        };
        let (d, heads) = (self.shape.head_dim, self.shape.kv_heads);
        let coder = coded.coder.get_or_insert_with(|| Coder::calibrated(coded.code, d, keys, values));
        for j in 0..t {
            for g in 0..heads {
                let at = (j * heads + g) * d;
                coder.encode(Part::Keys, &keys[at..][..d], &mut coded.keys[g], &mut self.keys[g]);
                coder.encode(Part::Values, &values[at..][..d], &mut coded.values[g], &mut self.values[g]);
            }
        }
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let views: Vec<KvView> =
            self.keys.iter().zip(&self.values).map(|(k, v)| KvView { keys: k, values: v }).collect();
        attention::attend_window(self.shape, Queries::new(q, q_stride, t), &views, out, None, self.window);
        let d = self.shape.head_dim;
        let n = self.tokens();
        // the rows read: from the first query's window on, to the last token
        self.last_read = n - (n - t + 1).saturating_sub(self.window);
        let rows = n.saturating_sub(self.window - 1);
        for head in self.keys.iter_mut().chain(&mut self.values) {
            head.drain(..rows * d);
        }
        if let Some(coded) = &mut self.coded {
            let coder = coded.coder.as_ref().expect("rows were coded before attention");
            let (k, v) = (coder.row_bytes(Part::Keys, d), coder.row_bytes(Part::Values, d));
            coded.keys.iter_mut().for_each(|h| drop(h.drain(..rows * k)));
            coded.values.iter_mut().for_each(|h| drop(h.drain(..rows * v)));
        }
    }

    fn bytes(&self) -> usize {
        match &self.coded {
            Some(coded) => {
                let codes: usize = coded.keys.iter().chain(&coded.values).map(Vec::len).sum();
                codes + coded.coder.as_ref().map_or(0, Coder::layer_bytes)
            }
            None => self.keys.iter().chain(&self.values).map(|h| h.len() * size_of::<f32>()).sum(),
        }
    }

    fn bytes_read(&self) -> usize {
        self.last_read * self.shape.kv_heads * self.token_bytes()
    }

    fn tokens(&self) -> usize {
        self.keys[0].len() / self.shape.head_dim
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }

    fn window(&self) -> Option<usize> {
        Some(self.window)
    }

    fn as_sliding(&self) -> Option<&SlidingStore> {
        Some(self)
    }

    /// Code the rows held now in `code` (its scales set from them), and every row after them: a
    /// composition's quantizer, at the end of a full-precision prefill. A coded store stays as it is.
    fn recode(&mut self, code: RowCode) -> bool {
        if self.coded.is_some() {
            return true;
        }
        let (d, heads) = (self.shape.head_dim, self.shape.kv_heads);
        let mut coded = Coded { code, coder: None, keys: vec![Vec::new(); heads], values: vec![Vec::new(); heads] };
        if self.tokens() > 0 {
            let coder = Coder::calibrated(code, d, &self.keys.concat(), &self.values.concat());
            for g in 0..heads {
                let (mut keys, mut values) =
                    (Vec::with_capacity(self.keys[g].len()), Vec::with_capacity(self.values[g].len()));
                for (k, v) in self.keys[g].chunks_exact(d).zip(self.values[g].chunks_exact(d)) {
                    coder.encode(Part::Keys, k, &mut coded.keys[g], &mut keys);
                    coder.encode(Part::Values, v, &mut coded.values[g], &mut values);
                }
                (self.keys[g], self.values[g]) = (keys, values);
            }
            coded.coder = Some(coder);
        }
        self.coded = Some(coded);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::attention::naive_window;

    #[test]
    fn chunks_and_steps_see_the_window_a_whole_history_would_give() {
        let shape = Heads { heads: 4, kv_heads: 1, head_dim: 16 };
        let (w, width, qw) = (24, 16, 64);
        let total = 100;
        let noise = |seed: usize, len: usize| -> Vec<f32> {
            (0..len).map(|i| (((i + seed) * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect()
        };
        let (keys, values, queries) = (noise(1, total * width), noise(2, total * width), noise(3, total * qw));
        let mut store = SlidingStore::new(shape, w);
        // chunks of 30, 30 and 25 tokens, then 15 single steps
        let mut at = 0;
        for t in [30, 30, 25].into_iter().chain([1; 15]) {
            store.append(&keys[at * width..][..t * width], &values[at * width..][..t * width], t);
            let mut out = vec![0.0f32; t * qw];
            store.attend(&queries[at * qw..][..t * qw], qw, t, &mut out);
            // the reference: the whole history up to the chunk's end, every row windowed
            let end = at + t;
            let kv = [KvView { keys: &keys[..end * width], values: &values[..end * width] }];
            let want = naive_window(shape, &queries[at * qw..][..t * qw], t, &kv, w);
            for (g, r) in out.iter().zip(&want) {
                assert!((g - r).abs() < 1e-5, "chunk at {at}: {g} vs {r}");
            }
            assert_eq!(store.tokens(), (end).min(w - 1), "what stays after the chunk at {at}");
            at = end;
        }
        assert_eq!(store.bytes(), (w - 1) * width * 2 * 4);
        // a decode step reads its whole window
        assert_eq!(store.bytes_read(), w * width * 2 * 4);
    }

    #[test]
    fn a_coded_window_holds_codes_and_reads_their_decoding() {
        use crate::kv::rowquant::RowCodec;
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 64 };
        let (w, width, qw) = (16, 64, 128);
        let noise = |seed: usize, len: usize| -> Vec<f32> {
            (0..len).map(|i| (((i + seed) * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect()
        };
        let total = 40;
        let (keys, values, queries) = (noise(1, total * width), noise(2, total * width), noise(3, total * qw));
        let code = RowCode::Blocks { codec: RowCodec::Q8_0, rotate: false };
        let mut coded = SlidingStore::new(shape, w).coded(Some(code));
        // the same rows, coded by hand and held in fp32: what the coded window must read
        let coder = Coder::calibrated(code, 64, &keys[..30 * width], &values[..30 * width]);
        let (mut wide_k, mut wide_v, mut sink) = (Vec::new(), Vec::new(), Vec::new());
        for j in 0..total {
            coder.encode(Part::Keys, &keys[j * width..][..width], &mut sink, &mut wide_k);
            coder.encode(Part::Values, &values[j * width..][..width], &mut sink, &mut wide_v);
        }
        let mut plain = SlidingStore::new(shape, w);
        let mut at = 0;
        for t in [30].into_iter().chain([1; 10]) {
            let (k, v, q) =
                (&keys[at * width..][..t * width], &values[at * width..][..t * width], &queries[at * qw..][..t * qw]);
            coded.append(k, v, t);
            plain.append(&wide_k[at * width..][..t * width], &wide_v[at * width..][..t * width], t);
            let (mut a, mut b) = (vec![0.0f32; t * qw], vec![0.0f32; t * qw]);
            coded.attend(q, qw, t, &mut a);
            plain.attend(q, qw, t, &mut b);
            assert_eq!(a, b, "chunk at {at}");
            at += t;
            // q8_0: 34 bytes a block of 32, two blocks a row, a key row and a value row a token
            assert_eq!(coded.bytes(), coded.tokens() * 2 * 2 * 34, "after the chunk at {at}");
            assert_eq!(coded.tokens(), plain.tokens());
        }
        assert_eq!(coded.bytes_read(), w * 2 * 2 * 34);
        // recoding a full-precision window (a composition, after prefill) codes what it holds
        let mut later = SlidingStore::new(shape, w);
        later.append(&keys[..30 * width], &values[..30 * width], 30);
        let mut out = vec![0.0f32; 30 * qw];
        later.attend(&queries[..30 * qw], qw, 30, &mut out);
        let fp32 = later.bytes();
        assert!(later.recode(code));
        assert_eq!(later.tokens(), w - 1);
        assert_eq!(later.bytes(), (w - 1) * 2 * 2 * 34);
        assert!(later.bytes() * 3 < fp32);
    }
}
