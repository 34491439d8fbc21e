//! `cargo xtask fuzz`: an in-process mutation fuzzer on stable Rust (no nightly, no cargo-fuzz,
//! no AFL) for every reader of untrusted bytes ([`targets`]): traces (whole files, and payloads
//! past the checksum), GGUF files with the config and tokenizer built from them, prefill cache
//! entries, and the results `report --merge` reads.
//!
//! Each target runs in a worker process of this binary, one after another, so that a crash that
//! cannot unwind (an allocation over `--max-alloc-mb`, an execution over `--timeout-s`) stops
//! only that worker: its input is saved first, and the worker is started again (another seed)
//! while the target's time lasts. Crash inputs go to `fuzz/artifacts/<target>/crash-<sha256>`,
//! with what happened beside them (`.txt`); the corpus to `fuzz/corpus/<target>/` (both ignored
//! by git), so that runs resume. The run fails naming every crash input.
//!
//! The parts: [`engine`] (corpus, loop, outcome classes), [`mutate`] (byte-level mutations),
//! [`json`] and [`formats`] (structure-aware ones, past checksums and length prefixes),
//! [`guard`] (the oracles), [`seeds`], [`rng`].

mod engine;
mod formats;
mod guard;
mod json;
mod mutate;
mod rng;
mod seeds;
mod targets;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use engine::{Config, Stats};
use guard::{Ended, Limits};
use targets::Target;

/// Arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// `all`, or one of trace_file, trace_payload, gguf, prefill_entry, results.
    #[arg(long, default_value = "all")]
    target: String,
    /// Seconds per target (default 60, unless --execs is given).
    #[arg(long)]
    seconds: Option<f64>,
    /// Executions per target (with --seconds, whichever comes first).
    #[arg(long)]
    execs: Option<u64>,
    /// Seed of the mutations (a run with --execs and the same corpus is reproducible).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// An execution holding more than this many MiB (above what was live before it) is a crash.
    /// The trace reader may reserve up to its 256 MiB payload cap for a short file.
    #[arg(long, default_value_t = 1024)]
    max_alloc_mb: usize,
    /// An execution running longer than this is a crash.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    /// Longest input made by mutation, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_len: usize,
    /// Run this one input (a crash artifact) on --target and say what happens, with a backtrace.
    #[arg(long, value_name = "FILE")]
    reproduce: Option<PathBuf>,
    /// Do not fetch the model for the gguf target's seeds (synthetic GGUFs only).
    #[arg(long)]
    offline: bool,
    /// (internal) Run as the worker of one target, writing its statistics to this file.
    #[arg(long, hide = true, value_name = "FILE")]
    worker: Option<PathBuf>,
}

impl Args {
    fn limits(&self) -> Limits {
        Limits { max_alloc: self.max_alloc_mb << 20, timeout: Duration::from_secs_f64(self.timeout_s.max(0.001)) }
    }

    /// The time per target: --seconds, or 60 s unless --execs alone is given.
    fn time(&self) -> Option<Duration> {
        match (self.seconds, self.execs) {
            (Some(s), _) => Some(Duration::from_secs_f64(s.max(0.0))),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(60)),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let chosen: Vec<Target> = match args.target.as_str() {
        "all" => targets::ALL.to_vec(),
        name => vec![targets::by_name(name).with_context(|| {
            let names: Vec<&str> = targets::ALL.iter().map(|t| t.name).collect();
            format!("unknown fuzz target {name:?}: use all or one of {}", names.join(", "))
        })?],
    };
    if let Some(file) = &args.reproduce {
        let [target] = chosen[..] else { bail!("--reproduce needs one --target, not all") };
        return reproduce(&target, file, &args);
    }
    if let Some(stats_file) = &args.worker {
        let [target] = chosen[..] else { bail!("a worker fuzzes one target") };
        return worker(&target, &args, stats_file);
    }
    let mut all = Vec::new();
    for target in &chosen {
        let stats = supervise(target, &args)?;
        println!("{}", line(&stats));
        all.push(stats);
    }
    let executions: u64 = all.iter().map(|s| s.executions).sum();
    let crashes: Vec<&engine::Crash> = all.iter().flat_map(|s| &s.crashes).collect();
    let seconds: f64 = all.iter().map(|s| s.seconds).sum();
    println!(
        "fuzz: {} target{}, {executions} executions in {seconds:.0} s, {} crash{}",
        all.len(),
        if all.len() == 1 { "" } else { "s" },
        crashes.len(),
        if crashes.len() == 1 { "" } else { "es" }
    );
    if !crashes.is_empty() {
        let list: Vec<String> = crashes
            .iter()
            .map(|c| match c.artifact.as_os_str().is_empty() {
                true => format!("  (no input saved) {}", c.what),
                false => format!(
                    "  {} ({}; {} hit{})",
                    c.artifact.display(),
                    c.what,
                    c.hits,
                    if c.hits == 1 { "" } else { "s" }
                ),
            })
            .collect();
        bail!(
            "the fuzzer found {} crash{}; reproduce one with `cargo xtask fuzz --target <target> --reproduce <file>`:\n{}",
            crashes.len(),
            if crashes.len() == 1 { "" } else { "es" },
            list.join("\n")
        );
    }
    Ok(())
}

/// One target's summary line.
fn line(s: &Stats) -> String {
    format!(
        "{:<14} {:>10} executions in {:>5.1} s = {:>7.0}/s; corpus {} ({} new); {} outcome classes; peak {}; {} crash{}",
        s.target,
        s.executions,
        s.seconds,
        s.rate(),
        s.corpus,
        s.new_inputs,
        s.classes,
        guard::mib(s.peak_alloc),
        s.crashes.len(),
        if s.crashes.len() == 1 { "" } else { "es" }
    )
}

/// Most times a target's worker is started again after a crash that cannot unwind (while its
/// time lasts).
const RESTARTS: u64 = 64;

/// Run `target`'s workers for its budget; their statistics, summed.
fn supervise(target: &Target, args: &Args) -> anyhow::Result<Stats> {
    let started = Instant::now();
    let budget = args.time();
    let mut total = Stats { target: target.name.to_string(), ..Stats::default() };
    let stats_file = std::env::temp_dir().join(format!("kvbench-fuzz-{}-{}.json", target.name, std::process::id()));
    eprintln!("fuzz: {}: {}", target.name, target.about);
    for restart in 0..=RESTARTS {
        let time_left = budget.map(|b| b.saturating_sub(started.elapsed()));
        let execs_left = args.execs.map(|n| n.saturating_sub(total.executions));
        if restart > 0 && (time_left.is_some_and(|t| t < Duration::from_secs(2)) || execs_left == Some(0)) {
            break;
        }
        let _ = std::fs::remove_file(&stats_file);
        let mut cmd = Command::new(std::env::current_exe().context("locating this executable")?);
        cmd.args(["fuzz", "--target", target.name])
            .arg(format!("--seed={}", args.seed.wrapping_add(restart)))
            .arg(format!("--max-alloc-mb={}", args.max_alloc_mb))
            .arg(format!("--timeout-s={}", args.timeout_s))
            .arg(format!("--max-len={}", args.max_len))
            .arg("--worker")
            .arg(&stats_file);
        if let Some(t) = time_left {
            cmd.arg(format!("--seconds={}", t.as_secs_f64()));
        }
        if let Some(n) = execs_left {
            cmd.arg(format!("--execs={n}"));
        }
        if args.offline {
            cmd.arg("--offline");
        }
        let run_started = Instant::now();
        let status = cmd.status().with_context(|| format!("starting the {} worker", target.name))?;
        let stats: Option<Stats> =
            std::fs::read_to_string(&stats_file).ok().and_then(|text| serde_json::from_str(&text).ok());
        let _ = std::fs::remove_file(&stats_file);
        match stats {
            Some(s) if status.success() => {
                merge_stats(&mut total, s);
                break;
            }
            _ if status.code() == Some(guard::ABORT_EXIT) => {
                // the worker's abort wrote its executions and the crash, not the rest
                let s = stats.unwrap_or_default();
                let seconds = run_started.elapsed().as_secs_f64();
                merge_stats(&mut total, Stats { seconds, ..s });
                eprintln!("fuzz: {}: the worker stopped at that crash; starting it again", target.name);
            }
            _ if stats.is_none() && status.code().is_none() => {
                // killed by a signal: a stack overflow (std aborts), or the kernel's OOM killer
                let what = format!(
                    "the worker died ({status}) with no input saved: a stack overflow, or memory the \
                     allocation oracle does not see (outside an execution, or not Rust's)"
                );
                eprintln!("fuzz: {}: {what}", target.name);
                let seconds = run_started.elapsed().as_secs_f64();
                let crash = engine::Crash { what, artifact: PathBuf::new(), hits: 1 };
                merge_stats(&mut total, Stats { seconds, crashes: vec![crash], ..Stats::default() });
                break;
            }
            _ => bail!("the {} worker failed ({status}); see its error above", target.name),
        }
    }
    Ok(total)
}

fn merge_stats(total: &mut Stats, s: Stats) {
    total.executions += s.executions;
    total.seconds += s.seconds;
    total.corpus = total.corpus.max(s.corpus);
    total.new_inputs += s.new_inputs;
    total.classes = total.classes.max(s.classes);
    total.peak_alloc = total.peak_alloc.max(s.peak_alloc);
    // a crash class found again by a restarted worker is one crash, with its first input; the
    // inputs of the others are removed (the same place, and a few a second to find again)
    for c in s.crashes {
        match total.crashes.iter_mut().find(|t| t.what == c.what) {
            Some(t) => {
                t.hits += c.hits;
                if c.artifact != t.artifact && !c.artifact.as_os_str().is_empty() {
                    let _ = std::fs::remove_file(c.artifact.with_extension("txt"));
                    let _ = std::fs::remove_file(&c.artifact);
                }
            }
            None => total.crashes.push(c),
        }
    }
}

/// Where seeds come from for `target`: the committed traces and results, and the model (fetched
/// on first use) for the gguf target unless --offline.
fn sources(target: &Target, args: &Args) -> seeds::Sources {
    let model = if target.name == "gguf" && !args.offline {
        match kvbench::assets::smollm2_gguf() {
            Ok(path) => Some(path),
            Err(e) => {
                eprintln!("fuzz: gguf: no model for a seed of its metadata ({e}); synthetic seeds only");
                None
            }
        }
    } else {
        None
    };
    seeds::Sources { root: crate::project_root(), traces_per_tier: usize::MAX, model }
}

fn worker(target: &Target, args: &Args, stats_file: &Path) -> anyhow::Result<()> {
    let root = crate::project_root();
    *guard::STATS_FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats_file.to_path_buf());
    let seeds = seeds::of(target.name, &sources(target, args))?;
    let config = Config {
        seed: args.seed,
        execs: args.execs,
        time: args.time(),
        limits: args.limits(),
        max_len: args.max_len,
        corpus_dir: Some(root.join("fuzz/corpus").join(target.name)),
        artifacts_dir: root.join("fuzz/artifacts").join(target.name),
        progress: true,
        show_classes: std::env::var_os("KVBENCH_FUZZ_CLASSES").is_some_and(|v| v == "1"),
    };
    let stats = engine::run(target, seeds, &config);
    targets::cleanup();
    let stats = stats?;
    std::fs::write(stats_file, serde_json::to_string(&stats)?)
        .with_context(|| format!("writing {}", stats_file.display()))?;
    Ok(())
}

fn reproduce(target: &Target, file: &Path, args: &Args) -> anyhow::Result<()> {
    let input = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let ended = engine::reproduce(target, &input, &args.limits());
    targets::cleanup();
    match ended {
        Ended::Returned(Ok(what)) => println!("{}: {} bytes: ok: {what}", target.name, input.len()),
        Ended::Returned(Err(e)) => println!("{}: {} bytes: error (as it should be): {e}", target.name, input.len()),
        Ended::Panicked(message) => {
            bail!("{}: {} bytes: crash (panic): {message}", target.name, input.len())
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kvbench-fuzz-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn config(execs: u64, artifacts: &Path) -> Config {
        Config {
            seed: 42,
            execs: Some(execs),
            time: Some(Duration::from_secs(30)),
            limits: Limits { max_alloc: 1 << 30, timeout: Duration::from_secs(10) },
            max_len: 1 << 20,
            corpus_dir: None,
            artifacts_dir: artifacts.to_path_buf(),
            progress: false,
            show_classes: false,
        }
    }

    /// A few thousand executions of `name` from its seeds, which must find no crash. They run in a
    /// child process (this test binary again, running only `test`), so that a crash that cannot
    /// unwind fails this test alone.
    fn survives(name: &str, execs: u64, test: &str) {
        if std::env::var("KVBENCH_FUZZ_TARGET").is_ok_and(|t| t == name) {
            return fuzz_briefly(name, execs);
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("KVBENCH_FUZZ_TARGET", name)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "fuzzing {name} ({}):\n{stderr}", out.status);
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{name}: the child ran no test");
    }

    fn fuzz_briefly(name: &str, execs: u64) {
        let target = targets::by_name(name).unwrap();
        let sources = seeds::Sources { root: crate::project_root(), traces_per_tier: 2, model: None };
        let seeds = seeds::of(name, &sources).unwrap();
        assert!(!seeds.is_empty());
        let artifacts = temp(&format!("artifacts-{name}"));
        let stats = engine::run(&target, seeds, &config(execs, &artifacts)).unwrap();
        targets::cleanup();
        assert!(stats.crashes.is_empty(), "{name} crashed: {:#?}", stats.crashes);
        assert!(stats.executions >= execs && stats.classes > 3, "{stats:?}");
        let _ = std::fs::remove_dir_all(artifacts);
    }

    #[test]
    fn trace_file_survives_fuzzing() {
        survives("trace_file", 3000, "fuzz::tests::trace_file_survives_fuzzing");
    }

    #[test]
    fn trace_payload_survives_fuzzing() {
        survives("trace_payload", 3000, "fuzz::tests::trace_payload_survives_fuzzing");
    }

    #[test]
    fn gguf_survives_fuzzing() {
        survives("gguf", 2000, "fuzz::tests::gguf_survives_fuzzing");
    }

    #[test]
    fn prefill_entry_survives_fuzzing() {
        survives("prefill_entry", 3000, "fuzz::tests::prefill_entry_survives_fuzzing");
    }

    #[test]
    fn results_survives_fuzzing() {
        survives("results", 2000, "fuzz::tests::results_survives_fuzzing");
    }

    fn panics_on_boom(input: &[u8]) -> targets::Outcome {
        if input.windows(4).any(|w| w == b"boom") {
            panic!("found a boom");
        }
        Ok(format!("{} bytes", input.len().min(3)))
    }

    #[test]
    fn a_panic_is_caught_and_its_input_saved() {
        let target = Target { name: "boom", about: "", run: panics_on_boom, mutate: None };
        let artifacts = temp("artifacts-boom");
        let stats = engine::run(&target, vec![b"xx".to_vec(), b"a boom!".to_vec()], &config(500, &artifacts)).unwrap();
        assert_eq!(stats.crashes.len(), 1, "{stats:?}");
        let crash = &stats.crashes[0];
        assert!(crash.what.contains("found a boom") && crash.what.contains("fuzz/mod.rs"), "{}", crash.what);
        let saved = std::fs::read(&crash.artifact).unwrap();
        assert!(saved.windows(4).any(|w| w == b"boom"));
        assert!(crash.artifact.starts_with(&artifacts));
        let report = std::fs::read_to_string(crash.artifact.with_extension("txt")).unwrap();
        assert!(report.contains("found a boom"), "{report}");
        // the seed that does not panic is in the corpus; the crash input is not
        assert!(stats.corpus >= 1 && stats.executions >= 500);
        std::fs::remove_dir_all(artifacts).unwrap();
    }

    fn allocates_a_lot(input: &[u8]) -> targets::Outcome {
        let v = vec![1u8; (64 << 20) + input.len()];
        Ok(format!("{}", v.iter().map(|&x| x as usize).sum::<usize>().min(1)))
    }

    fn sleeps(_: &[u8]) -> targets::Outcome {
        std::thread::sleep(Duration::from_secs(5));
        Ok(String::new())
    }

    /// What a child test (below) does when its parent sets `KVBENCH_FUZZ_CHILD`: fuzz a target
    /// that crashes without unwinding, which ends the process.
    #[test]
    fn child_crashes_without_unwinding() {
        let Ok(what) = std::env::var("KVBENCH_FUZZ_CHILD") else { return };
        let (kind, dir) = what.split_once(':').unwrap();
        let run = if kind == "alloc" { allocates_a_lot } else { sleeps };
        let target = Target { name: "child", about: "", run, mutate: None };
        let mut config = config(10, Path::new(dir));
        config.limits = Limits { max_alloc: 16 << 20, timeout: Duration::from_millis(300) };
        let _ = engine::run(&target, vec![b"seed input".to_vec()], &config);
        panic!("the {kind} oracle let the execution finish");
    }

    fn crash_in_child(kind: &str) -> (String, PathBuf) {
        let artifacts = temp(&format!("artifacts-{kind}"));
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fuzz::tests::child_crashes_without_unwinding", "--nocapture", "--test-threads=1"])
            .env("KVBENCH_FUZZ_CHILD", format!("{kind}:{}", artifacts.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(guard::ABORT_EXIT), "{stderr}");
        let saved: Vec<PathBuf> = std::fs::read_dir(&artifacts)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_none())
            .collect();
        assert_eq!(saved.len(), 1, "{saved:?}");
        assert_eq!(std::fs::read(&saved[0]).unwrap(), b"seed input");
        assert!(stderr.contains(&saved[0].display().to_string()), "{stderr}");
        std::fs::remove_dir_all(artifacts).unwrap();
        (stderr, saved[0].clone())
    }

    #[test]
    fn an_allocation_over_the_limit_is_a_crash_with_its_input_saved() {
        let (stderr, _) = crash_in_child("alloc");
        assert!(stderr.contains("allocation over the limit") && stderr.contains("16.0 MiB"), "{stderr}");
        assert!(stderr.contains("in allocates_a_lot (xtask/src/fuzz/mod.rs:"), "{stderr}");
    }

    #[test]
    fn a_hang_is_a_crash_with_its_input_saved() {
        let (stderr, _) = crash_in_child("timeout");
        assert!(stderr.contains("crash (timeout)"), "{stderr}");
    }

    #[test]
    fn a_run_resumes_from_its_corpus_folder() {
        let target = targets::by_name("prefill_entry").unwrap();
        let corpus = temp("corpus");
        let artifacts = temp("artifacts-corpus");
        let mut c = config(300, &artifacts);
        c.corpus_dir = Some(corpus.clone());
        let first = engine::run(&target, seeds::prefill_seeds(), &c).unwrap();
        let kept = std::fs::read_dir(&corpus).unwrap().count();
        assert_eq!(kept, first.corpus);
        // the inputs kept show every outcome the first run saw, to a run with no seeds
        c.execs = Some(kept as u64);
        let again = engine::run(&target, Vec::new(), &c).unwrap();
        assert!(again.classes >= first.classes, "{first:?} {again:?}");
        std::fs::remove_dir_all(corpus).unwrap();
        let _ = std::fs::remove_dir_all(artifacts);
    }
}
