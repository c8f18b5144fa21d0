//! The simulation's events and messages: what can happen (`Ev`), what travels over a replication
//! session (`Msg`), a control-plane proposal in flight (`Prop`) and the event queue's ordering
//! (`Sched`: earliest first, ties in scheduling order, so a seed replays exactly).

use std::cmp::Ordering;
use std::time::Instant;

use scribe_core::{Applied, ControlCommand, ControlError, HandshakeDecision, Lsn, Position, Term};

use crate::node::Rec;

/// A message on a replication session: the replica's hello and the primary's answer, then
/// records one way and acknowledgements the other.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Hello {
        term: Term,
        last: Position,
        history: Vec<(Term, Lsn)>,
    },
    Welcome {
        decision: HandshakeDecision,
        snapshot: Option<Vec<Rec>>,
    },
    NotPrimary,
    Records(Vec<Rec>),
    Ack {
        flushed: u64,
        applied: u64,
    },
}

/// What a proposer learns of its proposal: the result of applying it, or nothing before its
/// timeout (in which case it may still have committed).
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Done(Result<Applied, ControlError>),
    Timeout,
}

/// Why a proposal was made, which decides what its outcome does: a lease renewal (for the term
/// it was sent in, with the proposer's clock reading when it was sent) or a promotion by the
/// failover manager.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PropKind {
    Renew { term: Term, sent_at: Instant },
    Promote,
}

/// A control-plane proposal in flight.
pub(crate) struct Prop {
    pub(crate) n: usize,
    pub(crate) inc: u64,
    pub(crate) cmd: ControlCommand,
    pub(crate) kind: PropKind,
    /// When it was proposed (real time).
    pub(crate) at: u64,
}

/// The faults a schedule injects: kill a node, cut it off both ways, cut one direction of a
/// link, slow links down.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FaultKind {
    Kill,
    Cut,
    OneWay,
    Slow,
}

/// A simulation event. Those meant for one incarnation of a node carry its `inc` and are ignored
/// once it has been killed.
#[derive(Debug)]
pub(crate) enum Ev {
    Write,
    Tick {
        n: usize,
        inc: u64,
    },
    RaftCommit {
        prop: u64,
    },
    PropResult {
        prop: u64,
        outcome: Outcome,
    },
    ControlApply {
        n: usize,
        upto: usize,
    },
    FmPropose {
        n: usize,
        inc: u64,
        cmd: Option<ControlCommand>,
    },
    Deliver {
        from: usize,
        to: usize,
        inc_to: u64,
        session: u64,
        msg: Msg,
    },
    Disconnected {
        n: usize,
        inc: u64,
        session: u64,
    },
    Retry {
        n: usize,
        inc: u64,
    },
    DataApplied {
        n: usize,
        inc: u64,
    },
    Fault {
        kind: FaultKind,
        dur: u64,
    },
    Restart {
        n: usize,
    },
    Unblock(Vec<(usize, usize)>),
    Unslow(Vec<(usize, usize)>),
    Heal,
}

/// An event in the queue, due at a real time in microseconds; `seq` orders the events due at the
/// same instant.
pub(crate) struct Sched {
    pub(crate) at: u64,
    pub(crate) seq: u64,
    pub(crate) ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    /// Reversed: the heap pops the earliest event first (ties in scheduling order).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}
