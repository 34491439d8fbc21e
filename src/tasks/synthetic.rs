//! `synthetic`: RULER's multi-key and multi-value needles in the essay haystack.
//!
//! Each seed draws one of two kinds (RULER `niah_multikey_1` and `niah_multivalue`, made smaller
//! for a 135M model):
//! - **multi-key**: four needles "One of the special magic numbers for {word} is: {number}." with
//!   four different words at random depths; the question asks for one word's number.
//! - **multi-value**: one word has two numbers (two needles) among two distractor words'
//!   needles; the question asks for all numbers of that word.
//!
//! Scored by RULER's `string_match_all` (the share of the word's numbers in the answer), which is
//! accuracy for the multi-key kind.

use serde_json::json;

use super::needle::{WORDS, haystack, insert};
use super::{Metric, Parts, Rng, Task, TaskError, count, doc_budget};
use crate::model::tokenizer::Tokenizer;

const INSTRUCTION: &str = "Some special magic numbers are hidden within the following text. Make sure to memorize it. \
                           I will quiz you about the numbers afterwards.\n";

/// Build a synthetic sample.
pub fn build(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let multi_value = rng.below(2) == 1;
    let mut words: Vec<&str> = WORDS.to_vec();
    rng.shuffle(&mut words);
    let (needles, answers, question, answer_prefix, kind) = if multi_value {
        let target = words[0];
        let values = [rng.number(7), rng.number(7)];
        let mut needles: Vec<String> =
            values.iter().map(|v| format!("One of the special magic numbers for {target} is: {v}.")).collect();
        for w in &words[1..3] {
            needles.push(format!("One of the special magic numbers for {w} is: {}.", rng.number(7)));
        }
        (
            needles,
            values.to_vec(),
            format!("\nWhat are all the special magic numbers for {target} mentioned in the provided text?"),
            format!("The special magic numbers for {target} mentioned in the provided text are"),
            "multi-value",
        )
    } else {
        let values: Vec<String> = (0..4).map(|_| rng.number(7)).collect();
        let needles: Vec<String> = words[..4]
            .iter()
            .zip(&values)
            .map(|(w, v)| format!("One of the special magic numbers for {w} is: {v}."))
            .collect();
        let asked = rng.below(4);
        let target = words[asked];
        (
            needles,
            vec![values[asked].clone()],
            format!("\nWhat is the special magic number for {target} mentioned in the provided text?"),
            format!("The special magic number for {target} mentioned in the provided text is"),
            "multi-key",
        )
    };
    let budget = doc_budget(Task::Synthetic, tok, target_len, INSTRUCTION, &question, &answer_prefix)?;
    let needle_tokens: usize = needles.iter().map(|n| count(tok, n).map(|c| c + 2)).sum::<Result<_, _>>()?;
    let hay = haystack(rng, tok, budget.saturating_sub(needle_tokens))?;
    let placed: Vec<(f64, String)> = needles.into_iter().map(|n| (rng.below(101) as f64 / 100.0, n)).collect();
    let mut info = serde_json::Map::new();
    info.insert("kind".into(), json!(kind));
    info.insert("depths".into(), json!(placed.iter().map(|(d, _)| *d).collect::<Vec<_>>()));
    Ok(Parts {
        instruction: INSTRUCTION.to_string(),
        document: insert(&hay, &placed),
        question,
        answer_prefix,
        answers,
        metric: Metric::MatchAll,
        trivial: String::new(),
        source: format!("pg-essays/{kind}"),
        info,
    })
}
