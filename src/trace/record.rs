//! Recording: build a task's samples, run the full cache on each, and keep what replay needs.

use std::sync::Arc;

use super::format::{ModelId, SampleMeta, Trace, TraceHeader, TraceSample};
use super::probe::{Probe, ProbeSpec};
use crate::kv::methods::Full;
use crate::kv::methods::full::Recording;
use crate::kv::{KvCache, Method};
use crate::model::generate::{GenerateOptions, Prompt, generate_prompt};
use crate::model::session::{ModelError, Runtime};
use crate::tasks::{self, Task, TaskError};

/// Log-probs kept per reference step.
pub const TOP_K: usize = 8;
/// Prefill chunk of reference runs (and of replays).
pub const CHUNK: usize = 512;

/// Which attention probes to record ([`super::probe`]).
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// The first `samples` samples get a probe (0: none).
    pub samples: usize,
    /// Model layers to probe; empty: the middle one.
    pub layers: Vec<usize>,
}

/// What can stop a recording.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Building a sample.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// Running the model.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The model id of a runtime, as traces record it.
pub fn model_id(rt: &Runtime) -> ModelId {
    ModelId { name: pinned_of(rt).display_name().into(), gguf_sha256: rt.gguf_sha256().to_string() }
}

/// The pinned model of the runtime's architecture (a user's own GGUF of that architecture reads
/// as it; its traces are told apart by the GGUF's sha256, which [`model_id`] carries).
pub fn pinned_of(rt: &Runtime) -> crate::model::pinned::Pinned {
    use crate::model::config::Architecture;
    use crate::model::pinned::Pinned;
    match rt.config().arch {
        Architecture::Llama => Pinned::Smollm2,
        Architecture::Gemma3 => Pinned::Gemma3,
    }
}

/// Record `samples` samples (seeds `0..samples`) of `task` for `tier`, sample `i` at
/// `lens[i % lens.len()]` tokens, answers of at most `max_new_tokens` (and the task's own limit),
/// the first `probes.samples` with attention probes; call `progress(done, total, outcome)` after
/// each.
#[allow(clippy::too_many_arguments)]
pub fn record(
    rt: &mut Runtime,
    task: Task,
    samples: usize,
    lens: &[usize],
    max_new_tokens: usize,
    tier: &str,
    probes: &ProbeOptions,
    mut progress: impl FnMut(usize, usize, &TraceSample),
) -> Result<Trace, RecordError> {
    if lens.is_empty() {
        return Err(ModelError::Invalid("no sample length to record at".into()).into());
    }
    let spec = probe_spec(rt, probes, samples)?;
    let mut out = Vec::with_capacity(samples);
    for seed in 0..samples as u64 {
        let len = lens[seed as usize % lens.len()];
        let mut sample = tasks::sample(task, seed, len, rt.tokenizer())?;
        sample.max_new_tokens = sample.max_new_tokens.min(max_new_tokens);
        let prompt = Prompt::split(&sample.context_ids, &sample.question_ids);
        let probed = spec.as_ref().filter(|s| (seed as usize) < s.samples);
        // a recording store is the full cache keeping every query too: the same attention, the
        // same bits (tests/methods.rs holds the two to the same answer)
        let method: Arc<dyn Method> = if probed.is_some() { Arc::new(Recording) } else { Arc::new(Full) };
        rt.reset(method)?;
        let options = GenerateOptions {
            max_new_tokens: sample.max_new_tokens,
            chunk: CHUNK,
            top_k: TOP_K,
            ended: sample.answer_end.rule(),
            ..Default::default()
        };
        let generation = generate_prompt(rt, &prompt, options)?;
        let shown: Vec<u32> = generation.output_ids.iter().copied().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
        let text = rt.tokenizer().decode(&shown).map_err(ModelError::from)?;
        let probe = probed.map(|spec| capture(rt, spec)).transpose()?;
        let meta = SampleMeta {
            id: sample.id.clone(),
            seed,
            prompt_len: prompt.ids.len(),
            context_len: prompt.context,
            answers: sample.answers.clone(),
            metric: serde_json::to_value(&sample.metric).expect("metrics serialize"),
            max_new_tokens: sample.max_new_tokens,
            answer_end: sample.answer_end,
            reference_len: generation.output_ids.len(),
            reference_score: sample.score(&text),
            reference_text: text,
            info: sample.info.clone(),
        };
        let recorded = TraceSample {
            meta,
            prompt_ids: prompt.ids,
            reference_ids: generation.output_ids,
            reference_topk: generation.top_logprobs,
            probe,
        };
        progress(out.len() + 1, samples, &recorded);
        out.push(recorded);
    }
    Ok(Trace {
        header: TraceHeader {
            model: model_id(rt),
            task: task.name().to_string(),
            tier: tier.to_string(),
            target_len: lens.iter().copied().max().unwrap_or(0),
            chunk: CHUNK,
            top_k: TOP_K,
            recorded_by: format!("kvbench {}", env!("CARGO_PKG_VERSION")),
            probe: spec,
            samples: Vec::new(),
        },
        samples: out,
    })
}

/// The probes `options` ask of a `samples`-sample trace on `rt`'s model, if any.
fn probe_spec(rt: &Runtime, options: &ProbeOptions, samples: usize) -> Result<Option<ProbeSpec>, ModelError> {
    if options.samples == 0 {
        return Ok(None);
    }
    let c = rt.config();
    let mut layers = if options.layers.is_empty() { vec![c.layers / 2] } else { options.layers.clone() };
    layers.sort_unstable();
    layers.dedup();
    let spec = ProbeSpec {
        layers,
        model_layers: c.layers,
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        rope_base: c.rope_base,
        samples: options.samples.min(samples),
    };
    match spec.problem(samples) {
        Some(problem) => Err(ModelError::Invalid(format!("cannot probe: {problem}"))),
        None => Ok(Some(spec)),
    }
}

/// The probe of the run just finished on a [`Recording`] cache.
fn capture(rt: &Runtime, spec: &ProbeSpec) -> Result<Probe, ModelError> {
    let cache = KvCache::lock(rt.cache()).map_err(|e| ModelError::Invalid(e.to_string()))?;
    let stores = spec
        .layers
        .iter()
        .map(|&l| cache.layer(l).and_then(|s| s.as_prefill()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ModelError::Invalid("the recording lost a probed layer".into()))?;
    Probe::capture(&stores).map_err(ModelError::Invalid)
}
