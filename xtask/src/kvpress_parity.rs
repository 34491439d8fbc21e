//! `cargo xtask kvpress-parity`: the fixture of what NVIDIA kvpress's presses keep on kvbench's
//! recorded probes (`tests/data/kvpress_parity.json`), then the comparison with kvbench's methods
//! (`kvbench::bench::parity::check`, `kvbench::eval::parity`), printed for docs/METHODS.md.
//!
//! For each task's default-tier probe it exports the layer's prompt queries, keys and values, and
//! per ratio the settings that align kvpress with kvbench's documented choices (the budget, its
//! sinks, its chunk count, DuoAttention's count of streaming heads and their window: settings, not
//! kept positions), and the layer's attention output weight
//! from the GGUF (CriticalKV's); `xtask/py/kvpress_parity.py` runs each
//! press's own `compress` and writes the fixture. `tests/kvpress_parity.rs` then holds kvbench to
//! it with no Python. Re-run after re-recording the default tier's traces.

use std::process::Command;

use anyhow::{Context, bail};
use kvbench::eval::parity::{self, Fixture};
use kvbench::kv::methods::Budget;
use kvbench::kv::methods::{chunkkv, duoattention, streamingllm};
use kvbench::model::gguf::GgufFile;
use kvbench::tasks::Task;
use serde_json::json;

use crate::{project_root, venv};

/// Where the fixture is committed.
pub const FIXTURE: &str = "tests/data/kvpress_parity.json";

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Ratios to compare (kvbench's `-Nx`).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    ratios: Vec<u32>,
}

/// Export, run kvpress, compare, print.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = project_root();
    let gguf = GgufFile::open(&kvbench::assets::smollm2_gguf()?)?;
    let mut tasks = Vec::new();
    for task in Task::ALL {
        let (trace, recorded) = kvbench::bench::parity::default_probe(task).map_err(anyhow::Error::msg)?;
        let sample = trace.samples.iter().find(|s| s.probe.is_some()).context("a trace without probes")?;
        let store = &recorded.layers[0];
        let shape = store.shape();
        let (n, d) = (recorded.prompt, shape.head_dim);
        let width = shape.heads * d;
        let per_head = |rows: fn(&kvbench::kv::prefill::FullStore, usize) -> &[f32]| -> Vec<Vec<f32>> {
            (0..shape.kv_heads).map(|g| rows(store, g)[..n * d].to_vec()).collect()
        };
        let aligned: serde_json::Map<String, serde_json::Value> = args
            .ratios
            .iter()
            .map(|&r| {
                let budget = Budget::Ratio(r as f64).tokens(n);
                let chunks = n.div_ceil(chunkkv::CHUNK);
                // DuoAttention's plan for the probe's one layer: how many of its kv heads stream
                // (which ones, kvpress's on-the-fly scoring decides), their sinks and window
                let duo = duoattention::Plan::new(n, budget, shape.kv_heads);
                let value = json!({ "budget": budget, "sinks": streamingllm::sinks(budget),
                                    "chunks": chunks, "chunks_kept": (chunks * budget / n).max(1),
                                    "duo": { "streaming": duo.streaming, "sinks": duo.sinks, "recent": duo.recent } });
                (r.to_string(), value)
            })
            .collect();
        tasks.push(json!({
            "task": task.name(), "sample": sample.meta.id, "layer": recorded.layer_ids[0],
            "layers": recorded.model_layers, "prompt": n, "heads": shape.heads, "kv_heads": shape.kv_heads,
            "head_dim": d, "rope_base": recorded.rope_base,
            // the layer's attention output weight, [hidden, heads · head_dim] (CriticalKV's)
            "out_proj": gguf.dequantize(&format!("blk.{}.attn_output.weight", recorded.layer_ids[0]))?,
            "queries": &store.recent_queries()[..n * width],
            "keys": per_head(|s, g| s.keys(g)), "values": per_head(|s, g| s.values(g)),
            "aligned": aligned,
        }));
    }
    let dir = root.join("target/kvpress-parity");
    std::fs::create_dir_all(&dir)?;
    let probes = dir.join("probes.json");
    std::fs::write(&probes, serde_json::to_string(&json!({ "ratios": args.ratios, "tasks": tasks }))?)?;
    let fixture_path = root.join(FIXTURE);
    let status = Command::new(venv::hf_python()?)
        .arg(root.join("xtask/py/kvpress_parity.py"))
        .arg(&probes)
        .arg(&fixture_path)
        .status()
        .context("cannot run kvpress_parity.py")?;
    if !status.success() {
        bail!("kvpress_parity.py failed: {status}");
    }
    let fixture: Fixture = serde_json::from_slice(&std::fs::read(&fixture_path)?)?;
    let outcomes = kvbench::bench::parity::check(&fixture).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", parity::markdown(&outcomes));
    println!(
        "\nDuoAttention's head scores, kvpress's on-the-fly scoring | kvbench's, per kv head of the probed layer:\n"
    );
    for (task, theirs, ours) in kvbench::bench::parity::duo_reach(&fixture).map_err(anyhow::Error::msg)? {
        println!("- {task}: {theirs:.5?} | {ours:.5?}");
    }
    let failed: Vec<String> =
        outcomes.iter().filter(|o| !o.holds).map(|o| format!("{} on {} ({})", o.method, o.task, o.press)).collect();
    if !failed.is_empty() {
        bail!("{} cases do not hold: {}", failed.len(), failed.join("; "));
    }
    println!("wrote {FIXTURE}: every case holds");
    Ok(())
}
