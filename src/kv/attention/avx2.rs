//! The decode-step attention row ([`super::grouped_row_generic`]) written out in AVX2 for
//! 64-dimensional heads and GQA groups of up to four query heads (SmolLM2: three).
//!
//! Every product is rounded in the order the generic kernel rounds it, so the two agree bit for
//! bit (tested below); what changes is the schedule:
//! - **Scores, eight keys at a time per query head**: eight independent 8-lane FMA chains, then
//!   an 8×8 transpose so that each key's lanes are added in the generic kernel's order (lane 0,
//!   then 1, …) with eight keys per vector add, instead of a store and eight scalar adds per key.
//! - **Weighted values, half or a quarter of a row at a time**: the `G` query heads' outputs for
//!   those dimensions are `4·G` (`G ≤ 3`) or `2·G` accumulators that stay in registers across
//!   all keys, instead of being loaded and stored for every key; value rows are read from cache
//!   once per pass.

use std::arch::x86_64::*;

use half::f16;
use rayon::prelude::*;

use super::{
    EXP_BIAS, EXP_MIN, EXP_NEG_LN2_HI, EXP_NEG_LN2_LO, EXP_POLY, Heads, KvView, LANES, Queries, add_into,
    exp_nonpositive,
};

/// What a cache row is stored as: read eight at a time into f32 lanes. Widening f16 is exact,
/// so a half-precision cache attended here gives the bits of its f32 widening attended as f32,
/// without writing that widening out (an f16 store reads half the bytes of an f32 one).
pub trait Elem: Copy + Send + Sync {
    /// Eight consecutive values at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` points to eight readable values, and the CPU has AVX2 and F16C.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Elem for f32 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
}

impl Elem for f16 {
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the caller's contract; f16 is 16 bits (repr transparent), so eight are 128 bits.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

/// Head dimension this kernel is written for.
pub const HEAD_DIM: usize = 64;
/// Largest group it handles.
pub const MAX_GROUP: usize = 4;
/// 8-lane chunks per head row.
const CHUNKS: usize = HEAD_DIM / LANES;
/// Keys scored per step (one register each).
const KEYS: usize = 8;
/// 8-lane chunks of the output per weighing task (`2·G` accumulators in registers).
const PART: usize = 2;

/// Same contract as [`super::attend_rows`] with `d = 64` and groups of at most four, and the
/// same bits, in two parallel phases so that two threads share the work evenly whatever the
/// number of kv heads: first one task per query head and row (scores, softmax), then one per kv
/// head, row and quarter of the output dimensions (the probability-weighted values).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn attend_rows<E: Elem>(
    shape: Heads,
    q: Queries<'_>,
    kv: &[KvView<'_, E>],
    out: &mut [f32],
    mass: Option<&mut [Vec<f32>]>,
) {
    let Heads { heads, kv_heads, head_dim: d } = shape;
    let t = q.rows;
    let (n, group, scale) = (kv[0].keys.len() / d, heads / kv_heads, 1.0 / (d as f32).sqrt());
    assert!(d == HEAD_DIM && (1..=MAX_GROUP).contains(&group));
    // row (g, j, r): query head g·group + r of query row j, over the first n − t + j + 1 keys
    let rows: Vec<(usize, usize, usize)> =
        (0..kv_heads).flat_map(|g| (0..t).flat_map(move |j| (0..group).map(move |r| (g, j, r)))).collect();
    let probs: Vec<Vec<f32>> = rows
        .par_iter()
        .map(|&(g, j, r)| {
            let mut row = vec![0.0f32; n - t + j + 1];
            score_row(q.head(j, g * group + r, d), kv[g].keys, scale, &mut row);
            let visible = row.len();
            softmax_prefix(&mut row, visible);
            row
        })
        .collect();
    let at = |g: usize, j: usize| &probs[(g * t + j) * group..][..group];
    let parts: Vec<(usize, usize, usize)> =
        (0..kv_heads).flat_map(|g| (0..t).flat_map(move |j| (0..CHUNKS / PART).map(move |p| (g, j, p)))).collect();
    let weighed: Vec<Vec<f32>> = parts
        .par_iter()
        .map(|&(g, j, part)| {
            let mut o = vec![0.0f32; group * PART * LANES];
            match group {
                1 => weigh_part::<1, E>(at(g, j), kv[g].values, part, &mut o),
                2 => weigh_part::<2, E>(at(g, j), kv[g].values, part, &mut o),
                3 => weigh_part::<3, E>(at(g, j), kv[g].values, part, &mut o),
                _ => weigh_part::<4, E>(at(g, j), kv[g].values, part, &mut o),
            }
            o
        })
        .collect();
    for (&(g, j, part), o) in parts.iter().zip(&weighed) {
        for (r, chunk) in o.chunks_exact(PART * LANES).enumerate() {
            out[j * heads * d + (g * group + r) * d + part * PART * LANES..][..PART * LANES].copy_from_slice(chunk);
        }
    }
    if let Some(mass) = mass {
        for (g, mass_g) in mass.iter_mut().enumerate() {
            for j in 0..t {
                for row in at(g, j) {
                    add_into(mass_g, row);
                }
            }
        }
    }
}

/// `row[i] = scale · Σ_lanes (q ⊙ k_i)`, each key's eight lane partials added in lane order.
#[target_feature(enable = "avx2,fma,f16c")]
fn score_row<E: Elem>(q: &[f32], keys: &[E], scale: f32, row: &mut [f32]) {
    assert!(q.len() >= HEAD_DIM && keys.len() >= row.len() * HEAD_DIM);
    // SAFETY (all loads and stores): offsets are inside `q` (64 values), `keys` (64 per row of
    // `row`) and `row`, as the loops bound them; the CPU features are this function's.
    let q: [__m256; CHUNKS] = std::array::from_fn(|c| unsafe { f32::load8(q.as_ptr().add(c * LANES)) });
    let dot = |i: usize| {
        let mut a = _mm256_setzero_ps();
        for (c, &qc) in q.iter().enumerate() {
            a = _mm256_fmadd_ps(qc, unsafe { E::load8(keys.as_ptr().add(i * HEAD_DIM + c * LANES)) }, a);
        }
        a
    };
    // what `[f32]::iter().sum()` starts from, so that the vector sums below match it exactly
    let start = _mm256_set1_ps(std::iter::empty::<f32>().sum());
    let whole = row.len() / KEYS * KEYS;
    let scale_v = _mm256_set1_ps(scale);
    for first in (0..whole).step_by(KEYS) {
        let acc: [__m256; KEYS] = std::array::from_fn(|u| dot(first + u));
        let lanes = transpose8(acc);
        let sum = lanes.iter().fold(start, |s, &l| _mm256_add_ps(s, l));
        unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(first), _mm256_mul_ps(sum, scale_v)) };
    }
    for (i, score) in row.iter_mut().enumerate().skip(whole) {
        let mut lanes = [0.0f32; LANES];
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), dot(i)) };
        *score = lanes.iter().sum::<f32>() * scale;
    }
}

/// [`super::softmax_prefix_generic`] with its exponentials computed eight at a time: the same
/// operations, lane by lane, in the same order (max, then `e^(x − max)` summed in eight running
/// sums added lane 0 first, then the tail, then the scaling), so the same bits for rows without
/// NaN (tested below). Left to LLVM, the generic loop came out as blends, inserts and scalar FMAs
/// (`perf annotate`): 15% of a 3,712-token prefill.
#[target_feature(enable = "avx2,fma")]
pub fn softmax_prefix(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    let whole = live.len() / LANES * LANES;
    let at = live.as_mut_ptr();
    // SAFETY (all loads and stores): offsets are below `whole` ≤ `live.len()`, eight at a time.
    let mut running = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..whole).step_by(LANES) {
        // `max(x, running)` keeps `running` when x is NaN, as `f32::max` does
        running = _mm256_max_ps(unsafe { _mm256_loadu_ps(at.add(i)) }, running);
    }
    let mut maxima = [0.0f32; LANES];
    unsafe { _mm256_storeu_ps(maxima.as_mut_ptr(), running) };
    let max = maxima.iter().chain(&live[whole..]).copied().fold(f32::NEG_INFINITY, f32::max);
    let max_v = _mm256_set1_ps(max);
    let mut sums = _mm256_setzero_ps();
    for i in (0..whole).step_by(LANES) {
        let e = exp_nonpositive8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(at.add(i)) }, max_v));
        unsafe { _mm256_storeu_ps(at.add(i), e) };
        sums = _mm256_add_ps(sums, e);
    }
    let mut lanes = [0.0f32; LANES];
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
    let mut sum: f32 = lanes.iter().sum();
    for x in &mut live[whole..] {
        *x = exp_nonpositive(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
}

/// [`super::exp_nonpositive`] on eight lanes, operation for operation.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp_nonpositive8(x: __m256) -> __m256 {
    // `max(x, c)` gives `c` for a NaN `x`, as `f32::max` does
    let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_MIN));
    let k = round_half_away(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
    let r = _mm256_fmadd_ps(k, _mm256_set1_ps(EXP_NEG_LN2_HI), x);
    let r = _mm256_fmadd_ps(k, _mm256_set1_ps(EXP_NEG_LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let er = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
    let biased = _mm256_castps_si256(_mm256_add_ps(k, _mm256_set1_ps(EXP_BIAS)));
    _mm256_mul_ps(er, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)))
}

/// `f32::round` (halves away from zero) on eight lanes, as LLVM lowers it:
/// `trunc(t + copysign(0.5⁻, t))`, where the largest float below ½ makes `n + ½` round up to
/// `n + 1` in the addition while `n + ½⁻` stays below it.
#[inline]
#[target_feature(enable = "avx2")]
fn round_half_away(t: __m256) -> __m256 {
    let below_half = _mm256_set1_ps(f32::from_bits(0x3eff_ffff));
    let signed = _mm256_or_ps(_mm256_and_ps(t, _mm256_set1_ps(-0.0)), below_half);
    _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(_mm256_add_ps(t, signed))
}

/// Rows to columns: lane `l` of output `j` is lane `j` of input `l`.
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// `out[r][c] = Σ_i probs[r][i] · v_i[c]` for the `PART` 8-lane chunks `c` of part `part`,
/// each value accumulated over `i` in order from zero, the `G` heads' `2·G` accumulators in
/// registers.
#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_part<const G: usize, E: Elem>(probs: &[Vec<f32>], values: &[E], part: usize, out: &mut [f32]) {
    let visible = probs[0].len();
    assert!(probs.len() == G && probs.iter().all(|p| p.len() == visible) && out.len() == G * PART * LANES);
    assert!(values.len() >= visible * HEAD_DIM);
    let probs: [&[f32]; G] = std::array::from_fn(|r| &probs[r][..visible]);
    let mut acc = [[_mm256_setzero_ps(); PART]; G];
    for i in 0..visible {
        // SAFETY: row `i`'s part lies inside `values` (length asserted above).
        let row = unsafe { values.as_ptr().add(i * HEAD_DIM + part * PART * LANES) };
        for (acc_r, p) in acc.iter_mut().zip(&probs) {
            let p = _mm256_set1_ps(p[i]);
            for (c, a) in acc_r.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(p, unsafe { E::load8(row.add(c * LANES)) }, *a);
            }
        }
    }
    for (chunk, a) in out.chunks_exact_mut(LANES).zip(acc.iter().flatten()) {
        // SAFETY: `chunk` holds 8 floats.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), *a) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u32, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 * 0.618 + seed as f32 * 1.7).sin() * 43_758.547).fract() * scale).collect()
    }

    /// Which of `needed` (of avx2, fma, f16c) this CPU lacks.
    fn missing<'a>(needed: &[&'a str]) -> Vec<&'a str> {
        let have = [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
        ];
        needed.iter().copied().filter(|n| !have.iter().any(|(name, yes)| name == n && *yes)).collect()
    }

    /// Whether this CPU has every one of `needed`. Without them the kernels under test are never
    /// called, so a test has nothing to check: it says so on stderr and passes, unless
    /// `KVBENCH_REQUIRE_AVX2=1` (set by `.ci/run`) makes that a failure.
    fn cpu_has(needed: &[&str]) -> bool {
        let missing = missing(needed);
        if missing.is_empty() {
            return true;
        }
        let why =
            format!("this CPU lacks {}: the kernels needing it are not used here and not tested", missing.join(", "));
        let required = crate::assets::settings::require_avx2().unwrap_or_else(|e| panic!("{e}"));
        assert!(!required, "KVBENCH_REQUIRE_AVX2=1, but {why}");
        eprintln!("skipped: {why}");
        false
    }

    #[test]
    fn missing_names_every_feature_the_cpu_lacks() {
        assert_eq!(missing(&["no-such-feature"]), ["no-such-feature"]);
        assert_eq!(missing(&[]), Vec::<&str>::new());
        let avx2 = is_x86_feature_detected!("avx2");
        assert_eq!(missing(&["avx2", "no-such-feature"]).len(), if avx2 { 1 } else { 2 });
    }

    fn check(heads: usize, kv_heads: usize) {
        if !cpu_has(&["avx2", "fma"]) {
            return;
        }
        let shape = Heads { heads, kv_heads, head_dim: HEAD_DIM };
        for (t, n) in [(1usize, 1usize), (1, 3), (1, 8), (1, 9), (2, 130), (4, 1031)] {
            let stride = heads * HEAD_DIM + 7;
            let q = noise(1, t * stride, 2.0);
            let (keys, values): (Vec<_>, Vec<_>) = (0..kv_heads)
                .map(|g| (noise(2 + g as u32, n * HEAD_DIM, 2.0), noise(9 + g as u32, n * HEAD_DIM, 1.0)))
                .unzip();
            let kv: Vec<KvView> = keys.iter().zip(&values).map(|(k, v)| KvView { keys: k, values: v }).collect();
            let (mut o1, mut o2) = (vec![0.0; t * heads * HEAD_DIM], vec![1.0; t * heads * HEAD_DIM]);
            let (mut m1, mut m2) = (vec![noise(5, n, 1.0); kv_heads], vec![noise(5, n, 1.0); kv_heads]);
            super::super::attend_rows(shape, Queries::new(&q, stride, t), &kv, &mut o1, Some(&mut m1));
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            unsafe { attend_rows(shape, Queries::new(&q, stride, t), &kv, &mut o2, Some(&mut m2)) };
            assert_eq!(bits(&o1), bits(&o2), "outputs, {heads}/{kv_heads} heads, t = {t}, n = {n}");
            assert_eq!(bits(&m1.concat()), bits(&m2.concat()), "mass, {heads}/{kv_heads} heads, t = {t}, n = {n}");
        }
    }

    #[test]
    fn half_rows_give_the_bits_of_their_f32_widening() {
        if !cpu_has(&["avx2", "fma", "f16c"]) {
            return;
        }
        let shape = Heads { heads: 9, kv_heads: 3, head_dim: HEAD_DIM };
        for (t, n) in [(1usize, 1usize), (1, 15), (3, 77), (4, 1031)] {
            let stride = 9 * HEAD_DIM;
            let q = noise(3, t * stride, 2.0);
            let half =
                |seed: u32| -> Vec<f16> { noise(seed, n * HEAD_DIM, 3.0).iter().map(|&x| f16::from_f32(x)).collect() };
            let (keys, values): (Vec<_>, Vec<_>) = (0..3).map(|g| (half(20 + g), half(30 + g))).unzip();
            let wide = |h: &Vec<f16>| h.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
            let (wide_keys, wide_values): (Vec<_>, Vec<_>) =
                keys.iter().zip(&values).map(|(k, v)| (wide(k), wide(v))).unzip();
            let kv16: Vec<KvView<f16>> = keys.iter().zip(&values).map(|(k, v)| KvView { keys: k, values: v }).collect();
            let kv32: Vec<KvView> =
                wide_keys.iter().zip(&wide_values).map(|(k, v)| KvView { keys: k, values: v }).collect();
            let (mut o1, mut o2) = (vec![0.0; t * stride], vec![1.0; t * stride]);
            let (mut m1, mut m2) = (vec![vec![0.5; n]; 3], vec![vec![0.5; n]; 3]);
            super::super::attend_observed(shape, Queries::new(&q, stride, t), &kv32, &mut o1, Some(&mut m1));
            assert!(super::super::attend_observed_half(
                shape,
                Queries::new(&q, stride, t),
                &kv16,
                &mut o2,
                Some(&mut m2)
            ));
            assert_eq!(bits(&o1), bits(&o2), "outputs, t = {t}, n = {n}");
            assert_eq!(bits(&m1.concat()), bits(&m2.concat()), "mass, t = {t}, n = {n}");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn softmax_gives_the_bits_of_the_generic_one() {
        if !cpu_has(&["avx2", "fma"]) {
            return;
        }
        for len in [1usize, 7, 8, 9, 64, 1000, 1031] {
            for visible in [1, len / 2 + 1, len] {
                // scores within ±0.1 to ±200: the last clamp e^x at −87
                for scale in [0.1f32, 3.0, 40.0, 200.0] {
                    let row = noise(len as u32 + visible as u32, len, scale);
                    let (mut want, mut got) = (row.clone(), row);
                    super::super::softmax_prefix_generic(&mut want, visible);
                    // SAFETY: the CPU supports AVX2 and FMA (checked above).
                    unsafe { softmax_prefix(&mut got, visible) };
                    assert_eq!(bits(&want), bits(&got), "len {len}, visible {visible}, scale {scale}");
                }
            }
        }
    }

    #[test]
    fn rounding_sends_halves_away_from_zero_as_f32_round_does() {
        if !cpu_has(&["avx2"]) {
            return;
        }
        let mut values = Vec::new();
        for i in -260..=260 {
            let t = i as f32 * 0.5;
            values.extend([t, f32::from_bits(t.to_bits() + 1), f32::from_bits(t.to_bits().saturating_sub(1))]);
        }
        values.extend([0.0, -0.0, 0.499_999_97, -0.499_999_97, 8_388_607.5, -8_388_607.5, 1e9]);
        for chunk in values.chunks(LANES) {
            let mut lanes = [0.0f32; LANES];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut out = [0.0f32; LANES];
            // SAFETY: the CPU supports AVX2 (checked above); both arrays hold eight floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), round_half_away(_mm256_loadu_ps(lanes.as_ptr()))) };
            let want: Vec<f32> = lanes.iter().map(|x| x.round()).collect();
            assert_eq!(bits(&want), bits(&out), "{lanes:?}");
        }
    }

    #[test]
    fn bit_identical_to_the_generic_kernel() {
        check(2, 2);
        check(4, 2);
        check(9, 3);
        check(8, 2);
    }
}
