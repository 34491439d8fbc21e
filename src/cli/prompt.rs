//! What the prompt-taking commands share: the prompt's arguments, loading the model and the
//! prompt, checking method names.

use std::path::PathBuf;

use kvbench::kv::methods;
use kvbench::model::generate::{Mode, Prompt as SplitPrompt};
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::model::tokenizer::{Template, chatml};
use kvbench::trace::format::MAX_CHUNK;

use super::model::ModelArgs;

#[derive(clap::Args)]
pub struct PromptArgs {
    /// File holding the prompt text (UTF-8). Raw text is tokenized as is, without BOS.
    #[arg(long, required_unless_present = "prompt_ids", conflicts_with = "prompt_ids")]
    pub prompt_file: Option<PathBuf>,
    /// File holding the prompt as a JSON array of token ids (used by `cargo xtask perf`).
    #[arg(long)]
    pub prompt_ids: Option<PathBuf>,
    /// A question appended verbatim after the prompt file's text (the context); with
    /// `--mode query-agnostic` the method compresses the context before the question is read.
    #[arg(long, requires = "prompt_file")]
    pub question_file: Option<PathBuf>,
    /// Instead of `--question-file`: the question is the prompt file's text from the last
    /// occurrence of this string on (e.g. "What is the special magic number").
    #[arg(long, requires = "prompt_file", conflicts_with = "question_file")]
    pub question_at: Option<String>,
    /// Wrap the prompt (and question) in the model's ChatML template as a user turn (SmolLM2's;
    /// a base model without a chat template refuses it).
    #[arg(long)]
    pub chat: bool,
    /// Compress with the question in the prompt but its last token (query-aware), before the
    /// question (query-agnostic), or as kvbench did before 2026-12, the first answer token from the
    /// uncompressed prefill (query-aware-uncompressed-first-token).
    #[arg(long, value_enum, default_value_t = Mode::QueryAware)]
    pub mode: Mode,
    /// Prefill chunk size in tokens (1 to 65,536).
    #[arg(long, default_value_t = 512, value_parser = chunk_tokens())]
    pub chunk: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--chunk`'s parser: a prefill chunk of 1 to [`MAX_CHUNK`] tokens, as a trace may hold.
pub fn chunk_tokens() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_CHUNK as u64)
}

/// Load the runtime and tokenize the prompt (context, then question).
pub fn load_prompt(args: &PromptArgs) -> Result<(Runtime, SplitPrompt), Box<dyn std::error::Error>> {
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
    let gguf = args.model.path()?;
    let rt = Runtime::load(&LoadOptions { gguf: Some(gguf), threads: args.threads, kernel_threads: None })?;
    let prompt = match ids {
        Some(ids) => SplitPrompt::whole(&ids),
        None => {
            // Tokenize the context part and the question part separately, so that the split
            // between them is a token boundary.
            let joined = format!("{context}{question}");
            if args.chat && rt.tokenizer().template() != Template::ChatMl {
                return Err("--chat: this model has no chat template (a base model takes plain text)".into());
            }
            let whole = if args.chat { chatml(None, &joined) } else { joined };
            let context_end = whole.find(&context).map_or(0, |at| at + context.len());
            let (head, tail) = whole.split_at(context_end);
            SplitPrompt::split(&rt.tokenizer().encode(head)?, &rt.tokenizer().encode_more(tail)?)
        }
    };
    Ok((rt, prompt))
}

/// `all` (every method at `ratios`) or a comma-separated list, each name checked.
pub fn method_names(list: &str, ratios: &[u32]) -> Result<Vec<String>, methods::UnknownMethod> {
    let names: Vec<String> =
        if list == "all" { methods::all_at(ratios) } else { list.split(',').map(|s| s.trim().to_string()).collect() };
    for name in &names {
        methods::by_name(name)?;
    }
    Ok(names)
}
