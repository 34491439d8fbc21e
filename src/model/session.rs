//! Load the model into ONNX Runtime with kvbench's attention operator registered.
//!
//! [`Runtime::load`] fetches (or finds) the ONNX Runtime library and the GGUF, exports the ONNX
//! graph once per (GGUF hash, exporter version) into the cache, and opens a CPU session whose
//! `KvAttention` kernels share one [`CacheHandle`] with the caller. [`Runtime::forward`] is one
//! graph run over a chunk of new tokens.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use super::ModelConfig;
use super::export::{self, DOMAIN, EXPORTER_VERSION, GraphKind};
use super::gguf::{GgufError, GgufFile};
use super::head::Q8LinearOp;
use super::qlinear::Q4LinearOp;
use super::tokenizer::{Tokenizer, TokenizerError};
use crate::assets::{self, AssetError};
use crate::kv::op::KvAttentionOp;
use crate::kv::out_proj::OutProjection;
use crate::kv::{CacheHandle, KvCache, Method};

/// Errors while loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Fetching or verifying an asset failed.
    #[error(transparent)]
    Asset(#[from] AssetError),
    /// The GGUF could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tokenizer could not be built or used.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// ONNX Runtime could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Runtime {
        /// The library path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// ONNX Runtime failed to build or run the session.
    #[error("onnx runtime: {0}")]
    Ort(String),
    /// The request does not fit the model.
    #[error("{0}")]
    Invalid(String),
}

impl<T> From<ort::Error<T>> for ModelError {
    fn from(e: ort::Error<T>) -> Self {
        ModelError::Ort(e.to_string())
    }
}

/// Chunks of at most this many tokens run through the decode graph.
pub const DECODE_ROWS: usize = 4;

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A GGUF to use instead of the pinned SmolLM2 (not hash-checked).
    pub gguf: Option<PathBuf>,
    /// Threads for ONNX Runtime's matrix products and for the attention kernel.
    pub threads: usize,
    /// Threads of the pool that kvbench's own kernels (attention, decode products) share, if
    /// not `threads`: several runtimes in one process (the benchmark's test threads) each run
    /// ONNX Runtime on one thread but share this pool. The first runtime loaded sizes it.
    pub kernel_threads: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { gguf: None, threads: 2, kernel_threads: None }
    }
}

/// A loaded model: session, tokenizer, shape, and the cache its kernels write to.
pub struct Runtime {
    /// For chunks of more than [`DECODE_ROWS`] tokens.
    prefill: Session,
    /// For steps of at most [`DECODE_ROWS`] tokens.
    decode: Session,
    cache: CacheHandle,
    config: ModelConfig,
    tokenizer: Tokenizer,
    gguf_path: PathBuf,
    gguf_sha256: String,
    /// ONNX Runtime's intra-op threads.
    threads: usize,
    /// Per layer, its attention output projection (global layers; `None` for sliding ones, which
    /// no method compresses), for the methods that weigh values by it.
    out_proj: Vec<Option<Arc<OutProjection>>>,
}

/// Run `create` (a session creation) while no other thread of this process creates one.
/// Creating a session with custom operators adds their domain to a process-global table of ONNX
/// Runtime's without a lock: two at once can fail with "Trying to add a domain to
/// DomainToVersion map, but the domain is already exist" (seen when test threads loaded models
/// concurrently).
pub(crate) fn one_at_a_time<T>(create: impl FnOnce() -> T) -> T {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = CREATING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    create()
}

pub(crate) fn environment() -> Result<&'static ort::environment::Environment, ModelError> {
    static ENV: OnceLock<Result<ort::environment::Environment, (PathBuf, String)>> = OnceLock::new();
    let result = ENV.get_or_init(|| {
        let lib = assets::onnxruntime_library().map_err(|e| (PathBuf::new(), e.to_string()))?;
        let builder = ort::init_from(&lib).map_err(|e| (lib.clone(), e.to_string()))?;
        builder.with_name("kvbench").build().map_err(|e| (lib.clone(), e.to_string()))
    });
    match result {
        Ok(env) => Ok(env),
        Err((path, message)) if path.as_os_str().is_empty() => Err(ModelError::Ort(message.clone())),
        Err((path, message)) => Err(ModelError::Runtime { path: path.clone(), message: message.clone() }),
    }
}

impl Runtime {
    /// Load the model with the `full` method; see [`Runtime::reset`] to change it.
    pub fn load(options: &LoadOptions) -> Result<Self, ModelError> {
        let gguf_path = match &options.gguf {
            Some(path) => path.clone(),
            None => assets::smollm2_gguf()?,
        };
        let gguf = GgufFile::open(&gguf_path)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let sha = assets::sha256_file(gguf.path())?;
        let onnx_prefill = exported_model(&gguf, &sha, &config, GraphKind::Prefill)?;
        let onnx_decode = exported_model(&gguf, &sha, &config, GraphKind::Decode)?;
        let out_proj = out_projections(&gguf, &config)?;
        drop(gguf);
        let env = environment()?;

        let threads = within_machine(options.threads, "threads");
        // One global pool for the attention kernel; the first caller's size wins.
        let kernel_threads = within_machine(options.kernel_threads.unwrap_or(threads), "kernel threads");
        let _ = rayon::ThreadPoolBuilder::new().num_threads(kernel_threads).build_global();
        let shape = config.attention_shape();
        let cache = empty_cache(&config, &out_proj).into_handle();
        let open = |onnx: &Path, kind: GraphKind| -> Result<Session, ModelError> {
            let mut builder = Session::builder(env)?;
            if let Some(prefix) = crate::assets::settings::ort_profile() {
                // ONNX Runtime's per-node timings, written as JSON when the runtime is dropped.
                builder = builder.with_profiling(format!("{}-{}", prefix.to_string_lossy(), kind.name()))?;
            }
            let op = KvAttentionOp { cache: cache.clone(), shape, rope_base: config.rope_base };
            let domain = ort::operator::OperatorDomain::new(DOMAIN)?
                .add(op)?
                .add(Q8LinearOp)?
                .add(Q4LinearOp)?
                .add(super::embed::Q8GatherOp)?;
            let mut builder = builder
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(threads)?
                .with_intra_op_spinning(false)?
                .with_operators(domain)?;
            Ok(one_at_a_time(|| builder.commit_from_file(onnx))?)
        };
        let prefill = open(&onnx_prefill, GraphKind::Prefill)?;
        let decode = open(&onnx_decode, GraphKind::Decode)?;
        Ok(Self { prefill, decode, cache, config, tokenizer, gguf_path, gguf_sha256: sha, threads, out_proj })
    }

    /// Per layer, its attention output projection (`None` for a sliding-window layer).
    pub fn out_projections(&self) -> &[Option<Arc<OutProjection>>] {
        &self.out_proj
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The GGUF this runtime was built from.
    pub fn gguf_sha256(&self) -> &str {
        &self.gguf_sha256
    }

    /// ONNX Runtime's intra-op threads (its blocked products may split, and so round, by them).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Path of the GGUF the model was loaded from.
    pub fn gguf_path(&self) -> &Path {
        &self.gguf_path
    }

    /// The cache the kernels write to.
    pub fn cache(&self) -> &CacheHandle {
        &self.cache
    }

    /// Lock the running sequence's cache.
    pub fn lock_cache(&self) -> Result<std::sync::MutexGuard<'_, KvCache>, ModelError> {
        KvCache::lock(&self.cache).map_err(|e| ModelError::Invalid(e.to_string()))
    }

    /// Empty the cache and use `method` for the next sequence.
    pub fn reset(&mut self, method: Arc<dyn Method>) -> Result<(), ModelError> {
        self.lock_cache()?.reset(method);
        Ok(())
    }

    /// Take the running sequence's cache out, leaving an empty `full` one: to keep it as a lane
    /// of [`Self::forward_lanes`] while the runtime prefills the next sequence.
    pub fn take_cache(&mut self) -> Result<KvCache, ModelError> {
        let empty = empty_cache(&self.config, &self.out_proj);
        Ok(std::mem::replace(&mut *self.lock_cache()?, empty))
    }

    /// One decode step of several sequences at once: `ids[j]` at `positions[j]` is the next
    /// token of the sequence whose cache is `lanes[j]`. One run of the decode graph reads the
    /// weights once for all of them; every row's arithmetic is the one a step of that sequence
    /// alone runs (products and norms are per row, attention per lane), so the logits are the
    /// same bits (`tests/batched.rs`). Returns `[lanes.len(), vocab]`, row-major.
    pub fn forward_lanes(
        &mut self,
        lanes: &mut Vec<KvCache>,
        ids: &[u32],
        positions: &[i64],
    ) -> Result<Vec<f32>, ModelError> {
        if lanes.len() != ids.len() || lanes.is_empty() {
            return Err(ModelError::Invalid(format!("{} lanes for {} tokens", lanes.len(), ids.len())));
        }
        let rows: Vec<i64> = (0..ids.len() as i64).collect();
        self.lock_cache()?.swap_lanes(lanes);
        let logits = self.run(ids, positions, &rows, true);
        self.lock_cache()?.swap_lanes(lanes);
        for lane in lanes.iter_mut() {
            lane.note_step(1);
        }
        logits
    }

    /// Run the graph over `ids` at `positions`; return logits `[logit_rows.len(), vocab]`,
    /// row-major, for the chunk rows listed in `logit_rows`.
    pub fn forward(&mut self, ids: &[u32], positions: &[i64], logit_rows: &[i64]) -> Result<Vec<f32>, ModelError> {
        let logits = self.run(ids, positions, logit_rows, ids.len() <= DECODE_ROWS)?;
        self.lock_cache()?.note_step(ids.len());
        Ok(logits)
    }

    /// One graph run: the decode graph's or the prefill graph's.
    fn run(
        &mut self,
        ids: &[u32],
        positions: &[i64],
        logit_rows: &[i64],
        decode: bool,
    ) -> Result<Vec<f32>, ModelError> {
        if ids.is_empty() || ids.len() != positions.len() {
            return Err(ModelError::Invalid(format!("{} ids but {} positions", ids.len(), positions.len())));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.config.vocab) {
            return Err(ModelError::Invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab
            )));
        }
        if let Some(&bad) = logit_rows.iter().find(|&&r| r < 0 || r as usize >= ids.len()) {
            return Err(ModelError::Invalid(format!("logit row {bad} outside the chunk of {}", ids.len())));
        }
        let t = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let session = if decode { &mut self.decode } else { &mut self.prefill };
        let run = || -> Result<Vec<f32>, ModelError> {
            let outputs = session.run(ort::inputs![
                "input_ids" => Tensor::from_array(([t], ids))?,
                "positions" => Tensor::from_array(([t], positions.to_vec()))?,
                "logit_rows" => Tensor::from_array(([logit_rows.len()], logit_rows.to_vec()))?,
            ])?;
            let (_, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
            Ok(logits.to_vec())
        };
        // Run the graph on a rayon worker (the current one, or one of the global pool's), so
        // that kvbench's kernels, which split their work on rayon, start it on their own thread
        // instead of handing it to a sleeping pool and blocking: two thread wake-ups per kernel,
        // ~150 kernels per decode step (docs/PERF.md).
        rayon::scope(|_| run())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if crate::assets::settings::ort_profile().is_some() {
            for session in [&mut self.prefill, &mut self.decode] {
                if let Ok(file) = session.end_profiling() {
                    eprintln!("kvbench: ONNX Runtime profile written to {file}");
                }
            }
        }
    }
}

/// An empty cache of the `full` method for `config`'s model.
fn empty_cache(config: &ModelConfig, out_proj: &[Option<Arc<OutProjection>>]) -> KvCache {
    KvCache::new(Arc::new(crate::kv::methods::Full), config.attention_shape(), config.layers, config.rope_base)
        .with_rope_style(config.rope(config.layers - 1).1)
        .with_windows((0..config.layers).map(|l| config.window(l)).collect())
        .with_out_proj(out_proj.to_vec())
}

/// [`Runtime::out_projections`] of the model at `gguf`, without loading the runtime: for probe
/// replays ([`crate::eval::fidelity::Recorded::with_out_proj`]).
pub fn out_projections_of(gguf: &Path) -> Result<Vec<Option<Arc<OutProjection>>>, ModelError> {
    let gguf = GgufFile::open(gguf)?;
    out_projections(&gguf, &ModelConfig::from_gguf(&gguf)?)
}

/// Every global layer's attention output projection, dequantized (SmolLM2: 30 of 576 × 576, 40 MB;
/// Gemma 3: 3 of 640 × 1,024, 8 MB), for the methods that weigh values by it (CriticalKV).
fn out_projections(gguf: &GgufFile, config: &ModelConfig) -> Result<Vec<Option<Arc<OutProjection>>>, ModelError> {
    (0..config.layers)
        .map(|l| {
            if config.window(l).is_some() {
                return Ok(None);
            }
            let name = format!("blk.{l}.attn_output.weight");
            let weight = gguf.dequantize(&name)?;
            OutProjection::from_linear(&weight, config.hidden, config.heads, config.head_dim)
                .map(|p| Some(Arc::new(p)))
                .ok_or_else(|| {
                    ModelError::Invalid(format!("{name}: not [{}, {}]", config.hidden, config.heads * config.head_dim))
                })
        })
        .collect()
}

/// `asked` threads, at least one and at most the machine's parallelism: more only oversubscribe
/// the cores (`--threads 100000` had pushed the load to 1,400), so they are cut, saying so.
fn within_machine(asked: usize, what: &str) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if asked > cores {
        eprintln!("kvbench: {asked} {what} asked for, but this machine runs {cores} at once; using {cores}");
    }
    asked.clamp(1, cores)
}

/// Path of the `kind` ONNX export of `gguf` (whose sha256 is `sha`), written first if the cache
/// lacks it. The export's own sha256 is written beside it (`<export>.sha256`, after the export,
/// both atomically) and checked at every load: an export that does not match, or has no hash
/// (a write cut short), is made again, since a corrupt graph can run and answer wrongly.
fn exported_model(gguf: &GgufFile, sha: &str, config: &ModelConfig, kind: GraphKind) -> Result<PathBuf, ModelError> {
    let dir = assets::cache_dir().join("onnx");
    let stem = format!("{}-{}", &sha[..16], kind.name());
    let version = match config.arch {
        super::config::Architecture::Llama => format!("v{EXPORTER_VERSION}"),
        super::config::Architecture::Gemma3 => format!("gemma3-v{}", super::export_gemma3::VERSION),
    };
    let path = dir.join(format!("{stem}-exporter-{version}.onnx"));
    let recorded = hash_path(&path);
    if path.is_file() {
        match verified(&path, &recorded)? {
            true => return Ok(path),
            false => eprintln!(
                "kvbench: the cached ONNX export {} does not match its recorded sha256 (corrupt or cut short); \
                 exporting it again",
                path.display()
            ),
        }
    }
    // Exports by older exporter versions are dead weight (hundreds of MB): remove them.
    for old in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.starts_with(&stem) && (name.ends_with(".onnx") || name.ends_with(".onnx.sha256")) {
            let _ = std::fs::remove_file(old.path());
        }
    }
    eprintln!("kvbench: exporting {} to ONNX (once; cached in {})", gguf.path().display(), path.display());
    let bytes = match config.arch {
        super::config::Architecture::Llama => export::export(gguf, config, kind)?,
        super::config::Architecture::Gemma3 => super::export_gemma3::export(gguf, config, kind)?,
    };
    assets::write_atomic(&path, &bytes)?;
    assets::write_atomic(&recorded, assets::sha256_bytes(&bytes).as_bytes())?;
    Ok(path)
}

/// Where the sha256 of the export at `path` is kept.
fn hash_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Whether the file at `path` has the sha256 recorded in `recorded` (false if none is). The
/// ~0.4 GB of exports are hashed once per process: a process loading the model again (a test
/// binary's threads) trusts what it checked, as long as the file (inode, size, time) is unchanged.
fn verified(path: &Path, recorded: &Path) -> Result<bool, ModelError> {
    type Seen = (PathBuf, u64, u64, Option<std::time::SystemTime>);
    static CHECKED: std::sync::Mutex<Vec<Seen>> = std::sync::Mutex::new(Vec::new());
    let Ok(expected) = std::fs::read_to_string(recorded) else { return Ok(false) };
    let meta = std::fs::metadata(path).map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    let seen: Seen = (path.to_path_buf(), inode, meta.len(), meta.modified().ok());
    let checked = || CHECKED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if checked().contains(&seen) {
        return Ok(true);
    }
    let good = assets::sha256_file(path)? == expected.trim();
    if good {
        checked().push(seen);
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_is_trusted_only_with_its_recorded_hash() {
        let dir = std::env::temp_dir().join(format!("kvbench-export-hash-{}", std::process::id()));
        let path = dir.join("m-prefill-exporter-v1.onnx");
        assets::write_atomic(&path, b"graph bytes").unwrap();
        let recorded = hash_path(&path);
        assert_eq!(recorded, dir.join("m-prefill-exporter-v1.onnx.sha256"));
        assert!(!verified(&path, &recorded).unwrap(), "no recorded hash: an export cut short");
        assets::write_atomic(&recorded, assets::sha256_bytes(b"graph bytes").as_bytes()).unwrap();
        assert!(verified(&path, &recorded).unwrap());
        assets::write_atomic(&path, b"graph bytez").unwrap();
        assert!(!verified(&path, &recorded).unwrap(), "a changed byte");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn threads_stay_within_the_machine() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(within_machine(0, "threads"), 1);
        assert_eq!(within_machine(1, "threads"), 1);
        assert_eq!(within_machine(100_000, "threads"), cores);
    }
}
