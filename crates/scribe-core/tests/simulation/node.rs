//! The model of one node: its durable log and copy of the control state, what it holds in memory
//! (lease, failover manager, replication sessions, pending writes) and loses when killed, and its
//! own skewed clock, which every lease and silence is read against.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scribe_core::{ControlState, Lsn, Position, PrimaryLease, PrimarySilence, Term, TermHistory};

/// One record of a data node's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Rec {
    pub(crate) term: u64,
    pub(crate) lsn: u64,
    pub(crate) write: u64,
}

impl Rec {
    pub(crate) fn pos(&self) -> Position {
        Position::new(Term(self.term), Lsn(self.lsn))
    }
}

/// A replica's side of a replication session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Follow {
    pub(crate) primary: usize,
    pub(crate) term: Term,
    pub(crate) session: u64,
    pub(crate) established: bool,
}

/// The primary's side of a replication session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) session: u64,
    pub(crate) next: u64,
    /// `(flushed, applied)` as the replica last acknowledged.
    pub(crate) ack: Option<(u64, u64)>,
}

/// A semi-sync/sync write waiting for its quorum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub(crate) rec: Rec,
    pub(crate) deadline: u64,
}

/// One simulated node, a data node or the witness. A kill keeps what is marked durable; the rest
/// is reset when it restarts.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) witness: bool,
    pub(crate) alive: bool,
    /// Grows at every kill: events meant for an earlier incarnation are ignored.
    pub(crate) inc: u64,
    pub(crate) rate_ppm: u64,
    pub(crate) off_ns: u64,
    // Durable.
    pub(crate) log: Vec<Rec>,
    pub(crate) ctl: ControlState,
    pub(crate) ctl_applied: usize,
    // In memory (reset by a kill).
    pub(crate) held: PrimaryLease,
    pub(crate) held_term: Option<Term>,
    pub(crate) renewing: bool,
    pub(crate) ticks: u64,
    pub(crate) silence: PrimarySilence,
    pub(crate) primary_seen: Option<(Term, Option<String>)>,
    pub(crate) fm_busy: bool,
    pub(crate) fm_not_before: Instant,
    pub(crate) follow: Option<Follow>,
    pub(crate) applied: u64,
    pub(crate) peers: BTreeMap<usize, Peer>,
    pub(crate) pending: Vec<Pending>,
}

impl Node {
    /// This node's monotonic clock at real time `t`, in nanoseconds since the simulation's base.
    pub(crate) fn clock_ns(&self, t: u64) -> u64 {
        self.off_ns + t * self.rate_ppm / 1000
    }

    /// The first real time at which this node's clock reads at least `ns`.
    pub(crate) fn real_at(&self, ns: u64) -> u64 {
        if ns <= self.off_ns {
            return 0;
        }
        let mut t = (ns - self.off_ns) * 1000 / self.rate_ppm;
        while self.clock_ns(t) < ns {
            t += 1;
        }
        while t > 0 && self.clock_ns(t - 1) >= ns {
            t -= 1;
        }
        t
    }

    /// A duration of this node's clock in real microseconds (rounded up).
    pub(crate) fn real_us(&self, d: Duration) -> u64 {
        (d.as_nanos() as u64 * 1000).div_ceil(self.rate_ppm)
    }

    pub(crate) fn last(&self) -> Position {
        self.log.last().map_or(Position::ZERO, Rec::pos)
    }

    pub(crate) fn is_primary(&self) -> bool {
        self.ctl.primary.as_deref() == Some(self.name.as_str())
    }

    /// The term history of this node's log: where each term's records begin.
    pub(crate) fn history(&self) -> Result<TermHistory, String> {
        let mut h = TermHistory::new();
        let mut cur = None;
        for r in &self.log {
            if cur != Some(r.term) {
                h.push(Term(r.term), Lsn(r.lsn))
                    .map_err(|e| format!("{}: log is not a history: {e}", self.name))?;
                cur = Some(r.term);
            }
        }
        Ok(h)
    }

    pub(crate) fn reset_memory(&mut self, lease: Duration, now: Instant) {
        self.held = PrimaryLease::new(lease);
        self.held_term = None;
        self.renewing = false;
        self.silence = PrimarySilence::new(now);
        self.primary_seen = None;
        self.fm_busy = false;
        self.fm_not_before = now;
        self.follow = None;
        self.applied = self.log.len() as u64;
        self.peers.clear();
        self.pending.clear();
    }
}
