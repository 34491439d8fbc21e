//! `cargo xtask perf`: kvbench's prefill and decode speed and peak memory beside llama.cpp's,
//! same GGUF, same thread count, same run.
//!
//! kvbench is measured through its release binary (`kvbench generate --prompt-ids … --json`),
//! so the figures are what a user gets; llama.cpp through `xtask/py/llama_perf.py`. Prompts are
//! fixed-seed ordinary token ids of 1,024 and 4,096 tokens (SmolLM2) or 1,024 and 8,192 (Gemma,
//! `--model gemma3-270m`: past its 512-token window, where only its global layers grow); decode
//! is timed over 64 steps after the prompt. kvbench runs twice per prompt: with its `full` cache (fp32, the benchmark's
//! reference) and with `fp16` (half-precision keys and values, llama.cpp's default cache type). Rounds (default 5) alternate the engines, each figure is the median over rounds,
//! and the ratio is the median of each round's kvbench / llama.cpp, so that a slow spell of a
//! shared machine does not land on one engine only. Peak RSS is the kernel's high-water mark
//! (`VmHWM`) of the longer prompt's generation process. Results go to `docs/perf.json`
//! (`docs/perf-gemma3-270m.json`) and a markdown table on stdout, for `docs/PERF.md`.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use kvbench::model::pinned::Pinned;

use crate::{project_root, venv};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Rounds (each runs both engines once; medians are reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Skip llama.cpp (no reference column).
    #[arg(long)]
    no_llama: bool,
    /// The model measured.
    #[arg(long, value_enum, default_value_t = Pinned::Smollm2)]
    model: Pinned,
}

const DECODE_STEPS: usize = 64;

/// The prompt lengths measured for `model`, with their labels: the longer past Gemma's window.
fn sizes(model: Pinned) -> [(&'static str, usize); 2] {
    match model {
        Pinned::Smollm2 => [("1k", 1024), ("4k", 4096)],
        Pinned::Gemma3 => [("1k", 1024), ("8k", 8192)],
    }
}

/// Where a model's results go.
fn results_file(model: Pinned) -> String {
    match model.subdir() {
        None => "docs/perf.json".to_string(),
        Some(name) => format!("docs/perf-{name}.json"),
    }
}

/// The four speed figures for prompts of `sizes`, as llama_perf.py names them.
fn speed_figures(sizes: [(&str, usize); 2]) -> Vec<String> {
    ["prefill", "decode"].iter().flat_map(|kind| sizes.map(|(label, _)| format!("{kind}_{label}"))).collect()
}

/// kvbench's cache methods measured, with the suffix of their figures: `full` is the fp32
/// reference cache every method is compared with; `fp16` stores keys and values as llama.cpp's
/// default cache does (f16), so its row is the like-for-like comparison.
const METHODS: [(&str, &str); 2] = [("full", ""), ("fp16", "_fp16")];

/// Each kvbench figure's key with the llama.cpp figure it is compared with.
fn figures(speed: &[String]) -> Vec<(String, String)> {
    METHODS
        .into_iter()
        .flat_map(|(_, suffix)| speed.iter().map(move |key| (format!("{key}{suffix}"), key.clone())))
        .collect()
}

/// Measure and report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = project_root();
    venv::run(Command::new(env!("CARGO")).current_dir(&root).args(["build", "--release", "--bin", "kvbench"]))?;
    let kvbench = root.join("target/release/kvbench");
    let dir = root.join("target/perf");
    std::fs::create_dir_all(&dir)?;
    let llama_python = if args.no_llama { None } else { Some(venv::llama_python()?) };
    let gguf = args.model.gguf()?;
    let sizes = sizes(args.model);
    let speed = speed_figures(sizes);
    let vocab = kvbench::model::ModelConfig::from_gguf(&kvbench::model::gguf::GgufFile::open(&gguf)?)?.vocab as u32;

    // Rounds alternate the engines, so that a slow spell of a shared machine touches both; each
    // round's ratio compares neighbours in time.
    let mut ours: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut theirs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..args.repeats {
        for ((label, n), (method, suffix)) in sizes.into_iter().flat_map(|size| METHODS.map(|m| (size, m))) {
            let ids_path = dir.join(format!("prompt-{}-{n}.json", args.model.name()));
            let ids = prompt_ids(n, 0x6b76_6265_6e63_6800 + n as u64, vocab);
            std::fs::write(&ids_path, serde_json::to_string(&ids)?)?;
            let out = Command::new(&kvbench)
                .args(["generate", "--json", "--ignore-eos", "--threads", &args.threads.to_string()])
                .args(["--model", args.model.name()])
                .args(["--method", method])
                .args(["--max-new-tokens", &(DECODE_STEPS + 1).to_string(), "--prompt-ids"])
                .arg(&ids_path)
                .output()
                .context("cannot run target/release/kvbench")?;
            if !out.status.success() {
                bail!("kvbench generate failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: Value = serde_json::from_slice(&out.stdout).context("kvbench printed no JSON")?;
            let (p, d) =
                (v["prefill_tokens_per_s"].as_f64().unwrap_or(0.0), v["decode_tokens_per_s"].as_f64().unwrap_or(0.0));
            eprintln!("round {round}: kvbench {label}, {method} cache: prefill {p:.1} tok/s, decode {d:.1} tok/s");
            ours.entry(format!("prefill_{label}{suffix}")).or_default().push(p);
            ours.entry(format!("decode_{label}{suffix}")).or_default().push(d);
            let rss = v["peak_rss_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
            ours.entry(format!("peak_rss_mib_{label}{suffix}")).or_default().push(rss);
        }
        if let Some(python) = &llama_python {
            let out = Command::new(python)
                .arg(root.join("xtask/py/llama_perf.py"))
                .arg("--gguf")
                .arg(&gguf)
                .args(["--threads", &args.threads.to_string(), "--repeats", "1", "--json"])
                .arg("--sizes")
                .arg(sizes.map(|(_, n)| n.to_string()).join(","))
                .output()?;
            if !out.status.success() {
                bail!("llama_perf.py failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: Value = serde_json::from_slice(&out.stdout).context("llama_perf.py printed no JSON")?;
            for key in &speed {
                theirs.entry(key.clone()).or_default().push(v[key].as_f64().unwrap_or(f64::NAN));
            }
            let figure = |key: &String| format!("{key} {}", v[key]);
            eprintln!("round {round}: llama.cpp tok/s: {}", speed.iter().map(figure).collect::<Vec<_>>().join(", "));
        }
    }

    let summary = |runs: &BTreeMap<String, Vec<f64>>| -> serde_json::Map<String, Value> {
        runs.iter()
            .flat_map(|(key, xs)| [(key.clone(), json!(median(xs))), (format!("{key}_runs"), json!(xs))])
            .collect()
    };
    // each round's kvbench figure over llama.cpp's, then the median over rounds
    let ratios: serde_json::Map<String, Value> = figures(&speed)
        .into_iter()
        .filter_map(|(key, llama_key)| {
            let (a, b) = (ours.get(&key)?, theirs.get(&llama_key)?);
            let per_round: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
            Some((key, json!(median(&per_round))))
        })
        .collect();
    let machine = machine();
    let report = json!({
        "kvbench": summary(&ours), "llama_cpp": summary(&theirs), "ratio_median_of_rounds": ratios,
        "threads": args.threads, "rounds": args.repeats, "machine": machine,
        "model": args.model.display_name(), "gguf_sha256": kvbench::assets::sha256_file(&gguf)?,
    });
    let file = results_file(args.model);
    std::fs::write(root.join(&file), serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("wrote {file}");
    println!("| {} (tokens/s, {} threads) | kvbench | llama.cpp | ratio |", args.model.display_name(), args.threads);
    println!("|---|---:|---:|---:|");
    for (key, llama_key) in figures(&speed) {
        let a = report["kvbench"][&key].as_f64().unwrap_or(f64::NAN);
        let b = report["llama_cpp"][&llama_key].as_f64().unwrap_or(f64::NAN);
        let r = report["ratio_median_of_rounds"][&key].as_f64().unwrap_or(f64::NAN);
        println!("| {key} | {a:.1} | {b:.1} | {r:.2} |");
    }
    for (_, suffix) in METHODS {
        let label = sizes[1].0;
        let key = format!("peak_rss_mib_{label}{suffix}");
        println!(
            "| {key} ({label}-token generation) | {:.0} | | |",
            report["kvbench"][&key].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("\nmedians of {} rounds; ratio: median over rounds of kvbench / llama.cpp", args.repeats);
    println!("machine: {machine}");
    Ok(())
}

/// `n` ordinary token ids from a fixed-seed generator (clear of the control tokens at the bottom
/// and the rare tokens at the top of a `vocab`-entry vocabulary, as llama_perf.py does).
fn prompt_ids(n: usize, seed: u64, vocab: u32) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            100 + (state % u64::from(vocab - 300)) as u32
        })
        .collect()
}

pub(crate) fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpu}, {} logical CPUs", std::thread::available_parallelism().map_or(0, |n| n.get()))
}
