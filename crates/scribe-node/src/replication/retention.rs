//! Log retention: every few seconds, delete the change-log segments that neither this node's
//! SQLite nor any known replica still needs — keeping at most `--max-log-size` bytes for
//! replicas that are behind (a replica that falls further behind is re-seeded from a snapshot
//! when it reconnects). What a replica being seeded will stream from is kept whatever the size. With no replica seen since start, the log is kept up to that size, so a
//! replica that joins later can stream instead of being seeded.

use std::time::Duration;

use scribe_core::Lsn;
use scribe_sqlite::{Engine, Retention};

use super::registry::Registry;
use crate::leadership::Leadership;

/// How often retention runs.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Runs retention until the task is dropped.
pub async fn run(
    engine: Engine,
    leadership: Leadership,
    registry: std::sync::Arc<Registry>,
    max_bytes: u64,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (keep_from, pinned_from) = if leadership.is_primary() {
            (
                registry.needed_from().unwrap_or(Lsn::ZERO),
                registry.pinned_from(),
            )
        } else {
            (Lsn::ZERO, None)
        };
        let retention = Retention {
            keep_from,
            max_bytes,
            pinned_from,
        };
        if let Err(e) = engine.retain(retention).await {
            tracing::warn!(error = %e, "delete old change-log segments");
        }
    }
}
