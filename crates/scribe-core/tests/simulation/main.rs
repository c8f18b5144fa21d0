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
//!
//! The modules: `setup` (what each seed runs with, and `run_seed`), `report` (figures and
//! violations), `rng`, `node` (the node model and its clock), `event` (events, messages, the
//! queue's order), `sim` (the simulator's state and run loop), `faults`, `control` (the control
//! plane), `data_path` (replication and writes) and `checks`. The tests are here.

use std::time::{Duration, Instant};

use report::{describe, summary, Stats};
use setup::{replay_setup, run_seed, setup_for, Setup, Writer};

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

/// Prints a line of a replay's trace, stamped with the simulated time in milliseconds. Defined
/// before the `mod`s below, which use it (a `macro_rules!` is in scope only after its definition).
macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.trace {
            println!("{:>11.3} ms  {}", $sim.now as f64 / 1000.0, format!($($arg)*));
        }
    };
}

mod checks;
mod control;
mod data_path;
mod event;
mod faults;
mod node;
mod report;
mod rng;
mod setup;
mod sim;

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
