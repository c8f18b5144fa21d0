//! [`Session`]: a handle with a position token of its own, for read-your-writes per user, request
//! or task rather than per application.

use std::sync::Arc;

use scribe_core::Position;

use crate::answer::{Executed, Rows};
use crate::error::Error;
use crate::routing::Router;
use crate::statement::{CommitMode, Consistency, Statement};
use crate::token::Token;
use crate::value::Params;

/// A handle on a [`Cluster`](crate::Cluster) with a position token of its own, made by
/// [`Cluster::session`](crate::Cluster::session).
///
/// What it covers: a read through a session sees every write made through **that session**
/// before it, and never goes back in time behind an earlier read of that session. It does not
/// promise to see writes made through other sessions, or through the cluster handle, after the
/// session's last write — those may still be on their way to the replica that serves the read.
/// The session's token starts empty, so its first read is a plain stale read; the cluster
/// handle's token is neither read nor moved by a session.
///
/// To carry a session across processes (say, a web request that follows another), hand its
/// [`position`](Session::position) over and [`advance`](Session::advance) the new session to it.
///
/// Clones share the token. Routing, retries and errors are the cluster handle's.
#[derive(Clone)]
pub struct Session {
    pub(crate) router: Arc<Router>,
    token: Token,
}

impl Session {
    pub(crate) fn new(router: Arc<Router>) -> Session {
        Session {
            router,
            token: Token::default(),
        }
    }

    /// Runs `statements` as one transaction on the primary and moves the session's token to its
    /// position; see [`Cluster::execute`](crate::Cluster::execute).
    pub async fn execute(
        &self,
        statements: impl IntoIterator<Item = impl Into<Statement>>,
    ) -> Result<Executed, Error> {
        let statements: Vec<Statement> = statements.into_iter().map(Into::into).collect();
        self.router.execute(&self.token, &statements, None).await
    }

    /// Like [`execute`](Session::execute), in commit mode `commit`.
    pub async fn execute_with(
        &self,
        statements: impl IntoIterator<Item = impl Into<Statement>>,
        commit: CommitMode,
    ) -> Result<Executed, Error> {
        let statements: Vec<Statement> = statements.into_iter().map(Into::into).collect();
        self.router
            .execute(&self.token, &statements, Some(commit))
            .await
    }

    /// Runs a read on a replica that sees every write of this session
    /// ([`Consistency::Session`] with the session's token).
    pub async fn query(&self, sql: &str, params: impl Into<Params>) -> Result<Rows, Error> {
        self.query_with(sql, params, Consistency::Session).await
    }

    /// Runs a read with an explicit consistency; [`Consistency::Session`] uses the session's
    /// token.
    pub async fn query_with(
        &self,
        sql: &str,
        params: impl Into<Params>,
        consistency: Consistency,
    ) -> Result<Rows, Error> {
        self.router
            .query(&self.token, sql, &params.into(), consistency)
            .await
    }

    /// The newest position this session has seen: its token.
    pub fn position(&self) -> Option<Position> {
        self.token.get()
    }

    /// Moves the session's token forward to `position` (a token handed over from elsewhere);
    /// an older position changes nothing.
    pub fn advance(&self, position: Position) {
        self.token.observe(position);
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}
