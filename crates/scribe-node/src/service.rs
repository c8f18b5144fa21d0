//! The one write path and the one read plan under every front end (DESIGN.md §4, "One service
//! under every front end"): `/v1/execute`, `/v1/tx` and the PostgreSQL sessions all decide where
//! a write or a read goes here, and all confirm a commit here.
//!
//! - Writes: [`route_write`] decides between running here (this node is the primary; the engine's
//!   write gate still has the last word), forwarding to the primary, or refusing; [`confirm`]
//!   waits for the commit mode of a committed transaction and says what durability it reached.
//! - Reads: [`plan_read`] decides, from the read's consistency, whether this node serves it, the
//!   primary must (forward), or it is refused — waiting, bounded, for a session's position.

use std::time::{Duration, Instant};

use scribe_core::{CommitMode, Located, OnSyncTimeout, Position, TermHistory};
use scribe_sqlite::{Committed, Engine, Statement, StatementResult};
use serde::Deserialize;

use crate::replication::commit_wait::{self, Durability};
use crate::state::NodeState;
use crate::ApiError;

/// How long a session read waits for its position when the request does not say
/// (`"wait"` on `/v1/query`; always, for PostgreSQL sessions on a replica), before it is
/// forwarded to the primary (or refused when forwarding is not allowed).
pub const DEFAULT_SESSION_WAIT: Duration = Duration::from_secs(1);

/// The longest a session read may wait for its position.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Where a write goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRoute {
    /// This node is the primary: run it here.
    Local,
    /// Send it to the primary.
    Forward {
        /// The primary's name.
        primary: String,
        /// Its HTTP API.
        url: String,
    },
}

/// Decides where a write goes: here on the primary, to the primary when this node is a replica
/// and `may_forward`, or nowhere (`not_primary`, naming the primary when it is known; `witness`
/// on a witness, which holds no data and forwards nothing).
pub fn route_write(state: &NodeState, may_forward: bool) -> Result<WriteRoute, ApiError> {
    state.refuse_if_witness()?;
    route_to_primary(state, may_forward)
}

/// [`route_write`] for requests that are not data (a switchover): a witness forwards them too.
pub fn route_to_primary(state: &NodeState, may_forward: bool) -> Result<WriteRoute, ApiError> {
    if state.leadership.is_primary() {
        return Ok(WriteRoute::Local);
    }
    match (may_forward, state.leadership.primary()) {
        (true, Some((primary, url))) => Ok(WriteRoute::Forward { primary, url }),
        (true, None) => Err(ApiError::Forward(format!(
            "{} has not reached its primary yet",
            state.identity.name
        ))),
        (false, primary) => Err(not_primary(state, primary)),
    }
}

/// The `not_primary` error of this node.
pub fn not_primary(state: &NodeState, primary: Option<(String, String)>) -> ApiError {
    ApiError::NotPrimary {
        node: state.identity.name.clone(),
        primary,
    }
}

/// A transaction committed on this node, with the durability it reached.
#[derive(Debug)]
pub struct Written {
    /// One result per statement.
    pub results: Vec<StatementResult>,
    /// The position token of its record (for a transaction that changed nothing, the position
    /// its reads saw).
    pub position: Position,
    /// Whether it wrote a record.
    pub logged: bool,
    /// The durability reached — or, when its semi-sync / sync wait timed out under
    /// `--on-sync-timeout error`, the `sync_timeout` error: the transaction is committed, and the
    /// front end says it is not confirmed (HTTP: an error answer; PostgreSQL: a warning).
    pub durability: Result<Durability, ApiError>,
}

/// Runs `statements` as one transaction on this primary within `limits` and confirms it in
/// `mode` (the node's `--commit` when `None`).
pub async fn execute(
    state: &NodeState,
    statements: Vec<Statement>,
    mode: Option<CommitMode>,
    limits: scribe_sqlite::Limits,
) -> Result<Written, ApiError> {
    let committed = state.engine.execute_with(statements, limits).await?;
    Ok(confirm(state, committed, mode).await)
}

/// Waits until the commit mode (`mode`, else the node's `--commit`) holds for a committed
/// transaction — semi-sync, sync: its sync replicas confirmed it, bounded by `--sync-timeout` —
/// and answers the durability reached; on timeout, by `--on-sync-timeout`: the `sync_timeout`
/// error, or the durability reached, marked degraded.
pub async fn confirm(state: &NodeState, committed: Committed, mode: Option<CommitMode>) -> Written {
    let mode = mode.unwrap_or(state.config.commit);
    let durability = wait_durability(state, mode, &committed)
        .await
        .and_then(|d| still_primary(state, &committed).map(|()| d));
    Written {
        results: committed.results,
        position: committed.position,
        logged: committed.logged,
        durability,
    }
}

/// A write is confirmed only while this node is still the primary of the term that wrote it and
/// its lease holds: the others promote a new primary only after that lease ran out, so whatever
/// the replicas confirmed (or this node made durable) before it did is seen by the promotion. A
/// confirmation that arrives after — a slow fsync, a replica that acknowledged late — may be
/// undone by a new primary, and is reported as such.
fn still_primary(state: &NodeState, committed: &Committed) -> Result<(), ApiError> {
    if !committed.logged {
        return Ok(());
    }
    let now = Instant::now();
    let holds = state.leadership.peek(|view| {
        view.role == crate::leadership::NodeRole::Primary
            && view.term <= committed.position.term
            && view.lease_until.is_none_or(|t| now < t)
    });
    if holds {
        return Ok(());
    }
    Err(ApiError::Engine(scribe_sqlite::EngineError::OutcomeUnknown(format!(
        "the transaction is durable on {} at {} but its lease as primary ran out before the write was confirmed: \
         a new primary may not have it, and it may be rolled back (into the rollback file) when this node rejoins; read it back before retrying",
        state.identity.name, committed.position
    ))))
}

async fn wait_durability(
    state: &NodeState,
    mode: CommitMode,
    committed: &Committed,
) -> Result<Durability, ApiError> {
    if !committed.logged || mode == CommitMode::Async {
        // Nothing written means nothing to replicate: the mode holds trivially.
        return Ok(Durability::local(mode));
    }
    let registry = &state.registry;
    match commit_wait::wait(
        registry,
        mode,
        committed.position.lsn,
        state.config.sync_timeout,
    )
    .await
    {
        Ok(d) => Ok(d),
        Err(timed_out) => {
            tracing::warn!(
                position = %committed.position,
                requested = %mode,
                reached = %timed_out.reached.mode,
                waited = ?timed_out.waited,
                policy = %state.config.on_sync_timeout,
                "a commit was not confirmed by the sync set in time"
            );
            match state.config.on_sync_timeout {
                OnSyncTimeout::Degrade => Ok(timed_out.reached),
                OnSyncTimeout::Error => Err(ApiError::SyncTimeout {
                    position: committed.position,
                    durability: timed_out.reached,
                    sync_set: registry.sync_set().to_string(),
                }),
            }
        }
    }
}

/// Moves a session's position token forward to `written` (never back).
pub fn advance(token: &mut Option<Position>, written: Position) {
    *token = Some(token.map_or(written, |t| t.max(written)));
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Whatever this node has applied (optionally within `max_lag`).
    #[default]
    Stale,
    /// At least the given position: read-your-writes.
    Session,
    /// Served by the primary while it holds its lease.
    Strong,
}

/// What a read asks for.
#[derive(Debug, Clone, Copy)]
pub struct ReadAsk {
    /// Its consistency.
    pub consistency: Consistency,
    /// `stale`: the most this node may be behind its primary.
    pub max_lag: Option<Duration>,
    /// `session`: the position the read must see.
    pub position: Option<Position>,
    /// `session`: how long to wait for this node to apply it (capped at [`MAX_WAIT`]).
    pub wait: Duration,
    /// Whether the read may go to the primary when this node cannot serve it as asked.
    pub may_forward: bool,
}

/// Where a read is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRoute {
    /// Here, from this node's applied state.
    Local,
    /// On the primary.
    Forward {
        /// The primary's name.
        primary: String,
        /// Its HTTP API.
        url: String,
    },
}

/// Decides where a read is served (waiting, for a session read, until this node has applied its
/// position or the wait runs out). A witness serves none and forwards none: it holds no data.
pub async fn plan_read(state: &NodeState, ask: ReadAsk) -> Result<ReadRoute, ApiError> {
    state.refuse_if_witness()?;
    let node = || state.identity.name.clone();
    let elsewhere = |refusal: ApiError| -> Result<ReadRoute, ApiError> {
        if !ask.may_forward || state.leadership.is_primary() {
            return Err(refusal);
        }
        match state.leadership.primary() {
            Some((primary, url)) => Ok(ReadRoute::Forward { primary, url }),
            None => Err(ApiError::Forward(format!(
                "{} has not reached its primary yet",
                state.identity.name
            ))),
        }
    };
    let (primary, serving, term) = state.leadership.peek(|v| {
        (
            v.role == crate::leadership::NodeRole::Primary,
            v.is_serving_primary(Instant::now()),
            v.term,
        )
    });
    match ask.consistency {
        Consistency::Stale if primary => Ok(ReadRoute::Local),
        Consistency::Stale => match ask.max_lag {
            Some(max_lag) => {
                let lag = state.follower.lag().unwrap_or(Duration::MAX);
                if lag > max_lag {
                    elsewhere(ApiError::Lagging {
                        node: node(),
                        lag,
                        max_lag,
                    })
                } else {
                    Ok(ReadRoute::Local)
                }
            }
            None => Ok(ReadRoute::Local),
        },
        Consistency::Strong if primary => {
            if serving {
                Ok(ReadRoute::Local)
            } else {
                Err(ApiError::LeaseLost { node: node(), term })
            }
        }
        Consistency::Strong => elsewhere(not_primary(state, state.leadership.primary())),
        Consistency::Session => {
            let position = ask.position.ok_or_else(|| {
                ApiError::BadJson(
                    "a session read needs the \"position\" token of the session's last write"
                        .into(),
                )
            })?;
            let wait = ask.wait.min(MAX_WAIT);
            match wait_applied(&state.engine, position, wait).await {
                Ok(()) => Ok(ReadRoute::Local),
                Err(NotReached::Lost { ours }) => Err(ApiError::PositionLost {
                    node: node(),
                    position,
                    ours,
                }),
                Err(NotReached::NotYet(applied)) => elsewhere(ApiError::NotCaughtUp {
                    node: node(),
                    position,
                    applied,
                    waited: wait,
                }),
            }
        }
    }
}

/// Why a session read's position was not reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReached {
    /// Not applied within the wait; what this node has applied.
    NotYet(Position),
    /// It can never be: this node's history of terms gives that LSN to another term (`ours`) —
    /// the write of that token was lost in a failover.
    Lost {
        /// The term this node's history has at that LSN.
        ours: scribe_core::Term,
    },
}

/// Where `position` stands in this node's history of terms ([`Located`]).
fn locate(engine: &Engine, position: Position) -> Located {
    match TermHistory::from_entries(engine.term_history()) {
        Ok(h) => h.locate(position, engine.progress().flushed.lsn),
        // A history that does not parse is no reason to refuse reads: judge by positions.
        Err(_) => Located::Ahead,
    }
}

/// Waits until this node has applied `position`, at most `wait`. A position this node's history
/// says can never arrive (its write was lost in a failover) ends the wait at once, as soon as the
/// history shows it (a replica may learn it only when the new term's records reach it).
pub async fn wait_applied(
    engine: &Engine,
    position: Position,
    wait: Duration,
) -> Result<(), NotReached> {
    let mut rx = engine.watch_progress();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let applied = rx.borrow_and_update().applied;
        match locate(engine, position) {
            Located::Lost { ours } => return Err(NotReached::Lost { ours }),
            Located::Held | Located::BeforeBase if applied.lsn >= position.lsn => return Ok(()),
            Located::Held | Located::BeforeBase | Located::Ahead => {}
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return Err(NotReached::NotYet(engine.progress().applied)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scribe_core::{Lsn, Term};

    #[test]
    fn a_token_only_moves_forward() {
        let mut t = None;
        advance(&mut t, Position::new(Term(1), Lsn(5)));
        advance(&mut t, Position::new(Term(1), Lsn(3)));
        assert_eq!(t, Some(Position::new(Term(1), Lsn(5))));
        advance(&mut t, Position::new(Term(2), Lsn(6)));
        assert_eq!(t, Some(Position::new(Term(2), Lsn(6))));
    }
}
