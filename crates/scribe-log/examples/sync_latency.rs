//! Prints the latency of `Log::sync` for small batches: one 300-byte record per batch, the shape
//! of a single small commit. `cargo run --release -p scribe-log --example sync_latency [batches]
//! [dir]`; the directory (a temporary one in the current directory by default) decides which
//! disk is measured.

use std::time::{Duration, Instant};

use scribe_core::Term;
use scribe_log::record::{BODY_HEADER, FRAME_HEADER};
use scribe_log::{Log, LogOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let batches: usize = args.next().map_or(Ok(5000), |s| s.parse())?;
    let parent = args.next().unwrap_or_else(|| ".".into());
    let dir = tempfile::tempdir_in(parent)?;
    let (mut log, _) = Log::open(dir.path(), LogOptions::default())?;
    let payload = vec![0x5a; 300 - FRAME_HEADER - BODY_HEADER];
    let mut fsync = Vec::with_capacity(batches);
    let mut whole = Vec::with_capacity(batches);
    for _ in 0..batches {
        log.append(Term(1), 0, payload.clone())?;
        let started = Instant::now();
        let report = log.sync()?;
        whole.push(started.elapsed());
        fsync.push(report.fsync);
    }
    print("SyncReport::fsync", &mut fsync);
    print("whole Log::sync  ", &mut whole);
    Ok(())
}

fn print(what: &str, v: &mut [Duration]) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    let mean = v.iter().sum::<Duration>().as_secs_f64() * 1e3 / v.len() as f64;
    println!(
        "{what}: {} batches, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms",
        v.len(),
        at(0.5),
        at(0.99),
        at(1.0),
        mean
    );
}
