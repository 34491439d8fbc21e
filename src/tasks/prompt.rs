//! Parts -> sample: the model's template around the user's text (SmolLM2's ChatML turn, or plain
//! completion for a base model), the document's token budget, and the assembly of context and
//! question ids (the layout is described in the [`super`] module doc).

use super::{Parts, Sample, Task, TaskError, truncate};
use crate::model::tokenizer::{Template, Tokenizer};

/// The two fixed halves of the model's template around the user's text.
pub fn template(tok: &Tokenizer) -> (&'static str, &'static str) {
    tok.template().halves()
}

/// LongBench's QA question, `"{question}\nAnswer:"`, split into (question, answer prefix) for
/// the model's template.
///
/// In a ChatML turn the cue stays in the user's text, as LongBench writes it, and the assistant
/// answers on a turn of its own. A plain completion prompt puts the template's `"\n"` between
/// question and answer, so the cue moves after it: the text is then `"{question}\nAnswer:"` and the
/// model continues the cue's line. Left in the question, `"…\nAnswer:\n"` reads to a base model as
/// an empty answer: Gemma-3-270M wrote "Question: …" or "Answer:" instead of an answer on 11 of 20
/// samples of each QA task (`docs/calibration/gemma3-270m/`, before this cue).
pub fn qa_cue(tok: &Tokenizer, question: &str) -> (String, String) {
    match tok.template() {
        Template::ChatMl => (format!("{question}\nAnswer:"), String::new()),
        Template::Plain => (question.to_string(), "Answer:".to_string()),
    }
}

/// Tokens left for the document once template, instruction, question and answer prefix are counted.
pub fn doc_budget(
    task: Task,
    tok: &Tokenizer,
    target_len: usize,
    instruction: &str,
    question: &str,
    answer_prefix: &str,
) -> Result<usize, TaskError> {
    let (head, tail) = template(tok);
    let fixed = tok.encode(&format!("{head}{instruction}"))?.len()
        + tok.encode_more(&format!("{question}{tail}{answer_prefix}"))?.len();
    if fixed + 64 > target_len {
        return Err(TaskError::TooShort {
            task: task.name(),
            len: target_len,
            why: format!("template, instruction and question take {fixed} tokens"),
        });
    }
    Ok(target_len - fixed)
}

/// Put `parts` into the template and fit the document to `target_len` (middle truncation).
pub fn assemble(task: Task, seed: u64, target_len: usize, tok: &Tokenizer, parts: Parts) -> Result<Sample, TaskError> {
    let (head, tail) = template(tok);
    let budget = doc_budget(task, tok, target_len, &parts.instruction, &parts.question, &parts.answer_prefix)?;
    let (prefix_text, question_text) = if parts.in_answer {
        (format!("{head}{}{tail}", parts.instruction), format!("{}{}", parts.question, parts.answer_prefix))
    } else {
        (format!("{head}{}", parts.instruction), format!("{}{tail}{}", parts.question, parts.answer_prefix))
    };
    let prefix_ids = tok.encode(&prefix_text)?;
    let doc_ids = truncate::middle(&tok.encode_more(&parts.document)?, budget);
    let question_ids = tok.encode_more(&question_text)?;
    let context_text = format!("{prefix_text}{}", tok.decode(&doc_ids)?);
    let no_context_ids = [prefix_ids.as_slice(), question_ids.as_slice()].concat();
    let context_ids = [prefix_ids, doc_ids].concat();
    Ok(Sample {
        task,
        id: format!("{}/s{seed}/n{target_len}/{}", task.name(), parts.source),
        seed,
        target_len,
        context_text,
        question_text,
        context_ids,
        question_ids,
        no_context_ids,
        answers: parts.answers,
        metric: parts.metric,
        max_new_tokens: task.max_new_tokens(),
        answer_end: super::AnswerEnd::of(task, tok.template()),
        trivial_answer: parts.trivial,
        info: parts.info,
    })
}

#[cfg(test)]
mod tests {
    use crate::model::tokenizer::{Template, chatml};

    #[test]
    fn template_halves_rejoin_to_chatml() {
        let (head, tail) = Template::ChatMl.halves();
        assert_eq!(format!("{head}Hi{tail}"), chatml(None, "Hi"));
        assert!(head.ends_with("<|im_start|>user\n") && tail == "<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(Template::Plain.halves(), ("", "\n"));
    }
}
