//! Bounds on a request's work: how long its statements may run, how large its captured changes
//! and its result may grow, and whether anyone still waits for it.
//!
//! SQLite calls a connection's progress handler every [`CHECK_EVERY`] virtual-machine steps; the
//! handler here ([`Meter`]) interrupts the running statement once it is past its deadline, its
//! client has gone, or its transaction's changes as the session extension holds them in memory
//! have grown past the limit. The statement then fails with `SQLITE_INTERRUPT`, which the armed
//! meter turns into the error that says why ([`EngineError::Timeout`], [`EngineError::Abandoned`],
//! [`EngineError::TooLarge`]); the caller rolls the statement or transaction back as for any
//! error. The meter is armed only around clients' statements, never around Scribe's own
//! (`COMMIT`, the meta table), which must not be interrupted.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::capture::Capture;
use crate::session_ffi as s;
use crate::EngineError;

/// SQLite virtual-machine steps between two checks: a few microseconds of work.
pub const CHECK_EVERY: i32 = 1000;

/// Limits on one request. `None`: unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// How long a request's statements may run: a single-request transaction as a whole, each
    /// statement of an interactive or optimistic transaction, a query including its wait for a
    /// read connection.
    pub timeout: Option<Duration>,
    /// Most bytes a transaction's captured changes may take (as SQLite's session holds them).
    pub max_txn_bytes: Option<u64>,
    /// Most bytes of rows one statement may return.
    pub max_result_bytes: Option<u64>,
}

impl Limits {
    /// No limit at all.
    pub const NONE: Limits = Limits {
        timeout: None,
        max_txn_bytes: None,
        max_result_bytes: None,
    };

    /// These limits with another statement timeout (`None`: none).
    pub fn with_timeout(self, timeout: Option<Duration>) -> Limits {
        Limits { timeout, ..self }
    }
}

/// The requester's side of a request: while it lives, someone waits for the answer.
pub(crate) struct Wanted(#[allow(dead_code)] Arc<()>);

/// The worker's side: whether the requester still waits. `None`: nobody can leave (the node's
/// own writes).
#[derive(Clone, Default)]
pub(crate) struct Interest(Option<Weak<()>>);

impl Interest {
    pub(crate) fn pair() -> (Wanted, Interest) {
        let wanted = Arc::new(());
        let interest = Interest(Some(Arc::downgrade(&wanted)));
        (Wanted(wanted), interest)
    }

    /// Whether the requester stopped waiting (its future was dropped: a client gone).
    pub(crate) fn gone(&self) -> bool {
        self.0.as_ref().is_some_and(|w| w.strong_count() == 0)
    }
}

/// What bounds one run of client statements: its deadline, counted from when it started (or,
/// for a query, from when it arrived), its limits and its requester.
#[derive(Clone, Default)]
pub(crate) struct Bounds {
    pub deadline: Option<Instant>,
    pub limits: Limits,
    pub interest: Interest,
}

impl Bounds {
    /// Bounds whose deadline runs from now.
    pub(crate) fn from_now(limits: Limits, interest: Interest) -> Bounds {
        Bounds {
            deadline: limits.timeout.map(|t| Instant::now() + t),
            limits,
            interest,
        }
    }

    /// The error for a request found past its deadline or abandoned between statements.
    pub(crate) fn check(&self, what: &str) -> Result<(), EngineError> {
        if self.interest.gone() {
            return Err(abandoned());
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(timed_out(self.limits.timeout.unwrap_or_default(), what));
        }
        Ok(())
    }
}

/// Why the meter interrupted a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    Timeout,
    Abandoned,
    TooLarge { used: u64, limit: u64 },
}

/// A session pointer the handler may read; only ever touched on the connection's own thread.
struct SessionPtr(*mut s::sqlite3_session);
// SAFETY: the pointer is read only by the progress handler, which SQLite calls on the thread
// running the statement — the thread that armed the meter with it and disarms it before the
// session is deleted.
unsafe impl Send for SessionPtr {}

struct Armed {
    deadline: Option<Instant>,
    interest: Interest,
    session: Option<SessionPtr>,
    bytes_before: u64,
    max_txn_bytes: Option<u64>,
    tripped: Option<Trip>,
}

/// A connection's progress handler and what it checks (see the module documentation).
pub(crate) struct Meter {
    armed: Mutex<Option<Armed>>,
}

impl Meter {
    /// Installs the meter as `conn`'s progress handler.
    pub(crate) fn install(conn: &mut Connection) -> rusqlite::Result<Arc<Meter>> {
        let meter = Arc::new(Meter {
            armed: Mutex::new(None),
        });
        let m = meter.clone();
        conn.progress_handler(CHECK_EVERY, Some(move || m.interrupt()))?;
        Ok(meter)
    }

    /// The progress handler: whether SQLite must interrupt the running statement.
    fn interrupt(&self) -> bool {
        let mut armed = self.armed.lock().expect("meter");
        let Some(a) = armed.as_mut() else {
            return false;
        };
        if a.tripped.is_some() {
            return true;
        }
        let trip = if a.interest.gone() {
            Some(Trip::Abandoned)
        } else if a.deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Trip::Timeout)
        } else {
            match (&a.session, a.max_txn_bytes) {
                (Some(session), Some(limit)) => {
                    // SAFETY: see SessionPtr: the session is live while the meter is armed with it.
                    let held = unsafe { s::sqlite3session_memory_used(session.0) }.max(0) as u64;
                    let used = a.bytes_before.saturating_add(held);
                    (used > limit).then_some(Trip::TooLarge { used, limit })
                }
                _ => None,
            }
        };
        a.tripped = trip;
        trip.is_some()
    }

    /// Arms the meter for one client statement: `capture` is the session recording its changes
    /// (if any) and `bytes_before` what its transaction captured before it. Disarmed on drop.
    pub(crate) fn arm<'m>(
        &'m self,
        bounds: &Bounds,
        capture: Option<&Capture<'_>>,
        bytes_before: u64,
    ) -> ArmGuard<'m> {
        *self.armed.lock().expect("meter") = Some(Armed {
            deadline: bounds.deadline,
            interest: bounds.interest.clone(),
            session: capture.map(|c| SessionPtr(c.raw())),
            bytes_before,
            max_txn_bytes: bounds.limits.max_txn_bytes,
            tripped: None,
        });
        ArmGuard {
            meter: self,
            timeout: bounds.limits.timeout.unwrap_or_default(),
        }
    }
}

/// An armed meter; disarms it when dropped.
pub(crate) struct ArmGuard<'m> {
    meter: &'m Meter,
    timeout: Duration,
}

impl ArmGuard<'_> {
    /// The error a failed statement gives: why the meter interrupted it, if it did; else `e`.
    /// `what` names what ran too long ("the transaction", "the statement", "the query").
    pub(crate) fn explain(&self, e: EngineError, what: &str) -> EngineError {
        let tripped = self
            .meter
            .armed
            .lock()
            .expect("meter")
            .as_ref()
            .and_then(|a| a.tripped);
        match tripped {
            None => e,
            Some(Trip::Timeout) => timed_out(self.timeout, what),
            Some(Trip::Abandoned) => abandoned(),
            Some(Trip::TooLarge { used, limit }) => txn_too_large(used, limit),
        }
    }
}

impl Drop for ArmGuard<'_> {
    fn drop(&mut self) {
        *self.meter.armed.lock().expect("meter") = None;
    }
}

pub(crate) fn timed_out(timeout: Duration, what: &str) -> EngineError {
    EngineError::Timeout(format!(
        "canceling statement due to statement timeout: {what} ran longer than {} (--statement-timeout, or the request's own); nothing of it was kept",
        humanize(timeout)
    ))
}

pub(crate) fn abandoned() -> EngineError {
    EngineError::Abandoned(
        "the client stopped waiting before the transaction committed; nothing of it was kept"
            .into(),
    )
}

pub(crate) fn txn_too_large(used: u64, limit: u64) -> EngineError {
    EngineError::TooLarge(format!(
        "the transaction's changes grew past {} bytes ({used} held; --max-txn-bytes); nothing of it was kept — split it into smaller transactions",
        limit
    ))
}

pub(crate) fn result_too_large(limit: u64) -> EngineError {
    EngineError::TooLarge(format!(
        "the result grew past {limit} bytes (--max-result-bytes, for all the statements of a request together); nothing of it was sent — add a LIMIT, select fewer columns, or page through it"
    ))
}

/// A duration as a user wrote it: `5s`, `250ms`, `1.5s`.
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNAWAY: &str =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

    #[test]
    fn a_runaway_statement_is_interrupted_at_its_deadline() {
        let mut c = Connection::open_in_memory().unwrap();
        let meter = Meter::install(&mut c).unwrap();
        let bounds = Bounds::from_now(
            Limits::NONE.with_timeout(Some(Duration::from_millis(200))),
            Interest::default(),
        );
        let started = Instant::now();
        let guard = meter.arm(&bounds, None, 0);
        let e = c
            .query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        let e = guard.explain(EngineError::Sql(e.to_string()), "the query");
        let took = started.elapsed();
        assert!(matches!(e, EngineError::Timeout(_)), "{e}");
        assert!(e.to_string().contains("200ms"), "{e}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(guard);
        // Disarmed: Scribe's own statements are never interrupted.
        let n: i64 = c
            .query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 300000) SELECT count(*) FROM c",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 300000);
    }

    #[test]
    fn a_statement_whose_client_left_is_interrupted() {
        let mut c = Connection::open_in_memory().unwrap();
        let meter = Meter::install(&mut c).unwrap();
        let (wanted, interest) = Interest::pair();
        let bounds = Bounds::from_now(Limits::NONE, interest);
        assert!(bounds.check("the transaction").is_ok());
        drop(wanted);
        assert!(matches!(
            bounds.check("the transaction"),
            Err(EngineError::Abandoned(_))
        ));
        let guard = meter.arm(&bounds, None, 0);
        let e = c
            .query_row(RUNAWAY, [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        let e = guard.explain(EngineError::Sql(e.to_string()), "the transaction");
        assert!(matches!(e, EngineError::Abandoned(_)), "{e}");
    }

    #[test]
    fn captured_changes_past_the_limit_interrupt_the_statement() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (v)").unwrap();
        let meter = Meter::install(&mut c).unwrap();
        let bounds = Bounds::from_now(
            Limits {
                max_txn_bytes: Some(1 << 20),
                ..Limits::NONE
            },
            Interest::default(),
        );
        let cap = Capture::start(&c).unwrap();
        let guard = meter.arm(&bounds, Some(&cap), 0);
        let e = c
            .execute_batch(
                "INSERT INTO t (v) SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c)",
            )
            .unwrap_err();
        let e = guard.explain(EngineError::Sql(e.to_string()), "the transaction");
        assert!(matches!(e, EngineError::TooLarge(_)), "{e}");
        drop(guard);
        assert!(cap.memory_used() > 1 << 20);
        assert!(cap.memory_used() < 8 << 20, "stopped soon after the limit");
    }
}
