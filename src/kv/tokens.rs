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
//!
//! Composed with a quantizer (`snapkv-4x+q4_0-rot`, [`TokenRows::recode`]), the same rows are held
//! as the quantizer's codes ([`crate::kv::rowcode`]) and attention reads their decoding: the token
//! method chooses the rows, the quantizer how each is stored, and the bytes are the codes'.

use std::cell::RefCell;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::attention::{self, Heads, KvView, Queries};
use super::prefill::FullStore;
use super::rowcode::{Coder, Part, RowCode};

/// One kv head's kept tokens: keys and values `[n, head_dim]`, in f16 or coded by a composed
/// quantizer ([`Self::recode`]), and their positions.
#[derive(Debug, Clone, Default)]
pub struct HeadRows {
    d: usize,
    rows: Rows,
    positions: Vec<u32>,
}

/// How a head's rows are held.
#[derive(Debug, Clone)]
enum Rows {
    /// f16, as they were written.
    Half { keys: Vec<f16>, values: Vec<f16> },
    /// A composed quantizer's codes ([`crate::kv::rowcode`]), and their decoding, which attention
    /// reads.
    Coded { coder: Coder, keys: Vec<u8>, values: Vec<u8>, wide_keys: Vec<f32>, wide_values: Vec<f32> },
}

impl Default for Rows {
    fn default() -> Self {
        Self::Half { keys: Vec::new(), values: Vec::new() }
    }
}

impl HeadRows {
    /// Empty rows of `d` values.
    pub fn new(d: usize) -> Self {
        Self { d, ..Self::default() }
    }

    /// Keep one more token.
    pub fn push(&mut self, key: &[f32], value: &[f32], position: u32) {
        match &mut self.rows {
            Rows::Half { keys, values } => {
                for (rows, new) in [(keys, key), (values, value)] {
                    let at = rows.len();
                    rows.resize(at + new.len(), f16::ZERO);
                    rows[at..].convert_from_f32_slice(new);
                }
            }
            Rows::Coded { coder, keys, values, wide_keys, wide_values } => {
                coder.encode(Part::Keys, key, keys, wide_keys);
                coder.encode(Part::Values, value, values, wide_values);
            }
        }
        self.positions.push(position);
    }

    /// Hold every row, and every row pushed from now on, in `coder`'s codes.
    pub fn recode(&mut self, coder: &Coder) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        self.widen(None, &mut k, &mut v);
        let positions = std::mem::take(&mut self.positions);
        self.rows = Rows::Coded {
            coder: coder.clone(),
            keys: Vec::new(),
            values: Vec::new(),
            wide_keys: Vec::new(),
            wide_values: Vec::new(),
        };
        for (i, &p) in positions.iter().enumerate() {
            self.push(&k[i * self.d..][..self.d], &v[i * self.d..][..self.d], p);
        }
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

    /// Key of row `i`, widened (decoded, for coded rows).
    pub fn key(&self, i: usize) -> Vec<f32> {
        let d = self.d;
        match &self.rows {
            Rows::Half { keys, .. } => keys[i * d..][..d].iter().map(|x| x.to_f32()).collect(),
            Rows::Coded { wide_keys, .. } => wide_keys[i * d..][..d].to_vec(),
        }
    }

    /// Keep the rows whose `keep` flag is set, in order.
    pub fn retain(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len());
        let d = self.d;
        let w = keep.iter().filter(|&&k| k).count();
        match &mut self.rows {
            Rows::Half { keys, values } => {
                retain_rows(keys, d, keep);
                retain_rows(values, d, keep);
            }
            Rows::Coded { coder, keys, values, wide_keys, wide_values } => {
                retain_rows(keys, coder.row_bytes(Part::Keys, d), keep);
                retain_rows(values, coder.row_bytes(Part::Values, d), keep);
                retain_rows(wide_keys, d, keep);
                retain_rows(wide_values, d, keep);
            }
        }
        retain_rows(&mut self.positions, 1, keep);
        debug_assert_eq!(self.positions.len(), w);
    }

    /// Bytes held: keys, values (f16, or their codes) and positions.
    pub fn bytes(&self) -> usize {
        let rows = match &self.rows {
            Rows::Half { keys, values } => (keys.len() + values.len()) * size_of::<f16>(),
            Rows::Coded { keys, values, .. } => keys.len() + values.len(),
        };
        rows + self.positions.len() * size_of::<u32>()
    }

    /// Bytes of `n` rows' keys and values (what attention reads for them).
    pub fn row_bytes(&self, n: usize) -> usize {
        match &self.rows {
            Rows::Half { .. } => n * 2 * self.d * size_of::<f16>(),
            Rows::Coded { coder, .. } => n * coder.token_bytes(self.d),
        }
    }

    /// The composed quantizer's coder, if the head holds codes.
    pub fn coder(&self) -> Option<&Coder> {
        match &self.rows {
            Rows::Half { .. } => None,
            Rows::Coded { coder, .. } => Some(coder),
        }
    }

    /// The f16 rows, if the head holds f16.
    fn half(&self) -> Option<KvView<'_, f16>> {
        match &self.rows {
            Rows::Half { keys, values } => Some(KvView { keys, values }),
            Rows::Coded { .. } => None,
        }
    }

    /// The decoded rows, if the head holds codes.
    fn decoded(&self) -> Option<KvView<'_>> {
        match &self.rows {
            Rows::Half { .. } => None,
            Rows::Coded { wide_keys, wide_values, .. } => Some(KvView { keys: wide_keys, values: wide_values }),
        }
    }

    /// Widen rows `rows` (all when `None`) into `keys` and `values`.
    fn widen(&self, rows: Option<&[usize]>, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        let d = self.d;
        let n = rows.map_or(self.len(), <[usize]>::len);
        keys.resize(n * d, 0.0);
        values.resize(n * d, 0.0);
        match (&self.rows, rows) {
            (Rows::Half { keys: hk, values: hv }, None) => {
                hk.convert_to_f32_slice(keys);
                hv.convert_to_f32_slice(values);
            }
            (Rows::Half { keys: hk, values: hv }, Some(rows)) => {
                for (j, &r) in rows.iter().enumerate() {
                    hk[r * d..][..d].convert_to_f32_slice(&mut keys[j * d..][..d]);
                    hv[r * d..][..d].convert_to_f32_slice(&mut values[j * d..][..d]);
                }
            }
            (Rows::Coded { wide_keys, wide_values, .. }, None) => {
                keys.copy_from_slice(wide_keys);
                values.copy_from_slice(wide_values);
            }
            (Rows::Coded { wide_keys, wide_values, .. }, Some(rows)) => {
                for (j, &r) in rows.iter().enumerate() {
                    keys[j * d..][..d].copy_from_slice(&wide_keys[r * d..][..d]);
                    values[j * d..][..d].copy_from_slice(&wide_values[r * d..][..d]);
                }
            }
        }
    }
}

/// Keep the `width`-long rows of `x` whose flag is set, in order.
fn retain_rows<T: Copy>(x: &mut Vec<T>, width: usize, keep: &[bool]) {
    let mut w = 0;
    for (r, &k) in keep.iter().enumerate() {
        if k {
            x.copy_within(r * width..(r + 1) * width, w * width);
            w += 1;
        }
    }
    x.truncate(w * width);
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
    /// A composed quantizer's code, waiting for the first rows to set its scales from.
    pending: Option<RowCode>,
}

impl TokenRows {
    /// Empty rows.
    pub fn new(shape: Heads) -> Self {
        Self { shape, heads: vec![HeadRows::new(shape.head_dim); shape.kv_heads], next_position: 0, pending: None }
    }

    /// Hold every row, and every row appended from now on, in `code` (a composed quantizer's),
    /// its per-layer scales set from the rows held now or, if none are, from the first appended.
    pub fn recode(&mut self, code: RowCode) {
        if self.heads.iter().all(HeadRows::is_empty) {
            self.pending = Some(code);
            return;
        }
        // only FP8's scales are set from the rows
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for head in self.heads.iter().filter(|_| matches!(code, RowCode::Fp8(_))) {
            let (mut k, mut v) = (Vec::new(), Vec::new());
            head.widen(None, &mut k, &mut v);
            keys.extend(k);
            values.extend(v);
        }
        let coder = Coder::calibrated(code, self.shape.head_dim, &keys, &values);
        self.heads.iter_mut().for_each(|h| h.recode(&coder));
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
        if let Some(code) = self.pending.take() {
            let coder = Coder::calibrated(code, self.shape.head_dim, keys, values);
            self.heads.iter_mut().for_each(|h| h.recode(&coder));
        }
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
            if let Some(views) = self.heads.iter().map(HeadRows::half).collect::<Option<Vec<_>>>()
                && attention::attend_observed_half(self.shape, q, &views, out, mass.as_deref_mut())
            {
                return;
            }
            // coded rows: attention reads their decoding as it is
            if let Some(views) = self.heads.iter().map(HeadRows::decoded).collect::<Option<Vec<_>>>() {
                return attention::attend_observed(self.shape, q, &views, out, mass);
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

    /// Bytes held, all heads, and a composed quantizer's per-layer scales.
    pub fn bytes(&self) -> usize {
        let layer = self.heads.first().and_then(HeadRows::coder).map_or(0, Coder::layer_bytes);
        self.heads.iter().map(HeadRows::bytes).sum::<usize>() + layer
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
