//! The data path: in-order replication sessions with delays and drops, the hello/welcome
//! handshake (the real `decide_handshake`, checked against the logs themselves) and the replica's
//! stream, snapshot copy or rewind; then client writes through the primary's gate and the commit
//! tracker, which acknowledges what the real `SyncSet::confirms` confirms.

use scribe_core::{
    decide_handshake, CommitMode, HandshakeDecision, Lsn, Position, PrimaryView, ReplicaAck,
    ReplicaView, Term, TermHistory,
};

use crate::event::{Ev, Msg};
use crate::node::{Follow, Peer, Pending, Rec};
use crate::setup::Writer;
use crate::sim::Sim;
use crate::{CLUSTER, COMMIT_TIMEOUT, MS, WRITES_END};

impl Sim {
    fn send(&mut self, from: usize, to: usize, session: u64, msg: Msg) {
        if self.dead_sessions.contains(&session) {
            return;
        }
        if !self.nodes[to].alive || !self.link(from, to) {
            self.break_session(session);
            return;
        }
        let d = if self.slow[from][to] > 0 {
            self.rng.range(50 * MS, 600 * MS)
        } else {
            self.rng.range(200, 3 * MS)
        };
        let slot = self.fifo.entry((from, to, session)).or_insert(0);
        let at = (self.now + d).max(*slot);
        *slot = at;
        let inc_to = self.nodes[to].inc;
        self.at(
            at,
            Ev::Deliver {
                from,
                to,
                inc_to,
                session,
                msg,
            },
        );
    }

    pub(crate) fn on_deliver(
        &mut self,
        from: usize,
        to: usize,
        inc_to: u64,
        session: u64,
        msg: Msg,
    ) {
        if self.dead_sessions.contains(&session) {
            return;
        }
        if !self.nodes[to].alive || self.nodes[to].inc != inc_to || !self.link(from, to) {
            self.break_session(session);
            return;
        }
        match msg {
            Msg::Hello {
                term,
                last,
                history,
            } => self.on_hello(to, from, session, term, last, history),
            Msg::Welcome { decision, snapshot } => {
                self.on_welcome(to, from, session, decision, snapshot)
            }
            Msg::NotPrimary => {
                if self.nodes[to].follow.is_some_and(|f| f.session == session) {
                    self.nodes[to].follow = None;
                    let inc = self.nodes[to].inc;
                    let d = self.rng.range(50 * MS, 300 * MS);
                    self.after(d, Ev::Retry { n: to, inc });
                }
            }
            Msg::Records(recs) => self.on_records(to, from, session, recs),
            Msg::Ack { flushed, applied } => {
                let p = &mut self.nodes[to];
                if let Some(peer) = p.peers.get_mut(&from).filter(|p| p.session == session) {
                    peer.ack = Some((flushed, applied));
                    self.evaluate(to);
                }
            }
        }
    }

    /// A replica follows the primary its copy of the state names, with a new session (hello)
    /// whenever the primary or the term changes.
    pub(crate) fn sync_follow(&mut self, n: usize) {
        let node = &self.nodes[n];
        if node.witness || !node.alive {
            return;
        }
        let target = node
            .ctl
            .primary
            .as_deref()
            .filter(|p| *p != node.name)
            .and_then(|p| self.index(p));
        let Some(p) = target else {
            if let Some(f) = self.nodes[n].follow.take() {
                self.break_session(f.session);
            }
            return;
        };
        let term = node.ctl.term;
        if node
            .follow
            .is_some_and(|f| f.primary == p && f.term == term)
        {
            return;
        }
        if let Some(f) = self.nodes[n].follow.take() {
            self.break_session(f.session);
        }
        let history = match self.nodes[n].history() {
            Ok(h) => h.into_entries(),
            Err(e) => {
                self.violation(e);
                return;
            }
        };
        let session = self.id();
        let last = self.nodes[n].last();
        self.nodes[n].follow = Some(Follow {
            primary: p,
            term,
            session,
            established: false,
        });
        trace!(
            self,
            "{} says hello to {} (term {term}, last {last}, session {session})",
            self.nodes[n].name,
            self.nodes[p].name
        );
        self.send(
            n,
            p,
            session,
            Msg::Hello {
                term,
                last,
                history,
            },
        );
    }

    fn on_hello(
        &mut self,
        p: usize,
        r: usize,
        session: u64,
        term: Term,
        last: Position,
        history: Vec<(Term, Lsn)>,
    ) {
        if !self.nodes[p].is_primary() {
            self.send(p, r, session, Msg::NotPrimary);
            return;
        }
        let ours = match self.nodes[p].history() {
            Ok(h) => h,
            Err(e) => return self.violation(e),
        };
        let theirs = match TermHistory::from_entries(history) {
            Ok(h) => h,
            Err(e) => return self.violation(format!("replica history: {e}")),
        };
        let pn = &self.nodes[p];
        let primary = PrimaryView {
            name: &pn.name,
            cluster_id: CLUSTER,
            term: pn.ctl.term,
            flushed: pn.last(),
            log_first: Lsn(1),
            history: &ours,
        };
        let replica = ReplicaView {
            name: &self.nodes[r].name,
            cluster_id: CLUSTER,
            term,
            last,
            history: Some(&theirs),
        };
        let decision = decide_handshake(&primary, &replica);
        trace!(
            self,
            "{} answers {}'s hello: {decision:?}",
            self.nodes[p].name,
            self.nodes[r].name
        );
        // The handshake against the ground truth: the logs themselves.
        let (plog, rlog) = (&self.nodes[p].log, &self.nodes[r].log);
        let shared = plog.iter().zip(rlog).take_while(|(a, b)| a == b).count() as u64;
        let wrong = match &decision {
            HandshakeDecision::Stream { from } => {
                (shared != rlog.len() as u64 || from.0 != shared + 1).then_some("stream")
            }
            HandshakeDecision::Rewind { to } => (to.lsn.0 != shared
                || shared >= rlog.len() as u64
                || (shared > 0 && rlog[shared as usize - 1].pos() != *to))
                .then_some("rewind"),
            _ => None,
        };
        if let Some(what) = wrong {
            let v = format!(
                "handshake said {what} ({decision:?}) but the logs share {shared} records ({} has {}, {} has {})",
                self.nodes[p].name,
                plog.len(),
                self.nodes[r].name,
                rlog.len()
            );
            self.violation(v);
        }
        let len = self.nodes[p].log.len() as u64;
        let snapshot = match &decision {
            HandshakeDecision::Stream { from } => {
                self.nodes[p].peers.insert(
                    r,
                    Peer {
                        session,
                        next: from.0,
                        ack: None,
                    },
                );
                None
            }
            HandshakeDecision::Snapshot => {
                self.nodes[p].peers.insert(
                    r,
                    Peer {
                        session,
                        next: len + 1,
                        ack: None,
                    },
                );
                Some(self.nodes[p].log.clone())
            }
            _ => None,
        };
        self.send(p, r, session, Msg::Welcome { decision, snapshot });
        self.pump(p);
    }

    fn on_welcome(
        &mut self,
        r: usize,
        p: usize,
        session: u64,
        decision: HandshakeDecision,
        snapshot: Option<Vec<Rec>>,
    ) {
        let Some(f) = self.nodes[r]
            .follow
            .filter(|f| f.session == session && f.primary == p)
        else {
            return;
        };
        match decision {
            HandshakeDecision::Stream { from } => {
                if from.0 != self.nodes[r].log.len() as u64 + 1 {
                    let v = format!(
                        "{}: told to stream from {from} but its log ends at {}",
                        self.nodes[r].name,
                        self.nodes[r].log.len()
                    );
                    self.violation(v);
                }
                self.nodes[r].follow = Some(Follow {
                    established: true,
                    ..f
                });
                self.send_ack(r);
            }
            HandshakeDecision::Snapshot => {
                let snap = snapshot.unwrap_or_default();
                self.stats.snapshots += 1;
                let mine = std::mem::take(&mut self.nodes[r].log);
                for (i, rec) in mine.iter().enumerate() {
                    if snap.get(i) != Some(rec) {
                        self.undone.push((*rec, r, "snapshot"));
                    }
                }
                trace!(
                    self,
                    "{} installs a snapshot of {} records (had {})",
                    self.nodes[r].name,
                    snap.len(),
                    mine.len()
                );
                let node = &mut self.nodes[r];
                node.log = snap;
                node.applied = node.log.len() as u64;
                node.follow = Some(Follow {
                    established: true,
                    ..f
                });
                self.send_ack(r);
            }
            HandshakeDecision::Rewind { to } => {
                self.stats.rewinds += 1;
                let node = &mut self.nodes[r];
                let keep = to.lsn.0 as usize;
                if keep > node.log.len() || (keep > 0 && node.log[keep - 1].pos() != to) {
                    let v = format!(
                        "{}: told to rewind to {to}, which its log does not hold",
                        node.name
                    );
                    return self.violation(v);
                }
                let undone = node.log.split_off(keep);
                node.applied = node.applied.min(keep as u64);
                node.follow = None;
                trace!(
                    self,
                    "{} REWINDS to {to}, undoing {:?}",
                    self.nodes[r].name,
                    undone
                        .iter()
                        .map(|r| r.pos().to_string())
                        .collect::<Vec<_>>()
                );
                for rec in undone {
                    self.undone.push((rec, r, "rewind"));
                }
                self.break_session(session);
                self.sync_follow(r);
            }
            HandshakeDecision::Refuse { reason, message } => {
                self.stats.refusals += 1;
                trace!(
                    self,
                    "{} refused: {reason:?}: {message}",
                    self.nodes[r].name
                );
                self.nodes[r].follow = None;
                self.break_session(session);
                let inc = self.nodes[r].inc;
                let d = self.rng.range(200 * MS, 500 * MS);
                self.after(d, Ev::Retry { n: r, inc });
            }
        }
    }

    fn on_records(&mut self, r: usize, p: usize, session: u64, recs: Vec<Rec>) {
        let Some(f) = self.nodes[r].follow else {
            return;
        };
        if f.session != session || f.primary != p || !f.established {
            return;
        }
        // Fencing: a stream of an older term than this replica knows is refused.
        if f.term < self.nodes[r].ctl.term {
            return;
        }
        for rec in recs {
            let pname = self.nodes[p].name.clone();
            let node = &mut self.nodes[r];
            let len = node.log.len() as u64;
            if rec.lsn <= len {
                if node.log[rec.lsn as usize - 1] != rec {
                    let v = format!(
                        "{}: stream from {pname} sends {:?} over {:?}",
                        node.name,
                        rec,
                        node.log[rec.lsn as usize - 1]
                    );
                    return self.violation(v);
                }
            } else if rec.lsn == len + 1 {
                node.log.push(rec);
            } else {
                let v = format!("{}: gap in the stream before {:?}", node.name, rec);
                return self.violation(v);
            }
        }
        if self.setup.mode == CommitMode::Sync {
            let inc = self.nodes[r].inc;
            let d = self.rng.range(200, 10 * MS);
            self.after(d, Ev::DataApplied { n: r, inc });
        } else {
            self.nodes[r].applied = self.nodes[r].log.len() as u64;
        }
        self.send_ack(r);
    }

    pub(crate) fn send_ack(&mut self, r: usize) {
        let Some(f) = self.nodes[r].follow.filter(|f| f.established) else {
            return;
        };
        let flushed = self.nodes[r].log.len() as u64;
        let applied = self.nodes[r].applied.min(flushed);
        self.send(r, f.primary, f.session, Msg::Ack { flushed, applied });
    }

    /// The primary sends every peer the records it has not sent yet.
    fn pump(&mut self, p: usize) {
        let len = self.nodes[p].log.len() as u64;
        let mut out = Vec::new();
        let node = &mut self.nodes[p];
        for (&r, peer) in node.peers.iter_mut() {
            if peer.next <= len {
                out.push((r, peer.session, node.log[peer.next as usize - 1..].to_vec()));
                peer.next = len + 1;
            }
        }
        for (r, session, recs) in out {
            self.send(p, r, session, Msg::Records(recs));
        }
    }

    // -----------------------------------------------------------------------------------------
    // Writes

    /// Whether `n`'s writer takes client writes now: the runtime's gate (primary of the term,
    /// with a lease that holds by its own clock), or the broken variant's.
    pub(crate) fn gate_open(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        if !node.alive || node.witness || !node.is_primary() {
            return false;
        }
        match self.setup.writer {
            Writer::IgnoresLease => true,
            Writer::Leased => {
                node.held_term == Some(node.ctl.term) && node.held.holds(self.clock(n))
            }
        }
    }

    pub(crate) fn on_write(&mut self) {
        if self.now < WRITES_END {
            let d = self.rng.range(2 * MS, 30 * MS);
            self.after(d, Ev::Write);
        }
        for n in 0..self.nodes.len() {
            if self.gate_open(n) {
                self.append_write(n);
            }
        }
    }

    fn append_write(&mut self, n: usize) {
        let write = self.next_write;
        self.next_write += 1;
        self.stats.writes += 1;
        let node = &mut self.nodes[n];
        let term = node.ctl.term.0;
        let rec = Rec {
            term,
            lsn: node.log.len() as u64 + 1,
            write,
        };
        if node.log.last().is_some_and(|l| l.term > term) {
            let v = format!(
                "{}: writes in term {term} after a record of a newer term",
                node.name
            );
            self.violation(v);
        }
        self.nodes[n].log.push(rec);
        self.nodes[n].applied = rec.lsn;
        match self.writers.insert(term, n) {
            Some(o) if o != n => {
                let v = format!(
                    "split brain: {} and {} both wrote in term {term}",
                    self.nodes[o].name, self.nodes[n].name
                );
                self.violation(v);
            }
            _ => {}
        }
        if self.setup.mode == CommitMode::Async {
            self.acknowledge(rec);
        } else {
            self.nodes[n].pending.push(Pending {
                rec,
                deadline: self.now + COMMIT_TIMEOUT,
            });
        }
        self.pump(n);
    }

    fn acknowledge(&mut self, rec: Rec) {
        self.stats.acked += 1;
        self.acked.push(rec);
    }

    /// The commit tracker: acknowledge the pending writes the sync set confirms
    /// (`SyncSet::confirms`), fail those past their timeout.
    pub(crate) fn evaluate(&mut self, p: usize) {
        if self.nodes[p].pending.is_empty() {
            return;
        }
        let fenced = self.setup.ack_fence && !self.gate_open(p);
        let node = &self.nodes[p];
        let acks: Vec<ReplicaAck> = node
            .peers
            .iter()
            .filter_map(|(&r, peer)| {
                peer.ack.map(|(flushed, applied)| ReplicaAck {
                    name: self.nodes[r].name.clone(),
                    flushed: Lsn(flushed),
                    applied: Lsn(applied),
                })
            })
            .collect();
        let mut done = Vec::new();
        let mut timed_out = 0;
        let now = self.now;
        let (mode, sync) = (self.setup.mode, &self.setup.sync);
        self.nodes[p].pending.retain(|w| {
            if !fenced && sync.confirms(mode, &acks, Lsn(w.rec.lsn)).is_some() {
                done.push(w.rec);
                false
            } else if now >= w.deadline {
                timed_out += 1;
                false
            } else {
                true
            }
        });
        self.stats.commit_timeouts += timed_out;
        let lapsed = !self.gate_open(p);
        for rec in done {
            trace!(
                self,
                "{} acknowledges {:?}{}",
                self.nodes[p].name,
                rec,
                if lapsed {
                    " AFTER ITS LEASE RAN OUT"
                } else {
                    ""
                }
            );
            self.acknowledge(rec);
        }
    }
}
