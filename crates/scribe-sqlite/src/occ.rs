//! Optimistic transactions: a client's transaction block without holding the writer between its
//! round trips.
//!
//! SQLite has one writer. Holding it across a client's round trips (see [`crate::txn`]) makes
//! every transaction block wait for the slowest client. An [`Optimistic`] transaction instead
//! runs each statement *speculatively*: the writer replays the transaction's statements so far,
//! runs the new one, answers its result and rolls everything back — holding the writer for
//! microseconds, between other transactions. At commit the writer runs the whole transaction
//! again, for real, inside a group-commit batch, and checks that every statement gives the result
//! the client was given; if one does not (a concurrent transaction changed what it read), the
//! commit fails with a serialization failure and nothing is kept. So a committed transaction is
//! exactly what the client saw, executed at its commit point.
//!
//! Rows a statement updates or deletes are locked for the transaction (the keys of the rows in
//! its speculative changeset), as PostgreSQL locks them: another transaction that would change a
//! locked row waits until the holder ends, then runs its statement on the new state — so
//! concurrent increments of a hot row serialize instead of failing. (Rows an UPDATE matches but
//! leaves unchanged are not in the changeset, so not locked: a later read of them may still fail
//! the commit's check.) A wait that would close a
//! cycle is a deadlock error; a wait longer than the limit is a lock timeout. Statements before
//! a transaction's first write are not replayed: they are ordinary reads (read committed).
//!
//! A transaction idle between statements longer than its limit (the node's
//! `--txn-idle-timeout`) is rolled back: at once if another transaction waits for a row it
//! changed, otherwise when its client comes back — its next statement or commit is refused with
//! `TxnEnded` and nothing of it is kept.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use scribe_core::Position;
use tokio::sync::{mpsc, oneshot, watch};

use crate::budget::{Bounds, Interest, Limits};
use crate::changeset::{Change, Changes, Op};
use crate::exec::{self, Statement};
use crate::payload::Step;
use crate::writer::{Committed, Job, StatementResult, Writer, WriterMsg};
use crate::{EngineError, Progress};

/// A row lock's key: table and the row's primary key (rowid for tables without one), encoded.
type RowKey = (String, Vec<u8>);

/// The row locks of optimistic transactions. Shared by the writer (which takes them, atomically
/// with the speculative run that found the rows) and the transactions (which release them).
#[derive(Default)]
pub(crate) struct Locks {
    table: Mutex<LockTable>,
    released: watch::Sender<u64>,
}

#[derive(Default)]
struct LockTable {
    owners: HashMap<RowKey, u64>,
    held: HashMap<u64, Vec<RowKey>>,
    waiting: HashMap<u64, u64>,
    next_owner: u64,
    /// When each open transaction last finished an operation, and how long it may stay idle.
    idle_since: HashMap<u64, (Instant, Duration)>,
    /// Transactions running an operation now (never idle).
    busy: HashSet<u64>,
    /// Transactions rolled back for idleness (their locks went): their next operation is refused.
    expired: HashSet<u64>,
}

impl LockTable {
    fn idle_too_long(&self, owner: u64, now: Instant) -> bool {
        !self.busy.contains(&owner)
            && self
                .idle_since
                .get(&owner)
                .is_some_and(|(at, idle)| now.duration_since(*at) > *idle)
    }

    fn drop_locks(&mut self, owner: u64) {
        if let Some(keys) = self.held.remove(&owner) {
            for k in keys {
                self.owners.remove(&k);
            }
        }
        self.waiting.remove(&owner);
    }
}

impl Locks {
    fn new_owner(&self, idle: Duration) -> u64 {
        let mut t = self.table.lock().expect("locks");
        t.next_owner += 1;
        let owner = t.next_owner;
        t.idle_since.insert(owner, (Instant::now(), idle));
        owner
    }

    /// An operation of `owner` starts; refused if it stayed idle past its limit (its locks go,
    /// it is over).
    fn begin_op(&self, owner: u64) -> Result<(), ()> {
        let mut t = self.table.lock().expect("locks");
        if t.expired.contains(&owner) || t.idle_too_long(owner, Instant::now()) {
            t.drop_locks(owner);
            t.expired.insert(owner);
            drop(t);
            self.released.send_modify(|n| *n = n.wrapping_add(1));
            return Err(());
        }
        t.busy.insert(owner);
        Ok(())
    }

    /// An operation of `owner` ended: its idle time counts from now.
    fn end_op(&self, owner: u64) {
        let mut t = self.table.lock().expect("locks");
        t.busy.remove(&owner);
        if let Some((at, _)) = t.idle_since.get_mut(&owner) {
            *at = Instant::now();
        }
    }

    /// Rolls `holder` back if it has stayed idle past its limit (a client that went quiet in
    /// the middle of a block must not hold its rows for ever): its locks go and its next
    /// operation is refused. Otherwise answers how long until it would be, if it is idle.
    fn expire_if_idle(&self, holder: u64) -> Result<(), Option<Duration>> {
        let mut t = self.table.lock().expect("locks");
        let now = Instant::now();
        if t.idle_too_long(holder, now) {
            t.drop_locks(holder);
            t.expired.insert(holder);
            drop(t);
            tracing::warn!("rolled back an optimistic transaction idle for too long (another waited for a row it changed)");
            self.released.send_modify(|n| *n = n.wrapping_add(1));
            return Ok(());
        }
        if t.busy.contains(&holder) {
            return Err(None);
        }
        Err(t
            .idle_since
            .get(&holder)
            .map(|(at, idle)| (*at + *idle).saturating_duration_since(now)))
    }

    /// Takes every key for `owner`, or none and answers who holds one of them.
    fn try_lock(&self, owner: u64, keys: Vec<RowKey>) -> Result<(), u64> {
        let mut t = self.table.lock().expect("locks");
        if let Some(other) = keys
            .iter()
            .filter_map(|k| t.owners.get(k))
            .find(|o| **o != owner)
        {
            return Err(*other);
        }
        for k in keys {
            if t.owners.insert(k.clone(), owner).is_none() {
                t.held.entry(owner).or_default().push(k);
            }
        }
        Ok(())
    }

    fn release(&self, owner: u64) {
        let mut t = self.table.lock().expect("locks");
        t.drop_locks(owner);
        t.idle_since.remove(&owner);
        t.busy.remove(&owner);
        t.expired.remove(&owner);
        drop(t);
        self.released.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records that `me` waits for `holder`; refuses if that closes a cycle.
    fn wait_for(&self, me: u64, holder: u64) -> Result<(), EngineError> {
        let mut t = self.table.lock().expect("locks");
        let mut at = holder;
        let mut steps = 0;
        while let Some(next) = t.waiting.get(&at) {
            if *next == me || steps > 10_000 {
                return Err(EngineError::Deadlock(
                    "deadlock detected: this transaction and another each wait for a row the other has changed; this statement was refused, roll back and retry the transaction".into(),
                ));
            }
            at = *next;
            steps += 1;
        }
        if holder == me {
            return Ok(());
        }
        t.waiting.insert(me, holder);
        Ok(())
    }

    fn done_waiting(&self, me: u64) {
        self.table.lock().expect("locks").waiting.remove(&me);
    }
}

/// Removes a transaction's wait-for edge when dropped.
struct WaitGuard<'a> {
    locks: &'a Locks,
    owner: u64,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.locks.done_waiting(self.owner);
    }
}

/// An operation of a transaction in progress: it is not idle until this is dropped.
struct OpGuard {
    locks: Arc<Locks>,
    owner: u64,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.locks.end_op(self.owner);
    }
}

/// A statement to run speculatively after `history` and roll back.
pub(crate) struct SpecJob {
    owner: u64,
    history: Arc<Vec<Statement>>,
    statement: Statement,
    /// The statement's limits; its timeout covers the replay of the history too.
    limits: Limits,
    interest: Interest,
    reply: oneshot::Sender<Result<Spec, EngineError>>,
}

/// What a speculative run found.
pub(crate) enum Spec {
    /// It ran: its result, whether it changed rows, whether it changed the schema.
    Done {
        result: StatementResult,
        wrote: bool,
        ddl: bool,
    },
    /// It would change a row another transaction holds.
    Blocked { by: u64 },
}

/// The result of a statement of an optimistic transaction.
#[derive(Debug, Clone)]
pub struct Speculated {
    /// What the statement gave.
    pub result: StatementResult,
    /// Whether it changed rows (it is then part of what the commit replays).
    pub wrote: bool,
    /// Whether it changed the schema.
    pub ddl: bool,
}

/// Checks that a transaction replayed at commit gives what its client was given.
pub(crate) fn validate(
    got: &[StatementResult],
    expect: &[Option<StatementResult>],
) -> Result<(), EngineError> {
    for (i, (g, e)) in got.iter().zip(expect).enumerate() {
        let Some(e) = e else { continue };
        if !g.same_answer(e) {
            return Err(EngineError::SerializationFailure(format!(
                "could not serialize access due to concurrent update: statement {} of the transaction gives another result now than it gave; nothing of the transaction was kept, retry it",
                i + 1
            )));
        }
    }
    Ok(())
}

fn encode_key(item: &Change<'_>) -> Option<Vec<u8>> {
    let pk = item.pk().ok()?;
    let mut key = Vec::new();
    for (col, is_pk) in pk.iter().enumerate().take(item.columns()) {
        if *is_pk == 0 {
            continue;
        }
        match item.before(col)? {
            ValueRef::Null => key.push(0),
            ValueRef::Integer(i) => {
                key.push(1);
                key.extend_from_slice(&i.to_le_bytes());
            }
            ValueRef::Real(f) => {
                key.push(2);
                key.extend_from_slice(&f.to_le_bytes());
            }
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                key.push(3);
                key.extend_from_slice(&(t.len() as u64).to_le_bytes());
                key.extend_from_slice(t);
            }
        }
    }
    Some(key)
}

/// The rows a changeset updates or deletes (inserted rows are new: nobody else can hold them).
fn changed_rows(steps: &[Step]) -> Result<Vec<RowKey>, EngineError> {
    let mut out = Vec::new();
    for step in steps {
        let Step::Changeset(cs) = step else { continue };
        let mut iter = Changes::new(cs)?;
        while let Some(item) = iter.next_change()? {
            if item.op() == Op::Insert {
                continue;
            }
            if let Some(key) = encode_key(&item) {
                out.push((item.table().to_string(), key));
            }
        }
    }
    Ok(out)
}

impl Writer {
    /// Runs speculative statements (between batches), all in one SQLite transaction that is
    /// rolled back, each in a savepoint of its own rolled back before the next.
    pub(crate) fn speculate_all(&mut self, jobs: Vec<SpecJob>) {
        if jobs.is_empty() {
            return;
        }
        if let Some(why) = self.fatal.get() {
            for job in jobs {
                let _ = job.reply.send(Err(EngineError::Unavailable(why.clone())));
            }
            return;
        }
        if let Err(e) = self.admit(jobs.len()) {
            for job in jobs {
                let _ = job.reply.send(Err(crate::writer::clone_err(&e)));
            }
            return;
        }
        if let Err(e) = self.internal("BEGIN IMMEDIATE") {
            for job in jobs {
                let _ = job.reply.send(Err(EngineError::Internal(format!(
                    "begin speculative run: {e}"
                ))));
            }
            return;
        }
        for job in jobs {
            if self.conn.is_autocommit() {
                // An interrupted speculative statement made SQLite roll the run's transaction
                // back (nothing of a speculative run is kept anyway): the next one needs another.
                if let Err(e) = self.internal("BEGIN IMMEDIATE") {
                    let _ = job.reply.send(Err(EngineError::Internal(format!(
                        "begin speculative run: {e}"
                    ))));
                    continue;
                }
            }
            let r = match self.internal("SAVEPOINT scribe_spec") {
                Ok(()) => {
                    let r = self.speculate(&job);
                    if self.conn.is_autocommit() {
                        r
                    } else if let Err(e) =
                        self.internal("ROLLBACK TO scribe_spec; RELEASE scribe_spec")
                    {
                        Err(EngineError::Internal(format!(
                            "undo a speculative run: {e}"
                        )))
                    } else {
                        r
                    }
                }
                Err(e) => Err(EngineError::Internal(format!(
                    "open speculative savepoint: {e}"
                ))),
            };
            let _ = job.reply.send(r);
        }
        let _ = self.internal("ROLLBACK");
    }

    fn speculate(&mut self, job: &SpecJob) -> Result<Spec, EngineError> {
        let what = "the statement";
        let bounds = Bounds::from_now(job.limits, job.interest.clone());
        for st in job.history.iter() {
            bounds.check(what)?;
            let mut prepared = exec::prepare(&self.conn, &self.policy, &st.sql)?;
            exec::bind(&mut prepared, &st.params)?;
            let armed = self.meter.arm(&bounds, None, 0);
            exec::run(&mut prepared, &self.policy).map_err(|e| {
                match armed.explain(e, what) {
                    e @ (EngineError::Timeout(_)
                    | EngineError::Abandoned(_)
                    | EngineError::TooLarge(_)) => e,
                    e => EngineError::SerializationFailure(format!(
                        "could not serialize access due to concurrent update: a statement run earlier in this transaction fails now ({e}); retry the transaction"
                    )),
                }
            })?;
        }
        let (mut results, steps) =
            self.run_statements(std::slice::from_ref(&job.statement), &bounds, &[], what)?;
        let ddl = steps.iter().any(|s| matches!(s, Step::Sql(_)));
        let keys = changed_rows(&steps)?;
        if let Err(by) = self.locks.try_lock(job.owner, keys) {
            return Ok(Spec::Blocked { by });
        }
        Ok(Spec::Done {
            result: results.pop().unwrap_or_default(),
            wrote: !steps.is_empty(),
            ddl,
        })
    }
}

/// The statements of a transaction since its first write, with the results its client was given.
pub type History = Vec<(Statement, StatementResult)>;

/// An open optimistic transaction (see the module documentation). Dropping it rolls it back.
pub struct Optimistic {
    tx: mpsc::Sender<WriterMsg>,
    locks: Arc<Locks>,
    progress: watch::Receiver<Progress>,
    owner: u64,
    /// The statements since the first write, with the results the client was given.
    history: Vec<(Statement, StatementResult)>,
    savepoints: Vec<(String, usize)>,
    /// How long a statement waits for a row another transaction holds, and how long the
    /// transaction may stay idle between statements before it is rolled back (the node's
    /// `--txn-idle-timeout`).
    lock_wait: Duration,
    /// The limits of its statements (each speculative run, and the commit's replay as a whole).
    limits: Limits,
}

impl Optimistic {
    pub(crate) fn new(
        tx: mpsc::Sender<WriterMsg>,
        locks: Arc<Locks>,
        progress: watch::Receiver<Progress>,
        lock_wait: Duration,
        limits: Limits,
    ) -> Optimistic {
        let owner = locks.new_owner(lock_wait);
        Optimistic {
            tx,
            locks,
            progress,
            owner,
            history: Vec::new(),
            savepoints: Vec::new(),
            lock_wait,
            limits,
        }
    }

    /// Sets the limits of the statements that follow and of the commit.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Whether the transaction has written (its statements are replayed from then on).
    pub fn has_written(&self) -> bool {
        !self.history.is_empty()
    }

    /// How many statements a speculative run replays.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Runs one statement speculatively; waits while it would change a row another transaction
    /// holds. On error nothing of the statement is kept and the transaction stays open.
    pub async fn execute(&mut self, statement: Statement) -> Result<Speculated, EngineError> {
        let _op = self.begin_op()?;
        // Only the statements that changed something rebuild the block's state; its reads (which
        // returned rows: a write returning rows is never run optimistically) are skipped here and
        // checked at commit.
        let history: Arc<Vec<Statement>> = Arc::new(
            self.history
                .iter()
                .filter(|(_, r)| r.columns.is_none())
                .map(|(s, _)| s.clone())
                .collect(),
        );
        let give_up = Instant::now() + self.lock_wait;
        loop {
            let mut released = self.locks.released.subscribe();
            let (reply, rx) = oneshot::channel();
            let (_wanted, interest) = Interest::pair();
            self.tx
                .send(WriterMsg::Speculate(SpecJob {
                    owner: self.owner,
                    history: history.clone(),
                    statement: statement.clone(),
                    limits: self.limits,
                    interest,
                    reply,
                }))
                .await
                .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
            let spec = rx.await.map_err(|_| {
                EngineError::Unavailable("the writer stopped before answering".into())
            })??;
            match spec {
                Spec::Done { result, wrote, ddl } => {
                    if wrote || self.has_written() {
                        self.history.push((statement, result.clone()));
                    }
                    return Ok(Speculated { result, wrote, ddl });
                }
                Spec::Blocked { by } => {
                    // A holder that went quiet past the idle limit is rolled back: try again.
                    let holder_idle = match self.locks.expire_if_idle(by) {
                        Ok(()) => continue,
                        Err(left) => left,
                    };
                    self.locks.wait_for(self.owner, by)?;
                    // Forgets the wait even if this future is dropped (a cancelled statement).
                    let waiting = WaitGuard {
                        locks: &self.locks,
                        owner: self.owner,
                    };
                    let left = give_up.saturating_duration_since(Instant::now());
                    // Wake when the holder would pass its idle limit, too.
                    let wait =
                        holder_idle.map_or(left, |h| left.min(h + Duration::from_millis(10)));
                    let waited = tokio::time::timeout(wait, released.changed()).await;
                    drop(waiting);
                    if waited.is_err()
                        && Instant::now() >= give_up
                        && self.locks.expire_if_idle(by).is_err()
                    {
                        return Err(EngineError::LockTimeout(format!(
                            "waited {:?} for a row another transaction changed and has not committed; this statement was refused",
                            self.lock_wait
                        )));
                    }
                }
            }
        }
    }

    /// Starts an operation: refused with `TxnEnded` if the transaction stayed idle past its limit
    /// (it was rolled back: nothing of it is kept).
    fn begin_op(&self) -> Result<OpGuard, EngineError> {
        self.locks.begin_op(self.owner).map_err(|()| {
            EngineError::TxnEnded(format!(
                "the transaction is no longer open: it was rolled back after it stayed idle longer than {:?}",
                self.lock_wait
            ))
        })?;
        Ok(OpGuard {
            locks: self.locks.clone(),
            owner: self.owner,
        })
    }

    /// Forgets the last statement run (its row locks stay until the end).
    pub fn forget_last(&mut self) {
        self.history.pop();
    }

    /// Creates, releases or rolls back to a named savepoint. Row locks taken after a savepoint
    /// are kept until the transaction ends, as in PostgreSQL.
    pub fn savepoint(&mut self, op: crate::SavepointOp, name: &str) -> Result<(), EngineError> {
        drop(self.begin_op()?);
        let find = |sp: &Vec<(String, usize)>| {
            sp.iter()
                .rposition(|(n, _)| n.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    EngineError::BadRequest(format!("savepoint \"{name}\" does not exist"))
                })
        };
        crate::txn::check_savepoint_name(name)?;
        match op {
            crate::SavepointOp::Create => {
                self.savepoints.push((name.to_string(), self.history.len()))
            }
            crate::SavepointOp::Release => {
                let at = find(&self.savepoints)?;
                self.savepoints.truncate(at);
            }
            crate::SavepointOp::RollbackTo => {
                let at = find(&self.savepoints)?;
                self.history.truncate(self.savepoints[at].1);
                self.savepoints.truncate(at + 1);
            }
        }
        Ok(())
    }

    /// The statements since the first write with their results, and the savepoints (name, how
    /// many of those statements came before it), ending the transaction (its locks are released):
    /// for moving it onto the writer as an interactive transaction.
    /// Refused with `TxnEnded` if it stayed idle past its limit (it was rolled back).
    pub fn into_history(mut self) -> Result<(History, Vec<(String, usize)>), EngineError> {
        drop(self.begin_op()?);
        Ok((
            std::mem::take(&mut self.history),
            std::mem::take(&mut self.savepoints),
        ))
    }

    /// Commits: runs the transaction again in a group-commit batch, checking every result.
    pub async fn commit(mut self) -> Result<Committed, EngineError> {
        // Busy (not idle) until the writer answers: a commit waiting in the writer's queue is
        // not a transaction its client has forgotten.
        let _op = self.begin_op()?;
        let history = std::mem::take(&mut self.history);
        if history.is_empty() {
            let at: Position = self.progress.borrow().applied;
            return Ok(Committed {
                results: Vec::new(),
                position: at,
                logged: false,
            });
        }
        let (statements, expect): (Vec<_>, Vec<_>) =
            history.into_iter().map(|(s, r)| (s, Some(r))).unzip();
        let (reply, rx) = oneshot::channel();
        let (_wanted, interest) = Interest::pair();
        self.tx
            .send(WriterMsg::Execute(Job {
                statements,
                expect: Some(expect),
                limits: self.limits,
                interest,
                reply,
            }))
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        let r = rx.await.map_err(|_| {
            EngineError::OutcomeUnknown("the writer stopped before answering a commit".into())
        })?;
        r.map(|mut c| {
            c.results.clear();
            c
        })
    }

    /// Rolls back: nothing was kept; the locks go.
    pub fn rollback(self) {}
}

impl Drop for Optimistic {
    fn drop(&mut self) {
        self.locks.release(self.owner);
    }
}
