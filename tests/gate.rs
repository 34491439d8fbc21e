//! The golden gate bites: a deliberately broken method fails against the golden snapshot of the
//! method it breaks, while the unchanged method, run again, passes.
//!
//! The broken method is StreamingLLM without its attention sinks (the window takes the whole
//! budget), the bug that StreamingLLM's paper is about; it runs over the default tier's needle
//! traces and is held against `golden/trials/default/streamingllm-2x__needle.snap`.

use std::sync::Arc;

use kvbench::bench::golden::{self, GoldenTrial, Verdict};
use kvbench::bench::{PrefillCache, Tier, trial};
use kvbench::kv::evict::{Eviction, KeptStore};
use kvbench::kv::method::{Acts, StoreContext};
use kvbench::kv::methods::{self, Budget};
use kvbench::kv::{LayerStore, Method};
use kvbench::model::generate::Mode;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::Trace;
use kvbench::trace::record::model_id;

/// StreamingLLM at 2× that forgets the sinks; it claims the real one's name and settings, as a
/// buggy change to the real method would.
#[derive(Debug)]
struct NoSinks;

impl Method for NoSinks {
    fn name(&self) -> String {
        "streamingllm-2x".into()
    }

    fn settings(&self) -> serde_json::Value {
        methods::by_name("streamingllm-2x").unwrap().settings()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        Some(2.0)
    }

    fn acts(&self) -> Acts {
        Acts::DuringPrefill
    }

    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        let budget = Budget::Ratio(2.0).tokens(ctx.compressed_tokens);
        Box::new(KeptStore::empty(ctx.shape, Eviction::Window { sinks: 0, budget }))
    }
}

#[test]
fn a_broken_method_fails_its_golden_and_the_real_one_passes() {
    let tier = Tier::Default;
    let mut rt = Runtime::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("cannot load the model: {e}"));
    let trace_path = tier.trace_path(Task::Needle);
    let trace = Trace::read(&trace_path, Some(&model_id(&rt))).unwrap_or_else(|e| panic!("{e}"));
    let snapshot = golden::path(&tier.golden_dir(), "streamingllm-2x::needle");
    let golden = golden::read(&snapshot).unwrap().unwrap_or_else(|| {
        panic!("{} is missing: run `cargo test --test bench` and `cargo xtask bless`", snapshot.display())
    });
    let prefills = PrefillCache::default();

    let real = methods::by_name("streamingllm-2x").unwrap();
    let again = trial::run(&mut rt, &real, &trace, Mode::QueryAware, &prefills).unwrap();
    assert_eq!(golden::check(&GoldenTrial::of(&again, tier.name()), &golden), Verdict::Same);

    let broken: Arc<dyn Method> = Arc::new(NoSinks);
    let result = trial::run(&mut rt, &broken, &trace, Mode::QueryAware, &prefills).unwrap();
    let verdict = golden::check(&GoldenTrial::of(&result, tier.name()), &golden);
    assert!(matches!(verdict, Verdict::Changed(_)), "dropping the sinks went unnoticed: {verdict:?}, {result:#?}");
}
