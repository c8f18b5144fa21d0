//! `scribe bench`: the insert benchmark. For each concurrency level, that many clients send
//! single-row INSERT transactions (each its own request, so each is its own durable commit)
//! for a warm-up, then for the measured time; it prints transactions per second, latency
//! percentiles and the mean group-commit batch size read from the node's metrics.
//!
//! The client side is kept lean so it is not what is measured: request bodies are a template
//! with the sequence number spliced in, answers are not decoded unless they are errors, and
//! latencies go into a per-task `Vec<u32>` of microseconds, sorted once per level.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use crate::client::{metric, Client, ClientError, Statement};

/// Flags of `scribe bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// URL of the node's HTTP API (the primary)
    #[arg(long, env = "SCRIBE_URL", default_value = "http://127.0.0.1:5480")]
    pub url: String,
    /// Concurrency levels to measure, comma-separated
    #[arg(
        long,
        env = "SCRIBE_BENCH_CLIENTS",
        value_delimiter = ',',
        default_value = "1,8,64"
    )]
    pub clients: Vec<usize>,
    /// Measured time per level (for example 10s, 500ms)
    #[arg(long, env = "SCRIBE_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up time per level, not counted
    #[arg(long, env = "SCRIBE_BENCH_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Table to insert into; created if missing
    #[arg(long, env = "SCRIBE_BENCH_TABLE", default_value = "bench_insert")]
    pub table: String,
    /// Bytes of text payload per row
    #[arg(long, env = "SCRIBE_BENCH_PAYLOAD_BYTES", default_value_t = 100)]
    pub payload_bytes: usize,
    /// Print the results as JSON on standard output (the table then goes to standard error)
    #[arg(long, env = "SCRIBE_BENCH_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// Figures of one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelResult {
    /// Concurrent clients.
    pub clients: usize,
    /// Transactions committed per second over the measured time.
    pub tps: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency, milliseconds.
    pub max_ms: f64,
    /// Transactions per group commit (one log fsync), from the node's metrics; `None` when the
    /// metrics are missing.
    pub mean_batch: Option<f64>,
    /// Requests that failed during the measured time.
    pub errors: u64,
}

/// The whole run, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report<'a> {
    url: &'a str,
    table: &'a str,
    payload_bytes: usize,
    duration_seconds: f64,
    warmup_seconds: f64,
    levels: &'a [LevelResult],
}

/// Latencies of one level, in microseconds.
#[derive(Debug, Default)]
pub struct Latencies {
    sorted_us: Vec<u32>,
}

impl Latencies {
    /// Merges the samples of every client and sorts them.
    pub fn from_samples(parts: impl IntoIterator<Item = Vec<u32>>) -> Latencies {
        let mut sorted_us: Vec<u32> = Vec::new();
        for p in parts {
            sorted_us.extend(p);
        }
        sorted_us.sort_unstable();
        Latencies { sorted_us }
    }

    /// How many samples.
    pub fn count(&self) -> usize {
        self.sorted_us.len()
    }

    /// The `q`-quantile (0..=1) in milliseconds, nearest-rank: the smallest sample with at
    /// least `q` of all samples at or below it. 0 when there are none.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.sorted_us.len();
        if n == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
        self.sorted_us[rank.clamp(1, n) - 1] as f64 / 1000.0
    }

    /// The largest sample in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.sorted_us.last().map_or(0.0, |&m| m as f64 / 1000.0)
    }
}

/// Mean transactions per group commit between two `(commits, batches)` readings.
pub fn mean_batch(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<f64> {
    match (before, after) {
        (Some((c0, b0)), Some((c1, b1))) if b1 > b0 => Some((c1 - c0) / (b1 - b0)),
        _ => None,
    }
}

/// A SQL identifier in double quotes.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `/v1/execute` body of one insert, cut around the sequence number so each request only
/// splices it in: `prefix`, then the number, then `suffix`.
#[derive(Debug, Clone)]
pub struct BodyTemplate {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl BodyTemplate {
    /// The template for client `client` inserting `payload` into `table`.
    pub fn new(table: &str, client: u64, payload: &str) -> BodyTemplate {
        let sql = format!(
            "INSERT INTO {} (client, seq, payload) VALUES (?, ?, ?)",
            quote_ident(table)
        );
        let sql = serde_json::to_string(&sql).unwrap_or_default();
        let payload = serde_json::to_string(payload).unwrap_or_default();
        BodyTemplate {
            prefix: format!(r#"{{"statements":[{{"sql":{sql},"params":[{client},"#).into_bytes(),
            suffix: format!(r#",{payload}]}}]}}"#).into_bytes(),
        }
    }

    /// The body of request number `seq`.
    pub fn body(&self, seq: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.prefix.len() + self.suffix.len() + 20);
        b.extend_from_slice(&self.prefix);
        let _ = write!(b, "{seq}");
        b.extend_from_slice(&self.suffix);
        b
    }
}

/// What one benchmark client measured.
struct ClientRun {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// One client: inserts until `end`; records requests that complete in `[measure_from, end)`.
async fn client_loop(
    client: Client,
    template: BodyTemplate,
    measure_from: Instant,
    end: Instant,
) -> ClientRun {
    let mut run = ClientRun {
        latencies_us: Vec::with_capacity(1 << 14),
        errors: 0,
        first_error: None,
    };
    let mut seq = 0u64;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let result = client.execute_raw(template.body(seq)).await;
        seq += 1;
        let done = Instant::now();
        let measured = done >= measure_from && done < end;
        match result {
            Ok(()) if measured => {
                run.latencies_us
                    .push(done.duration_since(sent).as_micros().min(u32::MAX as u128) as u32);
            }
            Ok(()) => {}
            Err(e) => {
                if measured {
                    run.errors += 1;
                }
                if run.first_error.is_none() {
                    run.first_error = Some(e.to_string());
                }
                if matches!(e, ClientError::Unreachable { .. }) {
                    // Do not spin on a node that is down.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    run
}

async fn commits_and_batches(client: &Client) -> Option<(f64, f64)> {
    let text = client.metrics().await.ok()?;
    Some((
        metric(&text, "scribe_commits_total")?,
        metric(&text, "scribe_commit_batches_total")?,
    ))
}

/// Runs one concurrency level; returns its figures and the first error a client saw.
async fn level(
    client: &Client,
    args: &BenchArgs,
    clients: usize,
    run_id: u64,
) -> anyhow::Result<(LevelResult, Option<String>)> {
    let payload = "x".repeat(args.payload_bytes);
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let template = BodyTemplate::new(&args.table, run_id * 1_000_000 + c as u64, &payload);
            tokio::spawn(client_loop(client.clone(), template, measure_from, end))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let before = commits_and_batches(client).await;
    tokio::time::sleep_until(end.into()).await;
    let after = commits_and_batches(client).await;
    let mut samples = Vec::with_capacity(clients);
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let run = t.await.context("join a benchmark client")?;
        samples.push(run.latencies_us);
        errors += run.errors;
        first_error = first_error.or(run.first_error);
    }
    let lat = Latencies::from_samples(samples);
    let result = LevelResult {
        clients,
        tps: lat.count() as f64 / args.duration.as_secs_f64(),
        p50_ms: lat.quantile_ms(0.50),
        p99_ms: lat.quantile_ms(0.99),
        max_ms: lat.max_ms(),
        mean_batch: mean_batch(before, after),
        errors,
    };
    Ok((result, first_error))
}

fn header() -> String {
    format!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "clients", "tx/s", "p50 ms", "p99 ms", "max ms", "mean batch", "errors"
    )
}

fn row(r: &LevelResult) -> String {
    let batch = r
        .mean_batch
        .map_or_else(|| "n/a".to_string(), |b| format!("{b:.1}"));
    format!(
        "{:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>8}",
        r.clients, r.tps, r.p50_ms, r.p99_ms, r.max_ms, batch, r.errors
    )
}

/// Runs `scribe bench`. Exit code 1 when any measured request failed.
pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs one or more levels above zero");
    }
    if args.duration.is_zero() {
        bail!("--duration must be above zero");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async {
        let max = args.clients.iter().copied().max().unwrap_or(1);
        let client = Client::with_pool(&args.url, max)?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, client INTEGER, seq INTEGER, payload TEXT)",
            quote_ident(&args.table)
        );
        if let Err(e) = client.execute(&[Statement::new(&create)]).await {
            eprintln!("error: create the benchmark table: {e}");
            return Ok(1);
        }
        // With --json the table is for the person watching; the JSON is the output.
        let say = |line: &str| {
            if args.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        say(&format!(
            "insert benchmark against {}: single-row INSERT transactions into {}, {} bytes of payload, {} per level after {} warm-up",
            args.url,
            args.table,
            args.payload_bytes,
            humantime::format_duration(args.duration),
            humantime::format_duration(args.warmup)
        ));
        say(&header());
        // Distinguishes this run's rows from earlier runs' in the `client` column.
        let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() % 1_000_000);
        let mut results = Vec::with_capacity(args.clients.len());
        for &c in &args.clients {
            let (r, first_error) = level(&client, &args, c, run_id).await?;
            say(&row(&r));
            if let Some(e) = first_error {
                eprintln!("  first error at {c} clients: {e}");
            }
            results.push(r);
        }
        if args.json {
            let report = Report {
                url: &args.url,
                table: &args.table,
                payload_bytes: args.payload_bytes,
                duration_seconds: args.duration.as_secs_f64(),
                warmup_seconds: args.warmup.as_secs_f64(),
                levels: &results,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Ok(if results.iter().any(|r| r.errors > 0) { 1 } else { 0 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let lat = Latencies::from_samples([
            (51..=100).rev().map(|i| i * 1000).collect(),
            (1..=50).map(|i| i * 1000).collect(),
        ]);
        assert_eq!(lat.count(), 100);
        assert_eq!(lat.quantile_ms(0.5), 50.0);
        assert_eq!(lat.quantile_ms(0.99), 99.0);
        assert_eq!(lat.quantile_ms(1.0), 100.0);
        assert_eq!(lat.quantile_ms(0.0), 1.0);
        assert_eq!(lat.max_ms(), 100.0);
        let one = Latencies::from_samples([vec![1500]]);
        assert_eq!(
            (one.quantile_ms(0.5), one.quantile_ms(0.99), one.max_ms()),
            (1.5, 1.5, 1.5)
        );
        let none = Latencies::default();
        assert_eq!((none.quantile_ms(0.5), none.max_ms()), (0.0, 0.0));
    }

    #[test]
    fn mean_batch_needs_both_readings_and_a_batch() {
        assert_eq!(
            mean_batch(Some((100.0, 10.0)), Some((1100.0, 60.0))),
            Some(20.0)
        );
        assert_eq!(mean_batch(None, Some((1.0, 1.0))), None);
        assert_eq!(mean_batch(Some((5.0, 2.0)), Some((5.0, 2.0))), None);
    }

    #[test]
    fn the_body_template_is_the_json_of_the_insert() {
        let t = BodyTemplate::new("my \"t\"", 7, "a\"b");
        let body: serde_json::Value = serde_json::from_slice(&t.body(42)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"statements": [{
                "sql": "INSERT INTO \"my \"\"t\"\"\" (client, seq, payload) VALUES (?, ?, ?)",
                "params": [7, 42, "a\"b"],
            }]})
        );
    }

    #[test]
    fn rows_line_up_with_the_header() {
        let r = LevelResult {
            clients: 64,
            tps: 12345.6,
            p50_ms: 4.5,
            p99_ms: 12.25,
            max_ms: 30.0,
            mean_batch: None,
            errors: 0,
        };
        assert_eq!(row(&r).len(), header().len());
        assert!(row(&r).contains("n/a"));
        assert!(row(&r).contains("12346"));
    }
}
