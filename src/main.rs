//! The `kvbench` command line.

use std::process::ExitCode;

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kvbench", version, about = "What KV-cache compression gives up, measured")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Greedy generation from a prompt file, through ONNX Runtime and kvbench's KV cache.
    Generate(cli::generate::GenerateArgs),
    /// Run one prompt through many KV-cache methods and tabulate ratios and answers.
    Compare(cli::compare::CompareArgs),
    /// Model-free attention fidelity of methods on queries, keys and values recorded from prompts,
    /// or kept in a trace's attention probes.
    Fidelity(cli::fidelity::FidelityArgs),
    /// Task samples and their calibration (see docs/TASKS.md).
    Task(cli::task::TaskArgs),
    /// Methods, including variants outside the trial matrix, over one task's recorded trace,
    /// compared sample by sample (no snapshots, no gate).
    Replay(cli::replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Compare(args) => cli::compare::run(args),
        Command::Fidelity(args) => cli::fidelity::run(args),
        Command::Task(args) => cli::task::run(args),
        Command::Replay(args) => cli::replay::run(args),
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
