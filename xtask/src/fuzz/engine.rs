//! The engine: a corpus (the seeds, and the inputs of `fuzz/corpus/<target>/` so that runs
//! resume), mutated inputs run under the oracles ([`super::guard`]), and guidance without
//! instrumentation: an input joins the corpus when it produces a new *outcome class* (what the
//! target made of it, or its error, with digits, quoted text and paths normalised away).

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::guard::{self, Ended, Limits};
use super::mutate;
use super::rng::Rng;
use super::targets::Target;

/// How often a run prints its progress.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Most outcome classes kept per run (past it, inputs still run but no longer join the corpus).
const MAX_CLASSES: usize = 4096;

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the mutations.
    pub seed: u64,
    /// Stop after this many executions.
    pub execs: Option<u64>,
    /// Stop after this long.
    pub time: Option<Duration>,
    /// The oracles' limits.
    pub limits: Limits,
    /// Longest input made.
    pub max_len: usize,
    /// Where the corpus is kept between runs (`None`: in memory only).
    pub corpus_dir: Option<PathBuf>,
    /// Where crash inputs go.
    pub artifacts_dir: PathBuf,
    /// Print a status line every few seconds.
    pub progress: bool,
    /// Print every new outcome class (`KVBENCH_FUZZ_CLASSES=1`).
    pub show_classes: bool,
}

/// One crash class of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Crash {
    /// The panic message (first line) and where.
    pub what: String,
    /// Its first input.
    pub artifact: PathBuf,
    /// Inputs that crashed so.
    pub hits: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Stats {
    /// The target.
    pub target: String,
    /// Inputs run.
    pub executions: u64,
    /// Seconds spent running them (seeding included).
    pub seconds: f64,
    /// Corpus size at the end.
    pub corpus: usize,
    /// Inputs that joined the corpus in this run (found, not seeds nor loaded).
    pub new_inputs: usize,
    /// Outcome classes seen.
    pub classes: usize,
    /// Largest peak allocation of one execution, bytes.
    pub peak_alloc: usize,
    /// Crash classes found.
    pub crashes: Vec<Crash>,
    /// Set when the run was stopped by a crash that cannot unwind (by [`guard`]).
    pub aborted: Option<String>,
}

impl Stats {
    /// Inputs a second.
    pub fn rate(&self) -> f64 {
        self.executions as f64 / self.seconds.max(1e-9)
    }
}

/// `message` about `input` as an outcome class: digits, quoted text, and words that are text
/// of the input (found in it as a word; with paths, non-ASCII or control characters in them;
/// long ones; runs of one character) collapsed, and repeated words once; at most 240 characters.
pub fn normalize(message: &str, input: &[u8]) -> String {
    let mut unquoted = String::with_capacity(message.len().min(256));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            let mut escaped = false;
            for c in chars.by_ref() {
                if c == '"' && !escaped {
                    break;
                }
                escaped = c == '\\' && !escaped;
            }
            unquoted.push_str("\"_\"");
        } else {
            unquoted.push(c);
        }
        if unquoted.len() > 8192 {
            break;
        }
    }
    let unquoted = sample_ids(&unquoted);
    let mut out = String::with_capacity(160);
    let mut last_word = String::new();
    for word in unquoted.split([' ', '\n']) {
        let mut w = String::with_capacity(word.len());
        let alnum = || word.chars().filter(char::is_ascii_alphanumeric);
        // a number, or a list element of hex digits (`[d4, 0f, ff]`)
        let hex = alnum().all(|c| c.is_ascii_hexdigit())
            && (alnum().any(|c| c.is_ascii_digit()) || (alnum().next().is_some() && word.contains(['[', ']', ','])));
        let punctuation = |c: char| "\"'`()[]{},:;.!?".contains(c);
        let core = word.trim_matches(punctuation);
        // (plain lowercase words are not looked for: an input's free text, an answer, holds the
        // words of messages too)
        let from_input = core.len() >= 2
            && core.chars().any(|c| c.is_ascii_alphabetic())
            && !core.chars().all(|c| c.is_ascii_lowercase())
            && in_input(input, core);
        // JSON the message quotes (a value of the input)
        let json = word.contains(['{', '}'])
            || word.contains("[[")
            || word.contains("[\"")
            || (word.contains(['[', ']']) && word.trim_end_matches([',', ':', ';', '.']).contains(','));
        if json || word.contains(['/', '\\']) || !word.bytes().all(|b| b.is_ascii_graphic()) || word.len() > 20 {
            w.push('*');
        } else if from_input {
            let start = word.find(core).unwrap_or(0);
            w.push_str(&word[..start]);
            w.push('*');
            w.push_str(&word[start + core.len()..]);
        } else if hex {
            // a number, maybe in hex: its digits as one `#`, its punctuation kept
            for c in word.chars() {
                if !c.is_ascii_alphanumeric() {
                    w.push(c);
                } else if !w.ends_with('#') {
                    w.push('#');
                }
            }
        } else {
            let (mut prev, mut run) = (None, 0);
            for c in word.chars() {
                if c.is_ascii_digit() && prev == Some('#') {
                    continue;
                }
                let c = if c.is_ascii_digit() { '#' } else { c };
                run = if Some(c) == prev { run + 1 } else { 0 };
                prev = Some(c);
                match run {
                    0..=2 => w.push(c),
                    3 => w.push('…'),
                    _ => {}
                }
            }
        }
        if w.contains('…') {
            // a run of one character: text from the input
            w = "*".into();
        }
        if w == last_word && !w.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&w);
        last_word = w;
        if out.len() >= 240 {
            break;
        }
    }
    out
}

/// `message` with the sample ids of trace errors (`sample <id>: …`, `sample <id> runs past …`),
/// which are text of the input, as `*`.
fn sample_ids(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("sample ") {
        out.push_str(&rest[..at + 7]);
        rest = &rest[at + 7..];
        let end = [rest.find(": "), rest.find(" runs past")].into_iter().flatten().min().unwrap_or(rest.len());
        out.push('*');
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `word` is in `input` as a whole word (not inside a longer one: `sample` is not in
/// `"samples"`).
fn in_input(input: &[u8], word: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    memchr::memmem::find_iter(input, word.as_bytes())
        .any(|at| !alnum(at.checked_sub(1).and_then(|i| input.get(i))) && !alnum(input.get(at + word.len())))
}

fn class_hash(kind: &str, text: &str, input: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    kind.hash(&mut h);
    normalize(text, input).hash(&mut h);
    h.finish()
}

/// The name an input is kept under in the corpus folder: its sha256, 32 hex digits.
fn corpus_name(input: &[u8]) -> String {
    kvbench::assets::sha256_bytes(input)[..32].to_string()
}

/// Where an input comes from: seeds are always kept; inputs loaded from the corpus folder and
/// found by mutation only when they show a new outcome class (which keeps a corpus that grew over
/// many runs small in memory).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Origin {
    Seed,
    Loaded,
    Found,
}

struct Run<'a> {
    target: &'a Target,
    config: &'a Config,
    rng: Rng,
    corpus: Vec<Vec<u8>>,
    known: HashSet<String>,
    classes: HashSet<u64>,
    crashes: HashMap<u64, Crash>,
    stats: Stats,
}

/// Fuzz `target` from `seeds` (and the corpus folder's inputs) as `config` says.
pub fn run(target: &Target, seeds: Vec<Vec<u8>>, config: &Config) -> anyhow::Result<Stats> {
    let _oracles = guard::exclusive();
    guard::set_rss_base(&config.limits);
    let start = Instant::now();
    for counter in [&guard::CORPUS, &guard::CLASSES, &guard::MAX_PEAK] {
        counter.store(0, Relaxed);
    }
    guard::EXECS.store(0, Relaxed);
    let mut run = Run {
        target,
        config,
        rng: Rng::new(config.seed),
        corpus: Vec::new(),
        known: HashSet::new(),
        classes: HashSet::new(),
        crashes: HashMap::new(),
        stats: Stats { target: target.name.to_string(), ..Stats::default() },
    };
    if let Some(dir) = &config.corpus_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for input in seeds {
        run.execute(input, Origin::Seed)?;
    }
    let mut loaded = Vec::new();
    if let Some(dir) = &config.corpus_dir {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if bytes.len() <= config.max_len {
                loaded.push(bytes);
            }
        }
    }
    for input in loaded {
        run.execute(input, Origin::Loaded)?;
    }
    if run.corpus.is_empty() {
        run.corpus.push(Vec::new());
    }
    let deadline = config.time.map(|t| start + t);
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut child = Vec::new();
    loop {
        if config.execs.is_some_and(|n| run.stats.executions >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let parent = run.rng.below(run.corpus.len());
        let other = run.rng.below(run.corpus.len());
        child.clear();
        let structured = match target.mutate {
            Some(m) if run.rng.chance(1, 2) => m(&run.corpus[parent], &mut run.rng, &run.corpus[other], config.max_len),
            _ => None,
        };
        match structured {
            Some(s) => child = s,
            None => {
                child.extend_from_slice(&run.corpus[parent]);
                let Run { rng, corpus, .. } = &mut run;
                mutate::bytes(&mut child, rng, &corpus[other], config.max_len);
            }
        }
        child.truncate(config.max_len);
        run.execute(std::mem::take(&mut child), Origin::Found)?;
        if config.progress && Instant::now() >= next_status {
            next_status += STATUS_EVERY;
            let s = &run.stats;
            eprintln!(
                "  {}: {} executions ({:.0}/s), corpus {}, {} classes, {} crashes; {} live",
                target.name,
                s.executions,
                s.executions as f64 / start.elapsed().as_secs_f64(),
                run.corpus.len(),
                run.classes.len(),
                run.crashes.len(),
                guard::mib(guard::live())
            );
        }
    }
    let mut stats = run.stats;
    stats.seconds = start.elapsed().as_secs_f64();
    stats.corpus = run.corpus.len();
    stats.classes = run.classes.len();
    stats.crashes = run.crashes.into_values().collect();
    stats.crashes.sort_by(|a, b| a.what.cmp(&b.what));
    Ok(stats)
}

impl Run<'_> {
    /// Run one input; keep it if it is a seed or shows a new outcome class.
    fn execute(&mut self, input: Vec<u8>, origin: Origin) -> anyhow::Result<()> {
        let t = self.target;
        let (ended, peak) =
            guard::execute(t.name, Some(&self.config.artifacts_dir), &self.config.limits, &input, t.run);
        self.stats.executions += 1;
        guard::EXECS.fetch_add(1, Relaxed);
        if peak > self.stats.peak_alloc {
            self.stats.peak_alloc = peak;
            guard::MAX_PEAK.store(peak, Relaxed);
        }
        let class = match &ended {
            Ended::Returned(Ok(what)) => class_hash("ok", what, &input),
            Ended::Returned(Err(e)) => class_hash("error", e, &input),
            Ended::Panicked(message) => return self.crashed(&input, message),
        };
        let new = self.classes.len() < MAX_CLASSES && self.classes.insert(class);
        guard::CLASSES.store(self.classes.len(), Relaxed);
        if new && self.config.show_classes {
            let text = match &ended {
                Ended::Returned(Ok(what)) => format!("ok: {}", normalize(what, &input)),
                Ended::Returned(Err(e)) => format!("error: {}", normalize(e, &input)),
                Ended::Panicked(_) => unreachable!(),
            };
            eprintln!("  {}: new outcome: {text}", t.name);
        }
        if origin == Origin::Seed || new {
            self.keep(input, origin == Origin::Found)?;
        }
        Ok(())
    }

    fn keep(&mut self, input: Vec<u8>, found: bool) -> anyhow::Result<()> {
        let name = corpus_name(&input);
        if !self.known.insert(name.clone()) {
            return Ok(());
        }
        if let Some(dir) = &self.config.corpus_dir {
            let path = dir.join(&name);
            if !path.exists() {
                std::fs::write(&path, &input).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        self.stats.new_inputs += usize::from(found);
        self.corpus.push(input);
        guard::CORPUS.store(self.corpus.len(), Relaxed);
        Ok(())
    }

    /// A panic: a new crash class is saved (with its backtrace, from running it again) and
    /// reported; a known one counted.
    fn crashed(&mut self, input: &[u8], message: &str) -> anyhow::Result<()> {
        let first_line = message.lines().next().unwrap_or_default();
        let class = class_hash("panic", first_line, input);
        if let Some(c) = self.crashes.get_mut(&class) {
            c.hits += 1;
            return Ok(());
        }
        guard::record_backtraces(true);
        let (again, _) = guard::execute(self.target.name, None, &self.config.limits, input, self.target.run);
        guard::record_backtraces(false);
        let report = match again {
            Ended::Panicked(full) => full,
            Ended::Returned(_) => format!("{message}\n(it did not panic when run again)"),
        };
        let artifact = guard::save_artifact(&self.config.artifacts_dir, input, &report)
            .with_context(|| format!("saving a crash input in {}", self.config.artifacts_dir.display()))?;
        eprintln!("\nfuzz: {}: crash (panic): {}", self.target.name, report.trim_end());
        eprintln!(
            "fuzz: input saved to {}; reproduce with `cargo xtask fuzz --target {} --reproduce {}`\n",
            artifact.display(),
            self.target.name,
            artifact.display()
        );
        self.crashes.insert(class, Crash { what: first_line.to_string(), artifact, hits: 1 });
        Ok(())
    }
}

/// Run `input` once under the oracles (backtraces on), with nothing saved.
pub fn reproduce(target: &Target, input: &[u8], limits: &Limits) -> Ended<super::targets::Outcome> {
    let _oracles = guard::exclusive();
    guard::set_rss_base(limits);
    guard::record_backtraces(true);
    let (ended, _) = guard::execute(target.name, None, limits, input, target.run);
    guard::record_backtraces(false);
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize_(message: &str) -> String {
        normalize(message, b"")
    }

    #[test]
    fn classes_forget_numbers_quotes_paths_and_repeats() {
        let a = normalize_("trace fuzz.trace.zst: sample needle/s0/n256 runs past byte 1234 \"é\"");
        let b = normalize_("trace fuzz.trace.zst: sample x/y runs past byte 9 \"abc\\\"def\"");
        assert_eq!(a, b);
        assert_eq!(a, "trace fuzz.trace.zst: sample * runs past byte # \"_\"");
        assert_eq!(normalize_("AAAAAAAAAA and [1, 2, 3, 4, 5]"), normalize_("AAAA and [1, 2, 3]"));
        assert_eq!(normalize_("sample AAAAIAAAAA: x"), normalize_("sample 0123456789abcdef0123456789abcdef: x"));
        assert_ne!(normalize_("[1]"), normalize_("[1, 2]"));
        assert_eq!(normalize_("bad magic [d4, 0f, ff, 47]"), "bad magic [#, #, #]");
        assert_eq!(normalize_("bad magic [ab, ff, ff, cd]"), "bad magic [#, #, #]");
        assert_eq!(normalize_("it must be so"), "it must be so");
        // text of the input goes, unless it is a plain word
        let input = br#"{"id": "sing|e-X", "other": "Qq", "samples": "txac"}"#;
        assert_eq!(normalize("sample sing|e-X: bad Qq; take x: bad", input), "sample *: bad *; take x: bad");
        assert_eq!(normalize("sample t xac: bad", input), "sample *: bad");
        assert_eq!(normalize("sample a\u{1}b\nc runs past the end", input), "sample * runs past the end");
        assert_eq!(normalize("probe of a\u{1}b", input), "probe of *");
        assert_eq!(normalize_("mode [{\"a\":[1]}] but {\"b\":2}:"), "mode * but *");
        assert_eq!(normalize_("mode [-1.5,2,\"x\"] but [1, 2]:"), "mode * but [#, #]:");
        assert!(normalize_(&"x y ".repeat(1000)).len() <= 250);
    }
}
