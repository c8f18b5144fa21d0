//! Renders the node's metrics in Prometheus' text exposition format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use scribe_core::HistogramSnapshot;

use crate::api::AppState;

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, n) in &h.buckets {
        let le = if le.is_infinite() {
            "+Inf".to_string()
        } else {
            format!("{le}")
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
}

/// The metrics page.
pub fn render(state: &AppState) -> String {
    let m = state.engine.metrics();
    let p = state.engine.progress();
    let mut out = String::with_capacity(4096);
    counter(
        &mut out,
        "scribe_commits_total",
        "Transactions committed (logged, fsynced and applied).",
        m.commits.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "scribe_commit_batches_total",
        "Group-commit batches written, one log fsync each.",
        m.batches.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "scribe_transaction_errors_total",
        "Transactions that failed and left no trace.",
        m.txn_errors.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "scribe_log_written_bytes_total",
        "Bytes appended to the change log.",
        m.log_bytes_written.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "scribe_log_size_bytes",
        "Bytes of change log on disk.",
        m.log_size_bytes.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "scribe_replayed_records",
        "Records replayed from the log into SQLite at start-up.",
        m.replayed.load(Ordering::Relaxed),
    );
    histogram(
        &mut out,
        "scribe_commit_batch_size",
        "Transactions per group-commit batch.",
        &m.batch_size.snapshot(),
    );
    histogram(
        &mut out,
        "scribe_log_fsync_seconds",
        "Duration of change-log fsyncs.",
        &m.fsync_seconds.snapshot(),
    );
    gauge(
        &mut out,
        "scribe_term",
        "The node's current term.",
        p.last.term.0,
    );
    gauge(
        &mut out,
        "scribe_last_lsn",
        "Last record appended to the log.",
        p.last.lsn.0,
    );
    gauge(
        &mut out,
        "scribe_flushed_lsn",
        "Last record fsynced in the log.",
        p.flushed.lsn.0,
    );
    gauge(
        &mut out,
        "scribe_applied_lsn",
        "Last record applied to SQLite.",
        p.applied.lsn.0,
    );
    gauge(
        &mut out,
        "scribe_accepting_writes",
        "1 when the node takes writes.",
        state.engine.write_failure().is_none() as u64,
    );
    let _ = writeln!(out, "# HELP scribe_http_requests_total HTTP requests answered, by route and status.\n# TYPE scribe_http_requests_total counter");
    for ((route, code), n) in state.requests.lock().expect("request counts").iter() {
        let _ = writeln!(
            out,
            "scribe_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
        );
    }
    out
}
