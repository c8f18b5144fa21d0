//! [`NodeState`]: what the front ends (HTTP, PostgreSQL) and the replication tasks of one node
//! share — the engine, the node's identity and configuration, its [`Leadership`], the registry of
//! its replicas (used while it is primary), its follower (active while it is a replica), and the
//! interactive transactions held for HTTP clients.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use scribe_sqlite::Engine;

use crate::identity::Identity;
use crate::leadership::Leadership;
use crate::replication::follower::Follower;
use crate::replication::registry::Registry;
use crate::NodeConfig;

/// The shared state of a running node.
pub struct NodeState {
    /// The storage engine.
    pub engine: Engine,
    /// Who this node is.
    pub identity: Identity,
    /// How it was configured.
    pub config: NodeConfig,
    /// Its control plane, in cluster mode.
    pub control: Option<crate::control::ControlPlane>,
    /// When it started.
    pub started: Instant,
    /// HTTP requests answered, by route and status code.
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// This node's role, term and primary.
    pub leadership: Leadership,
    /// The replicas following this node, with their positions (meaningful while it is primary).
    pub registry: Arc<Registry>,
    /// The connection to the primary (active while this node is a replica).
    pub follower: Arc<Follower>,
    /// On a multi-master node: its runtime (peers, their links).
    pub mm: Option<Arc<crate::multi_master::MultiMaster>>,
    /// Where the peer protocol listens, if it does.
    pub peer_addr: Option<std::net::SocketAddr>,
    /// HTTP client for calls to other nodes (forwarding to the primary, cluster operations).
    pub http: crate::node_http::NodeHttp,
    /// Interactive transactions held for HTTP clients.
    pub txns: crate::txns::TxnTable,
}

impl NodeState {
    /// The cluster id of this node's data (a replica adopts its primary's when it first joins).
    pub fn cluster_id(&self) -> String {
        self.follower.cluster_id()
    }

    /// Whether this node is a witness of its cluster (`--witness`): it votes in the control
    /// plane, holds no data, and answers data requests with [`crate::ApiError::Witness`].
    pub fn is_witness(&self) -> bool {
        self.config
            .cluster
            .as_ref()
            .is_some_and(|c| c.witnesses.contains(&self.identity.name))
    }

    /// The [`crate::ApiError::Witness`] refusal of this node, when it is a witness.
    pub fn refuse_if_witness(&self) -> Result<(), crate::ApiError> {
        if !self.is_witness() {
            return Ok(());
        }
        let primary = self.leadership.peek(|v| {
            v.primary
                .name
                .clone()
                .map(|name| (name, v.primary.http_url.clone()))
        });
        Err(crate::ApiError::Witness {
            node: self.identity.name.clone(),
            primary,
        })
    }
}
