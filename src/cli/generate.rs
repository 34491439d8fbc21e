//! `kvbench generate`: greedy generation from a prompt file through one method.

use kvbench::kv::methods;
use kvbench::model::generate::{GenerateOptions, generate_prompt};

use super::prompt::{PromptArgs, load_prompt};

#[derive(clap::Args)]
pub struct GenerateArgs {
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

/// Run `kvbench generate`.
pub fn run(args: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let method = methods::by_name(&args.method)?;
    let (mut rt, prompt) = load_prompt(&args.prompt)?;
    rt.reset(method.clone())?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        chunk: args.prompt.chunk,
        ignore_eos: args.ignore_eos,
        mode: args.prompt.mode,
        top_k: 0,
        ended: None,
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
