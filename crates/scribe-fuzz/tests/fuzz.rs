//! Runs every fuzz target for a bounded time (`SCRIBE_FUZZ_SECONDS`, default 5 s each) from the
//! corpus kept in the repository, and fails on any panic, naming the crash file written to
//! `crates/scribe-fuzz/crashes/`. Also checks that the fuzzer itself finds a planted bug.

use std::time::Duration;

use scribe_fuzz::fuzzer::{self, Budget, Dirs};
use scribe_fuzz::{targets, Target};

fn seconds() -> f64 {
    std::env::var("SCRIBE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0)
}

fn run(name: &str) {
    let target = targets::find(name).expect("the target exists");
    let dirs = Dirs::in_tree();
    let corpus = fuzzer::load_corpus(&dirs.corpus, &target).expect("the corpus reads");
    assert!(
        corpus.len() >= 10,
        "{name}: the repository's corpus holds only {} inputs",
        corpus.len()
    );
    let budget = Budget {
        time: Duration::from_secs_f64(seconds()),
        execs: None,
    };
    let seed = std::env::var("SCRIBE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let stats = fuzzer::fuzz(&target, budget, seed, &dirs).expect("the fuzzer runs");
    eprintln!(
        "{name}: {} execs ({:.0}/s), {} accepted, corpus {} → {}, seed {seed}",
        stats.execs,
        stats.execs_per_sec(),
        stats.accepted,
        stats.corpus_start,
        stats.corpus_end
    );
    assert!(
        stats.execs > corpus.len() as u64,
        "{name}: only {} executions",
        stats.execs
    );
    assert!(
        stats.accepted > 0,
        "{name}: no input was accepted: the seeds are not valid"
    );
    let crashes: Vec<String> = stats
        .crashes
        .iter()
        .map(|c| format!("{} (input {})", c.panic, c.input.display()))
        .collect();
    assert!(
        crashes.is_empty(),
        "{name} crashed (seed {seed}):\n{}",
        crashes.join("\n")
    );
}

#[test]
fn wire_frame() {
    run("wire_frame");
}

#[test]
fn wire_body() {
    run("wire_body");
}

#[test]
fn wire_handshake() {
    run("wire_handshake");
}

#[test]
fn log_record() {
    run("log_record");
}

#[test]
fn log_headers() {
    run("log_headers");
}

#[test]
fn log_dir() {
    run("log_dir");
}

#[test]
fn pg_translate() {
    run("pg_translate");
}

#[test]
fn pg_copy() {
    run("pg_copy");
}

#[test]
fn pg_session() {
    run("pg_session");
}

#[test]
fn http_body() {
    run("http_body");
}

#[test]
fn core_tokens() {
    run("core_tokens");
}

#[test]
fn mm_schema() {
    run("mm_schema");
}

#[test]
fn every_target_is_run_by_a_test() {
    let tested = [
        "wire_frame",
        "wire_body",
        "wire_handshake",
        "log_record",
        "log_headers",
        "log_dir",
        "pg_translate",
        "pg_copy",
        "pg_session",
        "http_body",
        "core_tokens",
        "mm_schema",
    ];
    let names: Vec<&str> = targets::all().iter().map(|t| t.name).collect();
    assert_eq!(names, tested);
}

/// A decoder with a planted bug: it panics on inputs that hold `0xAB` followed by `0xCD`.
fn planted(input: &[u8]) -> bool {
    if input.windows(2).any(|w| w == [0xAB, 0xCD]) {
        panic!("planted bug");
    }
    input.first() == Some(&0xAB)
}

fn no_seeds() -> Vec<Vec<u8>> {
    vec![vec![0xAB, 0x00, 0x01, 0x02]]
}

#[test]
fn the_fuzzer_finds_a_planted_bug_and_writes_its_input() {
    let target = Target {
        name: "planted",
        about: "a planted bug",
        run: planted,
        seeds: no_seeds,
        dict: &[],
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = Dirs {
        corpus: tmp.path().join("corpus"),
        crashes: tmp.path().join("crashes"),
    };
    let budget = Budget {
        time: Duration::from_secs(20),
        execs: Some(200_000),
    };
    let stats = fuzzer::fuzz(&target, budget, 1, &dirs).expect("the fuzzer runs");
    assert_eq!(
        stats.crashes.len(),
        1,
        "one distinct panic: {:?}",
        stats.crashes
    );
    let crash = &stats.crashes[0];
    assert!(
        crash.panic.starts_with("planted bug at "),
        "{}",
        crash.panic
    );
    let name = crash
        .input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    assert!(name.starts_with("planted-"), "{name}");
    let input = std::fs::read(&crash.input).expect("the crash file reads");
    assert!(
        fuzzer::run_one(&target, &input).is_err(),
        "the saved input panics again"
    );
}
