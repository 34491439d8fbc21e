//! The full-precision prefill store: the infrastructure every method that acts after prefill
//! starts from (not a method itself; `full` is the method that keeps it as it is).
//!
//! [`FullStore`] holds every key and value of every token in fp32, the precision the runtime
//! computes in, and observes, per kv head, the attention mass each token received from every
//! query so far (H2O's accumulated scores), the last [`OBSERVATION_WINDOW`] queries (SnapKV's
//! observation window) and, made for a model layer, the mean and covariance of the queries before
//! RoPE ([`QueryStats`], Expected Attention's model of future queries: `heads · d²` multiply-adds
//! a prompt token, about 1% of a SmolLM2 layer's prefill work and 5% of a Gemma 3 global layer's). Those observations are bookkeeping for the methods,
//! not part of the cache, and are not counted in [`LayerStore::bytes`].

use crate::codec;
use crate::kv::attention::{self, Heads, KvView, Queries};
use crate::kv::rope::{self, Style};
use crate::kv::{LayerStore, StoreContext};

/// Queries remembered at the end of the prompt (SnapKV's window of 32, its paper's default).
pub const OBSERVATION_WINDOW: usize = 32;

/// The name a shared prefill's snapshot carries: that of the method that keeps it as it is.
pub const PREFILL_METHOD: &str = "full";

/// Keys and values per kv head, `[tokens, head_dim]` each, plus the observations of the module doc.
#[derive(Debug, Clone)]
pub struct FullStore {
    shape: Heads,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Per kv head and token: attention probability received, summed over every query row and
    /// every query head of the group.
    mass: Vec<Vec<f32>>,
    /// The last queries seen, oldest first, `heads · head_dim` each.
    recent_queries: Vec<f32>,
    /// Most query rows kept in `recent_queries`.
    query_limit: usize,
    /// The prompt's queries before RoPE, summarized (Expected Attention), where the store was
    /// made for a model layer ([`Self::for_layer`]).
    query_stats: Option<QueryStats>,
}

/// Queries at positions below this are left out of [`QueryStats`] (kvpress's `n_sink`: the first
/// tokens' queries are outliers).
pub const QUERY_STATS_SKIP: usize = 4;

/// The mean and covariance of a layer's queries before RoPE, per query head, accumulated as
/// prefill runs: what Expected Attention models future queries by (`methods/expected_attention.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryStats {
    /// The RoPE the queries arrive rotated by, undone before they are counted.
    rope_base: f32,
    rope_style: Style,
    /// Queries counted.
    count: u64,
    /// Set once the prompt is prefilled: decode queries are not the prompt's.
    done: bool,
    /// Per query head: `Σ q` `[d]` and `Σ q qᵀ` `[d, d]`, in f64.
    sum: Vec<f64>,
    outer: Vec<f64>,
}

impl QueryStats {
    fn new(shape: Heads, rope_base: f32, rope_style: Style) -> Self {
        let (h, d) = (shape.heads, shape.head_dim);
        Self { rope_base, rope_style, count: 0, done: false, sum: vec![0.0; h * d], outer: vec![0.0; h * d * d] }
    }

    /// Count query rows `q` (`t` rows of stride `q_stride`), row `j` at position `first + j`.
    fn observe(&mut self, shape: Heads, q: &[f32], q_stride: usize, t: usize, first: usize) {
        if self.done {
            return;
        }
        let (h, d) = (shape.heads, shape.head_dim);
        let mut row = vec![0.0f32; h * d];
        // one chunk summed in f32 (8 lanes wide), then added to the f64 totals
        let mut outer = vec![0.0f32; h * d * d];
        let mut counted = false;
        for j in 0..t {
            let position = first + j;
            if position < QUERY_STATS_SKIP {
                continue;
            }
            row.copy_from_slice(&q[j * q_stride..][..h * d]);
            rope::apply_style(&mut row, d, -(position as i64), self.rope_base, self.rope_style);
            for (head, o) in row.chunks_exact(d).zip(outer.chunks_exact_mut(d * d)) {
                for (a, o) in head.iter().zip(o.chunks_exact_mut(d)) {
                    o.iter_mut().zip(head).for_each(|(o, b)| *o += a * b);
                }
            }
            self.sum.iter_mut().zip(&row).for_each(|(s, &x)| *s += x as f64);
            self.count += 1;
            counted = true;
        }
        if counted {
            self.outer.iter_mut().zip(&outer).for_each(|(s, &x)| *s += x as f64);
        }
    }

    /// Queries counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The RoPE base and style the keys are rotated by.
    pub fn rope(&self) -> (f32, Style) {
        (self.rope_base, self.rope_style)
    }

    /// Query head `h`'s mean `[d]`, before RoPE.
    pub fn mean(&self, h: usize, d: usize) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.sum[h * d..][..d].iter().map(|s| s / n).collect()
    }

    /// Query head `h`'s mean `[d]` and (population) covariance `[d, d]`, before RoPE.
    pub fn moments(&self, h: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
        let n = self.count.max(1) as f64;
        let mean = self.mean(h, d);
        let cov = (0..d * d).map(|i| self.outer[h * d * d + i] / n - mean[i / d] * mean[i % d]).collect();
        (mean, cov)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let style = match self.rope_style {
            Style::Adjacent => 0,
            Style::Halves => 1,
        };
        codec::put_f32s(out, &[self.rope_base]);
        codec::put_u64(out, style);
        codec::put_u64(out, self.count);
        codec::put_f64s(out, &self.sum);
        codec::put_f64s(out, &self.outer);
    }

    /// The statistics [`Self::encode`] wrote for `shape`; `None` if the bytes do not hold them
    /// (the sizes are read from the bytes and must be `shape`'s, so no size is trusted).
    fn decode(shape: Heads, input: &mut &[u8]) -> Option<Self> {
        let [rope_base] = codec::take_f32s(input)?[..] else { return None };
        let rope_style = match codec::take_u64(input)? {
            0 => Style::Adjacent,
            1 => Style::Halves,
            _ => return None,
        };
        let count = codec::take_u64(input)?;
        let (sum, outer) = (codec::take_f64s(input)?, codec::take_f64s(input)?);
        let hd = shape.heads.checked_mul(shape.head_dim)?;
        let fits = sum.len() == hd && Some(outer.len()) == hd.checked_mul(shape.head_dim);
        fits.then_some(Self { rope_base, rope_style, count, done: false, sum, outer })
    }
}

impl FullStore {
    /// Empty storage.
    pub fn new(shape: Heads) -> Self {
        let per_head = vec![Vec::new(); shape.kv_heads];
        Self {
            shape,
            keys: per_head.clone(),
            values: per_head.clone(),
            mass: per_head,
            recent_queries: Vec::new(),
            query_limit: OBSERVATION_WINDOW,
            query_stats: None,
        }
    }

    /// Empty storage for a model layer: it also accumulates the statistics of the queries before
    /// RoPE ([`QueryStats`]) that Expected Attention scores by.
    pub fn for_layer(ctx: &StoreContext) -> Self {
        Self { query_stats: Some(QueryStats::new(ctx.shape, ctx.rope_base, ctx.rope_style)), ..Self::new(ctx.shape) }
    }

    /// The prompt is prefilled: stop counting queries (decode's, and a query-agnostic run's
    /// question, are not the prompt's; counting them would only cost time).
    pub fn end_prefill(&mut self) {
        if let Some(stats) = &mut self.query_stats {
            stats.done = true;
        }
    }

    /// The statistics of the queries before RoPE, for a store made by [`Self::for_layer`].
    pub fn query_stats(&self) -> Option<&QueryStats> {
        self.query_stats.as_ref()
    }

    /// Empty storage that keeps every query (for recording attention probes; see [`Recording`]).
    pub fn recording(shape: Heads) -> Self {
        Self { query_limit: usize::MAX, ..Self::new(shape) }
    }

    /// A recording made elsewhere (an attention probe): token-major key and value rows, and
    /// every query row, `heads · head_dim` each, oldest first. No attention has run on it, so its
    /// observed mass is zero: it is replayed, not read as a prefill.
    pub fn recorded(shape: Heads, keys: &[f32], values: &[f32], queries: Vec<f32>) -> Self {
        let mut store = Self::recording(shape);
        store.append(keys, values, keys.len() / (shape.kv_heads * shape.head_dim));
        store.recent_queries = queries;
        store
    }

    /// Attention shape.
    pub fn shape(&self) -> Heads {
        self.shape
    }

    /// Key/value views for the attention kernel.
    pub fn views(&self) -> Vec<KvView<'_>> {
        self.keys.iter().zip(&self.values).map(|(k, v)| KvView { keys: k, values: v }).collect()
    }

    /// Token-major key and value rows (`[tokens, kv_heads · head_dim]` each, as `append` takes
    /// them) of tokens `range`.
    pub fn rows(&self, range: std::ops::Range<usize>) -> (Vec<f32>, Vec<f32>) {
        let d = self.shape.head_dim;
        let width = self.shape.kv_heads * d;
        let (mut k, mut v) = (Vec::with_capacity(range.len() * width), Vec::with_capacity(range.len() * width));
        for i in range {
            for g in 0..self.shape.kv_heads {
                k.extend_from_slice(&self.keys[g][i * d..][..d]);
                v.extend_from_slice(&self.values[g][i * d..][..d]);
            }
        }
        (k, v)
    }

    /// Keys of kv head `g`, `[tokens, head_dim]`.
    pub fn keys(&self, g: usize) -> &[f32] {
        &self.keys[g]
    }

    /// Values of kv head `g`, `[tokens, head_dim]`.
    pub fn values(&self, g: usize) -> &[f32] {
        &self.values[g]
    }

    /// Accumulated attention mass per token for kv head `g`.
    pub fn mass(&self, g: usize) -> &[f32] {
        &self.mass[g]
    }

    /// The last (at most [`OBSERVATION_WINDOW`], or all when recording) query rows, oldest
    /// first, `heads · head_dim` each; they belong to the last tokens appended.
    pub fn recent_queries(&self) -> &[f32] {
        &self.recent_queries
    }

    /// Append the whole state (keys, values and observations) to `out`, bit-exact.
    pub fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, self.query_limit as u64);
        for g in 0..self.shape.kv_heads {
            codec::put_f32s(out, &self.keys[g]);
            codec::put_f32s(out, &self.values[g]);
            codec::put_f32s(out, &self.mass[g]);
        }
        codec::put_f32s(out, &self.recent_queries);
        match &self.query_stats {
            Some(stats) => {
                codec::put_u64(out, 1);
                stats.encode(out);
            }
            None => codec::put_u64(out, 0),
        }
    }

    /// The state [`Self::encode`] wrote for `shape`; `None` if the bytes do not hold one.
    pub fn decode(shape: Heads, input: &mut &[u8]) -> Option<Self> {
        if shape.kv_heads == 0 || shape.head_dim == 0 {
            return None;
        }
        let query_limit = codec::take_usize(input)?;
        let (mut keys, mut values, mut mass) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..shape.kv_heads {
            keys.push(codec::take_f32s(input)?);
            values.push(codec::take_f32s(input)?);
            mass.push(codec::take_f32s(input)?);
        }
        let recent_queries = codec::take_f32s(input)?;
        let query_stats = match codec::take_u64(input)? {
            0 => None,
            1 => Some(QueryStats::decode(shape, input)?),
            _ => return None,
        };
        let tokens = keys[0].len() / shape.head_dim.max(1);
        let consistent = keys.iter().chain(&values).all(|h| h.len() == tokens * shape.head_dim)
            && mass.iter().all(|m| m.len() == tokens)
            && recent_queries.len() % (shape.heads * shape.head_dim).max(1) == 0;
        consistent.then_some(Self { shape, keys, values, mass, recent_queries, query_limit, query_stats })
    }
}

impl LayerStore for FullStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        append_head_major(&mut self.keys, keys, t, self.shape.head_dim);
        append_head_major(&mut self.values, values, t, self.shape.head_dim);
        let n = self.tokens();
        self.mass.iter_mut().for_each(|m| m.resize(n, 0.0));
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let views: Vec<KvView> =
            self.keys.iter().zip(&self.values).map(|(k, v)| KvView { keys: k, values: v }).collect();
        attention::attend_observed(self.shape, Queries::new(q, q_stride, t), &views, out, Some(&mut self.mass));
        let width = self.shape.heads * self.shape.head_dim;
        for j in t.saturating_sub(self.query_limit)..t {
            self.recent_queries.extend_from_slice(&q[j * q_stride..][..width]);
        }
        let excess = self.recent_queries.len().saturating_sub(self.query_limit.saturating_mul(width));
        self.recent_queries.drain(..excess);
        let first = self.tokens() - t;
        if let Some(stats) = &mut self.query_stats {
            stats.observe(self.shape, q, q_stride, t, first);
        }
    }

    fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|h| h.len() * size_of::<f32>()).sum()
    }

    fn tokens(&self) -> usize {
        self.keys[0].len() / self.shape.head_dim
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }

    fn as_prefill(&self) -> Option<&FullStore> {
        Some(self)
    }

    fn as_prefill_mut(&mut self) -> Option<&mut FullStore> {
        Some(self)
    }
}

/// Scatter `t` token-major rows of `heads.len() · d` values onto per-head vectors.
pub fn append_head_major(heads: &mut [Vec<f32>], rows: &[f32], t: usize, d: usize) {
    let width = heads.len() * d;
    for (g, head) in heads.iter_mut().enumerate() {
        head.reserve(t * d);
        for row in rows.chunks_exact(width).take(t) {
            head.extend_from_slice(&row[g * d..][..d]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_splits_rows_by_head_and_counts_bytes() {
        let shape = Heads { heads: 4, kv_heads: 2, head_dim: 2 };
        let mut store = FullStore::new(shape);
        // two tokens, rows [h0d0 h0d1 h1d0 h1d1]
        let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        store.append(&k, &k, 2);
        assert_eq!(store.keys[0], [1.0, 2.0, 5.0, 6.0]);
        assert_eq!(store.keys[1], [3.0, 4.0, 7.0, 8.0]);
        assert_eq!(store.tokens(), 2);
        assert_eq!(store.bytes(), 2 * 8 * 4);
    }

    #[test]
    fn encodes_bit_exactly_and_refuses_inconsistent_bytes() {
        let shape = Heads { heads: 4, kv_heads: 2, head_dim: 2 };
        let mut store = FullStore::new(shape);
        let rows: Vec<f32> = (0..24).map(|i| i as f32 * 0.37 - 3.0).collect();
        store.append(&rows[..12], &rows[12..], 3);
        let q: Vec<f32> = (0..24).map(|i| (i as f32).sin()).collect();
        let mut out = vec![0.0; 24];
        store.attend(&q, 8, 3, &mut out);
        let mut bytes = Vec::new();
        store.encode(&mut bytes);
        let back = FullStore::decode(shape, &mut &bytes[..]).unwrap();
        assert_eq!((back.keys, back.values, back.mass), (store.keys.clone(), store.values.clone(), store.mass.clone()));
        assert_eq!(back.recent_queries, store.recent_queries);
        // a shape the bytes were not written for
        assert!(FullStore::decode(Heads { heads: 4, kv_heads: 2, head_dim: 4 }, &mut &bytes[..]).is_none());
        assert!(FullStore::decode(shape, &mut &bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn query_statistics_are_the_queries_before_rope_and_encode_bit_exactly() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let ctx = StoreContext::for_tests(shape, 8);
        let mut store = FullStore::for_layer(&ctx);
        let t = 8;
        let kv: Vec<f32> = (0..t * 4).map(|i| (i as f32 * 0.3).cos()).collect();
        store.append(&kv, &kv, t);
        // queries before RoPE q, rotated to their positions as the model hands them
        let raw: Vec<f32> = (0..t * 8).map(|i| (i as f32 * 0.7).sin()).collect();
        let mut rotated = raw.clone();
        for (p, row) in rotated.chunks_exact_mut(8).enumerate() {
            rope::apply(row, 4, p as i64, 10_000.0);
        }
        let mut out = vec![0.0; t * 8];
        store.attend(&rotated, 8, t, &mut out);
        let stats = store.query_stats().unwrap().clone();
        assert_eq!(stats.count(), (t - QUERY_STATS_SKIP) as u64);
        let (mean, cov) = stats.moments(1, 4);
        let rows: Vec<&[f32]> = raw.chunks_exact(8).skip(QUERY_STATS_SKIP).map(|r| &r[4..]).collect();
        for c in 0..4 {
            let want = rows.iter().map(|r| r[c] as f64).sum::<f64>() / rows.len() as f64;
            assert!((mean[c] - want).abs() < 1e-6, "mean {c}: {} against {want}", mean[c]);
        }
        let var0 = rows.iter().map(|r| (r[0] as f64 - mean[0]).powi(2)).sum::<f64>() / rows.len() as f64;
        assert!((cov[0] - var0).abs() < 1e-6);
        // decode steps are not the prompt's
        store.end_prefill();
        store.append(&kv[..4], &kv[..4], 1);
        store.attend(&rotated[..8], 8, 1, &mut out[..8]);
        assert_eq!(store.query_stats().unwrap().count(), (t - QUERY_STATS_SKIP) as u64);
        let mut bytes = Vec::new();
        store.encode(&mut bytes);
        let back = FullStore::decode(shape, &mut &bytes[..]).unwrap();
        assert_eq!(
            back.query_stats().map(|s| (s.sum.clone(), s.outer.clone(), s.count)),
            Some((stats.sum.clone(), stats.outer.clone(), stats.count))
        );
        // statistics of another head size are refused, not trusted
        assert!(FullStore::decode(Heads { heads: 1, kv_heads: 1, head_dim: 4 }, &mut &bytes[..]).is_none());
    }

    #[test]
    fn observes_mass_and_the_last_queries() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 2 };
        let mut store = FullStore::new(shape);
        let mut out = vec![0.0; 3 * 4];
        let kv = [0.0f32; 6];
        store.append(&kv, &kv, 3);
        let q: Vec<f32> = (0..12).map(|i| i as f32).collect();
        store.attend(&q, 4, 3, &mut out);
        // equal scores: row j spreads 1 over j + 1 tokens, for each of the 2 heads
        let want = [2.0 * (1.0 + 0.5 + 1.0 / 3.0), 2.0 * (0.5 + 1.0 / 3.0), 2.0 / 3.0];
        for (m, w) in store.mass(0).iter().zip(want) {
            assert!((m - w).abs() < 1e-6, "{:?}", store.mass(0));
        }
        assert_eq!(store.recent_queries(), &q[..]);
        for step in 0..OBSERVATION_WINDOW {
            store.append(&kv[..2], &kv[..2], 1);
            store.attend(&[step as f32; 4], 4, 1, &mut out[..4]);
        }
        assert_eq!(store.recent_queries().len(), OBSERVATION_WINDOW * 4);
        assert_eq!(store.recent_queries()[..4], [0.0; 4]);
        assert_eq!(store.recent_queries()[OBSERVATION_WINDOW * 4 - 4..], [31.0; 4]);
    }
}
