//! Scribe's vocabulary and its pure decision logic.
//!
//! This crate owns the types every other crate speaks in — [`Lsn`], [`Term`], [`Position`] and
//! the position token clients carry — and, as the project grows, the decision logic that must be
//! testable without I/O (commit tracking, failover eligibility, divergence). It does no I/O and
//! knows nothing of tokio, SQLite or the network.
//!
//! Modules:
//! - [`position`]: log sequence numbers, terms, and the `(term, lsn)` position token.
//! - [`commit`]: commit modes, sync sets and how far a quorum guarantees a commit.
//! - [`control`]: the cluster's control state (members, primary, term, lease) and its commands.
//! - [`freshness`]: how stale a replica's reads may be, judged from the primary's heartbeats.
//! - [`handshake`]: the primary's answer to a replica's hello (stream, seed, rewind, refuse).
//! - [`histogram`]: a lock-free fixed-bucket histogram for metrics.
//! - [`history`]: a node's history of terms: where two logs diverge, whether a position is held.
//! - [`lease`]: lease arithmetic: how long a primary may write, when others may take over.
//! - [`multi_master`]: multi-master's clock, version vectors and row merge.
//! - [`peer_auth`]: the proofs two nodes exchange to show each other they hold the peer secret.
//! - [`promotion`]: who may be promoted when the primary is gone, and forced promotions.

pub mod commit;
pub mod control;
pub mod freshness;
pub mod handshake;
pub mod histogram;
pub mod history;
pub mod lease;
pub mod multi_master;
pub mod peer_auth;
pub mod position;
pub mod promotion;

pub use commit::{
    CommitMode, OnSyncTimeout, ParseCommitError, Quorum, QuorumPosition, ReplicaAck, SyncSet,
};
pub use control::{
    Applied, CommitSettings, ControlCommand, ControlError, ControlState, FailoverEvent,
    FailoverKind, Lease, Member, PendingSwitchover,
};
pub use freshness::Freshness;
pub use handshake::{
    check_node_name, decide_handshake, HandshakeDecision, InvalidNodeName, PrimaryView,
    RefuseReason, ReplicaView,
};
pub use histogram::{Histogram, HistogramSnapshot};
pub use history::{HistoryError, Located, TermHistory};
pub use lease::{LeaseConfig, LeaseConfigError, PrimaryLease, PrimarySilence};
pub use peer_auth::{AuthFailed, PeerSecret, SecretError, Side};
pub use position::{Lsn, ParsePositionError, Position, Term};
pub use promotion::{
    choose_promotion, force_promotion, switchover_ready, Candidate, ForcedPromotion, Promotion,
    PromotionRefused,
};
