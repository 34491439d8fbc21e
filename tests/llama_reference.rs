//! kvbench against an independent engine: on every prompt in `golden/prompts/`, kvbench must
//! produce llama.cpp's prompt token ids and its first greedy tokens exactly, as recorded in
//! `golden/llama_cpp_reference.json` by `cargo xtask golden` (llama-cpp-python built from
//! source, same GGUF, no BOS). llama.cpp is not needed to run this test.

use std::path::Path;

use kvbench::kv::methods::Full;
use kvbench::model::generate::{GenerateOptions, generate};
use kvbench::model::session::{LoadOptions, Runtime};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model_sha256: String,
    n_predict: usize,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
}

#[test]
fn tokens_and_greedy_continuations_match_llama_cpp() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(root.join("golden/llama_cpp_reference.json")).unwrap()).unwrap();
    assert!(reference.prompts.len() >= 6, "the reference must cover at least 6 prompts");
    let pinned = kvbench::assets::asset("smollm2-135m-instruct-q4_1").unwrap();
    assert_eq!(reference.model_sha256, pinned.sha256, "the reference was recorded on another GGUF");

    let mut rt = Runtime::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("cannot load the model: {e}"));
    let mut failures = Vec::new();
    let mut longest = 0;
    for p in &reference.prompts {
        let text = std::fs::read_to_string(root.join("golden/prompts").join(format!("{}.txt", p.name))).unwrap();
        let ids = rt.tokenizer().encode(&text).unwrap();
        if ids != p.prompt_ids {
            let at = ids.iter().zip(&p.prompt_ids).position(|(a, b)| a != b).unwrap_or(ids.len().min(p.prompt_ids.len()));
            failures.push(format!("{}: prompt ids differ from llama.cpp's at index {at} ({} vs {} ids)", p.name, ids.len(), p.prompt_ids.len()));
            continue;
        }
        longest = longest.max(ids.len());
        rt.reset(std::sync::Arc::new(Full)).unwrap();
        let options = GenerateOptions { max_new_tokens: reference.n_predict, ..GenerateOptions::default() };
        let generation = generate(&mut rt, &ids, options).unwrap();
        let text = rt.tokenizer().decode(&generation.output_ids).unwrap_or_default();
        eprintln!("{}: {} prompt tokens -> {:?}", p.name, ids.len(), text);
        if generation.output_ids != p.output_ids {
            failures.push(format!("{}: greedy ids {:?}, llama.cpp {:?}", p.name, generation.output_ids, p.output_ids));
        }
    }
    assert!(longest > 3000, "one prompt must be over 3,000 tokens (longest: {longest})");
    assert!(failures.is_empty(), "kvbench disagrees with llama.cpp:\n{}", failures.join("\n"));
}
