//! `cargo xtask bless`: accept the pending golden snapshots (`*.snap.new`) that failing trials
//! left under `golden/trials/<tier>/`, after listing them. This is the reviewed act that changes
//! golden results; CI never does it.

use anyhow::Context;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Tier (`default` or `full`).
    #[arg(long, default_value = "default")]
    tier: String,
    /// Only list what would be accepted.
    #[arg(long)]
    list: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = crate::project_root().join("golden/trials").join(&args.tier);
    let mut pending: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("no golden snapshots in {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "new"))
        .collect();
    pending.sort();
    if pending.is_empty() {
        eprintln!("nothing to bless in {}", dir.display());
        return Ok(());
    }
    for new in &pending {
        let target = new.with_extension("");
        let status = if target.exists() { "changed" } else { "new" };
        eprintln!("{status:>8}  {}", target.file_name().unwrap_or_default().to_string_lossy());
        if !args.list {
            std::fs::rename(new, &target).with_context(|| format!("accepting {}", new.display()))?;
        }
    }
    eprintln!("{} {} snapshot(s)", if args.list { "pending:" } else { "accepted" }, pending.len());
    Ok(())
}
