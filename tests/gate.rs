//! The golden gate bites: a deliberately broken method fails against the golden snapshot of the
//! method it breaks, while the unchanged method, run again, passes.
//!
//! The broken method is StreamingLLM without its attention sinks (the window takes the whole
//! budget), the bug that StreamingLLM's paper is about; it runs over the default tier's traces
//! of every task and is held against the real method's snapshots
//! (`golden/trials/default/streamingllm-2x__<task>.snap`): it must fail at least two of them,
//! while the real method, run again, passes all seven.

use std::sync::Arc;

use kvbench::bench::golden::{self, GoldenTrial, Verdict};
use kvbench::bench::{PrefillCache, Tier, trial};
use kvbench::kv::evict::{Eviction, KeptStore};
use kvbench::kv::methods::{self, Budget};
use kvbench::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};
use kvbench::model::generate::Mode;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
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

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for NoSinks {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        let budget = Budget::Ratio(2.0).tokens(ctx.compressed_tokens);
        Box::new(KeptStore::empty(ctx.shape, Eviction::Window { sinks: 0, budget }))
    }
}

#[test]
fn a_broken_method_fails_its_golden_and_the_real_one_passes() {
    let tier = Tier::Default;
    let mut rt = Runtime::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("cannot load the model: {e}"));
    let prefills = PrefillCache::default();
    let real = methods::by_name("streamingllm-2x").unwrap();
    let broken: Arc<dyn Method> = Arc::new(NoSinks);
    let mut caught = Vec::new();
    for task in Task::ALL {
        let trace = tier.read_trace(task, &model_id(&rt)).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("streamingllm-2x::{}", task.name());
        let snapshot = golden::path(&tier.golden_dir(), &name);
        let golden = golden::read(&snapshot).unwrap().unwrap_or_else(|| {
            panic!("{} is missing: run `cargo test --test bench` and `cargo xtask bless`", snapshot.display())
        });
        let again = trial::run(&mut rt, &real, &trace, Mode::QueryAware, &prefills).unwrap();
        assert_eq!(golden::check(&GoldenTrial::of(&again, tier.name()), &golden), Verdict::Same, "{name} run again");
        let result = trial::run(&mut rt, &broken, &trace, Mode::QueryAware, &prefills).unwrap();
        if let Verdict::Changed(why) = golden::check(&GoldenTrial::of(&result, tier.name()), &golden) {
            eprintln!("{name} without sinks: {why}");
            caught.push(task.name());
        }
    }
    // three samples per task: the gate cannot see every change on every task, but a broken
    // method must not pass the whole tier
    assert!(caught.len() >= 2, "dropping the sinks went unnoticed on all but {caught:?}");
}
