//! `kvbench fidelity`: model-free attention fidelity of methods, on prompts recorded through the
//! model or on a trace's attention probes.

use std::path::PathBuf;
use std::sync::Arc;

use kvbench::eval::fidelity::{self, Recorded};
use kvbench::kv::methods::{self, full::Recording};
use kvbench::kv::{Acts, KvCache};
use kvbench::model::generate::{GenerateOptions, Prompt as SplitPrompt, generate_prompt};
use kvbench::model::session::{LoadOptions, Runtime};

use super::prompt::{chunk_tokens, method_names};

#[derive(clap::Args)]
pub struct FidelityArgs {
    /// Prompt files (raw text) to record from; the tables pool them.
    #[arg(long = "prompt-file", required_unless_present = "traces", conflicts_with = "traces")]
    prompt_files: Vec<PathBuf>,
    /// Replay the attention probes of traces (`traces/default/<task>.trace.zst`; repeat to pool
    /// several) instead: no model is loaded, the steps compared are the reference answer's, and
    /// the prefill chunk is the one the traces were recorded with.
    #[arg(long = "trace", conflicts_with_all = ["decode", "chunk"])]
    traces: Vec<PathBuf>,
    /// Tokens decoded after each prompt (the steps compared).
    #[arg(long, default_value_t = 16)]
    decode: usize,
    /// Comma-separated method names, or `all` for every method at `--ratios`.
    #[arg(long, default_value = "all")]
    methods: String,
    /// Ratios for `--methods all`.
    #[arg(long, value_delimiter = ',', default_value = "2,4,6,8")]
    ratios: Vec<u32>,
    /// Prefill chunk size in tokens (1 to 65,536).
    #[arg(long, default_value_t = 512, value_parser = chunk_tokens())]
    chunk: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print JSON lines instead of a markdown table.
    #[arg(long)]
    json: bool,
}

/// Run `kvbench fidelity`.
pub fn run(args: FidelityArgs) -> Result<(), Box<dyn std::error::Error>> {
    let names = method_names(&args.methods, &args.ratios)?;
    let (recordings, chunk) =
        if args.traces.is_empty() { (record_prompts(&args)?, args.chunk) } else { probe_recordings(&args.traces)? };
    let prefills: Vec<_> = recordings.iter().map(|r| r.full_prefills(chunk)).collect();
    let mut rows = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let method = methods::by_name(name)?;
        if method.acts() == Acts::BeforePrefill {
            eprintln!(
                "[{}/{}] {name}: skipped (prompt compression needs the model: see `kvbench compare`)",
                i + 1,
                names.len()
            );
            continue;
        }
        let start = std::time::Instant::now();
        let row = fidelity::evaluate(&*method, &recordings, &prefills, chunk);
        eprintln!(
            "[{}/{}] {name}: error {:.4}, mass {:.3} ({:.1} s)",
            i + 1,
            names.len(),
            row.relative_error,
            row.mass_kept,
            start.elapsed().as_secs_f64()
        );
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        }
        rows.push(row);
    }
    if !args.json {
        print!("{}", fidelity::markdown(&rows));
    }
    Ok(())
}

/// The recordings held in the attention probes of `paths`, and the prefill chunk they were
/// recorded with.
fn probe_recordings(paths: &[PathBuf]) -> Result<(Vec<Recorded>, usize), Box<dyn std::error::Error>> {
    let (mut recordings, mut chunk) = (Vec::new(), None);
    for path in paths {
        let trace = kvbench::trace::Trace::read(path, None)?;
        let spec = trace.header.probe.as_ref().ok_or_else(|| {
            format!(
                "{} holds no attention probes: record them with `cargo xtask record --probe-samples N`",
                path.display()
            )
        })?;
        if *chunk.get_or_insert(trace.header.chunk) != trace.header.chunk {
            return Err(format!(
                "{} was recorded with another prefill chunk than the traces before it",
                path.display()
            )
            .into());
        }
        let probed = trace.probe_recordings().unwrap_or_default();
        eprintln!(
            "kvbench: {} probe(s) of layer(s) {:?} from {} ({} tokens in all)",
            probed.len(),
            spec.layers,
            path.display(),
            trace.samples.iter().filter_map(|s| s.probe.as_ref()).map(|p| p.tokens).sum::<usize>()
        );
        recordings.extend(probed);
    }
    match chunk {
        Some(chunk) if !recordings.is_empty() => Ok((recordings, chunk)),
        _ => Err("no probe to replay".into()),
    }
}

/// Record every query, key and value of `args`' prompt files and the tokens decoded after them.
fn record_prompts(args: &FidelityArgs) -> Result<Vec<Recorded>, Box<dyn std::error::Error>> {
    let mut rt = Runtime::load(&LoadOptions { gguf: None, threads: args.threads, kernel_threads: None })?;
    let mut recordings = Vec::new();
    for path in &args.prompt_files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let ids = rt.tokenizer().encode(&text)?;
        eprintln!("kvbench: recording {} ({} tokens + {} decoded)", path.display(), ids.len(), args.decode);
        rt.reset(Arc::new(Recording))?;
        let options = GenerateOptions {
            max_new_tokens: args.decode.saturating_add(1),
            chunk: args.chunk,
            ignore_eos: true,
            ..Default::default()
        };
        generate_prompt(&mut rt, &SplitPrompt::whole(&ids), options)?;
        let cache = KvCache::lock(rt.cache())?;
        let layers = (0..cache.layers())
            .map(|l| cache.layer(l).and_then(|s| s.as_prefill()).cloned().ok_or("recording lost a layer"))
            .collect::<Result<Vec<_>, _>>()?;
        let layer_ids = (0..layers.len()).collect();
        recordings.push(Recorded {
            layer_ids,
            model_layers: layers.len(),
            layers,
            prompt: ids.len(),
            rope_base: rt.config().rope_base,
            out_proj: rt.out_projections().to_vec(),
        });
    }
    Ok(recordings)
}
