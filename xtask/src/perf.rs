//! `cargo xtask perf`: kvbench's prefill and decode speed and peak memory beside llama.cpp's,
//! same GGUF, same thread count, same run.
//!
//! kvbench is measured through its release binary (`kvbench generate --prompt-ids … --json`),
//! so the figures are what a user gets; llama.cpp through `xtask/py/llama_perf.py`. Prompts are
//! fixed-seed ordinary token ids of 1,024 and 4,096 tokens; decode is timed over 64 steps after
//! the prompt; each figure is the median of three runs. Peak RSS is the kernel's high-water mark
//! (`VmHWM`) of the 4k-token generation process. Results go to `docs/perf.json` and a markdown
//! table on stdout, for `docs/PERF.md`.

use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{project_root, venv};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Skip llama.cpp (no reference column).
    #[arg(long)]
    no_llama: bool,
}

const DECODE_STEPS: usize = 64;

/// Measure and report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = project_root();
    venv::run(Command::new(env!("CARGO")).current_dir(&root).args(["build", "--release", "--bin", "kvbench"]))?;
    let kvbench = root.join("target/release/kvbench");
    let dir = root.join("target/perf");
    std::fs::create_dir_all(&dir)?;

    let mut ours = serde_json::Map::new();
    for (label, n) in [("1k", 1024usize), ("4k", 4096)] {
        let ids_path = dir.join(format!("prompt-{n}.json"));
        std::fs::write(&ids_path, serde_json::to_string(&prompt_ids(n, 0x6b76_6265_6e63_6800 + n as u64))?)?;
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        let mut rss = Vec::new();
        for r in 0..args.repeats {
            let out = Command::new(&kvbench)
                .args(["generate", "--json", "--ignore-eos", "--threads", &args.threads.to_string()])
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
            eprintln!("kvbench {label} run {r}: prefill {p:.1} tok/s, decode {d:.1} tok/s");
            prefill.push(p);
            decode.push(d);
            rss.push(v["peak_rss_bytes"].as_f64().unwrap_or(0.0));
        }
        // the spread shows whether the machine was quiet: with 2 threads on 2 cores, any other
        // job halves a figure
        ours.insert(format!("prefill_{label}_runs"), json!(prefill.clone()));
        ours.insert(format!("decode_{label}_runs"), json!(decode.clone()));
        ours.insert(format!("prefill_{label}"), json!(median(&mut prefill)));
        ours.insert(format!("decode_{label}"), json!(median(&mut decode)));
        ours.insert(format!("peak_rss_mib_{label}"), json!(median(&mut rss) / (1 << 20) as f64));
    }

    let llama = if args.no_llama {
        Value::Null
    } else {
        let python = venv::llama_python()?;
        let out = Command::new(python)
            .arg(root.join("xtask/py/llama_perf.py"))
            .arg("--gguf")
            .arg(kvbench::assets::smollm2_gguf()?)
            .args(["--threads", &args.threads.to_string(), "--json"])
            .output()?;
        if !out.status.success() {
            bail!("llama_perf.py failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("llama_perf.py printed no JSON")?
    };

    let machine = machine();
    let report = json!({ "kvbench": ours, "llama_cpp": llama, "threads": args.threads, "machine": machine });
    std::fs::write(root.join("docs/perf.json"), serde_json::to_string_pretty(&report)? + "\n")?;
    println!("| figure (tokens/s, {} threads) | kvbench | llama.cpp | ratio |", args.threads);
    println!("|---|---:|---:|---:|");
    for key in ["prefill_1k", "prefill_4k", "decode_1k", "decode_4k"] {
        let a = report["kvbench"][key].as_f64().unwrap_or(f64::NAN);
        let b = report["llama_cpp"][key].as_f64().unwrap_or(f64::NAN);
        println!("| {key} | {a:.1} | {b:.1} | {:.2} |", a / b);
    }
    println!(
        "| peak RSS, 4k-token generation (MiB) | {:.0} | | |",
        report["kvbench"]["peak_rss_mib_4k"].as_f64().unwrap_or(f64::NAN)
    );
    println!("\nmachine: {machine}");
    Ok(())
}

/// `n` ordinary token ids from a fixed-seed generator (clear of the control tokens at the bottom
/// and the rare tokens at the top of the vocabulary, as llama_perf.py does).
fn prompt_ids(n: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            100 + (state % (49152 - 300)) as u32
        })
        .collect()
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn machine() -> String {
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
