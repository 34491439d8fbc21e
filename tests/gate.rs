//! The golden gate bites: deliberately broken methods fail against the golden snapshots of the
//! methods they break, while the unchanged methods, run again, pass.
//!
//! Three bugs, each claiming the real method's name and settings, as a buggy change to the real
//! method would, run over the default tier's traces of every task and held against the real
//! method's snapshots (`golden/trials/default/<method>__<task>.snap`) by the default tier's
//! replay gate:
//! - StreamingLLM at 2× without its attention sinks (the window takes the whole budget), the bug
//!   StreamingLLM's paper is about;
//! - q8_0 with the wrong scale: every key and value comes back at half its value, as if the
//!   scale were `amax / 255` instead of `amax / 127`;
//! - StreamingLLM at 2× keeping the wrong end: the oldest tokens (and the current one) instead
//!   of the most recent.
//!
//! Each must fail every task; the share the old statistical gate (a paired t test at the default tier's n, two samples)
//! would have caught is printed beside it, for docs/HARNESS.md's table.

use std::sync::Arc;

use kvbench::bench::golden::{self, Gate, GoldenTrial, Verdict};
use kvbench::bench::{PrefillCache, Tier, trial};
use kvbench::kv::evict::{Eviction, KeptStore};
use kvbench::kv::methods::{self, Budget};
use kvbench::kv::{LayerStore, Method, Phase, StoreContext, StoreFactory};
use kvbench::model::generate::Mode;
use kvbench::model::pinned::Pinned;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::record::model_id;

/// A broken copy of the method `real`: its name, settings and description, another store.
#[derive(Debug)]
struct Broken {
    real: &'static str,
    store: fn(&StoreContext) -> Box<dyn LayerStore>,
}

impl Method for Broken {
    fn name(&self) -> String {
        self.real.into()
    }

    fn settings(&self) -> serde_json::Value {
        methods::by_name(self.real).unwrap().settings()
    }

    fn description(&self) -> String {
        methods::by_name(self.real).unwrap().description()
    }

    fn nominal_ratio(&self) -> Option<f64> {
        methods::by_name(self.real).unwrap().nominal_ratio()
    }

    fn phase(&self) -> Phase<'_> {
        Phase::DuringPrefill(self)
    }
}

impl StoreFactory for Broken {
    fn layer_store(&self, ctx: &StoreContext) -> Box<dyn LayerStore> {
        (self.store)(ctx)
    }
}

/// A store whose keys and values arrive scaled by `factor` (a quantizer's wrong scale).
#[derive(Debug)]
struct Scaled {
    inner: Box<dyn LayerStore>,
    factor: f32,
}

impl LayerStore for Scaled {
    fn append(&mut self, keys: &[f32], values: &[f32], t: usize) {
        let scale = |xs: &[f32]| xs.iter().map(|x| x * self.factor).collect::<Vec<f32>>();
        self.inner.append(&scale(keys), &scale(values), t);
    }

    fn attend(&mut self, q: &[f32], q_stride: usize, t: usize, out: &mut [f32]) {
        self.inner.attend(q, q_stride, t, out);
    }

    fn bytes(&self) -> usize {
        self.inner.bytes()
    }

    fn bytes_read(&self) -> usize {
        self.inner.bytes_read()
    }

    fn tokens(&self) -> usize {
        self.inner.tokens()
    }

    fn clone_box(&self) -> Box<dyn LayerStore> {
        Box::new(Scaled { inner: self.inner.clone_box(), factor: self.factor })
    }
}

fn window(ctx: &StoreContext, sinks: impl Fn(usize) -> usize) -> Box<dyn LayerStore> {
    let budget = Budget::Ratio(2.0).tokens(ctx.compressed_tokens);
    Box::new(KeptStore::empty(ctx.shape, Eviction::Window { sinks: sinks(budget), budget }))
}

const BROKEN: [(&str, Broken); 3] = [
    ("without sinks", Broken { real: "streamingllm-2x", store: |ctx| window(ctx, |_| 0) }),
    (
        "with the wrong scale",
        Broken {
            real: "q8_0",
            store: |ctx| Box::new(Scaled { inner: methods::by_name("q8_0").unwrap().layer_store(ctx), factor: 0.5 }),
        },
    ),
    ("keeping the wrong end", Broken { real: "streamingllm-2x", store: |ctx| window(ctx, |budget| budget - 1) }),
];

#[test]
fn broken_methods_fail_their_goldens_and_the_real_ones_pass() {
    let tier = Tier::Default;
    let mut rt = Runtime::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("cannot load the model: {e}"));
    let prefills = PrefillCache::default();
    let old_gate = Gate::Statistical { trials: 1 };
    for (bug, broken) in BROKEN {
        let real = methods::by_name(broken.real).unwrap();
        let broken: Arc<dyn Method> = Arc::new(broken);
        let (mut caught, mut old_caught) = (Vec::new(), 0);
        for task in Task::ALL {
            let trace = tier.read_trace(Pinned::Smollm2, task, &model_id(&rt)).unwrap_or_else(|e| panic!("{e}"));
            let name = format!("{}::{}", real.name(), task.name());
            let snapshot = golden::path(&tier.golden_dir(Pinned::Smollm2), &name);
            let golden = golden::read(&snapshot).unwrap().unwrap_or_else(|| {
                panic!("{} is missing: run `cargo test --test bench` and `cargo xtask bless`", snapshot.display())
            });
            let again = trial::run(&mut rt, &real, &trace, Mode::QueryAware, &prefills).unwrap();
            let again = GoldenTrial::of(&again, tier.name());
            assert_eq!(golden::check(&again, &golden, tier.gate()), Verdict::Same, "{name} run again");
            let result =
                GoldenTrial::of(&trial::run(&mut rt, &broken, &trace, Mode::QueryAware, &prefills).unwrap(), "default");
            if let Verdict::Changed(why) = golden::check(&result, &golden, tier.gate()) {
                eprintln!("{name} {bug}: {why}");
                caught.push(task.name());
            }
            old_caught += usize::from(golden::check(&result, &golden, old_gate) != Verdict::Same);
        }
        eprintln!(
            "{} {bug}: caught on {} of {} tasks by replay, {old_caught} by the paired t test at the default tier's n",
            real.name(),
            caught.len(),
            Task::ALL.len()
        );
        assert_eq!(
            caught.len(),
            Task::ALL.len(),
            "{} {bug} went unnoticed on some tasks: caught only {caught:?}",
            real.name()
        );
    }
}
