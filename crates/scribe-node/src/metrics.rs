//! Renders the node's metrics in Prometheus' text exposition format for `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use scribe_core::HistogramSnapshot;

use crate::state::NodeState;

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn gauge_f64(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    histogram_series(out, name, "", h);
}

/// One histogram's series; `labels` is empty or `key="value",`.
fn histogram_series(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (le, n) in &h.buckets {
        let le = if le.is_infinite() {
            "+Inf".to_string()
        } else {
            format!("{le}")
        };
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {n}");
    }
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() {
        String::new()
    } else {
        format!("{{{plain}}}")
    };
    let _ = writeln!(
        out,
        "{name}_sum{braces} {}\n{name}_count{braces} {}",
        h.sum, h.count
    );
}

/// A multi-master node's version vector and its links to its peers' logs.
fn multi_master(out: &mut String, state: &NodeState) {
    let Some(mm) = &state.mm else { return };
    let st = state.engine.mm_status().unwrap_or_default();
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    header(
        out,
        "scribe_mm_applied_seq",
        "gauge",
        "The version vector: the last sequence number applied from each origin.",
    );
    for (origin, seq) in st.vv.iter() {
        let _ = writeln!(
            out,
            "scribe_mm_applied_seq{{origin=\"{origin}\"}} {}",
            seq.0
        );
    }
    header(
        out,
        "scribe_mm_conflicts",
        "gauge",
        "Unresolved conflicts of versioned tables, by table.",
    );
    for (table, n) in &st.conflicts {
        let _ = writeln!(
            out,
            "scribe_mm_conflicts{{table=\"{}\"}} {n}",
            table.replace('"', "'")
        );
    }
    let links = mm.links();
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::multi_master::PeerLink) -> u64,
    );
    let series: [Series; 5] = [
        ("scribe_mm_peer_connected", "gauge", "1 while this node streams the peer's log.", |l| l.connected as u64),
        ("scribe_mm_peer_lag_records", "gauge", "Records of the peer's log this node has not applied.", |l| l.lag_records),
        ("scribe_mm_peer_lag_ms", "gauge", "How far this node's copy of the peer's log is behind its newest record, in milliseconds (0 when caught up).", |l| l.lag_ms),
        ("scribe_mm_peer_records_applied_total", "counter", "Records of the peer's log applied here (new to this node), since start.", |l| l.records_applied),
        ("scribe_mm_peer_records_duplicate_total", "counter", "Records of the peer's log skipped as already applied (from another peer), since start.", |l| l.records_duplicate),
    ];
    for (name, kind, help, f) in series {
        header(out, name, kind, help);
        for l in &links {
            let _ = writeln!(out, "{name}{{peer=\"{}\"}} {}", l.name, f(l));
        }
    }
}

/// Per-replica series, on a primary.
fn replicas(out: &mut String, state: &NodeState) {
    if !state.leadership.is_primary() {
        return;
    }
    let views = state.registry.views(state.engine.progress().flushed.lsn);
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    header(
        out,
        "scribe_replica_connected",
        "gauge",
        "1 when the replica is connected.",
    );
    for r in &views {
        let up = r.view.state != crate::replication::registry::ReplicaState::Disconnected;
        let _ = writeln!(
            out,
            "scribe_replica_connected{{replica=\"{}\"}} {}",
            r.view.name, up as u8
        );
    }
    header(
        out,
        "scribe_replica_lsn",
        "gauge",
        "The replica's written, flushed and applied LSN.",
    );
    for r in &views {
        for (kind, v) in [
            ("written", r.view.written_lsn),
            ("flushed", r.view.flushed_lsn),
            ("applied", r.view.applied_lsn),
        ] {
            let _ = writeln!(
                out,
                "scribe_replica_lsn{{replica=\"{}\",kind=\"{kind}\"}} {v}",
                r.view.name
            );
        }
    }
    header(
        out,
        "scribe_replica_lag_records",
        "gauge",
        "Records flushed on the primary and not applied on the replica.",
    );
    for r in &views {
        let _ = writeln!(
            out,
            "scribe_replica_lag_records{{replica=\"{}\"}} {}",
            r.view.name, r.view.lag_records
        );
    }
    header(
        out,
        "scribe_replica_lag_bytes",
        "gauge",
        "Bytes sent to the replica and not yet applied there.",
    );
    for r in &views {
        let _ = writeln!(
            out,
            "scribe_replica_lag_bytes{{replica=\"{}\"}} {}",
            r.view.name, r.view.lag_bytes
        );
    }
    header(out, "scribe_replica_lag_seconds", "gauge", "Age of the oldest record the replica has not written, flushed or applied (0 when caught up).");
    for r in &views {
        for (kind, v) in [
            ("write", r.view.write_lag_ms),
            ("flush", r.view.flush_lag_ms),
            ("apply", r.view.apply_lag_ms),
        ] {
            if let Some(ms) = v {
                let _ = writeln!(
                    out,
                    "scribe_replica_lag_seconds{{replica=\"{}\",kind=\"{kind}\"}} {}",
                    r.view.name,
                    ms / 1000.0
                );
            }
        }
    }
    header(out, "scribe_replica_apply_lag_seconds", "histogram", "Per transaction: time from its commit on the primary to the primary learning the replica applied it.");
    for r in &views {
        histogram_series(
            out,
            "scribe_replica_apply_lag_seconds",
            &format!("replica=\"{}\",", r.view.name),
            &r.apply_lag.snapshot(),
        );
    }
}

/// The lease (on a primary), the control plane (in cluster mode) and the roll-backs.
fn leadership(out: &mut String, state: &NodeState, view: &crate::leadership::ControlView) {
    if let Some(lease) = crate::status::LeaseStatus::of(view, std::time::Instant::now()) {
        gauge(
            out,
            "scribe_lease_held",
            "(primary) 1 while it holds its lease (always, for a primary by configuration).",
            lease.held as u64,
        );
        if let Some(ms) = lease.remaining_ms {
            gauge_f64(
                out,
                "scribe_lease_remaining_seconds",
                "(primary) Until its lease runs out unless renewed.",
                ms as f64 / 1000.0,
            );
        }
    }
    if let Some(plane) = &state.control {
        let raft = plane.raft_status();
        gauge(
            out,
            "scribe_raft_leader",
            "1 on the leader of the control plane's Raft group.",
            (raft.role == crate::control::Role::Leader) as u64,
        );
        let term = plane.state().borrow().term;
        counter(
            out,
            "scribe_failovers_total",
            "Changes of primary since the cluster was bootstrapped (its term - 1), as this node's control state has them.",
            term.0.saturating_sub(1),
        );
    }
    let rollbacks = state.follower.view().rollbacks;
    counter(
        out,
        "scribe_rollbacks_total",
        "Roll-backs this node did since start to rejoin a new primary.",
        rollbacks.len() as u64,
    );
    counter(
        out,
        "scribe_rolled_back_transactions_total",
        "Transactions those roll-backs undid (listed in their rollback files).",
        rollbacks.iter().map(|r| r.transactions).sum(),
    );
}

/// The metrics page.
pub fn render(state: &NodeState) -> String {
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
    let view = state.leadership.view();
    gauge(
        &mut out,
        "scribe_term",
        "The node's current term (as in /v1/status: its view's or its log's, the larger).",
        view.term.max(p.last.term).0,
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
    gauge(
        &mut out,
        "scribe_log_first_lsn",
        "Oldest record still held in the change log.",
        m.log_first_lsn.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "scribe_log_segments_deleted_total",
        "Change-log segments deleted by retention.",
        m.segments_deleted.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "scribe_is_primary",
        "1 on the primary, 0 on a replica.",
        state.leadership.is_primary() as u64,
    );
    gauge(
        &mut out,
        "scribe_is_witness",
        "1 on a witness (a cluster member that votes in the control plane but holds no data), 0 on a data node.",
        state.is_witness() as u64,
    );
    counter(
        &mut out,
        "scribe_write_gate_refusals_total",
        "Client writes refused by the write gate (not the primary, or its lease ran out).",
        m.gate_refusals.load(Ordering::Relaxed),
    );
    leadership(&mut out, state, &view);
    replicas(&mut out, state);
    multi_master(&mut out, state);
    let _ = writeln!(out, "# HELP scribe_http_requests_total HTTP requests answered, by route and status.\n# TYPE scribe_http_requests_total counter");
    for ((route, code), n) in state.requests.lock().expect("request counts").iter() {
        let _ = writeln!(
            out,
            "scribe_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
        );
    }
    out
}
