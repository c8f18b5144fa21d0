//! The client side of the control plane's network: openraft's RPCs (and forwarded proposals)
//! over TCP to a member's peer port. A connection opens with `ControlHello`, then carries
//! `ControlRequest`/`ControlResponse` pairs, one request at a time. Idle connections are kept in
//! a pool, one per target in steady state; a connection that fails in any way is dropped and
//! the next call dials again. Every call — dial, hello, request, response — is bounded by the
//! caller's timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use scribe_wire::{read_message, write_message, ControlHello, Message};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::peer_link::{DialError, PeerReader, PeerSecurity, PeerWriter};

use super::types::{ControlNode, NodeId, RpcRequest, RpcResponse, TypeConfig};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The target could not be reached: back off before trying again.
    #[error("cannot reach {addr}: {why}")]
    Unreachable {
        /// Its address.
        addr: String,
        /// What failed.
        why: String,
    },
    /// The target refused the connection (another cluster, another `--cluster` list).
    #[error("{addr} refused the control connection: {message}")]
    Refused {
        /// Its address.
        addr: String,
        /// Its explanation.
        message: String,
    },
    /// The connection broke or the answer made no sense.
    #[error("control connection to {addr}: {why}")]
    Network {
        /// Its address.
        addr: String,
        /// What failed.
        why: String,
    },
    /// No answer in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// Its address.
        addr: String,
        /// The bound.
        timeout: Duration,
    },
}

struct Conn {
    rd: BufReader<PeerReader>,
    wr: PeerWriter,
    next_id: u64,
}

/// What every outgoing connection says about this node, and the idle connections.
pub struct Pool {
    hello: ControlHello,
    idle: Mutex<HashMap<String, Conn>>,
    /// The last refusal logged per address, so a retried refusal is logged once.
    refusals: Mutex<HashMap<String, String>>,
    /// How connections are secured (TLS, the peer secret).
    security: Arc<PeerSecurity>,
}

impl Pool {
    /// A pool whose connections open with `hello`.
    pub fn new(hello: ControlHello, security: Arc<PeerSecurity>) -> Pool {
        Pool {
            hello,
            idle: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
            security,
        }
    }

    /// Logs a refusal by `addr`, unless it is the one logged last for it.
    fn log_refusal(&self, addr: &str, message: &str) {
        let mut seen = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(addr).map(String::as_str) != Some(message) {
            tracing::warn!(peer = addr, "control plane: refused: {message}");
            seen.insert(addr.to_string(), message.to_string());
        }
    }

    /// Drops every idle connection.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Sends `req` to the control plane at `addr` and waits for its answer, within `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, CallError> {
        let body = serde_json::to_vec(req).map_err(|e| CallError::Network {
            addr: addr.into(),
            why: format!("encode a {} request: {e}", req.kind()),
        })?;
        match tokio::time::timeout(timeout, self.call_inner(addr, body)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout {
                addr: addr.into(),
                timeout,
            }),
        }
    }

    async fn call_inner(&self, addr: &str, body: Vec<u8>) -> Result<RpcResponse, CallError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
        let mut conn = match idle {
            Some(c) => c,
            None => self.dial(addr).await?,
        };
        let net = |why: String| CallError::Network {
            addr: addr.into(),
            why,
        };
        let id = conn.next_id;
        conn.next_id += 1;
        write_message(&mut conn.wr, &Message::ControlRequest { id, body })
            .await
            .map_err(|e| net(format!("send: {e}")))?;
        conn.wr
            .flush()
            .await
            .map_err(|e| net(format!("send: {e}")))?;
        let answer = match read_message(&mut conn.rd).await {
            Ok(Message::ControlResponse { id: got, body }) if got == id => body,
            Ok(Message::ControlResponse { id: got, .. }) => {
                return Err(net(format!("answer to request {got}, expected {id}")))
            }
            Ok(Message::Refused(r)) => {
                self.log_refusal(addr, &r.message);
                return Err(CallError::Refused {
                    addr: addr.into(),
                    message: r.message,
                });
            }
            Ok(other) => return Err(net(format!("unexpected {} message", other.kind()))),
            Err(e) if self.security.is_tls_rejection(&e) => {
                let message = format!(
                    "peer authentication failed: {addr} did not accept this node's TLS certificate: {e}"
                );
                self.log_refusal(addr, &message);
                return Err(CallError::Refused {
                    addr: addr.into(),
                    message,
                });
            }
            Err(e) => return Err(net(format!("receive: {e}"))),
        };
        let resp: RpcResponse =
            serde_json::from_slice(&answer).map_err(|e| net(format!("decode the answer: {e}")))?;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), conn);
        Ok(resp)
    }

    async fn dial(&self, addr: &str) -> Result<Conn, CallError> {
        // The caller bounds the whole call; this bound only keeps a dial from outliving it.
        let (rd, mut wr) = match self.security.dial(addr, Duration::from_secs(10)).await {
            Ok(halves) => halves,
            Err(DialError::Unreachable { why, .. }) => {
                return Err(CallError::Unreachable {
                    addr: addr.into(),
                    why,
                })
            }
            Err(DialError::Refused(r)) => {
                self.log_refusal(addr, &r.message);
                return Err(CallError::Refused {
                    addr: addr.into(),
                    message: r.message,
                });
            }
            Err(e @ DialError::Unauthenticated(_)) => {
                let message = e.to_string();
                self.log_refusal(addr, &message);
                return Err(CallError::Refused {
                    addr: addr.into(),
                    message,
                });
            }
        };
        write_message(&mut wr, &Message::ControlHello(self.hello.clone()))
            .await
            .map_err(|e| CallError::Unreachable {
                addr: addr.into(),
                why: format!("send the hello: {e}"),
            })?;
        Ok(Conn {
            rd: BufReader::new(rd),
            wr,
            next_id: 1,
        })
    }
}

/// Creates openraft's per-target clients.
pub struct Network {
    /// This node's id, for openraft's timeout errors.
    pub me: NodeId,
    /// The connection pool.
    pub pool: Arc<Pool>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ControlNode) -> PeerClient {
        PeerClient {
            me: self.me,
            target,
            node: node.clone(),
            pool: self.pool.clone(),
        }
    }
}

/// openraft's client for one target.
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    node: ControlNode,
    pool: Arc<Pool>,
}

impl PeerClient {
    async fn rpc<E: std::error::Error>(
        &self,
        action: RPCTypes,
        req: RpcRequest,
        option: &RPCOption,
    ) -> Result<RpcResponse, RPCError<NodeId, ControlNode, E>> {
        let timeout = option.hard_ttl();
        self.pool
            .call(&self.node.peer_addr, &req, timeout)
            .await
            .map_err(|e| match e {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Refused { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Network { .. } => RPCError::Network(NetworkError::new(&e)),
                CallError::Timeout { .. } => RPCError::Timeout(Timeout {
                    action,
                    id: self.me,
                    target: self.target,
                    timeout,
                }),
            })
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, ControlNode, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }

    fn unexpected<E: std::error::Error>(
        &self,
        resp: RpcResponse,
    ) -> RPCError<NodeId, ControlNode, E> {
        let why = match resp {
            RpcResponse::BadRequest(why) => why,
            other => format!("unexpected answer {other:?}"),
        };
        let e = CallError::Network {
            addr: self.node.peer_addr.clone(),
            why,
        };
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ControlNode, RaftError<NodeId>>>
    {
        match self
            .rpc(
                RPCTypes::AppendEntries,
                RpcRequest::AppendEntries(rpc),
                &option,
            )
            .await?
        {
            RpcResponse::AppendEntries(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ControlNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .rpc(
                RPCTypes::InstallSnapshot,
                RpcRequest::InstallSnapshot(rpc),
                &option,
            )
            .await?
        {
            RpcResponse::InstallSnapshot(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ControlNode, RaftError<NodeId>>> {
        match self
            .rpc(RPCTypes::Vote, RpcRequest::Vote(rpc), &option)
            .await?
        {
            RpcResponse::Vote(r) => r.map_err(|e| self.remote(e)),
            other => Err(self.unexpected(other)),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A restarted member is found again within a fraction of a second.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
