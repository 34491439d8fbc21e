//! The command line's subcommands, one file each, beside what the prompt-taking ones share.

pub mod compare;
pub mod fidelity;
pub mod generate;
pub mod model;
pub mod prompt;
pub mod replay;
pub mod task;
