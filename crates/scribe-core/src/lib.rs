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
//! - [`histogram`]: a lock-free fixed-bucket histogram for metrics.

pub mod commit;
pub mod histogram;
pub mod position;

pub use commit::{
    CommitMode, OnSyncTimeout, ParseCommitError, Quorum, QuorumPosition, ReplicaAck, SyncSet,
};
pub use histogram::{Histogram, HistogramSnapshot};
pub use position::{Lsn, ParsePositionError, Position, Term};
