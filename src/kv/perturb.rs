//! A benign numeric change, to measure the golden gate (feature `perturb`, never shipped): the
//! last mantissa bit of attention outputs is flipped, every one (`KVBENCH_PERTURB=all`) or each
//! with probability ½ by a hash of the seed, layer, position and channel (`KVBENCH_PERTURB=N`).
//! An output changes by one unit in the last place, far less than any method's effect.

use std::sync::OnceLock;

/// Flip the last bit of `out` (rows of one position each, `positions`) as the setting says.
pub fn apply(out: &mut [f32], layer: usize, positions: &[i64]) {
    static SEED: OnceLock<Option<u64>> = OnceLock::new();
    let Some(seed) = *SEED.get_or_init(|| crate::assets::settings::perturb().unwrap_or_else(|e| panic!("{e}"))) else {
        return;
    };
    let width = out.len() / positions.len().max(1);
    for (row, &pos) in out.chunks_exact_mut(width.max(1)).zip(positions) {
        for (c, x) in row.iter_mut().enumerate() {
            if seed == u64::MAX || mix(seed ^ ((layer as u64) << 48) ^ ((pos as u64) << 20) ^ c as u64) & 1 == 1 {
                *x = f32::from_bits(x.to_bits() ^ 1);
            }
        }
    }
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
