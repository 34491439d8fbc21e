//! The seam every KV-cache method fills.
//!
//! A [`Method`] is a validated configuration (`Send + Sync`, shared by every sequence); per
//! sequence and layer it makes a [`LayerStore`], the storage that decides what is kept and how
//! (full precision, packed codes plus scales, a subset of tokens). The attention kernel talks
//! only to `LayerStore`, so a method owns both its bytes and how attention reads them.
//!
//! Methods act at one of three moments ([`Acts`]):
//! - **during prefill** (llama.cpp cache types, FlexGen, StreamingLLM, InfLLM): their store is
//!   used from the first token, so prefill attention already sees what they keep;
//! - **after prefill** (KIVI, SnapKV, PyramidKV, H2O, TOVA, Knorm, Quest): prefill runs on the
//!   full-precision [`FullStore`], which also records what these methods score tokens by;
//!   [`Method::after_prefill`] then turns it into the method's store. This is what lets the
//!   benchmark prefill a sample once and replay it through every such method;
//! - **before prefill** (prompt compression): the method picks prompt tokens, see
//!   [`Method::prompt_budget`]; the cache itself is a plain store.

use std::fmt;

use super::attention::Heads;
use super::prefill::FullStore;

/// When a method changes the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acts {
    /// Before prefill, on the prompt's tokens.
    BeforePrefill,
    /// From the first prefill chunk on.
    DuringPrefill,
    /// Once the prompt (or, query-agnostic, the context) has been prefilled in full precision.
    AfterPrefill,
}

/// What a store is made for: the layer, the model's shape, and how many tokens the method
/// compresses (the prompt, or the context alone when running query-agnostic).
#[derive(Debug, Clone, Copy)]
pub struct StoreContext {
    /// Layer index.
    pub layer: usize,
    /// Number of layers of the model.
    pub layers: usize,
    /// Attention shape.
    pub shape: Heads,
    /// Tokens the method's budget is relative to.
    pub compressed_tokens: usize,
    /// The model's RoPE frequency base (keys arrive rotated; a method that re-positions them
    /// needs it).
    pub rope_base: f32,
}

/// A KV-cache method: what is stored, how, and how attention reads it.
pub trait Method: Send + Sync + fmt::Debug {
    /// The name used on the command line and in trial names (`full`, `kivi-2bit`, `h2o-4x`).
    fn name(&self) -> String;

    /// Every setting with its value, for result files and golden snapshots.
    fn settings(&self) -> serde_json::Value;

    /// The nominal compression ratio against an fp16 cache (16 over bits per value for
    /// quantizers, the ratio of `-4x` names for token methods, 1 for the full cache); `None` for
    /// an absolute token budget, whose ratio depends on the prompt.
    fn nominal_ratio(&self) -> Option<f64>;

    /// When the method acts.
    fn acts(&self) -> Acts;

    /// Fresh, empty storage for one layer of one sequence. Methods acting after prefill are
    /// given a [`FullStore`] by the cache instead, and need not override this.
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(FullStore::new(ctx.shape))
    }

    /// Turn a layer's full-precision prefill into this method's store ([`Acts::AfterPrefill`]).
    fn after_prefill(&self, _ctx: &StoreContext, _prefill: &FullStore) -> Option<Box<dyn LayerStore>> {
        None
    }

    /// For prompt compression: how many of `context` tokens to keep, and in what units they are
    /// kept or dropped.
    fn prompt_budget(&self, _context: usize) -> Option<PromptBudget> {
        None
    }
}

/// What a prompt compressor keeps of the context ([`Method::prompt_budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptBudget {
    /// Context tokens to keep (forced tokens count towards it and are kept even past it).
    pub tokens: usize,
    /// Whether tokens are kept one by one or whole words at a time.
    pub granularity: Granularity,
}

/// The unit a prompt compressor keeps or drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Each token on its own (LLMLingua's original criterion).
    Token,
    /// Whole words: a word's tokens stay or go together (LLMLingua-2's).
    Word,
}

/// One layer's cache for one sequence.
pub trait LayerStore: Send + Sync + fmt::Debug {
    /// Take a chunk of `t` new tokens' post-RoPE keys and values, each `[t, kv_heads · head_dim]`
    /// row-major, in position order.
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize);

    /// Attend the `t` most recently appended tokens' queries (`t` rows of stride `q_stride`, each
    /// starting with `heads · head_dim` post-RoPE values) to what is kept; write `[t, heads · head_dim]`.
    /// A method that evicts during decode does so here, after attending.
    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]);

    /// Bytes this store really holds now: codes, scales, residuals, indices.
    fn bytes(&self) -> usize;

    /// Bytes the last [`Self::attend`] read (retrieval methods read a subset of what they hold).
    fn bytes_read(&self) -> usize {
        self.bytes()
    }

    /// Positions of the tokens kv head `g`'s last [`Self::attend`] read, where the method reads a
    /// subset; `None` when it reads every token it was given (the quantizers).
    fn visible(&self, _g: usize) -> Option<Vec<u32>> {
        None
    }

    /// Tokens held (per kv head).
    fn tokens(&self) -> usize;

    /// A deep copy, for snapshots taken after prefill.
    fn clone_box(&self) -> Box<dyn LayerStore>;

    /// The full-precision prefill store, if this is one.
    fn as_prefill(&self) -> Option<&FullStore> {
        None
    }
}

impl Clone for Box<dyn LayerStore> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}
