//! `lingua-Nx`: prompt compression by self-information, LLMLingua-style.
//!
//! Papers: Jiang et al., "LLMLingua: Compressing Prompts for Accelerated Inference of Large
//! Language Models", EMNLP 2023 (arXiv 2310.05736); Pan et al., "LLMLingua-2", ACL Findings 2024
//! (arXiv 2403.12968). Reference implementation: microsoft/LLMLingua. The reference study used
//! **LLMLingua-2**, whose token classifier (an XLM-RoBERTa model) cannot be fetched from these
//! machines' registries, so this is the original LLMLingua's criterion with the benchmarked model
//! as its own scorer: a context token's self-information is `−log p(token | preceding context)`
//! under SmolLM2 itself, and the context tokens of lowest self-information are dropped, at token
//! level, until `context / ratio` remain (the study's rates 1/2 … 1/8, applied to the context
//! only, as on LongBench). Tokens containing any of `\n . ! ? ,` are always kept (LLMLingua-2's
//! `force_tokens` in the study's configuration) and count towards the budget; the question is
//! never compressed. Query-aware runs score the context with the question placed before it (the
//! question conditions what is informative, as in LongLLMLingua); query-agnostic runs score it
//! alone.
//!
//! The compressed prompt is prefilled into an fp16 cache ([`Fp16Store`](super::fp16::Fp16Store)),
//! so the measured ratio reflects the tokens dropped.

use serde_json::json;

use super::Budget;
use super::fp16::Fp16Store;
use crate::kv::evict::top_with_protected;
use crate::kv::method::{Acts, StoreContext};
use crate::kv::tokens::TokenRows;
use crate::kv::{LayerStore, Method};

/// Characters whose tokens are always kept.
pub const FORCED: &[char] = &['\n', '.', '!', '?', ','];

/// LLMLingua-style prompt compression.
#[derive(Debug, Clone, Copy)]
pub struct Lingua {
    /// Budget on the context's tokens.
    pub budget: Budget,
}

impl Method for Lingua {
    fn name(&self) -> String {
        format!("lingua-{}", self.budget.suffix())
    }

    fn settings(&self) -> serde_json::Value {
        json!({ "budget": self.budget.settings(), "scorer": "the benchmarked model's own self-information",
                "granularity": "token", "forced": "\\n . ! ? ,", "compresses": "context only",
                "cache": "fp16" })
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn acts(&self) -> Acts {
        Acts::BeforePrefill
    }

    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(Fp16Store(TokenRows::new(ctx.shape)))
    }

    fn prompt_budget(&self, context: usize) -> Option<usize> {
        Some(self.budget.tokens(context))
    }
}

/// Indices (ascending) of the context tokens to keep: every `forced` one, then the highest
/// `self_information` up to `budget` in all.
pub fn select(self_information: &[f32], forced: &[bool], budget: usize) -> Vec<usize> {
    assert_eq!(self_information.len(), forced.len());
    let keep = top_with_protected(self_information, budget, |i| forced[i]);
    (0..keep.len()).filter(|&i| keep[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_forced_tokens_then_the_most_surprising() {
        let info = [0.1, 5.0, 0.2, 3.0, 0.0, 4.0];
        let forced = [false, false, false, false, true, false];
        assert_eq!(select(&info, &forced, 3), [1, 4, 5]);
        assert_eq!(select(&info, &forced, 1), [4]);
    }
}
