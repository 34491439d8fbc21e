//! kvbench's developer tasks, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! One module per command. Commands that need llama.cpp build llama-cpp-python from source into
//! a private virtual environment under `target/` (see [`venv`]); nothing is installed globally.

mod baselines;
mod bench;
mod bless;
mod fuzz;
mod gate;
mod gemma_reference;
mod golden;
mod kvpress_parity;
mod kvpress_speed;
mod perf;
mod record;
mod report;
mod sequential;
mod tova_parity;
mod trial_seconds;
mod venv;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kvbench developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate golden/llama_cpp_reference.json with llama.cpp (the independent reference).
    Golden(golden::Args),
    /// Trace llama.cpp's forward pass on a golden prompt and recompute it with its arithmetic.
    LlamaArith(golden::ArithArgs),
    /// Measure prefill and decode speed and peak RSS beside llama.cpp; writes docs/perf.json (docs/perf-gemma3-270m.json with `--model gemma3-270m`).
    Perf(perf::Args),
    /// Time per (method, sample) beside NVIDIA kvpress's pipeline; writes docs/kvpress-speed.json.
    KvpressSpeed(kvpress_speed::Args),
    /// Build task samples, run the full cache on them and write traces/<tier>/<task>.trace.zst.
    Record(record::Args),
    /// Accept the pending golden snapshots that failing trials left (after reviewing them).
    Bless(bless::Args),
    /// Fuzz every reader of untrusted bytes (traces, GGUF, prefill entries, results), on stable.
    Fuzz(fuzz::Args),
    /// The main job: run every trial of a tier and write the report.
    Bench(bench::Args),
    /// Render the report of a tier's results again (merging shards' results with --merge).
    Report(report::ReportArgs),
    /// Hold a folder of results against a tier's goldens with its gate; count failures by kind.
    Gate(gate::Args),
    /// What the full tier's sequential design saves and risks, on results that ran every sample.
    Sequential(sequential::Args),
    /// Score each trace sample's no-context and trivial baselines; write them beside the trace.
    Baselines(baselines::Args),
    /// Benchmark trial-seconds per (method, task): samples decoded alone against in groups.
    TrialSeconds(trial_seconds::Args),
    /// Which positions kvbench's TOVA keeps on the recorded probes, beside kvpress's TOVAPress.
    TovaParity(tova_parity::Args),
    /// Regenerate tests/data/kvpress_parity.json (kvpress's presses on the recorded probes) and
    /// compare kvbench's token methods with it.
    KvpressParity(kvpress_parity::Args),
    /// Regenerate tests/data/kv_quant_reference.json: gguf-py's llama.cpp cache-type blocks.
    KvQuantReference,
    /// Regenerate tests/data/iq4_nl_reference.json: ggml's iq4_nl cache quantizer, ported to numpy,
    /// decoded by gguf-py.
    Iq4NlReference,
    /// Rewrite docs/METHODS.md's table of methods from the registry.
    MethodsTable,
    /// Regenerate tests/data/fp8_reference.json: torch's float8_e4m3fn and float8_e5m2 codes.
    Fp8Reference,
    /// Regenerate tests/data/turboquant_reference.json: vLLM's TurboQuant store, re-implemented in
    /// numpy from its source.
    TurboquantReference,
    /// Regenerate tests/data/dequant_reference.json: gguf-py's values for the Gemma file's blocks.
    DequantReference,
    /// Regenerate golden/gemma3_exact_reference.json: Gemma 3 in float64 numpy on 10 prompts.
    GemmaReference(gemma_reference::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Golden(args) => golden::run(args),
        Command::LlamaArith(args) => golden::arith(args),
        Command::Perf(args) => perf::run(args),
        Command::KvpressSpeed(args) => kvpress_speed::run(args),
        Command::Record(args) => record::run(args),
        Command::Bless(args) => bless::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Report(args) => report::report(args),
        Command::Gate(args) => gate::run(args),
        Command::Sequential(args) => sequential::run(args),
        Command::TrialSeconds(args) => trial_seconds::run(args),
        Command::Baselines(args) => baselines::run(args),
        Command::TovaParity(args) => tova_parity::run(args),
        Command::KvpressParity(args) => kvpress_parity::run(args),
        Command::DequantReference => dequant_reference(),
        Command::KvQuantReference => python_reference("kv_quant_reference", venv::gguf_python()?),
        Command::Iq4NlReference => python_reference("iq4_nl_reference", venv::gguf_python()?),
        Command::Fp8Reference => python_reference("fp8_reference", venv::hf_python()?),
        Command::TurboquantReference => python_reference("turboquant_reference", venv::hf_python()?),
        Command::MethodsTable => methods_table(),
        Command::GemmaReference(args) => gemma_reference::run(args),
    }
}

/// `cargo xtask dequant-reference`: gguf-py dequantizes the first blocks of the Gemma GGUF's
/// tensors of each type kvbench reads beyond llama's (Q5_0, Q4_K, Q6_K), for `model::kquants`'s
/// bit-exact unit test.
fn dequant_reference() -> anyhow::Result<()> {
    let gguf = kvbench::assets::gemma3_gguf()?;
    let python = venv::gguf_python()?;
    let out = project_root().join("tests/data/dequant_reference.json");
    venv::run(
        std::process::Command::new(python)
            .arg(project_root().join("xtask/py/dequant_reference.py"))
            .arg(&gguf)
            .arg(&out),
    )?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

fn methods_table() -> anyhow::Result<()> {
    let path = project_root().join("docs/METHODS.md");
    let doc = std::fs::read_to_string(&path)?;
    let (begin, end) = ("<!-- methods-table:begin -->\n", "<!-- methods-table:end -->");
    let start = doc.find(begin).ok_or_else(|| anyhow::anyhow!("no {begin:?} in {}", path.display()))? + begin.len();
    let stop = doc[start..].find(end).ok_or_else(|| anyhow::anyhow!("no {end:?} after it"))? + start;
    let table = kvbench::kv::methods::registry::markdown_table();
    std::fs::write(&path, format!("{}{table}{}", &doc[..start], &doc[stop..]))?;
    eprintln!(
        "xtask: wrote the table of {} methods into {}",
        kvbench::kv::methods::registry::REGISTRY.len(),
        path.display()
    );
    Ok(())
}

/// Run `xtask/py/{name}.py` with `python` (one of the [`venv`]s), writing `tests/data/{name}.json`.
fn python_reference(name: &str, python: PathBuf) -> anyhow::Result<()> {
    let out = project_root().join(format!("tests/data/{name}.json"));
    let script = project_root().join(format!("xtask/py/{name}.py"));
    venv::run(std::process::Command::new(python).arg(script).arg(&out))?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}
