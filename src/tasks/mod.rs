//! The long-context task categories: real data in, samples (prompt, gold answers, metric) out.
//!
//! Seven categories, after the reference study (LongBench's six plus a needle test), each built
//! from real data that package clients can fetch (see [`crate::assets`] and `traces/README.md`):
//! [`Task::Needle`], [`Task::Synthetic`], [`Task::SingleDocQa`], [`Task::MultiDocQa`],
//! [`Task::Summarization`], [`Task::FewShot`], [`Task::Code`]. One file per category builds its
//! [`Parts`]; this module turns them into a [`Sample`] the same way for all.
//!
//! # One template, split into context and question
//!
//! KV-cache methods run *query-aware* (the whole prompt but its last token is prefilled, then
//! compressed, and the last token fed through what was kept) or *query-agnostic* (the context is
//! prefilled and compressed before the question is known), so
//! every sample carries its prompt in two parts, joined by the model's one fixed template
//! ([`Template`](crate::model::tokenizer::Template)): for SmolLM2 its ChatML turn (the text
//! [`chatml`](crate::model::tokenizer::chatml) renders, with the model's default system prompt),
//! for a base model without a chat template (Gemma-3-270M) plain completion, `head` empty and
//! the `<|im_end|>…assistant` part a single `"\n"`:
//!
//! ```text
//! context  = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n" + instruction + document
//! question = question + "<|im_end|>\n<|im_start|>assistant\n" + answer_prefix
//! ```
//!
//! For `code` the document is instead the start of the assistant's answer, which the model
//! continues (a chat model asked for "the next line" in the user turn describes the code instead;
//! LongBench drops the chat template for code for the same reason):
//!
//! ```text
//! context  = head + instruction + "<|im_end|>\n<|im_start|>assistant\n" + file prefix
//! question = the line before the cut + "\n"
//! ```
//!
//! The prompt's ids are `encode(head + instruction) ++ encode(document) ++ encode(question)`, so
//! [`Sample::context_ids`] is exactly a prefix of [`Sample::prompt_ids`] (tokenizing the joined
//! text in one go could merge tokens across the seams; kvbench never does). A BOS comes first
//! where the GGUF says to add one (Gemma's; SmolLM2's template has none), and nowhere else:
//! every part after the first is encoded with `encode_more`.
//!
//! # Pure and fitted to a length
//!
//! [`sample`] is a pure function of (task, seed, target length in tokens, tokenizer): the seed
//! drives a SplitMix64 generator mixed with the task's name, and the data are pinned by sha256.
//! Builders fill the document to the token budget left by the template, the instruction and the
//! question; if the document is still over budget, LongBench's middle truncation
//! ([`truncate::middle`]) cuts it, the one rule for every task and method.
//!
//! Each sample also carries two baselines for calibration: the *no-context* prompt (the same
//! template and question with the document removed) and a *trivial* answer (most frequent class,
//! empty answer, or the last line for code).

pub mod answer_end;
#[cfg(test)]
mod checks;
pub mod code;
pub mod few_shot;
pub mod metrics;
pub mod multi_doc_qa;
pub mod needle;
mod prompt;
pub mod rng;
pub mod single_doc_qa;
pub mod summarization;
pub mod synthetic;
pub mod truncate;

use std::sync::OnceLock;

use serde::Serialize;

pub use self::answer_end::AnswerEnd;
pub use self::prompt::{assemble, doc_budget, qa_cue, template};
pub use self::rng::Rng;
use crate::assets::AssetError;
use crate::model::tokenizer::{Tokenizer, TokenizerError};

/// A task category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// A key hidden in a haystack of essays (RULER-style phrasing; the study's pass key as a variant).
    Needle,
    /// Multi-key and multi-value needles among distractor needles.
    Synthetic,
    /// SQuAD v2 answerable questions, the gold paragraph among distractors.
    SingleDocQa,
    /// HotpotQA distractor setting, padded with more distractor paragraphs.
    MultiDocQa,
    /// XSum articles among other articles, the one named by its number and first words summarised.
    Summarization,
    /// Many-shot question-type classification (BIG-bench question typing, 4 balanced classes).
    FewShot,
    /// Next-line completion of real Rust sources from Debian's `librust-*-dev` packages.
    Code,
}

impl Task {
    /// Every task, in the order reports list them.
    pub const ALL: [Task; 7] = [
        Task::Needle,
        Task::Synthetic,
        Task::SingleDocQa,
        Task::MultiDocQa,
        Task::Summarization,
        Task::FewShot,
        Task::Code,
    ];

    /// The task's name, as used everywhere (CLI, trial names, traces).
    pub const fn name(self) -> &'static str {
        match self {
            Task::Needle => "needle",
            Task::Synthetic => "synthetic",
            Task::SingleDocQa => "single-doc-qa",
            Task::MultiDocQa => "multi-doc-qa",
            Task::Summarization => "summarization",
            Task::FewShot => "few-shot",
            Task::Code => "code",
        }
    }

    /// Parse a task name.
    pub fn from_name(name: &str) -> Result<Task, TaskError> {
        Task::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| TaskError::UnknownTask {
            name: name.to_string(),
            known: Task::ALL.map(Task::name).join(", "),
        })
    }

    /// The default prompt length in tokens (chosen by calibration, docs/TASKS.md).
    ///
    /// The QA tasks are shorter: at 1024 tokens (the gold paragraph among about six SQuAD
    /// paragraphs; HotpotQA's two supporting paragraphs among about five others) SmolLM2-135M's
    /// full-cache F1 was not clearly above its no-context F1; at 512 (about three paragraphs) it is.
    pub fn default_len(self) -> usize {
        match self {
            Task::Needle | Task::Synthetic => 2048,
            Task::SingleDocQa | Task::MultiDocQa => 512,
            _ => 1024,
        }
    }

    /// Most tokens to generate for an answer.
    pub fn max_new_tokens(self) -> usize {
        match self {
            Task::Needle | Task::Synthetic => 24,
            Task::SingleDocQa | Task::MultiDocQa => 24,
            Task::Summarization => 48,
            Task::FewShot => 8,
            Task::Code => 32,
        }
    }
}

/// How an answer is scored (definitions in [`metrics`]).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Metric {
    /// The study's needle exact match (partial match is reported beside it).
    NeedleExact,
    /// RULER's string_match_all: share of the gold values found.
    MatchAll,
    /// LongBench token F1, max over gold answers.
    QaF1,
    /// LongBench ROUGE-L F, max over gold answers.
    RougeL,
    /// ROUGE-L F1 over content words (stop words removed), max over gold answers
    /// ([`metrics::rouge_l_content`]).
    RougeLContent,
    /// LongBench classification score on the first output line.
    Classification {
        /// Every class name.
        classes: Vec<String>,
    },
    /// LongBench edit similarity of the first line that is Rust code ([`metrics::code_sim`]).
    EditSim,
    /// The class named first on the first output line, case- and number-blind, is the gold one
    /// ([`metrics::label_of`]); 1 or 0.
    Label {
        /// Every class name.
        classes: Vec<String>,
    },
}

impl Metric {
    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::NeedleExact => "needle-exact",
            Metric::MatchAll => "match-all",
            Metric::QaF1 => "qa-f1",
            Metric::RougeL => "rouge-l",
            Metric::RougeLContent => "rouge-l-content",
            Metric::Classification { .. } => "classification",
            Metric::EditSim => "edit-sim",
            Metric::Label { .. } => "label",
        }
    }

    /// Score `prediction` against the gold answers, in [0, 1].
    pub fn score(&self, prediction: &str, answers: &[String]) -> f64 {
        let best = |f: &dyn Fn(&str) -> f64| answers.iter().map(|a| f(a)).fold(0.0, f64::max);
        match self {
            Metric::NeedleExact => best(&|a| metrics::needle_exact(prediction, a)),
            Metric::MatchAll => metrics::match_all(prediction, answers),
            Metric::QaF1 => best(&|a| metrics::qa_f1(prediction, a)),
            Metric::RougeL => best(&|a| metrics::rouge_l(prediction, a)),
            Metric::RougeLContent => best(&|a| metrics::rouge_l_content(prediction, a)),
            Metric::Classification { classes } => {
                let first = prediction.trim_start_matches('\n').split('\n').next().unwrap_or("");
                best(&|a| metrics::classification(first, a, classes))
            }
            Metric::EditSim => best(&|a| metrics::code_sim(prediction, a)),
            Metric::Label { classes } => best(&|a| metrics::label_match(prediction, a, classes)),
        }
    }
}

/// What a category's builder produces; [`sample`] assembles it with the template.
#[derive(Debug, Clone)]
pub struct Parts {
    /// User text before the document.
    pub instruction: String,
    /// The long document (the part methods compress).
    pub document: String,
    /// User text after the document.
    pub question: String,
    /// Assistant text after the template, before the model's answer (may be empty).
    pub answer_prefix: String,
    /// The document is the start of the assistant's answer, for the model to continue (code):
    /// the template's tail goes before the document, and the question part is the text that
    /// continues it (see the module doc).
    pub in_answer: bool,
    /// Gold answers.
    pub answers: Vec<String>,
    /// How to score.
    pub metric: Metric,
    /// The trivial baseline's answer.
    pub trivial: String,
    /// Where the sample comes from (dataset item ids).
    pub source: String,
    /// Facts about the sample (depth, positions, ...).
    pub info: serde_json::Map<String, serde_json::Value>,
}

/// One sample: the prompt in two parts, gold answers, metric and baselines.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// The task.
    pub task: Task,
    /// `task/seed/len` plus the dataset items used.
    pub id: String,
    /// The seed.
    pub seed: u64,
    /// The requested length in tokens (the prompt is at most this long).
    pub target_len: usize,
    /// Text of the context part.
    pub context_text: String,
    /// Text of the question part.
    pub question_text: String,
    /// Token ids of the context part: a prefix of [`Sample::prompt_ids`].
    pub context_ids: Vec<u32>,
    /// Token ids of the question part.
    pub question_ids: Vec<u32>,
    /// The no-context baseline's prompt: template, instruction and question without the document.
    pub no_context_ids: Vec<u32>,
    /// Gold answers.
    pub answers: Vec<String>,
    /// How to score.
    pub metric: Metric,
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Where the answer ends besides stop tokens and the limit (the model's template decides).
    pub answer_end: AnswerEnd,
    /// The trivial baseline's answer.
    pub trivial_answer: String,
    /// Facts about the sample.
    pub info: serde_json::Map<String, serde_json::Value>,
}

impl Sample {
    /// The full prompt: context ids then question ids.
    pub fn prompt_ids(&self) -> Vec<u32> {
        [self.context_ids.as_slice(), self.question_ids.as_slice()].concat()
    }

    /// Prompt length in tokens.
    pub fn len(&self) -> usize {
        self.context_ids.len() + self.question_ids.len()
    }

    /// Whether the prompt is empty (never, for a built sample).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Score a prediction with this sample's metric.
    pub fn score(&self, prediction: &str) -> f64 {
        self.metric.score(prediction, &self.answers)
    }
}

/// Errors while building samples.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// An unknown task name.
    #[error("unknown task {name:?}; known tasks: {known}")]
    UnknownTask {
        /// The name given.
        name: String,
        /// The names accepted.
        known: String,
    },
    /// The data could not be fetched or read.
    #[error(transparent)]
    Data(#[from] AssetError),
    /// Tokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The requested length cannot hold the sample.
    #[error("{task}: a prompt of {len} tokens is too short ({why})")]
    TooShort {
        /// The task.
        task: &'static str,
        /// The length asked for.
        len: usize,
        /// What did not fit.
        why: String,
    },
}

/// Build the sample of `task` for `seed` with a prompt of at most `target_len` tokens.
pub fn sample(task: Task, seed: u64, target_len: usize, tok: &Tokenizer) -> Result<Sample, TaskError> {
    let mut rng = Rng::new(task, seed);
    let parts = match task {
        Task::Needle => {
            needle::build(&mut rng, target_len, tok, needle::Phrasing::Ruler, Some(needle::depth_of_seed(seed)))?
        }
        Task::Synthetic => synthetic::build(&mut rng, target_len, tok)?,
        Task::SingleDocQa => single_doc_qa::build(&mut rng, target_len, tok)?,
        Task::MultiDocQa => multi_doc_qa::build(&mut rng, target_len, tok)?,
        Task::Summarization => summarization::build(&mut rng, target_len, tok)?,
        Task::FewShot => few_shot::build(&mut rng, target_len, tok, few_shot::class_of_seed(seed))?,
        Task::Code => code::build(&mut rng, target_len, tok)?,
    };
    assemble(task, seed, target_len, tok, parts)
}

/// Get `cell`'s value, computing it with `init` on first use (errors are not cached).
pub(crate) fn cached<T, E>(cell: &'static OnceLock<T>, init: impl FnOnce() -> Result<T, E>) -> Result<&'static T, E> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = init()?;
    let _ = cell.set(v);
    Ok(cell.get().expect("just set"))
}

/// Number of tokens of `text`.
pub(crate) fn count(tok: &Tokenizer, text: &str) -> Result<usize, TaskError> {
    Ok(tok.encode(text)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_clear() {
        for t in Task::ALL {
            assert_eq!(Task::from_name(t.name()).unwrap(), t);
        }
        let err = Task::from_name("trec").unwrap_err().to_string();
        assert!(err.contains("\"trec\"") && err.contains("few-shot"), "{err}");
    }

    #[test]
    fn metric_scores_use_the_first_line_for_classification() {
        let m = Metric::Classification { classes: vec!["Date".into(), "Humans".into()] };
        // First line "Date" only: 1.0; "Humans" on the second line is ignored.
        assert_eq!(m.score("\nDate\nHumans", &["Date".into()]), 1.0);
        assert_eq!(Metric::QaF1.score("Paris", &["London".into(), "paris".into()]), 1.0);
    }
}
