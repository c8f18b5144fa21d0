//! The fuzzing loop: runs one [`Target`] on its corpus and on mutations of it for a time or an
//! execution budget, catching panics. A panicking input is written to the crash directory as
//! `<target>-<hash>` and counted; inputs the decoder accepted join the in-memory corpus, so
//! mutations build on valid structure.

use std::cell::RefCell;
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::{Mutator, Target};

/// Largest input the mutator makes.
pub const MAX_INPUT: usize = 16 << 10;
/// Most inputs the in-memory corpus grows to.
const MAX_CORPUS: usize = 4096;
/// Most crash files one run writes (identical panics are written once).
const MAX_CRASHES: usize = 16;

/// How long one target runs: until `time` has passed or `execs` inputs have run, whichever comes
/// first.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Wall-clock time.
    pub time: Duration,
    /// Executions; `None` for no limit.
    pub execs: Option<u64>,
}

/// Where a run reads its seeds and writes its crashes.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// The corpus root: the target's seeds are in `<corpus>/<target>/`.
    pub corpus: PathBuf,
    /// Crashing inputs are written here as `<target>-<hash>`.
    pub crashes: PathBuf,
}

impl Dirs {
    /// The corpus and crash directories kept in this crate's source tree.
    pub fn in_tree() -> Dirs {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Dirs {
            corpus: root.join("corpus"),
            crashes: root.join("crashes"),
        }
    }
}

/// One crash: the panic's message and location, and the file holding the input.
#[derive(Debug, Clone)]
pub struct Crash {
    /// `message at file:line`.
    pub panic: String,
    /// The input, as written.
    pub input: PathBuf,
}

/// What one run did. Invariant: `corpus_start <= corpus_end`.
#[derive(Debug, Clone)]
pub struct Stats {
    /// The target's name.
    pub target: &'static str,
    /// Inputs run (corpus entries and mutations).
    pub execs: u64,
    /// Wall-clock time taken.
    pub elapsed: Duration,
    /// Inputs the decoder accepted.
    pub accepted: u64,
    /// Corpus entries at the start (files and built-in seeds).
    pub corpus_start: usize,
    /// Corpus entries at the end (accepted mutations added).
    pub corpus_end: usize,
    /// Distinct panics found.
    pub crashes: Vec<Crash>,
}

impl Stats {
    /// Executions per second.
    pub fn execs_per_sec(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    /// Set while this thread runs a target: the panic hook then records the panic here instead
    /// of printing it.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps fuzzed panics quiet and passes every other panic to
/// the hook that was there before.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let fuzzing = CAUGHT.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let msg = info
                            .payload()
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| info.payload().downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".into());
                        let at = info
                            .location()
                            .map(|l| format!("{}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        *slot = Some(format!("{msg} at {at}"));
                        true
                    }
                    None => false,
                }
            });
            if !fuzzing {
                previous(info);
            }
        }));
    });
}

/// Runs `target` once on `input`: `Ok(accepted)`, or `Err(panic)` if it panicked.
pub fn run_one(target: &Target, input: &[u8]) -> Result<bool, String> {
    install_hook();
    CAUGHT.with(|c| *c.borrow_mut() = Some(None));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let caught = CAUGHT.with(|c| c.borrow_mut().take()).flatten();
    result.map_err(|_| caught.unwrap_or_else(|| "panic".into()))
}

/// A stable 64-bit hash (FNV-1a) naming an input.
pub fn hash(input: &[u8]) -> u64 {
    input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The seed files of `target` under `corpus` (none if the directory is missing), sorted by name.
pub fn load_corpus(corpus: &Path, target: &Target) -> std::io::Result<Vec<Vec<u8>>> {
    let dir = corpus.join(target.name);
    let mut paths = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .map(std::fs::read)
        .collect()
}

/// Fuzzes `target` within `budget`, with the PRNG seeded by `seed`: first every corpus entry and
/// built-in seed as they are, then mutations of them.
pub fn fuzz(target: &Target, budget: Budget, seed: u64, dirs: &Dirs) -> std::io::Result<Stats> {
    let started = Instant::now();
    let mut corpus = Vec::new();
    let mut seen: HashSet<u64> = HashSet::new();
    for input in load_corpus(&dirs.corpus, target)?
        .into_iter()
        .chain((target.seeds)())
    {
        if seen.insert(hash(&input)) {
            corpus.push(input);
        }
    }
    let corpus_start = corpus.len();
    let mut stats = Stats {
        target: target.name,
        execs: 0,
        elapsed: Duration::ZERO,
        accepted: 0,
        corpus_start,
        corpus_end: corpus_start,
        crashes: Vec::new(),
    };
    let mut panics: HashSet<String> = HashSet::new();
    let mut mutator = Mutator::new(seed, MAX_INPUT);
    let mut next = 0usize;
    let out_of_budget = |stats: &Stats| {
        started.elapsed() >= budget.time || budget.execs.is_some_and(|n| stats.execs >= n)
    };
    while !out_of_budget(&stats) {
        let input = if next < corpus_start {
            next += 1;
            corpus[next - 1].clone()
        } else {
            let base = mutator.below(corpus.len().max(1));
            match corpus.get(base) {
                Some(entry) => mutator.mutate(entry, &corpus, target.dict),
                None => mutator.mutate(&[], &[], target.dict),
            }
        };
        stats.execs += 1;
        match run_one(target, &input) {
            Ok(true) => {
                stats.accepted += 1;
                if seen.insert(hash(&input)) {
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input);
                    } else if corpus_start < MAX_CORPUS && mutator.below(8) == 0 {
                        // Full: an accepted input takes the place of an earlier one, never of
                        // a seed, so the corpus keeps moving.
                        let at = corpus_start + mutator.below(MAX_CORPUS - corpus_start);
                        corpus[at] = input;
                    }
                }
            }
            Ok(false) => {}
            Err(panic) => {
                if panics.insert(panic.clone()) && stats.crashes.len() < MAX_CRASHES {
                    let path = write_crash(&dirs.crashes, target.name, &input)?;
                    stats.crashes.push(Crash { panic, input: path });
                }
            }
        }
    }
    stats.elapsed = started.elapsed();
    stats.corpus_end = corpus.len();
    Ok(stats)
}

fn write_crash(dir: &Path, target: &str, input: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{target}-{:016x}", hash(input)));
    std::fs::write(&path, input)?;
    Ok(path)
}
