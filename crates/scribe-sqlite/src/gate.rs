//! [`WriteGate`]: whether this node's writer takes client writes, and in which term — the writer
//! fences itself (DESIGN.md §4). The runtime tells the engine what the control state says
//! ([`crate::Engine::set_gate`]); the writer asks the gate at the start of every write and once
//! more right before a batch's log fsync, holding the gate's lock until that fsync returns, so
//! that closing the gate is a clean cut: once it is closed nothing more becomes durable. This
//! module holds the decisions only (no I/O, no clock of its own: `now` is passed in): whether a
//! gate takes a write now, and which changes of the gate are allowed ([`Fence`]).

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use scribe_core::Term;

/// Whether this node takes client writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteGate {
    /// This node takes no client writes: a replica, a primary that lost its lease, a node in a
    /// switchover. `why` is what refused clients are told.
    Closed {
        /// Why, for the clients refused.
        why: String,
    },
    /// This node is the primary of `term` and takes writes while `now < until` (its lease).
    Open {
        /// The term its records are written in.
        term: Term,
        /// When the lease runs out, by this node's monotonic clock; `None`: no lease (a node
        /// that is primary by configuration).
        until: Option<Instant>,
    },
}

impl Default for WriteGate {
    /// Open in the first term without a lease: a single node, primary by configuration.
    fn default() -> Self {
        WriteGate::primary(Term::FIRST)
    }
}

impl WriteGate {
    /// Open in `term` without a lease (primary by configuration).
    pub fn primary(term: Term) -> WriteGate {
        WriteGate::Open { term, until: None }
    }

    /// Open in `term` until `until` (a primary holding a lease).
    pub fn leased(term: Term, until: Instant) -> WriteGate {
        WriteGate::Open {
            term,
            until: Some(until),
        }
    }

    /// Closed, telling refused clients `why`.
    pub fn closed(why: impl Into<String>) -> WriteGate {
        WriteGate::Closed { why: why.into() }
    }

    /// Whether a client write may start at `now`: the term to write it in, or why not.
    pub fn accepts(&self, now: Instant) -> Result<Term, String> {
        match self {
            WriteGate::Closed { why } => Err(why.clone()),
            WriteGate::Open {
                term,
                until: Some(until),
            } if now >= *until => Err(format!(
                "the lease of term {term} ran out {:?} ago: this node takes no writes until it is renewed",
                now.duration_since(*until)
            )),
            WriteGate::Open { term, .. } => Ok(*term),
        }
    }

    /// Whether this node considers itself the primary of a term (lease run out or not).
    pub fn is_open(&self) -> bool {
        matches!(self, WriteGate::Open { .. })
    }

    /// The term of an open gate.
    pub fn term(&self) -> Option<Term> {
        match self {
            WriteGate::Open { term, .. } => Some(*term),
            WriteGate::Closed { .. } => None,
        }
    }
}

/// The gate with the newest term this node knows, shared (behind a mutex) by the engine handle,
/// which changes it, and the writer, which obeys it.
///
/// Invariants: `newest` never decreases; an open gate's term is `newest` (a gate opens only in a
/// term no older than every term this node knows, and no newer term arrives while it is open,
/// since records from elsewhere are refused then).
#[derive(Debug)]
pub(crate) struct Fence {
    gate: WriteGate,
    /// The newest term this node knows: of a record in its log, or of a gate it was opened with.
    newest: Term,
}

impl Fence {
    /// The fence of an engine whose log's last record is of `log_term`. An open gate in an older
    /// term opens in `log_term` instead: a node that is primary by configuration goes on writing
    /// in the newest term its log holds.
    pub(crate) fn new(gate: WriteGate, log_term: Term) -> Fence {
        let gate = match gate {
            WriteGate::Open { term, until } => WriteGate::Open {
                term: term.max(log_term),
                until,
            },
            closed => closed,
        };
        let newest = gate.term().unwrap_or(log_term).max(log_term);
        Fence { gate, newest }
    }

    /// The gate now.
    pub(crate) fn gate(&self) -> &WriteGate {
        &self.gate
    }

    /// Replaces the gate. Opening it in a term older than the newest this node knows is refused,
    /// and the gate is left as it was.
    pub(crate) fn set(&mut self, gate: WriteGate) -> Result<(), String> {
        if let Some(term) = gate.term() {
            if term < self.newest {
                return Err(format!(
                    "this node cannot be the primary of term {term}: it already knows term {}",
                    self.newest
                ));
            }
            self.newest = term;
        }
        self.gate = gate;
        Ok(())
    }

    /// Whether a client write may start at `now`, and in which term (see [`WriteGate::accepts`]).
    pub(crate) fn admit(&self, now: Instant) -> Result<Term, String> {
        self.gate.accepts(now)
    }

    /// Whether records written in `term` (admitted earlier) may still be made durable at `now`:
    /// the gate is open, its lease runs, and its term is still `term`.
    pub(crate) fn confirm(&self, now: Instant, term: Term) -> Result<(), String> {
        let now_term = self.gate.accepts(now)?;
        if now_term != term {
            return Err(format!(
                "this node became the primary of term {now_term} while the transaction ran in term {term}"
            ));
        }
        Ok(())
    }

    /// Whether records written elsewhere may be appended: only while the gate is closed (a
    /// primary takes no records from another node).
    pub(crate) fn take_records(&self) -> Result<(), String> {
        match self.gate.term() {
            Some(term) => Err(format!(
                "this node is the primary of term {term}: it takes no records from another node (close its write gate first)"
            )),
            None => Ok(()),
        }
    }

    /// Notes that the log now holds a record (or a snapshot position) of `term`.
    pub(crate) fn saw(&mut self, term: Term) {
        self.newest = self.newest.max(term);
    }
}

/// Locks a shared fence. Its state is two plain values, consistent at every point, so a holder
/// that panicked leaves nothing half-done: poisoning is ignored.
pub(crate) fn lock(fence: &Mutex<Fence>) -> MutexGuard<'_, Fence> {
    fence.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_closed_gate_refuses_with_its_reason() {
        let g = WriteGate::closed("this node is a replica of b");
        assert_eq!(
            g.accepts(Instant::now()),
            Err("this node is a replica of b".to_string())
        );
        assert!(!g.is_open());
        assert_eq!(g.term(), None);
    }

    #[test]
    fn an_open_gate_takes_writes_until_its_lease_runs_out() {
        let t0 = Instant::now();
        let g = WriteGate::leased(Term(4), t0 + Duration::from_secs(2));
        assert_eq!(g.accepts(t0), Ok(Term(4)));
        assert_eq!(g.accepts(t0 + Duration::from_millis(1999)), Ok(Term(4)));
        let late = g.accepts(t0 + Duration::from_secs(3)).unwrap_err();
        assert!(late.contains("lease of term 4 ran out"), "{late}");
        // Exactly at the deadline the lease is over.
        assert!(g.accepts(t0 + Duration::from_secs(2)).is_err());
        // Without a lease it never runs out.
        let g = WriteGate::primary(Term(2));
        assert_eq!(g.accepts(t0 + Duration::from_secs(1 << 30)), Ok(Term(2)));
        assert_eq!(WriteGate::default(), WriteGate::primary(Term::FIRST));
    }

    #[test]
    fn a_gate_never_opens_in_a_term_older_than_the_newest_known() {
        let now = Instant::now();
        let mut f = Fence::new(WriteGate::closed("replica"), Term(3));
        let err = f.set(WriteGate::primary(Term(2))).unwrap_err();
        assert!(err.contains("already knows term 3"), "{err}");
        assert_eq!(f.gate(), &WriteGate::closed("replica"));
        f.set(WriteGate::primary(Term(3))).unwrap();
        assert_eq!(f.admit(now), Ok(Term(3)));
        f.set(WriteGate::primary(Term(5))).unwrap();
        // Term 4 was never written, but 5 was announced: going back is refused, closed or not.
        assert!(f.set(WriteGate::primary(Term(4))).is_err());
        f.set(WriteGate::closed("switchover")).unwrap();
        assert!(f.set(WriteGate::primary(Term(4))).is_err());
        assert_eq!(f.gate(), &WriteGate::closed("switchover"));
        // Records of a newer term raise the floor too.
        f.saw(Term(7));
        assert!(f.set(WriteGate::primary(Term(6))).is_err());
        f.set(WriteGate::primary(Term(7))).unwrap();
    }

    #[test]
    fn an_open_gate_older_than_the_log_at_open_takes_the_logs_term() {
        let f = Fence::new(WriteGate::primary(Term::FIRST), Term(3));
        assert_eq!(f.admit(Instant::now()), Ok(Term(3)));
        let f = Fence::new(WriteGate::primary(Term(5)), Term(3));
        assert_eq!(f.admit(Instant::now()), Ok(Term(5)));
        let mut f = Fence::new(WriteGate::closed("replica"), Term(3));
        assert!(f.set(WriteGate::primary(Term(2))).is_err());
    }

    #[test]
    fn a_batch_is_confirmed_only_in_the_term_it_was_admitted_in() {
        let t0 = Instant::now();
        let mut f = Fence::new(
            WriteGate::leased(Term(2), t0 + Duration::from_secs(1)),
            Term(1),
        );
        assert_eq!(f.confirm(t0, Term(2)), Ok(()));
        // The lease ran out between the start of the batch and its fsync.
        assert!(f.confirm(t0 + Duration::from_secs(1), Term(2)).is_err());
        // A new term arrived meanwhile.
        f.set(WriteGate::primary(Term(3))).unwrap();
        let err = f.confirm(t0, Term(2)).unwrap_err();
        assert!(err.contains("term 3"), "{err}");
        f.set(WriteGate::closed("closed for a switchover")).unwrap();
        assert_eq!(
            f.confirm(t0, Term(3)),
            Err("closed for a switchover".to_string())
        );
    }

    #[test]
    fn records_from_elsewhere_are_taken_only_while_closed() {
        let mut f = Fence::new(WriteGate::primary(Term(2)), Term(1));
        let err = f.take_records().unwrap_err();
        assert!(err.contains("primary of term 2"), "{err}");
        // An open gate whose lease ran out is still a primary's: it must be closed first.
        f.set(WriteGate::leased(Term(2), Instant::now())).unwrap();
        assert!(f.take_records().is_err());
        f.set(WriteGate::closed("replica")).unwrap();
        assert_eq!(f.take_records(), Ok(()));
    }
}
