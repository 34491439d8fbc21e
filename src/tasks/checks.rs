//! Checks of every task on the real, pinned data and the real tokenizer (fetched on first use).

use std::sync::OnceLock;

use super::*;
use crate::model::gguf::GgufFile;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = crate::assets::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
        Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap()
    })
}

#[test]
fn every_task_fits_its_length_and_splits_context_from_question() {
    let (head, tail) = template(tok());
    let head_ids = tok().encode(head).unwrap();
    for task in Task::ALL {
        for (seed, len) in [(0, 1024), (5, 2048)] {
            let s = sample(task, seed, len, tok()).unwrap_or_else(|e| panic!("{}: {e}", task.name()));
            let what = format!("{} seed {seed} len {len}", task.name());
            assert!(s.len() <= len, "{what}: {} tokens", s.len());
            // Builders fill the budget: no sample is much shorter than asked.
            assert!(s.len() * 10 >= len * 8, "{what}: only {} tokens", s.len());
            let prompt = s.prompt_ids();
            assert_eq!(&prompt[..s.context_ids.len()], s.context_ids.as_slice(), "{what}");
            assert!(s.context_ids.starts_with(&head_ids) && s.no_context_ids.starts_with(&head_ids), "{what}");
            assert!(s.no_context_ids.ends_with(&s.question_ids), "{what}");
            assert!(s.no_context_ids.len() + 64 < s.len(), "{what}: the no-context prompt kept the document");
            let in_answer = matches!(task, Task::Code | Task::FewShot);
            let tail_in = if in_answer { &s.context_text } else { &s.question_text };
            assert!(tail_in.contains(tail), "{what}");
            assert_eq!(tok().decode(&s.context_ids).unwrap(), s.context_text, "{what}");
            assert!(!s.answers.is_empty() && s.answers.iter().all(|a| !a.trim().is_empty()), "{what}");
            // The gold answer scores full marks with the sample's own metric; the empty answer none.
            // (For multi-value synthetic samples, all gold values together.)
            let gold = if task == Task::Synthetic { s.answers.join(", ") } else { s.answers[0].clone() };
            assert!((s.score(&gold) - 1.0).abs() < 1e-6, "{what}: {}", s.score(&gold));
            assert_eq!(s.score(""), 0.0, "{what}");
        }
    }
}

#[test]
fn samples_are_a_pure_function_of_their_arguments() {
    for task in Task::ALL {
        let a = serde_json::to_string(&sample(task, 11, 1024, tok()).unwrap()).unwrap();
        let b = serde_json::to_string(&sample(task, 11, 1024, tok()).unwrap()).unwrap();
        let c = serde_json::to_string(&sample(task, 12, 1024, tok()).unwrap()).unwrap();
        assert_eq!(a, b, "{}", task.name());
        assert_ne!(a, c, "{}", task.name());
    }
}

#[test]
fn needle_sits_at_its_depth_once() {
    for (depth, lo, hi) in [(0.0, 0.0, 0.1), (0.5, 0.4, 0.6), (1.0, 0.9, 1.0)] {
        let mut rng = Rng::new(Task::Needle, 3);
        let parts = needle::build(&mut rng, 2048, tok(), needle::Phrasing::Ruler, Some(depth)).unwrap();
        let key = parts.answers[0].clone();
        assert_eq!(parts.document.matches(key.as_str()).count(), 1);
        let at = parts.document.find(key.as_str()).unwrap() as f64 / parts.document.len() as f64;
        assert!((lo..=hi).contains(&at), "depth {depth}: key at {at:.2}");
        let s = assemble(Task::Needle, 3, 2048, tok(), parts).unwrap();
        assert!(s.context_text.contains(key.as_str()) && !s.question_text.contains(key.as_str()));
    }
    let mut rng = Rng::new(Task::Needle, 3);
    let parts = needle::build(&mut rng, 1024, tok(), needle::Phrasing::PassKey, None).unwrap();
    assert!(parts.document.contains(&format!("The pass key is {}. Remember it.", parts.answers[0])));
}

#[test]
fn task_specific_golds() {
    for seed in 0..5 {
        let s = sample(Task::FewShot, seed, 1024, tok()).unwrap();
        assert_eq!(s.answers, [few_shot::CLASSES[seed as usize % 4]], "classes balanced by seed");
        assert!(few_shot::CLASSES.contains(&s.trivial_answer.as_str()));
        assert!(s.question_text.ends_with("\nType:"));
        let s = sample(Task::Code, seed, 1024, tok()).unwrap();
        assert!(code::is_code_line(&s.answers[0]), "{:?}", s.answers);
        // The prompt ends at the end of the last line; its newline opens the question part.
        assert!(s.question_text.starts_with('\n') && !s.question_text.ends_with('\n'));
        assert!(!s.trivial_answer.is_empty() && s.score(&s.trivial_answer) < 0.5, "{:?}", s.trivial_answer);
    }
    // Summarization: the target sits at a seeded position, is last only by chance, and is named
    // by its number and its first words, which follow "Article k:" in the context.
    let mut not_last = 0;
    for seed in 0..20 {
        let s = sample(Task::Summarization, seed, 1024, tok()).unwrap();
        let (k, n) = (s.info["target_position"].as_u64().unwrap(), s.info["articles"].as_u64().unwrap());
        assert!((1..=n).contains(&k) && n >= 2, "seed {seed}: {k} of {n}");
        not_last += usize::from(k < n);
        let quoted = s.question_text.split('"').nth(1).unwrap();
        assert!(s.question_text.contains(&format!("Article {k}, the article that begins \"{quoted}\".")));
        assert!(s.context_text.contains(&format!("Article {k}:\n{quoted}")), "seed {seed}");
        assert!(s.question_text.ends_with(&summarization::answer_prefix(k as usize, quoted)));
    }
    assert!((5..=15).contains(&not_last), "{not_last} of 20 targets not last");
}

#[test]
fn too_short_a_length_is_a_clear_error() {
    let err = sample(Task::MultiDocQa, 0, 60, tok()).unwrap_err().to_string();
    assert!(err.contains("multi-doc-qa") && err.contains("too short"), "{err}");
}
