//! The cache of a sliding-window layer (Gemma 3's local layers): the architecture's, not a
//! method's. It holds the last `window − 1` tokens between calls, so that the next token's query,
//! which sees itself and the `window − 1` before it, finds exactly those; a prefill chunk of `t`
//! tokens is appended whole, each of its queries attends over its own window
//! ([`attention::attend_window`]), and the store then drops what no later query can see.
//!
//! Keys and values stay in fp32 (the precision the runtime computes in), so what it holds is at
//! most `(window − 1 + chunk) · kv_heads · head_dim · 2 · 4` bytes during a prefill chunk and
//! `(window − 1)` tokens' worth after it, whatever the context.

use crate::kv::LayerStore;
use crate::kv::attention::{self, Heads, KvView, Queries};
use crate::kv::prefill::append_head_major;

/// Keys and values of the last tokens, per kv head (`[tokens, head_dim]` each).
#[derive(Debug, Clone)]
pub struct SlidingStore {
    shape: Heads,
    window: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Tokens the last [`LayerStore::attend`] read (per kv head, before the trim).
    last_read: usize,
}

impl SlidingStore {
    /// An empty store whose queries see `window` tokens, their own included.
    ///
    /// # Panics
    /// If `window` is 0.
    pub fn new(shape: Heads, window: usize) -> Self {
        assert!(window >= 1, "a sliding window holds at least the query's own token");
        Self {
            shape,
            window,
            keys: vec![Vec::new(); shape.kv_heads],
            values: vec![Vec::new(); shape.kv_heads],
            last_read: 0,
        }
    }

    /// The window.
    pub fn window(&self) -> usize {
        self.window
    }
}

impl LayerStore for SlidingStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        append_head_major(&mut self.keys, keys, t, self.shape.head_dim);
        append_head_major(&mut self.values, values, t, self.shape.head_dim);
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        let views: Vec<KvView> =
            self.keys.iter().zip(&self.values).map(|(k, v)| KvView { keys: k, values: v }).collect();
        attention::attend_window(self.shape, Queries::new(q, q_stride, t), &views, out, None, self.window);
        let d = self.shape.head_dim;
        let n = self.tokens();
        // the rows read: from the first query's window on, to the last token
        self.last_read = n - (n - t + 1).saturating_sub(self.window);
        let drop = n.saturating_sub(self.window - 1) * d;
        for head in self.keys.iter_mut().chain(&mut self.values) {
            head.drain(..drop);
        }
    }

    fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|h| h.len() * size_of::<f32>()).sum()
    }

    fn bytes_read(&self) -> usize {
        self.last_read * self.shape.kv_heads * self.shape.head_dim * 2 * size_of::<f32>()
    }

    fn tokens(&self) -> usize {
        self.keys[0].len() / self.shape.head_dim
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }

    fn window(&self) -> Option<usize> {
        Some(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::attention::naive_window;

    #[test]
    fn chunks_and_steps_see_the_window_a_whole_history_would_give() {
        let shape = Heads { heads: 4, kv_heads: 1, head_dim: 16 };
        let (w, width, qw) = (24, 16, 64);
        let total = 100;
        let noise = |seed: usize, len: usize| -> Vec<f32> {
            (0..len).map(|i| (((i + seed) * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect()
        };
        let (keys, values, queries) = (noise(1, total * width), noise(2, total * width), noise(3, total * qw));
        let mut store = SlidingStore::new(shape, w);
        // chunks of 30, 30 and 25 tokens, then 15 single steps
        let mut at = 0;
        for t in [30, 30, 25].into_iter().chain([1; 15]) {
            store.append(&keys[at * width..][..t * width], &values[at * width..][..t * width], t);
            let mut out = vec![0.0f32; t * qw];
            store.attend(&queries[at * qw..][..t * qw], qw, t, &mut out);
            // the reference: the whole history up to the chunk's end, every row windowed
            let end = at + t;
            let kv = [KvView { keys: &keys[..end * width], values: &values[..end * width] }];
            let want = naive_window(shape, &queries[at * qw..][..t * qw], t, &kv, w);
            for (g, r) in out.iter().zip(&want) {
                assert!((g - r).abs() < 1e-5, "chunk at {at}: {g} vs {r}");
            }
            assert_eq!(store.tokens(), (end).min(w - 1), "what stays after the chunk at {at}");
            at = end;
        }
        assert_eq!(store.bytes(), (w - 1) * width * 2 * 4);
        // a decode step reads its whole window
        assert_eq!(store.bytes_read(), w * width * 2 * 4);
    }
}
