//! Periodic samples of the primary: resident memory and open descriptors from `/proc`, change-log
//! and database size on disk, and the soak's cumulative counters at that moment.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Cumulative counts shared by every client task.
#[derive(Default)]
pub struct Counters {
    /// Writes acknowledged (HTTP 200).
    pub writes: AtomicU64,
    /// Reads answered (HTTP 200).
    pub reads: AtomicU64,
    /// Read-your-writes violations: a session read of an acknowledged row that did not see it.
    pub stale_reads: AtomicU64,
    /// Errors by `write:`/`read:` kind.
    pub errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// Counts an error of `kind`.
    pub fn error(&self, kind: String) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }

    /// A copy of the errors by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// One sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    /// VmRSS of the primary, bytes (`None` when it could not be read).
    pub rss: Option<u64>,
    /// Open file descriptors of the primary.
    pub fds: Option<u64>,
    /// Bytes under DATA/log.
    pub log_bytes: u64,
    /// Bytes under DATA/db.
    pub db_bytes: u64,
    /// Cumulative acknowledged writes, answered reads, errors.
    pub writes: u64,
    pub reads: u64,
    pub errors: u64,
}

/// Sum of the sizes of the files under `dir`, recursively (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// VmRSS of `pid` in bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The VmRSS line of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

fn fds_of(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

impl Sample {
    /// Samples the primary (`pid`, data directory `data`) and the counters `c`.
    pub fn take(at: Duration, pid: Option<u32>, data: &Path, c: &Counters) -> Sample {
        Sample {
            at,
            rss: pid.and_then(rss_of),
            fds: pid.and_then(fds_of),
            log_bytes: dir_bytes(&data.join("log")),
            db_bytes: dir_bytes(&data.join("db")),
            writes: c.writes.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            errors: c.errors().values().sum(),
        }
    }

    /// One line for the console.
    pub fn line(&self) -> String {
        format!(
            "[{:>6.0}s] rss {} MiB  fds {}  log {:.1} MiB  db {:.1} MiB  writes {}  reads {}  errors {}",
            self.at.as_secs_f64(),
            self.rss.map(|b| format!("{:.1}", mib(b))).unwrap_or_else(|| "?".into()),
            self.fds.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
            mib(self.log_bytes),
            mib(self.db_bytes),
            self.writes,
            self.reads,
            self.errors
        )
    }
}

/// Bytes as MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_in_bytes() {
        let status = "Name:\tscribe\nVmPeak:\t  900 kB\nVmRSS:\t   51200 kB\nThreads: 9\n";
        assert_eq!(parse_vm_rss(status), Some(50 << 20));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }
}
