//! Parallel products by weight row, shared by the quantized-linear operators.
//!
//! `Q8Linear` and `Q4Linear` both compute `out[m, n] = x[m, k] · Wᵀ` by reading each of the `n`
//! weight rows once and dotting it with all `m` input rows. This splits the weight rows into
//! tasks on rayon's pool, gathers each task's `[rows, m]` tile and writes it transposed into the
//! row-major `[m, n]` output.

use rayon::prelude::*;

/// Fill `out` (`[m, n]`, row-major) task by task: `block(rows, tile)` writes the `m` dot
/// products of each weight row in `rows` into consecutive `m`-value runs of `tile`.
pub fn by_weight_row_blocks(
    n: usize,
    m: usize,
    rows_per_task: usize,
    out: &mut [f32],
    block: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    assert_eq!(out.len(), n * m, "the output holds m rows of n");
    let rows_of = |task: usize| task * rows_per_task..((task + 1) * rows_per_task).min(n);
    if m == 1 {
        // one input row (a decode step): a task's tile is its stretch of the output
        out.par_chunks_mut(rows_per_task).enumerate().for_each(|(task, tile)| block(rows_of(task), tile));
        return;
    }
    let tiles: Vec<Vec<f32>> = (0..n.div_ceil(rows_per_task))
        .into_par_iter()
        .map(|task| {
            let rows = rows_of(task);
            let mut tile = vec![0.0f32; rows.len() * m];
            block(rows, &mut tile);
            tile
        })
        .collect();
    // transpose into `out` a band of input rows at a time: each tile row is read once per band
    // and each band's output rows are written front to back (column by column, the writes of a
    // prompt chunk's head had strided through 100 MB)
    out.par_chunks_mut(BAND * n).enumerate().for_each(|(b, band)| {
        let js = b * BAND..b * BAND + band.len() / n;
        for (task, tile) in tiles.iter().enumerate() {
            for (i, dots) in tile.chunks_exact(m).enumerate() {
                for (jj, &val) in dots[js.clone()].iter().enumerate() {
                    band[jj * n + task * rows_per_task + i] = val;
                }
            }
        }
    });
}

/// Input rows per band of the transposition: a 64-byte line of a tile row.
const BAND: usize = 16;

#[cfg(test)]
mod tests {
    /// `out[j, r] = 10 j + r` through [`super::by_weight_row_blocks`], one weight row at a time.
    fn fill(n: usize, m: usize, rows_per_task: usize) -> Vec<f32> {
        let mut out = vec![0.0; n * m];
        super::by_weight_row_blocks(n, m, rows_per_task, &mut out, |rows, tile| {
            for (dots, r) in tile.chunks_exact_mut(m).zip(rows) {
                for (j, d) in dots.iter_mut().enumerate() {
                    *d = (10 * j + r) as f32;
                }
            }
        });
        out
    }

    #[test]
    fn one_input_row_fills_the_output_in_place() {
        assert_eq!(fill(5, 1, 2), [0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn output_is_row_major_over_inputs() {
        // 2 input rows and 5 weight rows, tasks of 2 rows
        assert_eq!(fill(5, 2, 2), [0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, 13.0, 14.0]);
        // 37 input rows: two whole bands of the transposition and a short one
        let (n, m) = (5, 37);
        let want: Vec<f32> = (0..m).flat_map(|j| (0..n).map(move |r| (10 * j + r) as f32)).collect();
        assert_eq!(fill(n, m, 2), want);
    }
}
