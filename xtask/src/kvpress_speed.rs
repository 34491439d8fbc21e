//! `cargo xtask kvpress-speed`: time per (method, sample) of kvbench beside NVIDIA kvpress's
//! pipeline as a user runs it, on the same model, the same prompts, in the same run.
//!
//! The prompts are kvbench's needle samples (`kvbench task sample --task needle`) at 1,024 and
//! 3,072 tokens, in SmolLM2's chat template; both engines read the same tokens (kvpress applies
//! the tokenizer's template to the sample's parts, and the script checks the tokens are
//! kvbench's) and compress the context before the question
//! (kvpress's pipeline does; kvbench's `--mode query-agnostic`), then decode 8 new tokens.
//! kvbench runs `kvbench compare --json` (one process a sample, every method: the methods that
//! act after prefill restore one shared full-precision prefill); kvpress runs
//! `xtask/py/kvpress_speed.py` (one `pipeline("kv-press-text-generation")` call a press and
//! sample; each prefills again, as a user running a second press does). Rounds alternate the
//! engines, and each figure is the median over rounds and samples.
//!
//! The figures per (method, length): kvpress's seconds per call; kvbench's seconds for that
//! method once the shared prefill exists ("per additional method": what a user pays for one more
//! method on a prompt already prefilled), and its shared prefill's seconds once per sample.
//! Model loading is excluded from both. Results go to `docs/kvpress-speed.json` and a markdown
//! table on stdout, for `docs/PERF.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::perf::{machine, median};
use crate::{project_root, venv};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Rounds (each runs both engines once on every sample).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Samples (needle seeds) per prompt length.
    #[arg(long, default_value_t = 2)]
    samples: u64,
    /// Methods: kvbench's names, each with a kvpress press (`full` is no press).
    #[arg(long, default_value = "full,snapkv-2x,tova-2x,knorm-2x,streamingllm-2x,keydiff-2x,pyramidkv-4x")]
    methods: String,
}

const LENGTHS: [usize; 2] = [1024, 3072];
const NEW_TOKENS: usize = 8;

/// Measure and report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = project_root();
    venv::run(Command::new(env!("CARGO")).current_dir(&root).args(["build", "--release", "--bin", "kvbench"]))?;
    let kvbench = root.join("target/release/kvbench");
    let python = venv::hf_python()?;
    let gguf = kvbench::assets::smollm2_gguf()?;
    let dir = root.join("target/kvpress-speed");
    std::fs::create_dir_all(&dir)?;

    let mut samples = Vec::new();
    for len in LENGTHS {
        for seed in 0..args.samples {
            let out = Command::new(&kvbench)
                .args(["task", "sample", "--task", "needle", "--json", "--len", &len.to_string()])
                .args(["--seed", &seed.to_string()])
                .output()
                .context("cannot run target/release/kvbench")?;
            if !out.status.success() {
                bail!("kvbench task sample failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let s: Value = serde_json::from_slice(&out.stdout)?;
            let id = s["id"].as_str().context("sample without id")?.to_string();
            let stem = dir.join(id.replace('/', "_"));
            std::fs::write(stem.with_extension("context.txt"), s["context_text"].as_str().unwrap_or_default())?;
            std::fs::write(stem.with_extension("question.txt"), s["question_text"].as_str().unwrap_or_default())?;
            let tokens =
                s["context_ids"].as_array().map_or(0, Vec::len) + s["question_ids"].as_array().map_or(0, Vec::len);
            samples.push(json!({"id": id, "len": len, "tokens": tokens, "stem": stem,
                "context_text": s["context_text"], "question_text": s["question_text"],
                "context_ids": s["context_ids"], "question_ids": s["question_ids"]}));
        }
    }
    let samples_path = dir.join("samples.json");
    std::fs::write(&samples_path, serde_json::to_string(&samples)?)?;
    let len_of: BTreeMap<String, usize> = samples
        .iter()
        .map(|s| (s["id"].as_str().unwrap_or_default().to_string(), s["len"].as_u64().unwrap_or(0) as usize))
        .collect();

    // (engine figure, method, length) -> seconds over rounds and samples
    let mut times: BTreeMap<(&str, String, usize), Vec<f64>> = BTreeMap::new();
    let mut kvpress_tokens = BTreeMap::new();
    let mut versions = Value::Null;
    for round in 0..args.rounds {
        for s in &samples {
            let stem = Path::new(s["stem"].as_str().unwrap_or_default());
            let out = Command::new(&kvbench)
                .args(["compare", "--json", "--mode", "query-agnostic", "--threads", &args.threads.to_string()])
                .arg("--prompt-file")
                .arg(stem.with_extension("context.txt"))
                .arg("--question-file")
                .arg(stem.with_extension("question.txt"))
                .args(["--methods", &args.methods, "--max-new-tokens", &NEW_TOKENS.to_string()])
                .output()
                .context("cannot run target/release/kvbench")?;
            if !out.status.success() {
                bail!("kvbench compare failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let len = s["len"].as_u64().unwrap_or(0) as usize;
            let mut prefill = None;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let row: Value =
                    serde_json::from_str(line).context("kvbench compare printed a line that is not JSON")?;
                let method = row["method"].as_str().unwrap_or_default().to_string();
                let seconds = row["seconds"][0].as_f64().unwrap_or(0.0) + row["seconds"][1].as_f64().unwrap_or(0.0);
                times.entry(("kvbench", method, len)).or_default().push(seconds);
                prefill = prefill.or(row["shared_prefill_seconds"].as_f64());
            }
            let prefill = prefill.context("no method of --methods shares the prefill")?;
            times.entry(("kvbench_shared_prefill", String::new(), len)).or_default().push(prefill);
        }
        eprintln!("round {round}: kvbench done; kvpress …");
        let out_path = dir.join("kvpress.json");
        venv::run(
            Command::new(&python)
                .envs([
                    ("TQDM_DISABLE", "1"),
                    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                    ("TRANSFORMERS_VERBOSITY", "error"),
                ])
                .arg(root.join("xtask/py/kvpress_speed.py"))
                .arg("--gguf")
                .arg(&gguf)
                .arg("--samples")
                .arg(&samples_path)
                .args(["--methods", &args.methods, "--threads", &args.threads.to_string()])
                .args(["--max-new-tokens", &NEW_TOKENS.to_string()])
                .arg("--json")
                .arg(&out_path),
        )?;
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&out_path)?)?;
        versions = v["versions"].clone();
        for row in v["rows"].as_array().context("kvpress_speed.py wrote no rows")? {
            let id = row["sample"].as_str().unwrap_or_default();
            let len = *len_of.get(id).context("kvpress_speed.py timed an unknown sample")?;
            let method = row["method"].as_str().unwrap_or_default().to_string();
            times.entry(("kvpress", method, len)).or_default().push(row["seconds"].as_f64().unwrap_or(f64::NAN));
            kvpress_tokens.insert(id.to_string(), row["tokens"].clone());
        }
        eprintln!("round {round}: kvpress done");
    }

    let medians: BTreeMap<String, f64> =
        times.iter().map(|((engine, method, len), xs)| (format!("{engine}/{method}/{len}"), median(xs))).collect();
    let report = json!({
        "medians_seconds": medians, "samples": samples.iter().map(|s| json!({"id": s["id"], "kvbench_tokens": s["tokens"],
            "kvpress_tokens": kvpress_tokens.get(s["id"].as_str().unwrap_or_default())})).collect::<Vec<_>>(),
        "rounds": args.rounds, "threads": args.threads, "new_tokens": NEW_TOKENS, "kvpress_stack": versions,
        "machine": machine(),
    });
    std::fs::write(root.join("docs/kvpress-speed.json"), serde_json::to_string_pretty(&report)? + "\n")?;

    println!("| method | tokens | kvpress s per call | kvbench s per additional method | kvpress / kvbench |");
    println!("|---|---:|---:|---:|---:|");
    for len in LENGTHS {
        for method in args.methods.split(',') {
            let theirs = medians.get(&format!("kvpress/{method}/{len}")).copied().unwrap_or(f64::NAN);
            let ours = medians.get(&format!("kvbench/{method}/{len}")).copied().unwrap_or(f64::NAN);
            println!("| {method} | {len} | {theirs:.3} | {ours:.3} | {:.1}× |", theirs / ours);
        }
        let prefill = medians.get(&format!("kvbench_shared_prefill//{len}")).copied().unwrap_or(f64::NAN);
        println!("| (kvbench's shared prefill, once a prompt) | {len} | | {prefill:.3} | |");
    }
    println!(
        "\nmedians over {} rounds × {} samples a length; {} threads each; machine: {}",
        args.rounds,
        args.samples,
        args.threads,
        machine()
    );
    Ok(())
}
