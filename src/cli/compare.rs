//! `kvbench compare`: one prompt through many methods, tabulated.

use kvbench::eval::compare::{compare, markdown};
use kvbench::model::generate::GenerateOptions;

use super::prompt::{PromptArgs, load_prompt, method_names};

#[derive(clap::Args)]
pub struct CompareArgs {
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

/// Run `kvbench compare`.
pub fn run(args: CompareArgs) -> Result<(), Box<dyn std::error::Error>> {
    let names = method_names(&args.methods, &args.ratios)?;
    let (mut rt, prompt) = load_prompt(&args.prompt)?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        chunk: args.prompt.chunk,
        ignore_eos: false,
        mode: args.prompt.mode,
        top_k: 0,
        ended: None,
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
