//! Invariants every budgeted method must keep, driven through [`KvCache`] as the model drives it:
//! chunked prefill, end of prefill, then decode steps, on random post-RoPE-like data.

use std::sync::Arc;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::registry::{COMPOSITIONS, Kind, REGISTRY, families_of};
use super::{by_name, pyramidkv};
use crate::kv::out_proj::OutProjection;
use crate::kv::{Acts, Heads, KvCache};

const SHAPE: Heads = Heads { heads: 9, kv_heads: 3, head_dim: 64 };
const PROMPT: usize = 600;
const CHUNK: usize = 128;
const DECODE: usize = 40;

/// An empty cache of `name` on [`SHAPE`], three layers, each with a random attention output
/// projection (as the model's runtime gives them: CriticalKV reads it).
fn cache_of(name: &str) -> KvCache {
    let mut rng = StdRng::seed_from_u64(5);
    let hidden = 32;
    let inner = SHAPE.heads * SHAPE.head_dim;
    let proj = |rng: &mut StdRng| {
        let weight: Vec<f32> = (0..hidden * inner).map(|_| rng.random_range(-0.1f32..0.1)).collect();
        Some(Arc::new(OutProjection::from_linear(&weight, hidden, SHAPE.heads, SHAPE.head_dim).unwrap()))
    };
    let out_proj = (0..3).map(|_| proj(&mut rng)).collect();
    KvCache::new(by_name(name).unwrap(), SHAPE, 3, 10_000.0).with_out_proj(out_proj)
}

/// Run `name` through prefill and decode; call `check(cache, decode_step)` after every step
/// (`None` during prefill).
fn drive(name: &str, mut check: impl FnMut(&KvCache, Option<usize>)) {
    let mut rng = StdRng::seed_from_u64(21);
    let mut cache = cache_of(name);
    cache.begin(PROMPT);
    let (qw, kw) = (SHAPE.heads * SHAPE.head_dim, SHAPE.kv_heads * SHAPE.head_dim);
    let mut step = |cache: &mut KvCache, t: usize| {
        let k: Vec<f32> = (0..t * kw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let v: Vec<f32> = (0..t * kw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let q: Vec<f32> = (0..t * qw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut out = vec![0.0; t * qw];
        for l in 0..cache.layers() {
            let store = cache.layer_mut(l).unwrap();
            store.append(&k, &v, t);
            store.attend(&q, qw, t, &mut out);
        }
        cache.note_step(t);
    };
    for start in (0..PROMPT).step_by(CHUNK) {
        step(&mut cache, CHUNK.min(PROMPT - start));
        check(&cache, None);
    }
    cache.end_prefill();
    for s in 0..DECODE {
        step(&mut cache, 1);
        check(&cache, Some(s));
    }
}

#[test]
fn evicting_methods_never_exceed_their_budget() {
    for ratio in [2, 4, 8] {
        let budget = PROMPT / ratio;
        for family in families_of(Kind::Evicting) {
            let name = format!("{family}-{ratio}x");
            // a method acting during prefill (StreamingLLM) holds its budget from prefill on;
            // one acting after it (H2O, TOVA) fixes the budget when prefill ends
            let from_prefill = by_name(&name).unwrap().acts() == Acts::DuringPrefill;
            drive(&name, |cache, step| {
                if step.is_some() || from_prefill {
                    assert!(
                        cache.tokens() <= budget,
                        "{name}: {} tokens, budget {budget}, step {step:?}",
                        cache.tokens()
                    );
                }
                if step.is_some() {
                    assert_eq!(cache.tokens(), budget, "{name} keeps exactly its budget in decode");
                }
            });
        }
    }
}

#[test]
fn one_shot_methods_compress_to_their_budget_then_grow_by_one_per_step() {
    for ratio in [2, 4, 8] {
        let budget = PROMPT / ratio;
        for family in families_of(Kind::OneShot) {
            let name = format!("{family}-{ratio}x");
            drive(&name, |cache, step| {
                let Some(step) = step else { return };
                let mut model_wide = 0;
                for l in 0..cache.layers() {
                    // PyramidKV's budgets shrink with depth; every other keeps the same per layer
                    let layer_budget =
                        if family == "pyramidkv" { pyramidkv::layer_budget(budget, PROMPT, l, 3) } else { budget };
                    let layer = cache.layer(l).unwrap();
                    let held: Vec<usize> = (0..SHAPE.kv_heads).map(|g| layer.held(g).unwrap().len()).collect();
                    let want = layer_budget + step + 1;
                    match family {
                        // AdaKV's heads share the layer's budget, each keeping at least its safeguard
                        "adakv" => {
                            assert_eq!(held.iter().sum::<usize>(), SHAPE.kv_heads * want, "{name} layer {l}: {held:?}");
                            let safe = (layer_budget as f64 * super::adakv::SAFEGUARD) as usize;
                            assert!(held.iter().all(|&h| h > safe + step), "{name} layer {l}: {held:?}");
                        }
                        // DuoAttention's heads keep the prompt or a window, the window sized so
                        // that the model's heads hold the budget on average (see its rounding)
                        "duoattention" => {
                            assert!(
                                held.iter().all(|&h| h == PROMPT + step + 1 || h <= want),
                                "{name} layer {l}: {held:?}"
                            );
                            model_wide += held.iter().sum::<usize>();
                        }
                        // ChunkKV keeps whole chunks: up to two chunks short of the budget
                        "chunkkv" => {
                            let chunk = super::chunkkv::CHUNK;
                            assert!(
                                held.iter().all(|&h| h <= want && h + 2 * chunk > want),
                                "{name} layer {l}: {held:?}"
                            );
                        }
                        _ => assert!(held.iter().all(|&h| h == want), "{name} layer {l}: {held:?} for {want}"),
                    }
                }
                // ... and on average over the model's heads, within a token each of the budget
                if family == "duoattention" {
                    let heads = cache.layers() * SHAPE.kv_heads;
                    let want = heads * (budget + step + 1);
                    assert!(model_wide <= want && model_wide + heads > want, "{name}: {model_wide} held for {want}");
                }
            });
        }
    }
}

#[test]
fn retrieval_methods_keep_everything_and_read_within_budget() {
    for ratio in [2, 4, 8] {
        let budget = PROMPT / ratio;
        for family in families_of(Kind::Retrieval) {
            let name = format!("{family}-{ratio}x");
            drive(&name, |cache, step| {
                let Some(step) = step else { return };
                assert_eq!(cache.tokens(), PROMPT + step + 1, "{name} frees nothing");
                // Quest's first two layers are dense
                let first = if family == "quest" { 2 } else { 0 };
                for l in first..cache.layers() {
                    for g in 0..SHAPE.kv_heads {
                        let read = cache.layer(l).unwrap().visible(g).unwrap();
                        // Quest may add the newest, partial page beyond whole pages; InfLLM's local
                        // window holds the tokens of the block being filled
                        let slack = if family == "quest" { super::quest::PAGE } else { super::infllm::BLOCK };
                        assert!(read.len() <= budget + slack, "{name} layer {l} head {g} read {}", read.len());
                        assert!(read.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
                        assert_eq!(*read.last().unwrap() as usize, PROMPT + step, "the newest token is read");
                    }
                }
            });
        }
    }
}

/// On random data each kv head keeps its own tokens, for every token method but five:
/// StreamingLLM keeps positions (the same in every head); InfLLM's reference ranking, pooled
/// TOVA and ChunkKV make one choice per layer, summed over every head; and H2O, though per head as TOVA,
/// favours the same early tokens in every head on random data (accumulated attention).
#[test]
fn selection_is_per_kv_head() {
    const SAME_IN_EVERY_HEAD: [&str; 5] = ["streamingllm", "infllm-ref", "h2o", "tova-pooled", "chunkkv"];
    let token_kinds = [Kind::Evicting, Kind::OneShot, Kind::Retrieval];
    let families = token_kinds.into_iter().flat_map(families_of).filter(|f| !SAME_IN_EVERY_HEAD.contains(f));
    for name in families.map(|f| format!("{f}-4x")) {
        let name = name.as_str();
        let mut differs = false;
        drive(name, |cache, step| {
            if step == Some(DECODE - 1) {
                let layer = cache.layer(2).unwrap();
                let heads: Vec<_> = (0..SHAPE.kv_heads).map(|g| layer.visible(g).unwrap()).collect();
                differs = heads.windows(2).any(|w| w[0] != w[1]);
            }
        });
        assert!(differs, "{name}: every kv head read the same tokens");
    }
}

/// With a budget larger than the sequence, every budgeted method attends exactly as the fp16
/// cache does: nothing is lost by accident (duplicated, skipped or reordered rows).
#[test]
fn pooled_tova_keeps_the_same_tokens_in_every_head() {
    drive("tova-pooled-4x", |cache, step| {
        if step.is_some() {
            let layer = cache.layer(1).unwrap();
            let heads: Vec<_> = (0..SHAPE.kv_heads).map(|g| layer.visible(g).unwrap()).collect();
            assert!(heads.windows(2).all(|w| w[0] == w[1]), "step {step:?}: the heads differ");
            assert_eq!(cache.tokens(), PROMPT / 4, "step {step:?}");
        }
    });
}

#[test]
fn a_budget_above_the_sequence_changes_nothing() {
    let outputs = |name: &str| {
        let mut rng = StdRng::seed_from_u64(5);
        let mut cache = cache_of(name);
        cache.begin(PROMPT);
        let (qw, kw) = (SHAPE.heads * SHAPE.head_dim, SHAPE.kv_heads * SHAPE.head_dim);
        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        let chunks: Vec<usize> = std::iter::repeat_n(CHUNK, PROMPT / CHUNK).chain([PROMPT % CHUNK]).collect();
        for (i, &t) in chunks.iter().chain(&[1; 10]).enumerate() {
            if i == chunks.len() {
                cache.end_prefill();
            }
            let k: Vec<f32> = (0..t * kw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let q: Vec<f32> = (0..t * qw).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut out = vec![0.0; t * qw];
            for l in 0..cache.layers() {
                let store = cache.layer_mut(l).unwrap();
                store.append(&k, &k, t);
                store.attend(&q, qw, t, &mut out);
                if i < chunks.len() { &mut prefill } else { &mut decode }.extend_from_slice(&out);
            }
        }
        (prefill, decode)
    };
    let reference = outputs("fp16");
    let cache_methods = REGISTRY.iter().filter(|s| s.budgeted_family() && s.kind != Kind::PromptCompression);
    for family in cache_methods.map(|s| s.name) {
        let name = format!("{family}-100000tok");
        let got = outputs(&name);
        let gap = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        // methods acting after prefill prefill in fp32 (the full cache), the others in f16
        let prefill_gap = gap(&got.0, &reference.0);
        assert!(prefill_gap < 2e-3, "{name} prefill differs from fp16 by {prefill_gap}");
        // after prefill every kept row is the same f16 value: decode must match exactly (ThinK,
        // keeping every channel, attends by its own kernel: the same terms, summed in another order)
        let exact = if family == "think" { 1e-6 } else { 0.0 };
        let decode_gap = gap(&got.1, &reference.1);
        assert!(decode_gap <= exact, "{name} decode differs from fp16 by {decode_gap}");
    }
}

/// Whether a settings value is an identity: numbers, bools and short choices without spaces,
/// in objects and lists ([`crate::kv::Method::settings`]).
fn is_identity(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => false,
        Value::Bool(_) | Value::Number(_) => true,
        Value::String(s) => !s.is_empty() && s.len() <= 32 && !s.chars().any(char::is_whitespace),
        Value::Array(items) => items.iter().all(is_identity),
        Value::Object(map) => map.values().all(is_identity),
    }
}

#[test]
fn settings_are_identities_and_prose_is_a_description() {
    for spec in REGISTRY {
        let names = if spec.budgeted_family() {
            ["2x", "8x", "512tok"].map(|suffix| format!("{}-{suffix}", spec.name)).to_vec()
        } else {
            vec![spec.name.to_string()]
        };
        for name in names {
            let method = by_name(&name).unwrap();
            let settings = method.settings();
            assert!(settings.is_object() && is_identity(&settings), "{name}: settings {settings} hold prose");
            let description = method.description();
            assert!(description.contains(' ') && description.len() >= 20, "{name}: say what it does: {description:?}");
        }
    }
    for name in COMPOSITIONS {
        let settings = by_name(name).unwrap().settings();
        assert!(is_identity(&settings), "{name}: settings {settings} hold prose");
    }
    assert!(!is_identity(&serde_json::json!({ "score": "summed over heads" })));
    assert!(is_identity(&serde_json::json!({ "forced": [".", "!"], "budget": { "ratio": 2.0 } })));
}

/// Per layer, per kv head, the positions held after the last decode step, and the layer's bytes.
fn held_at_end(name: &str) -> Vec<(Vec<Vec<u32>>, usize)> {
    let mut held = Vec::new();
    drive(name, |cache, step| {
        if step == Some(DECODE - 1) {
            held = (0..cache.layers())
                .map(|l| {
                    let layer = cache.layer(l).unwrap();
                    ((0..SHAPE.kv_heads).map(|g| layer.held(g).unwrap()).collect(), layer.bytes())
                })
                .collect();
        }
    });
    held
}

/// Composed with a row quantizer, every evicting and one-shot method keeps what it keeps alone
/// (the same positions where its choice does not read attention over the quantized rows; as many
/// where it does), and holds them in the quantizer's bytes: its own, less the f16 rows, plus the
/// codes (and FP8's per-layer scales).
#[test]
fn a_composition_keeps_its_evictors_tokens_in_its_quantizers_bytes() {
    use crate::kv::rowcode::Coder;
    let attention_scored = ["h2o", "tova", "tova-pooled"];
    let d = SHAPE.head_dim;
    for family in families_of(Kind::Evicting).into_iter().chain(families_of(Kind::OneShot)) {
        let evictor = format!("{family}-4x");
        let alone = held_at_end(&evictor);
        for quantizer in
            ["q4_0-rot", "q8_0", "q5_1", "flexgen-4bit", "fp8-e4m3", "turboquant-3bit", "turboquant-4bit-qjl"]
        {
            let name = format!("{evictor}+{quantizer}");
            let code = by_name(quantizer).unwrap().row_code().unwrap();
            let coder = Coder::calibrated(code, d, &[1.0], &[1.0]);
            let composed = held_at_end(&name);
            assert_eq!(composed.len(), alone.len());
            for (l, ((held, bytes), (held_alone, bytes_alone))) in composed.iter().zip(&alone).enumerate() {
                let rows: usize = held.iter().map(Vec::len).sum();
                if attention_scored.contains(&family) {
                    let counts = |h: &[Vec<u32>]| h.iter().map(Vec::len).collect::<Vec<_>>();
                    assert_eq!(counts(held), counts(held_alone), "{name} layer {l}");
                } else {
                    assert_eq!(held, held_alone, "{name} layer {l}");
                }
                // TurboQuant leaves the boundary layers in f16 (of three, the first and the last)
                let want = if code.codes_layer(l, composed.len()) {
                    bytes_alone - rows * 2 * d * 2 + rows * coder.token_bytes(d) + coder.layer_bytes()
                } else {
                    *bytes_alone
                };
                assert_eq!(*bytes, want, "{name} layer {l}");
            }
        }
    }
}

#[test]
fn what_does_not_compose_is_refused_with_the_reason() {
    for (name, why) in [
        ("snapkv-4x+kivi-2bit", "does not code one token's row"),
        ("snapkv-4x+fp16", "does not code one token's row"),
        ("q4_0+snapkv-4x", "not an evicting or one-shot"),
        ("quest-4x+q4_0", "not an evicting or one-shot"),
        ("lingua-4x+q8_0", "not an evicting or one-shot"),
        ("snapkv-4x+h2o-4x", "not a quantizer"),
        ("snapkv-4x+q4_0+q8_0", "unknown method \"q4_0+q8_0\""),
        ("snapkv-4x+nope", "unknown method \"nope\""),
        ("snapkv-4x+", "a method on each side"),
        ("+q4_0", "a method on each side"),
        ("snapkv-4x+h2o-+4x", "unknown method \"h2o-+4x\""),
    ] {
        let error = by_name(name).err().unwrap_or_else(|| panic!("{name} composed")).to_string();
        assert!(error.contains(why), "{name}: {error}");
    }
}

#[test]
fn a_quantizer_that_cannot_code_the_heads_says_so_before_any_work() {
    for (name, why) in [
        ("turboquant-4bit", "power-of-two head"),
        ("snapkv-4x+q4_0", "whole blocks of 32"),
        ("snapkv-4x+q4_0-rot", "whole blocks of 32"),
    ] {
        let shape = Heads { heads: 2, kv_heads: 1, head_dim: 80 };
        let made = std::panic::catch_unwind(|| KvCache::new(by_name(name).unwrap(), shape, 2, 10_000.0));
        let message = made.err().and_then(|e| e.downcast_ref::<String>().cloned()).unwrap_or_default();
        assert!(message.contains("cannot run on this model's heads") && message.contains(why), "{name}: {message:?}");
    }
    let shape = Heads { heads: 2, kv_heads: 1, head_dim: 96 };
    assert!(by_name("snapkv-4x+q4_0-rot").unwrap().supports(shape).is_err(), "96 is blocks, not a power of two");
    assert!(by_name("snapkv-4x+q4_0").unwrap().supports(shape).is_ok());
}
