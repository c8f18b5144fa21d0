//! The read pool: read-only SQLite connections, each used by one query at a time on tokio's
//! blocking threads. In WAL mode they read beside the writer without blocking it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use scribe_core::Position;
use tokio::sync::Semaphore;

use crate::budget::{Bounds, Interest, Limits, Meter};
use crate::exec::{self, Rows, Statement};
use crate::policy::{Policy, Role};
use crate::{meta, EngineError};

/// The answer to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// Its rows.
    pub rows: Rows,
    /// The applied position the read saw: every record up to it, none after.
    pub position: Position,
}

struct ReadConn {
    conn: Connection,
    policy: Policy,
    meter: Arc<Meter>,
}

/// A fixed set of read-only connections.
pub(crate) struct ReadPool {
    idle: Mutex<Vec<ReadConn>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub fn open(path: &Path, size: usize) -> Result<ReadPool, EngineError> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            let open = || -> rusqlite::Result<ReadConn> {
                let mut conn = Connection::open_with_flags(path, flags)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.set_prepared_statement_cache_capacity(128);
                let policy = Policy::install(&mut conn, Role::Reader)?;
                let meter = Meter::install(&mut conn)?;
                Ok(ReadConn {
                    conn,
                    policy,
                    meter,
                })
            };
            idle.push(open().map_err(|e| {
                EngineError::Internal(format!("open read connection to {}: {e}", path.display()))
            })?);
        }
        Ok(ReadPool {
            permits: Arc::new(Semaphore::new(idle.len())),
            idle: Mutex::new(idle),
        })
    }

    /// Describes a statement (columns, declared types, parameters) without running it.
    pub async fn describe(self: &Arc<Self>, sql: String) -> Result<exec::Described, EngineError> {
        self.with_conn(None, move |rc| {
            let prepared = exec::prepare(&rc.conn, &rc.policy, &sql)?;
            Ok(exec::describe(&prepared))
        })
        .await
    }

    /// Runs `f` on an idle read connection on a blocking thread. If the caller stops waiting
    /// (a cancelled statement, a client gone), the statement is interrupted; either way the
    /// connection and its permit go back to the pool from the blocking thread itself, so a
    /// dropped caller never loses one.
    async fn with_conn<T: Send + 'static>(
        self: &Arc<Self>,
        deadline: Option<std::time::Instant>,
        f: impl FnOnce(&ReadConn) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let acquire = self.permits.clone().acquire_owned();
        let permit = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), acquire).await.map_err(|_| {
                EngineError::Timeout(
                    "canceling statement due to statement timeout: every read connection stayed busy past the query's timeout (--statement-timeout, or the request's own); it did not run"
                        .into(),
                )
            })?,
            None => acquire.await,
        }
        .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        let rc = self
            .idle
            .lock()
            .expect("read pool")
            .pop()
            .expect("a permit guarantees an idle connection");
        let finished = Arc::new(Mutex::new(false));
        let interrupt = Interrupt {
            handle: Some(rc.conn.get_interrupt_handle()),
            finished: finished.clone(),
        };
        let pool = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let result = f(&rc);
            // Under the lock: an interrupt never reaches the connection's next user.
            *finished.lock().expect("read state") = true;
            pool.idle.lock().expect("read pool").push(rc);
            drop(permit);
            result
        })
        .await
        .map_err(|e| EngineError::Internal(format!("read task failed: {e}")));
        interrupt.disarm();
        result?
    }

    /// Runs one read-only statement within `limits`, its timeout counted from now.
    pub async fn query(
        self: &Arc<Self>,
        stmt: Statement,
        limits: Limits,
    ) -> Result<QueryResult, EngineError> {
        // A dropped caller interrupts the statement through `Interrupt` (below).
        let bounds = Bounds::from_now(limits, Interest::default());
        self.with_conn(bounds.deadline, move |rc| run_query(rc, &stmt, &bounds))
            .await
    }
}

fn run_query(rc: &ReadConn, stmt: &Statement, bounds: &Bounds) -> Result<QueryResult, EngineError> {
    let internal = |sql: &str| rc.policy.internal(|| rc.conn.execute_batch(sql));
    internal("BEGIN").map_err(|e| EngineError::Internal(format!("begin read transaction: {e}")))?;
    let result = (|| {
        let position = rc
            .policy
            .internal(|| meta::applied(&rc.conn))
            .map_err(|e| EngineError::Internal(format!("read applied position: {e}")))?;
        let mut prepared = exec::prepare(&rc.conn, &rc.policy, &stmt.sql)?;
        if !prepared.readonly() {
            return Err(EngineError::NotReadOnly(
                "this statement writes; send it to /v1/execute (queries take read-only statements)"
                    .into(),
            ));
        }
        exec::bind(&mut prepared, &stmt.params)?;
        let armed = rc.meter.arm(bounds, None, 0);
        let rows = exec::run_limited(
            &mut prepared,
            &rc.policy,
            bounds.limits.max_result_bytes,
            &mut 0,
        )
        .map_err(|e| armed.explain(e, "the query"))?
        .unwrap_or_default();
        drop(armed);
        Ok(QueryResult { rows, position })
    })();
    let _ = internal("COMMIT");
    result
}

/// Interrupts a read connection's statement when dropped while armed and the statement has not
/// finished.
struct Interrupt {
    handle: Option<rusqlite::InterruptHandle>,
    finished: Arc<Mutex<bool>>,
}

impl Interrupt {
    fn disarm(mut self) {
        self.handle = None;
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let finished = self.finished.lock().expect("read state");
            if !*finished {
                h.interrupt();
            }
        }
    }
}
