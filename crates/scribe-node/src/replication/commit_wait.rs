//! Waiting for a commit mode to hold (DESIGN.md §3): after the primary's own flush, a semi-sync
//! or sync write waits — bounded — until the sync set's quorum position passes its LSN. The
//! answer always says what was reached; on timeout, what was reached by then.

use std::time::Duration;

use scribe_core::{CommitMode, Lsn};
use serde::Serialize;

use super::registry::Registry;

/// What durability a write reached, as its answer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Durability {
    /// The level reached: `async` (the primary's log), `semi-sync` (the quorum's logs) or `sync`
    /// (applied on the quorum).
    pub mode: CommitMode,
    /// The replicas that acknowledged it at that level.
    pub acked_by: Vec<String>,
    /// Whether less than the requested mode was reached (after the timeout, with
    /// `--on-sync-timeout degrade`).
    pub degraded: bool,
    /// The mode the write asked for, when it differs from the one reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<CommitMode>,
}

impl Durability {
    /// Only the primary's own log (async, or nothing to replicate).
    pub fn local(mode: CommitMode) -> Durability {
        Durability {
            mode,
            acked_by: Vec::new(),
            degraded: false,
            requested: None,
        }
    }
}

/// A wait that ran out of time; `reached` is the best that held at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// What held when the time ran out.
    pub reached: Durability,
    /// How long it waited.
    pub waited: Duration,
}

/// Waits until `mode` holds for the record at `lsn`, for at most `timeout`.
pub async fn wait(
    registry: &Registry,
    mode: CommitMode,
    lsn: Lsn,
    timeout: Duration,
) -> Result<Durability, TimedOut> {
    if mode == CommitMode::Async {
        return Ok(Durability::local(mode));
    }
    let mut rx = registry.quorums();
    let reached = |q: &super::registry::Quorums| {
        q.level(mode)
            .filter(|p| p.lsn >= lsn && !p.acked_by.is_empty())
            .map(|p| p.acked_by.clone())
    };
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            if let Some(acked_by) = reached(&rx.borrow_and_update()) {
                return Some(acked_by);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    match outcome {
        Ok(Some(acked_by)) => Ok(Durability {
            mode,
            acked_by,
            degraded: false,
            requested: None,
        }),
        _ => Err(TimedOut {
            reached: best_reached(registry, mode, lsn),
            waited: timeout,
        }),
    }
}

/// The strongest level below `requested` that holds now for `lsn`.
fn best_reached(registry: &Registry, requested: CommitMode, lsn: Lsn) -> Durability {
    let acks = registry.current_acks();
    let set = registry.sync_set();
    let lower = match requested {
        CommitMode::Sync => vec![CommitMode::SemiSync],
        _ => vec![],
    };
    for m in lower {
        if let Some(acked_by) = set.confirms(m, &acks, lsn) {
            return Durability {
                mode: m,
                acked_by,
                degraded: true,
                requested: Some(requested),
            };
        }
    }
    Durability {
        mode: CommitMode::Async,
        acked_by: Vec::new(),
        degraded: true,
        requested: Some(requested),
    }
}
