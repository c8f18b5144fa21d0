//! The writer: the one thread that owns the SQLite write connection and the change log.
//!
//! It takes every queued transaction as one group-commit batch (DESIGN.md §2): inside one SQLite
//! transaction, each client transaction runs in its own savepoint with change capture; a failed
//! one is rolled back to its savepoint and answered, leaving no trace; a successful one gets the
//! next LSN and its record is appended to the log's batch. Then the log is written and fsynced
//! once, the applied position stored in the meta table, SQLite committed — and only then are the
//! clients answered. A record is never in SQLite without being durable in the log first.
//!
//! It fences itself (DESIGN.md §4): client writes are taken only while the write gate
//! ([`crate::gate`]) says this node is the primary of a term whose lease has not run out. The gate
//! is asked when a batch starts and once more right before its fsync, and held from that last
//! check until the fsync returns; a batch refused at the last check is rolled back as a whole.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use scribe_core::{Lsn, Position, Term};
use scribe_log::{Log, LogError, Record};
use tokio::sync::{mpsc, oneshot, watch};

use crate::budget::{Bounds, Interest, Limits, Meter};
use crate::capture::Capture;
use crate::exec::{self, Rows, Statement};
use crate::gate::{self, Fence};
use crate::metrics::EngineMetrics;
use crate::payload::{self, Step};
use crate::policy::Policy;
use crate::{meta, EngineError, Progress};

/// The answer to one statement of a committed transaction.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StatementResult {
    /// Rows inserted, updated or deleted by the statement (0 for reads and DDL).
    pub rows_affected: u64,
    /// The connection's last inserted rowid after the statement.
    pub last_insert_id: i64,
    /// Column names, when the statement returned rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// The rows, when the statement returned rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Vec<crate::Value>>>,
    /// The columns' declared types, when the statement returned rows (see [`crate::Rows`]).
    #[serde(skip)]
    pub decltypes: Option<Vec<Option<String>>>,
}

impl StatementResult {
    /// Whether another run of the statement gave its client the same answer: rows affected,
    /// columns and rows (not the rowid it happened to insert at, which a client never sees
    /// through PostgreSQL and which an optimistic transaction's commit may assign anew).
    pub fn same_answer(&self, other: &StatementResult) -> bool {
        self.rows_affected == other.rows_affected
            && self.columns == other.columns
            && self.rows == other.rows
    }
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// One result per statement.
    pub results: Vec<StatementResult>,
    /// The position of its record; for a transaction that changed nothing, the position its reads
    /// saw.
    pub position: Position,
    /// Whether it wrote a record (false when it changed nothing).
    pub logged: bool,
}

/// What log retention may delete: segments wholly below `keep_from` (what replicas still need),
/// and more of the oldest while the log is larger than `max_bytes`. The active segment and
/// records SQLite has not applied are always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The oldest LSN someone still needs.
    pub keep_from: scribe_core::Lsn,
    /// Largest size the log may keep for them, in bytes.
    pub max_bytes: u64,
    /// Kept whatever the size: what a replica being seeded will stream from.
    pub pinned_from: Option<scribe_core::Lsn>,
}

pub(crate) type Reply = oneshot::Sender<Result<Committed, EngineError>>;

/// A transaction to run in a group-commit batch.
pub(crate) struct Job {
    pub statements: Vec<Statement>,
    /// The results its statements must give again, when it is an optimistic transaction's commit
    /// (`None` for a statement whose result was not promised: a read).
    pub expect: Option<Vec<Option<StatementResult>>>,
    /// Its limits; its statement timeout runs from when the writer takes it up.
    pub limits: Limits,
    /// Whether its client still waits (a job whose client left is not run).
    pub interest: Interest,
    pub reply: Reply,
}

/// A message to the writer.
pub(crate) enum WriterMsg {
    /// Run a transaction.
    Execute(Job),
    /// Run a statement of an optimistic transaction and roll it back (see [`crate::occ`]).
    Speculate(crate::occ::SpecJob),
    /// Append records from elsewhere to the log and apply them (a replica's path).
    Apply {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<Progress, EngineError>>,
    },
    /// Replace the database with a snapshot and restart the log after its position.
    InstallSnapshot {
        path: std::path::PathBuf,
        reply: oneshot::Sender<Result<Position, EngineError>>,
    },
    /// Delete log segments no longer needed.
    Retain {
        retain: Retention,
        reply: oneshot::Sender<Result<usize, EngineError>>,
    },
    /// Open an interactive transaction: the writer serves only its operations until it commits,
    /// rolls back, fails, or stays idle longer than `idle`.
    Begin {
        ops: std::sync::mpsc::Receiver<crate::txn::TxnOp>,
        idle: std::time::Duration,
        started: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Undo this node's own records after a position (see [`crate::rewind`]).
    Rewind {
        to: Position,
        file: std::path::PathBuf,
        reply: oneshot::Sender<Result<crate::rewind::RewindReport, EngineError>>,
    },
    /// Apply records read from a peer's log (a multi-master node's path; see [`crate::mm`]).
    MmApply {
        peer: String,
        log_id: u64,
        records: Vec<(u64, Vec<u8>)>,
        reply: oneshot::Sender<Result<crate::mm::Applied, EngineError>>,
    },
    /// Seed a multi-master node that holds nothing from a peer's snapshot.
    MmInstallSnapshot {
        path: std::path::PathBuf,
        peer: String,
        peer_log_id: u64,
        marker: std::path::PathBuf,
        reply: oneshot::Sender<Result<Position, EngineError>>,
    },
    /// Resolve the conflicts of a `versioned` row (see [`crate::mm::Resolution`]).
    MmResolve {
        resolution: crate::mm::Resolution,
        reply: oneshot::Sender<Result<Position, EngineError>>,
    },
    /// Finish what is queued before this and stop.
    Stop(oneshot::Sender<()>),
}

pub(crate) struct Writer {
    pub conn: Connection,
    /// The write connection's progress handler: interrupts a client statement past its bounds.
    pub meter: Arc<Meter>,
    pub policy: Policy,
    pub log: Log,
    /// The term of the write in progress: the open gate's, read when the write was admitted.
    pub term: Term,
    /// The write gate, shared with the engine handle, which changes it.
    pub fence: Arc<Mutex<Fence>>,
    pub progress: watch::Sender<Progress>,
    pub metrics: Arc<EngineMetrics>,
    pub max_batch: usize,
    /// Set after a fatal failure: why this node no longer takes writes. Shared with the engine
    /// handle so status pages can show it.
    pub fatal: Arc<std::sync::OnceLock<String>>,
    /// Test-only: a pause between flushing streamed records and applying them.
    pub apply_delay: std::time::Duration,
    /// The SQLite database file (its WAL is beside it).
    pub db_path: std::path::PathBuf,
    /// Row locks of optimistic transactions.
    pub locks: Arc<crate::occ::Locks>,
    /// The data directory (a rewind keeps its marker there).
    pub data_dir: std::path::PathBuf,
    /// The log's term history as last published (see [`crate::Engine::term_history`]).
    pub terms: crate::rewind::SharedTerms,
    /// On a multi-master node: its clock, options and published status (see [`crate::mm`]).
    pub mm: Option<crate::mm::MmWriter>,
}

pub(crate) struct Done {
    pub reply: Reply,
    pub results: Vec<StatementResult>,
    pub position: Option<Position>,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The refusal of a client write by the write gate, which said `why`.
pub(crate) fn not_primary(why: &str) -> EngineError {
    EngineError::NotPrimary(format!("{why}; nothing of the transaction was kept"))
}

impl Writer {
    /// Whether client writes may start now: the write gate must be open (their records are
    /// then written in its term; otherwise `NotPrimary`, counting `n` refused writes), and every
    /// durable record of the log applied — a write must not run on a database that misses some
    /// (a replica promoted while its disk was full applies them first, or the write is refused).
    pub(crate) fn admit(&mut self, n: usize) -> Result<(), EngineError> {
        let admitted = gate::lock(&self.fence).admit(Instant::now());
        match admitted {
            Ok(term) => self.term = term,
            Err(why) => {
                EngineMetrics::add(&self.metrics.gate_refusals, n as u64);
                return Err(not_primary(&why));
            }
        }
        self.applied_all()
    }

    /// Serves the queue until it closes or a stop message arrives.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let mut carry: Option<WriterMsg> = None;
        let mut stop = None;
        loop {
            let msg = match carry.take() {
                Some(m) => m,
                None => match rx.blocking_recv() {
                    Some(m) => m,
                    None => break,
                },
            };
            match msg {
                WriterMsg::Stop(done) => {
                    stop = Some(done);
                    break;
                }
                WriterMsg::Apply { records, reply } => {
                    let _ = reply.send(self.apply_records(records));
                }
                WriterMsg::MmApply {
                    peer,
                    log_id,
                    records,
                    reply,
                } => {
                    let _ = reply.send(self.apply_remote(&peer, log_id, records));
                }
                WriterMsg::MmInstallSnapshot {
                    path,
                    peer,
                    peer_log_id,
                    marker,
                    reply,
                } => {
                    let _ =
                        reply.send(self.mm_install_snapshot(&path, &peer, peer_log_id, &marker));
                }
                WriterMsg::MmResolve { resolution, reply } => {
                    let _ = reply.send(self.mm_resolve(resolution));
                }
                WriterMsg::InstallSnapshot { path, reply } => {
                    let _ = reply.send(self.install_snapshot(&path));
                }
                WriterMsg::Retain { retain, reply } => {
                    let _ = reply.send(self.retain(retain));
                }
                WriterMsg::Rewind { to, file, reply } => {
                    let done = self.rewind(to, &file);
                    self.publish_log_extent();
                    let _ = reply.send(done);
                }
                WriterMsg::Begin { ops, idle, started } => {
                    self.run_interactive(ops, idle, started, &mut rx, &mut carry);
                }
                WriterMsg::Speculate(job) => {
                    // Every speculative statement already queued runs in the same pass.
                    let mut specs = vec![job];
                    loop {
                        match rx.try_recv() {
                            Ok(WriterMsg::Speculate(job)) => specs.push(job),
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.speculate_all(specs);
                }
                WriterMsg::Execute(job) => {
                    // Group commit: everything already queued joins this batch; speculative
                    // statements queued meanwhile run after it, on the newest state.
                    let mut batch = vec![job];
                    let mut specs = Vec::new();
                    while batch.len() < self.max_batch {
                        match rx.try_recv() {
                            Ok(WriterMsg::Execute(job)) => batch.push(job),
                            Ok(WriterMsg::Speculate(job)) => specs.push(job),
                            Ok(other) => {
                                carry = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.run_batch(batch);
                    self.speculate_all(specs);
                }
            }
        }
        tracing::info!(position = %self.log.durable_position(), "writer stopped");
        drop(self.conn);
        if let Some(done) = stop {
            let _ = done.send(());
        }
    }

    /// Appends records written elsewhere (a replica's copy of its primary's log) to the log,
    /// fsyncs them, then applies them to SQLite in one transaction. `flushed` is published as
    /// soon as the fsync returns, `applied` after the commit. A record that does not follow the
    /// log, or whose term is older than the log's, is refused (fencing) and nothing is kept.
    /// Refused while the write gate is open, which is held until the records are durable: a
    /// primary takes no records from another node.
    fn apply_records(&mut self, records: Vec<Record>) -> Result<Progress, EngineError> {
        if let Some(why) = self.fatal.get() {
            return Err(EngineError::Unavailable(why.clone()));
        }
        let fence = self.fence.clone();
        let mut held = gate::lock(&fence);
        held.take_records().map_err(EngineError::BadRequest)?;
        // Records durable in the log but not applied (SQLite had no room for them): they go first.
        self.applied_all()?;
        let Some(last) = records.last().map(Record::position) else {
            return Ok(*self.progress.borrow());
        };
        for r in &records {
            if let Err(e) = self.log.append_record(r.clone()) {
                self.log.discard_pending();
                return Err(e.into());
            }
        }
        if let Err(e) = self.sync_log() {
            return Err(self.log_failed(e));
        }
        held.saw(last.term);
        self.progress.send_modify(|p| {
            p.last = last;
            p.flushed = last;
        });
        drop(held);
        if !self.apply_delay.is_zero() {
            std::thread::sleep(self.apply_delay);
        }
        let applied = self.policy.internal(|| -> Result<(), EngineError> {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| EngineError::applying("begin apply", e))?;
            let result = (|| {
                crate::engine::apply_payloads(
                    &self.conn,
                    records.iter().map(|r| r.payload.as_slice()),
                )
                .map_err(|e| {
                    e.or_diverged(|| format!("apply records {} to {last}", records[0].position()))
                })?;
                meta::set_applied(&self.conn, last)
                    .map_err(|e| EngineError::applying("store applied position", e))?;
                self.conn
                    .execute_batch("COMMIT")
                    .map_err(|e| EngineError::applying("commit apply", e))
            })();
            if result.is_err() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            result
        });
        match applied {
            Ok(()) => {}
            Err(e @ EngineError::DiskFull(_)) => {
                // The records are durable in the log: they are applied by the next call, once
                // there is room. Reads go on from what was applied.
                tracing::warn!(error = %e, flushed = %last, "SQLite has no room to apply streamed records; they wait in the log");
                return Err(e);
            }
            Err(e) => {
                // The records are durable in the log but SQLite cannot take them: this copy must
                // be repaired (re-seeded) before it serves writes or applies more.
                let why = format!("this node stopped applying: {e}");
                tracing::error!("{why}");
                let _ = self.fatal.set(why);
                return Err(e);
            }
        }
        EngineMetrics::add(&self.metrics.commits, records.len() as u64);
        self.progress.send_modify(|p| p.applied = last);
        Ok(*self.progress.borrow())
    }

    /// Applies the log's durable records SQLite has not applied (left waiting when it had no
    /// room for them), from the position SQLite itself records — a replay cut short by a full
    /// disk may have committed some of its chunks. A full disk again leaves the rest waiting (what
    /// was applied is published); any other failure stops applying.
    fn apply_unapplied(&mut self) -> Result<(), EngineError> {
        let applied = meta::applied(&self.conn)
            .map_err(|e| EngineError::applying("read the applied position", e))?;
        let replayed = crate::engine::replay(&self.conn, &self.policy, &self.log, applied);
        let now = meta::applied(&self.conn).unwrap_or(applied);
        self.progress
            .send_modify(|p| p.applied = p.applied.max(now));
        match replayed {
            Ok(n) => {
                tracing::info!(records = n, to = %now, "applied the records that waited for room");
                EngineMetrics::add(&self.metrics.commits, n);
                Ok(())
            }
            Err(e @ EngineError::DiskFull(_)) => Err(e),
            Err(e) => {
                let why = format!("this node stopped applying: {e}");
                tracing::error!("{why}");
                let _ = self.fatal.set(why);
                Err(e)
            }
        }
    }

    /// Applies the durable records SQLite has not (see [`Writer::apply_unapplied`]), if any.
    fn applied_all(&mut self) -> Result<(), EngineError> {
        let p = *self.progress.borrow();
        if p.applied.lsn < p.flushed.lsn {
            self.apply_unapplied()?;
        }
        Ok(())
    }

    /// Copies the snapshot at `path` over the database (SQLite's backup API, one write
    /// transaction, so readers see the old or the new database, never a mix) and restarts the log
    /// empty after the snapshot's applied position.
    /// Refused while the write gate is open.
    fn install_snapshot(&mut self, path: &std::path::Path) -> Result<Position, EngineError> {
        if let Some(why) = self.fatal.get() {
            return Err(EngineError::Unavailable(why.clone()));
        }
        gate::lock(&self.fence)
            .take_records()
            .map_err(EngineError::BadRequest)?;
        self.replace_database(path)
    }

    /// Replaces the database with the copy at `path` and restarts the log empty after the
    /// position the copy holds; answers that position.
    pub(crate) fn replace_database(
        &mut self,
        path: &std::path::Path,
    ) -> Result<Position, EngineError> {
        let ctx = |what: &str, e: rusqlite::Error| {
            EngineError::Internal(format!("{what} snapshot {}: {e}", path.display()))
        };
        let src = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| ctx("open", e))?;
        let at = meta::applied(&src).map_err(|e| ctx("read the position of", e))?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut self.conn)
                .map_err(|e| ctx("start copying", e))?;
            backup
                .run_to_completion(4096, std::time::Duration::ZERO, None)
                .map_err(|e| ctx("copy", e))?;
        }
        drop(src);
        // The copy must be durable before the log that explained the old database goes.
        self.sync_sqlite()?;
        self.log.reset_to(at).map_err(|e| self.log_failed(e))?;
        gate::lock(&self.fence).saw(at.term);
        self.publish_log_extent();
        self.progress.send_modify(|p| {
            p.last = at;
            p.flushed = at;
            p.applied = at;
        });
        Ok(at)
    }

    /// Deletes the log segments `retain` allows, after a checkpoint has made SQLite durable past
    /// them (with `synchronous=NORMAL` a checkpoint first fsyncs SQLite's WAL).
    fn retain(&mut self, retain: Retention) -> Result<usize, EngineError> {
        let applied = self.progress.borrow().applied.lsn;
        let sizes = self.log.segment_sizes();
        let total: u64 = sizes.iter().map(|s| s.1).sum();
        let mut cut = retain.keep_from;
        if total > retain.max_bytes {
            // Oldest segments go until the rest fits.
            let mut left = total;
            for (first, size) in &sizes {
                if left <= retain.max_bytes {
                    cut = cut.max(*first);
                    break;
                }
                left -= size;
            }
            if left > retain.max_bytes {
                cut = cut.max(sizes.last().map_or(Lsn::ZERO, |s| s.0));
            }
        }
        // Never a record SQLite has not applied, nor one a replica being seeded will need.
        let cut = cut
            .min(applied.next())
            .min(retain.pinned_from.unwrap_or(Lsn(u64::MAX)));
        if sizes.len() < 2 || sizes[1].0 > cut {
            return Ok(0);
        }
        // A passive checkpoint keeps SQLite's WAL short; whether or not readers let it finish,
        // the fsync of the WAL after it makes every committed transaction durable in SQLite.
        let _ = self.policy.internal(|| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        });
        self.sync_sqlite()?;
        let n = self.log.delete_before(cut)?;
        EngineMetrics::add(&self.metrics.segments_deleted, n as u64);
        self.publish_log_extent();
        if n > 0 {
            tracing::info!(segments = n, first_lsn = %self.log.first_lsn(), "deleted change-log segments no longer needed");
        }
        Ok(n)
    }

    /// Makes every committed SQLite transaction durable: with `synchronous=NORMAL` commits reach
    /// the WAL file without an fsync, and the database file is fsynced by checkpoints; an fsync
    /// of the WAL file covers what is in neither.
    fn sync_sqlite(&self) -> Result<(), EngineError> {
        crate::rewind::sync_wal(&self.db_path)
    }

    /// Runs Scribe's own statements (policy off), each prepared once and cached: these run
    /// several times per transaction.
    pub(crate) fn internal(&self, sql: &str) -> rusqlite::Result<()> {
        self.policy.internal(|| {
            for one in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                // The marker keeps these cached statements apart from clients' (whose text may
                // not start with it): a client's `COMMIT` must never find a cached `COMMIT`
                // prepared without the authorizer.
                let marked = format!("{}{one}", crate::exec::INTERNAL_MARK);
                self.conn.prepare_cached(&marked)?.raw_execute()?;
            }
            Ok(())
        })
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        if let Some(why) = self.fatal.get() {
            for job in batch {
                let _ = job.reply.send(Err(EngineError::Unavailable(why.clone())));
            }
            return;
        }
        if let Err(e) = self.admit(batch.len()) {
            for job in batch {
                let _ = job.reply.send(Err(clone_err(&e)));
            }
            return;
        }
        if let Err(e) = self.internal("BEGIN IMMEDIATE") {
            let e = format!("begin write transaction: {e}");
            for job in batch {
                let _ = job.reply.send(Err(EngineError::Internal(e.clone())));
            }
            return;
        }
        self.run_in_open(Vec::with_capacity(batch.len()), batch);
    }

    /// Runs `batch` inside the open write transaction, after the transactions of `done` (already
    /// run in it), then makes them all durable, commits and answers everyone.
    pub(crate) fn run_in_open(&mut self, mut done: Vec<Done>, batch: Vec<Job>) {
        let mut jobs = batch.into_iter();
        while let Some(Job {
            statements,
            expect,
            limits,
            interest,
            reply,
        }) = jobs.next()
        {
            let bounds = Bounds::from_now(limits, interest);
            match self.run_txn(&statements, expect.as_deref(), &bounds) {
                Ok((results, position)) => done.push(Done {
                    reply,
                    results,
                    position,
                }),
                Err(e) => {
                    EngineMetrics::add(&self.metrics.txn_errors, 1);
                    if self.conn.is_autocommit() {
                        // SQLite rolled back the whole batch transaction by itself: an
                        // interrupted write (past its timeout or size limit, or abandoned) does
                        // that, as do a full disk and an I/O error. The transactions run before
                        // this one are redone from their records, and the batch goes on.
                        match self.restore_batch() {
                            Ok(()) => {
                                let _ = reply.send(Err(e));
                                continue;
                            }
                            Err(why) => tracing::warn!(
                                "could not redo the batch's transactions after SQLite rolled it back: {why}"
                            ),
                        }
                        // Their records must not be written.
                        self.log.discard_pending();
                        let why = format!(
                            "SQLite rolled back the write transaction ({e}); nothing of it was kept"
                        );
                        tracing::warn!("{why}");
                        let _ = reply.send(Err(e));
                        for d in done {
                            let _ = d.reply.send(Err(EngineError::Unavailable(why.clone())));
                        }
                        for job in jobs {
                            let _ = job.reply.send(Err(EngineError::Unavailable(why.clone())));
                        }
                        return;
                    }
                    let _ = reply.send(Err(e));
                }
            }
        }
        let logged = done.iter().filter(|d| d.position.is_some()).count() as u64;
        if logged == 0 {
            let _ = self.internal("COMMIT");
            let at = self.log.durable_position();
            for d in done {
                let _ = d.reply.send(Ok(Committed {
                    results: d.results,
                    position: at,
                    logged: false,
                }));
            }
            return;
        }
        if let Err(e) = self.commit_batch() {
            EngineMetrics::add(&self.metrics.txn_errors, done.len() as u64);
            if matches!(e, EngineError::NotPrimary(_)) {
                EngineMetrics::add(&self.metrics.gate_refusals, done.len() as u64);
            }
            for d in done {
                let _ = d.reply.send(Err(clone_err(&e)));
            }
            return;
        }
        EngineMetrics::add(&self.metrics.commits, logged);
        self.metrics.batch_size.observe(logged as f64);
        self.mm_publish();
        let at = self.log.durable_position();
        self.progress.send_modify(|p| {
            p.last = at;
            p.flushed = at;
            p.applied = at;
        });
        for d in done {
            let _ = d.reply.send(Ok(Committed {
                results: d.results,
                position: d.position.unwrap_or(at),
                logged: d.position.is_some(),
            }));
        }
    }

    /// After SQLite rolled back the batch's transaction by itself, opens a new one and applies
    /// the records of the batch's transactions run so far (still pending in the log), so the
    /// database is as they left it: their changes, exactly, with their answers unchanged.
    fn restore_batch(&mut self) -> Result<(), EngineError> {
        self.mm_forget_schemas();
        let records = self.log.pending_records()?;
        self.internal("BEGIN IMMEDIATE")
            .map_err(|e| EngineError::Internal(format!("begin write transaction again: {e}")))?;
        let redone = self.policy.internal(|| {
            crate::engine::apply_payloads(&self.conn, records.iter().map(|r| r.payload.as_slice()))
        });
        if redone.is_err() {
            let _ = self.internal("ROLLBACK");
        } else if !records.is_empty() {
            tracing::info!(
                transactions = records.len(),
                "redid the batch's transactions after an interrupted one rolled it back"
            );
        }
        redone
    }

    /// Makes the batch durable in the log, then commits SQLite. On failure nothing of the batch
    /// is kept (or, after a fatal failure, the node stops taking writes). The write gate has the
    /// last word right before the fsync: if it no longer takes writes in the batch's term (closed,
    /// lease run out, new term), the batch is rolled back and refused with `NotPrimary`.
    pub(crate) fn commit_batch(&mut self) -> Result<(), EngineError> {
        let done = self.commit_batch_once();
        if done.is_err() {
            // A schema change of the batch may be rolled back with it.
            self.mm_forget_schemas();
        }
        done
    }

    fn commit_batch_once(&mut self) -> Result<(), EngineError> {
        let last = self.log.last_position();
        if let Err(e) = self.policy.internal(|| meta::set_applied(&self.conn, last)) {
            self.log.discard_pending();
            let _ = self.internal("ROLLBACK");
            return Err(EngineError::from_sqlite(e, None));
        }
        // Held from this check until the fsync returns, so a gate closed after the check waits
        // for the fsync: when closing returns, nothing more becomes durable, and `flushed`
        // (published under it) is final.
        let fence = self.fence.clone();
        let held = gate::lock(&fence);
        if let Err(why) = held.confirm(Instant::now(), self.term) {
            drop(held);
            self.log.discard_pending();
            let _ = self.internal("ROLLBACK");
            return Err(not_primary(&why));
        }
        let synced = self.sync_log();
        if synced.is_ok() {
            let at = self.log.durable_position();
            self.progress.send_modify(|p| {
                p.last = at;
                p.flushed = at;
            });
        }
        drop(held);
        if let Err(e) = synced {
            let _ = self.internal("ROLLBACK");
            return Err(self.log_failed(e));
        }
        if let Err(e) = self.internal("COMMIT") {
            let why = format!(
                "commit to SQLite failed after the change log was made durable ({e}); the outcome of this batch is \
                 unknown to the client until restart, which replays it from the log; this node stops taking writes"
            );
            tracing::error!("{why}");
            let _ = self.internal("ROLLBACK");
            let _ = self.fatal.set(why.clone());
            return Err(EngineError::OutcomeUnknown(why));
        }
        Ok(())
    }

    /// Writes and fsyncs the log's batch, recording the write-path metrics.
    fn sync_log(&mut self) -> Result<(), LogError> {
        let bytes = self.log.pending_bytes() as u64;
        let report = self.log.sync()?;
        let m = &self.metrics;
        EngineMetrics::add(&m.batches, 1);
        EngineMetrics::add(&m.log_bytes_written, bytes);
        m.fsync_seconds.observe(report.fsync.as_secs_f64());
        self.publish_log_extent();
        Ok(())
    }

    /// Publishes where the log starts and how large it is (gauges), and its term history.
    fn publish_log_extent(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics
            .log_first_lsn
            .store(self.log.first_lsn().0, Relaxed);
        self.metrics
            .log_size_bytes
            .store(self.log.size_bytes(), Relaxed);
        crate::rewind::publish_terms(&self.terms, &self.log);
    }

    fn log_failed(&mut self, e: LogError) -> EngineError {
        if e.is_fatal() {
            // The batch may have reached the disk before the fsync failed: its clients cannot be
            // told either way; later requests are refused up front.
            let why = format!("this node stopped taking writes: {e}");
            tracing::error!("{why}");
            let _ = self.fatal.set(why.clone());
            EngineError::OutcomeUnknown(why)
        } else {
            tracing::warn!(error = %e, "write of a batch to the change log failed; nothing of it was kept");
            match &e {
                LogError::Write { source, .. } if source.raw_os_error() == Some(28) => {
                    EngineError::DiskFull(format!("{e}; nothing of the transaction was kept"))
                }
                _ => EngineError::Unavailable(format!("{e}; nothing of the transaction was kept")),
            }
        }
    }

    /// Runs one client transaction in a savepoint; on success its record is appended to the log
    /// batch (not yet durable) and its position returned (`None` when it changed nothing).
    pub(crate) fn run_txn(
        &mut self,
        statements: &[Statement],
        expect: Option<&[Option<StatementResult>]>,
        bounds: &Bounds,
    ) -> Result<(Vec<StatementResult>, Option<Position>), EngineError> {
        if statements.is_empty() {
            if expect.is_some() {
                return Err(EngineError::BadRequest(
                    "a transaction needs at least one statement".into(),
                ));
            }
            // The start of a term (see `Engine::start_term`): a record without steps, so every
            // node's history of terms shows where this term begins.
            if self.log.last_position().term >= self.term {
                return Ok((Vec::new(), None));
            }
            let pos = self
                .log
                .append(self.term, now_us(), payload::encode(&[]))
                .map_err(EngineError::from)?;
            return Ok((Vec::new(), Some(pos)));
        }
        // A client that left while its transaction queued: it is not run at all.
        bounds.check("the transaction")?;
        self.internal("SAVEPOINT scribe_txn")
            .map_err(|e| EngineError::Internal(format!("open savepoint: {e}")))?;
        let outcome = self
            .run_statements(statements, bounds, &[], "the transaction")
            .map_err(|e| match (expect, e) {
                // An optimistic transaction replayed at commit: what fails now did not fail when
                // its client ran it, so something concurrent got in the way.
                (Some(_), EngineError::Constraint(m) | EngineError::Sql(m)) => {
                    EngineError::SerializationFailure(format!(
                        "could not serialize access due to a concurrent transaction: at commit, a statement of this transaction fails now ({m}); nothing of it was kept, retry it"
                    ))
                }
                (_, e) => e,
            })
            .and_then(|(results, steps)| {
                if let Some(expect) = expect {
                    crate::occ::validate(&results, expect)?;
                }
                if steps.is_empty() {
                    return Ok((results, None));
                }
                let payload = self.seal(steps)?;
                let pos = self
                    .log
                    .append(self.term, now_us(), payload)
                    .map_err(EngineError::from)?;
                Ok((results, Some(pos)))
            });
        if outcome.is_err() && self.conn.is_autocommit() {
            // SQLite rolled back the whole write transaction (see `run_in_open`).
            return outcome;
        }
        let end = if outcome.is_ok() {
            "RELEASE scribe_txn"
        } else {
            "ROLLBACK TO scribe_txn; RELEASE scribe_txn"
        };
        self.internal(end)
            .map_err(|e| EngineError::Internal(format!("close savepoint: {e}")))?;
        outcome
    }

    pub(crate) fn schema_version(&self) -> Result<i64, EngineError> {
        self.policy
            .internal(|| {
                self.conn
                    .prepare_cached(&format!(
                        "{}PRAGMA schema_version",
                        crate::exec::INTERNAL_MARK
                    ))?
                    .query_row([], |r| r.get(0))
            })
            .map_err(|e| EngineError::Internal(format!("read schema version: {e}")))
    }

    /// Runs client statements within `bounds`; `earlier` is what their transaction did before
    /// them, and `what` names what a timeout stops ("the transaction", "the statement").
    pub(crate) fn run_statements(
        &self,
        statements: &[Statement],
        bounds: &Bounds,
        earlier: &[Step],
        what: &str,
    ) -> Result<(Vec<StatementResult>, Vec<Step>), EngineError> {
        let mut results = Vec::with_capacity(statements.len());
        let mut steps = Vec::new();
        let mut captured = crate::payload::steps_bytes(earlier);
        // The results of all the request's statements count toward --max-result-bytes together.
        let mut result_bytes = 0u64;
        // Only statements run here change the schema, so the version read after one statement is
        // the version before the next.
        let mut before = self.schema_version()?;
        for st in statements {
            bounds.check(what)?;
            self.mm_check_statement(&st.sql)?;
            if let Some(changed) = self.mm_set_policy(&st.sql, [earlier, &steps])? {
                // Replicated like a schema change: its text becomes the record's policy step.
                if changed {
                    steps.push(Step::Sql(st.sql.clone()));
                }
                results.push(StatementResult {
                    rows_affected: 0,
                    last_insert_id: self.conn.last_insert_rowid(),
                    columns: None,
                    rows: None,
                    decltypes: None,
                });
                continue;
            }
            let mut prepared = exec::prepare(&self.conn, &self.policy, &st.sql)?;
            exec::bind(&mut prepared, &st.params)?;
            let readonly = prepared.readonly();
            let capture = self.policy.internal(|| Capture::start(&self.conn))?;
            let rows: Option<Rows> = {
                let armed = self.meter.arm(bounds, Some(&capture), captured);
                exec::run_limited(
                    &mut prepared,
                    &self.policy,
                    bounds.limits.max_result_bytes,
                    &mut result_bytes,
                )
                .map_err(|e| armed.explain(e, what))?
            };
            let after = self.schema_version()?;
            let ddl = after != before;
            before = after;
            if ddl {
                let sql = prepared.expanded_sql().unwrap_or_else(|| st.sql.clone());
                steps.push(Step::Sql(sql));
            } else {
                // The session reads the schema with pragmas of its own.
                let cs = self.policy.internal(|| capture.changeset())?;
                if !cs.is_empty() {
                    captured += cs.len() as u64;
                    if let Some(limit) = bounds.limits.max_txn_bytes {
                        if captured > limit {
                            return Err(crate::budget::txn_too_large(captured, limit));
                        }
                    }
                    steps.push(Step::Changeset(cs));
                }
            }
            drop(capture);
            let rows_affected = if readonly || ddl {
                0
            } else {
                self.conn.changes()
            };
            let (columns, rows, decltypes) = match rows {
                Some(r) => (Some(r.columns), Some(r.rows), Some(r.decltypes)),
                None => (None, None, None),
            };
            results.push(StatementResult {
                rows_affected,
                last_insert_id: self.conn.last_insert_rowid(),
                columns,
                rows,
                decltypes,
            });
        }
        Ok((results, steps))
    }
}

/// Errors go to several waiting clients; each gets its own copy.
pub(crate) fn clone_err(e: &EngineError) -> EngineError {
    match e {
        EngineError::DiskFull(m) => EngineError::DiskFull(m.clone()),
        EngineError::Unavailable(m) => EngineError::Unavailable(m.clone()),
        EngineError::NotPrimary(m) => EngineError::NotPrimary(m.clone()),
        EngineError::OutcomeUnknown(m) => EngineError::OutcomeUnknown(m.clone()),
        EngineError::SerializationFailure(m) => EngineError::SerializationFailure(m.clone()),
        EngineError::Constraint(m) => EngineError::Constraint(m.clone()),
        other => EngineError::Internal(other.to_string()),
    }
}
