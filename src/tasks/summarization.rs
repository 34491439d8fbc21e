//! `summarization`: an XSum article among other XSum articles, summarised in one sentence by its
//! position.
//!
//! Data: BIG-bench's `gem/xsum` task (1,001 BBC articles with their real one-sentence reference
//! summaries) from the pinned `bigbench` sdist. A seed draws the target article; other articles
//! fill the token budget before it; articles are numbered "Article i:" and the question asks for a
//! one-sentence summary of the last one, by its number. Scored by ROUGE-L F as LongBench computes
//! it (the `rouge` package), against the reference summary.
//!
//! Why last: calibration (docs/TASKS.md) tried the target at a random position first; SmolLM2-135M
//! then summarised whichever article it pleased, and its score did not clear the no-context
//! baseline (about 7 ROUGE-L from common words alone). With the target last, the earlier articles
//! are still context that a method must keep or drop, and the task measures summarisation.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use super::{Metric, Parts, Rng, Task, TaskError, cached, count, doc_budget};
use crate::assets;
use crate::model::tokenizer::Tokenizer;

const XSUM: (&str, &str) = ("bigbench", "bigbench-1.0.0/bigbench/benchmark_tasks/gem/xsum/task.json");

const INSTRUCTION: &str = "You are given several news articles. Write a one-sentence summary of the article asked \
                           for.\n\n";

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

/// Build a summarization sample.
pub fn build(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let all = examples()?;
    // A placeholder question of the final length (positions have at most two digits).
    let question_for =
        |k: usize| format!("\n\nNow, write a one-sentence summary of the last article, Article {k}.\n\nSummary:");
    let budget = doc_budget(Task::Summarization, tok, target_len, INSTRUCTION, &question_for(99), "")?;
    let cost = |text: &str| count(tok, text.trim()).map(|n| n + 6);
    // The target must fit in half the budget, so that there is room for others.
    let mut target = rng.below(all.len());
    for _ in 0..50 {
        if cost(&all[target].input)? <= budget / 2 {
            break;
        }
        target = rng.below(all.len());
    }
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
    let at = chosen.len();
    chosen.push(target);
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
        question: question_for(at + 1),
        answer_prefix: String::new(),
        in_answer: false,
        answers: vec![all[target].target.trim().to_string()],
        metric: Metric::RougeL,
        trivial: String::new(),
        source: format!("xsum/{target}"),
        info,
    })
}
