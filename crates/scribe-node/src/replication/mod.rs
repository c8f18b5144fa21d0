//! Replication between a primary and its replicas (DESIGN.md §2–§3): the peer listener and
//! per-replica senders on the primary, the follower on a replica, the registry of replicas with
//! their positions and lag, waiting for commit modes, and log retention.
//!
//! Modules:
//! - [`registry`]: the primary's replicas, their positions, lag and quorum positions.
//! - [`sender`]: the peer listener, the handshake decision, streaming and snapshots.
//! - [`follower`]: the replica's connection to its primary.
//! - [`commit_wait`]: waiting, bounded, for semi-sync and sync.
//! - [`retention`]: deleting log segments nobody needs.
//! - [`snapshot`]: receiving a snapshot, and the marker of an install under way.

pub mod commit_wait;
pub mod follower;
pub mod registry;
pub mod retention;
pub mod sender;
pub mod snapshot;

use std::time::Duration;

/// How long a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle primary sends a heartbeat, and an idle replica its positions.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// Default silence after which a peer connection is considered dead (`--peer-timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
