//! [`Engine`]: the handle the node holds. Opening it recovers the change log, brings SQLite up to
//! the log's end by replaying the records after the applied position, starts the writer thread
//! and the read pool. Its progress (last appended, flushed, applied) is published on a watch
//! channel. Whether it takes client writes, and in which term, is its write gate
//! ([`crate::WriteGate`]), which the runtime sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use scribe_core::multi_master::{Seq, VersionVector};
use scribe_core::Position;
use scribe_log::{Log, LogOptions, Recovery};
use tokio::sync::{mpsc, oneshot, watch};

use crate::budget::Limits;
use crate::exec::Statement;
use crate::gate::{self, Fence, WriteGate};
use crate::metrics::EngineMetrics;
use crate::policy::{Policy, Role};
use crate::reader::{QueryResult, ReadPool};
use crate::writer::{Committed, Retention, Writer, WriterMsg};
use crate::{capture, changeset, meta, payload, EngineError};

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The node's data directory; the log lives in `log/`, SQLite in `db/`.
    pub dir: PathBuf,
    /// Change-log layout.
    pub log: LogOptions,
    /// Read connections in the pool.
    pub readers: usize,
    /// Most transactions in one group-commit batch.
    pub max_batch: usize,
    /// Transactions that may wait for the writer before callers are made to wait.
    pub queue: usize,
    /// Whether this node takes client writes at first, and in which term (see
    /// [`Engine::set_gate`]). An open gate in a term older than the log's last record's opens
    /// in the log's term: a node that is primary by configuration goes on in the newest term it
    /// has. Default: open in the first term, without a lease.
    pub gate: WriteGate,
    /// Test-only fault injection: how long a replica waits between making streamed records
    /// durable and applying them (a replica that lags on purpose). Zero in production.
    pub apply_delay: std::time::Duration,
    /// The limits of a request that gives none of its own (default: none).
    pub limits: Limits,
    /// Multi-master mode: every local transaction becomes a record stamped with this node's
    /// name, sequence and clock, and records of other masters are applied beside them (see
    /// [`crate::mm`]). Default: off. A data directory of one mode cannot be opened in the other.
    pub multi_master: Option<crate::mm::MultiMaster>,
}

impl EngineOptions {
    /// Defaults for a data directory.
    pub fn new(dir: impl Into<PathBuf>) -> EngineOptions {
        EngineOptions {
            dir: dir.into(),
            log: LogOptions::default(),
            readers: 4,
            max_batch: 1024,
            queue: 4096,
            gate: WriteGate::default(),
            apply_delay: std::time::Duration::ZERO,
            limits: Limits::NONE,
            multi_master: None,
        }
    }
}

/// Positions of this node's log and database. Invariant: `applied <= flushed <= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Last record appended to the log (written, maybe not yet fsynced).
    pub last: Position,
    /// Last record fsynced in the log.
    pub flushed: Position,
    /// Last record applied to SQLite.
    pub applied: Position,
}

/// What opening the engine found and did.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// What log recovery found.
    pub recovery: Recovery,
    /// The applied position SQLite had before replay.
    pub applied_before: Position,
    /// Records replayed into SQLite.
    pub replayed: u64,
}

/// The storage engine of one node. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<WriterMsg>,
    readers: Arc<ReadPool>,
    progress: watch::Receiver<Progress>,
    metrics: Arc<EngineMetrics>,
    writer: Mutex<Option<JoinHandle<()>>>,
    fatal: Arc<std::sync::OnceLock<String>>,
    locks: Arc<crate::occ::Locks>,
    /// The log's term history, published by the writer (see [`Engine::term_history`]).
    terms: crate::rewind::SharedTerms,
    /// The write gate, shared with the writer (see [`Engine::set_gate`]).
    fence: Arc<Mutex<Fence>>,
    log_dir: PathBuf,
    db: PathBuf,
    /// The limits of requests that give none.
    limits: Limits,
    /// A multi-master node's version vector and peers' positions, published by the writer.
    mm_status: Option<crate::mm::SharedStatus>,
    /// What [`Engine::mm_log_start_vv`] has read of the log so far, to go on from there.
    mm_start_scan: Arc<Mutex<Option<StartScan>>>,
}

/// Each origin's first record in the log from `first` on, as read up to `upto`.
#[derive(Debug, Clone)]
struct StartScan {
    first: scribe_core::Lsn,
    upto: scribe_core::Lsn,
    first_seen: BTreeMap<String, Seq>,
}

/// Refuses to open a data directory in the other mode than it was written in: a primary/replica
/// log replayed as multi-master (or the other way) would not be the same database.
fn check_mode(
    conn: &Connection,
    policy: &Policy,
    log: &Log,
    mm: Option<&crate::mm::MultiMaster>,
) -> Result<(), EngineError> {
    let is_mm = policy.internal(|| crate::mm::is_multi_master(conn));
    let has_data = log.durable_position().lsn != scribe_core::Lsn::ZERO;
    match (mm.is_some(), is_mm) {
        (true, false) if has_data => Err(EngineError::BadRequest(
            "this data directory holds a primary/replica database: a multi-master node starts from an empty data directory (or a multi-master one)".into(),
        )),
        (false, true) => Err(EngineError::BadRequest(
            "this data directory holds a multi-master database: start the node with --multi-master".into(),
        )),
        _ => Ok(()),
    }
}

/// The SQLite database file inside a data directory.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("db").join("scribe.db")
}

fn open_writer_conn(path: &Path) -> Result<Connection, EngineError> {
    let ctx = |e: rusqlite::Error| {
        EngineError::Internal(format!("open SQLite database {}: {e}", path.display()))
    };
    let conn = Connection::open(path).map_err(ctx)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(ctx)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(EngineError::Internal(format!(
            "SQLite refused WAL mode (journal_mode is {mode})"
        )));
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
        .map_err(ctx)?;
    conn.set_prepared_statement_cache_capacity(256);
    meta::ensure(&conn).map_err(ctx)?;
    Ok(conn)
}

/// Applies the steps of consecutive records, inside the caller's transaction. Runs of row
/// changes between schema changes are merged with a changegroup and applied in one call: the
/// result is the same as applying them one by one (a changegroup keeps each row's net change, and
/// SQLite retries a change that hit a constraint after the rest of its table), but SQLite
/// prepares its statements once per run instead of once per record.
pub(crate) fn apply_payloads<'a>(
    conn: &Connection,
    payloads: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), EngineError> {
    let mut group: Option<changeset::Group> = None;
    let flush = |group: &mut Option<changeset::Group>| -> Result<(), EngineError> {
        if let Some(g) = group.take() {
            capture::apply(conn, &g.output()?)?;
        }
        Ok(())
    };
    for bytes in payloads {
        for step in payload::decode(bytes)? {
            match step {
                payload::Step::Changeset(cs) => {
                    if group.is_none() {
                        group = Some(changeset::Group::new()?);
                    }
                    group
                        .as_mut()
                        .expect("just created")
                        .add(&cs)
                        .map_err(|e| EngineError::Diverged(e.to_string()))?;
                }
                payload::Step::MultiMaster(bytes) => {
                    flush(&mut group)?;
                    crate::mm::apply(conn, &crate::mm::Record::decode(&bytes)?)?;
                }
                payload::Step::Sql(sql) => {
                    flush(&mut group)?;
                    conn.execute_batch(&sql).map_err(|e| {
                        if EngineError::sqlite_full(&e) {
                            EngineError::DiskFull(format!("replay DDL {sql:?}: {e}"))
                        } else {
                            EngineError::Diverged(format!("replay DDL {sql:?}: {e}"))
                        }
                    })?;
                }
            }
        }
    }
    flush(&mut group)
}

/// Replays the log's records after SQLite's applied position, a thousand per transaction.
pub(crate) fn replay(
    conn: &Connection,
    policy: &Policy,
    log: &Log,
    applied: Position,
) -> Result<u64, EngineError> {
    let end = log.durable_position();
    if applied.lsn > end.lsn {
        return Err(EngineError::Corrupt(format!(
            "the database has applied lsn {} but the change log ends at {}: the log was damaged or replaced",
            applied.lsn, end.lsn
        )));
    }
    if applied.lsn == end.lsn {
        return Ok(0);
    }
    let mut reader = log.read_from(applied.lsn.next()).map_err(|e| {
        EngineError::Corrupt(format!(
            "the database needs records from lsn {} but {e}",
            applied.lsn.next()
        ))
    })?;
    let mut n = 0u64;
    loop {
        let mut chunk = Vec::with_capacity(1000);
        for r in reader.by_ref().take(1000) {
            chunk.push(r?);
        }
        let Some(last) = chunk.last().map(|r| r.position()) else {
            break;
        };
        policy.internal(|| -> Result<(), EngineError> {
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| EngineError::applying("begin replay", e))?;
            let applied = (|| {
                apply_payloads(conn, chunk.iter().map(|r| r.payload.as_slice())).map_err(|e| {
                    e.or_diverged(|| format!("replay records {} to {}", chunk[0].position(), last))
                })?;
                meta::set_applied(conn, last)
                    .map_err(|e| EngineError::applying("store applied position", e))
            })();
            match applied {
                Ok(()) => conn
                    .execute_batch("COMMIT")
                    .map_err(|e| EngineError::applying("commit replay", e)),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })?;
        n += chunk.len() as u64;
    }
    Ok(n)
}

impl Engine {
    /// Opens the engine in `opts.dir`: recovers the log, replays it into SQLite, starts the writer.
    pub fn open(opts: EngineOptions) -> Result<(Engine, OpenReport), EngineError> {
        let db = db_path(&opts.dir);
        std::fs::create_dir_all(db.parent().expect("db has a parent")).map_err(|e| {
            EngineError::Internal(format!("create data directory {}: {e}", opts.dir.display()))
        })?;
        let (mut log, recovery) = Log::open(&opts.dir.join("log"), opts.log.clone())?;
        let mut conn = open_writer_conn(&db)?;
        let policy = Policy::install(&mut conn, Role::Writer)
            .map_err(|e| EngineError::Internal(format!("install SQL policy: {e}")))?;
        // A rewind a crash interrupted is finished first: the database and the log then both
        // end at its target.
        crate::rewind::recover(&opts.dir, &db, &conn, &policy, &mut log)?;
        let applied_before = policy
            .internal(|| meta::applied(&conn))
            .map_err(|e| EngineError::Internal(format!("read applied position: {e}")))?;
        check_mode(&conn, &policy, &log, opts.multi_master.as_ref())?;
        if let Some(mm) = &opts.multi_master {
            policy.internal(|| crate::mm::prepare(&conn, mm))?;
        }
        let replayed = replay(&conn, &policy, &log, applied_before)?;
        if replayed > 0 {
            tracing::info!(replayed, from = %applied_before, to = %log.durable_position(), "replayed the change log into SQLite");
        }
        // After a snapshot install the log starts empty and knows its base LSN but not its term;
        // the database knows both.
        if applied_before.lsn == log.durable_position().lsn {
            log.adopt_term(applied_before.term);
        }
        let mm = match opts.multi_master.clone() {
            Some(o) => Some(policy.internal(|| crate::mm::MmWriter::open(&conn, o))?),
            None => None,
        };
        let mm_status = mm.as_ref().map(|m| m.status.clone());
        let at = log.durable_position();
        let terms: crate::rewind::SharedTerms = Arc::new(Mutex::new(log.term_history().to_vec()));
        let metrics = Arc::new(EngineMetrics::default());
        metrics
            .replayed
            .store(replayed, std::sync::atomic::Ordering::Relaxed);
        metrics
            .log_size_bytes
            .store(log.size_bytes(), std::sync::atomic::Ordering::Relaxed);
        metrics
            .log_first_lsn
            .store(log.first_lsn().0, std::sync::atomic::Ordering::Relaxed);
        let (progress_tx, progress) = watch::channel(Progress {
            last: at,
            flushed: at,
            applied: at,
        });
        let readers = Arc::new(ReadPool::open(&db, opts.readers)?);
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let fence = Arc::new(Mutex::new(Fence::new(opts.gate.clone(), at.term)));
        let term = gate::lock(&fence).gate().term().unwrap_or(at.term);
        let fatal = Arc::new(std::sync::OnceLock::new());
        let locks = Arc::new(crate::occ::Locks::default());
        let meter = crate::budget::Meter::install(&mut conn).map_err(|e| {
            EngineError::Internal(format!(
                "install the statement limits' progress handler: {e}"
            ))
        })?;
        let writer = Writer {
            locks: locks.clone(),
            meter,
            conn,
            policy,
            log,
            term,
            fence: fence.clone(),
            progress: progress_tx,
            metrics: metrics.clone(),
            max_batch: opts.max_batch.max(1),
            fatal: fatal.clone(),
            apply_delay: opts.apply_delay,
            db_path: db.clone(),
            data_dir: opts.dir.clone(),
            terms: terms.clone(),
            mm,
        };
        let handle = std::thread::Builder::new()
            .name("scribe-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| EngineError::Internal(format!("start writer thread: {e}")))?;
        let engine = Engine {
            inner: Arc::new(Inner {
                tx,
                readers,
                progress,
                metrics,
                writer: Mutex::new(Some(handle)),
                fatal,
                locks,
                fence,
                terms,
                log_dir: opts.dir.join("log"),
                db: db.clone(),
                limits: opts.limits,
                mm_status,
                mm_start_scan: Arc::new(Mutex::new(None)),
            }),
        };
        Ok((
            engine,
            OpenReport {
                recovery,
                applied_before,
                replayed,
            },
        ))
    }

    /// Runs `statements` as one transaction; answers once it is durable in the log and applied.
    /// Refused with [`EngineError::NotPrimary`] while the write gate does not take writes (checked
    /// when the writer takes it up, and again right before its batch is made durable).
    pub async fn execute(&self, statements: Vec<Statement>) -> Result<Committed, EngineError> {
        self.execute_with(statements, self.inner.limits).await
    }

    /// [`Engine::execute`] within `limits`: past its timeout (counted from when the writer takes
    /// it up) or its size limits the transaction is rolled back with [`EngineError::Timeout`] or
    /// [`EngineError::TooLarge`]. If the caller stops waiting before it commits, it is abandoned.
    pub async fn execute_with(
        &self,
        statements: Vec<Statement>,
        limits: Limits,
    ) -> Result<Committed, EngineError> {
        if statements.is_empty() {
            return Err(EngineError::BadRequest(
                "a transaction needs at least one statement".into(),
            ));
        }
        self.submit(statements, limits).await
    }

    /// The limits of a request that gives none.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Marks the start of the write gate's term in the log, when the log's last record is of an
    /// older term: a record with no changes, like a Raft leader's first entry. A newly promoted
    /// primary writes it at once, so that every node's history of terms shows where the new term
    /// begins even before a client writes — a position token of the old term past that point is
    /// then known to be lost, everywhere. Answers `logged: false` when the term had started.
    pub async fn start_term(&self) -> Result<Committed, EngineError> {
        self.submit(Vec::new(), Limits::NONE).await
    }

    async fn submit(
        &self,
        statements: Vec<Statement>,
        limits: Limits,
    ) -> Result<Committed, EngineError> {
        let (reply, rx) = oneshot::channel();
        // Held until the answer comes: dropping this future (a client gone) abandons the job.
        let (_wanted, interest) = crate::budget::Interest::pair();
        self.inner
            .tx
            .send(WriterMsg::Execute(crate::writer::Job {
                statements,
                expect: None,
                limits,
                interest,
                reply,
            }))
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| {
            EngineError::OutcomeUnknown("the writer stopped before answering".into())
        })?
    }

    /// Opens an interactive transaction, once the writer is free for it (see [`crate::txn`]). It
    /// is rolled back if it stays idle longer than `idle` between operations. Refused with
    /// [`EngineError::NotPrimary`] while the write gate is closed; its commit is refused the same
    /// way (and nothing of it kept) if the gate closed while it was held.
    pub async fn begin(
        &self,
        idle: std::time::Duration,
    ) -> Result<crate::Transaction, EngineError> {
        crate::Transaction::begin(&self.inner.tx, idle, self.inner.limits).await
    }

    /// Opens an optimistic transaction (see [`crate::occ`]): it holds no writer between its
    /// statements; a statement waits at most `lock_wait` for a row another transaction holds.
    /// Its statements and its commit are refused with [`EngineError::NotPrimary`] while the write
    /// gate does not take writes.
    pub fn begin_optimistic(&self, lock_wait: std::time::Duration) -> crate::occ::Optimistic {
        crate::occ::Optimistic::new(
            self.inner.tx.clone(),
            self.inner.locks.clone(),
            self.inner.progress.clone(),
            lock_wait,
            self.inner.limits,
        )
    }

    /// Appends records copied from another node's log (they must follow this log: next LSN, no
    /// older term), makes them durable, and applies them to SQLite in one transaction. Answers
    /// with the new positions. This is a replica's write path: refused while the write gate is
    /// open (a primary takes no records from another node), with [`EngineError::BadRequest`].
    pub async fn apply(&self, records: Vec<scribe_log::Record>) -> Result<Progress, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::Apply { records, reply })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the writer stopped before answering".into()))?
    }

    /// Applies records read from `peer`'s log on a multi-master node: `(the peer's LSN, the
    /// record's payload)`, in the peer's order. Records this node has are skipped; the others
    /// are applied, made durable in this node's log and committed with where this node has read
    /// `peer`'s log up to.
    ///
    /// `log_id` is the id of `peer`'s log the LSNs are in (see [`crate::mm::LOG_TABLE`]).
    pub async fn mm_apply(
        &self,
        peer: String,
        log_id: u64,
        records: Vec<(u64, Vec<u8>)>,
    ) -> Result<crate::mm::Applied, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::MmApply {
                peer,
                log_id,
                records,
                reply,
            })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the writer stopped before answering".into()))?
    }

    /// Seeds this multi-master node, which must hold nothing yet (no record of its own nor of
    /// anyone else), from the snapshot of `peer`'s database at `path` (taken by
    /// [`Engine::snapshot`] on `peer`, whose log has id `peer_log_id`): the database becomes the
    /// copy, this node reads `peer`'s log on from the snapshot's position and every other peer's
    /// from where `peer` had, and its own log starts over, under a new id, at that position.
    /// Answers the position.
    ///
    /// The file `marker` exists, durably, from just before the database is touched until the
    /// copy is whole and durable, before any other write: a node killed meanwhile finds it at its
    /// next start and must discard its database and log (and be seeded again). A failure in
    /// that span stops this node's writes ([`EngineError::Unavailable`]).
    pub async fn mm_install_snapshot(
        &self,
        path: PathBuf,
        peer: String,
        peer_log_id: u64,
        marker: PathBuf,
    ) -> Result<Position, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::MmInstallSnapshot {
                path,
                peer,
                peer_log_id,
                marker,
                reply,
            })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        let installed = rx
            .await
            .map_err(|_| EngineError::Unavailable("the writer stopped before answering".into()))?;
        // The log started over: what was read of the old one says nothing of the new.
        *self
            .inner
            .mm_start_scan
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        installed
    }

    /// What this multi-master node had applied from each origin just before the first record
    /// its log still holds — what a peer must hold already to stream this log from its start
    /// rather than from a position it no longer holds. Reads the whole log, beside the writer.
    pub async fn mm_log_start_vv(&self) -> Result<VersionVector, EngineError> {
        let Some(now) = self.mm_status().map(|s| s.vv) else {
            return Err(EngineError::BadRequest(
                "this node is not a multi-master node".into(),
            ));
        };
        // Read after the vector: every record it counts is in the log by then, and whatever
        // is appended meanwhile is read too. The log grows only at its end, so what was read
        // before from the same first LSN holds: only the records after it are read.
        let first = self.log_first_lsn();
        let upto = self.progress().flushed.lsn;
        let scan = self
            .inner
            .mm_start_scan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|s| s.first == first && s.upto <= upto)
            .unwrap_or(StartScan {
                first,
                upto: first.prev(),
                first_seen: BTreeMap::new(),
            });
        let mut reader =
            scribe_log::reader::open_reader(&self.inner.log_dir, scan.upto.next(), upto)?;
        let cache = self.inner.mm_start_scan.clone();
        tokio::task::spawn_blocking(move || -> Result<VersionVector, EngineError> {
            let mut scan = scan;
            for record in reader.by_ref() {
                let record = record?;
                for step in crate::payload::decode(&record.payload)? {
                    if let crate::payload::Step::MultiMaster(b) = step {
                        let rec = crate::mm::Record::decode(&b)?;
                        scan.first_seen.entry(rec.origin).or_insert(Seq(rec.seq));
                    }
                }
                scan.upto = record.lsn;
            }
            let before = now.before(&scan.first_seen);
            *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(scan);
            Ok(before)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("read the log: {e}")))?
    }

    /// Resolves the conflicts of a `versioned` row on a multi-master node (see
    /// [`crate::mm::Resolution`]); answers the position of the resolution's record.
    pub async fn mm_resolve(
        &self,
        resolution: crate::mm::Resolution,
    ) -> Result<scribe_core::Position, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::MmResolve { resolution, reply })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await.map_err(|_| {
            EngineError::OutcomeUnknown("the writer stopped before answering".into())
        })?
    }

    /// A multi-master node's version vector and where it has read each peer's log up to, as of
    /// its last commit (`None` on a primary/replica node).
    pub fn mm_status(&self) -> Option<crate::mm::MmStatus> {
        self.inner
            .mm_status
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Reads this node's durable log records from `from` up to the flushed position at the time
    /// of the call (what a primary streams to its replicas). Runs beside the writer.
    pub fn read_log(&self, from: scribe_core::Lsn) -> Result<scribe_log::LogReader, EngineError> {
        let upto = self.progress().flushed.lsn;
        Ok(scribe_log::reader::open_reader(
            &self.inner.log_dir,
            from,
            upto,
        )?)
    }

    /// Writes a consistent copy of the database to `dest` (`VACUUM INTO`, on a connection of its
    /// own, beside the writer) and answers with the applied position it holds: the snapshot a
    /// new replica installs before it streams the log from the next LSN.
    pub async fn snapshot(&self, dest: PathBuf) -> Result<Position, EngineError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || -> Result<Position, EngineError> {
            let ctx = |what: &str, e: rusqlite::Error| {
                EngineError::Internal(format!("{what} snapshot {}: {e}", dest.display()))
            };
            let _ = std::fs::remove_file(&dest);
            let conn = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| ctx("open the database for", e))?;
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(|e| ctx("configure", e))?;
            conn.execute("VACUUM INTO ?1", [dest.to_string_lossy()])
                .map_err(|e| ctx("write", e))?;
            drop(conn);
            let copy =
                Connection::open_with_flags(&dest, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(|e| ctx("open", e))?;
            let at = meta::applied(&copy).map_err(|e| ctx("read the position of", e))?;
            drop(copy);
            std::fs::File::open(&dest)
                .and_then(|f| f.sync_all())
                .map_err(|e| {
                    EngineError::Internal(format!("fsync snapshot {}: {e}", dest.display()))
                })?;
            Ok(at)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("snapshot task: {e}")))?
    }

    /// Replaces the whole database with the snapshot at `path` and restarts the log empty after
    /// the snapshot's position, which it answers with. The caller keeps a marker that the data
    /// directory is being seeded until this returns, since the two steps are not atomic together.
    /// Refused while the write gate is open, like [`Engine::apply`].
    pub async fn install_snapshot(&self, path: PathBuf) -> Result<Position, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::InstallSnapshot { path, reply })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the writer stopped before answering".into()))?
    }

    /// Deletes the log segments `retain` allows (after a checkpoint); answers how many.
    pub async fn retain(&self, retain: Retention) -> Result<usize, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::Retain { retain, reply })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the writer stopped before answering".into()))?
    }

    /// Replaces the write gate: what the control state says this node is (DESIGN.md §4, "the
    /// writer fences itself").
    ///
    /// - `Closed`: when this returns, no record that was not already durable will be written or
    ///   acknowledged by this node afterwards, and [`Engine::progress`]'s `flushed` is final
    ///   (a switchover can read the last position right after closing). Batches that were running
    ///   are rolled back as a whole and their clients answered [`EngineError::NotPrimary`];
    ///   queued writes, transaction starts and optimistic statements are refused the same way.
    /// - `Open { term, until }`: client writes are taken while `now < until`; the next record is
    ///   written in `term`. A batch whose lease runs out (or whose term changes) before its fsync
    ///   is rolled back and refused. Records from other nodes ([`Engine::apply`]) are refused
    ///   from when this returns.
    ///
    /// Opening in a term older than the newest this node knows (its log's last record's, or one
    /// it was opened in before) is refused with [`EngineError::NotPrimary`] and changes nothing.
    ///
    /// It may block the calling thread for as long as one log fsync: the writer holds the gate
    /// from its last check of a batch until that batch's fsync returns.
    pub fn set_gate(&self, gate: WriteGate) -> Result<(), EngineError> {
        let mut fence = gate::lock(&self.inner.fence);
        let before = fence.gate().term();
        fence.set(gate).map_err(EngineError::NotPrimary)?;
        // Lease renewals keep the term: only a change of role or term is worth a line.
        if fence.gate().term() != before {
            tracing::info!(gate = ?fence.gate(), "write gate changed");
        }
        Ok(())
    }

    /// The write gate now.
    pub fn gate(&self) -> WriteGate {
        gate::lock(&self.inner.fence).gate().clone()
    }

    /// Undoes this node's own records after `to`, newest first, so that its database and its
    /// log both end exactly at `to` (a returning old primary before it rejoins as a replica; see
    /// [`crate::rewind`]). The undone transactions are first saved to a rollback file named after
    /// `rollback_file` with both positions in its name (an earlier one is never replaced);
    /// [`crate::RewindReport::file`] says where. Crash-safe: a crash part way is finished at the
    /// next open.
    ///
    /// Refused, changing nothing, with [`EngineError::NeedSnapshot`] when a record to undo
    /// changed the schema or is no longer held (re-seed instead); with
    /// [`EngineError::BadRequest`] while the write gate is open, or when `to` is past the log's
    /// end or not part of this node's history; with [`EngineError::Diverged`] if an inverse does
    /// not apply cleanly.
    pub async fn rewind(
        &self,
        to: Position,
        rollback_file: PathBuf,
    ) -> Result<crate::RewindReport, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::Rewind {
                to,
                file: rollback_file,
                reply,
            })
            .await
            .map_err(|_| EngineError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the writer stopped before answering".into()))?
    }

    /// This node's history of terms: each term its log holds (or held, before retention or a
    /// snapshot) with the LSN of its first record, oldest first, as of the log's last sync.
    pub fn term_history(&self) -> Vec<(scribe_core::Term, scribe_core::Lsn)> {
        self.inner
            .terms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The oldest LSN the change log still holds.
    pub fn log_first_lsn(&self) -> scribe_core::Lsn {
        scribe_core::Lsn(
            self.inner
                .metrics
                .log_first_lsn
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Describes a statement (its columns with declared types, its parameters, whether it only
    /// reads) on a read connection, without running it.
    pub async fn describe(&self, sql: String) -> Result<crate::exec::Described, EngineError> {
        self.inner.readers.describe(sql).await
    }

    /// Runs one read-only statement on a read connection.
    pub async fn query(&self, statement: Statement) -> Result<QueryResult, EngineError> {
        self.query_with(statement, self.inner.limits).await
    }

    /// [`Engine::query`] within `limits`: its timeout counts from now, the wait for a read
    /// connection included; past it, or past the result size limit, it fails with
    /// [`EngineError::Timeout`] or [`EngineError::TooLarge`]. A caller that stops waiting
    /// interrupts it.
    pub async fn query_with(
        &self,
        statement: Statement,
        limits: Limits,
    ) -> Result<QueryResult, EngineError> {
        self.inner.readers.query(statement, limits).await
    }

    /// The current positions.
    pub fn progress(&self) -> Progress {
        *self.inner.progress.borrow()
    }

    /// A receiver that sees every change of the positions.
    pub fn watch_progress(&self) -> watch::Receiver<Progress> {
        self.inner.progress.clone()
    }

    /// Why this node no longer takes writes, after a fatal failure (a failed fsync, say).
    pub fn write_failure(&self) -> Option<String> {
        self.inner.fatal.get().cloned()
    }

    /// Write-path metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.inner.metrics
    }

    /// Answers what is queued, stops the writer and waits for it. Later writes are refused.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.inner.tx.send(WriterMsg::Stop(done)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.inner.writer.lock().expect("writer handle").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}
