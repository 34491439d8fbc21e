//! Bad inputs, each a clear error and none trusted unchecked: one test per defect found by trying
//! bad inputs on 62ffea9 (docs/HARNESS.md, "Bad input"). Variants of traces and of the GGUF are
//! built here from the committed traces and the fetched model, never committed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;

use kvbench::bench::{PrefillCache, Tier, trial};
use kvbench::kv::methods;
use kvbench::model::ModelConfig;
use kvbench::model::generate::Mode;
use kvbench::model::gguf::{GgmlType, GgufFile, MetaValue, TensorInfo};
use kvbench::model::gguf_write;
use kvbench::model::pinned::Pinned;
use kvbench::model::session::{LoadOptions, Runtime};
use kvbench::tasks::Task;
use kvbench::trace::Trace;
use kvbench::trace::format::ModelId;

/// Counts each thread's live heap bytes and their peak, so that a test can measure what one call
/// allocates (a reader must not allocate by a length it has not checked).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System`; the bookkeeping only touches thread-locals
// without destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f`'s result and the most bytes it held at once on this thread beyond what was live before.
fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let out = f();
    (out, (PEAK.with(Cell::get) - before).max(0) as usize)
}

const MIB: usize = 1 << 20;

fn kvbench(args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvbench"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvbench-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn committed(tier: &str, task: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces").join(tier).join(format!("{task}.trace.zst"))
}

/// The default tier's needle trace, changed by `edit`, written into `dir`.
fn trace_variant(dir: &Path, edit: impl FnOnce(&mut Trace)) -> PathBuf {
    let mut trace = Trace::read(&committed("default", "needle"), None).unwrap();
    edit(&mut trace);
    let path = dir.join("needle.trace.zst");
    std::fs::write(&path, trace.to_bytes()).unwrap();
    path
}

fn prompt_file(dir: &Path) -> PathBuf {
    let path = dir.join("prompt.txt");
    std::fs::write(&path, "The capital of France is").unwrap();
    path
}

fn real_gguf() -> GgufFile {
    GgufFile::open(&kvbench::assets::smollm2_gguf().unwrap()).unwrap()
}

#[test]
fn every_committed_trace_still_reads() {
    for tier in [Tier::Default, Tier::Full] {
        for task in Task::ALL {
            let trace = Trace::read(&tier.trace_path(Pinned::Smollm2, task), None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((trace.header.task.as_str(), trace.header.tier.as_str()), (task.name(), tier.name()));
        }
    }
}

/// Defect 1: A corrupt cached ONNX export was trusted and answered "" with exit 0; now its recorded
/// sha256 catches it and it is exported again.
#[test]
fn a_corrupt_onnx_export_is_detected_and_rebuilt() {
    let dir = temp("onnx");
    let cache = dir.join("cache");
    let gguf = kvbench::assets::smollm2_gguf().unwrap();
    let ort = kvbench::assets::onnxruntime_library().unwrap();
    let env =
        [("KVBENCH_CACHE", cache.as_path()), ("KVBENCH_GGUF", gguf.as_path()), ("KVBENCH_ORT_LIB", ort.as_path())];
    let prompt = prompt_file(&dir);
    let args = ["generate", "--prompt-file", prompt.to_str().unwrap(), "--max-new-tokens", "3"];
    let (ok, first, err) = kvbench(&args, &env);
    assert!(ok && first.contains("Paris"), "{first} {err}");
    let exports: Vec<PathBuf> = std::fs::read_dir(cache.join("onnx"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    assert_eq!(exports.len(), 2, "a prefill and a decode graph: {exports:?}");
    for export in &exports {
        // 64 KB flipped in the middle of the file, as in the report
        let mut bytes = std::fs::read(export).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 65_536].iter_mut().for_each(|b| *b ^= 0x5a);
        std::fs::write(export, bytes).unwrap();
    }
    let (ok, again, err) = kvbench(&args, &env);
    assert!(ok && again == first, "{again:?} vs {first:?}: {err}");
    assert_eq!(err.matches("does not match its recorded sha256").count(), 2, "{err}");
    // an export whose hash was never written (a write cut short) is not trusted either
    std::fs::remove_file(PathBuf::from(format!("{}.sha256", exports[0].display()))).unwrap();
    let (ok, _, err) = kvbench(&args, &env);
    assert!(ok && err.contains("does not match its recorded sha256"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Defect 2: `--max-new-tokens 18446744073709551615` overflowed and panicked ("capacity overflow").
#[test]
fn a_huge_max_new_tokens_is_refused() {
    let dir = temp("max-new");
    let prompt = prompt_file(&dir);
    let (ok, _, err) = kvbench(
        &["generate", "--prompt-file", prompt.to_str().unwrap(), "--max-new-tokens", &u64::MAX.to_string()],
        &[],
    );
    assert!(!ok && err.contains("new tokens exceeds the model's context of 8192"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // and a trace sample asking for that many is refused when read
    let path = trace_variant(&dir, |t| t.samples[0].meta.max_new_tokens = usize::MAX);
    let e = Trace::read(&path, None).unwrap_err().to_string();
    assert!(e.contains("max_new_tokens 18446744073709551615 is over"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Defect 3: `fidelity` panicked on a chunk of 0 ("step != 0") and aborted on a huge one (2.3 PB).
#[test]
fn a_zero_or_huge_chunk_is_refused() {
    let dir = temp("chunk");
    let prompt = prompt_file(&dir);
    for chunk in ["0", "2305843009213693952"] {
        let (ok, _, err) = kvbench(&["fidelity", "--prompt-file", prompt.to_str().unwrap(), "--chunk", chunk], &[]);
        assert!(!ok && err.contains("--chunk") && err.contains("1..=65536"), "{err}");
    }
    for chunk in [0, 1 << 61] {
        let path = trace_variant(&dir, |t| t.header.chunk = chunk);
        let (ok, _, err) = kvbench(&["fidelity", "--trace", path.to_str().unwrap(), "--methods", "full"], &[]);
        assert!(!ok && err.contains(&format!("prefill chunk {chunk} is not between 1 and 65536")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Defect 4: A non-ASCII model hash in a trace header panicked (a string sliced at byte 16).
#[test]
fn a_non_ascii_model_hash_is_an_error() {
    let dir = temp("hash");
    // 64 bytes whose byte 16 falls inside an "é" (bytes 15..17)
    let path = trace_variant(&dir, |t| t.header.model.gguf_sha256 = format!("x{}x", "é".repeat(31)));
    let other = ModelId { name: "loaded".into(), gguf_sha256: "ab".repeat(32) };
    let e = Trace::read(&path, Some(&other)).unwrap_err().to_string();
    assert!(e.contains("is not 64 hex digits"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Defect 5: A sample longer than the model's context was prefilled in full (483 s, 3.6 GB) before it
/// was refused; now every sample is checked first, and the error names it. Also: a trace that
/// keeps no log-probs (`top_k` 0) reports KL as not measured, not as 0.
#[test]
fn samples_are_checked_before_any_prefill_and_kl_without_log_probs_is_not_measured() {
    let mut rt = Runtime::load(&LoadOptions { threads: 1, ..LoadOptions::default() }).unwrap();
    let mut trace = Trace::read(&committed("default", "needle"), None).unwrap();
    trace.samples.truncate(2);
    let long = &mut trace.samples[1];
    long.prompt_ids = long.prompt_ids.iter().copied().cycle().take(20_000).collect();
    long.meta.prompt_len = 20_000;
    let id = long.meta.id.clone();
    let prefills = PrefillCache::default();
    let snapkv = methods::by_name("snapkv-4x").unwrap();
    let e = trial::run(&mut rt, &snapkv, &trace, Mode::QueryAware, &prefills).unwrap_err().to_string();
    assert!(e.contains(&format!("sample {id}")) && e.contains("exceeds the model's context of 8192"), "{e}");
    assert_eq!(prefills.counts().computed, 0, "refused before the first sample's prefill, not after its own");

    trace.samples.truncate(1);
    trace.header.top_k = 0;
    trace.samples[0].reference_topk.iter_mut().for_each(Vec::clear);
    let full = methods::by_name("full").unwrap();
    let result = trial::run(&mut rt, &full, &trace, Mode::QueryAware, &prefills).unwrap();
    assert_eq!((result.kl, result.samples[0].kl), (None, None));
    assert!(serde_json::to_string(&result).unwrap().contains("\"kl\":null"));
}

/// Defect 6: `--threads 100000` ran for over 300 s at a load of ~1,400; now it is cut to the machine.
#[test]
fn threads_beyond_the_machine_are_cut_to_it() {
    let dir = temp("threads");
    let prompt = prompt_file(&dir);
    let (ok, out, err) = kvbench(
        &["generate", "--prompt-file", prompt.to_str().unwrap(), "--max-new-tokens", "3", "--threads", "100000"],
        &[],
    );
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(ok && out.contains("Paris"), "{out} {err}");
    assert!(
        err.contains(&format!("100000 threads asked for, but this machine runs {cores} at once; using {cores}")),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The real model's file rewritten by `edit`, in `dir`.
fn gguf_variant(
    file: &GgufFile,
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut std::collections::BTreeMap<String, MetaValue>, &mut Vec<TensorInfo>),
    added: &[(&str, &[u8])],
) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, gguf_write::rewrite(file, edit, added)).unwrap();
    path
}

fn config_error(path: &Path) -> String {
    let file = GgufFile::open(path).unwrap();
    ModelConfig::from_gguf(&file).unwrap_err().to_string()
}

/// Defect 7: A `qwen2` file ran as llama, `block_count` 0 ran a model of no layers, a wrong
/// `head_count_kv` exported 430 MB before failing inside ONNX Runtime.
#[test]
fn a_gguf_of_another_architecture_or_shape_is_refused_before_export() {
    let dir = temp("gguf");
    let file = real_gguf();
    // qwen2's keys under its own name
    let qwen = gguf_variant(
        &file,
        &dir,
        "qwen2.gguf",
        |m, _| {
            let renamed: Vec<(String, MetaValue)> = std::mem::take(m)
                .into_iter()
                .map(|(k, v)| (k.strip_prefix("llama.").map_or(k.clone(), |rest| format!("qwen2.{rest}")), v))
                .collect();
            m.extend(renamed);
            m.insert("general.architecture".into(), MetaValue::Str("qwen2".into()));
        },
        &[],
    );
    let err = config_error(&qwen);
    assert!(err.contains("architecture \"qwen2\": kvbench runs \"llama\" (SmolLM2, Llama) and \"gemma3\""), "{err}");
    // qwen2's biases on a file that says llama
    let bias = vec![0u8; 576 * 4];
    let biased = gguf_variant(
        &file,
        &dir,
        "biased.gguf",
        |_, t| {
            t.push(TensorInfo {
                name: "blk.0.attn_q.bias".into(),
                dims: vec![576],
                ggml_type: GgmlType::F32,
                offset: 0,
            })
        },
        &[("blk.0.attn_q.bias", &bias)],
    );
    let e = config_error(&biased);
    assert!(e.contains("\"blk.0.attn_q.bias\"") && e.contains("would ignore it"), "{e}");
    let empty = gguf_variant(
        &file,
        &dir,
        "empty.gguf",
        |m, _| drop(m.insert("llama.block_count".into(), MetaValue::U32(0))),
        &[],
    );
    assert!(config_error(&empty).contains("llama.block_count is 0"));
    // a block_count the file cannot hold is refused before 9 · 2^32 expected tensors are listed
    // (found by `cargo xtask fuzz --target gguf`)
    let huge = gguf_variant(
        &file,
        &dir,
        "huge.gguf",
        |m, _| drop(m.insert("llama.block_count".into(), MetaValue::U32(u32::MAX))),
        &[],
    );
    let huge = GgufFile::open(&huge).unwrap();
    let (config, peak) = peak_bytes(|| ModelConfig::from_gguf(&huge));
    let e = config.unwrap_err().to_string();
    assert!(e.contains("block_count is 4294967295, but the file holds 272 tensors") && peak < MIB, "{e}: {peak}");
    let kv = gguf_variant(
        &file,
        &dir,
        "kv.gguf",
        |m, _| drop(m.insert("llama.attention.head_count_kv".into(), MetaValue::U32(1))),
        &[],
    );
    assert!(config_error(&kv).contains("\"blk.0.attn_k.weight\" is invalid: shape [576, 192]"));
    // through the command line: refused before anything is exported
    let cache = dir.join("cache");
    let prompt = prompt_file(&dir);
    let (ok, _, err) = kvbench(
        &["generate", "--prompt-file", prompt.to_str().unwrap(), "--gguf", kv.to_str().unwrap()],
        &[("KVBENCH_CACHE", &cache)],
    );
    assert!(!ok && err.contains("blk.0.attn_k.weight") && err.contains("imply [576, 64]"), "{err}");
    assert!(!cache.join("onnx").exists(), "nothing exported");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Defect 8: Readers allocated by lengths they had not checked: an 8.8 KB trace took 2.1 GB before it
/// was refused, a 50 MB GGUF of one byte array 1.6 GB, and a trace file was read whole before its
/// 52-byte preamble was checked (`/dev/zero` exhausted memory).
#[test]
fn readers_allocate_by_what_they_have_checked() {
    let dir = temp("amplify");
    // a trace whose checksum is valid but whose sample claims 90M answer steps
    let path = trace_variant(&dir, |t| {
        t.samples.truncate(1);
        (t.header.probe, t.samples[0].probe) = (None, None);
        t.samples[0].meta.reference_len = 90_000_000;
        t.samples[0].meta.max_new_tokens = 90_000_000;
    });
    assert!(std::fs::metadata(&path).unwrap().len() < 64 * 1024);
    let (read, peak) = peak_bytes(|| Trace::read(&path, None));
    assert!(read.is_err() && peak < 16 * MIB, "{} bytes held to refuse it", peak);
    // the same claim within max_new_tokens' bound: refused by the bytes left, before allocating
    let path = trace_variant(&dir, |t| {
        t.samples.truncate(1);
        (t.header.probe, t.samples[0].probe) = (None, None);
        t.samples[0].meta.reference_len = 1 << 20;
        t.samples[0].meta.max_new_tokens = 1 << 20;
    });
    let (read, peak) = peak_bytes(|| Trace::read(&path, None));
    assert!(read.unwrap_err().to_string().contains("runs past the end of the payload") && peak < 16 * MIB, "{peak}");
    // and with the answer's ids really there (4 MB of zeros, a 2 KB file), so that only the
    // check of the log-probs' length against the bytes left stops a 24 MB allocation
    let path = trace_variant(&dir, |t| {
        t.samples.truncate(1);
        (t.header.probe, t.samples[0].probe) = (None, None);
        t.samples[0].reference_ids = vec![0; 1 << 20];
        t.samples[0].meta.reference_len = 1 << 20;
        t.samples[0].meta.max_new_tokens = 1 << 20;
    });
    assert!(std::fs::metadata(&path).unwrap().len() < 16 * 1024);
    let (read, peak) = peak_bytes(|| Trace::read(&path, None));
    assert!(read.unwrap_err().to_string().contains("runs past the end of the payload") && peak < 16 * MIB, "{peak}");

    // a GGUF holding one array of 50M bytes
    let n = 50_000_000u64;
    let mut gguf = b"GGUF".to_vec();
    gguf.extend(3u32.to_le_bytes());
    gguf.extend(0u64.to_le_bytes());
    gguf.extend(1u64.to_le_bytes());
    gguf.extend(4u64.to_le_bytes());
    gguf.extend(b"junk");
    gguf.extend(9u32.to_le_bytes());
    gguf.extend(0u32.to_le_bytes());
    gguf.extend(n.to_le_bytes());
    gguf.resize(gguf.len() + n as usize, 7);
    let (parsed, peak) = peak_bytes(|| GgufFile::from_bytes(PathBuf::from("junk.gguf"), gguf));
    let e = parsed.unwrap_err().to_string();
    assert!(e.contains("more than 4194304 elements") && peak < 16 * MIB, "{e}: {peak} bytes");

    // a huge file is refused by its first bytes; a sparse GiB of zeros costs nothing to refuse
    let sparse = dir.join("zeros.trace.zst");
    std::fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
    let (read, peak) = peak_bytes(|| Trace::read(&sparse, None));
    assert!(read.unwrap_err().to_string().contains("bad magic") && peak < MIB, "{peak}");
    let (read, peak) = peak_bytes(|| Trace::read(Path::new("/dev/zero"), None));
    assert!(read.is_err() && peak < MIB, "{peak}");
    // and a valid preamble in front of a GiB of zeros
    let good = std::fs::read(committed("default", "needle")).unwrap();
    let mut file = std::fs::File::options().write(true).open(&sparse).unwrap();
    std::io::Write::write_all(&mut file, &good[..52]).unwrap();
    let (read, peak) = peak_bytes(|| Trace::read(&sparse, None));
    assert!(read.unwrap_err().to_string().contains("zstd") && peak < 16 * MIB, "{peak}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A trace in the wrong place is refused, naming both tasks; a directory given as a trace says
/// why once.
#[test]
fn a_trace_of_another_task_or_a_directory_is_a_clear_error() {
    let dir = temp("identity");
    let model = ModelId {
        name: "m".into(),
        gguf_sha256: Trace::read(&committed("default", "code"), None).unwrap().header.model.gguf_sha256,
    };
    let e = Tier::Default.trace_at(&committed("default", "code"), Task::Needle, &model).unwrap_err();
    assert!(e.contains("its header says task \"code\"") && e.contains("read as task \"needle\""), "{e}");
    let e = Tier::Full.trace_at(&committed("default", "needle"), Task::Needle, &model).unwrap_err();
    assert!(e.contains("of tier \"default\", but it is read as task \"needle\" of tier \"full\""), "{e}");
    assert!(Tier::Default.trace_at(&committed("default", "needle"), Task::Needle, &model).is_ok());
    let (ok, _, err) = kvbench(&["fidelity", "--trace", dir.to_str().unwrap()], &[]);
    assert!(!ok && err.matches("directory").count() == 1, "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
