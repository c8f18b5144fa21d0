//! What one client knows about its rows: for every row it tried to write, the value it must have
//! now (acknowledged) or the values it may have (outcome unknown), and the check of a node's
//! rows against that. Plain data, no I/O.
//!
//! A row is `(client, seq)` with an integer version `v` (0 on insert, +1 per update). A client
//! updates only rows whose value it knows exactly, so the possibilities of a row never grow past
//! one unknown step.

use std::collections::BTreeMap;

/// What a row must look like on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Acknowledged: present with exactly this version.
    Exact(i64),
    /// Outcome unknown: absent (if `absent_ok`) or present with one of `versions`.
    OneOf { absent_ok: bool, versions: Vec<i64> },
}

/// One client's rows. Invariant: a seq is in `rows` iff the client sent a write creating it
/// whose outcome was acknowledged or unknown; a seq the client used for a write that failed
/// cleanly is in `failed`.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Expected state by seq.
    pub rows: BTreeMap<i64, Expect>,
    /// Seqs whose insert failed leaving no trace: they must be absent everywhere.
    pub failed: Vec<i64>,
    /// The position token of the client's last acknowledged write.
    pub position: Option<String>,
}

/// A write the client sends in one transaction: rows it inserts and rows it updates (seq, new
/// version).
#[derive(Debug, Default, Clone)]
pub struct Write {
    pub inserts: Vec<i64>,
    pub updates: Vec<(i64, i64)>,
}

/// How a write ended, as far as the ledger cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Acked,
    Failed,
    Unknown,
}

/// What a check of one client's rows on one node found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Acknowledged rows absent.
    pub missing: u64,
    /// Acknowledged rows present with another version.
    pub wrong: u64,
    /// Unknown-outcome rows in a state none of the possibilities allows.
    pub impossible: u64,
    /// Rows present that no acknowledged or unknown write created (a failed write left a trace).
    pub phantom: u64,
    /// Acknowledged rows checked.
    pub acked_checked: u64,
    /// The observed state of every unknown-outcome row (`None`: absent), to compare nodes.
    pub unknown_seen: BTreeMap<i64, Option<i64>>,
}

impl Ledger {
    /// Rows the client may update: those whose version it knows.
    pub fn exact_rows(&self) -> Vec<(i64, i64)> {
        self.rows
            .iter()
            .filter_map(|(s, e)| match e {
                Expect::Exact(v) => Some((*s, *v)),
                Expect::OneOf { .. } => None,
            })
            .collect()
    }

    /// Records how `write` ended; `position` is the token of an acknowledged one.
    pub fn record(&mut self, write: &Write, ended: Ended, position: Option<String>) {
        match ended {
            Ended::Acked => {
                for s in &write.inserts {
                    self.rows.insert(*s, Expect::Exact(0));
                }
                for (s, v) in &write.updates {
                    self.rows.insert(*s, Expect::Exact(*v));
                }
                if position.is_some() {
                    self.position = position;
                }
            }
            Ended::Failed => self.failed.extend(write.inserts.iter().copied()),
            Ended::Unknown => {
                for s in &write.inserts {
                    self.rows.insert(
                        *s,
                        Expect::OneOf {
                            absent_ok: true,
                            versions: vec![0],
                        },
                    );
                }
                for (s, v) in &write.updates {
                    // Only exact rows are updated: the old version or the new one.
                    let old = match self.rows.get(s) {
                        Some(Expect::Exact(old)) => *old,
                        _ => v - 1,
                    };
                    self.rows.insert(
                        *s,
                        Expect::OneOf {
                            absent_ok: false,
                            versions: vec![old, *v],
                        },
                    );
                }
            }
        }
    }

    /// Acknowledged rows.
    pub fn acked(&self) -> u64 {
        self.rows
            .values()
            .filter(|e| matches!(e, Expect::Exact(_)))
            .count() as u64
    }

    /// Checks `seen`, the `(seq, version)` rows a node holds for this client.
    pub fn check(&self, seen: &BTreeMap<i64, i64>) -> Findings {
        let mut f = Findings::default();
        for (seq, expect) in &self.rows {
            let got = seen.get(seq).copied();
            match expect {
                Expect::Exact(v) => {
                    f.acked_checked += 1;
                    match got {
                        None => f.missing += 1,
                        Some(g) if g != *v => f.wrong += 1,
                        Some(_) => {}
                    }
                }
                Expect::OneOf {
                    absent_ok,
                    versions,
                } => {
                    let allowed = match got {
                        None => *absent_ok,
                        Some(g) => versions.contains(&g),
                    };
                    if !allowed {
                        f.impossible += 1;
                    }
                    f.unknown_seen.insert(*seq, got);
                }
            }
        }
        f.phantom = seen.keys().filter(|s| !self.rows.contains_key(s)).count() as u64;
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(rows: &[(i64, i64)]) -> BTreeMap<i64, i64> {
        rows.iter().copied().collect()
    }

    fn write(inserts: &[i64], updates: &[(i64, i64)]) -> Write {
        Write {
            inserts: inserts.to_vec(),
            updates: updates.to_vec(),
        }
    }

    #[test]
    fn acknowledged_rows_must_be_there_with_their_last_acknowledged_version() {
        let mut l = Ledger::default();
        l.record(&write(&[1, 2], &[]), Ended::Acked, Some("1/5".into()));
        l.record(&write(&[], &[(1, 1)]), Ended::Acked, Some("1/6".into()));
        assert_eq!(l.position.as_deref(), Some("1/6"));
        assert_eq!(l.acked(), 2);
        assert_eq!(
            l.check(&seen(&[(1, 1), (2, 0)])),
            Findings {
                acked_checked: 2,
                ..Findings::default()
            }
        );
        let f = l.check(&seen(&[(1, 0)]));
        assert_eq!((f.missing, f.wrong), (1, 1));
    }

    #[test]
    fn unknown_outcomes_allow_either_state_and_are_reported_for_comparison() {
        let mut l = Ledger::default();
        l.record(&write(&[1], &[]), Ended::Acked, None);
        l.record(&write(&[2], &[(1, 1)]), Ended::Unknown, None);
        assert!(
            l.exact_rows().is_empty(),
            "an unknown row is not updated again"
        );
        let committed = l.check(&seen(&[(1, 1), (2, 0)]));
        assert_eq!(committed.impossible, 0);
        assert_eq!(
            committed.unknown_seen,
            seen(&[(1, 1), (2, 0)])
                .into_iter()
                .map(|(s, v)| (s, Some(v)))
                .collect()
        );
        let not = l.check(&seen(&[(1, 0)]));
        assert_eq!(not.impossible, 0);
        assert_eq!(not.unknown_seen.get(&2), Some(&None));
        // The updated row cannot vanish, nor take a version never written.
        let f = l.check(&seen(&[(1, 7)]));
        assert_eq!(f.impossible, 1);
        let f = l.check(&seen(&[]));
        assert_eq!(f.impossible, 1);
    }

    #[test]
    fn a_row_no_acknowledged_or_unknown_write_created_is_a_phantom() {
        let mut l = Ledger::default();
        l.record(&write(&[1], &[]), Ended::Acked, None);
        l.record(&write(&[2], &[]), Ended::Failed, None);
        assert_eq!(l.failed, vec![2]);
        assert_eq!(l.check(&seen(&[(1, 0), (2, 0)])).phantom, 1);
    }
}
