//! The simulator's core: the `Sim` struct (nodes, links, the control plane's log, the event
//! queue, and what the checks record), its construction from a seed, the helpers every part of
//! it uses (scheduling, clocks, reachability, the model's Raft leader), and the run loop, which
//! sets up the schedule's faults and dispatches each event to its handler.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use scribe_core::{
    ControlCommand, ControlState, LeaseConfig, Member, PrimaryLease, PrimarySilence,
};

use crate::event::{Ev, FaultKind, Prop, PropKind, Sched};
use crate::node::{Node, Rec};
use crate::report::{Report, Stats};
use crate::rng::Rng;
use crate::setup::Setup;
use crate::{CLUSTER, END, HEAL_AT, MS, SEC};

/// One schedule being run: the nodes, the links between them (`blocked` and `slow` count the
/// faults on each directed link), the control plane's committed log and authoritative state, the
/// event queue, and what the checks need.
pub(crate) struct Sim {
    pub(crate) setup: Setup,
    pub(crate) cfg: LeaseConfig,
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) heap: BinaryHeap<Sched>,
    pub(crate) base: Instant,
    pub(crate) nodes: Vec<Node>,
    pub(crate) blocked: Vec<Vec<u32>>,
    pub(crate) slow: Vec<Vec<u32>>,
    // The control plane.
    /// The committed control log: command, commit time (ms), whether it applied, and on which
    /// nodes it has arrived (a renewal's arrival is what the failover manager counts from).
    pub(crate) raft_log: Vec<(ControlCommand, u64, bool, Vec<bool>)>,
    pub(crate) auth: ControlState,
    pub(crate) props: HashMap<u64, Prop>,
    pub(crate) next_id: u64,
    // The data path.
    pub(crate) fifo: HashMap<(usize, usize, u64), u64>,
    pub(crate) dead_sessions: HashSet<u64>,
    pub(crate) next_write: u64,
    // What the checks need.
    pub(crate) writers: BTreeMap<u64, usize>,
    pub(crate) gates: Vec<Option<(u64, u64, u64)>>,
    pub(crate) intervals: Vec<(u64, u64, usize, u64)>,
    pub(crate) acked: Vec<Rec>,
    pub(crate) undone: Vec<(Rec, usize, &'static str)>,
    pub(crate) violations: Vec<String>,
    pub(crate) stats: Stats,
    pub(crate) trace: bool,
}

impl Sim {
    pub(crate) fn new(seed: u64, setup: Setup, trace: bool) -> Sim {
        let cfg = LeaseConfig::default();
        cfg.validate().expect("the default lease config is valid");
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
        let names: &[&str] = if setup.witness {
            &["n1", "n2", "w"]
        } else {
            &["n1", "n2", "n3"]
        };
        let margin_ppm = (setup.clock_spread * 1e6) as u64;
        let base = Instant::now();
        let nodes: Vec<Node> = names
            .iter()
            .map(|&name| {
                // Rates within the margin of one another: all in [1, 1 + margin], often at the
                // extremes.
                let rate_ppm = match rng.below(3) {
                    0 => 1_000_000,
                    1 => 1_000_000 + margin_ppm,
                    _ => 1_000_000 + rng.below(margin_ppm + 1),
                };
                let off_ns = rng.below(1_000_000_000_000);
                let started = base + Duration::from_nanos(off_ns);
                Node {
                    name: name.to_string(),
                    witness: name == "w",
                    alive: true,
                    inc: 0,
                    rate_ppm,
                    off_ns,
                    log: Vec::new(),
                    ctl: ControlState::default(),
                    ctl_applied: 0,
                    held: PrimaryLease::new(cfg.lease),
                    held_term: None,
                    renewing: false,
                    ticks: 0,
                    silence: PrimarySilence::new(started),
                    primary_seen: None,
                    fm_busy: false,
                    fm_not_before: started,
                    follow: None,
                    applied: 0,
                    peers: BTreeMap::new(),
                    pending: Vec::new(),
                }
            })
            .collect();
        let n = nodes.len();
        Sim {
            setup,
            cfg,
            rng,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            base,
            nodes,
            blocked: vec![vec![0; n]; n],
            slow: vec![vec![0; n]; n],
            raft_log: Vec::new(),
            auth: ControlState::default(),
            props: HashMap::new(),
            next_id: 1,
            fifo: HashMap::new(),
            dead_sessions: HashSet::new(),
            next_write: 1,
            writers: BTreeMap::new(),
            gates: vec![None; n],
            intervals: Vec::new(),
            acked: Vec::new(),
            undone: Vec::new(),
            violations: Vec::new(),
            stats: Stats {
                schedules: 1,
                ..Stats::default()
            },
            trace,
        }
    }

    pub(crate) fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Sched {
            at,
            seq: self.seq,
            ev,
        });
    }

    pub(crate) fn after(&mut self, d: u64, ev: Ev) {
        self.at(self.now + d, ev);
    }

    pub(crate) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn clock(&self, n: usize) -> Instant {
        self.base + Duration::from_nanos(self.nodes[n].clock_ns(self.now))
    }

    pub(crate) fn violation(&mut self, v: String) {
        trace!(self, "VIOLATION: {v}");
        self.violations.push(v);
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub(crate) fn link(&self, a: usize, b: usize) -> bool {
        a == b || self.blocked[a][b] == 0
    }

    pub(crate) fn both_ways(&self, a: usize, b: usize) -> bool {
        self.nodes[a].alive && self.nodes[b].alive && self.link(a, b) && self.link(b, a)
    }

    /// Whether `n` reaches a majority of the control plane's voters (every node votes).
    pub(crate) fn in_quorum(&self, n: usize) -> bool {
        if !self.nodes[n].alive {
            return false;
        }
        let reach = (0..self.nodes.len())
            .filter(|&o| self.both_ways(n, o))
            .count();
        reach * 2 > self.nodes.len()
    }

    /// The model's Raft leader: the lowest-named node that reaches a majority.
    pub(crate) fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| self.in_quorum(n))
    }

    pub(crate) fn run(mut self) -> Report {
        let members = self
            .nodes
            .iter()
            .map(|n| Member {
                name: n.name.clone(),
                peer_addr: format!("{}:6480", n.name),
                http_url: Some(format!("http://{}", n.name)),
                witness: n.witness,
            })
            .collect();
        let boot = ControlCommand::Bootstrap {
            cluster_id: CLUSTER.into(),
            members,
            primary: "n1".into(),
        };
        let r = self.auth.apply(boot.clone(), 0);
        assert!(r.is_ok(), "bootstrap: {r:?}");
        let everywhere = vec![true; self.nodes.len()];
        self.raft_log.push((boot, 0, true, everywhere));
        trace!(
            self,
            "setup {:?} {} {}; clocks {:?}",
            self.setup.mode,
            self.setup.sync,
            if self.setup.witness {
                "2 data + witness"
            } else {
                "3 data"
            },
            self.nodes.iter().map(|n| n.rate_ppm).collect::<Vec<_>>()
        );
        for n in 0..self.nodes.len() {
            self.apply_control(n, 1);
            let first = self.rng.range(1, 50 * MS);
            let inc = self.nodes[n].inc;
            self.at(first, Ev::Tick { n, inc });
        }
        // Now and then a replica joins late, with an empty log: it is seeded from a snapshot.
        if self.rng.chance(0.25) {
            let late = 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize;
            if !self.nodes[late].witness {
                self.kill(late);
                let at = self.rng.range(300 * MS, 3 * SEC);
                self.at(at, Ev::Restart { n: late });
            }
        }
        let first = self.rng.range(1, 20 * MS);
        self.at(first, Ev::Write);
        // The fault plan: kinds and durations now, targets when they fire.
        let mut t = self.rng.range(500 * MS, 2_500 * MS);
        while t < HEAL_AT - 300 * MS {
            let kind = match self.rng.below(100) {
                0..=29 => FaultKind::Kill,
                30..=59 => FaultKind::Cut,
                60..=74 => FaultKind::OneWay,
                _ => FaultKind::Slow,
            };
            let dur = self.rng.range(300 * MS, 5 * SEC);
            self.at(t, Ev::Fault { kind, dur });
            t += self.rng.range(300 * MS, 3 * SEC);
        }
        self.at(HEAL_AT, Ev::Heal);
        while let Some(s) = self.heap.pop() {
            if s.at > END {
                break;
            }
            self.now = s.at;
            self.stats.events += 1;
            self.handle(s.ev);
            for n in 0..self.nodes.len() {
                self.track_gate(n);
            }
        }
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Write => self.on_write(),
            Ev::Tick { n, inc } => self.on_tick(n, inc),
            Ev::RaftCommit { prop } => self.on_raft_commit(prop),
            Ev::PropResult { prop, outcome } => self.on_prop_result(prop, outcome),
            Ev::ControlApply { n, upto } => {
                if self.nodes[n].alive {
                    self.apply_control(n, upto);
                }
            }
            Ev::FmPropose { n, inc, cmd } => {
                if !self.nodes[n].alive || self.nodes[n].inc != inc {
                    return;
                }
                match cmd {
                    Some(cmd) => self.propose(n, cmd, PropKind::Promote),
                    None => {
                        let now = self.clock(n);
                        self.nodes[n].fm_busy = false;
                        self.nodes[n].fm_not_before = now + self.cfg.renew_interval;
                    }
                }
            }
            Ev::Deliver {
                from,
                to,
                inc_to,
                session,
                msg,
            } => self.on_deliver(from, to, inc_to, session, msg),
            Ev::Disconnected { n, inc, session } => {
                if !self.nodes[n].alive || self.nodes[n].inc != inc {
                    return;
                }
                if self.nodes[n].follow.is_some_and(|f| f.session == session) {
                    trace!(self, "{}: stream {session} lost", self.nodes[n].name);
                    self.nodes[n].follow = None;
                    let d = self.rng.range(50 * MS, 300 * MS);
                    self.after(d, Ev::Retry { n, inc });
                }
                let gone: Vec<usize> = self.nodes[n]
                    .peers
                    .iter()
                    .filter(|(_, p)| p.session == session)
                    .map(|(&r, _)| r)
                    .collect();
                for r in gone {
                    self.nodes[n].peers.remove(&r);
                }
            }
            Ev::Retry { n, inc } => {
                if self.nodes[n].alive && self.nodes[n].inc == inc {
                    self.sync_follow(n);
                }
            }
            Ev::DataApplied { n, inc } => {
                if self.nodes[n].alive && self.nodes[n].inc == inc {
                    self.nodes[n].applied = self.nodes[n].log.len() as u64;
                    self.send_ack(n);
                }
            }
            Ev::Fault { kind, dur } => self.on_fault(kind, dur),
            Ev::Restart { n } => self.restart(n),
            Ev::Unblock(pairs) => {
                for (a, b) in pairs {
                    self.blocked[a][b] = self.blocked[a][b].saturating_sub(1);
                }
                trace!(self, "links healed");
            }
            Ev::Unslow(pairs) => {
                for (a, b) in pairs {
                    self.slow[a][b] = self.slow[a][b].saturating_sub(1);
                }
            }
            Ev::Heal => {
                trace!(self, "HEAL: every link up, every node restarted");
                for row in self.blocked.iter_mut().chain(self.slow.iter_mut()) {
                    row.iter_mut().for_each(|c| *c = 0);
                }
                for n in 0..self.nodes.len() {
                    self.restart(n);
                }
            }
        }
    }
}
