//! `GET /v1/status`: what this node is and sees — its role, term and positions, its lease, the
//! replicas it serves (primary) or its own replication (replica), and in cluster mode the
//! control plane's view: members with their health and lag, the Raft group, the lease, the
//! failover history.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use scribe_core::{CommitMode, Position};
use serde::Serialize;

use crate::auth::{Principal, Role};
use crate::leadership::NodeRole;
use crate::replication::follower::FollowView;
use crate::replication::registry::ReplicaView;
use crate::state::NodeState;

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Cluster id.
    pub cluster_id: String,
    /// `primary`, `replica`, or `witness` (a cluster member that votes but holds no data).
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// The primary's name as this node knows it (its own on a primary); `null` when unknown.
    pub primary: Option<String>,
    /// On a primary: whether it holds its lease (absent on a replica).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
    /// Position token of the last durable record.
    pub position: Position,
    /// Last record appended to the log.
    pub last_lsn: u64,
    /// Last record fsynced in the log.
    pub flushed_lsn: u64,
    /// Last record applied to SQLite.
    pub applied_lsn: u64,
    /// Whether the node takes writes.
    pub accepting_writes: bool,
    /// Why it does not, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_failure: Option<String>,
    /// Bytes of change log on disk.
    pub log_bytes: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Scribe's version.
    pub version: &'static str,
    /// Oldest record still held in the change log.
    pub log_first_lsn: u64,
    /// Where the peer protocol listens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// Commit settings (on a primary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSettings>,
    /// The replication of this replica (on a replica).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<FollowView>,
    /// Replicas following this node (on a primary).
    pub replicas: Vec<ReplicaView>,
    /// The cluster as this node's control plane sees it (cluster mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Multi-master mode only: the version vector, the policies and each peer's link. Its
    /// peers streaming this node's log are listed in `replicas` too, with their lag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_master: Option<MultiMasterStatus>,
}

/// A multi-master node's view.
#[derive(Debug, Serialize)]
pub struct MultiMasterStatus {
    /// The node that runs schema changes.
    pub ddl_node: String,
    /// Conflict policies by table (a table not listed is `lww`).
    pub policies: std::collections::BTreeMap<String, String>,
    /// What this node has applied from each origin: the last sequence number.
    pub version_vector: std::collections::BTreeMap<String, u64>,
    /// Each peer's log as this node streams it.
    pub peers: Vec<crate::multi_master::PeerLink>,
    /// Unresolved conflicts of `versioned` tables, by table (`GET /v1/conflicts` lists them).
    pub conflicts: std::collections::BTreeMap<String, u64>,
}

impl MultiMasterStatus {
    fn of(state: &NodeState) -> Option<MultiMasterStatus> {
        let mm = state.mm.as_ref()?;
        let st = state.engine.mm_status().unwrap_or_default();
        Some(MultiMasterStatus {
            ddl_node: mm.ddl_node().to_string(),
            policies: st.policies.clone(),
            version_vector: st.vv.iter().map(|(o, s)| (o.to_string(), s.0)).collect(),
            peers: mm.links(),
            conflicts: st.conflicts,
        })
    }
}

/// The commit settings a primary runs with.
#[derive(Debug, Serialize)]
pub struct CommitSettings {
    /// Default mode.
    pub mode: CommitMode,
    /// Sync set.
    pub sync_replicas: String,
    /// Wait bound, milliseconds.
    pub sync_timeout_ms: u64,
    /// `error` or `degrade`.
    pub on_sync_timeout: String,
}

/// A primary's lease, by its own monotonic clock.
///
/// Invariant: `remaining_ms` is `Some(0)` or absent whenever `held` is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// Whether the lease holds now (always, for a primary by configuration).
    pub held: bool,
    /// Milliseconds until it runs out unless renewed; `null` for a primary by configuration,
    /// which has no lease.
    pub remaining_ms: Option<u64>,
}

impl LeaseStatus {
    /// The lease of `view` at `now`: `None` unless the view is a primary's.
    pub fn of(view: &crate::leadership::ControlView, now: std::time::Instant) -> Option<Self> {
        if view.role != NodeRole::Primary {
            return None;
        }
        Some(match view.lease_until {
            None => LeaseStatus {
                held: true,
                remaining_ms: None,
            },
            Some(until) => LeaseStatus {
                held: now < until && !view.draining,
                remaining_ms: Some(until.saturating_duration_since(now).as_millis() as u64),
            },
        })
    }
}

/// `cluster` in `GET /v1/status`: the applied control state and the Raft group, as this node
/// sees them. Nothing here costs a network call.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The Raft group of the control plane.
    pub raft: RaftView,
    /// Every member, by name.
    pub members: Vec<MemberStatus>,
    /// The primary's lease as the control state records it (`null` before bootstrap).
    pub lease: Option<scribe_core::Lease>,
    /// The last changes of primary (at most `scribe_core::control::HISTORY_LIMIT`), newest last.
    pub failovers: Vec<scribe_core::FailoverEvent>,
    /// A planned switchover under way, or `null`.
    pub switchover: Option<scribe_core::PendingSwitchover>,
    /// The cluster's commit mode and sync set.
    pub commit: scribe_core::CommitSettings,
}

/// `cluster.raft`: this node's view of the control plane's Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RaftView {
    /// This node's Raft role: `leader`, `follower`, `candidate`, `learner`, `shutdown`.
    pub role: crate::control::Role,
    /// The leader's name, when one is known.
    pub leader: Option<String>,
    /// The Raft term (not the cluster's primary term).
    pub raft_term: u64,
    /// Index of the last entry in this node's Raft log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to its control state.
    pub last_applied_index: Option<u64>,
    /// The voters' names.
    pub voters: Vec<String>,
}

impl From<crate::control::RaftStatus> for RaftView {
    fn from(s: crate::control::RaftStatus) -> Self {
        RaftView {
            role: s.role,
            leader: s.leader,
            raft_term: s.raft_term,
            last_log_index: s.last_log_index,
            last_applied_index: s.last_applied_index,
            voters: s.voters,
        }
    }
}

/// What a member is in the cluster, by the control state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// The current primary.
    Primary,
    /// A data member that is not the primary.
    Replica,
    /// Votes, holds no data.
    Witness,
}

/// One member in `cluster.members`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberStatus {
    /// Its name.
    pub name: String,
    /// Where peers reach it.
    pub peer_addr: String,
    /// Its HTTP API, once it announced it.
    pub http_url: Option<String>,
    /// Whether it is a witness.
    pub witness: bool,
    /// `primary`, `replica` or `witness`.
    pub role: MemberRole,
    /// How it is, as far as this node knows without asking it (see [`MemberStatus::list`]).
    pub health: String,
    /// Records it has not applied, when this node knows (see `health`).
    pub lag_records: Option<u64>,
    /// Its apply lag in milliseconds, when this node knows.
    pub lag_ms: Option<f64>,
}

/// What this node knows of the others' health, by what it is.
#[derive(Debug, Clone, Copy)]
pub enum Vantage<'a> {
    /// This node is the primary: its registry's view of its replicas.
    Primary(&'a [ReplicaView]),
    /// This node is a replica: its follower's view of its own replication.
    Replica(&'a FollowView),
    /// This node is a witness: it follows nobody.
    Witness,
}

impl MemberStatus {
    /// The members of `control`, as this node `me` sees them from `vantage`. `health` is:
    /// - `up` for this node when it is the primary or a witness;
    /// - this node's own replication state (`connecting`, `seeding`, `catching_up`,
    ///   `streaming`, `rolling_back`, `refused`, `failed`) when it is a replica, with its lag;
    /// - on the primary, for each other data member, the registry's state of it (`seeding`,
    ///   `catching_up`, `streaming`, `disconnected`) with its lag; `disconnected` also for one
    ///   that has not connected since this node became primary;
    /// - `unknown` otherwise (another node seen from a replica, a witness seen from anyone).
    pub fn list(
        control: &scribe_core::ControlState,
        me: &str,
        vantage: Vantage<'_>,
    ) -> Vec<MemberStatus> {
        control
            .members
            .values()
            .map(|m| {
                let role = if m.witness {
                    MemberRole::Witness
                } else if control.primary.as_deref() == Some(m.name.as_str()) {
                    MemberRole::Primary
                } else {
                    MemberRole::Replica
                };
                let (health, lag_records, lag_ms) = match vantage {
                    Vantage::Primary(_) | Vantage::Witness if m.name == me => {
                        ("up".to_string(), None, None)
                    }
                    Vantage::Replica(f) if m.name == me => {
                        (state_name(f.state), Some(f.lag_records), f.lag_ms)
                    }
                    Vantage::Primary(replicas) if !m.witness => {
                        match replicas.iter().find(|r| r.name == m.name) {
                            Some(r) => (state_name(r.state), Some(r.lag_records), r.apply_lag_ms),
                            None => (
                                state_name(
                                    crate::replication::registry::ReplicaState::Disconnected,
                                ),
                                None,
                                None,
                            ),
                        }
                    }
                    _ => ("unknown".to_string(), None, None),
                };
                MemberStatus {
                    name: m.name.clone(),
                    peer_addr: m.peer_addr.clone(),
                    http_url: m.http_url.clone(),
                    witness: m.witness,
                    role,
                    health,
                    lag_records,
                    lag_ms,
                }
            })
            .collect()
    }
}

/// The JSON name of a unit enum variant (`catching_up`).
fn state_name<T: Serialize>(state: T) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_string(),
    }
}

impl ClusterStatus {
    /// The cluster section for the control plane `plane`, seen by `me` from `vantage`.
    pub fn of(plane: &crate::control::ControlPlane, me: &str, vantage: Vantage<'_>) -> Self {
        let raft = RaftView::from(plane.raft_status());
        let rx = plane.state();
        let st = rx.borrow();
        ClusterStatus {
            raft,
            members: MemberStatus::list(&st, me, vantage),
            lease: st.lease.clone(),
            failovers: st.history.iter().cloned().collect(),
            switchover: st.switchover.clone(),
            commit: st.commit.clone(),
        }
    }
}

/// `GET /v1/status`: the whole status for an admin (and on a node without `--users`), the
/// [`Summary`] for a `read` or `write` user.
pub(crate) async fn status(
    State(state): State<Arc<NodeState>>,
    principal: Option<Extension<Principal>>,
) -> Response {
    let full = full_status(&state);
    match principal {
        Some(Extension(p)) if !p.role.allows(Role::Admin) => {
            Json(Summary::of(&full)).into_response()
        }
        _ => Json(full).into_response(),
    }
}

/// What a client needs to route (roles, positions, lag, the nodes' HTTP URLs), shown to users
/// below `admin`: no peer addresses, settings, errors or control-plane state.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    /// Node name.
    pub node: &'a str,
    /// `primary`, `replica` or `witness`.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// The primary's name as this node knows it.
    pub primary: Option<&'a str>,
    /// Position token of the last durable record.
    pub position: Position,
    /// Last record fsynced in the log.
    pub flushed_lsn: u64,
    /// Last record applied to SQLite.
    pub applied_lsn: u64,
    /// Whether the node takes writes.
    pub accepting_writes: bool,
    /// Scribe's version.
    pub version: &'static str,
    /// Always `summary`: the rest of the status needs role `admin`.
    pub detail: &'static str,
    /// On a replica: its stream from the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<FollowSummary<'a>>,
    /// On a primary: its replicas.
    pub replicas: Vec<ReplicaSummary<'a>>,
}

/// A replica's stream, in a [`Summary`].
#[derive(Debug, Serialize)]
pub struct FollowSummary<'a> {
    /// As in [`FollowView`].
    pub state: crate::replication::follower::FollowState,
    /// The primary's name, once reached.
    pub primary: Option<&'a str>,
    /// The primary's HTTP API, once reached.
    pub primary_url: Option<&'a str>,
    /// Records the primary has and this replica has not applied.
    pub lag_records: u64,
    /// Age of the oldest record not applied.
    pub lag_ms: Option<f64>,
}

/// A primary's replica, in a [`Summary`].
#[derive(Debug, Serialize)]
pub struct ReplicaSummary<'a> {
    /// Its name.
    pub name: &'a str,
    /// As in [`ReplicaView`].
    pub state: crate::replication::registry::ReplicaState,
    /// Its HTTP API.
    pub http_url: &'a str,
    /// Records it has not applied.
    pub lag_records: u64,
    /// Age of the oldest record it has not applied.
    pub apply_lag_ms: Option<f64>,
}

impl<'a> Summary<'a> {
    /// The summary of `s`.
    pub fn of(s: &'a Status) -> Summary<'a> {
        Summary {
            node: &s.node,
            role: s.role,
            term: s.term,
            primary: s.primary.as_deref(),
            position: s.position,
            flushed_lsn: s.flushed_lsn,
            applied_lsn: s.applied_lsn,
            accepting_writes: s.accepting_writes,
            version: s.version,
            detail: "summary",
            replication: s.replication.as_ref().map(|f| FollowSummary {
                state: f.state,
                primary: f.primary.as_deref(),
                primary_url: f.primary_url.as_deref(),
                lag_records: f.lag_records,
                lag_ms: f.lag_ms,
            }),
            replicas: s
                .replicas
                .iter()
                .map(|r| ReplicaSummary {
                    name: &r.name,
                    state: r.state,
                    http_url: &r.http_url,
                    lag_records: r.lag_records,
                    apply_lag_ms: r.apply_lag_ms,
                })
                .collect(),
        }
    }
}

/// The node's whole status.
fn full_status(state: &NodeState) -> Status {
    let p = state.engine.progress();
    let failure = state.engine.write_failure();
    let view = state.leadership.view();
    let now = std::time::Instant::now();
    let primary = view.role == NodeRole::Primary;
    let me = state.identity.name.as_str();
    let witness = state.is_witness();
    // A witness follows nobody: it has no replication to report.
    let replication = (!primary && !witness).then(|| state.follower.view());
    let replicas: Vec<ReplicaView> = if primary {
        state
            .registry
            .views(p.flushed.lsn)
            .into_iter()
            .map(|m| m.view)
            .collect()
    } else {
        Vec::new()
    };
    let cluster = state.control.as_ref().map(|plane| {
        let vantage = match &replication {
            _ if primary => Vantage::Primary(&replicas),
            Some(f) => Vantage::Replica(f),
            None => Vantage::Witness,
        };
        ClusterStatus::of(plane, me, vantage)
    });
    Status {
        node: state.identity.name.clone(),
        cluster_id: state.cluster_id(),
        role: if witness { "witness" } else { view.role.name() },
        term: view.term.max(p.last.term).0,
        primary: if primary {
            Some(state.identity.name.clone())
        } else {
            view.primary.name.clone()
        },
        lease: LeaseStatus::of(&view, now),
        position: p.flushed,
        last_lsn: p.last.lsn.0,
        flushed_lsn: p.flushed.lsn.0,
        applied_lsn: p.applied.lsn.0,
        accepting_writes: failure.is_none() && view.is_serving_primary(now),
        write_failure: failure,
        log_bytes: state
            .engine
            .metrics()
            .log_size_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        uptime_seconds: state.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION"),
        log_first_lsn: state.engine.log_first_lsn().0,
        peer_addr: state.peer_addr.map(|a| a.to_string()),
        commit: primary.then(|| CommitSettings {
            mode: state.config.commit,
            sync_replicas: state.config.sync_replicas.to_string(),
            sync_timeout_ms: state.config.sync_timeout.as_millis() as u64,
            on_sync_timeout: state.config.on_sync_timeout.to_string(),
        }),
        replication,
        replicas,
        cluster,
        multi_master: MultiMasterStatus::of(state),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use scribe_core::{ControlCommand, ControlState, FailoverKind, Member, Term};

    use super::*;
    use crate::leadership::{ControlView, PrimaryInfo};
    use crate::replication::follower::FollowState;
    use crate::replication::registry::ReplicaState;

    /// n1, n2, n3 and the witness w; n1 primary in term 1, then n2 by an automatic failover.
    fn control() -> ControlState {
        let m = |name: &str, port: u16, witness: bool| Member {
            name: name.into(),
            peer_addr: format!("127.0.0.1:{port}"),
            http_url: (!witness).then(|| format!("http://127.0.0.1:{}", port - 1000)),
            witness,
        };
        let mut st = ControlState::default();
        st.apply(
            ControlCommand::Bootstrap {
                cluster_id: "c1".into(),
                members: vec![
                    m("n1", 6481, false),
                    m("n2", 6482, false),
                    m("n3", 6483, false),
                    m("w", 6484, true),
                ],
                primary: "n1".into(),
            },
            1_000,
        )
        .unwrap();
        st.apply(
            ControlCommand::Promote {
                name: "n2".into(),
                expected_term: Term(1),
                reason: "n1 stopped renewing".into(),
                kind: FailoverKind::Automatic,
                from: Some("n1".into()),
                lease_renewals: None,
            },
            2_000,
        )
        .unwrap();
        st
    }

    fn replica(name: &str, state: ReplicaState, lag: u64) -> ReplicaView {
        ReplicaView {
            name: name.into(),
            state,
            sync_member: true,
            addr: "127.0.0.1:50000".into(),
            http_url: "http://x".into(),
            written_lsn: 10,
            flushed_lsn: 10,
            applied_lsn: 10 - lag,
            lag_records: lag,
            lag_bytes: 0,
            write_lag_ms: Some(0.0),
            flush_lag_ms: Some(0.0),
            apply_lag_ms: Some(lag as f64 * 2.0),
            last_contact_ms_ago: 5,
            since_seconds: 60,
            seeding: None,
            error: None,
            stalled: None,
        }
    }

    fn follow(state: FollowState, lag: u64) -> FollowView {
        FollowView {
            state,
            follow: "127.0.0.1:6482".into(),
            primary: Some("n2".into()),
            primary_url: Some("http://127.0.0.1:5482".into()),
            primary_flushed_lsn: 10,
            written_lsn: 10,
            lag_records: lag,
            lag_ms: None,
            last_contact_ms_ago: Some(3),
            seeding: None,
            error: None,
            stalled: None,
            rollbacks: Vec::new(),
        }
    }

    /// `(name, role, health, lag_records)` of each member.
    fn summary(ms: &[MemberStatus]) -> Vec<(&str, MemberRole, &str, Option<u64>)> {
        ms.iter()
            .map(|m| (m.name.as_str(), m.role, m.health.as_str(), m.lag_records))
            .collect()
    }

    #[test]
    fn the_primary_knows_its_replicas_health_from_its_registry() {
        let st = control();
        // n1 is back and catching up; n3 has not connected since n2 became primary.
        let replicas = [replica("n1", ReplicaState::CatchingUp, 4)];
        let ms = MemberStatus::list(&st, "n2", Vantage::Primary(&replicas));
        assert_eq!(
            summary(&ms),
            [
                ("n1", MemberRole::Replica, "catching_up", Some(4)),
                ("n2", MemberRole::Primary, "up", None),
                ("n3", MemberRole::Replica, "disconnected", None),
                ("w", MemberRole::Witness, "unknown", None),
            ]
        );
        assert_eq!(ms[0].lag_ms, Some(8.0));
        assert_eq!(ms[3].http_url, None);
        assert!(ms[3].witness);
    }

    #[test]
    fn a_replica_knows_only_its_own_replication() {
        let st = control();
        let f = follow(FollowState::Streaming, 0);
        let ms = MemberStatus::list(&st, "n3", Vantage::Replica(&f));
        assert_eq!(
            summary(&ms),
            [
                ("n1", MemberRole::Replica, "unknown", None),
                ("n2", MemberRole::Primary, "unknown", None),
                ("n3", MemberRole::Replica, "streaming", Some(0)),
                ("w", MemberRole::Witness, "unknown", None),
            ]
        );
        let ms = MemberStatus::list(&st, "w", Vantage::Witness);
        assert_eq!(
            summary(&ms).iter().map(|m| m.2).collect::<Vec<_>>(),
            ["unknown", "unknown", "unknown", "up"]
        );
    }

    #[test]
    fn a_member_serializes_flat_with_snake_case_names() {
        let st = control();
        let f = follow(FollowState::RollingBack, 7);
        let ms = MemberStatus::list(&st, "n1", Vantage::Replica(&f));
        let v = serde_json::to_value(&ms[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "name": "n1", "peer_addr": "127.0.0.1:6481", "http_url": "http://127.0.0.1:5481",
                "witness": false, "role": "replica", "health": "rolling_back",
                "lag_records": 7, "lag_ms": null
            })
        );
    }

    #[test]
    fn the_lease_is_held_until_it_runs_out_and_absent_on_a_replica() {
        let now = Instant::now();
        let view = |role, lease_until| ControlView {
            role,
            term: Term(2),
            primary: PrimaryInfo::default(),
            lease_until,
            draining: false,
        };
        let by_config = view(NodeRole::Primary, None);
        assert_eq!(
            LeaseStatus::of(&by_config, now),
            Some(LeaseStatus {
                held: true,
                remaining_ms: None
            })
        );
        let leased = view(NodeRole::Primary, Some(now + Duration::from_millis(1500)));
        assert_eq!(
            LeaseStatus::of(&leased, now),
            Some(LeaseStatus {
                held: true,
                remaining_ms: Some(1500)
            })
        );
        assert_eq!(
            LeaseStatus::of(&leased, now + Duration::from_secs(2)),
            Some(LeaseStatus {
                held: false,
                remaining_ms: Some(0)
            })
        );
        assert_eq!(LeaseStatus::of(&view(NodeRole::Replica, None), now), None);
    }
}
