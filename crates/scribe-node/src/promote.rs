//! Forced promotion (`POST /v1/promote` with `"force": true`, `scribe promote n2 --force`): the
//! operator's override for a cluster whose primary is gone but which automatic failover will not
//! replace — in semi-sync/sync it promotes only a node that provably holds every acknowledged
//! write, and with too few sync-set members reachable it refuses. Forcing says, loudly, what may
//! be lost ([`scribe_core::force_promotion`]) and promotes the named node through the control
//! plane (`term + 1`, kind `forced`). It needs the control plane's majority: a cluster that has
//! lost it cannot commit anything, forced or not.
//!
//! Never on a healthy cluster: while the primary's lease renewals still arrive (within the time
//! after which others may take its lease as over), the request is refused and nothing changes —
//! a planned hand-over is `scribe switchover`. The Promote command is also fenced by the
//! renewals this node saw, so a primary that renews meanwhile keeps its role.

use std::time::Instant;

use scribe_core::{force_promotion, ControlCommand, ControlError, FailoverKind};
use serde::{Deserialize, Serialize};

use crate::control::ProposeError;
use crate::state::NodeState;
use crate::ApiError;

/// `POST /v1/promote`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The member to promote.
    pub to: String,
    /// Must be `true`: the caller accepts that acknowledged writes may be lost.
    #[serde(default)]
    pub force: bool,
}

/// The answer: who is primary now, and what may have been lost.
#[derive(Debug, Serialize)]
pub struct PromoteResponse {
    /// The previous primary, if one was named.
    pub from: Option<String>,
    /// The new primary.
    pub to: String,
    /// The new term.
    pub term: u64,
    /// What the promotion may have lost, in words.
    pub warning: String,
}

fn refused(why: impl Into<String>) -> ApiError {
    ApiError::Promotion(why.into())
}

/// Runs a forced promotion of `req.to` from this node (any member).
pub async fn run(state: &NodeState, req: &PromoteRequest) -> Result<PromoteResponse, ApiError> {
    let Some(plane) = &state.control else {
        return Err(refused(
            "promotion needs cluster mode (--cluster); restart a --follow replica without --follow to make it a primary",
        ));
    };
    if !req.force {
        return Err(refused(
            "a promotion by hand may lose acknowledged writes: say so with \"force\": true (scribe promote --force); a dead primary is replaced automatically, and a planned hand-over is a switchover",
        ));
    }
    let Some(cluster) = &state.config.cluster else {
        return Err(refused("this node has no cluster settings"));
    };
    let st = plane.state().borrow().clone();
    let old = st.primary.clone().unwrap_or_default();
    // The primary's silence, as this node has seen it: the latest renewal to arrive in its
    // control log, or since it started.
    let heard = plane
        .renewal_arrived()
        .map_or(state.started, |at| at.max(state.started));
    if !old.is_empty() && !cluster.lease.expired_for_others(heard, Instant::now()) {
        return Err(refused(format!(
            "{old} is the primary and renewed its lease {} ms ago: the cluster is healthy, so a forced promotion would depose a working primary and could lose its writes; for a planned hand-over use scribe switchover --to {}",
            heard.elapsed().as_millis(),
            req.to
        )));
    }
    let candidates = crate::cluster::candidates(&state.http, &st, &old).await;
    let forced = force_promotion(
        &candidates,
        state.config.commit,
        &state.config.sync_replicas,
        &old,
        Some(&req.to),
    )
    .map_err(|e| refused(e.to_string()))?;
    tracing::warn!(to = %forced.name, from = %old, "FORCED PROMOTION asked by an operator: {}", forced.warning);
    let cmd = ControlCommand::Promote {
        name: forced.name.clone(),
        expected_term: st.term,
        reason: format!("forced by an operator: {}", forced.warning),
        kind: FailoverKind::Forced,
        from: (!old.is_empty()).then(|| old.clone()),
        lease_renewals: Some(st.lease.as_ref().map_or(0, |l| l.renewals)),
    };
    match plane.propose(cmd).await {
        Ok(_) => Ok(PromoteResponse {
            from: (!old.is_empty()).then_some(old),
            to: forced.name,
            term: st.term.get() + 1,
            warning: forced.warning,
        }),
        Err(ProposeError::Rejected(e @ ControlError::LeaseRenewed { .. })) => {
            Err(refused(format!(
                "the primary {old} renewed its lease meanwhile ({e}): it is alive; nothing changed"
            )))
        }
        Err(ProposeError::Rejected(e)) => Err(refused(e.to_string())),
        Err(e) => Err(ApiError::Forward(format!(
            "the control plane could not commit the promotion (it needs its majority): {e}. \
             If the majority is lost for good (the other members down, not only cut off), re-form \
             the cluster around {}: stop it and start it again with --cluster {}=PEER_ADDR \
             --reform-cluster {} (it keeps its data; see docs/OPERATIONS.md)",
            forced.name,
            forced.name,
            state.cluster_id()
        ))),
    }
}
