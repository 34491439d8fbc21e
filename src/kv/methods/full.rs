//! `full`: the uncompressed cache, every key and value of every token in fp32.
//!
//! The baseline of every comparison (the study's "full cache"). Stored as fp32, the precision the
//! runtime computes in, so the reference answer is the model's own; its measured ratio against
//! an fp16 cache is therefore 0.5, and is reported as such rather than rounded to 1.

use crate::kv::attention::{self, Heads, KvView};
use crate::kv::{LayerStore, Method};

/// The full-precision cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Full;

impl Method for Full {
    fn name(&self) -> String {
        "full".into()
    }

    fn layer_store(&self, _layer: usize, shape: Heads) -> Box<dyn LayerStore> {
        Box::new(FullStore::new(shape))
    }
}

/// Keys and values per kv head, `[tokens, head_dim]` each.
#[derive(Debug, Clone)]
pub struct FullStore {
    shape: Heads,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl FullStore {
    /// Empty storage.
    pub fn new(shape: Heads) -> Self {
        Self { shape, keys: vec![Vec::new(); shape.kv_heads], values: vec![Vec::new(); shape.kv_heads] }
    }

    /// Key/value views for the attention kernel.
    pub fn views(&self) -> Vec<KvView<'_>> {
        self.keys.iter().zip(&self.values).map(|(k, v)| KvView { keys: k, values: v }).collect()
    }
}

impl LayerStore for FullStore {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        append_head_major(&mut self.keys, keys, t, self.shape.head_dim);
        append_head_major(&mut self.values, values, t, self.shape.head_dim);
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        attention::attend(self.shape, q, q_stride, t, &self.views(), out);
    }

    fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|h| h.len() * size_of::<f32>()).sum()
    }

    fn tokens(&self) -> usize {
        self.keys[0].len() / self.shape.head_dim
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(self.clone())
    }
}

/// Scatter `t` token-major rows of `heads.len() · d` values onto per-head vectors.
pub fn append_head_major(heads: &mut [Vec<f32>], rows: &[f32], t: usize, d: usize) {
    let width = heads.len() * d;
    for (g, head) in heads.iter_mut().enumerate() {
        head.reserve(t * d);
        for row in rows.chunks_exact(width).take(t) {
            head.extend_from_slice(&row[g * d..][..d]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_splits_rows_by_head_and_counts_bytes() {
        let shape = Heads { heads: 4, kv_heads: 2, head_dim: 2 };
        let mut store = FullStore::new(shape);
        // two tokens, rows [h0d0 h0d1 h1d0 h1d1]
        let k = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        store.append(&k, &k, 2);
        assert_eq!(store.keys[0], [1.0, 2.0, 5.0, 6.0]);
        assert_eq!(store.keys[1], [3.0, 4.0, 7.0, 8.0]);
        assert_eq!(store.tokens(), 2);
        assert_eq!(store.bytes(), 2 * 8 * 4);
    }
}
