//! Planned switchover (`POST /v1/switchover`, `scribe switchover --to n2`): the primary hands
//! over to a replica without losing anything in any commit mode (DESIGN.md §4).
//!
//! The steps, run on the primary (a replica forwards the request there):
//! 1. Check the target: a member holding data, not the primary, streaming from this primary,
//!    and keeping up — it must apply what this primary had flushed when the switchover was asked
//!    within [`KEEP_UP`], while writes still flow; a lagging target is refused, nothing changed.
//! 2. Commit `BeginSwitchover` in the control plane. From then the controller keeps this node's
//!    lease from covering writes, so the write gate closes; once it is closed, nothing more can
//!    become durable here and the log's flushed position is final.
//! 3. Wait (bounded) until the target has that position in its log.
//! 4. Commit `Promote { kind: switchover }`: the target is primary in `term + 1`, opens its gate
//!    after its first lease renewal, and this node follows it.
//!
//! A target that does not catch up in time cancels the switchover, and writes resume here.

use std::time::{Duration, Instant};

use scribe_core::{ControlCommand, ControlError, FailoverKind, Lsn, Position};
use serde::{Deserialize, Serialize};

use crate::control::ProposeError;
use crate::leadership::NodeRole;
use crate::state::NodeState;
use crate::ApiError;

/// How long a target may take, before anything is paused, to apply what the primary had flushed
/// when the switchover was asked.
pub const KEEP_UP: Duration = Duration::from_secs(5);

/// How long the primary may take to close its write gate once the switchover is committed
/// (a batch's fsync in flight finishes first).
pub const DRAIN: Duration = Duration::from_millis(500);

/// How long the target may take to catch up with the drained primary. Writes are paused from
/// the switchover's commit until the promotion's, so the pause is at most [`DRAIN`] plus this
/// plus the promotion's commit (milliseconds when the control plane is healthy).
pub const CATCH_UP: Duration = Duration::from_millis(500);

/// `POST /v1/switchover`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// The member to hand over to.
    pub to: String,
}

/// The answer: who is primary now, in which term, and how long writes were paused.
#[derive(Debug, Serialize)]
pub struct SwitchoverResponse {
    /// The previous primary.
    pub from: String,
    /// The new primary.
    pub to: String,
    /// The new term.
    pub term: u64,
    /// The last position the old primary wrote; the new primary has it.
    pub position: Position,
    /// Milliseconds from the switchover's commit (from when writes stop being confirmed) to the
    /// promotion's commit.
    pub paused_ms: f64,
}

fn refused(why: impl Into<String>) -> ApiError {
    ApiError::Switchover(why.into())
}

/// Runs a switchover to `to` on this node, which must be the primary.
pub async fn run(state: &NodeState, to: &str) -> Result<SwitchoverResponse, ApiError> {
    let Some(plane) = &state.control else {
        return Err(refused(
            "a switchover needs cluster mode (--cluster): this node's role is fixed by its configuration",
        ));
    };
    let me = state.identity.name.clone();
    let st = plane.state().borrow().clone();
    if st.primary.as_deref() != Some(me.as_str()) {
        return Err(refused(format!(
            "{me} is not the primary (the primary is {})",
            st.primary.as_deref().unwrap_or("unknown")
        )));
    }
    let Some(member) = st.members.get(to) else {
        return Err(refused(format!(
            "no member is called {to:?} (members: {})",
            st.members.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    };
    if member.witness {
        return Err(refused(format!("{to} is a witness: it holds no data")));
    }
    if to == me {
        return Err(refused(format!("{to} is the primary already")));
    }
    let flushed = state.engine.progress().flushed.lsn;
    let reported = replica_flushed(state, to);
    match reported {
        None => {
            return Err(refused(format!(
                "{to} is not streaming from {me}: a switchover to it would wait for a replica that is not there"
            )))
        }
        Some(at) if flushed.0.saturating_sub(at.0) > 100_000 => {
            return Err(refused(format!(
                "{to} is {} records behind {me}: let it catch up first",
                flushed.0 - at.0
            )))
        }
        Some(_) => {}
    }
    // Keeping up, before anything is paused.
    let keep_up = async {
        // The registry publishes every replica report; wake on those.
        let mut reports = state.registry.quorums();
        loop {
            if replica_applied(state, to).is_some_and(|a| a >= flushed) {
                return;
            }
            tokio::select! {
                _ = reports.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    };
    if tokio::time::timeout(KEEP_UP, keep_up).await.is_err() {
        let applied = replica_applied(state, to).map_or("nothing".to_string(), |a| a.to_string());
        return Err(refused(format!(
            "{to} is lagging: {KEEP_UP:?} after the switchover was asked it had applied up to lsn {applied} of the {flushed} {me} had flushed; nothing changed, {me} is still the primary"
        )));
    }
    let term = st.term;
    match plane
        .propose_retrying(
            ControlCommand::BeginSwitchover {
                to: to.to_string(),
                expected_term: term,
            },
            Duration::from_secs(2),
        )
        .await
    {
        Ok(_) => {}
        // A retry of a proposal that did commit: the same switchover, begun.
        Err(ProposeError::Rejected(ControlError::SwitchoverPending { to: pending }))
            if pending == to => {}
        Err(ProposeError::Rejected(e)) => return Err(refused(e.to_string())),
        Err(e) => {
            // It may have committed: cancel, so no switchover is left pending.
            cancel(plane, term).await;
            return Err(unavailable(format!("begin the switchover: {e}")));
        }
    }
    // Writes stop being confirmed from here: the pause is counted from this moment.
    let paused = Instant::now();
    // From here every way out that is not a promotion cancels the switchover, also when the
    // request is dropped half way (its client went away).
    let mut guard = CancelOnDrop {
        plane: Some(plane.clone()),
        term,
    };
    tracing::warn!(%to, %term, "switchover: draining writes");
    // The controller sees the pending switchover and keeps the lease from covering writes; the
    // gate keeper then closes the gate. Wait for both, so that nothing can become durable after.
    let drained = async {
        let mut view = state.leadership.subscribe();
        loop {
            let draining = {
                let v = view.borrow_and_update();
                v.role == NodeRole::Primary && !v.is_serving_primary(Instant::now())
            };
            if draining && !state.engine.gate().is_open() {
                return;
            }
            tokio::select! {
                _ = view.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
    };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        return Err(refused(format!(
            "the primary did not close its write gate within {DRAIN:?}; the switchover is being cancelled"
        )));
    }
    let last = state.engine.progress().flushed;
    let caught_up = async {
        loop {
            if replica_flushed(state, to).is_some_and(|f| f >= last.lsn) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    if tokio::time::timeout(CATCH_UP, caught_up).await.is_err() {
        return Err(refused(format!(
            "{to} did not have {last} within {CATCH_UP:?}; the switchover is being cancelled and {me} takes writes again"
        )));
    }
    let promoted = plane
        .propose(ControlCommand::Promote {
            name: to.to_string(),
            expected_term: term,
            reason: format!("planned switchover from {me}, asked by an operator"),
            kind: FailoverKind::Switchover,
            from: Some(me.clone()),
            lease_renewals: None,
        })
        .await;
    if let Err(e) = promoted {
        // Not known to have failed: the state tells (a proposal that timed out may have
        // committed).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = plane.state().borrow().clone();
        if !(now.primary.as_deref() == Some(to) && now.term > term) {
            return Err(unavailable(format!("promote {to}: {e}")));
        }
    }
    guard.plane = None;
    let paused_ms = paused.elapsed().as_secs_f64() * 1000.0;
    tracing::warn!(%to, term = term.get() + 1, position = %last, paused_ms, "switchover done");
    Ok(SwitchoverResponse {
        from: me,
        to: to.to_string(),
        term: term.get() + 1,
        position: last,
        paused_ms,
    })
}

/// What `name` has reported flushed to this primary, if it is connected.
fn replica_flushed(state: &NodeState, name: &str) -> Option<Lsn> {
    replica_ack(state, name).map(|a| a.flushed)
}

/// What `name` has reported applied to this primary, if it is connected.
fn replica_applied(state: &NodeState, name: &str) -> Option<Lsn> {
    replica_ack(state, name).map(|a| a.applied)
}

fn replica_ack(state: &NodeState, name: &str) -> Option<scribe_core::ReplicaAck> {
    state
        .registry
        .current_acks()
        .into_iter()
        .find(|a| a.name == name)
}

fn unavailable(why: String) -> ApiError {
    ApiError::Engine(scribe_sqlite::EngineError::Unavailable(format!(
        "the control plane did not commit the switchover step ({why}); nothing changed"
    )))
}

/// Cancels the switchover when dropped, unless disarmed (`plane = None`) after the promotion.
struct CancelOnDrop {
    plane: Option<crate::control::ControlPlane>,
    term: scribe_core::Term,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(plane) = self.plane.take() {
            let term = self.term;
            tokio::spawn(async move { cancel(&plane, term).await });
        }
    }
}

async fn cancel(plane: &crate::control::ControlPlane, term: scribe_core::Term) {
    tracing::warn!(%term, "cancelling the switchover; writes resume on this primary");
    if let Err(e) = plane
        .propose_retrying(
            ControlCommand::CancelSwitchover {
                expected_term: term,
            },
            Duration::from_secs(2),
        )
        .await
    {
        tracing::error!(error = %e, "cancel the switchover");
    }
}
