//! [`EngineMetrics`]: counters and histograms of the write path, shared with the node, which
//! renders them for Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};

use scribe_core::Histogram;

/// Write-path metrics. Counters only grow; gauges hold the latest value.
#[derive(Debug)]
pub struct EngineMetrics {
    /// Transactions committed (logged and applied).
    pub commits: AtomicU64,
    /// Transactions that failed and left no trace.
    pub txn_errors: AtomicU64,
    /// Group-commit batches written (one fsync each).
    pub batches: AtomicU64,
    /// Bytes appended to the change log.
    pub log_bytes_written: AtomicU64,
    /// Bytes of change log on disk (gauge).
    pub log_size_bytes: AtomicU64,
    /// Oldest LSN still held in the change log (gauge).
    pub log_first_lsn: AtomicU64,
    /// Log segments deleted by retention.
    pub segments_deleted: AtomicU64,
    /// Records replayed from the log at start-up.
    pub replayed: AtomicU64,
    /// Client writes refused by the write gate (not the primary, lease run out), each leaving
    /// no trace: transactions, transaction starts and optimistic statements.
    pub gate_refusals: AtomicU64,
    /// Transactions per group-commit batch.
    pub batch_size: Histogram,
    /// Seconds per log fsync.
    pub fsync_seconds: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            commits: AtomicU64::new(0),
            txn_errors: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            log_bytes_written: AtomicU64::new(0),
            log_size_bytes: AtomicU64::new(0),
            log_first_lsn: AtomicU64::new(1),
            segments_deleted: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            gate_refusals: AtomicU64::new(0),
            batch_size: Histogram::exponential(1.0, 2.0, 11),
            fsync_seconds: Histogram::exponential(0.000_05, 2.0, 16),
        }
    }
}

impl EngineMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
