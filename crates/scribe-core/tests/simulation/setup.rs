//! What a schedule is run with: the commit mode, sync set and cluster shape each seed gets
//! (`setup_for`), the deliberately broken variants the sanity checks and replays use, and
//! `run_seed`, which runs one seed under a setup.

use scribe_core::{CommitMode, LeaseConfig, Quorum, SyncSet};

use crate::report::Report;
use crate::sim::Sim;

/// How the writer gates client writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// As the runtime: only while primary of the term with a lease that holds by its own clock.
    Leased,
    /// Deliberately broken (the checker's sanity check): whenever its copy names it primary.
    IgnoresLease,
}

/// What one schedule runs with: the commit mode and sync set, the cluster's shape, and what the
/// sanity checks break on purpose.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) mode: CommitMode,
    pub(crate) sync: SyncSet,
    /// Two data nodes and a witness instead of three data nodes.
    pub(crate) witness: bool,
    pub(crate) writer: Writer,
    /// The primary acknowledges a semi-sync/sync write only while its lease still holds by its
    /// own clock. The runtime's commit wait does not do this today, and without it acknowledged
    /// writes are lost (see `seed_100_semi_sync_write_acknowledged_after_the_lease_ran_out`).
    pub(crate) ack_fence: bool,
    /// How much faster than 1 a node's clock may run, as a fraction: the lease's clock margin,
    /// unless a sanity check breaks that assumption on purpose.
    pub(crate) clock_spread: f64,
}

pub(crate) fn setup_for(seed: u64) -> Setup {
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
pub(crate) fn replay_setup(seed: u64) -> Setup {
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

pub(crate) fn run_seed(seed: u64, setup: Setup, trace: bool) -> Report {
    let mut r = Sim::new(seed, setup, trace).run();
    r.seed = seed;
    r
}
