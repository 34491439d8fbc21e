//! Replay economy: what sharing the full-precision prefill saves.
//!
//! Times one more post-prefill method (`snapkv-4x`) over every task of a tier's traces twice in
//! one run: with each sample's prefill already in the shared cache (another post-prefill method,
//! `h2o-4x`, ran first and left it there), and with a fresh cache that recomputes every prefill.
//! Rounds alternate the two orders; the medians and their ratio are printed and written to
//! `target/kvbench-results/replay-economy-<tier>.json`.
//!
//! `cargo bench --bench replay_economy` (default tier; `KVBENCH_TIER=full` for the other,
//! `KVBENCH_ROUNDS=N` rounds, default 3).

use std::sync::Arc;
use std::time::Instant;

use kvbench::bench::{PrefillCache, Tier, trial};
use kvbench::kv::{Method, methods};
use kvbench::model::generate::Mode;
use kvbench::model::pinned::Pinned;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::Trace;
use kvbench::trace::record::model_id;

const WARM: &str = "h2o-4x";
const TIMED: &str = "snapkv-4x";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tier = Tier::from_env()?;
    let rounds = kvbench::assets::settings::rounds(3).unwrap_or_else(|e| panic!("{e}"));
    let mut rt = Runtime::load(&LoadOptions::default())?;
    let traces: Vec<Trace> = Task::ALL
        .iter()
        .map(|&t| {
            let path = tier.trace_path(Pinned::Smollm2, t);
            Trace::read(&path, Some(&model_id(&rt)))
                .map_err(|e| format!("{e}\n(record the traces with `cargo xtask record --tier {}`)", tier.name()))
        })
        .collect::<Result<_, _>>()?;
    let samples: usize = traces.iter().map(|t| t.samples.len()).sum();
    let (warm, timed) = (methods::by_name(WARM)?, methods::by_name(TIMED)?);
    eprintln!("replay economy: {TIMED} over {samples} samples of the {} tier, {rounds} rounds", tier.name());

    let run_all = |rt: &mut Runtime, method: &Arc<dyn Method>, cache: &PrefillCache| -> Result<f64, String> {
        let clock = Instant::now();
        for trace in &traces {
            trial::run(rt, method, trace, Mode::QueryAware, cache).map_err(|e| e.to_string())?;
        }
        Ok(clock.elapsed().as_secs_f64())
    };
    let (mut reused, mut recomputed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for reuse_first in [round % 2 == 0, round % 2 == 1] {
            if reuse_first {
                let shared = PrefillCache::default();
                run_all(&mut rt, &warm, &shared)?;
                let before = shared.counts();
                let secs = run_all(&mut rt, &timed, &shared)?;
                let recomputed_here = shared.counts().computed - before.computed;
                if recomputed_here > 0 {
                    // the tier's prefills do not all fit in the in-memory cache
                    eprintln!(
                        "  (the reused run recomputed {recomputed_here} of {samples} prefills: they did not fit)"
                    );
                }
                reused.push(secs);
            } else {
                let fresh = PrefillCache::default();
                let secs = run_all(&mut rt, &timed, &fresh)?;
                recomputed.push(secs);
            }
        }
        eprintln!("  round {}: reused {:.2} s, recomputed {:.2} s", round + 1, reused[round], recomputed[round]);
    }
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let (r, c) = (median(&mut reused.clone()), median(&mut recomputed.clone()));
    println!(
        "{TIMED} over the {} tier ({samples} samples): prefill reused {r:.2} s, recomputed {c:.2} s (medians of {rounds}); \
         recomputing costs {:.2}× (saves {:.0}%)",
        tier.name(),
        c / r,
        100.0 * (1.0 - r / c)
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/kvbench-results")
        .join(format!("replay-economy-{}.json", tier.name()));
    std::fs::create_dir_all(out.parent().expect("parent"))?;
    let json = serde_json::json!({
        "tier": tier.name(), "method": TIMED, "warmed_by": WARM, "samples": samples, "rounds": rounds,
        "reused_s": reused, "recomputed_s": recomputed, "median_reused_s": r, "median_recomputed_s": c,
        "ratio": c / r,
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&json)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
