//! [`Cluster`]: the handle an application keeps — writes to the primary, reads to the replicas,
//! and one position token for the whole handle so that its reads see its writes.

use std::sync::Arc;
use std::time::Duration;

use scribe_core::Position;

use crate::answer::{Executed, Rows};
use crate::error::Error;
use crate::options::Options;
use crate::routing::{seed_urls, Router};
use crate::session::Session;
use crate::statement::{CommitMode, Consistency, Statement};
use crate::value::Params;

/// A connection to a Scribe cluster: the classic setup's two doors, writes to the primary and
/// reads to the replicas, behind one handle.
///
/// The handle keeps the newest position token it has seen (from its writes' answers and its
/// reads') and sends it with every [`query`](Cluster::query), so a read sees every write made
/// through this handle before it, on whichever replica serves it. The token is shared by all
/// clones of the handle — one application instance, one token. For a token per user or request,
/// see [`Session`].
///
/// The handle learns the cluster from the nodes' `/v1/status`: the primary (a node that says so,
/// or the one the replicas follow) and the replicas (the primary's, and the given nodes that say
/// so). It discovers again when the primary stops answering or a node says it is not the
/// primary, and in the background when its picture is older than
/// [`Options::refresh_interval`].
///
/// Cloning is cheap; clones share everything.
#[derive(Clone)]
pub struct Cluster {
    /// The cluster-wide session: the router and the handle's token, shared by clones.
    own: Session,
}

/// A replica as the client last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaInfo {
    /// The node's name.
    pub name: String,
    /// Its HTTP API.
    pub url: String,
    /// Whether it gets reads: it answered, streams from its primary, and lags by no more than
    /// [`Options::max_replica_lag`].
    pub healthy: bool,
    /// How far behind the primary it was, when known.
    pub lag: Option<Duration>,
}

impl Cluster {
    /// Connects with the default [`Options`]. `urls` are nodes' HTTP APIs
    /// (`http://127.0.0.1:5480`); any one node that answers is enough to find the others.
    ///
    /// Fails with [`Error::Usage`] for no URL or one that does not parse, and with
    /// [`Error::Unreachable`] when no node answers.
    pub async fn connect(
        urls: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Cluster, Error> {
        Cluster::connect_with(urls, Options::default()).await
    }

    /// Connects with `options`.
    pub async fn connect_with(
        urls: impl IntoIterator<Item = impl AsRef<str>>,
        options: Options,
    ) -> Result<Cluster, Error> {
        let seeds = seed_urls(urls)?;
        let router = Router::connect(seeds, options).await?;
        Ok(Cluster {
            own: Session::new(Arc::new(router)),
        })
    }

    /// Runs `statements` as one transaction on the primary, in the primary's default commit
    /// mode. Retried only while provably not sent (the primary could not be reached, or the
    /// node was no longer the primary); an answer lost after sending is
    /// [`Error::OutcomeUnknown`].
    pub async fn execute(
        &self,
        statements: impl IntoIterator<Item = impl Into<Statement>>,
    ) -> Result<Executed, Error> {
        self.own.execute(statements).await
    }

    /// Like [`execute`](Cluster::execute), in commit mode `commit`.
    pub async fn execute_with(
        &self,
        statements: impl IntoIterator<Item = impl Into<Statement>>,
        commit: CommitMode,
    ) -> Result<Executed, Error> {
        self.own.execute_with(statements, commit).await
    }

    /// Runs a read on a replica (round robin over the healthy ones, the primary as fallback),
    /// seeing every write made through this handle: [`Consistency::Session`] with the handle's
    /// token. A node that cannot serve it (unreachable, lagging, not caught up) passes it on to
    /// the next.
    pub async fn query(&self, sql: &str, params: impl Into<Params>) -> Result<Rows, Error> {
        self.query_with(sql, params, Consistency::Session).await
    }

    /// Runs a read with an explicit consistency; [`Consistency::Session`] uses the handle's
    /// token.
    pub async fn query_with(
        &self,
        sql: &str,
        params: impl Into<Params>,
        consistency: Consistency,
    ) -> Result<Rows, Error> {
        self.own.query_with(sql, params, consistency).await
    }

    /// A session: a handle on the same cluster with a position token of its own, starting
    /// empty. See [`Session`].
    pub fn session(&self) -> Session {
        Session::new(Arc::clone(&self.own.router))
    }

    /// The newest position this handle has seen.
    pub fn position(&self) -> Option<Position> {
        self.own.position()
    }

    /// The primary's HTTP API, as last discovered.
    pub fn primary_url(&self) -> Option<String> {
        self.own.router.topology().primary.map(|p| p.url)
    }

    /// The replicas, as last discovered.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        self.own
            .router
            .topology()
            .replicas
            .into_iter()
            .map(|r| ReplicaInfo {
                name: r.node.name,
                url: r.node.url,
                healthy: r.healthy,
                lag: r.lag,
            })
            .collect()
    }

    /// Discovers the cluster again now (it also happens by itself); fails with
    /// [`Error::Unreachable`] when no node answers, keeping the previous picture.
    pub async fn refresh(&self) -> Result<(), Error> {
        self.own.router.refresh_now().await
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("primary", &self.primary_url())
            .field("replicas", &self.replicas())
            .field("position", &self.position())
            .finish()
    }
}
