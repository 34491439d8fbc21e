//! Recording: build a task's samples, run the full cache on each, and keep what replay needs.

use std::sync::Arc;

use super::format::{ModelId, SampleMeta, Trace, TraceHeader, TraceSample};
use crate::kv::methods::Full;
use crate::model::generate::{GenerateOptions, Prompt, generate_prompt};
use crate::model::session::{ModelError, Runtime};
use crate::tasks::{self, Task, TaskError};

/// Log-probs kept per reference step.
pub const TOP_K: usize = 8;
/// Prefill chunk of reference runs (and of replays).
pub const CHUNK: usize = 512;

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
    ModelId { name: "SmolLM2-135M-Instruct Q4_1".into(), gguf_sha256: rt.gguf_sha256().to_string() }
}

/// Record `samples` samples (seeds `0..samples`) of `task` for `tier`, sample `i` at
/// `lens[i % lens.len()]` tokens; call `progress(done, total, outcome)` after each.
pub fn record(
    rt: &mut Runtime,
    task: Task,
    samples: usize,
    lens: &[usize],
    tier: &str,
    mut progress: impl FnMut(usize, usize, &TraceSample),
) -> Result<Trace, RecordError> {
    if lens.is_empty() {
        return Err(ModelError::Invalid("no sample length to record at".into()).into());
    }
    let mut out = Vec::with_capacity(samples);
    for seed in 0..samples as u64 {
        let len = lens[seed as usize % lens.len()];
        let sample = tasks::sample(task, seed, len, rt.tokenizer())?;
        let prompt = Prompt::split(&sample.context_ids, &sample.question_ids);
        rt.reset(Arc::new(Full))?;
        let options =
            GenerateOptions { max_new_tokens: sample.max_new_tokens, chunk: CHUNK, top_k: TOP_K, ..Default::default() };
        let generation = generate_prompt(rt, &prompt, options)?;
        let shown: Vec<u32> = generation.output_ids.iter().copied().filter(|&id| !rt.tokenizer().is_stop(id)).collect();
        let text = rt.tokenizer().decode(&shown).map_err(ModelError::from)?;
        let meta = SampleMeta {
            id: sample.id.clone(),
            seed,
            prompt_len: prompt.ids.len(),
            context_len: prompt.context,
            answers: sample.answers.clone(),
            metric: serde_json::to_value(&sample.metric).expect("metrics serialize"),
            max_new_tokens: sample.max_new_tokens,
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
            samples: Vec::new(),
        },
        samples: out,
    })
}
