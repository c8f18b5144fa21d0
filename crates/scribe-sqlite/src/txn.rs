//! Interactive transactions: a client's statements sent one at a time across round trips, as
//! PostgreSQL clients do between `BEGIN` and `COMMIT`.
//!
//! SQLite has one writer, so an interactive transaction leases the writer thread: from its first
//! statement to its end, the writer serves only that transaction's operations; other writes queue
//! behind it. Reads outside it go on on the read pool. It ends by commit (its record is appended
//! and made durable with whatever single-request transactions queued meanwhile: group commit),
//! rollback, the first failing statement (the whole transaction is rolled back, as PostgreSQL
//! aborts it), its handle being dropped (a client that disconnected), or staying idle longer than
//! its idle limit — so a forgotten transaction cannot stop the node's writes for long.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::budget::{Bounds, Interest, Limits};
use crate::exec::Statement;
use crate::metrics::EngineMetrics;
use crate::payload::Step;
use crate::writer::{Committed, Done, Reply, StatementResult, Writer, WriterMsg};
use crate::EngineError;

/// An operation of an interactive transaction, sent to the writer.
pub(crate) enum TxnOp {
    Execute {
        statement: Statement,
        limits: Limits,
        interest: Interest,
        reply: oneshot::Sender<Result<StatementResult, EngineError>>,
    },
    ExecuteMany {
        statements: Vec<Statement>,
        limits: Limits,
        interest: Interest,
        reply: oneshot::Sender<Result<Vec<StatementResult>, EngineError>>,
    },
    Commit {
        reply: Reply,
    },
    Rollback {
        reply: oneshot::Sender<()>,
    },
    Savepoint {
        op: SavepointOp,
        name: String,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// What to do with a named savepoint inside an interactive transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavepointOp {
    /// `SAVEPOINT name`: mark the point.
    Create,
    /// `RELEASE name`: forget it (and the ones after it), keeping their changes.
    Release,
    /// `ROLLBACK TO name`: undo every change since it; it stays.
    RollbackTo,
}

/// An open interactive transaction. Dropping it rolls it back.
///
/// A failing statement leaves no change behind but keeps the transaction open (the caller decides:
/// PostgreSQL sessions refuse everything but a rollback after it). Invariant: once the transaction
/// committed, rolled back or was rolled back by the writer (idle limit), `ops` is `None` and every
/// later operation is refused with [`EngineError::TxnEnded`].
pub struct Transaction {
    ops: Option<Sender<TxnOp>>,
    idle: Duration,
    /// The limits of its statements; the timeout counts for each statement.
    limits: Limits,
}

impl Transaction {
    pub(crate) async fn begin(
        tx: &mpsc::Sender<WriterMsg>,
        idle: Duration,
        limits: Limits,
    ) -> Result<Transaction, EngineError> {
        let (ops_tx, ops) = std::sync::mpsc::channel();
        let (started, rx) = oneshot::channel();
        tx.send(WriterMsg::Begin { ops, idle, started })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| {
            EngineError::Unavailable("the writer stopped before answering".into())
        })??;
        Ok(Transaction {
            ops: Some(ops_tx),
            idle,
            limits,
        })
    }

    /// Sets the limits of the statements that follow (`SET statement_timeout` in a block).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    fn ended(&self) -> EngineError {
        EngineError::TxnEnded(format!(
            "the transaction is no longer open: it was rolled back after an error, or after it stayed idle longer than {:?}",
            self.idle
        ))
    }

    fn send(&mut self, op: TxnOp) -> Result<(), EngineError> {
        let sent = match &self.ops {
            Some(ops) => ops.send(op).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            self.ops = None;
            Err(self.ended())
        }
    }

    /// Whether the transaction can still take statements.
    pub fn is_open(&self) -> bool {
        self.ops.is_some()
    }

    /// Runs one statement inside the transaction. On error nothing of the statement is kept and
    /// the transaction stays open.
    pub async fn execute(&mut self, statement: Statement) -> Result<StatementResult, EngineError> {
        let (reply, rx) = oneshot::channel();
        let (_wanted, interest) = Interest::pair();
        self.send(TxnOp::Execute {
            statement,
            limits: self.limits,
            interest,
            reply,
        })?;
        match rx.await {
            Ok(answer) => answer,
            Err(_) => {
                self.ops = None;
                Err(self.ended())
            }
        }
    }

    /// Runs statements inside the transaction in one step (a COPY's rows, say): all of them or,
    /// on error, none; the transaction stays open either way.
    pub async fn execute_many(
        &mut self,
        statements: Vec<Statement>,
    ) -> Result<Vec<StatementResult>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let (_wanted, interest) = Interest::pair();
        self.send(TxnOp::ExecuteMany {
            statements,
            limits: self.limits,
            interest,
            reply,
        })?;
        match rx.await {
            Ok(answer) => answer,
            Err(_) => {
                self.ops = None;
                Err(self.ended())
            }
        }
    }

    /// Creates, releases or rolls back to a named savepoint.
    pub async fn savepoint(&mut self, op: SavepointOp, name: &str) -> Result<(), EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(TxnOp::Savepoint {
            op,
            name: name.to_string(),
            reply,
        })?;
        match rx.await {
            Ok(answer) => answer,
            Err(_) => {
                self.ops = None;
                Err(self.ended())
            }
        }
    }

    /// Commits: answers once the record is durable in the log and applied, like a single-request
    /// transaction (`logged` is false when the transaction changed nothing).
    pub async fn commit(mut self) -> Result<Committed, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(TxnOp::Commit { reply })?;
        self.ops = None;
        rx.await.map_err(|_| {
            EngineError::OutcomeUnknown("the writer stopped before answering a commit".into())
        })?
    }

    /// Rolls back; nothing of the transaction is kept.
    pub async fn rollback(mut self) {
        let (reply, rx) = oneshot::channel();
        if self.send(TxnOp::Rollback { reply }).is_ok() {
            let _ = rx.await;
        }
        self.ops = None;
    }
}

impl Writer {
    /// Serves one interactive transaction (see the module documentation). `rx` and `carry` are
    /// the writer's queue: at commit, single-request transactions already queued join the batch.
    pub(crate) fn run_interactive(
        &mut self,
        ops: Receiver<TxnOp>,
        idle: Duration,
        started: oneshot::Sender<Result<(), EngineError>>,
        rx: &mut mpsc::Receiver<WriterMsg>,
        carry: &mut Option<WriterMsg>,
    ) {
        if let Some(why) = self.fatal.get() {
            let _ = started.send(Err(EngineError::Unavailable(why.clone())));
            return;
        }
        if let Err(e) = self.admit(1) {
            let _ = started.send(Err(e));
            return;
        }
        if let Err(e) = self.internal("BEGIN IMMEDIATE") {
            let _ = started.send(Err(EngineError::Internal(format!(
                "begin write transaction: {e}"
            ))));
            return;
        }
        if started.send(Ok(())).is_err() {
            // The client gave up while it waited for the writer.
            let _ = self.internal("ROLLBACK");
            return;
        }
        let mut steps: Vec<Step> = Vec::new();
        // Named savepoints, innermost last, with how many steps the record had at each.
        let mut savepoints: Vec<(String, usize)> = Vec::new();
        loop {
            let op = match ops.recv_timeout(idle) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        ?idle,
                        "rolled back an interactive transaction idle for too long (it held the writer)"
                    );
                    let _ = self.internal("ROLLBACK");
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.internal("ROLLBACK");
                    return;
                }
            };
            match op {
                TxnOp::Execute {
                    statement,
                    limits,
                    interest,
                    reply,
                } => {
                    let bounds = Bounds::from_now(limits, interest);
                    let _ = reply.send(
                        self.run_many(std::slice::from_ref(&statement), &mut steps, &bounds)
                            .map(|mut r| r.pop().unwrap_or_default()),
                    );
                }
                TxnOp::ExecuteMany {
                    statements,
                    limits,
                    interest,
                    reply,
                } => {
                    let bounds = Bounds::from_now(limits, interest);
                    let _ = reply.send(self.run_many(&statements, &mut steps, &bounds));
                }
                TxnOp::Savepoint { op, name, reply } => {
                    let _ = reply.send(self.savepoint(op, &name, &mut savepoints, &mut steps));
                }
                TxnOp::Rollback { reply } => {
                    let _ = self.internal("ROLLBACK");
                    let _ = reply.send(());
                    return;
                }
                TxnOp::Commit { reply } => {
                    self.commit_interactive(steps, reply, rx, carry);
                    return;
                }
            }
            if self.conn.is_autocommit() {
                // An interrupted statement (past its timeout or size limit, or abandoned) made
                // SQLite roll the whole transaction back: it is over, as in PostgreSQL after a
                // statement timeout; what the client sends next is refused.
                tracing::info!("an interactive transaction ended: SQLite rolled it back after an interrupted statement");
                return;
            }
        }
    }

    /// Runs statements of an interactive transaction in a savepoint of their own, so that a
    /// failing one leaves nothing behind.
    fn run_many(
        &mut self,
        statements: &[Statement],
        steps: &mut Vec<Step>,
        bounds: &Bounds,
    ) -> Result<Vec<StatementResult>, EngineError> {
        self.internal("SAVEPOINT scribe_stmt")
            .map_err(|e| EngineError::Internal(format!("open statement savepoint: {e}")))?;
        match self.run_statements(statements, bounds, steps, "the statement") {
            Ok((results, mut more)) => {
                self.internal("RELEASE scribe_stmt").map_err(|e| {
                    EngineError::Internal(format!("release statement savepoint: {e}"))
                })?;
                steps.append(&mut more);
                Ok(results)
            }
            Err(e) => {
                EngineMetrics::add(&self.metrics.txn_errors, 1);
                if self.conn.is_autocommit() {
                    // The whole transaction is gone (see `run_interactive`).
                    return Err(e);
                }
                self.internal("ROLLBACK TO scribe_stmt; RELEASE scribe_stmt")
                    .map_err(|e| EngineError::Internal(format!("undo a failed statement: {e}")))?;
                Err(e)
            }
        }
    }

    /// A client's named savepoint. Steps recorded after the savepoint are dropped with a rollback
    /// to it, exactly as SQLite drops their changes.
    fn savepoint(
        &mut self,
        op: SavepointOp,
        name: &str,
        savepoints: &mut Vec<(String, usize)>,
        steps: &mut Vec<Step>,
    ) -> Result<(), EngineError> {
        check_savepoint_name(name)?;
        let find = |savepoints: &Vec<(String, usize)>| {
            savepoints
                .iter()
                .rposition(|(n, _)| n.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    EngineError::BadRequest(format!("savepoint \"{name}\" does not exist"))
                })
        };
        let sql_err = |e: rusqlite::Error| EngineError::Internal(format!("savepoint {name}: {e}"));
        match op {
            SavepointOp::Create => {
                self.internal(&format!("SAVEPOINT sp_{name}"))
                    .map_err(sql_err)?;
                savepoints.push((name.to_string(), steps.len()));
            }
            SavepointOp::Release => {
                let at = find(savepoints)?;
                self.internal(&format!("RELEASE sp_{name}"))
                    .map_err(sql_err)?;
                savepoints.truncate(at);
            }
            SavepointOp::RollbackTo => {
                let at = find(savepoints)?;
                self.internal(&format!("ROLLBACK TO sp_{name}"))
                    .map_err(sql_err)?;
                steps.truncate(savepoints[at].1);
                savepoints.truncate(at + 1);
            }
        }
        Ok(())
    }

    fn commit_interactive(
        &mut self,
        steps: Vec<Step>,
        reply: Reply,
        rx: &mut mpsc::Receiver<WriterMsg>,
        carry: &mut Option<WriterMsg>,
    ) {
        // The gate may have closed while the transaction held the writer; if it is open, the
        // record is written in its term now (and checked again before the fsync).
        if let Err(e) = self.admit(1) {
            let _ = self.internal("ROLLBACK");
            let _ = reply.send(Err(e));
            return;
        }
        let position = if steps.is_empty() {
            None
        } else {
            let payload = match self.seal(steps) {
                Ok(p) => p,
                Err(e) => {
                    let _ = self.internal("ROLLBACK");
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            match self.log.append(self.term, crate::writer::now_us(), payload) {
                Ok(pos) => Some(pos),
                Err(e) => {
                    let _ = self.internal("ROLLBACK");
                    let _ = reply.send(Err(e.into()));
                    return;
                }
            }
        };
        let done = vec![Done {
            reply,
            results: Vec::new(),
            position,
        }];
        // Group commit: single-request transactions that queued while this one held the writer
        // join its batch.
        let mut batch = Vec::new();
        while batch.len() < self.max_batch {
            match rx.try_recv() {
                Ok(WriterMsg::Execute(job)) => batch.push(job),
                Ok(other) => {
                    *carry = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        self.run_in_open(done, batch);
    }
}

/// Savepoint names clients may use: 1 to 63 letters, digits and '_', not starting with `scribe_`.
pub(crate) fn check_savepoint_name(name: &str) -> Result<(), EngineError> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.to_ascii_lowercase().starts_with("scribe_")
    {
        return Err(EngineError::BadRequest(format!(
            "savepoint name {name:?} must be letters, digits and '_' (and not start with scribe_)"
        )));
    }
    Ok(())
}
