//! The tasks' only source of randomness: SplitMix64 (Steele, Lea and Flood 2014), seeded from the
//! task's name and the seed, so that a sample is a pure function of its arguments on every
//! platform (no dependency on `rand`'s algorithms, which may change between versions).

use super::Task;

/// SplitMix64, seeded from the task's name and the seed: the only source of randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `(task, seed)`.
    pub fn new(task: Task, seed: u64) -> Self {
        // FNV-1a of the name, so that tasks with the same seed draw differently.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in task.name().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// A generator from a raw 64-bit state (the fuzzer's; the tasks seed with [`Rng::new`]).
    pub fn from_state(state: u64) -> Self {
        Rng(state)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }

    /// A random `digits`-digit number without a leading zero, as text.
    pub fn number(&mut self, digits: u32) -> String {
        let low = 10u64.pow(digits - 1);
        (low + self.below((9 * low) as usize) as u64).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_task_dependent() {
        let draw = |t, s| {
            let mut r = Rng::new(t, s);
            (0..4).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(Task::Code, 7), draw(Task::Code, 7));
        assert_ne!(draw(Task::Code, 7), draw(Task::Code, 8));
        assert_ne!(draw(Task::Code, 7), draw(Task::Needle, 7));
        let mut r = Rng::new(Task::Needle, 1);
        assert!((0..1000).all(|_| r.number(7).len() == 7));
    }
}
