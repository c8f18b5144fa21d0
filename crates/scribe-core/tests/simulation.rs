//! A seeded, deterministic discrete-event simulation of failover (DESIGN.md §2–§4; STYLE.md
//! "Simulate what you cannot wait for") over scribe-core's *real* decision code, with everything
//! else modelled simply.
//!
//! What runs for real, at every step: [`ControlState::apply`] (on the model's Raft log and on every
//! node's lagging copy of it), [`PrimaryLease`] and [`PrimarySilence`] (read against each node's
//! own, skewed clock; a renewal "arrives" at the nodes of the majority as early as the moment it
//! was proposed, the most adversarial arrival a real log allows), [`choose_promotion`], [`decide_handshake`] over [`TermHistory`]s built
//! from the nodes' logs, and [`SyncSet::confirms`].
//!
//! What is modelled: simulated time in microseconds; per-node clocks whose rates differ by at most
//! the lease's clock margin; the control plane as a linearizable log (a proposal commits only if its
//! proposer can reach a majority, after a random delay; nodes that reach the majority apply the
//! committed commands after a delay, a cut-off node's copy lags); the data path as per-node logs of
//! `(term, lsn, write id)` records streamed over in-order sessions with delays, drops and
//! reconnects; the controller (renew the lease every `renew_interval`, revoke it when refused) and
//! the failover manager as in `scribe_node::cluster`; replicas following the primary their copy of
//! the state names and performing the handshake's answer (stream, snapshot copy, rewind).
//!
//! Checked in every schedule: (1) at most one node writes in a term, and no two nodes' write gates
//! are open at the same simulated instant; (2) semi-sync/sync: no acknowledged write is lost or
//! undone by a rewind; async: every acknowledged write lost is one a rewind (or snapshot) undid;
//! (3) after healing, every data node's log equals the final primary's; (4) no node's term
//! decreases. `SCRIBE_SIM_SEED=<n>` replays one seed with a trace of its events.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use scribe_core::{
    choose_promotion, decide_handshake, Applied, Candidate, CommitMode, ControlCommand,
    ControlError, ControlState, FailoverKind, HandshakeDecision, LeaseConfig, Lsn, Member,
    Position, PrimaryLease, PrimarySilence, PrimaryView, Quorum, ReplicaAck, ReplicaView, SyncSet,
    Term, TermHistory,
};

const MS: u64 = 1_000;
const SEC: u64 = 1_000_000;
/// Faults are injected until here; then every link heals and every node restarts.
const HEAL_AT: u64 = 14 * SEC;
/// Clients stop writing here, so the cluster can quiesce.
const WRITES_END: u64 = HEAL_AT + 3 * SEC;
/// The end of a schedule, where convergence is checked.
const END: u64 = HEAL_AT + 8 * SEC;
/// How long a semi-sync/sync write waits for its quorum before it fails (not acknowledged).
const COMMIT_TIMEOUT: u64 = 2 * SEC;
/// How long a proposal from a node that cannot reach a majority takes to fail.
const PROPOSE_TIMEOUT: u64 = 500 * MS;
/// The failover manager's tick, by the node's clock (as in `run_failover_manager`).
const FM_TICK: Duration = Duration::from_millis(50);
/// The schedules the main test runs.
const SCHEDULES: u64 = 1_200;
const CLUSTER: &str = "sim";

// ---------------------------------------------------------------------------------------------
// Randomness

/// SplitMix64: small, seeded, good enough to draw schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

// ---------------------------------------------------------------------------------------------
// Setup

/// How the writer gates client writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// As the runtime: only while primary of the term with a lease that holds by its own clock.
    Leased,
    /// Deliberately broken (the checker's sanity check): whenever its copy names it primary.
    IgnoresLease,
}

#[derive(Debug, Clone)]
struct Setup {
    mode: CommitMode,
    sync: SyncSet,
    /// Two data nodes and a witness instead of three data nodes.
    witness: bool,
    writer: Writer,
    /// The primary acknowledges a semi-sync/sync write only while its lease still holds by its
    /// own clock. The runtime's commit wait does not do this today, and without it acknowledged
    /// writes are lost (see `seed_100_semi_sync_write_acknowledged_after_the_lease_ran_out`).
    ack_fence: bool,
    /// How much faster than 1 a node's clock may run, as a fraction: the lease's clock margin,
    /// unless a sanity check breaks that assumption on purpose.
    clock_spread: f64,
}

fn setup_for(seed: u64) -> Setup {
    let any = |n| SyncSet {
        quorum: Quorum::Any,
        n,
        members: None,
    };
    let first = |n| SyncSet {
        quorum: Quorum::First,
        n,
        members: None,
    };
    let (mode, sync, witness) = match seed % 7 {
        0 => (CommitMode::Async, any(1), false),
        1 => (CommitMode::SemiSync, any(1), false),
        2 => (CommitMode::SemiSync, first(1), false),
        3 => (CommitMode::SemiSync, any(2), false),
        4 => (CommitMode::Sync, any(1), false),
        5 => (CommitMode::Async, any(1), true),
        _ => (CommitMode::SemiSync, any(1), true),
    };
    Setup {
        mode,
        sync,
        witness,
        writer: Writer::Leased,
        ack_fence: true,
        clock_spread: LeaseConfig::default().clock_margin,
    }
}

/// A setup with `SCRIBE_SIM_VARIANT` applied, for replays: `no-ack-fence` (the runtime's commit
/// wait as it is), `ignore-lease` (the broken writer), `clock-skew` (clocks beyond the margin).
fn replay_setup(seed: u64) -> Setup {
    let base = setup_for(seed);
    match std::env::var("SCRIBE_SIM_VARIANT").as_deref() {
        Ok("no-ack-fence") => Setup {
            ack_fence: false,
            ..base
        },
        Ok("ignore-lease") => Setup {
            writer: Writer::IgnoresLease,
            ..base
        },
        Ok("clock-skew") => Setup {
            clock_spread: 0.6,
            ..base
        },
        Ok(other) if !other.is_empty() => panic!("unknown SCRIBE_SIM_VARIANT {other:?}"),
        _ => base,
    }
}

// ---------------------------------------------------------------------------------------------
// Model

/// One record of a data node's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Rec {
    term: u64,
    lsn: u64,
    write: u64,
}

impl Rec {
    fn pos(&self) -> Position {
        Position::new(Term(self.term), Lsn(self.lsn))
    }
}

/// A replica's side of a replication session.
#[derive(Debug, Clone, Copy)]
struct Follow {
    primary: usize,
    term: Term,
    session: u64,
    established: bool,
}

/// The primary's side of a replication session.
#[derive(Debug, Clone, Copy)]
struct Peer {
    session: u64,
    next: u64,
    /// `(flushed, applied)` as the replica last acknowledged.
    ack: Option<(u64, u64)>,
}

/// A semi-sync/sync write waiting for its quorum.
#[derive(Debug, Clone, Copy)]
struct Pending {
    rec: Rec,
    deadline: u64,
}

struct Node {
    name: String,
    witness: bool,
    alive: bool,
    /// Grows at every kill: events meant for an earlier incarnation are ignored.
    inc: u64,
    rate_ppm: u64,
    off_ns: u64,
    // Durable.
    log: Vec<Rec>,
    ctl: ControlState,
    ctl_applied: usize,
    // In memory (reset by a kill).
    held: PrimaryLease,
    held_term: Option<Term>,
    renewing: bool,
    ticks: u64,
    silence: PrimarySilence,
    primary_seen: Option<(Term, Option<String>)>,
    fm_busy: bool,
    fm_not_before: Instant,
    follow: Option<Follow>,
    applied: u64,
    peers: BTreeMap<usize, Peer>,
    pending: Vec<Pending>,
}

impl Node {
    /// This node's monotonic clock at real time `t`, in nanoseconds since the simulation's base.
    fn clock_ns(&self, t: u64) -> u64 {
        self.off_ns + t * self.rate_ppm / 1000
    }

    /// The first real time at which this node's clock reads at least `ns`.
    fn real_at(&self, ns: u64) -> u64 {
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
    fn real_us(&self, d: Duration) -> u64 {
        (d.as_nanos() as u64 * 1000).div_ceil(self.rate_ppm)
    }

    fn last(&self) -> Position {
        self.log.last().map_or(Position::ZERO, Rec::pos)
    }

    fn is_primary(&self) -> bool {
        self.ctl.primary.as_deref() == Some(self.name.as_str())
    }

    /// The term history of this node's log: where each term's records begin.
    fn history(&self) -> Result<TermHistory, String> {
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

    fn reset_memory(&mut self, lease: Duration, now: Instant) {
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

#[derive(Debug, Clone)]
enum Msg {
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

#[derive(Debug, Clone)]
enum Outcome {
    Done(Result<Applied, ControlError>),
    Timeout,
}

#[derive(Debug, Clone, Copy)]
enum PropKind {
    Renew { term: Term, sent_at: Instant },
    Promote,
}

struct Prop {
    n: usize,
    inc: u64,
    cmd: ControlCommand,
    kind: PropKind,
    /// When it was proposed (real time).
    at: u64,
}

#[derive(Debug, Clone, Copy)]
enum FaultKind {
    Kill,
    Cut,
    OneWay,
    Slow,
}

#[derive(Debug)]
enum Ev {
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

struct Sched {
    at: u64,
    seq: u64,
    ev: Ev,
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

/// Figures of one schedule, or summed over many.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    schedules: u64,
    events: u64,
    failovers: u64,
    promotions_refused: u64,
    no_candidate: u64,
    rewinds: u64,
    snapshots: u64,
    refusals: u64,
    kills: u64,
    cuts: u64,
    one_way: u64,
    slow: u64,
    writes: u64,
    acked: u64,
    commit_timeouts: u64,
    lost_async: u64,
    undone: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.schedules += o.schedules;
        self.events += o.events;
        self.failovers += o.failovers;
        self.promotions_refused += o.promotions_refused;
        self.no_candidate += o.no_candidate;
        self.rewinds += o.rewinds;
        self.snapshots += o.snapshots;
        self.refusals += o.refusals;
        self.kills += o.kills;
        self.cuts += o.cuts;
        self.one_way += o.one_way;
        self.slow += o.slow;
        self.writes += o.writes;
        self.acked += o.acked;
        self.commit_timeouts += o.commit_timeouts;
        self.lost_async += o.lost_async;
        self.undone += o.undone;
    }

    fn faults(&self) -> u64 {
        self.kills + self.cuts + self.one_way + self.slow
    }
}

/// The result of one schedule.
struct Report {
    seed: u64,
    setup: Setup,
    stats: Stats,
    violations: Vec<String>,
}

impl Report {
    fn split_brain(&self) -> bool {
        self.violations.iter().any(|v| v.starts_with("split brain"))
    }
}

struct Sim {
    setup: Setup,
    cfg: LeaseConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Sched>,
    base: Instant,
    nodes: Vec<Node>,
    blocked: Vec<Vec<u32>>,
    slow: Vec<Vec<u32>>,
    // The control plane.
    /// The committed control log: command, commit time (ms), whether it applied, and on which
    /// nodes it has arrived (a renewal's arrival is what the failover manager counts from).
    raft_log: Vec<(ControlCommand, u64, bool, Vec<bool>)>,
    auth: ControlState,
    props: HashMap<u64, Prop>,
    next_id: u64,
    // The data path.
    fifo: HashMap<(usize, usize, u64), u64>,
    dead_sessions: HashSet<u64>,
    next_write: u64,
    // What the checks need.
    writers: BTreeMap<u64, usize>,
    gates: Vec<Option<(u64, u64, u64)>>,
    intervals: Vec<(u64, u64, usize, u64)>,
    acked: Vec<Rec>,
    undone: Vec<(Rec, usize, &'static str)>,
    violations: Vec<String>,
    stats: Stats,
    trace: bool,
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.trace {
            println!("{:>11.3} ms  {}", $sim.now as f64 / 1000.0, format!($($arg)*));
        }
    };
}

impl Sim {
    fn new(seed: u64, setup: Setup, trace: bool) -> Sim {
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

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Sched {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn after(&mut self, d: u64, ev: Ev) {
        self.at(self.now + d, ev);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn clock(&self, n: usize) -> Instant {
        self.base + Duration::from_nanos(self.nodes[n].clock_ns(self.now))
    }

    fn violation(&mut self, v: String) {
        trace!(self, "VIOLATION: {v}");
        self.violations.push(v);
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn link(&self, a: usize, b: usize) -> bool {
        a == b || self.blocked[a][b] == 0
    }

    fn both_ways(&self, a: usize, b: usize) -> bool {
        self.nodes[a].alive && self.nodes[b].alive && self.link(a, b) && self.link(b, a)
    }

    /// Whether `n` reaches a majority of the control plane's voters (every node votes).
    fn in_quorum(&self, n: usize) -> bool {
        if !self.nodes[n].alive {
            return false;
        }
        let reach = (0..self.nodes.len())
            .filter(|&o| self.both_ways(n, o))
            .count();
        reach * 2 > self.nodes.len()
    }

    /// The model's Raft leader: the lowest-named node that reaches a majority.
    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&n| self.in_quorum(n))
    }

    // -----------------------------------------------------------------------------------------
    // Running

    fn run(mut self) -> Report {
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

    // -----------------------------------------------------------------------------------------
    // Faults

    fn pick_target(&mut self) -> usize {
        let primary = self.auth.primary.clone().and_then(|p| self.index(&p));
        match primary {
            Some(p) if self.rng.chance(0.6) => p,
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        }
    }

    fn on_fault(&mut self, kind: FaultKind, dur: u64) {
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

    fn kill(&mut self, v: usize) {
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

    fn restart(&mut self, v: usize) {
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
    fn break_session(&mut self, session: u64) {
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

    // -----------------------------------------------------------------------------------------
    // The control plane

    fn raft_delay(&mut self) -> u64 {
        if self.rng.chance(0.05) {
            self.rng.range(30 * MS, 300 * MS)
        } else {
            self.rng.range(500, 10 * MS)
        }
    }

    fn propose(&mut self, n: usize, cmd: ControlCommand, kind: PropKind) {
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

    fn on_raft_commit(&mut self, prop: u64) {
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
    fn apply_control(&mut self, n: usize, upto: usize) {
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

    fn on_prop_result(&mut self, prop: u64, outcome: Outcome) {
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
    fn on_state_change(&mut self, n: usize) {
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

    fn on_tick(&mut self, n: usize, inc: u64) {
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

    // -----------------------------------------------------------------------------------------
    // The data path

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

    fn on_deliver(&mut self, from: usize, to: usize, inc_to: u64, session: u64, msg: Msg) {
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
    fn sync_follow(&mut self, n: usize) {
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

    fn send_ack(&mut self, r: usize) {
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
    fn gate_open(&self, n: usize) -> bool {
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

    fn on_write(&mut self) {
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
    fn evaluate(&mut self, p: usize) {
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

    // -----------------------------------------------------------------------------------------
    // Checks

    /// Keeps the real-time intervals during which each node's gate is open.
    fn track_gate(&mut self, n: usize) {
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

    fn finish(mut self) -> Report {
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

fn run_seed(seed: u64, setup: Setup, trace: bool) -> Report {
    let mut r = Sim::new(seed, setup, trace).run();
    r.seed = seed;
    r
}

fn describe(r: &Report) -> String {
    format!(
        "seed {} ({} {}{}): {}",
        r.seed,
        r.setup.mode,
        r.setup.sync,
        if r.setup.witness { ", witness" } else { "" },
        r.violations.join("; ")
    )
}

fn summary(label: &str, s: &Stats, secs: f64) -> String {
    format!(
        "{label}: {} schedules, {} events, {} failovers ({} promotions refused at commit, {} refused by choose_promotion), {} rewinds, {} snapshots, {} handshake refusals, {} faults ({} kills, {} cuts, {} one-way, {} slow), {} writes, {} acknowledged, {} commit timeouts, {} records undone, {} acknowledged async writes lost; {secs:.1} s",
        s.schedules,
        s.events,
        s.failovers,
        s.promotions_refused,
        s.no_candidate,
        s.rewinds,
        s.snapshots,
        s.refusals,
        s.faults(),
        s.kills,
        s.cuts,
        s.one_way,
        s.slow,
        s.writes,
        s.acked,
        s.commit_timeouts,
        s.undone,
        s.lost_async
    )
}

/// The main run: `SCHEDULES` seeds across the commit modes, every property checked; or, with
/// `SCRIBE_SIM_SEED=<n>`, one seed with a trace of its events.
#[test]
fn failover_simulation_keeps_its_promises() {
    if let Ok(seed) = std::env::var("SCRIBE_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SCRIBE_SIM_SEED is a number");
        let r = run_seed(seed, replay_setup(seed), true);
        println!("{}", summary("replay", &r.stats, 0.0));
        assert!(r.violations.is_empty(), "{}", describe(&r));
        return;
    }
    let started = Instant::now();
    let mut total = Stats::default();
    let mut failed = Vec::new();
    for seed in 0..SCHEDULES {
        let r = run_seed(seed, setup_for(seed), false);
        total.add(&r.stats);
        if !r.violations.is_empty() {
            failed.push(describe(&r));
        }
    }
    println!(
        "{}",
        summary("simulation", &total, started.elapsed().as_secs_f64())
    );
    assert!(
        total.failovers > SCHEDULES,
        "too few failovers to mean much"
    );
    assert!(
        total.rewinds > 0 && total.lost_async > 0,
        "no rewinds or async losses"
    );
    assert!(
        failed.is_empty(),
        "{} of {SCHEDULES} schedules failed (replay one with SCRIBE_SIM_SEED=<n> cargo test -p scribe-core --test simulation -- --nocapture):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The checker can fail: a writer that ignores its lease (writes whenever its copy of the state
/// names it primary) must be caught in split brain on some seed.
#[test]
fn a_writer_that_ignores_its_lease_is_caught_in_split_brain() {
    let mut caught = Vec::new();
    for seed in 0..100 {
        let setup = Setup {
            writer: Writer::IgnoresLease,
            ..setup_for(seed)
        };
        let r = run_seed(seed, setup, false);
        if r.split_brain() {
            caught.push(seed);
        }
    }
    println!("split brain caught on {} of 100 seeds", caught.len());
    assert!(!caught.is_empty(), "the split-brain check never bites");
}

/// The checker can fail: clocks whose rates differ by far more than the lease's clock margin
/// break the lease's safety argument, and split brain must be caught on some seed.
#[test]
fn clocks_beyond_the_margin_are_caught_in_split_brain() {
    let caught = (0..100)
        .filter(|&seed| {
            let setup = Setup {
                clock_spread: 0.6,
                ..setup_for(seed)
            };
            run_seed(seed, setup, false).split_brain()
        })
        .count();
    println!("clock skew beyond the margin: split brain caught on {caught} of 100 seeds");
    assert!(
        caught > 0,
        "the split-brain check never bites on skewed clocks"
    );
}

/// A seed the simulation failed on: it passes with the primary's acknowledgements fenced by its
/// lease. (Its schedule changes whenever the modelled runtime does, so whether it still reaches
/// the interleaving it was kept for is not asserted here; `acknowledging_past_the_lease_is_caught`
/// checks that some schedule still does.)
fn regression(seed: u64) {
    let fixed = run_seed(seed, setup_for(seed), false);
    assert!(fixed.violations.is_empty(), "{}", describe(&fixed));
}

/// Seeds on which the model without the lease fence on acknowledgements lost acknowledged
/// writes when last scanned (0..6000 after the failover manager began counting from a renewal's
/// arrival). A change to the modelled runtime reshuffles every schedule; if none of these loses
/// writes any more, scan again (`SCRIBE_SIM_SCAN=6000`) and replace them.
const UNFENCED_LOSSES: [u64; 5] = [1530, 3035, 3095, 3466, 5517];

/// The checker can fail: without the lease fence on acknowledgements (a deposed primary's
/// commit wait answering writes its replicas took after its lease ran out), some schedule loses
/// acknowledged writes; with it, none of those schedules does.
#[test]
fn acknowledging_past_the_lease_is_caught() {
    let scan = std::env::var("SCRIBE_SIM_SCAN")
        .ok()
        .and_then(|n| n.parse::<u64>().ok());
    let seeds: Vec<u64> = match scan {
        Some(n) => (0..n).collect(),
        None => UNFENCED_LOSSES.to_vec(),
    };
    let lost: Vec<u64> = seeds
        .iter()
        .copied()
        .filter(|&seed| {
            let unfenced = Setup {
                ack_fence: false,
                ..setup_for(seed)
            };
            run_seed(seed, unfenced, false)
                .violations
                .iter()
                .any(|v| v.contains("acknowledged write") && v.contains("final primary"))
        })
        .collect();
    println!("without the fence, acknowledged writes lost on seeds {lost:?}");
    assert!(
        !lost.is_empty(),
        "the lost-write check never bites without the fence on {seeds:?}; rescan (see UNFENCED_LOSSES)"
    );
    for seed in lost {
        regression(seed);
    }
}

/// Seed 100 (semi-sync `FIRST 1 (*)`, found by the simulation): the primary n1 of term 3 is cut
/// off both ways with semi-sync writes pending; its lease runs out. At the heal, n1 (the Raft
/// leader) sees its own renewals stopped and asks the replicas where their logs end (n2 at 3/436,
/// n3 at 3/567) and promotes n3; meanwhile n2, whose copy still names n1 primary of term 3,
/// streams n1's backlog up to 3/610 and acknowledges it, and n1's commit wait answers those
/// writes as replicated — long after its lease ran out. n3 becomes primary of term 4 without
/// them; n2 rewinds them. Acknowledged writes lost. Fixed (in the model) by acknowledging only
/// while the lease holds.
#[test]
fn seed_100_semi_sync_write_acknowledged_after_the_lease_ran_out() {
    regression(100);
}

/// Seed 1061 (sync `ANY 1 (*)`): the same loss in sync mode.
#[test]
fn seed_1061_sync_write_acknowledged_after_the_lease_ran_out() {
    regression(1061);
}
