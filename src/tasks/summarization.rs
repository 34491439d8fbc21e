//! `summarization`: an XSum article at a random position among other XSum articles, named by its
//! number and its first words, summarised in one sentence.
//!
//! Data: BIG-bench's `gem/xsum` task (1,001 BBC articles with their real one-sentence reference
//! summaries) from the pinned `bigbench` sdist. A seed draws the target article (one that fits in
//! half the budget), then other articles while they fit, then the target's position among them
//! (uniform, so the target is last only as often as chance makes it: 15 of seeds 0..59); the
//! articles are numbered "Article i:". The question names the target by its number and its first
//! [`FIRST_WORDS`] words ("... a one-sentence summary of Article 3, the article that begins
//! \"Lisanne Beck, 47, allegedly performed a\"."), and the assistant's turn opens with the same
//! anchor, [`answer_prefix`] ("Summary of Article 3 (\"Lisanne Beck, 47, allegedly performed a
//! ...\"):"), which the model continues. Scored by [`Metric::RougeLContent`], ROUGE-L over content
//! words ([`super::metrics::rouge_l_content`]), against the reference summary.
//!
//! Why (calibration, docs/TASKS.md; content ROUGE-L, seeds 0..59): named by its number alone, the
//! model summarises the last article whatever was asked (12.2 when the target was last, 7.4 when
//! not), so a method that keeps recent tokens would lose little; a code name in place of the
//! number did no better (n = 30). Quoting the first words in the question and the answer prefix
//! lets the model find the target anywhere (13.9 last, 10.5 not), at a price: the words also
//! tell the no-context prompt something (4.0, against 0.5 named by number), which the headroom
//! counts. Of the prefixes tried, this one leaks least: "In one sentence, Article k (\"...\")
//! reports that" had the model restate the quoted words (no context 6.1), and "Summary of
//! Article k:" without the quote anchored less. Three first words anchored less, ten leaked
//! more; 512 tokens scored lower; the other articles' reference summaries as shots in the
//! assistant's turn (as `few-shot` does) made the model copy a shot (n = 30 each). Under
//! LongBench's ROUGE-L ([`Metric::RougeL`]) a sentence of function words scores about 10 against
//! any XSum reference, as much as the article's own first sentence, and no layout tried had more
//! than 5 points of headroom; over content words the same sentence scores 0.6.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use super::{Metric, Parts, Rng, Task, TaskError, cached, count, doc_budget};
use crate::assets;
use crate::model::tokenizer::Tokenizer;

const XSUM: (&str, &str) = ("bigbench", "bigbench-1.0.0/bigbench/benchmark_tasks/gem/xsum/task.json");

const INSTRUCTION: &str = "You are given several news articles. Write a one-sentence summary of the article asked \
                           for.\n\n";

/// How many of the target's first words name it (calibration: 3 anchored less, 10 told the
/// no-context prompt more).
pub const FIRST_WORDS: usize = 6;

#[derive(Deserialize)]
struct TaskFile {
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    input: String,
    target: String,
}

fn examples() -> Result<&'static [Example], TaskError> {
    static EXAMPLES: OnceLock<Vec<Example>> = OnceLock::new();
    Ok(cached(&EXAMPLES, || -> Result<_, TaskError> {
        let file: TaskFile = assets::read_json(XSUM.0, XSUM.1)?;
        Ok(file.examples)
    })?)
}

/// The first `n` whitespace-separated words of `text`, joined by single spaces.
pub fn first_words(text: &str, n: usize) -> String {
    text.split_whitespace().take(n).collect::<Vec<_>>().join(" ")
}

/// The question naming Article `k`, which begins with `words`.
pub fn question(k: usize, words: &str) -> String {
    format!("\n\nNow, write a one-sentence summary of Article {k}, the article that begins \"{words}\".")
}

/// The start of the assistant's answer: "Summary of", the same anchor, and a colon.
pub fn answer_prefix(k: usize, words: &str) -> String {
    format!("Summary of Article {k} (\"{words} ...\"):")
}

/// Build a summarization sample.
pub fn build(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let all = examples()?;
    let cost = |text: &str| count(tok, text.trim()).map(|n| n + 6);
    // Draw the target against a budget with a long placeholder name (positions have at most two
    // digits), then fill the budget its own name leaves.
    let placeholder = ["placeholder"; FIRST_WORDS].join(" ");
    let budget_for = |words: &str| {
        doc_budget(Task::Summarization, tok, target_len, INSTRUCTION, &question(99, words), &answer_prefix(99, words))
    };
    let rough = budget_for(&placeholder)?;
    // The target must fit in half the budget, so that there is room for others.
    let mut target = rng.below(all.len());
    for _ in 0..50 {
        if cost(&all[target].input)? <= rough / 2 {
            break;
        }
        target = rng.below(all.len());
    }
    let words = first_words(&all[target].input, FIRST_WORDS);
    let budget = budget_for(&words)?;
    let mut used = cost(&all[target].input)?;
    let mut chosen: Vec<usize> = Vec::new();
    let mut misses = 0;
    while misses < 20 {
        let other = rng.below(all.len());
        if other == target || chosen.contains(&other) {
            misses += 1;
            continue;
        }
        let n = cost(&all[other].input)?;
        if used + n > budget {
            misses += 1;
            continue;
        }
        used += n;
        chosen.push(other);
    }
    let at = rng.below(chosen.len() + 1);
    chosen.insert(at, target);
    let document = chosen
        .iter()
        .enumerate()
        .map(|(i, &e)| format!("Article {}:\n{}", i + 1, all[e].input.trim()))
        .collect::<Vec<_>>()
        .join("\n\n");
    let mut info = serde_json::Map::new();
    info.insert("articles".into(), json!(chosen.len()));
    info.insert("target_position".into(), json!(at + 1));
    Ok(Parts {
        instruction: INSTRUCTION.to_string(),
        document,
        question: question(at + 1, &words),
        answer_prefix: answer_prefix(at + 1, &words),
        in_answer: false,
        answers: vec![all[target].target.trim().to_string()],
        metric: Metric::RougeLContent,
        trivial: String::new(),
        source: format!("xsum/{target}"),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_named_by_its_number_and_first_words() {
        let text = "Lisanne Beck, 47, allegedly\nperformed  a sex act on Simon Murphy.";
        let words = first_words(text, FIRST_WORDS);
        assert_eq!(words, "Lisanne Beck, 47, allegedly performed a");
        assert_eq!(first_words("Two words", FIRST_WORDS), "Two words");
        assert!(
            question(3, &words)
                .ends_with("Article 3, the article that begins \"Lisanne Beck, 47, allegedly performed a\".")
        );
        assert_eq!(answer_prefix(3, &words), "Summary of Article 3 (\"Lisanne Beck, 47, allegedly performed a ...\"):");
    }
}
