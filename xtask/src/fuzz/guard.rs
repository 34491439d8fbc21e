//! The fuzzer's oracles, for crashes that no `Result` reports:
//! - **panics**, caught with [`std::panic::catch_unwind`], the default hook silenced while a
//!   target runs (the message and place are kept for the report);
//! - **big allocations**: the binary's [`Counting`] global allocator tracks the bytes live and,
//!   while an execution is armed, the peak above what was live when it started; a request that
//!   would take an execution over the limit is a crash;
//! - **hangs**: a watchdog thread treats an execution running over the timeout as a crash;
//! - **memory the allocator does not see** (C allocations, memory kept from one execution to the
//!   next): the watchdog also treats the process holding more than twice the limit resident, over
//!   what it held when the run started, as a crash (between executions, as a bug of the fuzzer).
//!
//! All but panics cannot unwind, so the input is saved before the process exits: every
//! execution first copies its input to [`CURRENT`], which the allocator and the watchdog can
//! reach. Only one execution is armed at a time in a process ([`exclusive`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

/// Exit status of a process stopped by a crash that cannot unwind (allocation over the limit,
/// timeout), after its input was saved.
pub const ABORT_EXIT: i32 = 86;

/// Counts live bytes for the allocation oracle; otherwise the system allocator.
pub struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BASE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Bytes an armed execution may hold above [`BASE`]; `usize::MAX` when none is armed.
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

// SAFETY: every method forwards to `System` with the same arguments; the counting around it
// neither unwinds nor touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            grow(new_size - old);
        }
        // SAFETY: as above.
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if out.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Relaxed);
        }
        out
    }
}

fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Relaxed).wrapping_add(n);
    let limit = LIMIT.load(Relaxed);
    if limit == usize::MAX || EXEMPT.get() {
        return;
    }
    PEAK.fetch_max(live, Relaxed);
    let used = live.saturating_sub(BASE.load(Relaxed));
    if used > limit && LIMIT.swap(usize::MAX, SeqCst) != usize::MAX {
        // disarmed first, so that saving the input may allocate
        abort_with(
            "allocation over the limit",
            &format!(
                "a request for {} would take this execution to {}, over the limit of {} (--max-alloc-mb)",
                mib(n),
                mib(used),
                mib(limit)
            ),
            true,
        );
    }
}

/// `n` bytes in MiB (in bytes under one), for messages.
pub fn mib(n: usize) -> String {
    if n < 1 << 20 { format!("{n} bytes") } else { format!("{:.1} MiB", n as f64 / f64::from(1 << 20)) }
}

/// What the running execution is, for the crash paths that cannot unwind.
struct Current {
    seq: u64,
    target: &'static str,
    artifacts: Option<PathBuf>,
    input: Vec<u8>,
}

static CURRENT: Mutex<Current> = Mutex::new(Current { seq: 0, target: "", artifacts: None, input: Vec::new() });
/// The running execution's start in ms since [`epoch`] plus one; 0 when none runs.
static STARTED: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU64 = AtomicU64::new(0);
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(10_000);
/// While set, panics on the fuzzing thread and on unnamed (pool) threads are recorded, not printed.
static CATCHING: AtomicBool = AtomicBool::new(false);
static BACKTRACES: AtomicBool = AtomicBool::new(false);
static PANIC: Mutex<Option<String>> = Mutex::new(None);
static ENGINE: Mutex<()> = Mutex::new(());

/// Most bytes the process may hold resident while an execution runs (the allocation oracle's
/// safety net, for memory it does not count: C allocations, memory kept between executions).
static MAX_RSS: AtomicUsize = AtomicUsize::new(usize::MAX);

thread_local! {
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    /// Set on the watchdog, whose own allocations (its report) never count.
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
}

/// Progress of the running target (executions, corpus size, outcome classes, largest peak
/// allocation), which a crash that cannot unwind reports.
pub static EXECS: AtomicU64 = AtomicU64::new(0);
pub static CORPUS: AtomicUsize = AtomicUsize::new(0);
pub static CLASSES: AtomicUsize = AtomicUsize::new(0);
pub static MAX_PEAK: AtomicUsize = AtomicUsize::new(0);
/// Where a worker writes its statistics (also when it aborts), and what it fuzzes.
pub static STATS_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Bytes the process's Rust allocations hold now.
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// Holds the process's oracles for one fuzzing run (runs in one process take turns, as tests do).
pub fn exclusive() -> MutexGuard<'static, ()> {
    install();
    lock(&ENGINE)
}

/// The settings every execution of a run shares.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes an execution may allocate above what was live when it started.
    pub max_alloc: usize,
    /// Longest an execution may run.
    pub timeout: Duration,
}

/// How one armed execution ended.
#[derive(Debug)]
pub enum Ended<T> {
    /// It returned.
    Returned(T),
    /// It panicked: the message and where.
    Panicked(String),
}

/// Run `f` on `input` under the oracles: `target` and `artifacts` name where a crash that cannot
/// unwind saves the input (`None`: nowhere, when reproducing). Returns how it ended and the peak
/// bytes it held above what was live before.
pub fn execute<T>(
    target: &'static str,
    artifacts: Option<&Path>,
    limits: &Limits,
    input: &[u8],
    f: impl FnOnce(&[u8]) -> T,
) -> (Ended<T>, usize) {
    let seq = SEQ.fetch_add(1, Relaxed) + 1;
    {
        let mut current = lock(&CURRENT);
        current.seq = seq;
        current.target = target;
        if current.artifacts.as_deref() != artifacts {
            current.artifacts = artifacts.map(Path::to_path_buf);
        }
        current.input.clear();
        current.input.extend_from_slice(input);
    }
    *lock(&PANIC) = None;
    TIMEOUT_MS.store(limits.timeout.as_millis().max(1) as u64, Relaxed);
    FUZZING.set(true);
    CATCHING.store(true, Relaxed);
    let base = LIVE.load(Relaxed);
    BASE.store(base, Relaxed);
    PEAK.store(base, Relaxed);
    LIMIT.store(limits.max_alloc, SeqCst);
    STARTED.store(now_ms(), SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input)));
    STARTED.store(0, SeqCst);
    LIMIT.store(usize::MAX, SeqCst);
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    CATCHING.store(false, Relaxed);
    FUZZING.set(false);
    let ended = match result {
        Ok(value) => Ended::Returned(value),
        Err(payload) => {
            let recorded = lock(&PANIC).take();
            Ended::Panicked(recorded.unwrap_or_else(|| format!("{} (in another thread)", payload_text(&*payload))))
        }
    };
    (ended, peak)
}

/// Whether panics record a backtrace (for a crash's report; slow, so only when reproducing one).
pub fn record_backtraces(on: bool) {
    BACKTRACES.store(on, Relaxed);
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = FUZZING.get() || std::thread::current().name().is_none();
            if !(CATCHING.load(Relaxed) && ours) {
                return previous(info);
            }
            let mut text = payload_text(info.payload());
            if let Some(at) = info.location() {
                text.push_str(&format!(" (at {}:{})", at.file(), at.line()));
            }
            if BACKTRACES.load(Relaxed) {
                text.push('\n');
                text.push_str(&library_frames(&std::backtrace::Backtrace::force_capture().to_string()));
            }
            let mut slot = lock(&PANIC);
            if slot.is_none() {
                *slot = Some(text);
            }
        }));
        std::thread::Builder::new().name("fuzz-watchdog".into()).spawn(watchdog).expect("spawning the watchdog");
    });
}

/// Bytes the process holds resident (Linux), if it can tell.
fn resident() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Take what the process holds resident now as the base of the resident-memory safety net:
/// executions may hold `limits.max_alloc` twice over it, and half a GiB.
pub fn set_rss_base(limits: &Limits) {
    let limit = resident().map_or(usize::MAX, |base| base + 2 * limits.max_alloc + (512 << 20));
    MAX_RSS.store(limit, Relaxed);
}

fn watchdog() {
    EXEMPT.set(true);
    loop {
        let timeout = TIMEOUT_MS.load(Relaxed);
        std::thread::sleep(Duration::from_millis((timeout / 4).clamp(10, 100)));
        let started = STARTED.load(SeqCst);
        let max_rss = MAX_RSS.load(Relaxed);
        let rss = resident().filter(|&r| r > max_rss);
        if started == 0 {
            if let Some(rss) = rss
                && STARTED.load(SeqCst) == 0
            {
                // between executions: the fuzzer's own memory (a mutation), not a target's
                eprintln!(
                    "\nfuzz: the fuzzer itself holds {} resident, over {}, between executions: a bug of the \
                     fuzzer (a mutation that grows too much), not of a target",
                    mib(rss),
                    mib(max_rss)
                );
                std::process::exit(ABORT_EXIT);
            }
            continue;
        }
        let seq = SEQ.load(SeqCst);
        let still = || lock(&CURRENT).seq == seq && STARTED.load(SeqCst) == started;
        if let Some(rss) = rss
            && still()
        {
            let what = format!(
                "the process holds {} resident, over {}: memory the allocation oracle does not count \
                 (not Rust's, or kept from execution to execution)",
                mib(rss),
                mib(max_rss)
            );
            abort_with("memory", &what, false);
        }
        if now_ms().saturating_sub(started) > timeout && still() {
            let what = format!("an execution ran for over {:.1} s (--timeout-s)", timeout as f64 / 1e3);
            abort_with("timeout", &what, false);
        }
    }
}

/// Save the running execution's input, report the crash (with the backtrace of this thread, if
/// it is the one that crashed) and exit with [`ABORT_EXIT`].
fn abort_with(kind: &str, what: &str, here: bool) -> ! {
    CATCHING.store(false, Relaxed);
    let backtrace = if here {
        std::backtrace::Backtrace::force_capture().to_string()
    } else {
        "(found by the watchdog, which cannot see where the execution was)".to_string()
    };
    let current = lock(&CURRENT);
    let mut err = std::io::stderr().lock();
    let site = site(&backtrace);
    let _ = writeln!(err, "\nfuzz: {}: crash ({kind}) in {site}: {what}", current.target);
    let frames = library_frames(&backtrace);
    let saved = current
        .artifacts
        .as_deref()
        .map(|dir| save_artifact(dir, &current.input, &format!("{kind}: {what}\n{frames}")));
    match &saved {
        Some(Ok(path)) => {
            let _ = writeln!(
                err,
                "fuzz: input saved to {}; reproduce with `cargo xtask fuzz --target {} --reproduce {}`",
                path.display(),
                current.target,
                path.display()
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(err, "fuzz: could not save the input: {e}");
        }
        None => {}
    }
    let _ = writeln!(err, "{frames}");
    if let Some(stats) = lock(&STATS_FILE).as_ref() {
        // what the engine's statistics say of a run stopped here
        let artifact = match &saved {
            Some(Ok(path)) => path.display().to_string(),
            _ => String::new(),
        };
        // one crash class per kind and function, whatever the sizes and the line in it
        let function =
            site.rsplit_once(':').filter(|(_, l)| l.ends_with(')')).map_or(site.clone(), |(f, _)| format!("{f})"));
        let line = serde_json::json!({
            "target": current.target,
            "executions": EXECS.load(Relaxed),
            "corpus": CORPUS.load(Relaxed),
            "classes": CLASSES.load(Relaxed),
            "peak_alloc": MAX_PEAK.load(Relaxed),
            "aborted": format!("{kind}: {what}"),
            "crashes": [{ "what": format!("{kind} in {function}"), "artifact": artifact, "hits": 1 }],
        });
        let _ = std::fs::write(stats, line.to_string());
    }
    let _ = err.flush();
    std::process::exit(ABORT_EXIT)
}

/// Write `input` to `dir/crash-<first 16 hex digits of its sha256>` (and what happened beside
/// it, `.txt`); the path.
pub fn save_artifact(dir: &Path, input: &[u8], report: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("crash-{}", &kvbench::assets::sha256_bytes(input)[..16]));
    std::fs::write(&path, input)?;
    std::fs::write(path.with_extension("txt"), report)?;
    Ok(path)
}

/// A frame's `at …` line as a path from the workspace root, with its line (`src/x.rs:12`);
/// std prints paths relative to the working directory when it can.
fn source(at: &str) -> String {
    let at = at.trim().trim_start_matches("at ");
    // `file:line:column`
    let mut parts = at.rsplitn(3, ':');
    let (col, line, file) = (parts.next(), parts.next(), parts.next());
    let (file, line) = match (file, line, col) {
        (Some(f), Some(l), Some(_)) => (f, l),
        _ => (at, ""),
    };
    let path = Path::new(file);
    let absolute = if path.is_relative() {
        std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
    } else {
        path.to_path_buf()
    };
    let absolute = absolute.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect::<PathBuf>();
    let root = crate::project_root();
    let shown = absolute.strip_prefix(&root).map_or_else(|_| file.to_string(), |p| p.display().to_string());
    if line.is_empty() { shown } else { format!("{shown}:{line}") }
}

/// The frames of a backtrace in kvbench's own code (where a crash is the library's: a symbol
/// of `kvbench::`, or, for frames inlined with line tables only, a place in the workspace's
/// `src/`), each with where (from the workspace root); the first frames past the fuzzer's own
/// and the standard library's if there are none.
fn frames(backtrace: &str) -> Vec<(String, Option<String>)> {
    let lines: Vec<&str> = backtrace.lines().collect();
    let is_frame =
        |line: &str| line.trim_start().split_once(": ").is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
    let mut frames: Vec<(String, Option<String>)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if is_frame(line) {
            let name = line.trim().split_once(": ").map_or(line.trim(), |(_, n)| n).to_string();
            let at = lines.get(i + 1).map(|l| l.trim()).filter(|l| l.starts_with("at ")).map(source);
            frames.push((name, at));
        }
    }
    let ours = |(name, at): &&(String, Option<String>)| {
        name.contains("kvbench::") || at.as_ref().is_some_and(|a| a.starts_with("src/"))
    };
    let kept: Vec<(String, Option<String>)> = frames.iter().filter(ours).cloned().collect();
    if !kept.is_empty() {
        return kept;
    }
    // none of the library's: the frames of this workspace past the oracles (those of std and
    // of other crates say little)
    let workspace = |(_, at): &&(String, Option<String>)| {
        at.as_ref().is_some_and(|a| !a.starts_with('/') && !a.contains("fuzz/guard.rs"))
    };
    frames.iter().filter(workspace).take(12).cloned().collect()
}

/// [`frames`], one per line (the whole backtrace if it has none).
pub fn library_frames(backtrace: &str) -> String {
    let kept = frames(backtrace);
    if kept.is_empty() {
        return backtrace.to_string();
    }
    let lines: Vec<String> = kept
        .iter()
        .map(|(name, at)| match at {
            Some(at) => format!("    {name} ({at})"),
            None => format!("    {name}"),
        })
        .collect();
    lines.join("\n")
}

/// Where a backtrace's first library frame is, `function (file:line)` (a closure's place, and
/// the function it is in).
fn site(backtrace: &str) -> String {
    let frames = frames(backtrace);
    if let (Some((closure, Some(at))), Some((name, _))) =
        (frames.first(), frames.iter().find(|(n, _)| !n.starts_with('{')))
        && closure.starts_with('{')
    {
        return format!("{name} ({at})");
    }
    match frames.into_iter().next() {
        Some((name, Some(at))) => format!("{name} ({at})"),
        Some((name, None)) => name,
        None => "an unknown place".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_named_by_their_hash() {
        let dir = std::env::temp_dir().join(format!("kvbench-fuzz-guard-{}", std::process::id()));
        let a = save_artifact(&dir, b"abc", "x").unwrap();
        assert_eq!(a.file_name().unwrap(), "crash-ba7816bf8f01cfea");
        assert_eq!(std::fs::read(&a).unwrap(), b"abc");
        assert_eq!(std::fs::read_to_string(a.with_extension("txt")).unwrap(), "x");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn library_frames_keep_kvbench_code() {
        let root = crate::project_root();
        let bt = format!(
            "   0: std::rt::x\n             at /rustc/a.rs:1:2\n   1: kvbench::trace::format::Trace::f\n             at {}/src/trace/format.rs:9:5\n   2: xtask::main\n",
            root.display()
        );
        assert_eq!(library_frames(&bt), "    kvbench::trace::format::Trace::f (src/trace/format.rs:9)");
        // inlined frames, named without their path
        let bt = format!(
            "   0: grow\n             at {r}/xtask/src/fuzz/guard.rs:88:9\n   1: check_tensors\n             at {r}/src/model/config.rs:126:33\n   2: gguf\n             at {r}/xtask/src/fuzz/targets.rs:188:24\n",
            r = root.display()
        );
        assert_eq!(library_frames(&bt), "    check_tensors (src/model/config.rs:126)");
        assert_eq!(site(&bt), "check_tensors (src/model/config.rs:126)");
        // none of the library's: the first past the fuzzer's own
        let bt = format!(
            "   0: abort_with\n             at {r}/xtask/src/fuzz/guard.rs:1:2\n   1: f\n             at {r}/xtask/src/x.rs:3:4\n",
            r = root.display()
        );
        assert_eq!(site(&bt), "f (xtask/src/x.rs:3)");
    }
}
