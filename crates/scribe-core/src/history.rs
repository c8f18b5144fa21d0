//! [`TermHistory`]: the terms a node's log holds and where each begins (DESIGN.md §4, "a history
//! of terms"). It answers where two logs diverge ([`TermHistory::divergence`]: how far a returning
//! old primary must undo, whether a replica's log is a prefix of the primary's) and whether a
//! position is part of this log ([`TermHistory::locate`]: session reads with a position token).
//! Pure data: the log persists the raw entries and passes its last LSN in.

use serde::{Deserialize, Serialize};

use crate::{Lsn, Position, Term};

/// A node's history of terms: `(term, first LSN of that term in this log)`.
///
/// Invariants:
/// - terms strictly increase and first LSNs never decrease;
/// - no two entries share a first LSN: a term whose start equals the next term's start wrote no
///   record here, and only the later term is kept (the earlier one adds nothing an answer needs);
///   [`TermHistory::push`] and [`TermHistory::from_entries`] collapse such entries the same way.
///
/// Records with `lsn` in `[start_i, start_{i+1})` have `term_i`; the last entry covers every LSN
/// from its start on, and the log's last LSN (`last`) is passed to the methods that need it, so
/// the struct stays exactly what the log stores.
///
/// **The base.** The first entry's start is the base: the first LSN whose term this history
/// knows. A log that began at the cluster's start has its base at LSN 1; after a snapshot install
/// at `at` the log stores `[(at.term, at.lsn)]`, so the base is the snapshot's position (the
/// record at the base is known by its term even though its content lives only in the snapshot).
/// Records below the base are unknown: [`divergence`](TermHistory::divergence) counts them as
/// shared (the snapshot came from the primary's own history), and
/// [`locate`](TermHistory::locate) answers [`Located::BeforeBase`] for them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "Vec<(Term, Lsn)>", into = "Vec<(Term, Lsn)>")]
pub struct TermHistory {
    entries: Vec<(Term, Lsn)>,
}

/// Entries that do not form a history: the log that stored them is damaged, or a caller tried to
/// go back in time. Either way nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// A term at or below the latest one.
    #[error("term history: term {term} cannot follow term {previous}: terms must grow")]
    TermNotNewer {
        /// The term refused.
        term: Term,
        /// The latest term of the history.
        previous: Term,
    },
    /// A term that would start before the latest term's start.
    #[error(
        "term history: term {term} cannot start at lsn {start}, before lsn {previous_start} where term {previous} starts"
    )]
    StartsEarlier {
        /// The term refused.
        term: Term,
        /// Where it would start.
        start: Lsn,
        /// The latest term of the history.
        previous: Term,
        /// Where that term starts.
        previous_start: Lsn,
    },
}

/// Whether a position is part of a log, as [`TermHistory::locate`] answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "located")]
pub enum Located {
    /// This log holds the record (the term matches). Position `0/0` (before any record) is
    /// always held.
    Held,
    /// Not here yet, but it may still arrive: it lies beyond the log's end in the term this
    /// history expects there, or its term is newer than any this node has seen (if this log holds
    /// another record at that LSN, it arrives only after this node rewinds). A session read waits
    /// for it (bounded) or forwards to the primary.
    Ahead,
    /// It can never arrive: this history gives that LSN to another term, `ours` (held, or
    /// expected beyond the log's end), and the position's term is not newer than this node's
    /// current one — it ended before that LSN here, or began after it. A write lost in a failover;
    /// a session read refuses it with an error that says so.
    Lost {
        /// The term this history gives that LSN.
        ours: Term,
    },
    /// Below the base (a snapshot install): this log cannot tell. Records below the base count as
    /// shared, so a caller treats the position as reached once it has applied that far, or asks
    /// the primary (whose history reaches further back) when it must tell a lost write apart.
    BeforeBase,
}

impl TermHistory {
    /// An empty history: a log with no records and no snapshot.
    pub fn new() -> TermHistory {
        TermHistory::default()
    }

    /// A history from the entries a log stored, validated; entries with equal starts collapse to
    /// the last of them.
    pub fn from_entries(entries: Vec<(Term, Lsn)>) -> Result<TermHistory, HistoryError> {
        let mut history = TermHistory::new();
        for (term, start) in entries {
            history.push(term, start)?;
        }
        Ok(history)
    }

    /// The entries, `(term, first lsn)`, oldest first.
    pub fn entries(&self) -> &[(Term, Lsn)] {
        &self.entries
    }

    /// The entries, for the log to store.
    pub fn into_entries(self) -> Vec<(Term, Lsn)> {
        self.entries
    }

    /// Records that `term` begins at `first_lsn` (the LSN after the log's last record). Refuses a
    /// term not newer than the latest, or a start before the latest start; a start equal to the
    /// latest start replaces that entry (its term wrote nothing).
    pub fn push(&mut self, term: Term, first_lsn: Lsn) -> Result<(), HistoryError> {
        if let Some(&(previous, previous_start)) = self.entries.last() {
            if term <= previous {
                return Err(HistoryError::TermNotNewer { term, previous });
            }
            if first_lsn < previous_start {
                return Err(HistoryError::StartsEarlier {
                    term,
                    start: first_lsn,
                    previous,
                    previous_start,
                });
            }
            if first_lsn == previous_start {
                self.entries.pop();
            }
        }
        self.entries.push((term, first_lsn));
        Ok(())
    }

    /// The newest term of this history; `None` when it is empty.
    pub fn current_term(&self) -> Option<Term> {
        self.entries.last().map(|e| e.0)
    }

    /// The first LSN whose term this history knows (see the type's doc); `None` when empty.
    pub fn base(&self) -> Option<Lsn> {
        self.entries.first().map(|e| e.1)
    }

    /// Drops what a log cut after `lsn` no longer holds: the terms that start after it. The
    /// current term becomes the term of the record at `lsn`; cut below the base, the history is
    /// empty.
    pub fn truncate_after(&mut self, lsn: Lsn) {
        self.entries.retain(|&(_, start)| start <= lsn);
    }

    /// The term this history gives `lsn`, held or expected beyond the log's end; `None` below
    /// the base.
    fn covering(&self, lsn: Lsn) -> Option<Term> {
        let i = self.entries.partition_point(|&(_, start)| start <= lsn);
        i.checked_sub(1).map(|i| self.entries[i].0)
    }

    /// The term of the record at `lsn` if this log (ending at `last`) holds it: `None` for LSN
    /// zero, beyond `last`, or below the base.
    pub fn term_at(&self, lsn: Lsn, last: Lsn) -> Option<Term> {
        if lsn == Lsn::ZERO || lsn > last {
            return None;
        }
        self.covering(lsn)
    }

    /// The last LSN up to which this log (ending at `our_last`) and another (`theirs`, ending at
    /// `their_last`) hold the same records. Two records at one LSN are the same iff they have the
    /// same term (a term has one primary); records below either base count as shared. The answer
    /// is at most the shorter log's end; it is symmetric.
    pub fn divergence(&self, our_last: Lsn, theirs: &TermHistory, their_last: Lsn) -> Lsn {
        let end = our_last.min(their_last);
        let (Some(a), Some(b)) = (self.base(), theirs.base()) else {
            // An empty history knows no term: everything counts as shared.
            return end;
        };
        let from = a.max(b).max(Lsn(1));
        if from > end {
            return end;
        }
        // Both sides are constant between their starts: comparing at `from` and at every start
        // up to `end` finds the first LSN where they differ.
        let mut points: Vec<Lsn> = self
            .entries
            .iter()
            .chain(theirs.entries.iter())
            .map(|e| e.1)
            .filter(|&s| s > from && s <= end)
            .collect();
        points.push(from);
        points.sort_unstable();
        points.dedup();
        for p in points {
            if self.covering(p) != theirs.covering(p) {
                return p.prev();
            }
        }
        end
    }

    /// Whether `position` is part of this log (ending at `last`), may still arrive, can never
    /// arrive, or lies below the base. See [`Located`].
    pub fn locate(&self, position: Position, last: Lsn) -> Located {
        let Position { term, lsn } = position;
        if lsn == Lsn::ZERO {
            return Located::Held;
        }
        let Some(current) = self.current_term() else {
            // A log with nothing yet: anything may arrive.
            return Located::Ahead;
        };
        let Some(ours) = self.covering(lsn) else {
            return Located::BeforeBase;
        };
        if term == ours {
            if lsn <= last {
                Located::Held
            } else {
                Located::Ahead
            }
        } else if term > current {
            Located::Ahead
        } else {
            Located::Lost { ours }
        }
    }
}

impl TryFrom<Vec<(Term, Lsn)>> for TermHistory {
    type Error = HistoryError;

    fn try_from(entries: Vec<(Term, Lsn)>) -> Result<Self, Self::Error> {
        TermHistory::from_entries(entries)
    }
}

impl From<TermHistory> for Vec<(Term, Lsn)> {
    fn from(h: TermHistory) -> Self {
        h.entries
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(entries: &[(u64, u64)]) -> TermHistory {
        TermHistory::from_entries(entries.iter().map(|&(t, s)| (Term(t), Lsn(s))).collect())
            .unwrap()
    }

    fn pos(t: u64, l: u64) -> Position {
        Position::new(Term(t), Lsn(l))
    }

    #[test]
    fn entries_are_validated() {
        assert_eq!(
            TermHistory::from_entries(vec![(Term(2), Lsn(1)), (Term(2), Lsn(5))]),
            Err(HistoryError::TermNotNewer {
                term: Term(2),
                previous: Term(2)
            })
        );
        let err = TermHistory::from_entries(vec![(Term(2), Lsn(5)), (Term(3), Lsn(4))]);
        assert!(matches!(err, Err(HistoryError::StartsEarlier { .. })));
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("cannot start at lsn 4, before lsn 5"));
        // A term that wrote nothing collapses into the next one.
        assert_eq!(
            h(&[(1, 1), (2, 10), (3, 10), (5, 12)]).entries(),
            &[(Term(1), Lsn(1)), (Term(3), Lsn(10)), (Term(5), Lsn(12))]
        );
    }

    #[test]
    fn push_refuses_going_back() {
        let mut x = h(&[(1, 1), (3, 10)]);
        assert!(x.push(Term(3), Lsn(20)).is_err());
        assert!(x.push(Term(2), Lsn(20)).is_err());
        assert!(x.push(Term(4), Lsn(9)).is_err());
        assert_eq!(x, h(&[(1, 1), (3, 10)]));
        x.push(Term(4), Lsn(10)).unwrap();
        assert_eq!(x, h(&[(1, 1), (4, 10)]));
        x.push(Term(6), Lsn(15)).unwrap();
        assert_eq!(x.current_term(), Some(Term(6)));
        assert_eq!(TermHistory::new().current_term(), None);
    }

    #[test]
    fn term_at_covers_the_log() {
        let x = h(&[(1, 1), (3, 10)]);
        assert_eq!(x.term_at(Lsn(0), Lsn(20)), None);
        assert_eq!(x.term_at(Lsn(9), Lsn(20)), Some(Term(1)));
        assert_eq!(x.term_at(Lsn(10), Lsn(20)), Some(Term(3)));
        assert_eq!(x.term_at(Lsn(20), Lsn(20)), Some(Term(3)));
        assert_eq!(x.term_at(Lsn(21), Lsn(20)), None);
        // After a snapshot install at 3/100: only the base and what follows are known.
        let s = h(&[(3, 100)]);
        assert_eq!(s.term_at(Lsn(99), Lsn(120)), None);
        assert_eq!(s.term_at(Lsn(100), Lsn(120)), Some(Term(3)));
    }

    #[test]
    fn truncation_drops_terms_that_started_after_the_cut() {
        let mut x = h(&[(1, 1), (3, 10), (4, 15)]);
        x.truncate_after(Lsn(14));
        assert_eq!(x, h(&[(1, 1), (3, 10)]));
        x.truncate_after(Lsn(10));
        assert_eq!(x, h(&[(1, 1), (3, 10)]));
        x.truncate_after(Lsn(9));
        assert_eq!(x, h(&[(1, 1)]));
        let mut s = h(&[(3, 100)]);
        s.truncate_after(Lsn(50));
        assert_eq!(s, TermHistory::new());
    }

    #[test]
    fn an_old_primary_diverges_where_the_new_term_began() {
        // n1 wrote 1..=20 in term 1; n2 had 1..=15 and was promoted in term 2 at 16.
        let old = h(&[(1, 1)]);
        let new = h(&[(1, 1), (2, 16)]);
        assert_eq!(old.divergence(Lsn(20), &new, Lsn(30)), Lsn(15));
        assert_eq!(new.divergence(Lsn(30), &old, Lsn(20)), Lsn(15));
        // A replica that is simply behind shares its whole log.
        assert_eq!(old.divergence(Lsn(12), &new, Lsn(30)), Lsn(12));
        // The new primary has not written yet: the shared part ends at its log's end.
        assert_eq!(old.divergence(Lsn(20), &new, Lsn(15)), Lsn(15));
        // Diverged at the very first record.
        assert_eq!(
            h(&[(1, 1)]).divergence(Lsn(5), &h(&[(2, 1)]), Lsn(5)),
            Lsn(0)
        );
    }

    #[test]
    fn records_below_a_base_count_as_shared() {
        let seeded = h(&[(3, 100)]);
        let primary = h(&[(1, 1), (3, 90), (5, 130)]);
        assert_eq!(seeded.divergence(Lsn(140), &primary, Lsn(150)), Lsn(129));
        // Another term at the base itself: diverged just below it.
        assert_eq!(
            h(&[(2, 100)]).divergence(Lsn(110), &primary, Lsn(150)),
            Lsn(99)
        );
        assert_eq!(
            TermHistory::new().divergence(Lsn(0), &primary, Lsn(150)),
            Lsn(0)
        );
    }

    #[test]
    fn locate_tells_held_ahead_lost_and_unknown() {
        // Term 2 (a primary that wrote 16..=20 and was replaced) is not in this history: term 3
        // began at 16 here.
        let x = h(&[(1, 1), (3, 16)]);
        let last = Lsn(25);
        assert_eq!(x.locate(pos(1, 10), last), Located::Held);
        assert_eq!(x.locate(pos(3, 25), last), Located::Held);
        assert_eq!(x.locate(pos(0, 0), last), Located::Held);
        // Not yet: later in the current term, or a newer term.
        assert_eq!(x.locate(pos(3, 26), last), Located::Ahead);
        assert_eq!(x.locate(pos(4, 12), last), Located::Ahead);
        // Written by the replaced primary of term 2: lost.
        assert_eq!(x.locate(pos(2, 17), last), Located::Lost { ours: Term(3) });
        // Term 1 ended at 15 here: its 17 never comes.
        assert_eq!(x.locate(pos(1, 17), last), Located::Lost { ours: Term(3) });
        assert_eq!(x.locate(pos(1, 40), last), Located::Lost { ours: Term(3) });
        // Term 3 began at 16: it never wrote 12.
        assert_eq!(x.locate(pos(3, 12), last), Located::Lost { ours: Term(1) });
        // Below a snapshot base.
        let s = h(&[(3, 100)]);
        assert_eq!(s.locate(pos(1, 50), Lsn(120)), Located::BeforeBase);
        assert_eq!(s.locate(pos(3, 100), Lsn(120)), Located::Held);
        assert_eq!(TermHistory::new().locate(pos(1, 1), Lsn(0)), Located::Ahead);
    }

    #[test]
    fn serializes_as_the_raw_entries() {
        let x = h(&[(1, 1), (3, 16)]);
        let json = serde_json::to_string(&x).unwrap();
        assert_eq!(json, "[[1,1],[3,16]]");
        assert_eq!(serde_json::from_str::<TermHistory>(&json).unwrap(), x);
        // Deserialising validates.
        assert!(serde_json::from_str::<TermHistory>("[[3,1],[1,2]]").is_err());
    }

    // ---- A model of a cluster's logs, for the properties (also used by handshake.rs). ----

    /// One node's log in the model: the term of each record from `base` to `last`.
    #[derive(Debug, Clone)]
    pub(crate) struct ModelLog {
        /// First LSN whose term is known (1 without a snapshot).
        pub base: u64,
        /// `terms[i]` is the term of the record at `base + i`.
        pub terms: Vec<u64>,
        /// Terms that started here but wrote nothing (inserted into the history before the
        /// term that follows them).
        pub empty_terms: Vec<(u64, u64)>,
    }

    impl ModelLog {
        pub fn last(&self) -> Lsn {
            if self.terms.is_empty() {
                Lsn(self.base.saturating_sub(1))
            } else {
                Lsn(self.base + self.terms.len() as u64 - 1)
            }
        }

        pub fn term_of(&self, lsn: u64) -> Option<u64> {
            lsn.checked_sub(self.base)
                .and_then(|i| self.terms.get(i as usize).copied())
        }

        pub fn holds(&self, p: Position) -> bool {
            self.term_of(p.lsn.0) == Some(p.term.0)
        }

        /// The history the node would keep, built by pushing a term at each change.
        pub fn history(&self) -> TermHistory {
            let mut raw: Vec<(Term, Lsn)> = Vec::new();
            let mut prev = None;
            for (i, &t) in self.terms.iter().enumerate() {
                if prev != Some(t) {
                    let at = self.base + i as u64;
                    for &(et, eat) in &self.empty_terms {
                        if eat == at && prev.is_none_or(|p| et > p) && et < t {
                            raw.push((Term(et), Lsn(at)));
                        }
                    }
                    raw.push((Term(t), Lsn(at)));
                    prev = Some(t);
                }
            }
            TermHistory::from_entries(raw).expect("the model builds valid histories")
        }

        pub fn truncated(&self, k: u64) -> ModelLog {
            let keep = (k + 1).saturating_sub(self.base) as usize;
            ModelLog {
                base: self.base,
                terms: self.terms.iter().copied().take(keep).collect(),
                empty_terms: self.empty_terms.clone(),
            }
        }
    }

    /// Brute-force divergence over the records: below either base counts as shared.
    pub(crate) fn brute_divergence(a: &ModelLog, b: &ModelLog) -> Lsn {
        let end = a.last().min(b.last()).0;
        for n in 1..=end {
            if n >= a.base && n >= b.base && a.term_of(n) != b.term_of(n) {
                return Lsn(n - 1);
            }
        }
        Lsn(end)
    }

    /// A cluster: a shared prefix of records written in increasing terms, then nodes that each
    /// keep part of it and extend it with records of terms of their own (primaries that wrote
    /// and were replaced), some seeded from a snapshot (a base above 1), some with a term that
    /// wrote nothing.
    pub(crate) fn cluster() -> impl Strategy<Value = Vec<ModelLog>> {
        let prefix = proptest::collection::vec(0usize..6, 1..4);
        let forks = proptest::collection::vec(
            (
                0usize..30,
                proptest::collection::vec(0usize..5, 0..3),
                0u64..40,
                any::<bool>(),
            ),
            2..5,
        );
        (prefix, forks).prop_map(|(prefix, forks)| {
            // Real terms are even; odd terms are free for terms that wrote nothing.
            let mut shared = Vec::new();
            for (i, &count) in prefix.iter().enumerate() {
                shared.extend(std::iter::repeat_n(2 * (i as u64 + 1), count));
            }
            let mut next_term = 2 * (prefix.len() as u64 + 1);
            let mut nodes = Vec::new();
            for (keep, extensions, base, empty) in forks {
                let mut terms: Vec<u64> = shared.iter().copied().take(keep).collect();
                let mut empty_terms = Vec::new();
                for count in extensions {
                    if empty {
                        empty_terms.push((next_term - 1, terms.len() as u64 + 1));
                    }
                    terms.extend(std::iter::repeat_n(next_term, count));
                    next_term += 2;
                }
                let base = if base < 10 || base as usize > terms.len() {
                    1
                } else {
                    base
                };
                let terms = terms.split_off(base as usize - 1);
                nodes.push(ModelLog {
                    base,
                    terms,
                    empty_terms,
                });
            }
            nodes
        })
    }

    /// What `locate` should answer, from the records.
    fn brute_locate(log: &ModelLog, p: Position) -> Located {
        let h = log.history();
        let n = p.lsn.0;
        if n == 0 {
            return Located::Held;
        }
        if log.terms.is_empty() && log.base == 1 {
            return Located::Ahead;
        }
        if n < log.base {
            return Located::BeforeBase;
        }
        if log.holds(p) {
            return Located::Held;
        }
        let current = h.current_term().map_or(0, Term::get);
        // Beyond the end the log can only grow in its current term (or a newer one).
        let expected = log.term_of(n).unwrap_or(current);
        if p.term.0 > current || (n > log.last().0 && p.term.0 == expected) {
            Located::Ahead
        } else {
            Located::Lost {
                ours: Term(expected),
            }
        }
    }

    proptest! {
        #[test]
        fn divergence_agrees_with_the_records(nodes in cluster()) {
            for a in &nodes {
                for b in &nodes {
                    let d = a.history().divergence(a.last(), &b.history(), b.last());
                    prop_assert_eq!(d, brute_divergence(a, b), "{:?} vs {:?}", a, b);
                    let back = b.history().divergence(b.last(), &a.history(), a.last());
                    prop_assert_eq!(d, back);
                }
            }
        }

        #[test]
        fn locate_agrees_with_the_records(nodes in cluster(), extra in proptest::collection::vec((0u64..16, 0u64..50), 0..10)) {
            let mut probes: Vec<Position> = nodes
                .iter()
                .flat_map(|n| n.terms.iter().enumerate().map(|(i, &t)| pos(t, n.base + i as u64)))
                .collect();
            probes.extend(extra.into_iter().map(|(t, l)| pos(t, l)));
            for log in &nodes {
                let h = log.history();
                for &p in &probes {
                    let got = h.locate(p, log.last());
                    prop_assert_eq!(got == Located::Held, log.holds(p) || p.lsn == Lsn::ZERO);
                    if log.holds(p) {
                        let lost = matches!(got, Located::Lost { .. });
                        prop_assert!(!lost, "present {:?} located as lost", p);
                    }
                    prop_assert_eq!(got, brute_locate(log, p), "{:?} in {:?}", p, log);
                }
            }
        }

        #[test]
        fn truncation_then_divergence_is_consistent(nodes in cluster(), cut in 0u64..40) {
            let a = &nodes[0];
            let mut h = a.history();
            // A log is never cut below its snapshot base.
            let k = Lsn(cut).max(Lsn(a.base - 1)).min(a.last());
            h.truncate_after(k);
            let t = a.truncated(k.0);
            // What the cut log keeps is what the history of the cut records says.
            if k.0 >= a.base {
                prop_assert_eq!(&h, &t.history());
            } else {
                prop_assert_eq!(&h, &TermHistory::new());
            }
            for b in &nodes {
                let d = h.divergence(k, &b.history(), b.last());
                prop_assert_eq!(d, brute_divergence(&t, b));
                let full = a.history().divergence(a.last(), &b.history(), b.last());
                prop_assert_eq!(d, full.min(k));
            }
        }
    }
}
