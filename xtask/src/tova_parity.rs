//! `cargo xtask tova-parity`: which prompt positions kvbench's TOVA keeps, beside NVIDIA kvpress's
//! `TOVAPress` on the same tensors.
//!
//! The tensors are the default tier's recorded attention probes (`src/trace/probe.rs`: layer 15's
//! post-RoPE queries and keys of one sample a task, as the full cache saw them). For each task
//! kvbench prefills the probe's prompt into a full store and lets `tova-Nx` (per kv head) and
//! `tova-pooled-Nx` (one choice for the layer, the reference's granularity) compress it, and
//! records the positions each keeps per kv head. `xtask/py/tova_parity.py` then runs kvpress's
//! own `TOVAPress.compress` (its scoring, padding and top-k) on the same keys, with the last
//! prompt query's attention weights, and compares. For the needle it also says which of the
//! needle's digits each keeps. The table goes to stdout, for docs/METHODS.md.

use std::process::Command;

use anyhow::{Context, bail};
use kvbench::kv::Heads;
use kvbench::kv::methods;
use kvbench::model::gguf::GgufFile;
use kvbench::model::tokenizer::Tokenizer;
use kvbench::tasks::Task;
use serde_json::json;

use crate::{project_root, venv};

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Ratios to compare (kvbench's `-Nx`; kvpress's compression ratio 1 − 1/N).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    ratios: Vec<u32>,
}

/// Export, compare, print.
pub fn run(args: Args) -> anyhow::Result<()> {
    let root = project_root();
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&kvbench::assets::smollm2_gguf()?)?)?;
    let mut tasks = Vec::new();
    for task in Task::ALL {
        let (trace, recorded) = kvbench::bench::parity::default_probe(task).map_err(anyhow::Error::msg)?;
        let sample = trace.samples.iter().find(|s| s.probe.is_some()).context("a trace without probes")?;
        let prefill = recorded.full_prefills(trace.header.chunk).remove(0);
        let shape = prefill.shape();
        let Heads { heads, kv_heads, head_dim } = shape;
        let n = recorded.prompt;
        let width = heads * head_dim;
        let recent = prefill.recent_queries();
        let last_query = &recent[recent.len() - width..];
        let ctx = recorded.context(0);
        let mut kept = serde_json::Map::new();
        for family in ["tova", "tova-pooled"] {
            for r in &args.ratios {
                let name = format!("{family}-{r}x");
                let method = methods::by_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut store = method.after_prefill(&ctx, &prefill).context("TOVA compresses after prefill")?;
                // what the store holds is what its next attention reads (no token is appended,
                // so nothing more is evicted)
                let mut out = vec![0.0f32; width];
                store.attend(last_query, width, 1, &mut out);
                let per_head: Vec<Vec<u32>> = (0..kv_heads)
                    .map(|g| store.visible(g).context("TOVA's store says which positions it read"))
                    .collect::<anyhow::Result<_>>()?;
                kept.insert(name, json!(per_head));
            }
        }
        // the needle's digits: where the answer's tokens sit in the prompt
        let needle: Vec<usize> = match sample.meta.answers.first() {
            Some(answer) if task == Task::Needle => {
                let ids = tokenizer.encode_more(answer)?;
                let ctx_ids = &sample.prompt_ids[..sample.meta.context_len];
                let at =
                    ctx_ids.windows(ids.len()).position(|w| w == ids.as_slice()).context("needle not in the prompt")?;
                (at..at + ids.len()).collect()
            }
            _ => Vec::new(),
        };
        let keys: Vec<&[f32]> = (0..kv_heads).map(|g| &prefill.keys(g)[..n * head_dim]).collect();
        tasks.push(json!({
            "task": task.name(), "sample": sample.meta.id, "layer": recorded.layer_ids[0], "prompt": n,
            "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
            "last_query": last_query, "keys": keys, "kept": kept, "needle_positions": needle,
        }));
    }
    let dir = root.join("target/tova-parity");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("probes.json");
    std::fs::write(&path, serde_json::to_string(&json!({ "ratios": args.ratios, "tasks": tasks }))?)?;
    let status = Command::new(venv::hf_python()?)
        .arg(root.join("xtask/py/tova_parity.py"))
        .arg(&path)
        .status()
        .context("cannot run tova_parity.py")?;
    if !status.success() {
        bail!("tova_parity.py failed: {status}");
    }
    Ok(())
}
