//! The commands that change the [`ControlState`](super::ControlState), what an accepted command
//! did, and why a command is refused.

use serde::{Deserialize, Serialize};

use super::{sync_set_text, FailoverKind, Member};
use crate::commit::{CommitMode, SyncSet};
use crate::Term;

/// A change to the control state, as committed in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlCommand {
    /// Sets up a fresh cluster: its id, members and first primary, in term 1.
    Bootstrap {
        /// The cluster id.
        cluster_id: String,
        /// Every member.
        members: Vec<Member>,
        /// The first primary: a non-witness member.
        primary: String,
    },
    /// Re-forms a cluster around one surviving member after the others were lost for good (an
    /// operator's `--reform-cluster`): a fresh control state of that member alone, primary in
    /// `term` — above every term of its log, so its new records follow the old ones.
    Reform {
        /// The new cluster's id.
        cluster_id: String,
        /// The surviving member: a data node.
        member: Member,
        /// The first term of the new cluster.
        term: Term,
        /// Why, for the failover history.
        reason: String,
    },
    /// Adds a member (its Raft voter is added by the runtime, see `scribe_node::control`).
    AddMember(Member),
    /// Removes a member that is neither the primary, the switchover target, nor named in the
    /// sync set.
    RemoveMember {
        /// Its name.
        name: String,
    },
    /// A node announces its HTTP URL when it starts.
    SetAddresses {
        /// The node.
        name: String,
        /// Its HTTP API.
        http_url: String,
    },
    /// The primary renews its lease; refused from anyone but the primary of the current term.
    RenewLease {
        /// Who renews.
        holder: String,
        /// The term the holder believes it is primary in.
        term: Term,
    },
    /// Makes `name` the primary in term `expected_term + 1`, if the current term is still
    /// `expected_term` — of two concurrent promotions only one can win.
    Promote {
        /// The new primary.
        name: String,
        /// The term the proposer saw.
        expected_term: Term,
        /// Why, for the history.
        reason: String,
        /// Automatic, switchover or forced (not bootstrap).
        kind: FailoverKind,
        /// The primary the proposer saw, if it names one; refused if it is not the primary.
        from: Option<String>,
        /// The lease renewals of the current term the proposer saw (an automatic failover
        /// decides from their silence): refused if the primary renewed since, so a promotion
        /// decided on a stale view of the lease can never depose a primary that is alive.
        #[serde(default)]
        lease_renewals: Option<u64>,
    },
    /// Sets the commit mode and sync set.
    SetCommit {
        /// The default commit mode.
        mode: CommitMode,
        /// The sync set.
        #[serde(with = "sync_set_text")]
        sync_set: SyncSet,
    },
    /// Starts a planned switchover to `to`: the primary drains while `to` catches up.
    BeginSwitchover {
        /// The member taking over.
        to: String,
        /// The term the proposer saw.
        expected_term: Term,
    },
    /// Abandons the pending switchover; the primary resumes writes.
    CancelSwitchover {
        /// The term the proposer saw.
        expected_term: Term,
    },
    /// A returning old primary reports how many transactions it undid when it rejoined, for the
    /// failover event that started `term`.
    ReportRollback {
        /// The term whose promotion deposed the reporter.
        term: Term,
        /// How many transactions were undone (and saved to the rollback file).
        transactions: u64,
    },
}

impl ControlCommand {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlCommand::Bootstrap { .. } => "bootstrap",
            ControlCommand::Reform { .. } => "reform",
            ControlCommand::AddMember(_) => "add_member",
            ControlCommand::RemoveMember { .. } => "remove_member",
            ControlCommand::SetAddresses { .. } => "set_addresses",
            ControlCommand::RenewLease { .. } => "renew_lease",
            ControlCommand::Promote { .. } => "promote",
            ControlCommand::SetCommit { .. } => "set_commit",
            ControlCommand::BeginSwitchover { .. } => "begin_switchover",
            ControlCommand::CancelSwitchover { .. } => "cancel_switchover",
            ControlCommand::ReportRollback { .. } => "report_rollback",
        }
    }
}

/// What an accepted command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// The cluster is bootstrapped with this primary in term 1.
    Bootstrapped {
        /// The first primary.
        primary: String,
        /// Term 1 (or, for a re-formed cluster, the term it starts in).
        term: Term,
    },
    /// A member was added.
    MemberAdded {
        /// Its name.
        name: String,
    },
    /// A member was removed.
    MemberRemoved {
        /// Its name.
        name: String,
    },
    /// A member's addresses were recorded.
    AddressesSet {
        /// Its name.
        name: String,
    },
    /// The lease was renewed.
    LeaseRenewed {
        /// The term it is held in.
        term: Term,
        /// Renewals in this term so far.
        renewals: u64,
    },
    /// A new primary, in a new term.
    Promoted {
        /// The new primary.
        primary: String,
        /// Its term.
        term: Term,
    },
    /// The commit settings changed.
    CommitSet,
    /// A switchover is under way.
    SwitchoverBegun {
        /// Its target.
        to: String,
    },
    /// The pending switchover was abandoned.
    SwitchoverCancelled,
    /// The rollback count was recorded.
    RollbackReported,
}

/// Why a command was refused. The messages are for the operator; the variants are for the code
/// deciding what to do next (`StaleTerm`: re-read the state and decide again; `NotLeaseHolder`:
/// stop accepting writes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlError {
    /// The command needs a bootstrapped cluster.
    #[error("the cluster has not been bootstrapped yet")]
    NotBootstrapped,
    /// Bootstrap ran already.
    #[error("the cluster {cluster_id:?} is already bootstrapped")]
    AlreadyBootstrapped {
        /// The cluster's id.
        cluster_id: String,
    },
    /// A command's arguments are unusable.
    #[error("{0}")]
    Invalid(String),
    /// The command names a node that is not a member.
    #[error("{name:?} is not a member of the cluster")]
    UnknownMember {
        /// The name given.
        name: String,
    },
    /// `AddMember` of a name already taken.
    #[error("{name:?} is already a member of the cluster; remove it first to change it")]
    MemberExists {
        /// The name given.
        name: String,
    },
    /// The primary cannot be removed.
    #[error("{name:?} is the primary and cannot be removed: switch over to another node first")]
    IsPrimary {
        /// The primary's name.
        name: String,
    },
    /// A witness holds no data.
    #[error("{name:?} is a witness (it holds no data) and cannot be primary or in the sync set")]
    Witness {
        /// The witness' name.
        name: String,
    },
    /// The member is named by the sync set.
    #[error("{name:?} is named in the sync set {sync_set}: change the sync set first")]
    InSyncSet {
        /// The member.
        name: String,
        /// The sync set, as text.
        sync_set: String,
    },
    /// An automatic promotion was decided before the primary's latest lease renewal.
    #[error(
        "the primary renewed its lease since this promotion was decided ({seen} renewals seen, {now} now): it is alive, nobody was promoted"
    )]
    LeaseRenewed {
        /// Renewals the proposer saw.
        seen: u64,
        /// Renewals now.
        now: u64,
    },
    /// The proposer decided on an old view of the cluster.
    #[error("the proposal was made in term {expected} but the cluster is in term {current} now: re-read the cluster state and decide again")]
    StaleTerm {
        /// The term the proposer saw.
        expected: Term,
        /// The current term.
        current: Term,
    },
    /// The proposer named a primary that is not the current one.
    #[error("the proposal assumes {assumed:?} is the primary, but {actual:?} is")]
    StalePrimary {
        /// The primary the proposer saw.
        assumed: String,
        /// The actual primary.
        actual: String,
    },
    /// A lease renewal from a node that is not the primary of the current term.
    #[error("{holder:?} cannot renew the lease for term {term}: {primary:?} is the primary of term {current_term}; a deposed primary must stop accepting writes")]
    NotLeaseHolder {
        /// Who tried to renew.
        holder: String,
        /// The term it claimed.
        term: Term,
        /// The actual primary.
        primary: String,
        /// The current term.
        current_term: Term,
    },
    /// A promotion of the node that is primary already.
    #[error("{name:?} is already the primary (term {term})")]
    AlreadyPrimary {
        /// The primary.
        name: String,
        /// The current term.
        term: Term,
    },
    /// Another switchover is under way.
    #[error("a switchover to {to:?} is already under way: finish or cancel it first")]
    SwitchoverPending {
        /// Its target.
        to: String,
    },
    /// A switchover step without a matching pending switchover.
    #[error("{0}")]
    NoSwitchover(String),
}
