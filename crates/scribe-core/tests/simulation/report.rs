//! What a schedule yields: its figures (`Stats`, summed over many schedules by the main test),
//! the violations its checks found (`Report`), and the lines that print them.

use crate::setup::Setup;

/// Figures of one schedule, or summed over many.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) schedules: u64,
    pub(crate) events: u64,
    pub(crate) failovers: u64,
    pub(crate) promotions_refused: u64,
    pub(crate) no_candidate: u64,
    pub(crate) rewinds: u64,
    pub(crate) snapshots: u64,
    pub(crate) refusals: u64,
    pub(crate) kills: u64,
    pub(crate) cuts: u64,
    pub(crate) one_way: u64,
    pub(crate) slow: u64,
    pub(crate) writes: u64,
    pub(crate) acked: u64,
    pub(crate) commit_timeouts: u64,
    pub(crate) lost_async: u64,
    pub(crate) undone: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Stats) {
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
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) setup: Setup,
    pub(crate) stats: Stats,
    pub(crate) violations: Vec<String>,
}

impl Report {
    pub(crate) fn split_brain(&self) -> bool {
        self.violations.iter().any(|v| v.starts_with("split brain"))
    }
}

pub(crate) fn describe(r: &Report) -> String {
    format!(
        "seed {} ({} {}{}): {}",
        r.seed,
        r.setup.mode,
        r.setup.sync,
        if r.setup.witness { ", witness" } else { "" },
        r.violations.join("; ")
    )
}

pub(crate) fn summary(label: &str, s: &Stats, secs: f64) -> String {
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
