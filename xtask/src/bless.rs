//! `cargo xtask bless`: accept the pending golden snapshots (`*.snap.new`) that failing trials
//! left under `golden/trials/<tier>/` (and its models' folders, `gemma3-270m/`), and that `tests/probes.rs` left under
//! `golden/probes/<tier>/` (one table per task), after listing them. This is the reviewed act
//! that changes golden results; CI never does it.

use anyhow::Context;
use kvbench::bench::golden;
use kvbench::model::pinned::Pinned;

/// Arguments.
#[derive(clap::Args)]
pub struct Args {
    /// Tier (`default` or `full`).
    #[arg(long, default_value = "default")]
    tier: String,
    /// Only list what would be accepted.
    #[arg(long)]
    list: bool,
    /// The filter is a whole trial name (`snapkv-4x::needle` is SmolLM2's alone, not also
    /// Gemma's `gemma3-270m/snapkv-4x::needle`), as the bench's `--exact`.
    #[arg(long, requires = "filter")]
    exact: bool,
    /// Only the trials whose name contains this (as the bench's name filter: `multi-doc-qa`,
    /// `h2o-4x::`, `gemma3-270m/`), so that one finished task can be accepted while another is
    /// still running.
    /// Probe tables are named by task alone, so only a task name (`needle`) matches them.
    filter: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::project_root();
    let dir = root.join("golden/trials").join(&args.tier);
    let probes = root.join("golden/probes").join(&args.tier);
    let mut folders = vec![(String::new(), dir.clone()), (String::new(), probes.clone())];
    folders.extend(Pinned::ALL.iter().filter_map(|m| Some((m.trial_prefix(), dir.join(m.subdir()?)))));
    let mut pending = Vec::new();
    for (prefix, folder) in &folders {
        let Ok(listing) = std::fs::read_dir(folder) else {
            if *folder == dir {
                anyhow::bail!("no golden snapshots in {}", dir.display());
            }
            continue;
        };
        pending.extend(
            listing
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "new"))
                .filter(|p| args.filter.as_deref().is_none_or(|f| matches(prefix, p, f, args.exact))),
        );
    }
    pending.sort();
    if pending.is_empty() {
        let only = args.filter.as_deref().map(|f| format!(" for trials matching {f:?}")).unwrap_or_default();
        eprintln!("nothing to bless in {} or {}{only}", dir.display(), probes.display());
        return Ok(());
    }
    for new in &pending {
        let target = new.with_extension("");
        let status = if target.exists() { "changed" } else { "new" };
        let shown = target.strip_prefix(&root).unwrap_or(&target);
        eprintln!("{status:>8}  {}", shown.display());
        if !args.list {
            std::fs::rename(new, &target).with_context(|| format!("accepting {}", new.display()))?;
        }
    }
    eprintln!("{} {} snapshot(s)", if args.list { "pending:" } else { "accepted" }, pending.len());
    Ok(())
}

/// Whether a pending snapshot's trial name contains `filter`: snapshot files are named by
/// [`golden::file_name`], which maps `::` to `__`, so the filter is mapped the same way.
/// `prefix` is the model's part of the trial name (`gemma3-270m/`; none for the first model);
/// `exact`: the filter is the whole name.
fn matches(prefix: &str, pending: &std::path::Path, filter: &str, exact: bool) -> bool {
    pending.file_name().is_some_and(|f| {
        let name = format!("{prefix}{}", f.to_string_lossy());
        let wanted = golden::file_name(filter);
        if exact { name.strip_suffix(".snap.new") == Some(wanted.as_str()) } else { name.contains(&wanted) }
    })
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn pending_snapshots_are_named_by_trial() {
        let p = std::path::Path::new("golden/trials/full/h2o-4x__multi-doc-qa.snap.new");
        assert!(matches("", p, "h2o-4x::multi-doc-qa", false));
        assert!(matches("", p, "h2o-4x::", false) && !matches("", p, "::code", false));
        // a second model's, by its prefix
        let g = std::path::Path::new("golden/trials/full/gemma3-270m/h2o-4x__code.snap.new");
        let gemma = "gemma3-270m/";
        assert!(matches(gemma, g, "gemma3-270m/h2o-4x::code", false) && matches(gemma, g, gemma, false));
        assert!(!matches("", p, gemma, false));
        // a whole name is one model's trial only
        assert!(matches(gemma, g, "h2o-4x::code", false) && !matches(gemma, g, "h2o-4x::code", true));
        assert!(matches(gemma, g, "gemma3-270m/h2o-4x::code", true));
        assert!(matches("", p, "h2o-4x::multi-doc-qa", true) && !matches("", p, "h2o-4x::", true));
    }
}
