//! Chunked prefill and greedy decoding: the one generation path the CLI and the benchmark use.
//!
//! The prompt is fed in chunks of [`GenerateOptions::chunk`] tokens (logits only for the last
//! row), the cache is told that prefill ended, and tokens are then decoded one at a time by
//! argmax until `max_new_tokens` or a stop token. Times are measured around the graph runs, so
//! the tokens/s figures are the engine's, not the tokenizer's.

use std::time::Instant;

use serde::Serialize;

use super::session::{ModelError, Runtime};
use crate::kv::KvCache;

/// Generation settings.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Prefill chunk size in tokens.
    pub chunk: usize,
    /// Keep decoding past stop tokens (to time a fixed number of steps).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_new_tokens: 16, chunk: 512, ignore_eos: false }
    }
}

/// What one generation produced, and how fast.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// Generated ids, including a final stop token if one was produced.
    pub output_ids: Vec<u32>,
    /// Seconds spent in prefill.
    pub prefill_seconds: f64,
    /// Seconds spent in decode steps (every token after the first).
    pub decode_seconds: f64,
    /// Decode steps run.
    pub decode_steps: usize,
    /// Peak bytes the cache held.
    pub peak_cache_bytes: usize,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_ids.len() as f64 / self.prefill_seconds.max(f64::MIN_POSITIVE)
    }

    /// Decode steps per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        if self.decode_steps == 0 { 0.0 } else { self.decode_steps as f64 / self.decode_seconds }
    }
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Prefill `prompt_ids` into the runtime's (already reset) cache; return the last row's logits.
pub fn prefill(rt: &mut Runtime, prompt_ids: &[u32], chunk: usize) -> Result<Vec<f32>, ModelError> {
    if prompt_ids.is_empty() {
        return Err(ModelError::Invalid("the prompt is empty".into()));
    }
    let chunk = chunk.max(1);
    let mut logits = Vec::new();
    for (c, ids) in prompt_ids.chunks(chunk).enumerate() {
        let positions: Vec<i64> = (0..ids.len()).map(|j| (c * chunk + j) as i64).collect();
        logits = rt.forward(ids, &positions, &[ids.len() as i64 - 1])?;
    }
    KvCache::lock(rt.cache()).map_err(|e| ModelError::Invalid(e.to_string()))?.end_prefill();
    Ok(logits)
}

/// Greedy generation from an empty cache (the caller picks the method with [`Runtime::reset`]).
pub fn generate(rt: &mut Runtime, prompt_ids: &[u32], options: GenerateOptions) -> Result<Generation, ModelError> {
    let context = rt.config().context;
    if prompt_ids.len() + options.max_new_tokens > context {
        return Err(ModelError::Invalid(format!(
            "prompt of {} tokens plus {} new tokens exceeds the model's context of {context}",
            prompt_ids.len(),
            options.max_new_tokens
        )));
    }
    let start = Instant::now();
    let logits = prefill(rt, prompt_ids, options.chunk)?;
    let prefill_seconds = start.elapsed().as_secs_f64();

    let mut output_ids = Vec::with_capacity(options.max_new_tokens);
    let mut decode_steps = 0;
    let start = Instant::now();
    if options.max_new_tokens > 0 {
        let mut next = argmax(&logits);
        output_ids.push(next);
        while output_ids.len() < options.max_new_tokens && (options.ignore_eos || !rt.tokenizer().is_stop(next)) {
            let position = (prompt_ids.len() + output_ids.len() - 1) as i64;
            let logits = rt.forward(&[next], &[position], &[0])?;
            decode_steps += 1;
            next = argmax(&logits);
            output_ids.push(next);
        }
    }
    let decode_seconds = start.elapsed().as_secs_f64();
    let peak_cache_bytes = KvCache::lock(rt.cache()).map_err(|e| ModelError::Invalid(e.to_string()))?.peak_bytes();
    Ok(Generation {
        prompt_ids: prompt_ids.to_vec(),
        output_ids,
        prefill_seconds,
        decode_seconds,
        decode_steps,
        peak_cache_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.0, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
    }
}
