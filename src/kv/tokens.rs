//! Half-precision token rows: the storage of every method that keeps some tokens' keys and
//! values unquantized (`fp16`, the token-dropping methods, the retrieval methods, the KIVI
//! residual). f16 is the precision of the study's full cache and of llama.cpp's default cache, so
//! a method that keeps half the tokens holds half the bytes of the fp16 reference.
//!
//! Every kept token carries its position (`u32`), counted in [`TokenRows::bytes`]: eviction
//! needs to know which token a row is (sinks, recency), and an honest byte count includes it.
//! Decode attention over every kept row reads the f16 rows as they are
//! ([`attention::attend_observed_half`]); otherwise attention widens the selected rows to f32 in
//! a per-thread scratch buffer that is reused across layers (working memory of one layer, not a
//! second cache).

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::attention::{self, Heads, KvView, Queries};
use super::prefill::FullStore;

/// One kv head's kept tokens: keys and values `[n, head_dim]` in f16, and their positions.
#[derive(Debug, Clone, Default)]
pub struct HeadRows {
    d: usize,
    keys: Vec<f16>,
    values: Vec<f16>,
    positions: Vec<u32>,
}

impl HeadRows {
    /// Empty rows of `d` values.
    pub fn new(d: usize) -> Self {
        Self { d, ..Self::default() }
    }

    /// Keep one more token.
    pub fn push(&mut self, key: &[f32], value: &[f32], position: u32) {
        for (rows, new) in [(&mut self.keys, key), (&mut self.values, value)] {
            let at = rows.len();
            rows.resize(at + new.len(), f16::ZERO);
            rows[at..].convert_from_f32_slice(new);
        }
        self.positions.push(position);
    }

    /// Tokens kept.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether no token is kept.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Positions of the kept tokens, ascending.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// Key of row `i`, widened.
    pub fn key(&self, i: usize) -> Vec<f32> {
        self.keys[i * self.d..][..self.d].iter().map(|x| x.to_f32()).collect()
    }

    /// Keep the rows whose `keep` flag is set, in order.
    pub fn retain(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len());
        let d = self.d;
        let mut w = 0;
        for (r, &k) in keep.iter().enumerate() {
            if k {
                self.keys.copy_within(r * d..(r + 1) * d, w * d);
                self.values.copy_within(r * d..(r + 1) * d, w * d);
                self.positions[w] = self.positions[r];
                w += 1;
            }
        }
        self.keys.truncate(w * d);
        self.values.truncate(w * d);
        self.positions.truncate(w);
    }

    /// Bytes held: keys, values and positions.
    pub fn bytes(&self) -> usize {
        (self.keys.len() + self.values.len()) * size_of::<f16>() + self.positions.len() * size_of::<u32>()
    }

    /// Bytes of `n` rows' keys and values (what attention reads for them).
    pub fn row_bytes(&self, n: usize) -> usize {
        n * 2 * self.d * size_of::<f16>()
    }

    /// Widen rows `rows` (all when `None`) into `keys` and `values`.
    fn widen(&self, rows: Option<&[usize]>, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        let d = self.d;
        match rows {
            None => {
                keys.resize(self.keys.len(), 0.0);
                values.resize(self.values.len(), 0.0);
                self.keys.convert_to_f32_slice(keys);
                self.values.convert_to_f32_slice(values);
            }
            Some(rows) => {
                keys.resize(rows.len() * d, 0.0);
                values.resize(rows.len() * d, 0.0);
                for (j, &r) in rows.iter().enumerate() {
                    self.keys[r * d..][..d].convert_to_f32_slice(&mut keys[j * d..][..d]);
                    self.values[r * d..][..d].convert_to_f32_slice(&mut values[j * d..][..d]);
                }
            }
        }
    }
}

thread_local! {
    /// Widened keys and values, one pair per kv head, reused from layer to layer.
    static SCRATCH: RefCell<Vec<(Vec<f32>, Vec<f32>)>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with this thread's widening buffers, one `(keys, values)` pair per kv head.
pub fn with_scratch<R>(kv_heads: usize, f: impl FnOnce(&mut [(Vec<f32>, Vec<f32>)]) -> R) -> R {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.resize_with(kv_heads, Default::default);
        f(&mut scratch[..kv_heads])
    })
}

/// A layer's kept tokens, one [`HeadRows`] per kv head, with the next position to assign.
#[derive(Debug, Clone)]
pub struct TokenRows {
    /// Attention shape.
    pub shape: Heads,
    /// Per kv head.
    pub heads: Vec<HeadRows>,
    /// Position of the next appended token.
    pub next_position: u32,
}

impl TokenRows {
    /// Empty rows.
    pub fn new(shape: Heads) -> Self {
        Self { shape, heads: vec![HeadRows::new(shape.head_dim); shape.kv_heads], next_position: 0 }
    }

    /// Every token of a full-precision prefill, rounded to f16.
    pub fn from_full(full: &FullStore) -> Self {
        let shape = full.shape();
        let d = shape.head_dim;
        let mut rows = Self::new(shape);
        let n = full.keys(0).len() / d;
        for (g, head) in rows.heads.iter_mut().enumerate() {
            let (k, v) = (full.keys(g), full.values(g));
            for i in 0..n {
                head.push(&k[i * d..][..d], &v[i * d..][..d], i as u32);
            }
        }
        rows.next_position = n as u32;
        rows
    }

    /// Append `t` token-major rows of `kv_heads · head_dim` keys and values.
    pub fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let d = self.shape.head_dim;
        let width = self.shape.kv_heads * d;
        for j in 0..t {
            let position = self.next_position + j as u32;
            for (g, head) in self.heads.iter_mut().enumerate() {
                head.push(&keys[j * width + g * d..][..d], &values[j * width + g * d..][..d], position);
            }
        }
        self.next_position += t as u32;
    }

    /// Attend over every kept row.
    pub fn attend(&self, q: Queries<'_>, out: &mut [f32], mass: Option<&mut [Vec<f32>]>) {
        self.attend_selected(None, q, out, mass);
    }

    /// Attend over the rows of each head (`select[g]` picks rows of head `g`, all when `None`; the
    /// picks must be ascending and end with the chunk's own `q.rows` tokens). Heads holding or
    /// picking different counts (head-adaptive budgets) are attended one kv head at a time. With
    /// `mass`, accumulate attention per picked row as [`attention::attend_observed`] does.
    pub fn attend_selected(
        &self,
        select: Option<&[Vec<usize>]>,
        q: Queries<'_>,
        out: &mut [f32],
        mut mass: Option<&mut [Vec<f32>]>,
    ) {
        let len = |g: usize| select.map_or(self.heads[g].len(), |s| s[g].len());
        if (1..self.heads.len()).any(|g| len(g) != len(0)) {
            // heads of different lengths (head-adaptive budgets): each kv head on its own
            return self.attend_heads_apart(select, q, out, mass);
        }
        if select.is_none() {
            // every row: the decode kernel reads the f16 rows as they are
            let views: Vec<KvView<f16>> =
                self.heads.iter().map(|h| KvView { keys: &h.keys, values: &h.values }).collect();
            if attention::attend_observed_half(self.shape, q, &views, out, mass.as_deref_mut()) {
                return;
            }
        }
        with_scratch(self.heads.len(), |scratch| {
            for (g, (head, (k, v))) in self.heads.iter().zip(scratch.iter_mut()).enumerate() {
                head.widen(select.map(|s| &s[g][..]), k, v);
            }
            let views: Vec<KvView> = scratch.iter().map(|(k, v)| KvView { keys: k, values: v }).collect();
            attention::attend_observed(self.shape, q, &views, out, mass);
        });
    }

    /// [`Self::attend_selected`] one kv head at a time, for heads that hold different counts: each
    /// is a one-kv-head attention of its query group, written back into `out`'s rows.
    fn attend_heads_apart(
        &self,
        select: Option<&[Vec<usize>]>,
        q: Queries<'_>,
        out: &mut [f32],
        mut mass: Option<&mut [Vec<f32>]>,
    ) {
        let Heads { heads, kv_heads, head_dim: d } = self.shape;
        let group = heads / kv_heads;
        let one = Heads { heads: group, kv_heads: 1, head_dim: d };
        let mut part = vec![0.0f32; q.rows * group * d];
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for (g, head) in self.heads.iter().enumerate() {
            head.widen(select.map(|s| &s[g][..]), &mut k, &mut v);
            let queries = Queries::new(&q.data[g * group * d..], q.stride, q.rows);
            let head_mass = mass.as_deref_mut().map(|m| std::slice::from_mut(&mut m[g]));
            attention::attend_observed(one, queries, &[KvView { keys: &k, values: &v }], &mut part, head_mass);
            for (j, row) in part.chunks_exact(group * d).enumerate() {
                out[j * heads * d + g * group * d..][..group * d].copy_from_slice(row);
            }
        }
    }

    /// Bytes held, all heads.
    pub fn bytes(&self) -> usize {
        self.heads.iter().map(HeadRows::bytes).sum()
    }

    /// Tokens kept per head (the most of any head).
    pub fn tokens(&self) -> usize {
        self.heads.iter().map(HeadRows::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_keeps_rows_in_order_and_bytes_follow() {
        let mut h = HeadRows::new(2);
        for i in 0..5 {
            h.push(&[i as f32, 0.5], &[-(i as f32), 1.0], 10 + i);
        }
        assert_eq!(h.bytes(), 5 * (2 * 2 * 2 + 4));
        h.retain(&[true, false, true, false, true]);
        assert_eq!(h.positions(), &[10, 12, 14]);
        assert_eq!(h.key(1), vec![2.0, 0.5]);
        assert_eq!(h.bytes(), 3 * 12);
    }

    #[test]
    fn heads_of_different_lengths_attend_each_as_its_own_one_head_layer() {
        let shape = Heads { heads: 6, kv_heads: 3, head_dim: 8 };
        let (n, t) = (30, 2);
        let k: Vec<f32> = (0..n * 24).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let v: Vec<f32> = (0..n * 24).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
        let q: Vec<f32> = (0..t * 48).map(|i| ((i * 3 % 7) as f32 - 3.0) * 0.3).collect();
        let mut rows = TokenRows::new(shape);
        rows.append(&k, &v, n);
        // head 0 keeps all, head 1 every other token, head 2 the last 9 (each ends with the chunk)
        rows.heads[1].retain(&(0..n).map(|i| i % 2 == 1).collect::<Vec<_>>());
        rows.heads[2].retain(&(0..n).map(|i| i >= n - 9).collect::<Vec<_>>());
        let mut out = vec![0.0f32; t * 48];
        let mut mass: Vec<Vec<f32>> = rows.heads.iter().map(|h| vec![0.0; h.len()]).collect();
        rows.attend(Queries::new(&q, 48, t), &mut out, Some(&mut mass));
        for g in 0..3 {
            let mut one = TokenRows::new(Heads { heads: 2, kv_heads: 1, head_dim: 8 });
            one.heads[0] = rows.heads[g].clone();
            let mut want = vec![0.0f32; t * 16];
            let mut want_mass = vec![vec![0.0f32; rows.heads[g].len()]];
            one.attend(Queries::new(&q[g * 16..], 48, t), &mut want, Some(&mut want_mass));
            for j in 0..t {
                assert_eq!(&out[j * 48 + g * 16..][..16], &want[j * 16..][..16], "head {g} row {j}");
            }
            assert_eq!(mass[g], want_mass[0], "head {g}'s mass");
        }
    }

    #[test]
    fn attends_like_full_precision_up_to_f16_rounding() {
        let shape = Heads { heads: 4, kv_heads: 2, head_dim: 8 };
        let n = 20;
        let k: Vec<f32> = (0..n * 16).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let v: Vec<f32> = (0..n * 16).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
        let q: Vec<f32> = (0..32).map(|i| (i % 5) as f32 * 0.3).collect();
        let mut full = FullStore::new(shape);
        crate::kv::LayerStore::append(&mut full, &k, &v, n);
        let mut rows = TokenRows::new(shape);
        rows.append(&k, &v, n);
        assert_eq!(rows.tokens(), n);
        let (mut a, mut b) = (vec![0.0; 32], vec![0.0; 32]);
        attention::attend(shape, Queries::new(&q, 32, 1), &full.views(), &mut a);
        rows.attend(Queries::new(&q, 32, 1), &mut b, None);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 2e-3, "{x} vs {y}");
        }
        let again = TokenRows::from_full(&full);
        assert_eq!(again.heads[1].positions(), rows.heads[1].positions());
        assert_eq!(again.bytes(), rows.bytes());
    }
}
