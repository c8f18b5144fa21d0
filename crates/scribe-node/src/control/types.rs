//! The types the control plane's Raft group is built from: openraft's type configuration, the
//! node information kept in the Raft membership (name and peer address, so names and Raft ids
//! map both ways wherever the membership is known), the log entry payload, and the request and
//! response bodies carried in `ControlRequest`/`ControlResponse` frames.

use std::fmt;
use std::io::Cursor;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use scribe_core::{Applied, ControlCommand, ControlError};
use serde::{Deserialize, Serialize};

/// A Raft node id: openraft needs integers. Ids are assigned from the `--cluster` list when the
/// cluster is bootstrapped (position in the list sorted by name, plus one) and are then kept in
/// the Raft membership next to the name, so a node restarted with another list keeps its id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The control plane's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Reply,
        NodeId = NodeId,
        Node = ControlNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of the control plane.
pub type ControlRaft = openraft::Raft<TypeConfig>;

/// What the Raft membership records about each voter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlNode {
    /// The node's name (`--name`).
    pub name: String,
    /// Its peer address, where control-plane connections go.
    pub peer_addr: String,
}

impl fmt::Display for ControlNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// One entry of the Raft log: a command and the proposer's wall clock, so every node applies the
/// same thing (the state machine reads no clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The command.
    pub command: ControlCommand,
    /// When it was proposed, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.command.kind(), self.at_unix_ms)
    }
}

/// What applying one log entry answered: `None` for Raft's own entries (blank, membership).
pub type Reply = Option<Result<Applied, ControlError>>;

/// Why a proposal did not go through, shaped by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposeError {
    /// No leader is known right now (an election is under way, or this node is cut off): retry
    /// shortly.
    #[error(
        "the control plane has no leader right now (an election may be under way); retry shortly"
    )]
    NoLeader,
    /// The state machine refused the command; retrying the same command is pointless.
    #[error("{0}")]
    Rejected(ControlError),
    /// The leader could not be reached, the commit did not happen in time (its outcome is then
    /// unknown: re-read the state before retrying a command that is not idempotent), or the
    /// control plane is shut down.
    #[error("the control plane is unavailable: {0}")]
    Unavailable(String),
}

impl ProposeError {
    /// Whether the same proposal may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ProposeError::Rejected(_))
    }
}

/// This node's role in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Leads the group; runs the failover manager.
    Leader,
    /// Follows the leader.
    Follower,
    /// Campaigning.
    Candidate,
    /// Not a voter (or not initialised yet).
    Learner,
    /// Stopped.
    Shutdown,
}

impl From<openraft::ServerState> for Role {
    fn from(s: openraft::ServerState) -> Role {
        match s {
            openraft::ServerState::Leader => Role::Leader,
            openraft::ServerState::Follower => Role::Follower,
            openraft::ServerState::Candidate => Role::Candidate,
            openraft::ServerState::Learner => Role::Learner,
            openraft::ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// The Raft group as this node sees it, for status pages and the failover manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This node's name.
    pub name: String,
    /// Its Raft id.
    pub node_id: NodeId,
    /// This node's role.
    pub role: Role,
    /// The Raft term (not the cluster's primary term).
    pub raft_term: u64,
    /// The leader's name, when one is known.
    pub leader: Option<String>,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to this node's state.
    pub last_applied_index: Option<u64>,
    /// Index of the last entry purged from this node's log (covered by its snapshot).
    pub purged_index: Option<u64>,
    /// The voters' names.
    pub voters: Vec<String>,
}

/// A control-plane request, the JSON body of a `ControlRequest`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcRequest {
    /// Raft: replicate entries / heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A proposal forwarded by a follower to the leader.
    Propose(Proposal),
}

impl RpcRequest {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcRequest::AppendEntries(_) => "append_entries",
            RpcRequest::Vote(_) => "vote",
            RpcRequest::InstallSnapshot(_) => "install_snapshot",
            RpcRequest::Propose(_) => "propose",
        }
    }
}

/// The answer to an [`RpcRequest`], the JSON body of a `ControlResponse`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcResponse {
    /// To `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To `Propose`.
    Propose(Result<Applied, ProposeError>),
    /// The request could not be decoded.
    BadRequest(String),
}
