//! [`AssetError`]: everything that can go wrong locating, fetching, verifying or reading a pinned
//! asset. Each message names the file, the asset and its package, and what to do.

use std::io;
use std::path::{Path, PathBuf};

/// Errors while locating, fetching, verifying or reading an asset of `models/manifest.json`.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The manifest does not name this asset.
    #[error("no asset named {0:?} in models/manifest.json")]
    Unknown(String),
    /// The asset does not list this member.
    #[error("{member:?} is not a pinned member of asset {asset} in models/manifest.json")]
    NotPinned {
        /// The asset.
        asset: String,
        /// The path asked for.
        member: String,
    },
    /// Filesystem failure at a path.
    #[error("i/o error at {path}")]
    Io {
        /// Where it failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A package client or unpacker (`python3 -m pip`, `apt-get`, `tar`, `dpkg-deb`) could not be
    /// started.
    #[error("cannot run `{tool}` to fetch {spec} ({cause}); {hint}")]
    ToolMissing {
        /// The program.
        tool: String,
        /// What was being fetched (`package==version`).
        spec: String,
        /// What to install, or how to supply the file by hand.
        hint: String,
        /// Why it did not start (in the message, not chained, so that it is printed once).
        cause: io::Error,
    },
    /// A package client or unpacker ran and failed (no registry, unknown version, ...).
    #[error("`{command}` failed; {hint}\n{detail}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// What to check, or how to supply the file by hand.
        hint: String,
        /// Exit status and the tail of stderr.
        detail: String,
    },
    /// An archive (or a folder) lacks a pinned member.
    #[error("{archive} has no member {member} ({asset}); check its pin in models/manifest.json")]
    MissingMember {
        /// The asset and its package ([`super::Asset::what`]).
        asset: String,
        /// The archive or folder.
        archive: PathBuf,
        /// The member.
        member: String,
    },
    /// A wheel could not be read as a zip file.
    #[error("cannot read {path} ({spec}) as a zip archive: {message}")]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// `package==version`.
        spec: String,
        /// zip's message.
        message: String,
    },
    /// A file's (or a downloaded archive's) hash differs from its pin.
    #[error("{path} has sha256 {found}, expected {expected} ({asset}, pinned in models/manifest.json); {hint}")]
    HashMismatch {
        /// The asset and its package ([`super::Asset::what`]).
        asset: String,
        /// File checked.
        path: PathBuf,
        /// Pinned hash.
        expected: String,
        /// Actual hash (or `<size N>` when the size is already wrong).
        found: String,
        /// What to do.
        hint: String,
    },
    /// A data file does not have the expected shape.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Maps an [`io::Error`] at `path` to [`AssetError::Io`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AssetError + '_ {
    move |source| AssetError::Io { path: path.to_path_buf(), source }
}
