//! The normalized Walsh–Hadamard transform `H / √n` (orthogonal, symmetric, its own inverse),
//! applied per head before quantizing a cache, as llama.cpp does for quantized K/V caches: `q`
//! and `k` are rotated (`(Hq)·(Hk) = q·k`), `v` is rotated before it is stored and the attention
//! output is rotated back (`H Σ pᵢ H vᵢ = Σ pᵢ vᵢ`). Rotation spreads outlier channels over the
//! whole head, so a block's scale is set by typical values rather than by one outlier.

/// Rotate every `n`-value row of `x` in place (`n` a power of two), in `n log n` additions.
pub fn rotate_rows(x: &mut [f32], n: usize) {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n), "rows of a power-of-two length");
    let norm = 1.0 / (n as f32).sqrt();
    for row in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for block in row.chunks_exact_mut(2 * h) {
                let (a, b) = block.split_at_mut(h);
                for (x, y) in a.iter_mut().zip(b) {
                    (*x, *y) = (*x + *y, *x - *y);
                }
            }
            h *= 2;
        }
        row.iter_mut().for_each(|v| *v *= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_orthogonal_and_its_own_inverse() {
        let n = 64;
        let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
        let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.7).collect();
        let (mut ra, mut rb) = (a.clone(), b.clone());
        rotate_rows(&mut ra, n);
        rotate_rows(&mut rb, n);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        assert!((dot(&a, &b) - dot(&ra, &rb)).abs() < 1e-4);
        rotate_rows(&mut ra, n);
        for (x, y) in a.iter().zip(&ra) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn spreads_a_spike_evenly() {
        let mut x = vec![0.0f32; 64];
        x[5] = 8.0;
        rotate_rows(&mut x, 64);
        assert!(x.iter().all(|v| (v.abs() - 1.0).abs() < 1e-6));
    }
}
