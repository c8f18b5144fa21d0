//! The checks: the write-gate intervals kept while a schedule runs, and at its end split brain
//! (two gates open at once), convergence of every node's log and control state, acknowledged
//! writes lost or undone, and terms that go back.

use std::collections::{HashMap, HashSet};

use scribe_core::CommitMode;

use crate::node::Rec;
use crate::report::Report;
use crate::setup::Writer;
use crate::sim::Sim;
use crate::END;

impl Sim {
    /// Keeps the real-time intervals during which each node's gate is open.
    pub(crate) fn track_gate(&mut self, n: usize) {
        let now = self.now;
        let open = self.gate_open(n).then(|| {
            let node = &self.nodes[n];
            let end = match self.setup.writer {
                Writer::IgnoresLease => u64::MAX,
                Writer::Leased => {
                    let until = node.held.until().expect("an open gate has a lease");
                    node.real_at((until - self.base).as_nanos() as u64)
                }
            };
            (end, node.ctl.term.0)
        });
        match (self.gates[n], open) {
            (Some((s, e, term)), Some((e2, term2))) if e > now && term == term2 => {
                self.gates[n] = Some((s, e2.max(now), term));
            }
            (cur, open) => {
                if let Some((s, e, term)) = cur {
                    self.intervals.push((s, e.min(now), n, term));
                }
                self.gates[n] = open.map(|(e, term)| (now, e, term));
            }
        }
    }

    pub(crate) fn finish(mut self) -> Report {
        self.now = END;
        for n in 0..self.nodes.len() {
            if let Some((s, e, term)) = self.gates[n].take() {
                self.intervals.push((s, e.min(END), n, term));
            }
        }
        // (1) No two gates open at once.
        let mut iv = self.intervals.clone();
        iv.retain(|(s, e, _, _)| s < e);
        iv.sort();
        'outer: for i in 0..iv.len() {
            for j in i + 1..iv.len() {
                let (s1, e1, n1, t1) = iv[i];
                let (s2, e2, n2, t2) = iv[j];
                if s2 >= e1 {
                    break;
                }
                if n1 != n2 && s2 < e1 && s1 < e2 {
                    let v = format!(
                        "split brain: {} (term {t1}) and {} (term {t2}) both had an open write gate during [{:.3}, {:.3}) ms",
                        self.nodes[n1].name,
                        self.nodes[n2].name,
                        s2 as f64 / 1000.0,
                        e1.min(e2) as f64 / 1000.0
                    );
                    self.violation(v);
                    break 'outer;
                }
            }
        }
        // (3) Convergence.
        let primary = self.auth.primary.clone().and_then(|p| self.index(&p));
        let Some(fp) = primary else {
            self.violation("no primary at the end".into());
            return self.report();
        };
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            let (witness, diverged) = (node.witness, node.log != self.nodes[fp].log);
            if node.ctl.term != self.auth.term || node.ctl.primary != self.auth.primary {
                let v = format!(
                    "{}: control state did not converge (applied {} of {}, term {} vs {})",
                    node.name,
                    node.ctl_applied,
                    self.raft_log.len(),
                    node.ctl.term,
                    self.auth.term
                );
                self.violation(v);
            }
            if witness || n == fp {
                continue;
            }
            if diverged {
                let node = &self.nodes[n];
                let shared = node
                    .log
                    .iter()
                    .zip(&self.nodes[fp].log)
                    .take_while(|(a, b)| a == b)
                    .count();
                let v = format!(
                    "did not converge: {} has {} records, the primary {} has {}, they share {shared}",
                    node.name,
                    node.log.len(),
                    self.nodes[fp].name,
                    self.nodes[fp].log.len()
                );
                self.violation(v);
            }
        }
        // (2) Acknowledged writes.
        let final_log: HashSet<Rec> = self.nodes[fp].log.iter().copied().collect();
        let undone: HashMap<Rec, &'static str> =
            self.undone.iter().map(|&(r, _, how)| (r, how)).collect();
        self.stats.undone = self.undone.len() as u64;
        let mut lost = Vec::new();
        for rec in &self.acked {
            if !final_log.contains(rec) {
                lost.push(*rec);
            }
        }
        if self.setup.mode == CommitMode::Async {
            self.stats.lost_async = lost.len() as u64;
            for rec in lost {
                if !undone.contains_key(&rec) {
                    self.violation(format!(
                        "async: acknowledged write {rec:?} is lost but no rewind undid it"
                    ));
                }
            }
        } else {
            for rec in lost {
                self.violation(format!(
                    "{}: acknowledged write {rec:?} is not in the final primary's log",
                    self.setup.mode
                ));
            }
            let acked: HashSet<Rec> = self.acked.iter().copied().collect();
            let bad: Vec<(Rec, usize, &'static str)> = self
                .undone
                .iter()
                .filter(|(r, _, _)| acked.contains(r))
                .copied()
                .collect();
            for (rec, n, how) in bad {
                let v = format!(
                    "{}: a {how} on {} undid acknowledged write {rec:?}",
                    self.setup.mode, self.nodes[n].name
                );
                self.violation(v);
            }
        }
        // (4) Terms in every log never decrease.
        for node in &self.nodes {
            if node.log.windows(2).any(|w| w[1].term < w[0].term) {
                let v = format!("{}: log terms decrease", node.name);
                self.violations.push(v);
            }
        }
        self.report()
    }

    fn report(self) -> Report {
        Report {
            seed: 0,
            setup: self.setup,
            stats: self.stats,
            violations: self.violations,
        }
    }
}
