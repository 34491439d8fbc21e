//! The `kvbench` command line.

use std::path::PathBuf;
use std::process::ExitCode;

mod cli_task;

use clap::{Parser, Subcommand};
use kvbench::kv::methods;
use kvbench::model::generate::{GenerateOptions, generate};
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::model::tokenizer::chatml;

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
    /// Task samples and their calibration (see docs/TASKS.md).
    Task(cli_task::TaskArgs),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// File holding the prompt text (UTF-8). Raw text is tokenized as is, without BOS.
    #[arg(long, required_unless_present = "prompt_ids", conflicts_with = "prompt_ids")]
    prompt_file: Option<PathBuf>,
    /// File holding the prompt as a JSON array of token ids (used by `cargo xtask perf`).
    #[arg(long)]
    prompt_ids: Option<PathBuf>,
    /// Keep generating after a stop token (for timing a fixed number of steps).
    #[arg(long)]
    ignore_eos: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Wrap the prompt in the model's ChatML template as a user turn.
    #[arg(long)]
    chat: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// KV-cache method.
    #[arg(long, default_value = "full")]
    method: String,
    /// Prefill chunk size in tokens.
    #[arg(long, default_value_t = 512)]
    chunk: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Use this GGUF instead of the pinned SmolLM2-135M-Instruct (fetched on first use).
    #[arg(long)]
    gguf: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => run_generate(args),
        Command::Task(args) => cli_task::run(args),
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

fn run_generate(args: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(gguf) = &args.gguf
        && !gguf.is_file()
    {
        return Err(format!("GGUF file {} does not exist", gguf.display()).into());
    }
    enum Prompt {
        Text(String),
        Ids(Vec<u32>),
    }
    let prompt = match (&args.prompt_file, &args.prompt_ids) {
        (Some(path), _) => Prompt::Text(
            std::fs::read_to_string(path).map_err(|e| format!("cannot read prompt file {}: {e}", path.display()))?,
        ),
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read prompt ids {}: {e}", path.display()))?;
            Prompt::Ids(
                serde_json::from_str(&text)
                    .map_err(|e| format!("{} is not a JSON array of token ids: {e}", path.display()))?,
            )
        }
        (None, None) => unreachable!("clap requires one of --prompt-file and --prompt-ids"),
    };
    let method = methods::by_name(&args.method)?;
    let mut rt = Runtime::load(&LoadOptions { gguf: args.gguf.clone(), threads: args.threads })?;
    rt.reset(method.clone())?;
    let prompt_ids = match prompt {
        Prompt::Text(text) => rt.tokenizer().encode(&if args.chat { chatml(None, &text) } else { text })?,
        Prompt::Ids(ids) => ids,
    };
    let options =
        GenerateOptions { max_new_tokens: args.max_new_tokens, chunk: args.chunk, ignore_eos: args.ignore_eos };
    let generation = generate(&mut rt, &prompt_ids, options)?;
    let shown: Vec<u32> = generation.output_ids.iter().copied().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
    let text = rt.tokenizer().decode(&shown)?;
    if args.json {
        let json = serde_json::json!({
            "method": method.name(),
            "prompt_ids": generation.prompt_ids,
            "output_ids": generation.output_ids,
            "text": text,
            "prompt_tokens": generation.prompt_ids.len(),
            "prefill_tokens_per_s": generation.prefill_tokens_per_s(),
            "decode_tokens_per_s": generation.decode_tokens_per_s(),
            "prefill_seconds": generation.prefill_seconds,
            "decode_seconds": generation.decode_seconds,
            "peak_cache_bytes": generation.peak_cache_bytes,
            "peak_rss_bytes": peak_rss_bytes(),
            "fp16_cache_bytes": rt.config().fp16_kv_bytes_per_token() * (generation.prompt_ids.len() + generation.output_ids.len()),
        });
        println!("{json}");
    } else {
        println!("{text}");
        eprintln!(
            "[{} prompt tokens, prefill {:.1} tok/s; {} new tokens, decode {:.1} tok/s; method {}, cache peak {:.1} MiB]",
            generation.prompt_ids.len(),
            generation.prefill_tokens_per_s(),
            generation.output_ids.len(),
            generation.decode_tokens_per_s(),
            method.name(),
            generation.peak_cache_bytes as f64 / (1 << 20) as f64,
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
