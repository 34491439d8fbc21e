//! One-shot token selection: the generic method behind SnapKV, PyramidKV, Knorm and KeyDiff.
//!
//! Such a method acts once, when prefill ends: from the full-precision prefill it picks, per kv
//! head, the tokens to keep at its budget, drops the rest, and appends every decode token after
//! them without eviction (as the papers and kvpress do). All that differs between them is how
//! they pick, so a method of this kind is a [`Selector`] — a short file that says how it scores
//! tokens — wrapped in [`OneShot`], which supplies the name, the settings, the budget and the
//! store ([`KeptStore`], whose bytes are the rows really kept, per kv head).

use serde_json::Value;

use super::Method;
use super::budget::Budget;
use super::evict::{Eviction, KeptStore, top_with_protected};
use super::method::{Compressed, Phase, PrefillCompressor, StoreContext};
use super::prefill::FullStore;
use super::tokens::TokenRows;

/// How a one-shot method picks the prefill tokens it keeps.
pub trait Selector: std::fmt::Debug + Send + Sync {
    /// The family name, before the budget suffix (`knorm` in `knorm-4x`).
    fn family(&self) -> &'static str;

    /// The settings beside the budget (merged into [`Method::settings`]).
    fn settings(&self) -> Value;

    /// What it keeps, in words ([`Method::description`]).
    fn description(&self) -> &'static str;

    /// This layer's budget when the method's is `budget` tokens (PyramidKV shrinks it with depth).
    fn layer_budget(&self, budget: usize, _ctx: &StoreContext) -> usize {
        budget
    }

    /// Per kv head, which of the prefill's tokens to keep at `budget` (one flag per token), in the
    /// layer's context `ctx` (CriticalKV reads its output projection).
    fn keep(&self, prefill: &FullStore, budget: usize, ctx: &StoreContext) -> Vec<Vec<bool>>;

    /// A score per kv head, for a selector that decides across layers (DuoAttention); see
    /// [`PrefillCompressor::head_scores`].
    fn head_scores(&self, _prefill: &FullStore, _ctx: &StoreContext) -> Option<Vec<f32>> {
        None
    }
}

/// A one-shot method: `selector` at `budget`.
#[derive(Debug, Clone, Copy)]
pub struct OneShot<S> {
    /// Token budget.
    pub budget: Budget,
    /// How it picks.
    pub selector: S,
}

impl<S: Selector> Method for OneShot<S> {
    fn name(&self) -> String {
        format!("{}-{}", self.selector.family(), self.budget.suffix())
    }

    fn settings(&self) -> Value {
        let mut settings = self.selector.settings();
        if let Value::Object(map) = &mut settings {
            map.insert("budget".into(), self.budget.settings());
        }
        settings
    }

    fn description(&self) -> String {
        format!("once after prefill, {}", self.selector.description())
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::AfterPrefill(self)
    }
}

impl<S: Selector> PrefillCompressor for OneShot<S> {
    fn compress(&self, ctx: &StoreContext, prefill: &FullStore) -> Compressed {
        let budget = self.selector.layer_budget(self.budget.tokens(ctx.compressed_tokens), ctx);
        Compressed::Into(Box::new(kept(prefill, &self.selector.keep(prefill, budget, ctx))))
    }

    fn head_scores(&self, ctx: &StoreContext, prefill: &FullStore) -> Option<Vec<f32>> {
        self.selector.head_scores(prefill, ctx)
    }
}

/// The store holding the tokens of `prefill` that `keep` flags, per kv head.
pub fn kept(prefill: &FullStore, keep: &[Vec<bool>]) -> KeptStore {
    let mut rows = TokenRows::from_full(prefill);
    rows.heads.iter_mut().zip(keep).for_each(|(head, keep)| head.retain(keep));
    KeptStore::new(rows, None, Eviction::Never)
}

/// Per kv head, the `budget` tokens of highest `score(g)` (ties to the earlier token).
pub fn top_per_head(prefill: &FullStore, budget: usize, score: impl Fn(usize) -> Vec<f32>) -> Vec<Vec<bool>> {
    (0..prefill.shape().kv_heads).map(|g| top_with_protected(&score(g), budget, |_| false)).collect()
}
