//! The final report: what ran, what it saw, the verdict per node, and whether the soak passed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::runaway::Runaway;
use crate::sample::{mib, Sample};

/// The verdict on one node.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub node: String,
    /// Acknowledged rows checked.
    pub acked_checked: u64,
    /// Acknowledged rows absent.
    pub missing: u64,
    /// Acknowledged rows with another version than the last acknowledged one.
    pub wrong: u64,
    /// Unknown-outcome rows in a state no possibility allows.
    pub impossible: u64,
    /// Unknown-outcome rows present here.
    pub unknown_present: u64,
    /// Unknown-outcome rows absent here.
    pub unknown_absent: u64,
    /// Unknown-outcome rows whose state differs from the primary's.
    pub unknown_inconsistent: u64,
    /// Rows present that no acknowledged or unknown write created.
    pub phantom: u64,
    /// Rows in the runaway table.
    pub runaway_rows: i64,
    /// What could not be checked (the node did not answer).
    pub error: Option<String>,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.error.is_none()
            && self.missing == 0
            && self.wrong == 0
            && self.impossible == 0
            && self.unknown_inconsistent == 0
            && self.phantom == 0
            && self.runaway_rows == 0
    }
}

/// Everything the soak reports.
#[derive(Debug, Default)]
pub struct Report {
    pub duration: Duration,
    pub clients: usize,
    pub writes: u64,
    pub reads: u64,
    pub stale_reads: u64,
    pub acked_rows: u64,
    pub unknown_rows: u64,
    pub errors: BTreeMap<String, u64>,
    pub kills: Vec<String>,
    pub runaways: Vec<Runaway>,
    pub samples: Vec<Sample>,
    /// Why the replicas did not catch up at the end (`None`: they did).
    pub not_caught_up: Option<String>,
    pub verdicts: Vec<Verdict>,
    pub statement_timeout: Duration,
}

fn opt(v: Option<u64>, f: impl Fn(u64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "?".into())
}

impl Report {
    /// Whether the soak passed: every acknowledged write everywhere with its value, unknown
    /// outcomes consistent, nothing of the runaways, every runaway stopped in time, no stale
    /// session read, the replicas caught up.
    pub fn passed(&self) -> bool {
        self.not_caught_up.is_none()
            && self.stale_reads == 0
            && !self.verdicts.is_empty()
            && self.verdicts.iter().all(Verdict::ok)
            && self.runaways.iter().all(|r| r.in_time)
    }

    /// The start, middle and end samples.
    fn key_samples(&self) -> Vec<(&'static str, &Sample)> {
        let n = self.samples.len();
        match n {
            0 => vec![],
            _ => vec![
                ("start", &self.samples[0]),
                ("middle", &self.samples[n / 2]),
                ("end", &self.samples[n - 1]),
            ],
        }
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let secs = self.duration.as_secs_f64();
        let _ = writeln!(s, "# Soak report\n");
        let _ = writeln!(
            s,
            "**Verdict: {}**\n",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| duration of load | {secs:.0} s ({:.1} min) |",
            secs / 60.0
        );
        let _ = writeln!(s, "| clients | {} |", self.clients);
        let _ = writeln!(
            s,
            "| writes acknowledged | {} ({:.1}/s) |",
            self.writes,
            self.writes as f64 / secs.max(1.0)
        );
        let _ = writeln!(
            s,
            "| reads answered | {} ({:.1}/s) |",
            self.reads,
            self.reads as f64 / secs.max(1.0)
        );
        let _ = writeln!(s, "| rows acknowledged | {} |", self.acked_rows);
        let _ = writeln!(s, "| rows of unknown outcome | {} |", self.unknown_rows);
        let _ = writeln!(s, "| stale session reads | {} |", self.stale_reads);
        let _ = writeln!(
            s,
            "| replica kills (SIGKILL + restart) | {} |",
            self.kills.len()
        );
        let _ = writeln!(
            s,
            "| replicas caught up at the end | {} |",
            match &self.not_caught_up {
                None => "yes".to_string(),
                Some(e) => format!("NO: {e}"),
            }
        );

        let _ = writeln!(s, "\n## Errors by kind\n");
        if self.errors.is_empty() {
            let _ = writeln!(s, "none");
        } else {
            let _ = writeln!(s, "| kind | count |\n|---|---|");
            for (k, n) in &self.errors {
                let _ = writeln!(s, "| {k} | {n} |");
            }
        }

        let _ = writeln!(s, "\n## Kills\n");
        for k in &self.kills {
            let _ = writeln!(s, "- {k}");
        }

        let _ = writeln!(
            s,
            "\n## Runaways (statement timeout {})\n",
            humantime::format_duration(self.statement_timeout)
        );
        let _ = writeln!(
            s,
            "| at | kind | ended | after | in time |\n|---|---|---|---|---|"
        );
        for r in &self.runaways {
            let _ = writeln!(
                s,
                "| {:.0} s | {} | {} | {:.2} s | {} |",
                r.at.as_secs_f64(),
                r.kind,
                r.ended,
                r.took.as_secs_f64(),
                if r.in_time { "yes" } else { "NO" }
            );
        }

        let _ = writeln!(s, "\n## Primary over time\n");
        let _ = writeln!(
            s,
            "| sample | at | RSS MiB | fds | log MiB | DB MiB | writes | reads | errors |\n|---|---|---|---|---|---|---|---|---|"
        );
        for (name, x) in self.key_samples() {
            let _ = writeln!(
                s,
                "| {name} | {:.0} s | {} | {} | {:.1} | {:.1} | {} | {} | {} |",
                x.at.as_secs_f64(),
                opt(x.rss, |b| format!("{:.1}", mib(b))),
                opt(x.fds, |n| n.to_string()),
                mib(x.log_bytes),
                mib(x.db_bytes),
                x.writes,
                x.reads,
                x.errors
            );
        }
        let peak = self.samples.iter().filter_map(|x| x.rss).max();
        let _ = writeln!(
            s,
            "\nPeak RSS over {} samples: {} MiB.",
            self.samples.len(),
            opt(peak, |b| format!("{:.1}", mib(b)))
        );

        let _ = writeln!(s, "\n## Verdict per node\n");
        let _ = writeln!(
            s,
            "| node | acknowledged rows checked | missing acknowledged writes | wrong value | unknown present / absent | unknown inconsistent with primary | impossible | phantom | runaway rows | ok |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for v in &self.verdicts {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |",
                v.node,
                v.acked_checked,
                v.missing,
                v.wrong,
                v.unknown_present,
                v.unknown_absent,
                v.unknown_inconsistent,
                v.impossible,
                v.phantom,
                v.runaway_rows,
                match &v.error {
                    None if v.ok() => "yes".to_string(),
                    None => "NO".to_string(),
                    Some(e) => format!("NO: {e}"),
                }
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> Report {
        Report {
            verdicts: vec![Verdict {
                node: "n1".into(),
                acked_checked: 10,
                ..Verdict::default()
            }],
            ..Report::default()
        }
    }

    #[test]
    fn a_missing_acknowledged_write_or_a_late_runaway_fails_the_soak() {
        assert!(passing().passed());
        let mut r = passing();
        r.verdicts[0].missing = 1;
        assert!(!r.passed());
        assert!(r.markdown().contains("**Verdict: FAIL**"));
        let mut r = passing();
        r.runaways.push(Runaway {
            kind: "write",
            at: Duration::ZERO,
            ended: "client_timeout".into(),
            took: Duration::from_secs(28),
            in_time: false,
        });
        assert!(!r.passed());
        let mut r = passing();
        r.not_caught_up = Some("n2 behind".into());
        assert!(!r.passed());
    }
}
