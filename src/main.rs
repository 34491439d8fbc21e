//! The `kvbench` command line.

use std::path::PathBuf;
use std::process::ExitCode;

mod cli_replay;
mod cli_task;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use kvbench::kv::fidelity::{self, Recorded};
use kvbench::kv::methods::{self, full::Recording};
use kvbench::kv::{Acts, KvCache};
use kvbench::model::compare::{compare, markdown};
use kvbench::model::generate::{GenerateOptions, Mode, Prompt as SplitPrompt, generate_prompt};
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::model::tokenizer::chatml;
use kvbench::trace::format::MAX_CHUNK;

#[derive(Parser)]
#[command(name = "kvbench", version, about = "What KV-cache compression gives up, measured")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Greedy generation from a prompt file, through ONNX Runtime and kvbench's KV cache.
    Generate(GenerateArgs),
    /// Run one prompt through many KV-cache methods and tabulate ratios and answers.
    Compare(CompareArgs),
    /// Model-free attention fidelity of methods on queries, keys and values recorded from prompts,
    /// or kept in a trace's attention probes.
    Fidelity(FidelityArgs),
    /// Task samples and their calibration (see docs/TASKS.md).
    Task(cli_task::TaskArgs),
    /// Methods, including variants outside the trial matrix, over one task's recorded trace,
    /// compared sample by sample (no snapshots, no gate).
    Replay(cli_replay::ReplayArgs),
}

#[derive(clap::Args)]
struct PromptArgs {
    /// File holding the prompt text (UTF-8). Raw text is tokenized as is, without BOS.
    #[arg(long, required_unless_present = "prompt_ids", conflicts_with = "prompt_ids")]
    prompt_file: Option<PathBuf>,
    /// File holding the prompt as a JSON array of token ids (used by `cargo xtask perf`).
    #[arg(long)]
    prompt_ids: Option<PathBuf>,
    /// A question appended verbatim after the prompt file's text (the context); with
    /// `--mode query-agnostic` the method compresses the context before the question is read.
    #[arg(long, requires = "prompt_file")]
    question_file: Option<PathBuf>,
    /// Instead of `--question-file`: the question is the prompt file's text from the last
    /// occurrence of this string on (e.g. "What is the special magic number").
    #[arg(long, requires = "prompt_file", conflicts_with = "question_file")]
    question_at: Option<String>,
    /// Wrap the prompt (and question) in the model's ChatML template as a user turn.
    #[arg(long)]
    chat: bool,
    /// Compress with the question in the prompt (query-aware) or before it (query-agnostic).
    #[arg(long, value_enum, default_value_t = Mode::QueryAware)]
    mode: Mode,
    /// Prefill chunk size in tokens (1 to 65,536).
    #[arg(long, default_value_t = 512, value_parser = chunk_tokens())]
    chunk: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Use this GGUF instead of the pinned SmolLM2-135M-Instruct (fetched on first use).
    #[arg(long)]
    gguf: Option<PathBuf>,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    prompt: PromptArgs,
    /// Keep generating after a stop token (for timing a fixed number of steps).
    #[arg(long)]
    ignore_eos: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// KV-cache method (the list comes from the method registry).
    #[arg(long, default_value = "full", help = methods::registry::help())]
    method: String,
}

#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    prompt: PromptArgs,
    /// Comma-separated method names, or `all` for every method at `--ratios`.
    #[arg(long, default_value = "all")]
    methods: String,
    /// Ratios for `--methods all`.
    #[arg(long, value_delimiter = ',', default_value = "2,8")]
    ratios: Vec<u32>,
    /// Text the answer should contain (the hidden fact); adds a `found` column.
    #[arg(long)]
    expect: Option<String>,
    /// Most tokens to generate per method.
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// Print the rows as JSON lines instead of a markdown table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct FidelityArgs {
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

/// `--chunk`'s parser: a prefill chunk of 1 to [`MAX_CHUNK`] tokens, as a trace may hold.
fn chunk_tokens() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_CHUNK as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Compare(args) => run_compare(args),
        Command::Fidelity(args) => run_fidelity(args),
        Command::Task(args) => cli_task::run(args),
        Command::Replay(args) => cli_replay::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Load the runtime and tokenize the prompt (context, then question).
fn load_prompt(args: &PromptArgs) -> Result<(Runtime, SplitPrompt), Box<dyn std::error::Error>> {
    if let Some(gguf) = &args.gguf
        && !gguf.is_file()
    {
        return Err(format!("GGUF file {} does not exist", gguf.display()).into());
    }
    let read = |path: &PathBuf, what: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
    };
    let mut question = args.question_file.as_ref().map(|p| read(p, "question file")).transpose()?.unwrap_or_default();
    let ids: Option<Vec<u32>> = match &args.prompt_ids {
        Some(path) => Some(
            serde_json::from_str(&read(path, "prompt ids")?)
                .map_err(|e| format!("{} is not a JSON array of token ids: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut context = match &args.prompt_file {
        Some(path) => read(path, "prompt file")?,
        None => String::new(),
    };
    if let Some(marker) = &args.question_at {
        let at =
            context.rfind(marker.as_str()).ok_or_else(|| format!("the prompt file does not contain {marker:?}"))?;
        question = context.split_off(at);
    }
    let rt = Runtime::load(&LoadOptions { gguf: args.gguf.clone(), threads: args.threads, kernel_threads: None })?;
    let prompt = match ids {
        Some(ids) => SplitPrompt::whole(&ids),
        None => {
            // Tokenize the context part and the question part separately, so that the split
            // between them is a token boundary.
            let joined = format!("{context}{question}");
            let whole = if args.chat { chatml(None, &joined) } else { joined };
            let context_end = whole.find(&context).map_or(0, |at| at + context.len());
            let (head, tail) = whole.split_at(context_end);
            SplitPrompt::split(&rt.tokenizer().encode(head)?, &rt.tokenizer().encode(tail)?)
        }
    };
    Ok((rt, prompt))
}

fn run_compare(args: CompareArgs) -> Result<(), Box<dyn std::error::Error>> {
    let names = method_names(&args.methods, &args.ratios)?;
    let (mut rt, prompt) = load_prompt(&args.prompt)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        chunk: args.prompt.chunk,
        ignore_eos: false,
        mode: args.prompt.mode,
        top_k: 0,
    };
    eprintln!("kvbench: {} methods on a {}-token prompt ({:?})", names.len(), prompt.ids.len(), args.prompt.mode);
    let total = names.len();
    let mut done = 0;
    let runs = compare(&mut rt, &prompt, &names, options, args.expect.as_deref(), |run| {
        done += 1;
        eprintln!(
            "[{done}/{total}] {}: {:?} (held {:.2}×, {:.1} s)",
            run.method,
            run.text.trim(),
            run.measured_ratio,
            run.seconds.0 + run.seconds.1
        );
        if args.json {
            println!("{}", serde_json::to_string(run).expect("rows serialize"));
        }
    })?;
    if !args.json {
        print!("{}", markdown(&runs));
    }
    Ok(())
}

fn run_fidelity(args: FidelityArgs) -> Result<(), Box<dyn std::error::Error>> {
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
        });
    }
    Ok(recordings)
}

/// `all` (every method at `ratios`) or a comma-separated list, each name checked.
pub(crate) fn method_names(list: &str, ratios: &[u32]) -> Result<Vec<String>, methods::UnknownMethod> {
    let names: Vec<String> =
        if list == "all" { methods::all_at(ratios) } else { list.split(',').map(|s| s.trim().to_string()).collect() };
    for name in &names {
        methods::by_name(name)?;
    }
    Ok(names)
}

fn run_generate(args: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let method = methods::by_name(&args.method)?;
    let (mut rt, prompt) = load_prompt(&args.prompt)?;
    rt.reset(method.clone())?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        chunk: args.prompt.chunk,
        ignore_eos: args.ignore_eos,
        mode: args.prompt.mode,
        top_k: 0,
    };
    let generation = generate_prompt(&mut rt, &prompt, options)?;
    let shown: Vec<u32> = generation.output_ids.iter().copied().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
    let text = rt.tokenizer().decode(&shown)?;
    if args.json {
        let json = serde_json::json!({
            "method": method.name(),
            "settings": method.settings(),
            "mode": args.prompt.mode,
            "prompt_ids": generation.prompt_ids,
            "context_tokens": prompt.context,
            "prefilled_tokens": generation.prefilled_ids.len(),
            // what the model read: the prompt itself, or what prompt compression kept of it
            "prefilled_text": rt.tokenizer().decode(&generation.prefilled_ids)?,
            "output_ids": generation.output_ids,
            "text": text,
            "prompt_tokens": generation.prompt_ids.len(),
            "prefill_tokens_per_s": generation.prefill_tokens_per_s(),
            "decode_tokens_per_s": generation.decode_tokens_per_s(),
            "prefill_seconds": generation.prefill_seconds,
            "decode_seconds": generation.decode_seconds,
            "peak_cache_bytes": generation.peak_cache_bytes,
            "peak_cache_bytes_after_prefill": generation.cache.peak_bytes_after_prefill,
            "fp16_cache_bytes": generation.fp16_full_bytes,
            "nominal_ratio": method.nominal_ratio(),
            "measured_ratio": generation.measured_ratio(),
            "bytes_read_per_decode_step": generation.bytes_read_per_step(),
            "peak_rss_bytes": peak_rss_bytes(),
        });
        println!("{json}");
    } else {
        println!("{text}");
        eprintln!(
            "[{} prompt tokens, prefill {:.1} tok/s; {} new tokens, decode {:.1} tok/s; method {}, cache {:.1} MiB \
             after prefill, measured ratio {:.2} vs fp16]",
            generation.prompt_ids.len(),
            generation.prefill_tokens_per_s(),
            generation.output_ids.len(),
            generation.decode_tokens_per_s(),
            method.name(),
            generation.cache.peak_bytes_after_prefill as f64 / (1 << 20) as f64,
            generation.measured_ratio(),
        );
    }
    Ok(())
}

/// The process's resident-set high-water mark (`VmHWM`), where the kernel reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
