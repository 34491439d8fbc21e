//! `kvbench task ...`: print samples, and calibrate the tasks against the full-cache model.
//!
//! - `task sample --task NAME --len N --seed S [--json]`: one sample, byte-identical for the
//!   same arguments (needs only the tokenizer, not ONNX Runtime).
//! - `task calibrate --task NAME --samples N`: the full-cache score with its 95% confidence
//!   interval beside the no-context and trivial baselines, as a markdown row; per-sample results
//!   go to `--log` (JSON lines), which `task table` turns back into the table. For a
//!   classification task (few-shot) both also print Cohen's kappa of the full cache and the
//!   baselines, from each logged answer's class ([`label_of`]), and the classes predicted.
//! - `task needle-grid`: the full-cache exact-match rate over lengths x depths.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use kvbench::model::generate::full_cache_answer;
use kvbench::model::gguf::GgufFile;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::model::tokenizer::Tokenizer;
use kvbench::tasks::metrics::{cohen_kappa, label_of, mean_ci95, needle_partial};
use kvbench::tasks::{self, Rng, Sample, Task, few_shot, needle};
use serde_json::json;

use super::model::ModelArgs;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Print one sample: prompt (context and question parts), gold answers, metric.
    Sample(SampleArgs),
    /// Score the full-cache model and the baselines on a task; print a markdown table row.
    Calibrate(CalibrateArgs),
    /// Aggregate `calibrate` logs (JSON lines) into the markdown table.
    Table(TableArgs),
    /// The full-cache needle exact-match rate over lengths x depths, as a markdown table.
    NeedleGrid(NeedleGridArgs),
}

#[derive(Args)]
struct SampleArgs {
    /// Task name (needle, synthetic, single-doc-qa, multi-doc-qa, summarization, few-shot, code).
    #[arg(long)]
    task: String,
    /// Prompt length in tokens (default: the task's default length).
    #[arg(long)]
    len: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the sample as one JSON object (with token ids).
    #[arg(long)]
    json: bool,
    /// Whose tokenizer and prompt template (only the tokenizer is read, not the weights).
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct CalibrateArgs {
    /// Task name.
    #[arg(long)]
    task: String,
    /// Most samples (seeds `--first-seed` onwards).
    #[arg(long, default_value_t = 60)]
    samples: usize,
    /// Stop early once at least `--min-samples` ran and the full-cache half-width is at most this.
    #[arg(long, default_value_t = 0.10)]
    half_width: f64,
    /// Fewest samples before stopping early.
    #[arg(long, default_value_t = 30)]
    min_samples: usize,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Prompt length in tokens (default: the task's default length).
    #[arg(long)]
    len: Option<usize>,
    /// Append per-sample results here (JSON lines).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct TableArgs {
    /// Logs written by `task calibrate --log`.
    #[arg(required = true)]
    logs: Vec<PathBuf>,
}

#[derive(Args)]
struct NeedleGridArgs {
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
    lens: Vec<usize>,
    /// Depths in percent.
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
    depths: Vec<u32>,
    /// Draws per cell.
    #[arg(long, default_value_t = 2)]
    draws: u64,
    /// Use the study's pass-key phrasing instead of RULER's.
    #[arg(long)]
    pass_key: bool,
    /// Append per-sample results here (JSON lines).
    #[arg(long)]
    log: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: TaskArgs) -> Result<()> {
    match args.command {
        TaskCommand::Sample(a) => run_sample(a),
        TaskCommand::Calibrate(a) => run_calibrate(a),
        TaskCommand::Table(a) => run_table(a),
        TaskCommand::NeedleGrid(a) => run_needle_grid(a),
    }
}

fn tokenizer(model: &ModelArgs) -> Result<Tokenizer> {
    Ok(Tokenizer::from_gguf(&GgufFile::open(&model.path()?)?)?)
}

fn load(model: &ModelArgs, threads: usize) -> Result<Runtime> {
    Ok(Runtime::load(&LoadOptions { gguf: Some(model.path()?), threads, kernel_threads: None })?)
}

fn run_sample(args: SampleArgs) -> Result<()> {
    let task = Task::from_name(&args.task)?;
    let tok = tokenizer(&args.model)?;
    let s = tasks::sample(task, args.seed, args.len.unwrap_or(task.default_len()), &tok)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&s)?)?;
    } else {
        writeln!(out, "task: {}\nid: {}\nmetric: {}", task.name(), s.id, s.metric.name())?;
        writeln!(out, "tokens: {} (context {}, question {})", s.len(), s.context_ids.len(), s.question_ids.len())?;
        writeln!(out, "answers: {}", serde_json::to_string(&s.answers)?)?;
        writeln!(out, "info: {}", serde_json::to_string(&s.info)?)?;
        writeln!(out, "--- context ---\n{}\n--- question ---\n{}", s.context_text, s.question_text)?;
    }
    Ok(())
}

/// Greedy answer of the full-cache model to `ids`, without stop tokens, ending as the sample's
/// answers end.
fn answer(rt: &mut Runtime, ids: &[u32], s: &Sample) -> Result<String> {
    Ok(full_cache_answer(rt, ids, s.max_new_tokens, s.answer_end.rule())?)
}

fn log_line(log: &Option<PathBuf>, value: serde_json::Value) -> Result<()> {
    if let Some(path) = log {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{value}")?;
    }
    Ok(())
}

fn run_calibrate(args: CalibrateArgs) -> Result<()> {
    let task = Task::from_name(&args.task)?;
    let len = args.len.unwrap_or(task.default_len());
    let mut rt = load(&args.model, args.threads)?;
    let tok = rt.tokenizer().clone();
    let mut rows = Vec::new();
    for seed in args.first_seed..args.first_seed + args.samples as u64 {
        let s = tasks::sample(task, seed, len, &tok)?;
        let full = answer(&mut rt, &s.prompt_ids(), &s)?;
        let bare = answer(&mut rt, &s.no_context_ids, &s)?;
        let row = json!({
            "task": task.name(), "len": len, "seed": seed, "id": s.id, "tokens": s.len(),
            "answers": s.answers, "full": full, "no_context": bare, "trivial": s.trivial_answer,
            "full_score": s.score(&full), "no_context_score": s.score(&bare), "trivial_score": s.score(&s.trivial_answer),
        });
        eprintln!(
            "{} seed {seed}: full {:.2} no-context {:.2} | {:?} | gold {:?}",
            task.name(),
            row["full_score"],
            row["no_context_score"],
            full.chars().take(80).collect::<String>(),
            s.answers.first().map(|a| a.chars().take(60).collect::<String>())
        );
        log_line(&args.log, row.clone())?;
        rows.push(row);
        let (_, half) = mean_ci95(&scores(&rows, "full_score"));
        if rows.len() >= args.min_samples && half <= args.half_width {
            break;
        }
    }
    println!("{}", table_header());
    println!("{}", table_row(task.name(), len, &rows));
    if let Some(line) = kappa_line(task.name(), len, &rows) {
        println!("\n{line}");
    }
    Ok(())
}

fn scores(rows: &[serde_json::Value], key: &str) -> Vec<f64> {
    rows.iter().filter_map(|r| r[key].as_f64()).collect()
}

fn table_header() -> String {
    "| task | length | n | full cache | no context | trivial | full above no-context | n for ±10 |\n\
     | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
        .to_string()
}

fn table_row(task: &str, len: usize, rows: &[serde_json::Value]) -> String {
    let fmt = |key: &str| {
        let (m, h) = mean_ci95(&scores(rows, key));
        (m, h, format!("{:.1} ± {:.1}", 100.0 * m, 100.0 * h))
    };
    let (fm, fh, full) = fmt("full_score");
    let (nm, nh, bare) = fmt("no_context_score");
    let (_, _, trivial) = fmt("trivial_score");
    let separated = if fm - fh > nm + nh { "yes" } else { "NO (intervals overlap)" };
    // Samples for a half-width of 10 points at this spread: n * (h / 0.10)^2.
    let needed = (rows.len() as f64 * (fh / 0.10).powi(2)).ceil();
    format!("| {task} | {len} | {} | {full} | {bare} | {trivial} | {separated} | {needed} |", rows.len())
}

fn run_table(args: TableArgs) -> Result<()> {
    let mut by_task: Vec<(String, usize, Vec<serde_json::Value>)> = Vec::new();
    for path in &args.logs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line)?;
            let (task, len) = (row["task"].as_str().unwrap_or("?").to_string(), row["len"].as_u64().unwrap_or(0));
            match by_task.iter_mut().find(|(t, l, _)| *t == task && *l as u64 == len) {
                Some((_, _, rows)) => rows.push(row),
                None => by_task.push((task, len as usize, vec![row])),
            }
        }
    }
    by_task.sort_by_key(|(t, l, _)| (Task::from_name(t).map(|t| t as usize).unwrap_or(99), *l));
    println!("{}", table_header());
    for (task, len, rows) in &by_task {
        println!("{}", table_row(task, *len, rows));
    }
    let kappas: Vec<String> = by_task.iter().filter_map(|(task, len, rows)| kappa_line(task, *len, rows)).collect();
    if !kappas.is_empty() {
        println!("\n{}", kappas.join("\n"));
    }
    Ok(())
}

/// The classes of a classification task, by name.
fn classes_of(task: &str) -> Option<Vec<String>> {
    (task == Task::FewShot.name()).then(|| few_shot::CLASSES.map(String::from).to_vec())
}

/// Cohen's kappa (95% interval) of the full cache and the baselines on a classification task's
/// rows, each answer's class read from its logged text ([`label_of`]), and the full cache's
/// predicted classes; `None` for other tasks and for logs whose golds are not all of today's
/// classes (an earlier version's).
fn kappa_line(task: &str, len: usize, rows: &[serde_json::Value]) -> Option<String> {
    let classes = classes_of(task)?;
    let golds: Vec<&str> = rows.iter().map(|r| r["answers"][0].as_str()).collect::<Option<_>>()?;
    if rows.is_empty() || !golds.iter().all(|g| classes.iter().any(|c| c == g)) {
        return None;
    }
    let predicted = |key: &str| -> Vec<Option<&str>> {
        rows.iter().map(|r| label_of(r[key].as_str().unwrap_or(""), &classes)).collect()
    };
    let kappa = |key: &str| {
        let pairs: Vec<(&str, Option<&str>)> = golds.iter().copied().zip(predicted(key)).collect();
        let (k, h) = cohen_kappa(&pairs);
        // A kappa of 0 up to rounding prints as 0.00, not -0.00.
        format!("{:.2} ± {h:.2}", if k.abs() < 0.005 { 0.0 } else { k })
    };
    let full = predicted("full");
    let mut counts: Vec<String> =
        classes.iter().map(|c| format!("{c} {}", full.iter().filter(|p| **p == Some(c.as_str())).count())).collect();
    counts.push(format!("none {}", full.iter().filter(|p| p.is_none()).count()));
    Some(format!(
        "{task} {len}: Cohen's kappa full cache {}, no context {}, trivial {} (n = {}); full cache predicted {}",
        kappa("full"),
        kappa("no_context"),
        kappa("trivial"),
        rows.len(),
        counts.join(", ")
    ))
}

fn run_needle_grid(args: NeedleGridArgs) -> Result<()> {
    let mut rt = load(&args.model, LoadOptions::default().threads)?;
    let tok = rt.tokenizer().clone();
    let phrasing = if args.pass_key { needle::Phrasing::PassKey } else { needle::Phrasing::Ruler };
    let mut table = vec![vec![(0.0, 0.0, 0usize); args.lens.len()]; args.depths.len()];
    for (li, &len) in args.lens.iter().enumerate() {
        for (di, &depth) in args.depths.iter().enumerate() {
            for draw in 0..args.draws {
                let seed = u64::from(depth) * 1000 + draw;
                let mut rng = Rng::new(Task::Needle, seed);
                let parts = needle::build(&mut rng, len, &tok, phrasing, Some(f64::from(depth) / 100.0))?;
                let s: Sample = tasks::assemble(Task::Needle, seed, len, &tok, parts)?;
                let out = answer(&mut rt, &s.prompt_ids(), &s)?;
                let (exact, partial) = (s.score(&out), needle_partial(&out, &s.answers[0]));
                eprintln!("needle len {len} depth {depth} draw {draw}: exact {exact} partial {partial:.2} {out:?}");
                log_line(
                    &args.log,
                    json!({"len": len, "depth": depth, "seed": seed, "tokens": s.len(), "answer": s.answers[0],
                           "output": out, "exact": exact, "partial": partial}),
                )?;
                let cell = &mut table[di][li];
                cell.0 += exact;
                cell.1 += partial;
                cell.2 += 1;
            }
        }
    }
    let phr = if args.pass_key { "pass-key" } else { "ruler" };
    println!("Needle exact-match rate ({phr} phrasing, {} draws per cell; partial match in brackets)\n", args.draws);
    let lens: Vec<String> = args.lens.iter().map(|l| format!("{l} tokens")).collect();
    println!("| depth | {} |", lens.join(" | "));
    println!("| ---: |{}", " ---: |".repeat(args.lens.len()));
    for (di, depth) in args.depths.iter().enumerate() {
        let cells: Vec<String> = table[di]
            .iter()
            .map(|&(e, p, n)| format!("{:.2} ({:.2})", e / n.max(1) as f64, p / n.max(1) as f64))
            .collect();
        println!("| {depth}% | {} |", cells.join(" | "));
    }
    Ok(())
}
