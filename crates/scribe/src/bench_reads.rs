//! `scribe bench --workload point-select`: the read benchmark. N clients read one row by primary
//! key (`SELECT payload FROM bench_read WHERE id = ?`, a random id each time) through the Rust
//! client library, as fast as answers come back. With `--cluster` the library spreads the reads
//! over the replicas it finds (the primary as fallback); `--consistency strong` sends every read
//! to the primary. With
//! `--consistency session` every read carries a position token (of the benchmark's last write,
//! which every node has applied before the measurement starts), so the difference to `stale` is
//! the cost of the check. It prints reads per second, latency percentiles, and how many reads each
//! node served.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use scribe_client::{Cluster, Consistency, Statement};

use crate::bench::{BenchArgs, Latencies, ReadConsistency};

const TABLE: &str = "bench_read";

/// Creates and fills the table up to `rows` rows, in chunks of 50,000.
async fn prepare(cluster: &Cluster, rows: u64) -> anyhow::Result<()> {
    cluster
        .execute([Statement::new(format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)"
        ))])
        .await
        .context("create the read benchmark's table")?;
    let mut have = 0u64;
    while have < rows {
        let upto = (have + 50_000).min(rows);
        cluster
            .execute([Statement::new(format!(
                "WITH RECURSIVE c(x) AS (SELECT {first} UNION ALL SELECT x + 1 FROM c WHERE x < {upto}) \
                 INSERT OR IGNORE INTO {TABLE} (id, payload) SELECT x, printf('%0100d', x) FROM c",
                first = have + 1
            ))])
            .await
            .context("fill the read benchmark's table")?;
        have = upto;
    }
    Ok(())
}

struct Run {
    samples_us: Vec<u32>,
    served: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn client_loop(
    cluster: Arc<Cluster>,
    consistency: Consistency,
    rows: u64,
    warmup_until: Instant,
    stop_at: Instant,
) -> Run {
    let mut run = Run {
        samples_us: Vec::with_capacity(1 << 16),
        served: BTreeMap::new(),
        errors: 0,
        first_error: None,
    };
    let sql = format!("SELECT payload FROM {TABLE} WHERE id = ?");
    loop {
        let now = Instant::now();
        if now >= stop_at {
            return run;
        }
        let id = fastrand::u64(1..=rows) as i64;
        let r = cluster.query_with(&sql, [id], consistency).await;
        let took = now.elapsed();
        if now < warmup_until {
            continue;
        }
        match r {
            Ok(rows) => {
                run.samples_us
                    .push(took.as_micros().min(u32::MAX as u128) as u32);
                let by = rows.served_by.unwrap_or(rows.url);
                *run.served.entry(by).or_default() += 1;
            }
            Err(e) => {
                run.errors += 1;
                run.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Runs the point-select benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async {
        let urls = if args.cluster.is_empty() {
            vec![args.url.clone()]
        } else {
            args.cluster.clone()
        };
        let cluster = Arc::new(
            Cluster::connect(&urls)
                .await
                .map_err(|e| anyhow!("connect to {urls:?}: {e}"))?,
        );
        let rows = args.rows.max(1);
        prepare(&cluster, rows).await?;
        let consistency = match args.consistency {
            ReadConsistency::Stale => Consistency::Stale { max_lag: None },
            ReadConsistency::Session => Consistency::Session,
            ReadConsistency::Strong => Consistency::Strong,
        };
        // The rows should be everywhere before anything is measured: a session read proves it for
        // the node that serves it, and the pause lets the others finish applying.
        cluster
            .query_with(&format!("SELECT count(*) FROM {TABLE}"), (), Consistency::Session)
            .await
            .context("wait for the replicas to have the rows")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!(
            "point-select benchmark through the client library: {} ({} rows, consistency {:?}), {} per level after {} warm-up",
            urls.join(", "),
            rows,
            args.consistency,
            humantime::format_duration(args.duration),
            humantime::format_duration(args.warmup)
        );
        println!(
            "{:>8} {:>10} {:>9} {:>9} {:>9} {:>8}  served by",
            "clients", "reads/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        let mut failed = false;
        for &c in &args.clients {
            let start = Instant::now();
            let warmup_until = start + args.warmup;
            let stop_at = warmup_until + args.duration;
            let tasks: Vec<_> = (0..c)
                .map(|_| {
                    tokio::spawn(client_loop(
                        cluster.clone(),
                        consistency,
                        rows,
                        warmup_until,
                        stop_at,
                    ))
                })
                .collect();
            let mut samples = Vec::with_capacity(c);
            let mut served: BTreeMap<String, u64> = BTreeMap::new();
            let mut errors = 0;
            let mut first_error = None;
            for t in tasks {
                let r = t.await.context("a benchmark client panicked")?;
                samples.push(r.samples_us);
                for (k, v) in r.served {
                    *served.entry(k).or_default() += v;
                }
                errors += r.errors;
                if first_error.is_none() {
                    first_error = r.first_error;
                }
            }
            let lat = Latencies::from_samples(samples);
            let total: u64 = served.values().sum();
            let spread = served
                .iter()
                .map(|(k, v)| format!("{k} {:.0}%", *v as f64 * 100.0 / total.max(1) as f64))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>8}  {}",
                c,
                lat.count() as f64 / args.duration.as_secs_f64(),
                lat.quantile_ms(0.5),
                lat.quantile_ms(0.99),
                lat.max_ms(),
                errors,
                spread
            );
            if let Some(e) = first_error {
                eprintln!("  first error at {c} clients: {e}");
                failed = true;
            }
        }
        Ok(if failed { 1 } else { 0 })
    })
}
