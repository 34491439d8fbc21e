//! The seam every KV-cache method fills.
//!
//! A [`Method`] is a validated configuration (`Send + Sync`, shared by every sequence); per
//! sequence and layer it makes a [`LayerStore`], the storage that decides what is kept and how
//! (full precision, packed codes plus scales, a subset of tokens). The attention kernel talks
//! only to `LayerStore`, so a method owns both its bytes and how attention reads them.
//!
//! Required are the few things every method must define; the hooks that only some methods need
//! (end of prefill for KIVI and SnapKV) have do-nothing defaults.

use std::fmt;

use super::attention::Heads;

/// A KV-cache method: what is stored, how, and how attention reads it.
pub trait Method: Send + Sync + fmt::Debug {
    /// The name used on the command line and in trial names (`full`, `kivi-2bit`, `h2o-4x`).
    fn name(&self) -> String;

    /// Fresh, empty storage for layer `layer` of one sequence.
    fn layer_store(&self, layer: usize, shape: Heads) -> Box<dyn LayerStore>;
}

/// One layer's cache for one sequence.
pub trait LayerStore: Send + fmt::Debug {
    /// Take a chunk of `t` new tokens' post-RoPE keys and values, each `[t, kv_heads · head_dim]`
    /// row-major, in position order.
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize);

    /// Attend the `t` most recently appended tokens' queries (`t` rows of stride `q_stride`, each
    /// starting with `heads · head_dim` post-RoPE values) to what is kept; write `[t, heads · head_dim]`.
    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]);

    /// Bytes this store really holds now: codes, scales, residuals, indices.
    fn bytes(&self) -> usize;

    /// Tokens held.
    fn tokens(&self) -> usize;

    /// A deep copy, for snapshots taken after prefill.
    fn clone_box(&self) -> Box<dyn LayerStore>;

    /// Called once when the prompt's prefill is complete, before the first decode step.
    fn end_prefill(&mut self) {}
}

impl Clone for Box<dyn LayerStore> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}
