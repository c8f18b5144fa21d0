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

use crate::exec::Statement;
use crate::metrics::EngineMetrics;
use crate::payload::{self, Step};
use crate::writer::{Committed, Done, Reply, StatementResult, Writer, WriterMsg};
use crate::EngineError;

/// An operation of an interactive transaction, sent to the writer.
pub(crate) enum TxnOp {
    Execute {
        statement: Statement,
        reply: oneshot::Sender<Result<StatementResult, EngineError>>,
    },
    Commit {
        reply: Reply,
    },
    Rollback {
        reply: oneshot::Sender<()>,
    },
}

/// An open interactive transaction. Dropping it rolls it back.
///
/// Invariant: once an operation has failed, or the transaction committed or rolled back, `ops` is
/// `None` and every later operation is refused with [`EngineError::TxnEnded`].
pub struct Transaction {
    ops: Option<Sender<TxnOp>>,
    idle: Duration,
}

impl Transaction {
    pub(crate) async fn begin(
        tx: &mpsc::Sender<WriterMsg>,
        idle: Duration,
    ) -> Result<Transaction, EngineError> {
        let (ops_tx, ops) = std::sync::mpsc::channel();
        let (started, rx) = oneshot::channel();
        tx.send(WriterMsg::Begin { ops, idle, started })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the writer stopped before answering".into()))??;
        Ok(Transaction {
            ops: Some(ops_tx),
            idle,
        })
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

    /// Runs one statement inside the transaction. On error the whole transaction has been rolled
    /// back and the transaction is closed.
    pub async fn execute(&mut self, statement: Statement) -> Result<StatementResult, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(TxnOp::Execute { statement, reply })?;
        let answer = rx.await.map_err(|_| self.ended());
        match answer {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) | Err(e) => {
                self.ops = None;
                Err(e)
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
                TxnOp::Execute { statement, reply } => {
                    match self.run_statements(std::slice::from_ref(&statement)) {
                        Ok((mut results, mut more)) => {
                            steps.append(&mut more);
                            let _ = reply.send(Ok(results.pop().unwrap_or_default()));
                        }
                        Err(e) => {
                            EngineMetrics::add(&self.metrics.txn_errors, 1);
                            let _ = self.internal("ROLLBACK");
                            let _ = reply.send(Err(e));
                            return;
                        }
                    }
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
        }
    }

    fn commit_interactive(
        &mut self,
        steps: Vec<Step>,
        reply: Reply,
        rx: &mut mpsc::Receiver<WriterMsg>,
        carry: &mut Option<WriterMsg>,
    ) {
        let position = if steps.is_empty() {
            None
        } else {
            match self
                .log
                .append(self.term, crate::writer::now_us(), payload::encode(&steps))
            {
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
                Ok(WriterMsg::Execute { statements, reply }) => batch.push((statements, reply)),
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
