//! Batched decoding changes nothing: a trial whose samples decode together (one run of the
//! decode graph per step over every sample still decoding, `Runtime::forward_lanes`) gives the
//! very results of the same trial with each sample decoded alone: per sample the same
//! prediction, score, top-1 agreement, KL, bytes and margin, bit for bit.
//!
//! Methods of every kind, on the default tier's code task (32-token answers that part from the
//! reference, so lanes fork, restore and teacher-force while others still decode greedily) and
//! its needle task.

use kvbench::bench::trial::{self, BATCH, SampleOutcome, TrialOptions};
use kvbench::bench::{PrefillCache, Tier};
use kvbench::kv::methods;
use kvbench::model::generate::Mode;
use kvbench::model::pinned::Pinned;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::record::model_id;

fn timeless(samples: &[SampleOutcome]) -> Vec<SampleOutcome> {
    samples.iter().map(SampleOutcome::timeless).collect()
}

// one test a task, so that the two run side by side on two cores
#[test]
fn batched_code_trials_reproduce_unbatched_ones_bit_for_bit() {
    batched_trials_reproduce_unbatched_ones(Task::Code);
}

#[test]
fn batched_needle_trials_reproduce_unbatched_ones_bit_for_bit() {
    batched_trials_reproduce_unbatched_ones(Task::Needle);
}

fn batched_trials_reproduce_unbatched_ones(task: Task) {
    let options = LoadOptions { gguf: None, threads: 1, kernel_threads: Some(1) };
    let mut rt = Runtime::load(&options).unwrap_or_else(|e| panic!("cannot load the model: {e}"));
    let prefills = PrefillCache::default();
    let names =
        ["full", "snapkv-4x", "tova-2x", "h2o-8x", "kivi-2bit", "q4_0", "quest-4x", "infllm-4x", "streamingllm-2x"];
    {
        let mut trace =
            Tier::Default.read_trace(Pinned::Smollm2, task, &model_id(&rt)).unwrap_or_else(|e| panic!("{e}"));
        assert!(trace.samples.len() > 1 && trace.samples.len() <= BATCH, "one group of several samples");
        // the default tier has two samples: four make two lanes' worth of forks likelier
        let again = trace.samples.clone();
        trace.samples.extend(again);
        for name in names {
            let method = methods::by_name(name).unwrap();
            let batched = trial::run(&mut rt, &method, &trace, Mode::QueryAware, &prefills).unwrap();
            let one_at_a_time = TrialOptions { batch: 1, ..TrialOptions::new(Mode::QueryAware) };
            let alone = trial::run_with(&mut rt, &method, &trace, &prefills, one_at_a_time, |_| {}).unwrap();
            let (b, a) = (timeless(&batched.samples), timeless(&alone.samples));
            for (x, y) in b.iter().zip(&a) {
                assert_eq!(x, y, "{name}::{}: sample {} differs batched", task.name(), x.id);
                // PartialEq on f64 would let −0 = +0 and miss a NaN: the bits too
                let bits = |s: &SampleOutcome| (s.top1_agreement.to_bits(), s.kl.map(f64::to_bits));
                assert_eq!(bits(x), bits(y), "{name}::{}", task.name());
            }
            assert_eq!(b.len(), a.len());
        }
    }
}
