//! The seam every KV-cache method fills.
//!
//! A [`Method`] is a validated configuration (`Send + Sync`, shared by every sequence); per
//! sequence and layer it makes a [`LayerStore`], the storage that decides what is kept and how
//! (full precision, packed codes plus scales, a subset of tokens). The attention kernel talks
//! only to `LayerStore`, so a method owns both its bytes and how attention reads them.
//!
//! A method declares when it acts as a [`Phase`], which carries the one hook that moment needs:
//! - **during prefill** (llama.cpp cache types, FlexGen, StreamingLLM, InfLLM): a
//!   [`StoreFactory`], whose store is used from the first token, so prefill attention already
//!   sees what it keeps;
//! - **after prefill** (KIVI, the one-shot selections, H2O, TOVA, Quest, and `full`): a
//!   [`PrefillCompressor`], which turns the full-precision prefill ([`FullStore`],
//!   `kv/prefill.rs`) into the method's store;
//! - **before prefill** (prompt compression): a [`PromptCompressor`], which says how much of the
//!   prompt to keep; the cache itself is a plain store.

use std::fmt;

use super::attention::Heads;
use super::prefill::FullStore;
use super::rowcode::RowCode;

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
pub struct StoreContext<'a> {
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
    /// And which channels RoPE pairs (adjacent for llama's GGUF weights, halves for Gemma 3).
    pub rope_style: crate::kv::rope::Style,
    /// The layer's attention output projection, where the model's runtime (or a probe replay's
    /// caller) gave it: CriticalKV weighs values by it.
    pub out_proj: Option<&'a super::out_proj::OutProjection>,
    /// Every compressed layer's kv-head scores, for a method that decides across layers
    /// ([`PrefillCompressor::head_scores`]; DuoAttention ranks heads model-wide): set while its
    /// layers are compressed, `None` otherwise.
    pub head_scores: Option<&'a HeadScores>,
}

#[cfg(test)]
impl StoreContext<'static> {
    /// A one-layer model's context with llama's RoPE (base 10,000, adjacent pairs), for unit tests.
    pub(crate) fn for_tests(shape: Heads, compressed_tokens: usize) -> Self {
        Self {
            layer: 0,
            layers: 1,
            shape,
            compressed_tokens,
            rope_base: 10_000.0,
            rope_style: crate::kv::rope::Style::Adjacent,
            out_proj: None,
            head_scores: None,
        }
    }
}

/// A KV-cache method: what is stored, how, and how attention reads it.
pub trait Method: Send + Sync + fmt::Debug {
    /// The name used on the command line and in trial names (`full`, `kivi-2bit`, `h2o-4x`).
    fn name(&self) -> String;

    /// The method's identity, for result files and golden snapshots (which compare it exactly):
    /// every setting as a number, a bool, or a short choice without spaces (`"per-kv-head"`),
    /// nested at most in objects and lists. No prose: a reworded explanation must not fail a
    /// golden snapshot, so that goes in [`Self::description`]. (The registry's invariant tests
    /// hold every method to this.)
    fn settings(&self) -> serde_json::Value;

    /// What the method does, in a sentence for people (result files and `--method help`).
    fn description(&self) -> String;

    /// The nominal compression ratio against an fp16 cache (16 over bits per value for
    /// quantizers, the ratio of `-4x` names for token methods, 1 for the full cache); `None` for
    /// an absolute token budget, whose ratio depends on the prompt.
    fn nominal_ratio(&self) -> Option<f64>;

    /// When the method acts, with the one hook that moment needs.
    fn phase(&self) -> Phase<'_>;

    /// Whether it can run on heads of this shape, or why not (checked when a cache is made, before
    /// any prefill): by default, whether its row code (if it has one) codes rows of this head size.
    fn supports(&self, shape: Heads) -> Result<(), String> {
        self.row_code().map_or(Ok(()), |code| code.supports(shape.head_dim))
    }

    /// How it codes one token's row, for a quantizer that can store a token method's kept rows
    /// (`snapkv-4x+q4_0-rot`, [`crate::kv::methods::compose`]) and for such a composition (its
    /// quantizer's); `None` for every other method. A sliding-window layer's window is held in
    /// it ([`crate::kv::sliding`]).
    fn row_code(&self) -> Option<RowCode> {
        None
    }
}

/// When a method acts, and what it supplies for it: declaring a phase without its hook does not
/// compile, and no hook exists outside its phase.
#[derive(Clone, Copy)]
pub enum Phase<'a> {
    /// Prompt compression: it keeps part of the prompt before prefill; its cache is a plain store.
    BeforePrefill(&'a dyn PromptCompressor),
    /// Its store is used from the first prefill chunk on, so prefill attention already sees what
    /// it keeps.
    DuringPrefill(&'a dyn StoreFactory),
    /// Prefill runs on the full-precision [`FullStore`], which also records what these methods
    /// score tokens by; it compresses each layer's when prefill ends. This is what lets the
    /// benchmark prefill a sample once and replay it through every such method.
    AfterPrefill(&'a dyn PrefillCompressor),
}

/// A method's storage from the first prefill chunk on ([`Phase::DuringPrefill`]).
pub trait StoreFactory: Send + Sync {
    /// Fresh, empty storage for one layer of one sequence.
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore>;
}

/// What a method acting after prefill does to a layer's full-precision prefill.
pub trait PrefillCompressor: Send + Sync {
    /// The layer's store from its prefill.
    fn compress(&self, ctx: &StoreContext, prefill: &FullStore) -> Compressed;

    /// A score per kv head of this layer, for a method whose choice in one layer depends on every
    /// layer's heads (DuoAttention's model-wide head roles): every compressed layer is scored
    /// first, then [`Self::compress`] reads them all in [`StoreContext::head_scores`]. `None`
    /// (the default) for a method that decides layer by layer.
    fn head_scores(&self, _ctx: &StoreContext, _prefill: &FullStore) -> Option<Vec<f32>> {
        None
    }
}

/// The kv-head scores of every layer a method compresses ([`PrefillCompressor::head_scores`]),
/// by model layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadScores(pub Vec<(usize, Vec<f32>)>);

impl HeadScores {
    /// Every (layer, kv head, score), in layer then head order.
    pub fn all(&self) -> impl Iterator<Item = (usize, usize, f32)> + '_ {
        self.0.iter().flat_map(|(l, s)| s.iter().enumerate().map(move |(g, &x)| (*l, g, x)))
    }
}

/// A layer's store after prefill ([`PrefillCompressor::compress`]).
#[derive(Debug)]
pub enum Compressed {
    /// The prefill store itself, as it is (the full cache).
    Keep,
    /// A store of the method's own.
    Into(Box<dyn LayerStore>),
}

/// A prompt compressor ([`Phase::BeforePrefill`]): how much of the context it keeps, which
/// tokens, from the model's scores of them, and the plain store its cache is.
pub trait PromptCompressor: StoreFactory {
    /// How many of `context` tokens to keep, and in what units they are kept or dropped.
    fn prompt_budget(&self, context: usize) -> PromptBudget;

    /// Ascending positions of the `context` tokens to keep at `budget`, scored through `model`
    /// after `conditioning` (the question when query-aware, nothing when query-agnostic).
    fn keep(
        &self,
        context: &[u32],
        conditioning: &[u32],
        budget: PromptBudget,
        model: &mut dyn PromptScorer,
    ) -> Result<Vec<usize>, ScorerError>;
}

/// What a prompt compressor may ask of the model: the narrow interface through which the model
/// layer serves it, so that a compressor lives beside the other methods, not in the model.
pub trait PromptScorer {
    /// `information[i] = −log p(tokens[i] | tokens[..i])` under the full model (infinite for the
    /// first token, which has no prediction).
    fn self_information(&mut self, tokens: &[u32]) -> Result<std::sync::Arc<Vec<f32>>, ScorerError>;

    /// The text of one token: U+FFFD for part of a multi-byte character, empty for an unknown id.
    fn token_text(&self, id: u32) -> String;
}

/// The model failed to score a prompt (its message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScorerError(pub String);

/// What the cache, the model and the fidelity replay ask of any method, from its [`Phase`]: one
/// place, not overridable, so that a method cannot answer one way here and another there.
impl dyn Method + '_ {
    /// When the method acts.
    pub fn acts(&self) -> Acts {
        match self.phase() {
            Phase::BeforePrefill(_) => Acts::BeforePrefill,
            Phase::DuringPrefill(_) => Acts::DuringPrefill,
            Phase::AfterPrefill(_) => Acts::AfterPrefill,
        }
    }

    /// Fresh, empty storage for one layer of one sequence: the full-precision prefill store for a
    /// method acting after prefill, the method's own otherwise.
    pub fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        match self.phase() {
            Phase::BeforePrefill(p) => p.layer_store(ctx),
            Phase::DuringPrefill(f) => f.layer_store(ctx),
            Phase::AfterPrefill(_) => Box::new(FullStore::for_layer(ctx)),
        }
    }

    /// A layer's store once prefill ends: `None` to keep the prefill's (the full cache, and
    /// every method not acting after prefill). For a method that decides across layers, give
    /// `ctx` every layer's [`Self::head_scores`]; without them it decides within this layer alone.
    pub fn after_prefill(&self, ctx: &StoreContext, prefill: &FullStore) -> Option<Box<dyn LayerStore>> {
        let Phase::AfterPrefill(c) = self.phase() else { return None };
        let own = match ctx.head_scores {
            None => c.head_scores(ctx, prefill).map(|s| HeadScores(vec![(ctx.layer, s)])),
            Some(_) => None,
        };
        match c.compress(&StoreContext { head_scores: ctx.head_scores.or(own.as_ref()), ..*ctx }, prefill) {
            Compressed::Keep => None,
            Compressed::Into(store) => Some(store),
        }
    }

    /// For a method that decides across layers ([`PrefillCompressor::head_scores`]), the kv-head
    /// scores of every layer in `layers` (context, prefill), which each layer's
    /// [`Self::after_prefill`] then reads; `None` for every other method.
    pub fn head_scores<'p>(
        &self,
        layers: impl IntoIterator<Item = (StoreContext<'p>, &'p FullStore)>,
    ) -> Option<HeadScores> {
        let Phase::AfterPrefill(c) = self.phase() else { return None };
        let scores: Option<Vec<(usize, Vec<f32>)>> =
            layers.into_iter().map(|(ctx, prefill)| Some((ctx.layer, c.head_scores(&ctx, prefill)?))).collect();
        scores.filter(|s| !s.is_empty()).map(HeadScores)
    }

    /// For prompt compression: how many of `context` tokens to keep, and in what units.
    pub fn prompt_budget(&self, context: usize) -> Option<PromptBudget> {
        match self.phase() {
            Phase::BeforePrefill(p) => Some(p.prompt_budget(context)),
            _ => None,
        }
    }
}

/// What a prompt compressor keeps of the context ([`PromptCompressor::prompt_budget`]).
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

    /// Positions of the tokens kv head `g` holds, ascending, where the method holds a subset;
    /// `None` when it holds every token it was given (the quantizers, the retrieval methods).
    /// Answer survival and the kvpress parity fixtures read it.
    fn held(&self, _g: usize) -> Option<Vec<u32>> {
        None
    }

    /// Tokens held (the most of any kv head: head-adaptive budgets hold different counts).
    fn tokens(&self) -> usize;

    /// A deep copy, for snapshots taken after prefill.
    fn clone_box(&self) -> Box<dyn LayerStore>;

    /// The full-precision prefill store, if this is one.
    fn as_prefill(&self) -> Option<&FullStore> {
        None
    }

    /// The same, to change.
    fn as_prefill_mut(&mut self) -> Option<&mut FullStore> {
        None
    }

    /// The ascending key channels kv head `g` keeps, where the method prunes channels (ThinK);
    /// `None` when every key keeps every channel. The kvpress parity fixtures read it.
    fn key_channels(&self, _g: usize) -> Option<Vec<u32>> {
        None
    }

    /// Hold the rows kept now and from now on in a composed quantizer's `code`; false for a store
    /// that cannot (every store but the token methods' [`crate::kv::evict::KeptStore`]).
    fn recode(&mut self, _code: RowCode) -> bool {
        false
    }

    /// The sliding-window layer's store, if this is one (the prefill cache on disk encodes it).
    fn as_sliding(&self) -> Option<&crate::kv::sliding::SlidingStore> {
        None
    }

    /// The window, if this is a sliding-window layer's store (the architecture's, not a method's).
    fn window(&self) -> Option<usize> {
        None
    }
}

impl Clone for Box<dyn LayerStore> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}
