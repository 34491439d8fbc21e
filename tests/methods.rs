//! The methods through the model, on the 3,712-token needle prompt (`golden/prompts/08`):
//! the full cache and `q8_0` retrieve the hidden number, the recording store that traces' attention
//! probes come from answers exactly as the full cache does, and a method that acts after prefill
//! gives the same answer and bytes whether its prefill is recomputed, shared, or read back from
//! the prefill cache on disk.

use std::sync::Arc;

use kvbench::bench::prefill_disk::{DiskPrefills, PrefillInputs};
use kvbench::kv::methods;
use kvbench::kv::methods::full::Recording;
use kvbench::model::generate::{GenerateOptions, Prompt, generate_prompt, generate_shared, shared_prefill};
use kvbench::model::session::{LoadOptions, Runtime};

const NEEDLE: &str = "4827163";

fn needle_prompt(rt: &Runtime) -> Prompt {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/prompts/08-long-needle.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Prompt::whole(&rt.tokenizer().encode(&text).unwrap())
}

fn answer(rt: &Runtime, ids: &[u32]) -> String {
    rt.tokenizer().decode(ids).unwrap()
}

#[test]
fn full_and_q8_0_retrieve_the_needle_and_shared_prefill_changes_nothing() {
    let mut rt = Runtime::load(&LoadOptions::default()).unwrap_or_else(|e| panic!("cannot load the model: {e}"));
    let prompt = needle_prompt(&rt);
    assert!(prompt.ids.len() > 3000);
    let options = GenerateOptions { max_new_tokens: 8, ..GenerateOptions::default() };
    let with_top_k = GenerateOptions { top_k: 8, ..options };
    let mut full = None;
    for name in ["full", "q8_0"] {
        let method = methods::by_name(name).unwrap();
        rt.reset(method.clone()).unwrap();
        let g = generate_prompt(&mut rt, &prompt, with_top_k).unwrap();
        let text = answer(&rt, &g.output_ids);
        assert!(text.contains(NEEDLE), "{name} answered {text:?}");
        if name == "full" {
            full = Some(g.clone());
        }
        if name == "q8_0" {
            let nominal = method.nominal_ratio().unwrap();
            let measured = g.measured_ratio();
            assert!((measured - nominal).abs() / nominal < 0.05, "q8_0 holds {measured:.3}×, nominal {nominal:.3}×");
        }
    }

    // `cargo xtask record` runs probed samples on a recording store (every query kept, through
    // 8 prefill chunks here): their reference answers must be the full cache's, log-probs included
    rt.reset(Arc::new(Recording)).unwrap();
    let recorded = generate_prompt(&mut rt, &prompt, with_top_k).unwrap();
    let full = full.expect("full ran");
    assert_eq!((&recorded.output_ids, &recorded.top_logprobs), (&full.output_ids, &full.top_logprobs));

    let kivi = methods::by_name("kivi-4bit").unwrap();
    rt.reset(kivi.clone()).unwrap();
    let alone = generate_prompt(&mut rt, &prompt, options).unwrap();
    let shared = shared_prefill(&mut rt, &prompt, options).unwrap();
    rt.reset(kivi).unwrap();
    let replayed = generate_shared(&mut rt, &prompt, options, Some(&shared)).unwrap();
    assert_eq!(alone.output_ids, replayed.output_ids);
    assert_eq!(alone.cache.peak_bytes_after_prefill, replayed.cache.peak_bytes_after_prefill);
    assert!(replayed.reused_prefill && !alone.reused_prefill, "the shared prefill was not reused");

    // Through the prefill cache on disk: bit-exact, observations included (SnapKV reads the
    // accumulated mass and the last queries).
    let dir = std::env::temp_dir().join(format!("kvbench-prefill-test-{}", std::process::id()));
    let disk = DiskPrefills::new(dir.clone(), 1 << 30, "test build".into());
    let model = rt.gguf_sha256().to_string();
    let inputs = PrefillInputs::of(&model, &prompt, &options);
    assert!(disk.load(&inputs).is_none());
    disk.store(&inputs, &shared);
    // reading an entry marks its build's folder as in use, so that other builds' runs spare it
    let build = std::fs::read_dir(&dir).unwrap().flatten().next().unwrap().path();
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(5 * 3600);
    std::fs::File::open(&build).unwrap().set_modified(long_ago).unwrap();
    let loaded = disk.load(&inputs).expect("stored prefill");
    let used_at = build.metadata().unwrap().modified().unwrap();
    assert!(used_at > long_ago + std::time::Duration::from_secs(3600), "a load touches its build's folder");
    // a corrupted entry is a miss, and is deleted
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .flat_map(|build| std::fs::read_dir(build.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "prefill"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&entry, bytes).unwrap();
    assert!(disk.load(&inputs).is_none());
    assert!(!entry.exists());
    std::fs::remove_dir_all(&dir).unwrap();
    let snapkv = methods::by_name("snapkv-4x").unwrap();
    let mut outputs = Vec::new();
    for prefill in [&shared, &loaded] {
        rt.reset(snapkv.clone()).unwrap();
        let g = generate_shared(&mut rt, &prompt, options, Some(prefill)).unwrap();
        outputs.push((g.output_ids, g.cache.peak_bytes_after_prefill));
    }
    assert_eq!(outputs[0], outputs[1]);
}
