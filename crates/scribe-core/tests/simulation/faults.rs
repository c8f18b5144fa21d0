//! Fault injection: killing and restarting nodes, cutting links both ways or one way, slowing
//! them, and breaking the replication sessions a fault interrupts.

use crate::event::{Ev, FaultKind};
use crate::sim::Sim;
use crate::{HEAL_AT, MS};

impl Sim {
    fn pick_target(&mut self) -> usize {
        let primary = self.auth.primary.clone().and_then(|p| self.index(&p));
        match primary {
            Some(p) if self.rng.chance(0.6) => p,
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        }
    }

    pub(crate) fn on_fault(&mut self, kind: FaultKind, dur: u64) {
        if self.now >= HEAL_AT {
            return;
        }
        let end = (self.now + dur).min(HEAL_AT);
        let n = self.nodes.len();
        match kind {
            FaultKind::Kill => {
                let v = self.pick_target();
                if self.nodes[v].alive {
                    self.stats.kills += 1;
                    self.kill(v);
                    self.at(end, Ev::Restart { n: v });
                }
            }
            FaultKind::Cut => {
                let v = self.pick_target();
                self.stats.cuts += 1;
                trace!(self, "CUT {} off both ways", self.nodes[v].name);
                let mut pairs = Vec::new();
                for o in (0..n).filter(|&o| o != v) {
                    pairs.push((v, o));
                    pairs.push((o, v));
                }
                for &(a, b) in &pairs {
                    self.blocked[a][b] += 1;
                }
                self.at(end, Ev::Unblock(pairs));
            }
            FaultKind::OneWay => {
                let a = self.pick_target();
                let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                let (a, b) = if self.rng.chance(0.5) { (a, b) } else { (b, a) };
                self.stats.one_way += 1;
                trace!(
                    self,
                    "ONE-WAY cut {} -> {}",
                    self.nodes[a].name,
                    self.nodes[b].name
                );
                self.blocked[a][b] += 1;
                self.at(end, Ev::Unblock(vec![(a, b)]));
            }
            FaultKind::Slow => {
                let a = self.pick_target();
                let pairs: Vec<(usize, usize)> = if self.rng.chance(0.5) {
                    (0..n).filter(|&o| o != a).map(|o| (a, o)).collect()
                } else {
                    let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    vec![(a, b)]
                };
                self.stats.slow += 1;
                trace!(self, "SLOW links {pairs:?}");
                for &(a, b) in &pairs {
                    self.slow[a][b] += 1;
                }
                self.at(end, Ev::Unslow(pairs));
            }
        }
    }

    pub(crate) fn kill(&mut self, v: usize) {
        trace!(self, "KILL {}", self.nodes[v].name);
        let lease = self.cfg.lease;
        let now = self.clock(v);
        let node = &mut self.nodes[v];
        node.alive = false;
        node.inc += 1;
        let mut sessions: Vec<u64> = node.peers.values().map(|p| p.session).collect();
        sessions.extend(node.follow.map(|f| f.session));
        node.reset_memory(lease, now);
        for s in sessions {
            self.break_session(s);
        }
    }

    pub(crate) fn restart(&mut self, v: usize) {
        if self.nodes[v].alive {
            return;
        }
        trace!(self, "RESTART {}", self.nodes[v].name);
        let lease = self.cfg.lease;
        let now = self.clock(v);
        let node = &mut self.nodes[v];
        node.alive = true;
        node.reset_memory(lease, now);
        let inc = node.inc;
        let d = self.rng.range(1, 20 * MS);
        self.after(d, Ev::Tick { n: v, inc });
        self.on_state_change(v);
    }

    /// A connection dies: nothing more of it is delivered, both ends notice after a while.
    pub(crate) fn break_session(&mut self, session: u64) {
        if !self.dead_sessions.insert(session) {
            return;
        }
        for n in 0..self.nodes.len() {
            let node = &self.nodes[n];
            let involved = node.follow.is_some_and(|f| f.session == session)
                || node.peers.values().any(|p| p.session == session);
            if involved && node.alive {
                let inc = node.inc;
                let d = self.rng.range(5 * MS, 800 * MS);
                self.after(d, Ev::Disconnected { n, inc, session });
            }
        }
    }
}
