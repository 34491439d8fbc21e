//! `synthetic`: RULER's multi-key and multi-value needles in the essay haystack.
//!
//! Each seed draws one of three kinds (RULER `niah_multikey_1`, `niah_multivalue` and `vt`, made
//! smaller for a 135M model):
//! - **multi-key**: four needles "One of the special magic numbers for {word} is: {number}." with
//!   four different words at random depths; the question asks for one word's number.
//! - **multi-value**: one word has two numbers (two needles) among two distractor words'
//!   needles; the question asks for all numbers of that word.
//! - **variable tracking**: two chains of four variables ("VAR ABCDE = 12345." then
//!   "VAR FGHIJ = VAR ABCDE." ...), their statements spread in order through the haystack; the
//!   question asks for every variable assigned one chain's value.
//!
//! Scored by RULER's `string_match_all` (the share of gold values or names in the answer), which
//! is accuracy for the multi-key kind. Like RULER's, it does not penalise extra values: an answer
//! that lists several numbers gets the credit of the right one among them.

use serde_json::json;

use super::needle::{WORDS, haystack, insert};
use super::{Metric, Parts, Rng, Task, TaskError, count, doc_budget};
use crate::model::tokenizer::Tokenizer;

const INSTRUCTION: &str = "Some special magic numbers are hidden within the following text. Make sure to memorize it. \
                           I will quiz you about the numbers afterwards.\n";

/// Build a synthetic sample.
pub fn build(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let kind = rng.below(3);
    if kind == 2 {
        return variable_tracking(rng, target_len, tok);
    }
    let mut words: Vec<&str> = WORDS.to_vec();
    rng.shuffle(&mut words);
    let (needles, answers, question, answer_prefix, kind) = if kind == 1 {
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
    let placed_at = |rng: &mut Rng, n: usize| (0..n).map(|_| rng.below(101) as f64 / 100.0).collect::<Vec<_>>();
    let budget = doc_budget(Task::Synthetic, tok, target_len, INSTRUCTION, &question, &answer_prefix)?;
    let needle_tokens: usize = needles.iter().map(|n| count(tok, n).map(|c| c + 2)).sum::<Result<_, _>>()?;
    let hay = haystack(rng, tok, budget.saturating_sub(needle_tokens))?;
    let depths = placed_at(rng, needles.len());
    let placed: Vec<(f64, String)> = depths.into_iter().zip(needles).collect();
    let mut info = serde_json::Map::new();
    info.insert("kind".into(), json!(kind));
    info.insert("depths".into(), json!(placed.iter().map(|(d, _)| *d).collect::<Vec<_>>()));
    Ok(Parts {
        instruction: INSTRUCTION.to_string(),
        document: insert(&hay, &placed),
        question,
        answer_prefix,
        in_answer: false,
        answers,
        metric: Metric::MatchAll,
        trivial: String::new(),
        source: format!("pg-essays/{kind}"),
        info,
    })
}

/// A variable name: five random capital letters.
fn var_name(rng: &mut Rng) -> String {
    (0..5).map(|_| char::from(b'A' + rng.below(26) as u8)).collect()
}

/// RULER's variable tracking: two chains of four variables; all names of the asked chain are gold.
fn variable_tracking(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let instruction = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n";
    let mut names: Vec<String> = Vec::new();
    while names.len() < 8 {
        let n = var_name(rng);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let values = [rng.number(5), rng.number(5)];
    let chains: Vec<Vec<String>> = (0..2)
        .map(|c| {
            let vars = &names[c * 4..c * 4 + 4];
            let mut statements = vec![format!("VAR {} = {}.", vars[0], values[c])];
            statements.extend(vars.windows(2).map(|w| format!("VAR {} = VAR {}.", w[1], w[0])));
            statements
        })
        .collect();
    let asked = rng.below(2);
    let value = &values[asked];
    let question = format!("\nQuestion: Find all variables that are assigned the value {value} in the text above.");
    let answer_prefix = format!(
        "Answer: According to the chain(s) of variable assignment in the text above, 4 variables are assigned \
         the value {value}, they are: VAR"
    );
    let budget = doc_budget(Task::Synthetic, tok, target_len, instruction, &question, &answer_prefix)?;
    let statement_tokens: usize =
        chains.iter().flatten().map(|s| count(tok, s).map(|c| c + 2)).sum::<Result<_, _>>()?;
    let hay = haystack(rng, tok, budget.saturating_sub(statement_tokens))?;
    // Each chain's statements in order, at sorted random depths.
    let mut placed: Vec<(f64, String)> = Vec::new();
    for chain in &chains {
        let mut depths: Vec<f64> = (0..chain.len()).map(|_| rng.below(101) as f64 / 100.0).collect();
        depths.sort_by(f64::total_cmp);
        placed.extend(depths.into_iter().zip(chain.iter().cloned()));
    }
    let mut info = serde_json::Map::new();
    info.insert("kind".into(), json!("variable-tracking"));
    info.insert("depths".into(), json!(placed.iter().map(|(d, _)| *d).collect::<Vec<_>>()));
    Ok(Parts {
        instruction: instruction.to_string(),
        document: insert(&hay, &placed),
        question,
        answer_prefix,
        in_answer: false,
        answers: names[asked * 4..asked * 4 + 4].to_vec(),
        metric: Metric::MatchAll,
        trivial: String::new(),
        source: "pg-essays/variable-tracking".to_string(),
        info,
    })
}
