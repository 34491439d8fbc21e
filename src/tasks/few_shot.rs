//! `few-shot`: many-shot in-context classification of question types (TREC-like, 13 classes).
//!
//! Data: BIG-bench's `natural_instructions/subtask046_miscellaenous_question_typing` (6,500
//! question-answer pairs labelled with types such as Humans, Date, Location) from the pinned
//! `bigbench` sdist. Only pairs with exactly one label other than "Other" are used (2,834; the
//! multi-label ones are ambiguous). Every fifth of those is a test item, the rest are shots; a seed
//! draws one test item and as many random shots as fit the budget. Prompt wording: LongBench's
//! `trec` ("Please determine the type of the question below. Here are some examples of
//! questions."), with the answer prefix "Type:" opening the assistant turn. Scored by LongBench's
//! classification score on the first output line.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use super::{Metric, Parts, Rng, Task, TaskError, cached, count, doc_budget};
use crate::assets;
use crate::model::tokenizer::Tokenizer;

const TYPING: (&str, &str) = (
    "bigbench",
    "bigbench-1.0.0/bigbench/benchmark_tasks/natural_instructions/subtask046_miscellaenous_question_typing/task.json",
);

/// The 13 classes the task defines.
pub const CLASSES: [&str; 13] = [
    "Humans",
    "Event",
    "Entity",
    "Facility",
    "Location",
    "Law",
    "Organization",
    "Date",
    "Time",
    "Money",
    "Quantity",
    "Description",
    "Abbreviation",
];

/// Opens the assistant turn: without it the chat model answers the question instead of typing it
/// (calibration: 0 of 19 samples scored; docs/TASKS.md).
const ANSWER_PREFIX: &str = "Type:";

const INSTRUCTION: &str = "Please determine the type of the question below. Here are some examples of questions.\n\n";

#[derive(Deserialize)]
struct TaskFile {
    examples: Vec<Example>,
}

#[derive(Deserialize)]
struct Example {
    input: String,
    target: Vec<String>,
}

struct Pools {
    shots: Vec<(String, String)>,
    tests: Vec<(String, String)>,
    most_frequent: String,
}

fn pools() -> Result<&'static Pools, TaskError> {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    cached(&POOLS, || -> Result<_, TaskError> {
        let file: TaskFile = assets::read_json(TYPING.0, TYPING.1)?;
        let single: Vec<(String, String)> = file
            .examples
            .into_iter()
            .filter(|e| e.target.len() == 1)
            .map(|e| (e.input.trim().to_string(), e.target[0].trim().trim_end_matches('.').to_string()))
            .filter(|(_, label)| CLASSES.contains(&label.as_str()))
            .collect();
        let (mut shots, mut tests) = (Vec::new(), Vec::new());
        for (i, e) in single.into_iter().enumerate() {
            if i % 5 == 0 { tests.push(e) } else { shots.push(e) }
        }
        let mut freq: HashMap<&str, usize> = HashMap::new();
        for (_, label) in &shots {
            *freq.entry(label).or_default() += 1;
        }
        let most_frequent =
            CLASSES.iter().max_by_key(|c| (freq.get(*c).copied().unwrap_or(0), std::cmp::Reverse(**c))).unwrap();
        Ok(Pools { shots, tests, most_frequent: most_frequent.to_string() })
    })
}

fn shot((input, label): &(String, String)) -> String {
    format!("{input}\nType: {label}\n")
}

/// Build a few-shot sample.
pub fn build(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let pools = pools()?;
    let test = rng.below(pools.tests.len());
    let (input, label) = &pools.tests[test];
    let question = format!("\n{input}");
    let budget = doc_budget(Task::FewShot, tok, target_len, INSTRUCTION, &question, ANSWER_PREFIX)?;
    let mut used = 0;
    let mut chosen: Vec<usize> = Vec::new();
    let mut misses = 0;
    while misses < 20 {
        let i = rng.below(pools.shots.len());
        if chosen.contains(&i) {
            misses += 1;
            continue;
        }
        let n = count(tok, &shot(&pools.shots[i]))? + 1;
        if used + n > budget {
            misses += 1;
            continue;
        }
        used += n;
        chosen.push(i);
    }
    let document = chosen.iter().map(|&i| shot(&pools.shots[i])).collect::<Vec<_>>().join("\n");
    let mut info = serde_json::Map::new();
    info.insert("shots".into(), json!(chosen.len()));
    Ok(Parts {
        instruction: INSTRUCTION.to_string(),
        document,
        question,
        answer_prefix: ANSWER_PREFIX.to_string(),
        in_answer: false,
        answers: vec![label.clone()],
        metric: Metric::Classification { classes: CLASSES.map(String::from).to_vec() },
        trivial: pools.most_frequent.clone(),
        source: format!("question-typing/test-{test}"),
        info,
    })
}
