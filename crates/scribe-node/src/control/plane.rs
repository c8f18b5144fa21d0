//! [`ControlPlane`]: the handle the node holds on its control plane — start it, propose
//! commands from any node (a follower forwards to the leader), watch the applied state and the
//! Raft status, shut it down. It owns the Raft instance and two small tasks: one publishes the
//! Raft status on a `watch`, the other proposes `Bootstrap` when this node leads a group that
//! has not been bootstrapped yet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, Raft, SnapshotPolicy};
use scribe_core::{Applied, ControlCommand, ControlError, ControlState, Member};
use scribe_wire::ControlHello;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::log_store::LogStore;
use super::network::{Network, Pool};
use super::state_machine::StateMachine;
use super::types::{
    ControlNode, ControlRaft, NodeId, Proposal, ProposeError, RaftStatus, Role, RpcRequest,
    RpcResponse,
};
use super::ControlConfig;

/// Why the control plane did not start; the node cannot run without it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("control plane configuration: {0}")]
    Config(String),
    /// Its files could not be opened or are damaged.
    #[error("open the control plane's storage in {dir}: {source}")]
    Storage {
        /// The directory.
        dir: String,
        /// What failed.
        source: std::io::Error,
    },
    /// openraft refused to start.
    #[error("start the control plane's Raft group: {0}")]
    Raft(String),
}

/// Why a membership change did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Membership changes run on the Raft leader; this node is not it.
    #[error("this node does not lead the control plane (the leader is {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The leader's name, when known.
        leader: Option<String>,
    },
    /// The control state refused it (the message says why); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// It could not be carried out now; the message says what state it left.
    #[error("{0}")]
    Unavailable(String),
}

impl MembershipError {
    fn from_propose(e: ProposeError) -> MembershipError {
        match e {
            ProposeError::Rejected(e) => MembershipError::Refused(e.to_string()),
            e => MembershipError::Unavailable(e.to_string()),
        }
    }
}

struct Inner {
    config: ControlConfig,
    id: NodeId,
    raft: ControlRaft,
    state: watch::Receiver<ControlState>,
    log: LogStore,
    status: watch::Receiver<RaftStatus>,
    pool: Arc<Pool>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The running control plane; clones share it.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

impl ControlPlane {
    /// Opens the storage in `<data_dir>/control/`, starts Raft, and on a fresh directory
    /// bootstraps the group (see the module documentation of `control`).
    pub async fn start(config: ControlConfig) -> Result<ControlPlane, StartError> {
        config.validate().map_err(StartError::Config)?;
        let dir = config.data_dir.join("control");
        let storage = |source| StartError::Storage {
            dir: dir.display().to_string(),
            source,
        };
        let log = LogStore::open(&dir).map_err(storage)?;
        let sm = StateMachine::open(&dir)
            .map_err(storage)?
            .note_renewals_in(log.renewal_cell());
        let fresh = log.vote().is_none() && log.last_log_id().is_none();
        let stored_id = log
            .last_membership()
            .or_else(|| Some(sm.membership().membership().clone()))
            .and_then(|m| {
                m.nodes()
                    .find(|(_, n)| n.name == config.name)
                    .map(|(id, _)| *id)
            });
        let id = match stored_id.or_else(|| config.bootstrap_id(&config.name)) {
            Some(id) => id,
            None => return Err(StartError::Config("this node has no Raft id".into())),
        };
        let raft_config = raft_config(&config)?;
        let pool = Arc::new(Pool::new(
            ControlHello {
                cluster_id: config.cluster_id.clone(),
                from: config.name.clone(),
                members: config.sorted_members(),
            },
            config.security.clone(),
        ));
        let network = Network {
            me: id,
            pool: pool.clone(),
        };
        let state = sm.subscribe();
        let log_handle = log.clone();
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (status_tx, status) = watch::channel(status_of(&config.name, &raft.metrics().borrow()));
        let (shutdown, _) = watch::channel(false);
        let plane = ControlPlane {
            inner: Arc::new(Inner {
                config,
                id,
                raft,
                state,
                log: log_handle,
                status,
                pool,
                shutdown,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let tasks = vec![
            tokio::spawn(plane.clone().publish_status(status_tx)),
            tokio::spawn(plane.clone().bootstrap(fresh)),
        ];
        plane.lock_tasks().extend(tasks);
        Ok(plane)
    }

    /// The applied control state on this node, published after every applied batch.
    pub fn state(&self) -> watch::Receiver<ControlState> {
        self.inner.state.clone()
    }

    /// When the latest lease renewal arrived in this node's control log since it started, by its
    /// monotonic clock (committed or not yet known to be; see `scribe_core::PrimarySilence`).
    pub fn renewal_arrived(&self) -> Option<Instant> {
        self.inner.log.renewal_arrived()
    }

    /// The Raft group as this node sees it now (openraft's latest metrics).
    pub fn raft_status(&self) -> RaftStatus {
        status_of(&self.inner.config.name, &self.inner.raft.metrics().borrow())
    }

    /// The Raft status, published whenever it changes (role, leader, term, indexes).
    pub fn raft_status_watch(&self) -> watch::Receiver<RaftStatus> {
        self.inner.status.clone()
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// Proposes `cmd` and waits until it is committed and applied (on the leader). Works on any
    /// node: a follower forwards it to the leader.
    pub async fn propose(&self, cmd: ControlCommand) -> Result<Applied, ProposeError> {
        let proposal = Proposal {
            command: cmd,
            at_unix_ms: now_unix_ms(),
        };
        let leader = self.inner.raft.metrics().borrow().current_leader;
        match leader {
            None => Err(ProposeError::NoLeader),
            Some(id) if id == self.inner.id => self.write_local(proposal).await,
            Some(id) => self.forward(id, proposal).await,
        }
    }

    /// [`ControlPlane::propose`], retried while the error is retryable (no leader, leader
    /// unreachable), for at most `within`.
    pub async fn propose_retrying(
        &self,
        cmd: ControlCommand,
        within: Duration,
    ) -> Result<Applied, ProposeError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.propose(cmd.clone()).await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(command = cmd.kind(), error = %e, "control proposal, retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Stops Raft and this plane's tasks; connections served by `serve_connection` close.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let tasks: Vec<_> = self.lock_tasks().drain(..).collect();
        for t in tasks {
            t.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "control plane: Raft did not stop cleanly");
        }
        self.inner.pool.clear();
    }

    /// The Raft leader's name, when one is known.
    pub fn leader_name(&self) -> Option<String> {
        self.raft_status().leader
    }

    /// Adds `member` to the cluster, on the Raft leader: records it in the control state, adds
    /// it to the Raft group as a learner and waits (at most `within`) until it has caught up with
    /// the log — so the node must be running, started with `--join` — then makes it a voter. A
    /// node that does not catch up is taken out again and nothing stays changed.
    pub async fn add_member(
        &self,
        member: Member,
        within: Duration,
    ) -> Result<(), MembershipError> {
        self.require_leader()?;
        let id = super::joined_id(&member.name);
        match self.raft_node(id) {
            Some(other) if other.name != member.name => {
                return Err(MembershipError::Refused(format!(
                    "the Raft id of {:?} is taken by {}; choose another name",
                    member.name, other.name
                )))
            }
            // Asked again (a joining node that retried, an operator who repeated the command):
            // done once it votes.
            Some(_) if self.raft_status().voters.contains(&member.name) => return Ok(()),
            _ => {}
        }
        let node = ControlNode {
            name: member.name.clone(),
            peer_addr: member.peer_addr.clone(),
        };
        // Recorded already by an earlier attempt whose Raft steps did not finish: go on with
        // those.
        let recorded = self
            .inner
            .state
            .borrow()
            .members
            .get(&member.name)
            .is_some_and(|m| m.peer_addr == member.peer_addr && m.witness == member.witness);
        if !recorded {
            self.propose(ControlCommand::AddMember(member.clone()))
                .await
                .map_err(MembershipError::from_propose)?;
        }
        let raft = &self.inner.raft;
        // openraft's own "blocking" add gives up waiting after a short while and answers success
        // anyway: add without blocking, then watch the learner's replication reach the entry
        // that added it.
        let caught_up = match raft.add_learner(id, node, false).await {
            Err(e) => Err(e.to_string()),
            Ok(resp) => {
                let added = resp.log_id.index;
                let mut metrics = raft.metrics();
                let reached = async {
                    loop {
                        let at = metrics
                            .borrow_and_update()
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(&id).copied().flatten())
                            .map(|l| l.index);
                        if at.is_some_and(|i| i >= added) {
                            return;
                        }
                        if metrics.changed().await.is_err() {
                            return;
                        }
                    }
                };
                tokio::time::timeout(within, reached)
                    .await
                    .map_err(|_| format!("it did not catch up within {within:?}"))
            }
        };
        if let Err(why) = caught_up {
            // Take it out again: the learner (if added) and the member record.
            let ids: std::collections::BTreeSet<NodeId> = [id].into();
            let learner = raft
                .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let record = self
                .propose(ControlCommand::RemoveMember {
                    name: member.name.clone(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            let left = match (learner, record) {
                (Ok(()), Ok(())) => "nothing changed".to_string(),
                (l, r) => format!(
                    "undoing the add failed ({}): retry scribe members remove {}",
                    [l.err(), r.err()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; "),
                    member.name
                ),
            };
            return Err(MembershipError::Unavailable(format!(
                "{} at {} could not be added ({why}): start it first with scribe node --name {} --peer {} --join URL_OF_A_MEMBER; {left}",
                member.name, member.peer_addr, member.name, member.peer_addr
            )));
        }
        let ids: std::collections::BTreeSet<NodeId> = [id].into();
        raft.change_membership(openraft::ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(|e| {
                MembershipError::Unavailable(format!(
                    "{} caught up but could not be made a voter: {e}; it is a member that does not vote yet, retry the add",
                    member.name
                ))
            })?;
        Ok(())
    }

    /// Removes the member `name`, on the Raft leader: the control state refuses the primary, a
    /// member a switchover is handing over to and one the sync set names; then it leaves the
    /// Raft group. Stop the removed node afterwards.
    pub async fn remove_member(&self, name: &str) -> Result<(), MembershipError> {
        self.require_leader()?;
        let id = self.raft_id(name);
        let removed = self
            .propose(ControlCommand::RemoveMember {
                name: name.to_string(),
            })
            .await;
        match removed {
            Ok(_) => {}
            // Gone from the control state already (a removal whose Raft step failed, retried):
            // finish the Raft step, or say there is no such member.
            Err(ProposeError::Rejected(ControlError::UnknownMember { .. })) if id.is_some() => {}
            Err(e) => return Err(MembershipError::from_propose(e)),
        }
        if let Some(id) = id {
            let ids: std::collections::BTreeSet<NodeId> = [id].into();
            self.inner
                .raft
                .change_membership(openraft::ChangeMembers::RemoveVoters(ids), false)
                .await
                .map_err(|e| {
                    MembershipError::Unavailable(format!(
                        "{name} is no longer a member of the control state but is still a Raft voter ({e}); retry the removal"
                    ))
                })?;
        }
        Ok(())
    }

    /// The node the Raft membership (voters and learners) gives the id `id`.
    fn raft_node(&self, id: NodeId) -> Option<ControlNode> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// The Raft id of the member `name` (voter or learner), if it is in the membership.
    fn raft_id(&self, name: &str) -> Option<NodeId> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m
            .membership_config
            .membership()
            .nodes()
            .find(|(_, n)| n.name == name)
            .map(|(id, _)| *id);
        id
    }

    fn require_leader(&self) -> Result<(), MembershipError> {
        let status = self.raft_status();
        if status.role == super::Role::Leader {
            Ok(())
        } else {
            Err(MembershipError::NotLeader {
                leader: status.leader,
            })
        }
    }

    /// Writes a proposal through this node's Raft, which must be the leader.
    pub(super) async fn write_local(&self, p: Proposal) -> Result<Applied, ProposeError> {
        let timeout = self.inner.config.propose_timeout;
        let written = tokio::time::timeout(timeout, self.inner.raft.client_write(p)).await;
        match written {
            Err(_) => Err(ProposeError::Unavailable(format!(
                "not committed within {timeout:?} (it may still be); re-read the state before retrying"
            ))),
            Ok(Ok(resp)) => match resp.data {
                Some(Ok(applied)) => Ok(applied),
                Some(Err(e)) => Err(ProposeError::Rejected(e)),
                None => Err(ProposeError::Unavailable(
                    "the proposal was applied as a Raft entry, not a command".into(),
                )),
            },
            // Not necessarily "not appended": a leader that steps down answers this for entries
            // it had appended, which a later leader may still commit.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(ProposeError::Unavailable(
                    "the control plane's leadership moved while the proposal was on its way (it may still commit)".into(),
                ))
            }
            Ok(Err(RaftError::APIError(e))) => Err(ProposeError::Unavailable(e.to_string())),
            Ok(Err(RaftError::Fatal(e))) => Err(ProposeError::Unavailable(format!(
                "the control plane is stopped: {e}"
            ))),
        }
    }

    async fn forward(&self, leader: NodeId, p: Proposal) -> Result<Applied, ProposeError> {
        let Some(node) = self.raft_node(leader) else {
            return Err(ProposeError::NoLeader);
        };
        let timeout = self.inner.config.propose_timeout + Duration::from_millis(500);
        match self
            .inner
            .pool
            .call(&node.peer_addr, &RpcRequest::Propose(p), timeout)
            .await
        {
            Ok(RpcResponse::Propose(r)) => r,
            Ok(other) => Err(ProposeError::Unavailable(format!(
                "the leader {} answered a proposal with {other:?}",
                node.name
            ))),
            Err(e) => Err(ProposeError::Unavailable(format!(
                "forward to the leader {}: {e}",
                node.name
            ))),
        }
    }

    /// Checks a peer's hello against this node's configuration; `Err` is the refusal message.
    pub(super) fn check_hello(&self, hello: &ControlHello) -> Result<(), String> {
        let c = &self.inner.config;
        let show = |m: &[(String, String)]| {
            m.iter()
                .map(|(n, a)| format!("{n}={a}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        // Once the cluster is bootstrapped its membership lives here, in the control state
        // (`members add|remove` change it), and the --cluster lists only bootstrapped it: a peer
        // of this cluster is welcome if it is a member. A joining node (--join) took its cluster
        // id from the cluster and welcomes its members likewise.
        // A joining node welcomes its cluster's members only until it is in the Raft group
        // itself; from then on it checks like any member.
        let (in_raft, me_in_raft) = (
            self.raft_id(&hello.from).is_some(),
            self.raft_id(&c.name).is_some(),
        );
        let joining = c.join && !me_in_raft;
        if hello.cluster_id == c.cluster_id
            && (joining || self.inner.state.borrow().is_bootstrapped())
        {
            let st = self.inner.state.borrow();
            if joining || in_raft || st.members.contains_key(&hello.from) {
                return Ok(());
            }
            return Err(format!(
                "{:?} is not a member of cluster {:?} (members: {}): add it first with scribe members add {}=PEER_ADDR",
                hello.from,
                c.cluster_id,
                st.members.keys().cloned().collect::<Vec<_>>().join(", "),
                hello.from
            ));
        }
        // The lists first: when they differ, the message shows both. Same members but another
        // cluster id means the lists disagree on the `/witness` marks, which hellos do not carry
        // but the derived id covers.
        let mine = c.sorted_members();
        if hello.members != mine {
            return Err(format!(
                "{} was started with --cluster {} but this node ({}) with --cluster {}: a node started with a --cluster list that disagrees with the others; start every node with the same list",
                hello.from,
                show(&hello.members),
                c.name,
                show(&mine)
            ));
        }
        if hello.cluster_id != c.cluster_id {
            let marked = if c.witnesses.is_empty() {
                "none".to_string()
            } else {
                c.witnesses.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            return Err(format!(
                "{} belongs to cluster {:?} but this node ({}) to cluster {:?}, though both list the same --cluster members: \
                 their lists disagree on which members are witnesses (the /witness marks; this node's list marks: {marked}) — \
                 a node started with a --cluster list that disagrees with the others; start every node with the same list, marks included",
                hello.from, hello.cluster_id, c.name, c.cluster_id
            ));
        }
        if !mine.iter().any(|(n, _)| *n == hello.from) {
            return Err(format!(
                "{:?} is not in the --cluster list {}",
                hello.from,
                show(&mine)
            ));
        }
        Ok(())
    }

    pub(super) fn raft(&self) -> &ControlRaft {
        &self.inner.raft
    }

    pub(super) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the Raft status whenever openraft's metrics change.
    async fn publish_status(self, tx: watch::Sender<RaftStatus>) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let status = status_of(&self.inner.config.name, &metrics.borrow_and_update());
            tx.send_if_modified(|old| {
                let changed = *old != status;
                *old = status;
                changed
            });
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Initialises a fresh group (the first-sorted member at once, the others after the grace
    /// period if nobody contacted them), then, whenever this node leads an un-bootstrapped
    /// group, proposes `Bootstrap`.
    async fn bootstrap(self, fresh: bool) {
        let c = &self.inner.config;
        let raft = &self.inner.raft;
        if c.join {
            // Joining a cluster that exists: its leader adds this node (members add).
            return;
        }
        if fresh {
            let first = c.sorted_members().first().map(|(n, _)| n.clone());
            if first.as_deref() != Some(c.name.as_str()) {
                tokio::time::sleep(c.bootstrap_grace).await;
            }
            if let Ok(false) = raft.is_initialized().await {
                let nodes: BTreeMap<NodeId, ControlNode> = c
                    .sorted_members()
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, peer_addr))| {
                        (i as NodeId + 1, ControlNode { name, peer_addr })
                    })
                    .collect();
                tracing::info!(
                    members = nodes.len(),
                    "control plane: initialising the Raft group"
                );
                if let Err(e) = raft.initialize(nodes).await {
                    // NotAllowed: another member initialised it first, which is the goal.
                    tracing::debug!(error = %e, "control plane: initialise");
                }
            }
        }
        let mut state = self.state();
        let mut status = self.raft_status_watch();
        loop {
            if state.borrow_and_update().is_bootstrapped() {
                return;
            }
            if status.borrow_and_update().role == Role::Leader {
                let cmd = self.bootstrap_command();
                match self.propose(cmd).await {
                    Ok(applied) => tracing::info!(?applied, "control plane: cluster bootstrapped"),
                    Err(ProposeError::Rejected(ControlError::AlreadyBootstrapped { .. })) => {}
                    Err(e) => tracing::debug!(error = %e, "control plane: bootstrap, will retry"),
                }
                tokio::time::sleep(c.heartbeat_interval).await;
                continue;
            }
            tokio::select! {
                _ = state.changed() => {}
                _ = status.changed() => {}
            }
        }
    }

    fn bootstrap_command(&self) -> ControlCommand {
        let c = &self.inner.config;
        if let (Some(term), Some((name, peer_addr))) = (c.reform_term, c.members.first()) {
            return ControlCommand::Reform {
                cluster_id: c.cluster_id.clone(),
                member: Member {
                    name: name.clone(),
                    peer_addr: peer_addr.clone(),
                    http_url: None,
                    witness: false,
                },
                term,
                reason: format!(
                    "cluster re-formed around {name} by an operator (--reform-cluster) after its majority was lost"
                ),
            };
        }
        let primary = c.bootstrap_primary.clone().unwrap_or_else(|| {
            if c.witnesses.contains(&c.name) {
                c.sorted_members()
                    .into_iter()
                    .map(|(n, _)| n)
                    .find(|n| !c.witnesses.contains(n))
                    .unwrap_or_default()
            } else {
                c.name.clone()
            }
        });
        ControlCommand::Bootstrap {
            cluster_id: c.cluster_id.clone(),
            members: c
                .sorted_members()
                .into_iter()
                .map(|(name, peer_addr)| Member {
                    witness: c.witnesses.contains(&name),
                    name,
                    peer_addr,
                    http_url: None,
                })
                .collect(),
            primary,
        }
    }
}

fn raft_config(c: &ControlConfig) -> Result<Config, StartError> {
    let ms = |d: Duration| d.as_millis().max(1) as u64;
    let config = Config {
        cluster_name: c.cluster_id.clone(),
        heartbeat_interval: ms(c.heartbeat_interval),
        election_timeout_min: ms(c.election_timeout_min),
        election_timeout_max: ms(c.election_timeout_max),
        install_snapshot_timeout: ms(c.election_timeout_max).max(1000),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_every),
        max_in_snapshot_log_to_keep: c.snapshot_every / 4,
        purge_batch_size: (c.snapshot_every / 4).max(1),
        ..Config::default()
    };
    config
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))
}

fn status_of(name: &str, m: &openraft::RaftMetrics<NodeId, ControlNode>) -> RaftStatus {
    let membership = m.membership_config.membership();
    RaftStatus {
        name: name.to_string(),
        node_id: m.id,
        role: m.state.into(),
        raft_term: m.current_term,
        leader: m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.name.clone())),
        last_log_index: m.last_log_index,
        last_applied_index: m.last_applied.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        voters: membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.name.clone()))
            .collect(),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
