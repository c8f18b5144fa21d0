//! `scribe bench`: the insert benchmark. For each concurrency level, that many clients send
//! single-row INSERT transactions (each its own request, so each is its own durable commit)
//! for a warm-up, then for the measured time; it prints transactions per second, latency
//! percentiles, the mean group-commit batch size and each replica's apply lag, the last two read
//! from the primary's metrics before and after the measured time. Each insert may ask for a
//! commit mode (`--commit`), and the clients may be paced to a total offered rate (`--rate`)
//! instead of sending as fast as answers come back.
//!
//! The client side is kept lean so it is not what is measured: request bodies are a template
//! with the sequence number spliced in, answers are not decoded unless they are errors, and
//! latencies go into a per-task `Vec<u32>` of microseconds, sorted once per level.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::builder::TypedValueParser as _;
use clap::Args;
use scribe_core::CommitMode;
use serde::Serialize;

use crate::client::{metric, Client, ClientError, Statement};

/// Flags of `scribe bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// URL of the node's HTTP API (the primary)
    #[arg(long, env = "SCRIBE_URL", default_value = "http://127.0.0.1:5480")]
    pub url: String,
    #[command(flatten)]
    pub access: crate::access::Access,
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
    /// Give the table a TEXT primary key made of the level, client and sequence number instead of an INTEGER one (what a multi-master node needs; against one it is chosen by itself): compares primary/replica and multi-master on the same table
    #[arg(long, env = "SCRIBE_BENCH_TEXT_KEY", value_parser = clap::builder::BoolishValueParser::new())]
    pub text_key: bool,
    /// Commit mode every insert asks for: async (the primary's own log flush), semi-sync (replicas
    /// have it in their logs) or sync (replicas have applied it); without it the node's default
    /// mode applies
    #[arg(long, env = "SCRIBE_BENCH_COMMIT", value_name = "MODE", value_parser = commit_mode_parser())]
    pub commit: Option<CommitMode>,
    /// Offered load in transactions per second over all clients together: each client sends on
    /// a fixed schedule instead of as soon as its previous answer came back (latency is still
    /// measured from the actual send); without it the clients send as fast as they can
    #[arg(long, env = "SCRIBE_BENCH_RATE", value_name = "TX_PER_SECOND")]
    pub rate: Option<f64>,
    /// Print the results as JSON on standard output (the table then goes to standard error)
    #[arg(long, env = "SCRIBE_BENCH_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// What to measure: insert (single-row INSERT transactions, each durable) or point-select
    /// (reads of one row by primary key, through the Rust client library)
    #[arg(
        long,
        env = "SCRIBE_BENCH_WORKLOAD",
        value_enum,
        default_value = "insert"
    )]
    pub workload: Workload,
    /// point-select: the cluster's node URLs, comma-separated; the client library sends reads to
    /// the replicas (round robin, the primary as fallback). Without it every read goes to --url
    #[arg(long, env = "SCRIBE_BENCH_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// point-select: read consistency: stale (the client library spreads reads over the
    /// replicas), session (each read carries a position token the nodes have already applied, so
    /// this measures the cost of the check) or strong (every read to the primary)
    #[arg(
        long,
        env = "SCRIBE_BENCH_CONSISTENCY",
        value_enum,
        default_value = "stale"
    )]
    pub consistency: ReadConsistency,
    /// point-select: rows in the table read from (created and filled if it has fewer)
    #[arg(long, env = "SCRIBE_BENCH_ROWS", default_value_t = 10_000)]
    pub rows: u64,
}

/// `--workload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Single-row INSERT transactions.
    Insert,
    /// Reads of one row by primary key.
    PointSelect,
}

/// `--consistency` of the point-select workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadConsistency {
    /// Whatever the serving node has applied.
    Stale,
    /// At least the position of the benchmark's last write.
    Session,
    /// Served by the primary.
    Strong,
}

/// `--commit`: one of the listed modes (so `--help` shows them), parsed as a [`CommitMode`].
fn commit_mode_parser() -> impl clap::builder::TypedValueParser<Value = CommitMode> {
    clap::builder::PossibleValuesParser::new(["async", "semi-sync", "sync"])
        .try_map(|s| s.parse::<CommitMode>())
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
    /// Apply lag of each replica the primary reports, during the measured time; empty when the
    /// node has no such metrics (no replicas, or a node without replication).
    pub replication_lag: Vec<ReplicaLag>,
}

/// One replica's apply lag during a measured level: for each transaction, the time from its
/// commit on the primary until the primary learned that the replica applied it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaLag {
    /// The replica's name.
    pub replica: String,
    /// Median lag, milliseconds, estimated from the histogram; `None` without samples.
    pub p50_ms: Option<f64>,
    /// 99th percentile lag, milliseconds, estimated from the histogram; `None` without samples.
    pub p99_ms: Option<f64>,
    /// Transactions observed.
    pub samples: u64,
}

/// The whole run, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report<'a> {
    url: &'a str,
    table: &'a str,
    payload_bytes: usize,
    duration_seconds: f64,
    warmup_seconds: f64,
    /// The commit mode the inserts asked for; `null` for the node's default.
    commit: Option<String>,
    /// The offered load in transactions per second; `null` when the clients were not paced.
    rate_tps: Option<f64>,
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

/// The primary's histogram of apply lag, one series set per replica (label `replica`).
const APPLY_LAG_METRIC: &str = "scribe_replica_apply_lag_seconds";

/// One replica's apply-lag histogram as Prometheus gives it: cumulative counts by upper bound.
///
/// Invariant: `buckets` is sorted by bound, each bound appears once, and the counts do not
/// decrease (a well-formed histogram's last bound is `+Inf`, its count the total).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagHistogram {
    /// `(le, cumulative count)`, `le` in seconds.
    buckets: Vec<(f64, f64)>,
}

impl LagHistogram {
    /// A histogram from `(le, cumulative count)` pairs in any order; pairs with the same bound
    /// (series differing in some other label) are added up.
    pub fn from_buckets(mut pairs: Vec<(f64, f64)>) -> LagHistogram {
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut buckets: Vec<(f64, f64)> = Vec::with_capacity(pairs.len());
        for (le, count) in pairs {
            match buckets.last_mut() {
                Some(last) if last.0 == le => last.1 += count,
                _ => buckets.push((le, count)),
            }
        }
        LagHistogram { buckets }
    }

    /// Observations in the histogram: the count of its last (`+Inf`) bucket.
    pub fn samples(&self) -> f64 {
        self.buckets.last().map_or(0.0, |&(_, c)| c)
    }

    /// The observations made between the reading `before` and this one, bucket by bucket. A
    /// bound missing before counts from zero; if any count went down, the series restarted
    /// (the replica reconnected, or the node restarted) and this reading is taken whole.
    pub fn since(&self, before: Option<&LagHistogram>) -> LagHistogram {
        let count_before = |le: f64| {
            before
                .and_then(|b| b.buckets.iter().find(|(l, _)| *l == le))
                .map_or(0.0, |&(_, c)| c)
        };
        let restarted = self.buckets.iter().any(|&(le, c)| c < count_before(le));
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| (le, if restarted { c } else { c - count_before(le) }))
            .collect();
        LagHistogram { buckets }
    }

    /// The `q`-quantile (0..=1) in seconds, estimated as Prometheus's `histogram_quantile`
    /// does: find the first bucket whose cumulative count reaches `q` of all observations and
    /// interpolate linearly between its lower bound (the previous bucket's bound, 0 for the
    /// first) and its upper bound, assuming the observations spread evenly inside it. A
    /// quantile falling in the `+Inf` bucket is given as the largest finite bound. `None`
    /// without observations, or with no finite bound to go by.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.samples();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let (mut lower, mut below) = (0.0, 0.0);
        let mut any_finite = false;
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return any_finite.then_some(lower);
                }
                let inside = cumulative - below;
                if inside <= 0.0 {
                    return Some(lower);
                }
                return Some(lower + (le - lower) * (rank - below) / inside);
            }
            (lower, below, any_finite) = (le, cumulative, true);
        }
        None
    }
}

/// A sample's value: a number, `+Inf`, `-Inf` or `NaN`.
fn parse_sample_value(s: &str) -> Option<f64> {
    // Rust's parser takes `inf`, `+Inf`, `NaN` in any case, as Prometheus writes them.
    s.parse::<f64>().ok()
}

/// The labels and value of a line of Prometheus text if it is a sample of the metric `name`:
/// `name{k="v",...} value [timestamp]` or `name value [timestamp]`. Label values are unescaped
/// (`\"`, `\\`, `\n`).
fn parse_series(line: &str, name: &str) -> Option<(Vec<(String, String)>, f64)> {
    let rest = line.trim_start().strip_prefix(name)?;
    let mut labels = Vec::new();
    let rest = if let Some(mut s) = rest.strip_prefix('{') {
        loop {
            s = s.trim_start();
            if let Some(after) = s.strip_prefix('}') {
                break after;
            }
            let eq = s.find('=')?;
            let key = s[..eq].trim().to_string();
            let quoted = s[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut escaped = false;
            let mut end = None;
            for (i, c) in quoted.char_indices() {
                if escaped {
                    value.push(if c == 'n' { '\n' } else { c });
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                } else {
                    value.push(c);
                }
            }
            labels.push((key, value));
            s = quoted[end? + 1..].trim_start();
            s = s.strip_prefix(',').unwrap_or(s);
        }
    } else if rest.starts_with([' ', '\t']) {
        rest
    } else {
        return None; // a longer name sharing the prefix
    };
    let value = parse_sample_value(rest.split_whitespace().next()?)?;
    Some((labels, value))
}

/// Each replica's apply-lag histogram in the metrics text `text`, by replica name.
pub fn lag_histograms(text: &str) -> BTreeMap<String, LagHistogram> {
    let bucket = format!("{APPLY_LAG_METRIC}_bucket");
    let mut pairs: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let Some((labels, count)) = parse_series(line, &bucket) else {
            continue;
        };
        let label = |k: &str| {
            labels
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let (Some(replica), Some(le)) =
            (label("replica"), label("le").and_then(parse_sample_value))
        else {
            continue;
        };
        pairs
            .entry(replica.to_string())
            .or_default()
            .push((le, count));
    }
    pairs
        .into_iter()
        .map(|(r, p)| (r, LagHistogram::from_buckets(p)))
        .collect()
}

/// Each replica's apply lag between two readings of the primary's histograms. Replicas are
/// those of the later reading, in name order; one gone by then is left out.
pub fn replication_lag(
    before: &BTreeMap<String, LagHistogram>,
    after: &BTreeMap<String, LagHistogram>,
) -> Vec<ReplicaLag> {
    after
        .iter()
        .map(|(replica, h)| {
            let d = h.since(before.get(replica));
            ReplicaLag {
                replica: replica.clone(),
                p50_ms: d.quantile(0.50).map(|s| s * 1000.0),
                p99_ms: d.quantile(0.99).map(|s| s * 1000.0),
                samples: d.samples().max(0.0).round() as u64,
            }
        })
        .collect()
}

/// What the bench reads from the node's metrics around a measured level.
#[derive(Debug, Default)]
struct MetricsReading {
    /// `(scribe_commits_total, scribe_commit_batches_total)`.
    commits_and_batches: Option<(f64, f64)>,
    /// Apply-lag histograms by replica.
    lag: BTreeMap<String, LagHistogram>,
}

impl MetricsReading {
    fn parse(text: &str) -> MetricsReading {
        let commits = metric(text, "scribe_commits_total");
        let batches = metric(text, "scribe_commit_batches_total");
        MetricsReading {
            commits_and_batches: commits.zip(batches),
            lag: lag_histograms(text),
        }
    }
}

/// The node's metrics, or `None` when they cannot be read.
async fn read_metrics(client: &Client) -> Option<MetricsReading> {
    let text = client.metrics().await.ok()?;
    Some(MetricsReading::parse(&text))
}

/// When a paced client sends: its `k`-th request is due `(k * clients + client) / rate`
/// seconds after the level starts. Each client thus sends every `clients / rate` seconds, the
/// clients offset from each other by `1 / rate` so their sends interleave evenly, and together
/// they offer `rate` transactions per second. The schedule is fixed: a client that falls behind
/// (its answer came later than its next send was due) sends at once until it has caught up,
/// so the offered load does not drop when the node slows down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacer {
    /// This client's index, `0..clients`.
    pub client: usize,
    /// Clients in the level.
    pub clients: usize,
    /// Transactions per second over all clients; above zero.
    pub rate: f64,
}

impl Pacer {
    /// When request `k` is due, after the level's start; `None` when that is too far ahead to
    /// represent (never, for any realistic run).
    pub fn due(&self, k: u64) -> Option<Duration> {
        let slot = k as f64 * self.clients as f64 + self.client as f64;
        Duration::try_from_secs_f64(slot / self.rate).ok()
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
    /// The template for client `client` inserting `payload` into `table`, asking for the
    /// commit mode `commit` (the node's default when `None`). With `text_key` the table's key
    /// is text made of it, the client and the sequence number (a multi-master table's key).
    pub fn new(
        table: &str,
        client: u64,
        payload: &str,
        commit: Option<CommitMode>,
        text_key: Option<&str>,
    ) -> BodyTemplate {
        let sql = match text_key {
            None => format!(
                "INSERT INTO {} (client, seq, payload) VALUES (?, ?, ?)",
                quote_ident(table)
            ),
            Some(_) => format!(
                "INSERT INTO {} (id, client, seq, payload) VALUES (?4 || ':' || ?1 || ':' || ?2, ?1, ?2, ?3)",
                quote_ident(table)
            ),
        };
        let sql = serde_json::to_string(&sql).unwrap_or_default();
        let payload = serde_json::to_string(payload).unwrap_or_default();
        let key = text_key.map_or_else(String::new, |k| {
            format!(",{}", serde_json::to_string(k).unwrap_or_default())
        });
        let commit = commit.map_or_else(String::new, |m| format!(r#","commit":"{m}""#));
        BodyTemplate {
            prefix: format!(r#"{{"statements":[{{"sql":{sql},"params":[{client},"#).into_bytes(),
            suffix: format!(r#",{payload}{key}]}}]{commit}}}"#).into_bytes(),
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

/// When one client runs: the level starts at `start`, requests that complete in
/// `[measure_from, end)` are measured, and none is sent from `end` on.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// One client: inserts until the window ends, paced by `pace` if given, as fast as answers come
/// back if not.
async fn client_loop(
    client: Client,
    template: BodyTemplate,
    window: Window,
    pace: Option<Pacer>,
) -> ClientRun {
    let Window {
        start,
        measure_from,
        end,
    } = window;
    let mut run = ClientRun {
        latencies_us: Vec::with_capacity(1 << 14),
        errors: 0,
        first_error: None,
    };
    let mut seq = 0u64;
    loop {
        if let Some(p) = &pace {
            // tokio's timers tick in milliseconds, so at high rates single sends are late by
            // up to a tick; the schedule is absolute, so the rate over the level still holds.
            match p.due(seq).and_then(|d| start.checked_add(d)) {
                Some(due) if due < end => tokio::time::sleep_until(due.into()).await,
                _ => break,
            }
        }
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

/// Runs one concurrency level; returns its figures and the first error a client saw.
async fn level(
    client: &Client,
    args: &BenchArgs,
    clients: usize,
    run_id: u64,
    text_key: bool,
) -> anyhow::Result<(LevelResult, Option<String>)> {
    let payload = "x".repeat(args.payload_bytes);
    // Keys of this level's rows: no other level's or benchmark process's.
    let nonce = text_key.then(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{t}", std::process::id())
    });
    let start = Instant::now();
    let window = Window {
        start,
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let template = BodyTemplate::new(
                &args.table,
                run_id * 1_000_000 + c as u64,
                &payload,
                args.commit,
                nonce.as_deref(),
            );
            let pace = args.rate.map(|rate| Pacer {
                client: c,
                clients,
                rate,
            });
            tokio::spawn(client_loop(client.clone(), template, window, pace))
        })
        .collect();
    tokio::time::sleep_until(window.measure_from.into()).await;
    let before = read_metrics(client).await;
    tokio::time::sleep_until(window.end.into()).await;
    let after = read_metrics(client).await;
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
    // Without the earlier reading the lag counts would reach back to the node's start.
    let replication_lag = match (&before, &after) {
        (Some(b), Some(a)) => replication_lag(&b.lag, &a.lag),
        _ => Vec::new(),
    };
    let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
    let result = LevelResult {
        clients,
        tps: lat.count() as f64 / args.duration.as_secs_f64(),
        p50_ms: lat.quantile_ms(0.50),
        p99_ms: lat.quantile_ms(0.99),
        max_ms: lat.max_ms(),
        mean_batch: mean_batch(before.commits_and_batches, after.commits_and_batches),
        errors,
        replication_lag,
    };
    Ok((result, first_error))
}

fn header() -> String {
    format!(
        "{:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>8}  {}",
        "clients", "tx/s", "p50 ms", "p99 ms", "max ms", "mean batch", "errors", "lag p50/p99 ms"
    )
}

/// Milliseconds with as many decimals as they deserve.
fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// The lag column: each replica as `n2 0.4/1.2`, `n2 -` without samples, `n/a` without any.
fn lag_cell(lag: &[ReplicaLag]) -> String {
    if lag.is_empty() {
        return "n/a".to_string();
    }
    lag.iter()
        .map(|l| match (l.p50_ms, l.p99_ms) {
            (Some(p50), Some(p99)) => format!("{} {}/{}", l.replica, fmt_ms(p50), fmt_ms(p99)),
            _ => format!("{} -", l.replica),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(r: &LevelResult) -> String {
    let batch = r
        .mean_batch
        .map_or_else(|| "n/a".to_string(), |b| format!("{b:.1}"));
    format!(
        "{:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>8}  {}",
        r.clients,
        r.tps,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        batch,
        r.errors,
        lag_cell(&r.replication_lag)
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
    if args.workload == Workload::PointSelect {
        return crate::bench_reads::run(&args);
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a number of transactions per second above zero");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async {
        let max = args.clients.iter().copied().max().unwrap_or(1);
        let client = args.access.client(&args.url, max)?;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, client INTEGER, seq INTEGER, payload TEXT)",
            quote_ident(&args.table)
        );
        let mut text_key = args.text_key;
        let tried = if text_key {
            Err("a text key asked for".to_string())
        } else {
            client
                .execute(&[Statement::new(&create)])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        if let Err(e) = tried {
            // A multi-master node refuses INTEGER PRIMARY KEY (two masters would hand out the
            // same rowids): its table gets a text key made of the level, client and sequence.
            if !text_key && !e.contains("multi-master") {
                eprintln!("error: create the benchmark table: {e}");
                return Ok(1);
            }
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {} (id TEXT NOT NULL PRIMARY KEY, client INTEGER, seq INTEGER, payload TEXT)",
                quote_ident(&args.table)
            );
            if let Err(e) = client.execute(&[Statement::new(&create)]).await {
                // Another master runs schema changes; the table may be there already.
                if !e.to_string().contains("schema changes in multi-master mode run on node") {
                    eprintln!("error: create the benchmark table: {e}");
                    return Ok(1);
                }
            }
            text_key = true;
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
        say(&format!(
            "commit mode: {}; offered load: {}",
            args.commit.map_or_else(|| "the node's default".to_string(), |m| m.to_string()),
            args.rate.map_or_else(
                || "as fast as the clients get answers".to_string(),
                |r| format!("{r} tx/s over all clients")
            )
        ));
        say(&header());
        // Distinguishes this run's rows from earlier runs' in the `client` column.
        let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() % 1_000_000);
        let mut results = Vec::with_capacity(args.clients.len());
        for &c in &args.clients {
            let (r, first_error) = level(&client, &args, c, run_id, text_key).await?;
            say(&row(&r));
            if let Some(e) = first_error {
                eprintln!("  first error at {c} clients: {e}");
            }
            if let Some(rate) = args.rate {
                if r.tps < rate * 0.95 {
                    eprintln!(
                        "  at {c} clients only {:.0} of the offered {rate} tx/s completed: the node or the clients could not keep up",
                        r.tps
                    );
                }
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
                commit: args.commit.map(|m| m.to_string()),
                rate_tps: args.rate,
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
        let t = BodyTemplate::new("my \"t\"", 7, "a\"b", None, None);
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
    fn a_text_key_is_made_of_the_nonce_the_client_and_the_sequence() {
        let t = BodyTemplate::new("t", 7, "p", None, Some("n-1"));
        let body: serde_json::Value = serde_json::from_slice(&t.body(42)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"statements": [{
                "sql": "INSERT INTO \"t\" (id, client, seq, payload) VALUES (?4 || ':' || ?1 || ':' || ?2, ?1, ?2, ?3)",
                "params": [7, 42, "p", "n-1"],
            }]})
        );
    }

    #[test]
    fn the_body_carries_the_commit_mode_beside_the_statements() {
        for (mode, text) in [
            (CommitMode::Async, "async"),
            (CommitMode::SemiSync, "semi-sync"),
            (CommitMode::Sync, "sync"),
        ] {
            let t = BodyTemplate::new("t", 1, "p", Some(mode), None);
            let body: serde_json::Value = serde_json::from_slice(&t.body(3)).unwrap();
            assert_eq!(
                body,
                serde_json::json!({
                    "statements": [{
                        "sql": "INSERT INTO \"t\" (client, seq, payload) VALUES (?, ?, ?)",
                        "params": [1, 3, "p"],
                    }],
                    "commit": text,
                })
            );
        }
    }

    #[test]
    fn the_commit_flag_takes_the_three_modes() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(["bench"].iter().chain(extra))
                .map(|c| (c.bench.commit, c.bench.rate))
        };
        assert_eq!(parse(&[]).unwrap(), (None, None));
        assert_eq!(
            parse(&["--commit", "semi-sync", "--rate", "250.5"]).unwrap(),
            (Some(CommitMode::SemiSync), Some(250.5))
        );
        assert_eq!(
            parse(&["--commit", "sync"]).unwrap().0,
            Some(CommitMode::Sync)
        );
        let e = parse(&["--commit", "eventually"]).unwrap_err().to_string();
        assert!(e.contains("semi-sync"), "{e}");
    }

    fn level_result(lag: Vec<ReplicaLag>) -> LevelResult {
        LevelResult {
            clients: 64,
            tps: 12345.6,
            p50_ms: 4.5,
            p99_ms: 12.25,
            max_ms: 30.0,
            mean_batch: Some(3.0),
            errors: 0,
            replication_lag: lag,
        }
    }

    #[test]
    fn rows_line_up_with_the_header() {
        let mut r = level_result(Vec::new());
        r.mean_batch = None;
        assert_eq!(
            row(&r).len(),
            header().len() - "lag p50/p99 ms".len() + "n/a".len()
        );
        assert_eq!(row(&r).rfind("n/a"), header().find("lag p50/p99 ms"));
        assert!(row(&r).contains("12346"));
    }

    #[test]
    fn the_lag_column_lists_each_replica() {
        let r = level_result(vec![
            ReplicaLag {
                replica: "n2".into(),
                p50_ms: Some(0.4),
                p99_ms: Some(1.3),
                samples: 100,
            },
            ReplicaLag {
                replica: "n3".into(),
                p50_ms: None,
                p99_ms: None,
                samples: 0,
            },
        ]);
        let line = row(&r);
        assert_eq!(&line[header().find("lag").unwrap()..], "n2 0.40/1.3, n3 -");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["replication_lag"],
            serde_json::json!([
                {"replica": "n2", "p50_ms": 0.4, "p99_ms": 1.3, "samples": 100},
                {"replica": "n3", "p50_ms": null, "p99_ms": null, "samples": 0},
            ])
        );
    }

    const METRICS: &str = r#"# HELP scribe_replica_apply_lag_seconds Commit on the primary to apply on the replica.
# TYPE scribe_replica_apply_lag_seconds histogram
scribe_replica_apply_lag_seconds_bucket{replica="n2",le="0.001"} 10
scribe_replica_apply_lag_seconds_bucket{replica="n2",le="0.01"} 90
scribe_replica_apply_lag_seconds_bucket{replica="n2",le="0.1"} 100
scribe_replica_apply_lag_seconds_bucket{replica="n2",le="+Inf"} 100
scribe_replica_apply_lag_seconds_sum{replica="n2"} 0.5
scribe_replica_apply_lag_seconds_count{replica="n2"} 100
scribe_replica_apply_lag_seconds_bucket{le="0.01",replica="n3\""} 5 1700000000000
scribe_replica_apply_lag_seconds_bucket{le="+Inf",replica="n3\""} 6 1700000000000
scribe_replica_apply_lag_seconds_bucketx{replica="n9",le="1"} 7
scribe_replica_apply_lag_seconds_bucket{le="1"} 7
scribe_commits_total 42
"#;

    #[test]
    fn bucket_lines_are_read_per_replica() {
        let h = lag_histograms(METRICS);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["n2", "n3\""]);
        assert_eq!(
            h["n2"].buckets,
            [
                (0.001, 10.0),
                (0.01, 90.0),
                (0.1, 100.0),
                (f64::INFINITY, 100.0)
            ]
        );
        assert_eq!(h["n2"].samples(), 100.0);
        assert_eq!(h["n3\""].buckets, [(0.01, 5.0), (f64::INFINITY, 6.0)]);
        assert!(lag_histograms("scribe_commits_total 1\n").is_empty());
    }

    #[test]
    fn series_lines_parse_with_odd_labels_and_values() {
        assert_eq!(
            parse_series(r#"m{a="x,y}",b="q\\z\n"} +Inf"#, "m"),
            Some((
                vec![("a".into(), "x,y}".into()), ("b".into(), "q\\z\n".into())],
                f64::INFINITY
            ))
        );
        assert_eq!(
            parse_series(r#"m{a="1",} 2 17"#, "m"),
            Some((vec![("a".into(), "1".into())], 2.0))
        );
        assert_eq!(parse_series("m 3", "m"), Some((vec![], 3.0)));
        assert_eq!(parse_series("mm 3", "m"), None);
        assert_eq!(parse_series(r#"m{a="unterminated} 3"#, "m"), None);
        assert_eq!(parse_series(r#"m{a="1"} many"#, "m"), None);
    }

    #[test]
    fn deltas_are_taken_bucket_by_bucket() {
        let before = lag_histograms(METRICS);
        let after_text = METRICS
            .replace(r#"le="0.001"} 10"#, r#"le="0.001"} 30"#)
            .replace(r#"le="0.01"} 90"#, r#"le="0.01"} 190"#)
            .replace(r#"le="0.1"} 100"#, r#"le="0.1"} 300"#)
            .replace(r#"le="+Inf"} 100"#, r#"le="+Inf"} 300"#)
            + "scribe_replica_apply_lag_seconds_bucket{replica=\"n4\",le=\"0.001\"} 2\n\
               scribe_replica_apply_lag_seconds_bucket{replica=\"n4\",le=\"+Inf\"} 2\n";
        let after = lag_histograms(&after_text);
        let d = after["n2"].since(before.get("n2"));
        assert_eq!(
            d.buckets,
            [
                (0.001, 20.0),
                (0.01, 100.0),
                (0.1, 200.0),
                (f64::INFINITY, 200.0)
            ]
        );
        // New since the first reading: counted from zero.
        assert_eq!(after["n4"].since(before.get("n4")), after["n4"]);
        // Counts that went down: the series restarted, so the later reading is taken whole.
        assert_eq!(before["n2"].since(after.get("n2")), before["n2"]);

        let lag = replication_lag(&before, &after);
        assert_eq!(
            lag.iter()
                .map(|l| (l.replica.as_str(), l.samples))
                .collect::<Vec<_>>(),
            [("n2", 200), ("n3\"", 0), ("n4", 2)]
        );
        assert_eq!((lag[1].p50_ms, lag[1].p99_ms), (None, None));
        assert!(replication_lag(&before, &BTreeMap::new()).is_empty());
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 20 in [0, 1ms], 80 in (1ms, 10ms], 100 in (10ms, 100ms].
        let h = LagHistogram::from_buckets(vec![
            (f64::INFINITY, 200.0),
            (0.001, 20.0),
            (0.1, 200.0),
            (0.01, 100.0),
        ]);
        // The median, rank 100, is the last of the second bucket: its upper bound.
        assert!(close(h.quantile(0.5), 0.01), "{:?}", h.quantile(0.5));
        // Rank 10 is halfway through the first bucket, which starts at 0.
        assert!(close(h.quantile(0.05), 0.0005), "{:?}", h.quantile(0.05));
        // Rank 198 is 98 of 100 into (10ms, 100ms].
        assert!(
            close(h.quantile(0.99), 0.01 + 0.09 * 0.98),
            "{:?}",
            h.quantile(0.99)
        );
        assert!(close(h.quantile(1.0), 0.1));
        // Nothing observed: no estimate.
        assert_eq!(LagHistogram::default().quantile(0.5), None);
        assert_eq!(
            LagHistogram::from_buckets(vec![(0.1, 0.0), (f64::INFINITY, 0.0)]).quantile(0.5),
            None
        );
    }

    #[test]
    fn a_quantile_beyond_the_last_bound_is_that_bound() {
        let h = LagHistogram::from_buckets(vec![(0.001, 1.0), (0.01, 2.0), (f64::INFINITY, 10.0)]);
        assert!(close(h.quantile(0.99), 0.01));
        assert!(close(h.quantile(0.1), 0.001));
        assert_eq!(
            LagHistogram::from_buckets(vec![(f64::INFINITY, 5.0)]).quantile(0.5),
            None
        );
        // Series with the same bound (another label) add up.
        let two = LagHistogram::from_buckets(vec![(0.01, 1.0), (0.01, 2.0), (f64::INFINITY, 3.0)]);
        assert_eq!(two.buckets, [(0.01, 3.0), (f64::INFINITY, 3.0)]);
    }

    #[test]
    fn paced_clients_interleave_and_together_offer_the_rate() {
        let pacers: Vec<Pacer> = (0..4)
            .map(|client| Pacer {
                client,
                clients: 4,
                rate: 100.0,
            })
            .collect();
        // Each client every 40 ms, offset by 10 ms from the one before.
        assert_eq!(pacers[0].due(0), Some(Duration::ZERO));
        assert_eq!(pacers[1].due(0), Some(Duration::from_millis(10)));
        assert_eq!(pacers[0].due(1), Some(Duration::from_millis(40)));
        assert_eq!(pacers[3].due(2), Some(Duration::from_millis(110)));
        // Over one second the four send 100 requests, one every 10 ms.
        let mut dues: Vec<Duration> = pacers
            .iter()
            .flat_map(|p| (0..100).filter_map(|k| p.due(k)))
            .filter(|d| *d < Duration::from_secs(1))
            .collect();
        dues.sort();
        assert_eq!(dues.len(), 100);
        assert!(dues
            .windows(2)
            .all(|w| ((w[1] - w[0]).as_secs_f64() - 0.01).abs() < 1e-9));
        // A schedule too far ahead to represent ends the client instead of panicking.
        let slow = Pacer {
            client: 0,
            clients: 1,
            rate: 1e-300,
        };
        assert_eq!(slow.due(1), None);
    }
}
