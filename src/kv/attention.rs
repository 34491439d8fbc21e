//! Grouped-query attention of a chunk of new queries over what a cache holds.
//!
//! Two paths, one result. For a prefill chunk, per query head two blocked matrix products
//! (`matrixmultiply`'s AVX2/FMA sgemm) around a masked softmax: `S = scale · Q_h Kᵀ`,
//! `O_h = softmax(S) V`, in blocks of rows that stop at the last key the block sees, so the
//! chunk's masked triangle is skipped outside the diagonal blocks. For a few rows (decode),
//! sgemm would spend its time packing the whole key matrix for one query row, so a streaming
//! kernel reads each key and value row once, with
//! 8-lane fused multiply-adds compiled for AVX2+FMA when the CPU has them (checked at run time).
//! Query heads run in parallel on rayon's pool. Query head `h` reads key/value head `h / group`,
//! as llama.cpp and Hugging Face do for GQA.
//!
//! Causality: the chunk's `t` queries are the last `t` tokens of the view, so query `j` sees the
//! first `n - t + j + 1` entries. A method that keeps fewer tokens passes a shorter view; the
//! newest `t` entries must still be the chunk's own keys, in order.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Shape of the attention problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
}

/// One key/value head's contents: `n` rows of `head_dim` keys and values, row-major, in f32
/// (or, for [`attend_observed_half`], f16).
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a, E = f32> {
    /// Keys, `[n, head_dim]`.
    pub keys: &'a [E],
    /// Values, `[n, head_dim]`.
    pub values: &'a [E],
}

/// A chunk's `rows` query rows: row `j` starts at `data[j * stride]` with `heads * head_dim`
/// post-RoPE query values (a fused projection's output carries keys and values after them).
#[derive(Debug, Clone, Copy)]
pub struct Queries<'a> {
    /// The rows.
    pub data: &'a [f32],
    /// Distance between the starts of consecutive rows.
    pub stride: usize,
    /// Number of rows (the chunk's new tokens).
    pub rows: usize,
}

impl<'a> Queries<'a> {
    /// `rows` rows of `stride` values in `data`.
    pub fn new(data: &'a [f32], stride: usize, rows: usize) -> Self {
        Self { data, stride, rows }
    }

    /// `d` values of query head `h` in row `j`.
    pub fn head(&self, j: usize, h: usize, d: usize) -> &'a [f32] {
        self.heads(j, h, 1, d)
    }

    /// `count · d` values of the `count` consecutive query heads from `h` on, in row `j`.
    pub fn heads(&self, j: usize, h: usize, count: usize, d: usize) -> &'a [f32] {
        &self.data[j * self.stride + h * d..][..count * d]
    }
}

/// Attend the query rows to the views.
///
/// `kv` has one view per key/value head, all of equal length `n ≥ q.rows`. Writes `q.rows` rows
/// of `heads * head_dim` values to `out`.
pub fn attend(shape: Heads, q: Queries<'_>, kv: &[KvView<'_>], out: &mut [f32]) {
    attend_observed(shape, q, kv, out, None)
}

/// [`attend`], and if `mass` is given, add to `mass[g][i]` the attention probability that every
/// query row of every head of kv head `g`'s group gave entry `i` (the column sums H2O, TOVA and
/// the retrieval methods score tokens by). `mass[g]` must hold at least `n` entries.
pub fn attend_observed(
    shape: Heads,
    q: Queries<'_>,
    kv: &[KvView<'_>],
    out: &mut [f32],
    mass: Option<&mut [Vec<f32>]>,
) {
    check_call(shape, q, kv, out, mass.as_deref());
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let (t, group) = (q.rows, heads / kv_heads);

    if t <= FEW_ROWS && d % LANES == 0 && group <= MAX_GROUP {
        #[cfg(target_arch = "x86_64")]
        if avx2_rows_apply(shape) {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { avx2::attend_rows(shape, q, kv, out, mass) };
        }
        return attend_rows(shape, q, kv, out, mass);
    }

    chunk_all(shape, q, kv, out, mass, None);
}

/// [`attend_observed`] where each query row sees at most the last `window` of the entries it would
/// see (itself included): the sliding-window attention of Gemma 3's local layers, whose query at
/// position p sees keys p − window + 1 … p. Entries before a row's window get probability zero
/// (and no mass). Where no row's window cuts anything, this is [`attend_observed`], bit for bit.
///
/// # Panics
/// If `window` is 0, and as [`attend_observed`].
pub fn attend_window(
    shape: Heads,
    q: Queries<'_>,
    kv: &[KvView<'_>],
    out: &mut [f32],
    mut mass: Option<&mut [Vec<f32>]>,
    window: usize,
) {
    assert!(window >= 1, "a window holds at least the query's own token");
    check_call(shape, q, kv, out, mass.as_deref());
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let (t, n) = (q.rows, kv[0].keys.len() / d);
    if n <= window {
        return attend_observed(shape, q, kv, out, mass);
    }
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    if t <= FEW_ROWS && d % LANES == 0 && group <= MAX_GROUP {
        // each row over the slice of its window, as a decode step over that slice alone
        for j in 0..t {
            let visible = n - t + j + 1;
            let lo = visible.saturating_sub(window);
            for g in 0..kv_heads {
                let view = KvView { keys: &kv[g].keys[lo * d..], values: &kv[g].values[lo * d..] };
                let mut scores = vec![0.0f32; group * (visible - lo)];
                let o = &mut out[j * heads * d + g * group * d..][..group * d];
                grouped_row(q.heads(j, g * group, group, d), d, view, scale, &mut scores, o);
                if let Some(mass) = mass.as_deref_mut() {
                    for row in scores.chunks_exact(visible - lo) {
                        add_into(&mut mass[g][lo..], row);
                    }
                }
            }
        }
        return;
    }
    chunk_all(shape, q, kv, out, mass, Some(window));
}

/// The blocked path: every query head's [`chunk_head`] in parallel, written into `out` row by row
/// and, if `mass` is given, its column sums added to its kv head's.
fn chunk_all(
    shape: Heads,
    q: Queries<'_>,
    kv: &[KvView<'_>],
    out: &mut [f32],
    mut mass: Option<&mut [Vec<f32>]>,
    window: Option<usize>,
) {
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let (t, group, scale) = (q.rows, heads / kv_heads, 1.0 / (d as f32).sqrt());
    let observe = mass.is_some();
    let per_head: Vec<(Vec<f32>, Option<Vec<f32>>)> = (0..heads)
        .into_par_iter()
        .map(|h| chunk_head(q, h, d, kv[h / group], scale, observe, ROW_BLOCK, window))
        .collect();
    for (h, (o, column_sums)) in per_head.iter().enumerate() {
        for j in 0..t {
            out[j * heads * d + h * d..][..d].copy_from_slice(&o[j * d..][..d]);
        }
        if let (Some(mass), Some(sums)) = (mass.as_deref_mut(), column_sums) {
            add_into(&mut mass[h / group], sums);
        }
    }
}

/// Query rows per block of a prefill chunk: each block's products stop at the last key its
/// bottom row sees, so the chunk's masked upper triangle is computed only within the diagonal
/// blocks (of a 512-token chunk over 1,024 keys, a quarter of the products are masked; blocks of
/// 128 skip three quarters of those). Each block packs its keys and values again, up to its
/// width: for a 512-row chunk, 4n − 768 packed rows instead of n.
const ROW_BLOCK: usize = 128;

/// One query head of a prefill chunk: `O_h = softmax(scale · Q_h Kᵀ) V` and, if `observe`, the
/// column sums of the probabilities. Rows go in blocks of `row_block`: block `[r0, r1)` takes the
/// first `n - t + r1` keys, so each row's products cover its visible keys and, at most,
/// `row_block - 1` masked ones, whose probabilities are zero. Every block size gives the same bits
/// (tested), by the way `matrixmultiply` sums: each score is one length-`d` dot product in a single
/// k-chunk (it splits k into chunks of 256 from 0, and `d ≤ 256`), and the weighted sums over more
/// keys only add exact zeros, in the same chunks, with α = 1. With a `window`, row `j`'s softmax
/// covers only the last `window` of its visible keys, and the ones before get zero.
#[allow(clippy::too_many_arguments)]
fn chunk_head(
    q: Queries<'_>,
    h: usize,
    d: usize,
    view: KvView<'_>,
    scale: f32,
    observe: bool,
    row_block: usize,
    window: Option<usize>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (t, n) = (q.rows, view.keys.len() / d);
    // what the products' strides rely on (`check_call` asserts it for every caller but the tests)
    assert!(t >= 1 && n >= t && view.values.len() == n * d && q.data.len() >= (t - 1) * q.stride + (h + 1) * d);
    let blocks =
        || (0..t).step_by(row_block).map(move |r0| (r0, (r0 + row_block).min(t), n - t + (r0 + row_block).min(t)));
    // entries right of a block's keys are never written or read
    let mut scores = vec![0.0f32; t * n];
    for (r0, r1, width) in blocks() {
        // S[r0..r1, ..width] = scale · Q_h[r0..r1, d] · K[..width, d]ᵀ
        // SAFETY: the strides describe in-bounds views of `q`, `view.keys` and `scores`
        // (asserted above; `width ≤ n`, `r1 ≤ t`).
        unsafe {
            matrixmultiply::sgemm(
                r1 - r0,
                d,
                width,
                scale,
                q.data.as_ptr().add(r0 * q.stride + h * d),
                q.stride as isize,
                1,
                view.keys.as_ptr(),
                1,
                d as isize,
                0.0,
                scores.as_mut_ptr().add(r0 * n),
                n as isize,
                1,
            );
        }
        for (j, row) in (r0..r1).zip(scores[r0 * n..r1 * n].chunks_exact_mut(n)) {
            let visible = n - t + j + 1;
            match window.map_or(0, |w| visible.saturating_sub(w)) {
                0 => softmax_prefix(&mut row[..width], visible),
                lo => {
                    softmax_prefix(&mut row[lo..width], visible - lo);
                    row[..lo].fill(0.0);
                }
            }
        }
    }
    let column_sums = observe.then(|| {
        let mut sums = vec![0.0f32; n];
        for (r0, r1, width) in blocks() {
            for row in scores[r0 * n..r1 * n].chunks_exact(n) {
                add_into(&mut sums[..width], &row[..width]);
            }
        }
        sums
    });
    let mut o = vec![0.0f32; t * d];
    for (r0, r1, width) in blocks() {
        // O_h[r0..r1, d] = P[r0..r1, ..width] · V[..width, d]
        // SAFETY: as above, for `scores`, `view.values` and `o`.
        unsafe {
            matrixmultiply::sgemm(
                r1 - r0,
                width,
                d,
                1.0,
                scores.as_ptr().add(r0 * n),
                n as isize,
                1,
                view.values.as_ptr(),
                d as isize,
                1,
                0.0,
                o.as_mut_ptr().add(r0 * d),
                d as isize,
                1,
            );
        }
    }
    (o, column_sums)
}

/// [`attend_observed`] over half-precision views, read as stored by the decode kernel: the same
/// bits as attending their f32 widening (widening f16 is exact), from half the bytes. Returns
/// `false`, having checked and written nothing, where that kernel does not apply (many rows,
/// another head size, a CPU without AVX2, FMA and F16C): the caller widens and calls
/// [`attend_observed`].
pub fn attend_observed_half(
    shape: Heads,
    q: Queries<'_>,
    kv: &[KvView<'_, half::f16>],
    out: &mut [f32],
    mass: Option<&mut [Vec<f32>]>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if q.rows <= FEW_ROWS && avx2_rows_apply(shape) {
        check_call(shape, q, kv, out, mass.as_deref());
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { avx2::attend_rows(shape, q, kv, out, mass) };
        return true;
    }
    let _ = (shape, q, kv, out, mass);
    false
}

/// The contract of [`attend_observed`], checked.
fn check_call<E>(shape: Heads, q: Queries<'_>, kv: &[KvView<'_, E>], out: &[f32], mass: Option<&[Vec<f32>]>) {
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let t = q.rows;
    assert_eq!(kv.len(), kv_heads, "one view per kv head");
    let n = kv[0].keys.len() / d;
    assert!(n >= t, "the view must contain the chunk's own keys");
    assert!(kv.iter().all(|v| v.keys.len() == n * d && v.values.len() == n * d), "views of equal length");
    assert!(t >= 1 && q.data.len() >= (t - 1) * q.stride + heads * d && out.len() == t * heads * d);
    if let Some(mass) = mass {
        assert!(mass.len() == kv_heads && mass.iter().all(|m| m.len() >= n), "mass: one row of n per kv head");
    }
}

/// Whether [`avx2::attend_rows`] handles this shape on this CPU.
#[cfg(target_arch = "x86_64")]
fn avx2_rows_apply(shape: Heads) -> bool {
    shape.head_dim == avx2::HEAD_DIM
        && (1..=avx2::MAX_GROUP).contains(&(shape.heads / shape.kv_heads))
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The streaming path for a few query rows: one task per (kv head, query row), so that the
/// group's query heads share each key and value read.
fn attend_rows(shape: Heads, q: Queries<'_>, kv: &[KvView<'_>], out: &mut [f32], mut mass: Option<&mut [Vec<f32>]>) {
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let t = q.rows;
    let (n, group, scale) = (kv[0].keys.len() / d, heads / kv_heads, 1.0 / (d as f32).sqrt());
    let tasks: Vec<(usize, usize)> = (0..kv_heads).flat_map(|g| (0..t).map(move |j| (g, j))).collect();
    let rows: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(g, j)| {
            let visible = n - t + j + 1;
            let mut o = vec![0.0f32; group * d];
            let mut scores = vec![0.0f32; group * visible];
            grouped_row(q.heads(j, g * group, group, d), d, kv[g], scale, &mut scores, &mut o);
            (o, scores)
        })
        .collect();
    for (&(g, j), (o, scores)) in tasks.iter().zip(&rows) {
        out[j * heads * d + g * group * d..][..group * d].copy_from_slice(o);
        if let Some(mass) = mass.as_deref_mut() {
            for row in scores.chunks_exact(n - t + j + 1) {
                add_into(&mut mass[g], row);
            }
        }
    }
}

/// `mass[i] += probs[i]`: one query row's attention probabilities added to a kv head's mass.
fn add_into(mass: &mut [f32], probs: &[f32]) {
    mass.iter_mut().zip(probs).for_each(|(m, p)| *m += p);
}

/// Rows at or below which the streaming kernel is used.
const FEW_ROWS: usize = 4;
/// f32 lanes of an AVX2 register.
const LANES: usize = 8;
/// Largest GQA group the streaming kernel handles.
const MAX_GROUP: usize = 8;

/// One query row of every head in a GQA group (`qs`: `group` consecutive heads of `d` values)
/// over the first `scores.len() / group` rows of their shared view: scores, softmax, weighted
/// values.
fn grouped_row(qs: &[f32], d: usize, view: KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { grouped_row_avx2(qs, d, view, scale, scores, out) };
    }
    grouped_row_dispatch(qs, d, view, scale, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grouped_row_avx2(qs: &[f32], d: usize, view: KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    grouped_row_dispatch(qs, d, view, scale, scores, out)
}

/// The group size as a constant, so that the accumulators live in registers.
#[inline(always)]
fn grouped_row_dispatch(qs: &[f32], d: usize, view: KvView<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    match qs.len() / d {
        1 => grouped_row_generic::<1>(qs, d, view, scale, scores, out),
        2 => grouped_row_generic::<2>(qs, d, view, scale, scores, out),
        3 => grouped_row_generic::<3>(qs, d, view, scale, scores, out),
        4 => grouped_row_generic::<4>(qs, d, view, scale, scores, out),
        5 => grouped_row_generic::<5>(qs, d, view, scale, scores, out),
        6 => grouped_row_generic::<6>(qs, d, view, scale, scores, out),
        7 => grouped_row_generic::<7>(qs, d, view, scale, scores, out),
        _ => grouped_row_generic::<MAX_GROUP>(qs, d, view, scale, scores, out),
    }
}

/// 8-lane accumulators (they vectorise without reassociating sums), one independent FMA chain
/// per head of the group, and each key and value row read once for the whole group.
#[inline(always)]
fn grouped_row_generic<const G: usize>(
    qs: &[f32],
    d: usize,
    view: KvView<'_>,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = G;
    let visible = scores.len() / group;
    for (i, k) in view.keys.chunks_exact(d).take(visible).enumerate() {
        let mut acc = [[0.0f32; LANES]; G];
        for (c, kc) in k.chunks_exact(LANES).enumerate() {
            for (r, a) in acc.iter_mut().enumerate() {
                let qc = &qs[r * d + c * LANES..][..LANES];
                for l in 0..LANES {
                    a[l] = qc[l].mul_add(kc[l], a[l]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            scores[r * visible + i] = a.iter().sum::<f32>() * scale;
        }
    }
    for row in scores.chunks_exact_mut(visible) {
        softmax_prefix_generic(row, visible);
    }
    out.fill(0.0);
    for i in 0..visible {
        let v = &view.values[i * d..][..d];
        for r in 0..group {
            let p = scores[r * visible + i];
            for (oc, vc) in out[r * d..][..d].chunks_exact_mut(LANES).zip(v.chunks_exact(LANES)) {
                for l in 0..LANES {
                    oc[l] = p.mul_add(vc[l], oc[l]);
                }
            }
        }
    }
}

/// Softmax over `row[..visible]`, zeros after it.
fn softmax_prefix(row: &mut [f32], visible: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { avx2::softmax_prefix(row, visible) };
    }
    softmax_prefix_generic(row, visible)
}

#[inline(always)]
fn softmax_prefix_generic(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    // eight running maxima, so that the loop vectorises (max is exact: any order gives the same)
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut chunks = live.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            maxima[l] = maxima[l].max(c[l]);
        }
    }
    let max = maxima.iter().chain(chunks.remainder()).copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0.0f32; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp_nonpositive(c[l] - max);
            sums[l] += c[l];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
}

/// `e^x` for `x ≤ 0`, branch-free so that it vectorises: `x = k·ln2 + r` with `|r| ≤ ln2/2`, a
/// degree-6 polynomial for `e^r` (Cephes `expf` coefficients, error ≈ 1 ulp), and `2^k` built
/// from exponent bits. Inputs are clamped at −87, where `e^x` is below f32's normal range.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(EXP_MIN);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = k.mul_add(EXP_NEG_LN2_HI, x);
    let r = k.mul_add(EXP_NEG_LN2_LO, r);
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    let er = (p * r).mul_add(r, r) + 1.0;
    // 2^k from exponent bits. `k` is a whole number in [-126, 0], so `k + 127 + 2^23` is exact
    // and its low mantissa bits are `k + 127`: the same bits as `((k as i32 + 127) as u32) << 23`
    // without a float-to-int conversion, whose saturating semantics keep the loop from
    // vectorising.
    er * f32::from_bits((k + EXP_BIAS).to_bits() << 23)
}

/// [`exp_nonpositive`]'s clamp, where `e^x` leaves f32's normal range.
const EXP_MIN: f32 = -87.0;
/// −ln 2 in two parts (Cephes), so that `x − k·ln 2` is exact enough.
const EXP_NEG_LN2_HI: f32 = -0.693_359_4;
const EXP_NEG_LN2_LO: f32 = 2.121_944_4e-4;
/// Cephes `expf`'s polynomial for `(e^r − 1 − r) / r²`, highest degree first.
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// `127 + 2^23`: added to `k`, puts `k + 127` in the low mantissa bits.
const EXP_BIAS: f32 = 127.0 + 8_388_608.0;

/// Straightforward f64 attention, the reference the kernel is tested against.
#[cfg(test)]
pub(crate) fn naive(shape: Heads, q: &[f32], t: usize, kv: &[KvView<'_>]) -> Vec<f32> {
    naive_window(shape, q, t, kv, usize::MAX)
}

/// [`naive`] with each row over the last `window` of its visible entries.
#[cfg(test)]
pub(crate) fn naive_window(shape: Heads, q: &[f32], t: usize, kv: &[KvView<'_>], window: usize) -> Vec<f32> {
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let n = kv[0].keys.len() / d;
    let mut out = vec![0.0f32; t * heads * d];
    for j in 0..t {
        for h in 0..heads {
            let view = kv[h / (heads / kv_heads)];
            let qv = &q[j * heads * d + h * d..][..d];
            let visible = n - t + j + 1;
            let lo = visible.saturating_sub(window);
            let scores: Vec<f64> = (lo..visible)
                .map(|i| {
                    let k = &view.keys[i * d..][..d];
                    qv.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = w.iter().sum();
            for c in 0..d {
                let acc: f64 = (lo..visible).map(|i| w[i - lo] * view.values[i * d + c] as f64).sum();
                out[j * heads * d + h * d + c] = (acc / z) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(rng: &mut StdRng, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
    }

    fn relative_error(got: &[f32], want: &[f32]) -> f64 {
        let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn matches_naive_reference_on_random_inputs() {
        let shape = Heads { heads: 9, kv_heads: 3, head_dim: 64 };
        let mut rng = StdRng::seed_from_u64(7);
        // prefill chunk (t = n), chunk after a prefix, single decode step
        for (t, n) in [(17, 17), (40, 300), (1, 513), (3, 1000), (5, 64)] {
            let q = random(&mut rng, t * 9 * 64, 2.0);
            let keys: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, n * 64, 2.0)).collect();
            let values: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, n * 64, 1.0)).collect();
            let kv: Vec<KvView> = keys.iter().zip(&values).map(|(k, v)| KvView { keys: k, values: v }).collect();
            let mut out = vec![0.0; t * 9 * 64];
            attend(shape, Queries::new(&q, 9 * 64, t), &kv, &mut out);
            let err = relative_error(&out, &naive(shape, &q, t, &kv));
            assert!(err <= 1e-5, "t={t} n={n}: relative error {err}");
        }
    }

    #[test]
    fn a_sliding_window_matches_the_naive_reference_and_cuts_nothing_it_need_not() {
        let mut rng = StdRng::seed_from_u64(11);
        // Gemma 3's shape (4 heads over one kv head of 256) and a llama-like one
        for shape in [Heads { heads: 4, kv_heads: 1, head_dim: 256 }, Heads { heads: 6, kv_heads: 2, head_dim: 64 }] {
            let Heads { heads, kv_heads, head_dim: d } = shape;
            // (entries held, new rows, window): chunks past the window, at its edge, decode steps
            for (n, t, window) in
                [(300, 200, 64), (700, 512, 512), (512, 512, 512), (513, 1, 512), (90, 3, 7), (40, 4, 64)]
            {
                let q = random(&mut rng, t * heads * d, 1.0);
                let keys: Vec<Vec<f32>> = (0..kv_heads).map(|_| random(&mut rng, n * d, 1.0)).collect();
                let values: Vec<Vec<f32>> = (0..kv_heads).map(|_| random(&mut rng, n * d, 1.0)).collect();
                let kv: Vec<KvView<'_>> =
                    keys.iter().zip(&values).map(|(k, v)| KvView { keys: k, values: v }).collect();
                let want = naive_window(shape, &q, t, &kv, window);
                let mut got = vec![0.0f32; t * heads * d];
                let mut mass = vec![vec![0.0f32; n]; kv_heads];
                attend_window(shape, Queries::new(&q, heads * d, t), &kv, &mut got, Some(&mut mass), window);
                assert!(relative_error(&got, &want) < 1e-5, "{shape:?} n {n} t {t} window {window}");
                // every row's probabilities sum to one over its window, and nothing before it
                let group = heads / kv_heads;
                for (g, m) in mass.iter().enumerate() {
                    let total: f32 = m.iter().sum();
                    assert!((total - (t * group) as f32).abs() < 1e-3 * (t * group) as f32, "kv head {g}: {total}");
                    let first_seen = (n - t + 1).saturating_sub(window);
                    assert!(m[..first_seen].iter().all(|&x| x == 0.0), "mass before every row's window");
                }
                if n <= window {
                    let mut plain = vec![0.0f32; t * heads * d];
                    attend(shape, Queries::new(&q, heads * d, t), &kv, &mut plain);
                    assert_eq!(plain, got, "a window that cuts nothing gives the unwindowed bits");
                }
            }
        }
    }

    #[test]
    fn row_blocks_give_the_bits_of_the_whole_chunk() {
        let mut rng = StdRng::seed_from_u64(11);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (t, n) in [(512, 512), (512, 1100), (300, 300), (130, 900), (5, 9)] {
            let q = random(&mut rng, t * 3 * 64, 4.0);
            let keys = random(&mut rng, n * 64, 4.0);
            let values = random(&mut rng, n * 64, 1.0);
            let view = KvView { keys: &keys, values: &values };
            let queries = Queries::new(&q, 3 * 64, t);
            // one block of all rows over all keys: the products of the unblocked chunk
            let (whole, whole_sums) = chunk_head(queries, 1, 64, view, 0.125, true, t, None);
            for block in [ROW_BLOCK, 64, 7, 1] {
                let (o, sums) = chunk_head(queries, 1, 64, view, 0.125, true, block, None);
                assert_eq!(bits(&o), bits(&whole), "t={t} n={n} block={block}: output");
                assert_eq!(bits(&sums.unwrap()), bits(whole_sums.as_ref().unwrap()), "t={t} n={n} block={block}: mass");
            }
        }
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_std() {
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 2.5e-7 * want, "exp({x}) = {got}, std {want}");
        }
    }

    #[test]
    fn exponent_bits_match_the_integer_conversion() {
        for i in 0..=2_000_000 {
            let x = -87.0 * i as f32 / 2_000_000.0;
            let k = (x * std::f32::consts::LOG2_E).round();
            let by_int = ((k as i32 + 127) as u32) << 23;
            assert_eq!((k + (127.0 + 8_388_608.0)).to_bits() << 23, by_int, "k = {k}");
        }
    }

    #[test]
    fn first_query_of_a_prompt_returns_its_own_value() {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 4 };
        let q = vec![1.0; 2 * 8];
        let keys = vec![0.5; 2 * 4];
        let values = vec![1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0];
        let mut out = vec![0.0; 2 * 8];
        attend(shape, Queries::new(&q, 8, 2), &[KvView { keys: &keys, values: &values }], &mut out);
        assert_eq!(&out[..4], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&out[4..8], &[1.0, 2.0, 3.0, 4.0]);
        // second query sees both tokens with equal scores: the mean
        assert_eq!(&out[8..12], &[5.0, 5.5, 6.0, 6.5]);
    }
}
