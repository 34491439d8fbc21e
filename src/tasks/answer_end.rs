//! Where an answer ends. An instruct model ends its turn itself (SmolLM2's `<|im_end|>`); a base
//! model never does, and writes on past its answer ("7072319.\nThe source of error is…") until
//! the token limit, text the metrics would read as part of the answer (a QA F1 diluted, a summary
//! run into the next article). So for a base model's template ([`Template::Plain`]) the answer
//! ends where what the metric reads is complete: its first line of text, or for `code` its first
//! line of code ([`metrics::first_code_line`], comments and blank lines skipped as the metric
//! skips them). LongBench cuts base-model predictions at their first line for the same reason.
//! The end token is kept, as a stop token is: the reference and every method's answer end by the
//! same rule, and the tokens after it, which no score reads, are never decoded.

use serde::{Deserialize, Serialize};

use super::{Task, metrics};
use crate::model::tokenizer::Template;

/// Where an answer ends, besides the model's stop tokens and the token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerEnd {
    /// Only there (an instruct model ends its turn).
    #[default]
    Turn,
    /// At the end of the answer's first line of text.
    Line,
    /// At the end of the answer's first line of code.
    CodeLine,
}

impl AnswerEnd {
    /// The rule for `task` under `template`.
    pub fn of(task: Task, template: Template) -> Self {
        match (template, task) {
            (Template::ChatMl, _) => Self::Turn,
            (Template::Plain, Task::Code) => Self::CodeLine,
            (Template::Plain, _) => Self::Line,
        }
    }

    /// Whether an answer that reads `text` so far (stop tokens left out) has ended.
    pub fn reached(self, text: &str) -> bool {
        match self {
            Self::Turn => false,
            // leading line breaks skipped as the first-line metrics skip them (`metrics::label_of`)
            Self::Line => text.trim_start_matches('\n').contains('\n'),
            Self::CodeLine => text.rfind('\n').is_some_and(|end| !metrics::first_code_line(&text[..end]).is_empty()),
        }
    }

    /// [`Self::reached`] as generation takes it (`None` for [`Self::Turn`]: nothing to check).
    pub fn rule(self) -> Option<fn(&str) -> bool> {
        match self {
            Self::Turn => None,
            Self::Line => Some(|text| Self::Line.reached(text)),
            Self::CodeLine => Some(|text| Self::CodeLine.reached(text)),
        }
    }

    /// Whether it is the default, [`Self::Turn`] (left out of traces, which then read as before).
    pub fn is_turn(&self) -> bool {
        *self == Self::Turn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_end_where_the_metric_stops_reading() {
        // a turn ends only by the model
        assert!(!AnswerEnd::Turn.reached("7072319.\nThe source"));
        // a line: once text is followed by a line break; leading breaks are not an end
        assert!(!AnswerEnd::Line.reached(""));
        assert!(!AnswerEnd::Line.reached("\n\n"));
        assert!(!AnswerEnd::Line.reached(": 7072319."));
        assert!(AnswerEnd::Line.reached(": 7072319.\n"));
        assert!(AnswerEnd::Line.reached("\n Humans\n"));
        // code: comments, fences and blank lines are skipped as first_code_line skips them
        assert!(!AnswerEnd::CodeLine.reached("// the next line\n"));
        assert!(!AnswerEnd::CodeLine.reached("/* a\nblock */\n\n"));
        assert!(!AnswerEnd::CodeLine.reached("let x = 1;"));
        assert!(AnswerEnd::CodeLine.reached("// why\nlet x = 1;\n"));
        assert!(AnswerEnd::CodeLine.reached("```rust\nfn f() {\n"));
        // where a rule ends an answer, the metric reads nothing after it
        let gold = "let x = 1;".to_string();
        let cut = "// why\nlet x = 1;\n";
        assert_eq!(metrics::code_sim(cut, &gold), metrics::code_sim(&format!("{cut}let y = 2;\n"), &gold));
    }

    #[test]
    fn the_rule_follows_the_template() {
        assert_eq!(AnswerEnd::of(Task::Needle, Template::ChatMl), AnswerEnd::Turn);
        assert_eq!(AnswerEnd::of(Task::Code, Template::ChatMl), AnswerEnd::Turn);
        assert_eq!(AnswerEnd::of(Task::Summarization, Template::Plain), AnswerEnd::Line);
        assert_eq!(AnswerEnd::of(Task::Code, Template::Plain), AnswerEnd::CodeLine);
    }
}
