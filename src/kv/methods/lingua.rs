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
//! `lingua-word-Nx` (outside the trial matrix, for measuring this one choice) keeps or drops
//! **whole words**, as LLMLingua-2 does: its classifier's token probabilities are averaged over
//! each word and words are kept by that mean (`__merge_token_to_word` and
//! `token_prob_to_word_prob` in the reference). Here a word's score is the mean self-information of
//! its tokens; a word starts at a token whose text begins with whitespace, and every forced token
//! is a word of its own (as the reference splits words at its force tokens). Each word, best
//! first, is taken if it still fits in the token budget, so the word variant keeps at most the
//! token variant's count, usually within a token or two, and their measured ratios compare. On SmolLM2, which gives each digit its own token, this keeps a
//! number whole or not at all (docs/METHODS.md, "Prompt compression by words").
//!
//! The compressed prompt is prefilled into an fp16 cache ([`Fp16Store`](super::fp16::Fp16Store)),
//! so the measured ratio reflects the tokens dropped.

use std::ops::Range;

use serde_json::json;

use super::Budget;
use super::fp16::Fp16Store;
use crate::kv::evict::top_with_protected;
use crate::kv::method::{Granularity, PromptBudget};
use crate::kv::tokens::TokenRows;
use crate::kv::{LayerStore, Method, Phase, PromptCompressor, PromptScorer, ScorerError, StoreContext, StoreFactory};

/// Characters whose tokens are always kept.
pub const FORCED: &[char] = &['\n', '.', '!', '?', ','];

/// LLMLingua-style prompt compression.
#[derive(Debug, Clone, Copy)]
pub struct Lingua {
    /// Budget on the context's tokens.
    pub budget: Budget,
    /// Tokens one by one (`lingua`) or whole words (`lingua-word`).
    pub granularity: Granularity,
}

impl Method for Lingua {
    fn name(&self) -> String {
        match self.granularity {
            Granularity::Token => format!("lingua-{}", self.budget.suffix()),
            Granularity::Word => format!("lingua-word-{}", self.budget.suffix()),
        }
    }

    fn settings(&self) -> serde_json::Value {
        let granularity = match self.granularity {
            Granularity::Token => "token",
            Granularity::Word => "word",
        };
        json!({ "budget": self.budget.settings(), "scorer": "own-self-information",
                "granularity": granularity, "forced": ["newline", ".", "!", "?", ","], "compresses": "context",
                "cache": "fp16" })
    }

    fn description(&self) -> String {
        let unit = match self.granularity {
            Granularity::Token => "tokens",
            Granularity::Word => "words (by the mean self-information of their tokens)",
        };
        format!(
            "prompt compression of the context: keeps the {unit} of highest self-information under the benchmarked model itself, always keeping newlines and . ! ? ,; an fp16 cache"
        )
    }

    fn nominal_ratio(&self) -> Option<f64> {
        self.budget.nominal()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::BeforePrefill(self)
    }
}

impl StoreFactory for Lingua {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        Box::new(Fp16Store(TokenRows::new(ctx.shape)))
    }
}

impl PromptCompressor for Lingua {
    fn prompt_budget(&self, context: usize) -> PromptBudget {
        PromptBudget { tokens: self.budget.tokens(context), granularity: self.granularity }
    }

    /// Score each context token's self-information with the full model (after the question when
    /// query-aware), keep `budget` tokens, one by one or whole words.
    fn keep(
        &self,
        context: &[u32],
        conditioning: &[u32],
        budget: PromptBudget,
        model: &mut dyn PromptScorer,
    ) -> Result<Vec<usize>, ScorerError> {
        let scored: Vec<u32> = [conditioning, context].concat();
        let information = model.self_information(&scored)?;
        let information = &information[conditioning.len()..];
        // a token that is part of a multi-byte character decodes to U+FFFD, neither forced nor
        // the start of a word; one that does not decode at all (an unknown id) counts as empty
        let texts: Vec<String> = context.iter().map(|&id| model.token_text(id)).collect();
        let forced: Vec<bool> = texts.iter().map(|t| is_forced(t)).collect();
        Ok(match budget.granularity {
            Granularity::Token => select(information, &forced, budget.tokens),
            Granularity::Word => {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                select_words(information, &forced, &words(&texts), budget.tokens)
            }
        })
    }
}

/// Whether a token's text holds a [`FORCED`] character.
pub fn is_forced(text: &str) -> bool {
    text.contains(FORCED)
}

/// Indices (ascending) of the context tokens to keep: every `forced` one, then the highest
/// `self_information` up to `budget` in all.
pub fn select(self_information: &[f32], forced: &[bool], budget: usize) -> Vec<usize> {
    assert_eq!(self_information.len(), forced.len());
    let keep = top_with_protected(self_information, budget, |i| forced[i]);
    (0..keep.len()).filter(|&i| keep[i]).collect()
}

/// The context's words, as ranges of token indices covering every token in order: a word
/// starts at the first token, at a token whose text begins with whitespace, and at and after
/// every forced token (each forced token is a word of its own).
pub fn words(texts: &[&str]) -> Vec<Range<usize>> {
    let mut words: Vec<Range<usize>> = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let starts = i == 0
            || is_forced(text)
            || is_forced(texts[i - 1])
            || text.chars().next().is_some_and(char::is_whitespace);
        match words.last_mut() {
            Some(word) if !starts => word.end = i + 1,
            _ => words.push(i..i + 1),
        }
    }
    words
}

/// Indices (ascending) of the context tokens to keep, whole words at a time: every forced token,
/// then words by the mean `self_information` of their tokens, best first (earlier first on
/// ties), each taken if it still fits in `budget` tokens. `words` covers the tokens in order,
/// each forced token a word of its own ([`words`]).
pub fn select_words(self_information: &[f32], forced: &[bool], words: &[Range<usize>], budget: usize) -> Vec<usize> {
    assert_eq!(self_information.len(), forced.len());
    assert_eq!(words.last().map_or(0, |w| w.end), forced.len(), "the words cover every token");
    debug_assert!(words.first().is_none_or(|w| w.start == 0), "the words start at the first token");
    debug_assert!(words.windows(2).all(|p| p[0].end == p[1].start), "the words are contiguous");
    debug_assert!(words.iter().all(|w| w.len() == 1 || !forced[w.clone()].contains(&true)), "forced words");
    let mut keep = forced.to_vec();
    let mut room = budget.saturating_sub(forced.iter().filter(|&&f| f).count());
    let score = |w: &Range<usize>| self_information[w.clone()].iter().sum::<f32>() / w.len() as f32;
    let mut ranked: Vec<(f32, &Range<usize>)> =
        words.iter().filter(|w| !forced[w.start..w.end].contains(&true)).map(|w| (score(w), w)).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.start.cmp(&b.1.start)));
    for (_, word) in ranked {
        if word.len() <= room {
            room -= word.len();
            keep[word.clone()].fill(true);
        }
    }
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

    #[test]
    fn words_start_at_whitespace_and_around_forced_tokens() {
        let texts = [" The", " number", " is", " ", "4", "8", "2", ".", "\n", "Next", " word"];
        let got = words(&texts);
        assert_eq!(got, [0..1, 1..2, 2..3, 3..7, 7..8, 8..9, 9..10, 10..11]);
        assert_eq!(words(&[]), Vec::<Range<usize>>::new());
        assert_eq!(words(&["un", "break", "able"]), vec![0..3]);
    }

    #[test]
    fn keeps_whole_words_by_mean_information_within_the_budget() {
        // words: [0..2] mean 3.0, [2..3] 4.0, [3..4] forced, [4..7] mean 2.5, [7..8] 1.0
        let info = [5.0, 1.0, 4.0, 0.0, 2.5, 2.5, 2.5, 1.0];
        let forced = [false, false, false, true, false, false, false, false];
        let w = [0..2, 2..3, 3..4, 4..7, 7..8];
        // the forced token, then 4.0 (1 token), then 3.0 (2 tokens): 4 of a budget of 5; the
        // 3-token word does not fit in the 1 left, the last word does
        assert_eq!(select_words(&info, &forced, &w, 5), [0, 1, 2, 3, 7]);
        // a word is never split: with room for 2 after the forced one, 4.0 then 1.0 fit
        assert_eq!(select_words(&info, &forced, &w, 3), [2, 3, 7]);
        // forced tokens stay even past the budget
        assert_eq!(select_words(&info, &forced, &w, 0), [3]);
        assert_eq!(select_words(&info, &forced, &w, 8), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_number_is_kept_or_dropped_whole() {
        // one word of low-information digits between two surprising words: token level splits
        // the number, word level drops it whole
        let texts = [" a", " 4", "8", "2", "7", " b"];
        let info = [9.0, 2.3, 2.0, 8.0, 2.1, 9.0];
        let forced = [false; 6];
        assert_eq!(select(&info, &forced, 3), [0, 3, 5]);
        assert_eq!(select_words(&info, &forced, &words(&texts), 3), [0, 5]);
        assert_eq!(select_words(&info, &forced, &words(&texts), 6), (0..6).collect::<Vec<_>>());
    }
}
