//! Rejoining a new primary: a node ahead of it (an old primary whose last records were never
//! replicated) undoes its own records after the point both logs share, saves them to a rollback
//! file, and reports how many it undid to the control plane's failover history.

use std::time::{Duration, Instant};

use scribe_core::Position;

use super::{Ended, FollowState, Follower, RollbackView};

impl Follower {
    /// Undoes this node's records after `to` (the primary never had them: it was an old primary
    /// whose last writes were not replicated), saving them to a rollback file in the data
    /// directory; then the connection is made again and streaming goes on from `to`.
    pub(super) async fn rewind(&self, primary: &str, to: Position) -> Ended {
        let from = self.engine.progress().flushed;
        self.set_state(FollowState::RollingBack, None);
        let file = self.data_dir.join("rollback.json");
        match self.engine.rewind(to, file).await {
            Ok(report) => {
                tracing::warn!(
                    %primary,
                    from = %from,
                    to = %report.to,
                    transactions = report.undone,
                    rows = report.rows,
                    file = %report.file.display(),
                    "rolled back this node's records that the new primary never had; they are in the rollback file"
                );
                self.shared().rollbacks.push(RollbackView {
                    at_unix_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                    from: from.to_string(),
                    to: report.to.to_string(),
                    transactions: report.undone,
                    rows: report.rows,
                    file: report.file.display().to_string(),
                });
                self.report_rollback(from, report.undone);
                Ended::Failed(format!(
                    "rolled back {} transactions after {} to follow {primary}; reconnecting",
                    report.undone, report.to
                ))
            }
            Err(scribe_sqlite::EngineError::NeedSnapshot(why)) => Ended::Fatal(format!(
                "the primary {primary} asks this node to undo its records after {to}, but they cannot be undone ({why}); \
                 start this node with an empty data directory to be seeded from a snapshot"
            )),
            // The write gate still open (this node was primary a moment ago): try again.
            Err(e @ scribe_sqlite::EngineError::BadRequest(_)) => {
                Ended::Failed(format!("roll back to {to} for the primary {primary}: {e}"))
            }
            Err(e) => Ended::Fatal(format!("roll back to {to} for the primary {primary}: {e}")),
        }
    }

    /// Records in the control plane's failover history that this node undid `transactions` of
    /// its own after `from` — on the event of the promotion that deposed it (the first term
    /// after the one it wrote in). In the background, retried only while no leader is known (the
    /// report is not idempotent: one that may have committed is not sent again); the roll-back
    /// itself is done and in the rollback file whatever happens to the report.
    fn report_rollback(&self, from: Position, transactions: u64) {
        let Some(plane) = self.control.clone() else {
            return;
        };
        if transactions == 0 {
            return;
        }
        let term = plane
            .state()
            .borrow()
            .history
            .iter()
            .map(|e| e.term)
            .filter(|t| *t > from.term)
            .min();
        let Some(term) = term else {
            return;
        };
        tokio::spawn(async move {
            let cmd = scribe_core::ControlCommand::ReportRollback { term, transactions };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match plane.propose(cmd.clone()).await {
                    Ok(_) => return,
                    Err(crate::control::ProposeError::NoLeader) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %term, transactions, "could not record the roll-back in the failover history");
                        return;
                    }
                }
            }
        });
    }
}
