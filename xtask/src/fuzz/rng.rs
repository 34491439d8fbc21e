//! The fuzzer's deterministic PRNG: the tasks' splitmix64 (tiny, fast, and every seed gives a
//! good stream), with the draws the mutators need.

/// A splitmix64 generator.
#[derive(Debug, Clone)]
pub struct Rng(kvbench::tasks::rng::Rng);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(kvbench::tasks::rng::Rng::from_state(seed ^ 0x5851_f42d_4c95_7f2d))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { ((u128::from(self.next_u64()) * n as u128) >> 64) as usize }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// One of `items` (which must not be empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length in `1..=max`, small ones far more likely (log-uniform).
    pub fn small_len(&mut self, max: usize) -> usize {
        let max = max.max(1);
        let bits = usize::BITS - max.leading_zeros();
        let cap = 1usize << self.below(bits as usize + 1).min(bits as usize);
        1 + self.below(cap.min(max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let n = a.below(10);
            assert!(n < 10 && b.below(10) == n);
            let l = a.small_len(300);
            assert!((1..=300).contains(&l) && b.small_len(300) == l);
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
