//! The control plane: proposals committed by the model's Raft log (only from a node that reaches
//! a majority), each node applying the committed commands to its copy of the state with the real
//! `ControlState::apply`, the controller's lease renewals, and the failover manager's tick with
//! the real `choose_promotion`.

use std::time::Duration;

use scribe_core::{
    choose_promotion, Applied, Candidate, ControlCommand, ControlError, FailoverKind, Lsn,
    Position, PrimaryLease,
};

use crate::event::{Ev, Outcome, Prop, PropKind};
use crate::sim::Sim;
use crate::{FM_TICK, MS, PROPOSE_TIMEOUT};

impl Sim {
    fn raft_delay(&mut self) -> u64 {
        if self.rng.chance(0.05) {
            self.rng.range(30 * MS, 300 * MS)
        } else {
            self.rng.range(500, 10 * MS)
        }
    }

    pub(crate) fn propose(&mut self, n: usize, cmd: ControlCommand, kind: PropKind) {
        let prop = self.id();
        trace!(self, "{} proposes {cmd:?}", self.nodes[n].name);
        let inc = self.nodes[n].inc;
        let at = self.now;
        self.props.insert(
            prop,
            Prop {
                n,
                inc,
                cmd,
                kind,
                at,
            },
        );
        if self.in_quorum(n) {
            let d = self.raft_delay();
            self.after(d, Ev::RaftCommit { prop });
        } else {
            self.after(
                PROPOSE_TIMEOUT,
                Ev::PropResult {
                    prop,
                    outcome: Outcome::Timeout,
                },
            );
        }
    }

    pub(crate) fn on_raft_commit(&mut self, prop: u64) {
        let (n, inc, cmd, proposed_at) = {
            let p = &self.props[&prop];
            (p.n, p.inc, p.cmd.clone(), p.at)
        };
        let ms = self.now / 1000;
        let res = self.auth.apply(cmd.clone(), ms);
        if let Err(e) = self.auth.check_invariants() {
            self.violation(format!("control state invariant broken: {e}"));
        }
        trace!(self, "raft commits {} -> {res:?}", cmd.kind());
        match (&cmd, &res) {
            (_, Ok(Applied::Promoted { primary, term })) => {
                self.stats.failovers += 1;
                trace!(self, "FAILOVER to {primary} in term {term}");
            }
            (ControlCommand::Promote { .. }, Err(_)) => self.stats.promotions_refused += 1,
            _ => {}
        }
        // The entry reached the nodes of the majority before it committed: as early as the
        // moment it was proposed (the most adversarial arrival a real log allows, since it
        // cannot arrive before it was sent). The others get it when they catch up.
        let mut arrived = vec![false; self.nodes.len()];
        for (o, a) in arrived.iter_mut().enumerate() {
            if self.in_quorum(o) {
                *a = true;
                if matches!(cmd, ControlCommand::RenewLease { .. }) {
                    let at = self.base + Duration::from_nanos(self.nodes[o].clock_ns(proposed_at));
                    self.nodes[o].silence.heard(at);
                }
            }
        }
        self.raft_log.push((cmd, ms, res.is_ok(), arrived));
        let upto = self.raft_log.len();
        let outcome = if self.nodes[n].inc == inc && self.in_quorum(n) {
            Outcome::Done(res)
        } else {
            Outcome::Timeout
        };
        let d = match outcome {
            Outcome::Done(_) => self.rng.range(100, 3 * MS),
            Outcome::Timeout => PROPOSE_TIMEOUT,
        };
        self.after(d, Ev::PropResult { prop, outcome });
        for o in 0..self.nodes.len() {
            if self.in_quorum(o) {
                let d = self.rng.range(100, 5 * MS);
                self.after(d, Ev::ControlApply { n: o, upto });
            }
        }
    }

    /// Node `n` applies the committed commands up to `upto` to its copy of the state, with the
    /// real `ControlState::apply`.
    pub(crate) fn apply_control(&mut self, n: usize, upto: usize) {
        let mut changed = false;
        while self.nodes[n].ctl_applied < upto {
            let i = self.nodes[n].ctl_applied;
            if !self.raft_log[i].3[n] {
                self.raft_log[i].3[n] = true;
                if matches!(self.raft_log[i].0, ControlCommand::RenewLease { .. }) {
                    let now = self.clock(n);
                    self.nodes[n].silence.heard(now);
                }
            }
            let (cmd, ms, ok, _) = self.raft_log[i].clone();
            let node = &mut self.nodes[n];
            let before = node.ctl.term;
            let r = node.ctl.apply(cmd, ms);
            node.ctl_applied += 1;
            let after = node.ctl.term;
            let name = node.name.clone();
            if r.is_ok() != ok {
                self.violation(format!(
                    "{name}: command {i} applied differently here ({r:?}) than on the log"
                ));
            }
            if after < before {
                self.violation(format!("{name}: term went back from {before} to {after}"));
            }
            changed |= r.is_ok();
        }
        if changed {
            self.on_state_change(n);
        }
    }

    pub(crate) fn on_prop_result(&mut self, prop: u64, outcome: Outcome) {
        let Some(p) = self.props.remove(&prop) else {
            return;
        };
        let n = p.n;
        if !self.nodes[n].alive || self.nodes[n].inc != p.inc {
            return;
        }
        match p.kind {
            PropKind::Renew { term, sent_at } => {
                let node = &mut self.nodes[n];
                node.renewing = false;
                match outcome {
                    Outcome::Done(Ok(_)) if Some(term) == node.held_term => {
                        node.held.renewed(sent_at);
                    }
                    Outcome::Done(Ok(_)) => {}
                    Outcome::Done(Err(e)) => {
                        trace!(
                            self,
                            "{}: renewal refused ({e}), lease revoked",
                            self.nodes[n].name
                        );
                        self.nodes[n].held.revoke();
                    }
                    Outcome::Timeout => {}
                }
            }
            PropKind::Promote => {
                // As `run_failover_manager`: refused because the primary renewed (or this
                // node's state was behind) → look again at once; otherwise back off a little.
                let renewed = matches!(
                    outcome,
                    Outcome::Done(Err(ControlError::LeaseRenewed { .. }))
                );
                let now = self.clock(n);
                let node = &mut self.nodes[n];
                node.fm_busy = false;
                if !renewed {
                    node.fm_not_before = now + self.cfg.renew_interval;
                }
            }
        }
    }

    /// What a node does when its copy of the control state changes: the controller's lease reset
    /// and immediate renewal, the demotion of a deposed primary, the replica's following.
    pub(crate) fn on_state_change(&mut self, n: usize) {
        let lease = self.cfg.lease;
        let node = &mut self.nodes[n];
        let primary_term = node.is_primary().then_some(node.ctl.term);
        if primary_term != node.held_term {
            // A new term (or none): the lease of the old one is worthless here, and so are its
            // replication sessions and the writes waiting on them.
            node.held = PrimaryLease::new(lease);
            node.held_term = primary_term;
            let sessions: Vec<u64> = node.peers.values().map(|p| p.session).collect();
            node.peers.clear();
            node.pending.clear();
            for s in sessions {
                self.break_session(s);
            }
        }
        let node = &self.nodes[n];
        if primary_term.is_some() && node.held.until().is_none() && !node.renewing {
            self.renew(n);
        }
        self.sync_follow(n);
    }

    fn renew(&mut self, n: usize) {
        let node = &self.nodes[n];
        let Some(term) = node.is_primary().then_some(node.ctl.term) else {
            return;
        };
        if node.renewing || !node.alive {
            return;
        }
        let cmd = ControlCommand::RenewLease {
            holder: node.name.clone(),
            term,
        };
        let sent_at = self.clock(n);
        self.nodes[n].renewing = true;
        self.propose(n, cmd, PropKind::Renew { term, sent_at });
    }

    pub(crate) fn on_tick(&mut self, n: usize, inc: u64) {
        if !self.nodes[n].alive || self.nodes[n].inc != inc {
            return;
        }
        let d = self.nodes[n].real_us(FM_TICK);
        self.after(d, Ev::Tick { n, inc });
        self.nodes[n].ticks += 1;
        // Catch up on the control log when the node reaches the majority again.
        if self.in_quorum(n) && self.nodes[n].ctl_applied < self.raft_log.len() {
            self.apply_control(n, self.raft_log.len());
        }
        // The controller renews every renew_interval (5 ticks of 50 ms).
        let every = (self.cfg.renew_interval.as_millis() / FM_TICK.as_millis()).max(1) as u64;
        if self.nodes[n].ticks >= every {
            self.nodes[n].ticks = 0;
            self.renew(n);
        }
        self.evaluate(n);
        self.failover_tick(n);
    }

    /// The failover manager's tick, as `run_failover_manager`.
    fn failover_tick(&mut self, n: usize) {
        let now_i = self.clock(n);
        let node = &mut self.nodes[n];
        let st = &node.ctl;
        let key = (st.term, st.lease.as_ref().map_or(0, |l| l.renewals));
        let seen = (st.term, st.primary.clone());
        if node.primary_seen.as_ref() != Some(&seen) {
            node.silence.heard(now_i);
            node.primary_seen = Some(seen);
        }
        if node.fm_busy || now_i < node.fm_not_before || self.leader() != Some(n) {
            return;
        }
        let node = &self.nodes[n];
        let st = &node.ctl;
        let Some(old) = st.primary.clone() else {
            return;
        };
        if !node.silence.failover_due(&self.cfg, now_i) {
            return;
        }
        let mut candidates = Vec::new();
        let mut query = 0;
        for m in st.members.values() {
            let mut c = Candidate {
                name: m.name.clone(),
                flushed: Position::ZERO,
                applied: Position::ZERO,
                reachable: false,
                witness: m.witness,
            };
            if m.name != old && !m.witness {
                let i = self.index(&m.name).expect("a member is a node");
                if self.both_ways(n, i) {
                    let o = &self.nodes[i];
                    c.flushed = o.last();
                    c.applied = Position::new(c.flushed.term, Lsn(o.applied.min(c.flushed.lsn.0)));
                    c.reachable = true;
                    query += 3 * MS;
                } else {
                    query += 500 * MS;
                }
            }
            candidates.push(c);
        }
        let choice = choose_promotion(&candidates, self.setup.mode, &self.setup.sync, &old);
        let cmd = match choice {
            Ok(choice) => {
                trace!(
                    self,
                    "{} (raft leader): {old}'s renewals stopped at {key:?}; candidates {:?}; promote {}",
                    node.name,
                    candidates
                        .iter()
                        .map(|c| (c.name.as_str(), c.reachable, c.flushed.to_string()))
                        .collect::<Vec<_>>(),
                    choice.name
                );
                Some(ControlCommand::Promote {
                    name: choice.name.clone(),
                    expected_term: st.term,
                    reason: choice.reason,
                    kind: FailoverKind::Automatic,
                    from: Some(old),
                    lease_renewals: Some(key.1),
                })
            }
            Err(e) => {
                trace!(self, "{}: no failover: {e}", node.name);
                self.stats.no_candidate += 1;
                None
            }
        };
        let inc = self.nodes[n].inc;
        self.nodes[n].fm_busy = true;
        let d = self.rng.range(query / 2, query.max(1));
        self.after(d, Ev::FmPropose { n, inc, cmd });
    }
}
