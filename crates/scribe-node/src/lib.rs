//! The Scribe node runtime: it drives the storage engine and serves clients, and replicates.
//!
//! This crate owns what runs in a node process: its configuration, its identity file, the HTTP
//! JSON API and the Prometheus metrics page. It does not touch SQLite or the log files directly
//! (that is `scribe-sqlite` and `scribe-log`); it owns the mapping of their errors to HTTP.
//!
//! Modules:
//! - [`config`]: [`NodeConfig`], validated once and passed in.
//! - [`control`]: the embedded control plane, a Raft group holding the cluster's control state.
//! - [`identity`]: the node's identity file (name, cluster id).
//! - [`node`]: [`Node`]: start, serve, shut down.
//! - [`state`]: [`state::NodeState`], what the front ends and replication tasks share.
//! - [`leadership`]: the one owner of this node's role, term, primary and lease, on a watch.
//! - [`service`]: the one write path (route, commit, confirm the commit mode) and read plan
//!   (consistency, forwarding) under every front end.
//! - [`cluster`]: cluster mode: the controller that owns the leadership from the control state
//!   (with the primary's lease) and the failover manager.
//! - [`switchover`]: a planned hand-over to a replica (drain, catch up, promote).
//! - [`api`]: the HTTP routes and their JSON.
//! - [`auth`]: users, roles, passwords (SCRAM-SHA-256) and tokens.
//! - [`error`]: [`ApiError`] and its one mapping to status codes.
//! - [`metrics`]: rendering metrics in Prometheus' text format.
//! - [`txns`], [`tx_api`]: interactive transactions held across HTTP requests.
//! - [`pg`]: the PostgreSQL wire protocol front end.
//! - [`http_server`]: the HTTP port's accept loop: connection limit, timeouts, TLS.
//! - [`tls`]: loading certificates for the client ports and the CA the node trusts.
//! - [`replication`]: primary/replica streaming, commit modes, lag, snapshots, retention.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conflicts;
pub mod control;
pub mod error;
pub mod http_server;
pub mod identity;
pub mod leadership;
pub mod members;
pub mod metrics;
pub mod multi_master;
pub mod node;
pub mod node_http;
pub mod peer_link;
pub mod pg;
pub mod promote;
pub mod replication;
pub mod service;
pub mod state;
pub mod status;
pub mod switchover;
pub mod tls;
pub mod tx_api;
pub mod txns;

pub use config::NodeConfig;
pub use error::ApiError;
pub use node::Node;
