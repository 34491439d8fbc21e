//! LongBench's truncation rule, in tokens: a sequence over the limit keeps its first and last
//! halves (`tokens[:half] + tokens[-half:]` with `half = max_length // 2`).
//!
//! kvbench applies it to the document part of a prompt only (never to the template, the
//! instruction or the question), so that every method sees the same ids and the question is never
//! cut. LongBench truncates the whole prompt; for its prompts, whose question is at the end, the
//! effect is the same whenever the question fits in the last half.

/// Keep the first `max / 2` and the last `max - max / 2` tokens of `ids` when it is longer than
/// `max` (for odd `max` the extra token goes to the end; LongBench drops it).
pub fn middle(ids: &[u32], max: usize) -> Vec<u32> {
    if ids.len() <= max {
        return ids.to_vec();
    }
    let head = max / 2;
    let tail = max - head;
    let mut out = Vec::with_capacity(max);
    out.extend_from_slice(&ids[..head]);
    out.extend_from_slice(&ids[ids.len() - tail..]);
    out
}

#[cfg(test)]
mod tests {
    use super::middle;

    #[test]
    fn keeps_first_and_last_halves() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(middle(&ids, 4), [0, 1, 8, 9]);
        assert_eq!(middle(&ids, 5), [0, 1, 7, 8, 9]);
        assert_eq!(middle(&ids, 10), ids);
        assert_eq!(middle(&ids, 0), Vec::<u32>::new());
    }
}
