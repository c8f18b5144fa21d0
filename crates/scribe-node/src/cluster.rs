//! Cluster mode (`--cluster`, DESIGN.md §4): this node's part in the control plane — the task
//! that owns its [`Leadership`] (the view follows the control state; on the primary, a lease
//! renewed through Raft every `renew_interval`), and the failover manager that runs on whichever
//! node leads the Raft group.
//!
//! The decisions are scribe-core's: [`PrimaryLease`] (how long the primary may write: from when it
//! *sent* its last renewal that committed, by its own monotonic clock), [`LeaseConfig`] (when the
//! others may consider that lease over: `lease × (1 + margin)` plus a gap, `failover_timeout`),
//! and [`choose_promotion`] (who may be promoted without losing an acknowledged write). This
//! module performs them: it proposes the renewals and the promotion, asks the members where their
//! logs end, and publishes the view. The writer fences itself by the gate the view implies, so a
//! primary that can no longer renew stops taking writes when its lease runs out even if nothing
//! else on it notices.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use scribe_core::{
    choose_promotion, Candidate, CommitMode, ControlCommand, ControlError, ControlState,
    FailoverKind, LeaseConfig, Lsn, Position, PrimaryLease, PrimarySilence, SyncSet, Term,
};
use tokio::sync::mpsc;

use crate::control::{ControlPlane, ProposeError, Role};
use crate::leadership::{ControlView, Leadership, NodeRole, PrimaryInfo};
use crate::node_http::NodeHttp;
use reqwest::Method;

/// What cluster mode needs beyond the control plane's own configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// The `--cluster` list: `(name, peer address)` of every member.
    pub members: Vec<(String, String)>,
    /// Members that vote but hold no data (`--witness` on those nodes; every node is told).
    pub witnesses: BTreeSet<String>,
    /// Lease and failover timings.
    pub lease: LeaseConfig,
    /// `--join`: this node joins a cluster that exists, learned from one of its members.
    pub join: Option<Join>,
    /// `--reform-cluster OLD_ID`: the cluster `OLD_ID` this node belonged to lost its majority
    /// for good; re-form a cluster of this node alone (the `--cluster` list names only it),
    /// keeping its data. The id is the confirmation that it is meant for this node's cluster.
    pub reform: Option<String>,
}

/// A node joining a cluster that exists (`--join URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The member it learned the cluster from, and asks to be added.
    pub url: String,
    /// The cluster's id, as that member reported it.
    pub cluster_id: String,
}

/// The view of this node for the control state `st`; `lease_until` is when this node's lease
/// runs out if it is the primary of `st.term` (an instant already past when it holds none).
pub fn view_of(st: &ControlState, me: &str, witness: bool, lease_until: Instant) -> ControlView {
    let draining = st.switchover.is_some();
    // A member removed at run time (or one not added yet) follows nobody: only members stream.
    let witness = witness || (st.is_bootstrapped() && !st.members.contains_key(me));
    let primary = st.primary.as_ref().and_then(|p| st.members.get(p));
    match primary {
        Some(p) if p.name == me => ControlView {
            role: NodeRole::Primary,
            term: st.term,
            primary: PrimaryInfo {
                name: Some(p.name.clone()),
                peer_addr: Some(p.peer_addr.clone()),
                http_url: p.http_url.clone(),
            },
            lease_until: Some(lease_until),
            draining,
        },
        Some(p) => ControlView {
            role: NodeRole::Replica,
            term: st.term,
            primary: PrimaryInfo {
                name: Some(p.name.clone()),
                // A witness holds no data: it follows nobody.
                peer_addr: (!witness).then(|| p.peer_addr.clone()),
                http_url: p.http_url.clone(),
            },
            lease_until: None,
            draining: false,
        },
        None => ControlView {
            role: NodeRole::Replica,
            term: st.term,
            primary: PrimaryInfo::default(),
            lease_until: None,
            draining: false,
        },
    }
}

/// Owns this node's [`Leadership`] in cluster mode until the task is dropped: announces its HTTP
/// URL, publishes the view of every new control state, and while this node is the primary renews
/// its lease every `renew_interval` (at once after a promotion).
pub async fn run_controller(
    plane: ControlPlane,
    leadership: Leadership,
    me: String,
    witness: bool,
    http_url: String,
    lease: LeaseConfig,
) {
    let announce = {
        let plane = plane.clone();
        let me = me.clone();
        async move {
            loop {
                let cmd = ControlCommand::SetAddresses {
                    name: me.clone(),
                    http_url: http_url.clone(),
                };
                match plane.propose_retrying(cmd, Duration::from_secs(5)).await {
                    Ok(_) => return,
                    Err(ProposeError::Rejected(e)) => {
                        tracing::debug!(error = %e, "announce this node's HTTP URL; retrying");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "announce this node's HTTP URL; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tokio::spawn(announce);
    let mut states = plane.state();
    let mut held = PrimaryLease::new(lease.lease);
    let mut held_term: Option<Term> = None;
    let (done_tx, mut done_rx) = mpsc::channel::<(Term, Instant, Result<(), ProposeError>)>(4);
    let mut renewing = false;
    // The control plane refused a renewal (this node's copy of the state is behind): retry on
    // the tick only, not in a loop, until the state catches up.
    let mut refused = false;
    let mut tick = tokio::time::interval(lease.renew_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let st = states.borrow_and_update().clone();
        let primary_term = (st.primary.as_deref() == Some(me.as_str())).then_some(st.term);
        if primary_term != held_term {
            // A new term (or none): the lease of the old one is worthless here.
            held = PrimaryLease::new(lease.lease);
            held_term = primary_term;
            refused = false;
        }
        let now = Instant::now();
        // A switchover under way drains this primary (the view says so): its lease goes on
        // being renewed, so no automatic failover starts meanwhile.
        let until = held.until().unwrap_or(now);
        leadership.set(view_of(&st, &me, witness, until));
        let renew_now = primary_term.is_some() && held.until().is_none() && !refused;
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = tick.tick() => {}
            _ = std::future::ready(()), if renew_now && !renewing => {}
            Some((term, sent_at, result)) = done_rx.recv() => {
                renewing = false;
                match result {
                    Ok(()) if Some(term) == held_term => held.renewed(sent_at),
                    Ok(()) => {}
                    Err(ProposeError::Rejected(e)) => {
                        tracing::warn!(error = %e, "the control plane refused this primary's lease renewal; it stops taking writes");
                        held.revoke();
                        refused = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "renew the lease"),
                }
                continue;
            }
        }
        if let (Some(term), false) = (primary_term, renewing) {
            renewing = true;
            let plane = plane.clone();
            let me = me.clone();
            let done = done_tx.clone();
            let sent_at = Instant::now();
            tokio::spawn(async move {
                let r = plane
                    .propose(ControlCommand::RenewLease { holder: me, term })
                    .await
                    .map(|_| ());
                let _ = done.send((term, sent_at, r)).await;
            });
        }
    }
}

/// A joining node (`--join`) asks the member it learned the cluster from to add it, until it is
/// a member (its copy of the control state names it) or the add is refused for good. The
/// member forwards the request to the control plane's leader, which contacts this node as a
/// Raft learner, waits for it to catch up and makes it a voter.
pub async fn ask_to_join(
    plane: ControlPlane,
    http: NodeHttp,
    join: Join,
    me: String,
    peer_addr: String,
    witness: bool,
) {
    let body = serde_json::json!({
        "add": {"name": me, "peer_addr": peer_addr, "witness": witness}
    });
    let voter = |plane: &ControlPlane| plane.raft_status().voters.contains(&me);
    loop {
        // Joined means a voter of the Raft group, not only a member of the control state (an
        // add that timed out is undone after the state has named the node).
        if voter(&plane) {
            return;
        }
        let r = http
            .request(
                Method::POST,
                &format!("{}/v1/members", join.url),
                crate::auth::Role::Admin,
            )
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                tracing::warn!(via = %join.url, "joined the cluster");
                return;
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                // An add asked again is answered as done (the leader makes it idempotent), so a
                // refusal is final.
                if status == 409 {
                    tracing::error!(via = %join.url, "the cluster refused to add this node: {text}");
                    return;
                }
                tracing::warn!(via = %join.url, status, "ask to join the cluster: {text}; retrying");
            }
            Err(e) => {
                tracing::warn!(via = %join.url, error = %e, "ask to join the cluster; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the failover manager needs to know of the commit settings in force.
#[derive(Debug, Clone)]
pub struct FailoverPolicy {
    /// The commit mode writes are acknowledged in.
    pub mode: CommitMode,
    /// The sync set.
    pub sync_set: SyncSet,
    /// Lease and failover timings.
    pub lease: LeaseConfig,
}

/// The failover manager, on every node, acting only while this node leads the Raft group: when
/// the primary has been silent for `failover_timeout` ([`PrimarySilence`]: counted from the
/// latest renewal to *arrive* in this node's control log, by its own clock), it asks the data
/// members where their logs end, picks who may be promoted, and commits the promotion
/// (`term + 1`).
pub async fn run_failover_manager(plane: ControlPlane, http: NodeHttp, policy: FailoverPolicy) {
    let raft = plane.raft_status_watch();
    let states = plane.state();
    let mut silence = PrimarySilence::new(Instant::now());
    let mut primary_seen: Option<(Term, Option<String>)> = None;
    // After an attempt that did not promote, the next one waits a little (not a safety matter:
    // the Promote command is fenced by the term and the renewals its proposer saw).
    let mut not_before = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        // Every node keeps its own record, leader or not, so a node that becomes leader after
        // the old leader died need not wait a whole failover timeout more.
        let now = Instant::now();
        {
            // In place: the state is copied only when a failover is due.
            let st = states.borrow();
            if primary_seen.as_ref().map(|(t, p)| (*t, p.as_deref()))
                != Some((st.term, st.primary.as_deref()))
            {
                silence.heard(now);
                primary_seen = Some((st.term, st.primary.clone()));
            }
        }
        if let Some(at) = plane.renewal_arrived() {
            silence.heard(at);
        }
        if raft.borrow().role != Role::Leader || now < not_before {
            continue;
        }
        if !silence.failover_due(&policy.lease, now) {
            continue;
        }
        let st = states.borrow().clone();
        let Some(old) = st.primary.clone() else {
            continue;
        };
        tracing::warn!(primary = %old, term = %st.term, silent_ms = silence.since().elapsed().as_millis() as u64, "the primary's lease renewals stopped; failing over");
        match fail_over(&plane, &http, &policy, &st, &old).await {
            Ok(to) => {
                tracing::warn!(from = %old, %to, term = st.term.get() + 1, "promoted a new primary")
            }
            // This node's copy of the state was behind the log (renewals committed by the old
            // leader, applied only now): look again at once.
            Err(FailoverRefused::Renewed(why)) => {
                tracing::info!(primary = %old, "no failover yet: {why}")
            }
            Err(FailoverRefused::Other(why)) => {
                tracing::error!(primary = %old, "no failover: {why}");
                not_before = Instant::now() + policy.lease.renew_interval;
            }
        }
    }
}

/// Why an attempt to fail over did not promote anybody.
enum FailoverRefused {
    /// The primary renewed after the state this attempt read (or that state was behind).
    Renewed(String),
    /// Anything else (nobody eligible, no quorum, another promotion won).
    Other(String),
}

async fn fail_over(
    plane: &ControlPlane,
    http: &NodeHttp,
    policy: &FailoverPolicy,
    st: &ControlState,
    old: &str,
) -> Result<String, FailoverRefused> {
    let candidates = candidates(http, st, old).await;
    let choice = choose_promotion(&candidates, policy.mode, &policy.sync_set, old)
        .map_err(|e| FailoverRefused::Other(e.to_string()))?;
    let cmd = ControlCommand::Promote {
        name: choice.name.clone(),
        expected_term: st.term,
        reason: choice.reason.clone(),
        kind: FailoverKind::Automatic,
        from: Some(old.to_string()),
        // Refused if the primary renewed after this node saw its renewals stop.
        lease_renewals: Some(st.lease.as_ref().map_or(0, |l| l.renewals)),
    };
    match plane.propose(cmd).await {
        Ok(_) => Ok(choice.name),
        Err(ProposeError::Rejected(ControlError::StaleTerm { .. })) => Err(FailoverRefused::Other(
            "another promotion won the term".into(),
        )),
        Err(ProposeError::Rejected(e @ ControlError::LeaseRenewed { .. })) => {
            Err(FailoverRefused::Renewed(e.to_string()))
        }
        Err(e) => Err(FailoverRefused::Other(format!(
            "propose the promotion of {}: {e}",
            choice.name
        ))),
    }
}

/// What the members other than the old primary answer about their logs, as the promotion
/// decisions take it: every member, the data members other than `old` asked for their
/// positions (unreachable when they do not answer).
pub(crate) async fn candidates(http: &NodeHttp, st: &ControlState, old: &str) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for m in st.members.values() {
        let mut c = Candidate {
            name: m.name.clone(),
            flushed: Position::ZERO,
            applied: Position::ZERO,
            reachable: false,
            witness: m.witness,
        };
        if m.name != old && !m.witness {
            if let Some(url) = &m.http_url {
                if let Some((flushed, applied)) = positions(http, url).await {
                    c.flushed = flushed;
                    c.applied = applied;
                    c.reachable = true;
                }
            }
        }
        candidates.push(c);
    }
    candidates
}

/// A member's flushed and applied positions, from its status page (`None`: unreachable).
async fn positions(http: &NodeHttp, url: &str) -> Option<(Position, Position)> {
    // The summary has the positions: the node asks as `read`, no more.
    let answer = http
        .request(
            Method::GET,
            &format!("{url}/v1/status"),
            crate::auth::Role::Read,
        )
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    match answer.status().as_u16() {
        200..=299 => {}
        // A member whose users file has another token_key answers 401: say so, it is not down.
        code @ (401 | 403) => {
            tracing::warn!(%url, status = code, "a member refused this node's status request: do all members have the same token_key in their --users file?");
            return None;
        }
        code => {
            tracing::debug!(%url, status = code, "a member answered its status with an error");
            return None;
        }
    }
    let status: serde_json::Value = answer.json().await.ok()?;
    let flushed: Position = status.get("position")?.as_str()?.parse().ok()?;
    let applied = Lsn(status.get("applied_lsn")?.as_u64()?);
    Some((
        flushed,
        Position::new(flushed.term, applied.min(flushed.lsn)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scribe_core::Member;

    fn state(primary: &str) -> ControlState {
        let mut st = ControlState::default();
        let members = ["n1", "n2", "w"]
            .iter()
            .map(|n| Member {
                name: n.to_string(),
                peer_addr: format!("{n}:6480"),
                http_url: Some(format!("http://{n}")),
                witness: *n == "w",
            })
            .collect();
        st.apply(
            ControlCommand::Bootstrap {
                cluster_id: "c".into(),
                members,
                primary: primary.into(),
            },
            0,
        )
        .unwrap();
        st
    }

    #[test]
    fn the_primary_writes_under_its_lease_and_the_others_follow_it() {
        let st = state("n1");
        let until = Instant::now() + Duration::from_secs(1);
        let v = view_of(&st, "n1", false, until);
        assert_eq!(v.role, NodeRole::Primary);
        assert_eq!(v.lease_until, Some(until));
        let v = view_of(&st, "n2", false, until);
        assert_eq!(v.role, NodeRole::Replica);
        assert_eq!(v.primary.peer_addr.as_deref(), Some("n1:6480"));
        assert_eq!(v.primary.http_url.as_deref(), Some("http://n1"));
        assert_eq!(v.lease_until, None);
        // A witness knows the primary (to forward) but follows nobody.
        let v = view_of(&st, "w", true, until);
        assert_eq!(v.primary.peer_addr, None);
        assert_eq!(v.primary.name.as_deref(), Some("n1"));
    }

    #[test]
    fn a_node_that_is_not_a_member_follows_nobody() {
        let st = state("n1");
        let v = view_of(&st, "n9", false, Instant::now());
        assert_eq!(v.role, NodeRole::Replica);
        assert_eq!(
            v.primary.peer_addr, None,
            "a removed member must not stream"
        );
        assert_eq!(v.primary.name.as_deref(), Some("n1"));
    }

    #[test]
    fn before_bootstrap_nobody_writes_or_follows() {
        let v = view_of(&ControlState::default(), "n1", false, Instant::now());
        assert_eq!(v.role, NodeRole::Replica);
        assert_eq!(v.primary, PrimaryInfo::default());
    }
}
