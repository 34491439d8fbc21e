//! The benchmark as a test suite: one trial per (model, method, task), named `method::task` for
//! the first model, SmolLM2 (`kivi-2bit::needle`, `h2o-4x::code`, `full::few-shot`), and
//! `model/method::task` for every other (`gemma3-270m/snapkv-4x::needle`): a filter
//! `gemma3-270m/` runs Gemma's trials, `--skip gemma3-270m/` SmolLM2's.
//!
//! Each trial replays the tier's recorded traces of its model (`traces/<tier>/<task>.trace.zst`,
//! `traces/<tier>/gemma3-270m/<task>.trace.zst`) through the method, scores the answers with the
//! task's metric, measures fidelity to the full cache's recorded answer and the bytes held, writes
//! its result to `target/kvbench-results/<tier>/[<model>/]<trial>.json`, and holds it against its
//! golden snapshot (`golden/trials/<tier>/[<model>/]`) with the statistical gate of
//! `kvbench::bench::golden`. A trial with
//! no snapshot, or one that changed, fails and (outside CI) leaves a `.snap.new` to review;
//! `cargo xtask bless` accepts them.
//!
//! `KVBENCH_TIER=full` selects the full tier; `KVBENCH_MODE=query-agnostic` (or `query-aware-uncompressed-first-token`) another mode;
//! `KVBENCH_RESULTS=DIR` writes the results there (a shard's, say). `KVBENCH_RESUME=1` takes a
//! trial's result from an earlier run instead of running it again when that result was computed
//! by this very test binary from this very trace (both sha256s are recorded in the result), and
//! gates it as usual: an interrupted run of the full tier continues where it stopped.
//! Trials of methods that act after prefill share each sample's full-precision prefill, in memory
//! and on disk under `target/kvbench-prefill` (`kvbench::bench::prefill_disk`), so that separate
//! processes (`cargo nextest`, shards) and later runs share it too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use kvbench::assets::settings;
use kvbench::bench::golden::{self, GoldenTrial, Verdict};
use kvbench::bench::sequential::Design;
use kvbench::bench::trial::TrialOptions;
use kvbench::bench::{DiskPrefills, PrefillCache, Provenance, Tier, TrialResult, build_id, trial, trials};
use kvbench::kv::methods;
use kvbench::model::generate::Mode;
use kvbench::model::pinned::Pinned;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::Trace;
use kvbench::trace::record::model_id;
use libtest_mimic::{Arguments, Failed, Trial};

thread_local! {
    /// The runtime of the model a test thread last ran (each owns its sessions and cache).
    static RUNTIME: RefCell<Option<(Pinned, Runtime)>> = const { RefCell::new(None) };
    /// One single-thread kernel pool per test thread.
    static KERNELS: rayon::ThreadPool =
        rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool");
}

struct Shared {
    tier: Tier,
    mode: Mode,
    prefills: PrefillCache,
    traces: Mutex<HashMap<(Pinned, Task), Arc<Trace>>>,
    /// Each trace file's sha256.
    trace_hashes: Mutex<HashMap<(Pinned, Task), String>>,
    resume: bool,
    /// The tier's sequential design, unless `KVBENCH_SEQUENTIAL=0`.
    stopping: Option<Design>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let tier = Tier::from_env().unwrap_or_else(|e| panic!("{e}"));
        let mode = settings::mode().unwrap_or_else(|e| panic!("{e}"));
        let mode = Mode::from_name(mode).expect("KVBENCH_MODE's values are modes");
        let prefills = match DiskPrefills::from_env(tier).unwrap_or_else(|e| panic!("{e}")) {
            Some(disk) => PrefillCache::with_disk(disk),
            None => PrefillCache::default(),
        };
        let resume = settings::resume().unwrap_or_else(|e| panic!("{e}"));
        let stopping = tier.stopping().filter(|_| settings::sequential().unwrap_or_else(|e| panic!("{e}")));
        let (traces, trace_hashes) = (Mutex::default(), Mutex::default());
        Shared { tier, mode, prefills, traces, trace_hashes, resume, stopping }
    })
}

fn with_runtime<R: Send>(model: Pinned, f: impl FnOnce(&mut Runtime) -> Result<R, Failed> + Send) -> Result<R, Failed> {
    // Each test thread runs its trials on a one-thread kernel pool of its own, and ONNX Runtime
    // on one thread: the trials run side by side, one per core, with no hand-offs between
    // threads inside a trial (measured faster than one pool shared by the test threads).
    KERNELS.with(|pool| {
        pool.install(|| {
            RUNTIME.with_borrow_mut(|slot| {
                // one model's runtime a thread: the trials run model by model, and Gemma's fp32
                // weights would make a second resident runtime a gigabyte more per test thread
                if slot.as_ref().is_none_or(|(loaded, _)| *loaded != model) {
                    *slot = None;
                    let gguf = model.gguf().map_err(|e| format!("cannot fetch {}: {e}", model.name()))?;
                    let options = LoadOptions { gguf: Some(gguf), threads: 1, kernel_threads: Some(1) };
                    let rt = Runtime::load(&options).map_err(|e| format!("cannot load {}: {e}", model.name()))?;
                    *slot = Some((model, rt));
                }
                let (_, rt) = slot.as_mut().expect("loaded");
                f(rt)
            })
        })
    })
}

/// The path of `model`'s trace of `task`, which must exist.
fn trace_path(model: Pinned, task: Task) -> Result<PathBuf, Failed> {
    Ok(shared().tier.recorded_trace(model, task)?)
}

fn trace(model: Pinned, task: Task, rt: &Runtime) -> Result<Arc<Trace>, Failed> {
    let s = shared();
    if let Some(t) = s.traces.lock().expect("traces").get(&(model, task)) {
        return Ok(t.clone());
    }
    let t = Arc::new(shared().tier.read_trace(model, task, &model_id(rt))?);
    s.traces.lock().expect("traces").insert((model, task), t.clone());
    Ok(t)
}

/// This test binary's and the trace file's sha256.
fn provenance(model: Pinned, task: Task) -> Result<Provenance, Failed> {
    let s = shared();
    let mut hashes = s.trace_hashes.lock().expect("trace hashes");
    let trace = match hashes.get(&(model, task)) {
        Some(hash) => hash.clone(),
        None => {
            let hash = kvbench::assets::sha256_file(&trace_path(model, task)?).map_err(|e| e.to_string())?;
            hashes.entry((model, task)).or_insert(hash).clone()
        }
    };
    Ok(Provenance { build: build_id()?, trace })
}

fn run_trial(model: Pinned, method: &str, task: Task) -> Result<(), Failed> {
    let s = shared();
    let method = methods::by_name(method).map_err(|e| e.to_string())?;
    // the name within the model's folders (results, goldens), as the result records it
    let name = format!("{}::{}", method.name(), task.name());
    let full_name = format!("{}{name}", model.trial_prefix());
    // a stored result is of this trial (`stored` checks it), a new one too (checked below)
    let file = golden::file_name(&name);
    let results = s.tier.results_dir(model);
    let out = results.join(format!("{file}.json"));
    let provenance = provenance(model, task)?;
    let stored = if s.resume {
        TrialResult::stored(&out, &name, &provenance, s.mode).and_then(|r| r.map(|r| r.under(s.stopping)).transpose())
    } else {
        Ok(None)
    };
    let result = match stored {
        Ok(Some(done)) => {
            eprintln!("{full_name}: resumed from {}", out.display());
            done
        }
        stored => {
            if let Err(why) = stored {
                eprintln!("{full_name}: running it again: {why}");
            }
            let mut result = with_runtime(model, |rt| {
                let trace = trace(model, task, rt)?;
                let options = TrialOptions { stopping: s.stopping, ..TrialOptions::new(s.mode) };
                trial::run_with(rt, &method, &trace, &s.prefills, options, |_| {})
                    .map_err(|e| Failed::from(e.to_string()))
            })?;
            if result.trial != name {
                return Err(format!("trial {name} ran as {}: the trace is of another task", result.trial).into());
            }
            result.provenance = provenance;
            std::fs::create_dir_all(&results).map_err(|e| e.to_string())?;
            let json = serde_json::to_vec_pretty(&result).expect("results serialize");
            kvbench::assets::write_atomic(&out, &json).map_err(|e| e.to_string())?;
            result
        }
    };

    let current = GoldenTrial::of(&result, s.tier.name());
    let dir = s.tier.golden_dir(model);
    let verdict = match golden::read(&golden::path(&dir, &name))? {
        None => Verdict::Changed("no golden snapshot yet".into()),
        Some(g) => golden::check(&current, &g, s.tier.gate()),
    };
    if let Verdict::Changed(why) = verdict {
        let tier = if s.tier.name() == "default" { String::new() } else { format!(" --tier {}", s.tier.name()) };
        let name = &full_name;
        // Let insta show the diff (and, outside CI, write the .snap.new to review).
        // (insta panics on a difference; the trial's own failure below says why)
        let _ = std::panic::catch_unwind(|| {
            insta::with_settings!({ snapshot_path => &dir, prepend_module_to_snapshot => false, omit_expression => true }, {
                insta::assert_json_snapshot!(file.as_str(), &current);
            });
        });
        return Err(format!(
            "{}: {why}; score {:.3} [{:.3}, {:.3}] over {} samples. Review with `cargo xtask bless{tier} --list --exact {name}`, \
             accept with `cargo xtask bless{tier} --exact {name}`",
            result.trial,
            result.score.mean,
            result.score.lo,
            result.score.hi,
            result.samples.len()
        )
        .into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let trials = trials()
        .into_iter()
        .map(|id| {
            let name = id.name();
            Trial::test(name, move || run_trial(id.model, &id.method, id.task))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
