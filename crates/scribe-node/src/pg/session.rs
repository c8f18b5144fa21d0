//! One PostgreSQL connection's session: its transaction (reads before the first write go to the
//! read pool, like READ COMMITTED; the first write leases the writer, or on a replica opens the
//! transaction on the primary), its settings (`scribe.commit`, `SET LOCAL` inside a transaction),
//! its position token (a replica's reads wait for the session's own writes), and COPY in progress.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgwire::api::Type;
use scribe_core::{CommitMode, Position};
use scribe_pgsql::{Command, CopyIn, Kind};
use scribe_sqlite::{Optimistic, SavepointOp, Statement, StatementResult, Transaction, Value};

use super::remote::{Primary, RemoteTxn};
use super::sqlstate::{PgError, FEATURE_NOT_SUPPORTED, INVALID_PARAMETER_VALUE, INVALID_SAVEPOINT};
use super::types;
use crate::service::{self, Consistency, ReadAsk, ReadRoute, WriteRoute};
use crate::state::NodeState;
use crate::ApiError;

/// What a statement answers.
pub enum Outcome {
    /// Rows, with column names and types, and the command tag before the row count.
    Rows {
        columns: Vec<(String, Type)>,
        rows: Vec<Vec<Value>>,
        tag: String,
    },
    /// A command tag, with the rows affected when the command counts them.
    Done { tag: String, rows: Option<usize> },
    /// `BEGIN`.
    Begin,
    /// The end of a transaction block, with its tag (`COMMIT` or `ROLLBACK`).
    End(&'static str),
    /// COPY FROM STDIN started: the client now sends data for this many columns.
    CopyIn { columns: usize },
    /// Nothing to run.
    Empty,
}

/// A transaction block's writer side: optimistic on a primary (statements run speculatively,
/// checked again at commit), moved onto the writer when optimism does not fit (see
/// [`Runner::escalate`]), or held on the primary for a replica.
enum Lease {
    Optimistic(Optimistic),
    Local(Transaction),
    Remote(RemoteTxn),
}

/// Statements an optimistic transaction may hold before it moves onto the writer (each statement
/// replays the ones before it).
const MAX_OPTIMISTIC: usize = 64;

struct TxnState {
    lease: Option<Lease>,
    aborted: bool,
    /// The writer side was lost with statements in it (a cancelled statement, a failed move onto
    /// the writer): nothing can recover the transaction, not even a rollback to a savepoint.
    lost: bool,
    local_commit: Option<CommitMode>,
    /// Run on the writer from the first statement (SERIALIZABLE / REPEATABLE READ asked, or a
    /// locking read): no optimism.
    pessimistic: bool,
    /// The transaction's timestamp: `CURRENT_TIMESTAMP` and friends in it, as in PostgreSQL.
    started: std::time::SystemTime,
    /// `SET LOCAL statement_timeout`, for the rest of the block.
    local_timeout: Option<Duration>,
    /// The savepoints of a block that holds no writer side (a `read` user's): names only, as
    /// its statements change nothing there is nothing to roll back to.
    read_savepoints: Vec<String>,
}

impl TxnState {
    /// Gives the block's writer side the limits of its next statements.
    fn set_limits(&mut self, limits: scribe_sqlite::Limits) {
        match &mut self.lease {
            Some(Lease::Local(l)) => l.set_limits(limits),
            Some(Lease::Optimistic(o)) => o.set_limits(limits),
            // Fixed when the block began on the primary.
            Some(Lease::Remote(_)) | None => {}
        }
    }
}

/// A PostgreSQL duration setting: a number of milliseconds, or a number with a unit (`us`,
/// `ms`, `s`, `min`, `h`, `d`), as `SET statement_timeout` takes it. Zero: no limit.
fn parse_pg_duration(value: &str) -> Result<Duration, PgError> {
    let v = value.trim().trim_matches('\'');
    let bad = || {
        PgError::new(
            INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"statement_timeout\": \"{value}\" (milliseconds, or a number with a unit: ms, s, min, h)"),
        )
    };
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().map_err(|_| bad())?;
    let ms = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => n,
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        "min" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "d" => n * 86_400_000.0,
        _ => return Err(bad()),
    };
    if !ms.is_finite() || !(0.0..=1e12).contains(&ms) {
        return Err(bad());
    }
    Ok(Duration::from_micros((ms * 1000.0) as u64))
}

impl Session {
    /// Fails the session's transaction block, if it is in one (a statement that did not parse).
    pub fn fail(&mut self) {
        if let Some(t) = &mut self.txn {
            t.aborted = true;
        }
    }
}

/// The state of one connection.
#[derive(Default)]
pub struct Session {
    txn: Option<TxnState>,
    settings: BTreeMap<String, String>,
    commit: Option<CommitMode>,
    token: Option<Position>,
    copy: Option<(CopyIn, Vec<u8>)>,
    /// A statement was running when its future was dropped (a cancel request): its transaction
    /// can no longer be trusted.
    busy: bool,
    /// Warnings to send before the next answer.
    pub notices: Vec<String>,
    /// `SET statement_timeout`: the session's own (zero: the longest the node allows); `None`:
    /// the node's `--statement-timeout`.
    timeout: Option<Duration>,
    /// The startup packet's `options` have been applied.
    pub started: bool,
    /// Who logged in (with `--users`).
    pub principal: Option<crate::auth::Principal>,
}

/// The settings in a startup packet's `options` (what `PGOPTIONS` sends): `-c name=value` and
/// `--name=value`, separated by spaces, a backslash escaping the next character.
pub fn startup_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(w) = words.next() {
        let setting = match w.as_str() {
            "-c" => words.next(),
            _ => w.strip_prefix("--").map(str::to_string),
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            settings.push((name.replace('-', "_"), value.to_string()));
        }
    }
    settings
}

fn mode_name(m: CommitMode) -> String {
    m.to_string()
}

fn parse_commit(value: &str) -> Result<CommitMode, PgError> {
    value.parse::<CommitMode>().map_err(|_| {
        PgError::new(
            INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"scribe.commit\": \"{value}\" (expected async, semi-sync or sync)"),
        )
    })
}

/// `synchronous_commit` as PostgreSQL users set it, in Scribe's modes.
fn from_synchronous_commit(value: &str) -> Result<CommitMode, PgError> {
    match value.to_ascii_lowercase().as_str() {
        "off" | "local" | "false" | "0" => Ok(CommitMode::Async),
        "on" | "remote_write" | "true" | "1" => Ok(CommitMode::SemiSync),
        "remote_apply" => Ok(CommitMode::Sync),
        other => Err(PgError::new(
            INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"synchronous_commit\": \"{other}\""),
        )),
    }
}

/// The outcome of a statement's result, by what kind of statement it was.
pub fn outcome(kind: &Kind, r: StatementResult) -> Outcome {
    let tag = match kind {
        Kind::Read => "SELECT".to_string(),
        Kind::Insert => "INSERT 0".to_string(),
        Kind::Update => "UPDATE".to_string(),
        Kind::Delete => "DELETE".to_string(),
        Kind::Ddl { tag } | Kind::Other { tag } => tag.clone(),
    };
    if let (Some(names), Some(rows)) = (r.columns, r.rows) {
        let decl = r.decltypes.unwrap_or_default();
        let columns = names
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let d = decl.get(i).cloned().flatten();
                let t = types::column_type(d.as_deref(), rows.iter().filter_map(|r| r.get(i)));
                (n, t)
            })
            .collect();
        return Outcome::Rows { columns, rows, tag };
    }
    let rows = match kind {
        Kind::Insert | Kind::Update | Kind::Delete => Some(r.rows_affected as usize),
        _ => None,
    };
    Outcome::Done { tag, rows }
}

/// Runs sessions' statements against this node.
pub struct Runner {
    pub state: Arc<NodeState>,
}

impl Runner {
    /// Where this session's writes go: `None` here (this node is the primary), or the primary.
    fn primary(&self, s: &Session) -> Result<Option<Primary>, PgError> {
        match service::route_write(&self.state, true) {
            Ok(WriteRoute::Local) => Ok(None),
            Ok(WriteRoute::Forward { url, .. }) => Ok(Some(self.remote(s, url))),
            Err(e @ ApiError::Witness { .. }) => Err(e.into()),
            Err(_) => Err(PgError::new(
                "57P03",
                format!(
                    "{} is a replica that has not reached its primary yet; writes cannot be sent",
                    self.state.identity.name
                ),
            )),
        }
    }

    fn remote(&self, s: &Session, url: String) -> Primary {
        Primary {
            http: self.state.http.clone(),
            who: s.principal.clone(),
            url,
            via: self.state.identity.name.clone(),
            statement_timeout: None,
        }
    }

    fn effective_commit(&self, s: &Session, local: Option<CommitMode>) -> CommitMode {
        local.or(s.commit).unwrap_or(self.state.config.commit)
    }

    /// The statement timeout the session asked for (`SET [LOCAL] statement_timeout`), if any.
    fn asked_timeout(&self, s: &Session) -> Option<Duration> {
        s.txn.as_ref().and_then(|t| t.local_timeout).or(s.timeout)
    }

    /// The limits of the session's next statement.
    fn limits(&self, s: &Session) -> Result<scribe_sqlite::Limits, PgError> {
        self.state
            .config
            .limits(self.asked_timeout(s))
            .map_err(|e| PgError::new(INVALID_PARAMETER_VALUE, e))
    }

    /// Confirms a transaction committed on this node in `mode` and moves the session's token to
    /// it; a sync wait that times out becomes a warning, as in PostgreSQL (the transaction is
    /// committed, it cannot be taken back).
    async fn confirmed(
        &self,
        s: &mut Session,
        mode: CommitMode,
        committed: scribe_sqlite::Committed,
    ) -> Result<Vec<StatementResult>, PgError> {
        let written = service::confirm(&self.state, committed, Some(mode)).await;
        if written.logged {
            service::advance(&mut s.token, written.position);
        }
        match written.durability {
            Ok(_) => {}
            Err(e @ ApiError::SyncTimeout { .. }) => s.notices.push(e.message()),
            Err(e) => return Err(e.into()),
        }
        Ok(written.results)
    }

    /// Runs one command with its parameters.
    pub async fn run(
        &self,
        s: &mut Session,
        cmd: &Command,
        params: Vec<Value>,
        hints: Hints,
    ) -> Result<Outcome, PgError> {
        if hints.serializable {
            // REPEATABLE READ / SERIALIZABLE hold the writer from the first statement: not for a
            // session that may not write (refused as asked, so its block is not marked).
            if let Err(e) = self.may_write(s) {
                return Err(holds_the_writer(e));
            }
            if let Some(t) = &mut s.txn {
                t.pessimistic = true;
            }
        }
        if s.busy {
            // The last statement was cancelled mid-flight: its transaction is rolled back.
            s.busy = false;
            if let Some(t) = &mut s.txn {
                if t.lease.take().is_some() {
                    t.lost = true;
                }
                t.aborted = true;
            }
        }
        s.busy = true;
        let r = match cmd {
            Command::Sql { sql, .. } => match self.rollback_to(s, sql).await {
                Some(r) => r,
                None => self.dispatch(s, cmd, params, hints).await,
            },
            _ => self.dispatch(s, cmd, params, hints).await,
        };
        s.busy = false;
        if r.is_err() {
            s.fail();
        }
        r
    }

    async fn dispatch(
        &self,
        s: &mut Session,
        cmd: &Command,
        params: Vec<Value>,
        hints: Hints,
    ) -> Result<Outcome, PgError> {
        let in_failed = s.txn.as_ref().is_some_and(|t| t.aborted);
        match cmd {
            Command::Rollback => return Ok(self.rollback(s).await),
            Command::Commit => return self.commit(s).await,
            _ if in_failed => return Err(PgError::aborted()),
            _ => {}
        }
        match cmd {
            Command::Empty => Ok(Outcome::Empty),
            Command::Begin => {
                if s.txn.is_some() {
                    s.notices
                        .push("there is already a transaction in progress".into());
                } else {
                    s.txn = Some(TxnState {
                        lease: None,
                        aborted: false,
                        lost: false,
                        local_commit: None,
                        pessimistic: hints.serializable,
                        started: std::time::SystemTime::now(),
                        local_timeout: None,
                        read_savepoints: Vec::new(),
                    });
                }
                Ok(Outcome::Begin)
            }
            Command::Commit | Command::Rollback => unreachable!("handled above"),
            Command::Set { name, value, local } => self.set(s, name, value.as_deref(), *local),
            Command::Reset { name } => {
                match name.as_deref() {
                    None => {
                        s.settings.clear();
                        s.commit = None;
                        s.timeout = None;
                    }
                    Some(n) if n.eq_ignore_ascii_case("statement_timeout") => s.timeout = None,
                    Some(n)
                        if n.eq_ignore_ascii_case("scribe.commit")
                            || n.eq_ignore_ascii_case("synchronous_commit") =>
                    {
                        s.commit = None
                    }
                    Some(n) => {
                        s.settings.remove(&n.to_ascii_lowercase());
                    }
                }
                Ok(Outcome::Done {
                    tag: "RESET".into(),
                    rows: None,
                })
            }
            Command::Show { name } => Ok(self.show(s, name)),
            Command::Noop { tag } => Ok(Outcome::Done {
                tag: tag.clone(),
                rows: None,
            }),
            Command::CopyIn(copy) => {
                self.may_write(s)?;
                let columns = match &copy.columns {
                    Some(c) => c.len(),
                    None => self.table_columns(&copy.table).await?.len(),
                };
                s.copy = Some((copy.clone(), Vec::new()));
                Ok(Outcome::CopyIn { columns })
            }
            Command::Multi { sqls, tag } => {
                let statements = sqls.iter().map(|q| Statement::new(q.clone())).collect();
                self.write(s, statements).await?;
                Ok(Outcome::Done {
                    tag: tag.clone(),
                    rows: None,
                })
            }
            Command::Sql { sql, kind } => {
                if let Some(sp) = savepoint_of(sql) {
                    return self.savepoint(s, sp).await;
                }
                let mut sql = sql.clone();
                let refused = self.may_write(s).err();
                let can_write = refused.is_none();
                if let Some(e) = refused.filter(|_| s.txn.is_some() && hints.locking) {
                    // Refused before it marks the block: after a ROLLBACK TO the block goes on.
                    return Err(holds_the_writer(e));
                }
                if let Some(t) = &mut s.txn {
                    // PostgreSQL's now() is the transaction's start: the same in every statement
                    // of it (and in every run of an optimistic transaction's statements).
                    sql = freeze_time(&sql, t.started);
                    // A locking read, or a statement whose result cannot be run twice alike:
                    // run it (and the rest) on the writer, held. A session that may not write
                    // never replays anything, so its nondeterministic reads stay reads.
                    if hints.locking || t.pessimistic || (can_write && nondeterministic(&sql)) {
                        t.pessimistic = true;
                    }
                }
                if s.txn.as_ref().is_some_and(|t| t.pessimistic) {
                    self.ensure_lease(s).await?;
                    let t = s.txn.as_mut().expect("in a transaction");
                    self.escalate(t).await?;
                }
                let st = Statement::with_params(sql, params);
                let leased = s.txn.as_ref().is_some_and(|t| match &t.lease {
                    None => false,
                    Some(Lease::Optimistic(o)) => o.has_written(),
                    Some(_) => true,
                });
                if matches!(kind, Kind::Read) && !leased {
                    match self.read(s, st.clone()).await {
                        Err(e) if e.sqlstate == "25006" => {}
                        other => return other.map(|r| outcome(kind, r)),
                    }
                }
                let mut results = self.write(s, vec![st]).await?;
                Ok(outcome(kind, results.pop().unwrap_or_default()))
            }
        }
    }

    /// A setting from the startup packet, as `SET name = value`.
    pub fn set_from_startup(
        &self,
        s: &mut Session,
        name: &str,
        value: &str,
    ) -> Result<(), PgError> {
        self.set(s, name, Some(value), false).map(|_| ())
    }

    fn set(
        &self,
        s: &mut Session,
        name: &str,
        value: Option<&str>,
        local: bool,
    ) -> Result<Outcome, PgError> {
        let key = name.to_ascii_lowercase();
        if key == "statement_timeout" {
            let timeout = value.map(parse_pg_duration).transpose()?;
            if let Some(d) = timeout {
                self.state
                    .config
                    .limits(Some(d))
                    .map_err(|e| PgError::new(INVALID_PARAMETER_VALUE, e))?;
            }
            match (&mut s.txn, local) {
                (Some(t), true) => t.local_timeout = timeout,
                (None, true) => s
                    .notices
                    .push("SET LOCAL can only be used in transaction blocks".into()),
                (_, false) => s.timeout = timeout,
            }
            return Ok(Outcome::Done {
                tag: "SET".into(),
                rows: None,
            });
        }
        let mode = match (key.as_str(), value) {
            ("scribe.commit", Some(v)) => Some(Some(parse_commit(v)?)),
            ("synchronous_commit", Some(v)) => Some(Some(from_synchronous_commit(v)?)),
            ("scribe.commit" | "synchronous_commit", None) => Some(None),
            _ => None,
        };
        match mode {
            Some(m) => match (&mut s.txn, local) {
                (Some(t), true) => t.local_commit = m,
                (None, true) => s
                    .notices
                    .push("SET LOCAL can only be used in transaction blocks".into()),
                (_, false) => s.commit = m,
            },
            None => match value {
                Some(v) => {
                    s.settings.insert(key, v.to_string());
                }
                None => {
                    s.settings.remove(&key);
                }
            },
        }
        Ok(Outcome::Done {
            tag: "SET".into(),
            rows: None,
        })
    }

    fn show(&self, s: &Session, name: &str) -> Outcome {
        let key = name.to_ascii_lowercase();
        let local = s.txn.as_ref().and_then(|t| t.local_commit);
        let commit = mode_name(self.effective_commit(s, local));
        let defaults: Vec<(&str, String)> = vec![
            ("scribe.commit", commit.clone()),
            ("server_version", scribe_pgsql::SERVER_VERSION.to_string()),
            ("server_encoding", "UTF8".into()),
            ("client_encoding", "UTF8".into()),
            ("datestyle", "ISO, MDY".into()),
            ("timezone", "UTC".into()),
            ("standard_conforming_strings", "on".into()),
            ("transaction_isolation", "read committed".into()),
            ("default_transaction_isolation", "read committed".into()),
            ("integer_datetimes", "on".into()),
            ("max_identifier_length", "63".into()),
            ("search_path", "public".into()),
            (
                "statement_timeout",
                match self
                    .asked_timeout(s)
                    .unwrap_or(self.state.config.statement_timeout)
                {
                    d if d.is_zero() => "0".into(),
                    d => format!("{}ms", d.as_millis()),
                },
            ),
        ];
        let value_of = |k: &str| -> String {
            if let Some(v) = s.settings.get(k) {
                return v.clone();
            }
            if k == "synchronous_commit" {
                return match self.effective_commit(s, local) {
                    CommitMode::Async => "local".into(),
                    CommitMode::SemiSync => "remote_write".into(),
                    CommitMode::Sync => "remote_apply".into(),
                };
            }
            defaults
                .iter()
                .find(|(d, _)| *d == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        if key == "all" {
            let mut names: Vec<String> = defaults.iter().map(|(k, _)| k.to_string()).collect();
            names.extend(s.settings.keys().cloned());
            names.sort();
            names.dedup();
            let rows = names
                .into_iter()
                .map(|n| {
                    let v = value_of(&n);
                    vec![Value::Text(n), Value::Text(v), Value::Text(String::new())]
                })
                .collect();
            return Outcome::Rows {
                columns: vec![
                    ("name".into(), Type::TEXT),
                    ("setting".into(), Type::TEXT),
                    ("description".into(), Type::TEXT),
                ],
                rows,
                tag: "SHOW".into(),
            };
        }
        Outcome::Rows {
            columns: vec![(name.to_string(), Type::TEXT)],
            rows: vec![vec![Value::Text(value_of(&key))]],
            tag: "SHOW".into(),
        }
    }

    /// A read outside the transaction's writer: this node's read pool; on a replica after the
    /// session's last write is applied here (else on the primary).
    async fn read(&self, s: &mut Session, st: Statement) -> Result<StatementResult, PgError> {
        let ask = ReadAsk {
            consistency: if s.token.is_some() {
                Consistency::Session
            } else {
                Consistency::Stale
            },
            max_lag: None,
            position: s.token,
            wait: service::DEFAULT_SESSION_WAIT,
            may_forward: true,
        };
        let limits = self.limits(s)?;
        if let ReadRoute::Forward { url, .. } = service::plan_read(&self.state, ask).await? {
            let (columns, rows) = self
                .remote(s, url)
                .with_timeout(self.asked_timeout(s))
                .query(st)
                .await?;
            return Ok(StatementResult {
                columns: Some(columns),
                rows: Some(rows),
                ..Default::default()
            });
        }
        let r = self.state.engine.query_with(st, limits).await?;
        Ok(StatementResult {
            columns: Some(r.rows.columns),
            rows: Some(r.rows.rows),
            decltypes: Some(r.rows.decltypes),
            ..Default::default()
        })
    }

    /// Writes: inside a transaction block through its lease (opened on first use), otherwise as
    /// one transaction of their own, committed in the session's commit mode.
    async fn write(
        &self,
        s: &mut Session,
        statements: Vec<Statement>,
    ) -> Result<Vec<StatementResult>, PgError> {
        self.may_write(s)?;
        let limits = self.limits(s)?;
        if s.txn.is_some() {
            self.ensure_lease(s).await?;
            let t = s.txn.as_mut().expect("in a transaction");
            if let Some(Lease::Optimistic(o)) = &t.lease {
                if o.history_len() + statements.len() > MAX_OPTIMISTIC {
                    self.escalate(t).await?;
                }
            }
            t.set_limits(limits);
            if statements.len() > 1 {
                if let Some(Lease::Local(l)) = t.lease.as_mut() {
                    return Ok(l.execute_many(statements).await?);
                }
            }
            let mut out = Vec::with_capacity(statements.len());
            for st in statements {
                let lease = t.lease.as_mut().expect("leased above");
                out.push(match lease {
                    Lease::Optimistic(o) => {
                        let r = o.execute(st.clone()).await?;
                        if r.ddl || (r.wrote && r.result.columns.is_some()) {
                            // DDL, or a write whose returned rows (a new serial id, say) another
                            // transaction's commit could change: run it on the writer, held.
                            self.escalate_without_last(t).await?;
                            t.set_limits(limits);
                            match t.lease.as_mut() {
                                Some(Lease::Local(l)) => l.execute(st).await?,
                                _ => unreachable!("escalated"),
                            }
                        } else {
                            r.result
                        }
                    }
                    Lease::Local(l) => l.execute(st).await?,
                    Lease::Remote(r) => r.execute(st).await?,
                });
            }
            return Ok(out);
        }
        let mode = self.effective_commit(s, None);
        match self.primary(s)? {
            None => {
                let committed = self.state.engine.execute_with(statements, limits).await?;
                self.confirmed(s, mode, committed).await
            }
            Some(primary) => {
                let r = primary
                    .with_timeout(self.asked_timeout(s))
                    .execute(statements, s.commit)
                    .await?;
                service::advance(&mut s.token, r.position);
                s.notices.extend(r.warning);
                Ok(r.results)
            }
        }
    }

    /// With `--users`: whether the session's user may write (role `write` or `admin`); 42501
    /// otherwise, before anything runs.
    fn may_write(&self, s: &Session) -> Result<(), PgError> {
        if self.state.config.users.is_none() {
            return Ok(());
        }
        let refused = |who: String| {
            PgError::new(
                super::sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("permission denied: {who}; writes need role write"),
            )
        };
        match &s.principal {
            Some(p) => crate::auth::authorize(p, crate::auth::Role::Write)
                .map_err(|_| refused(format!("user \"{}\" has role {}", p.name, p.role.as_str()))),
            None => Err(refused("the session has no user".into())),
        }
    }

    async fn ensure_lease(&self, s: &mut Session) -> Result<(), PgError> {
        if let Err(e) = self.may_write(s) {
            return Err(if s.txn.as_ref().is_some_and(|t| t.pessimistic) {
                holds_the_writer(e)
            } else {
                e
            });
        }
        if s.txn.as_ref().is_some_and(|t| t.lease.is_some()) {
            return Ok(());
        }
        let lease = match self.primary(s)? {
            None if s.txn.as_ref().is_some_and(|t| t.pessimistic) => Lease::Local(
                self.state
                    .engine
                    .begin(self.state.config.txn_idle_timeout)
                    .await?,
            ),
            None => Lease::Optimistic(
                self.state
                    .engine
                    .begin_optimistic(self.state.config.txn_idle_timeout),
            ),
            Some(p) => Lease::Remote(p.with_timeout(self.asked_timeout(s)).begin().await?),
        };
        if let Some(t) = &mut s.txn {
            t.lease = Some(lease);
        }
        Ok(())
    }

    /// Moves an optimistic transaction onto the writer: opens an interactive transaction and
    /// replays what the client ran, checking it gives the same results (else a serialization
    /// failure: the client's view cannot be kept).
    async fn escalate(&self, t: &mut TxnState) -> Result<(), PgError> {
        if !matches!(t.lease, Some(Lease::Optimistic(_))) {
            return Ok(());
        }
        let r = self.escalate_inner(t).await;
        if let Err(e) = &r {
            // The statements run so far are gone: the transaction cannot go on.
            t.lost = true;
            t.aborted = true;
            if e.sqlstate != "40001" {
                return Err(PgError::new(
                    "40001",
                    format!("could not serialize access: moving the transaction onto the writer failed ({}); retry the transaction", e.message),
                ));
            }
        }
        r
    }

    async fn escalate_inner(&self, t: &mut TxnState) -> Result<(), PgError> {
        let Some(Lease::Optimistic(o)) = t.lease.take() else {
            return Ok(());
        };
        let (history, savepoints) = o.into_history()?;
        let n = history.len();
        let mut l = self
            .state
            .engine
            .begin(self.state.config.txn_idle_timeout)
            .await?;
        for (i, (st, expect)) in history.into_iter().enumerate() {
            for (name, _) in savepoints.iter().filter(|(_, at)| *at == i) {
                l.savepoint(SavepointOp::Create, name).await?;
            }
            let got = l.execute(st).await?;
            if !got.same_answer(&expect) {
                l.rollback().await;
                return Err(PgError::new(
                    "40001",
                    "could not serialize access due to concurrent update: a statement of this transaction gives another result than it gave; retry the transaction",
                ));
            }
        }
        for (name, _) in savepoints.iter().filter(|(_, at)| *at >= n) {
            l.savepoint(SavepointOp::Create, name).await?;
        }
        t.lease = Some(Lease::Local(l));
        Ok(())
    }

    /// [`Runner::escalate`] without the statement just run speculatively (it runs again held).
    async fn escalate_without_last(&self, t: &mut TxnState) -> Result<(), PgError> {
        if let Some(Lease::Optimistic(o)) = &mut t.lease {
            o.forget_last();
        }
        self.escalate(t).await
    }

    async fn savepoint(
        &self,
        s: &mut Session,
        (op, name): (SavepointOp, String),
    ) -> Result<Outcome, PgError> {
        if s.txn.is_none() {
            return Err(PgError::new(
                "25P01",
                format!("{} can only be used in transaction blocks", op_sql(op)),
            ));
        }
        let unleased = s.txn.as_ref().is_some_and(|t| t.lease.is_none());
        if unleased && self.may_write(s).is_err() {
            // A read user's block: it never holds the writer, its savepoints are names.
            let t = s.txn.as_mut().expect("in a transaction");
            return read_savepoint(&mut t.read_savepoints, op, name);
        }
        self.ensure_lease(s).await?;
        let lease = s
            .txn
            .as_mut()
            .and_then(|t| t.lease.as_mut())
            .expect("leased above");
        let r = match lease {
            Lease::Optimistic(o) => o.savepoint(op, &name).map_err(PgError::from),
            Lease::Local(t) => t.savepoint(op, &name).await.map_err(PgError::from),
            Lease::Remote(t) => {
                let op = match op {
                    SavepointOp::Create => "create",
                    SavepointOp::Release => "release",
                    SavepointOp::RollbackTo => "rollback_to",
                };
                t.savepoint(op, &name).await
            }
        };
        r.map_err(|e| {
            if e.message.contains("does not exist") {
                PgError::new(INVALID_SAVEPOINT, e.message)
            } else {
                e
            }
        })?;
        let tag = match op {
            SavepointOp::Create => "SAVEPOINT",
            SavepointOp::Release => "RELEASE",
            SavepointOp::RollbackTo => "ROLLBACK",
        };
        Ok(Outcome::Done {
            tag: tag.into(),
            rows: None,
        })
    }

    /// `ROLLBACK TO SAVEPOINT` inside a failed transaction is allowed: it recovers the transaction.
    pub async fn rollback_to(
        &self,
        s: &mut Session,
        sql: &str,
    ) -> Option<Result<Outcome, PgError>> {
        let (op, name) = savepoint_of(sql)?;
        if op != SavepointOp::RollbackTo {
            return None;
        }
        let t = s.txn.as_mut()?;
        if t.lost {
            return Some(Err(PgError::aborted()));
        }
        if t.lease.is_none() && t.aborted {
            // The failure was before any write: nothing to undo, but the savepoint must exist
            // (a read user's block keeps their names).
            if self.may_write(s).is_err() {
                let t = s.txn.as_mut()?;
                let r = read_savepoint(&mut t.read_savepoints, op, name);
                if r.is_ok() {
                    t.aborted = false;
                }
                return Some(r);
            }
            let t = s.txn.as_mut()?;
            t.aborted = false;
            return Some(Ok(Outcome::Done {
                tag: "ROLLBACK".into(),
                rows: None,
            }));
        }
        let r = self.savepoint(s, (op, name)).await;
        if r.is_ok() {
            if let Some(t) = &mut s.txn {
                t.aborted = false;
            }
        }
        Some(r)
    }

    async fn rollback(&self, s: &mut Session) -> Outcome {
        match s.txn.take() {
            None => s.notices.push("there is no transaction in progress".into()),
            Some(t) => match t.lease {
                Some(Lease::Optimistic(o)) => o.rollback(),
                Some(Lease::Local(l)) => l.rollback().await,
                Some(Lease::Remote(r)) => r.rollback().await,
                None => {}
            },
        }
        Outcome::End("ROLLBACK")
    }

    async fn commit(&self, s: &mut Session) -> Result<Outcome, PgError> {
        let Some(t) = s.txn.take() else {
            s.notices.push("there is no transaction in progress".into());
            return Ok(Outcome::End("COMMIT"));
        };
        if t.aborted {
            drop(t.lease);
            return Ok(Outcome::End("ROLLBACK"));
        }
        let mode = self.effective_commit(s, t.local_commit);
        match t.lease {
            None => {}
            Some(Lease::Optimistic(o)) => {
                let committed = o.commit().await?;
                self.confirmed(s, mode, committed).await?;
            }
            Some(Lease::Local(l)) => {
                let committed = l.commit().await?;
                self.confirmed(s, mode, committed).await?;
            }
            Some(Lease::Remote(r)) => {
                let c = r.commit(t.local_commit.or(s.commit)).await?;
                service::advance(&mut s.token, c.position);
                s.notices.extend(c.warning);
            }
        }
        Ok(Outcome::End("COMMIT"))
    }

    /// The column names of a table, in order.
    async fn table_columns(&self, table: &str) -> Result<Vec<String>, PgError> {
        let d = self
            .state
            .engine
            .describe(format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))
            .await?;
        Ok(d.columns.into_iter().map(|(n, _)| n).collect())
    }

    /// Receives COPY data.
    pub fn copy_data(&self, s: &mut Session, data: &[u8]) -> Result<(), PgError> {
        match &mut s.copy {
            Some((_, buf)) => {
                if buf.len() + data.len() > (1 << 30) {
                    s.copy = None;
                    s.fail();
                    return Err(PgError::new(
                        "54000",
                        "COPY data larger than 1 GiB: load it in parts",
                    ));
                }
                buf.extend_from_slice(data);
                Ok(())
            }
            None => Err(PgError::new("08P01", "COPY data without COPY FROM STDIN")),
        }
    }

    /// Loads the COPY data received, as one transaction (or inside the session's), and answers
    /// how many rows.
    pub async fn copy_done(&self, s: &mut Session) -> Result<usize, PgError> {
        let Some((copy, data)) = s.copy.take() else {
            return Err(PgError::new("08P01", "COPY done without COPY FROM STDIN"));
        };
        let r = self.load(s, &copy, &data).await;
        if r.is_err() {
            s.fail();
        }
        r
    }

    async fn load(&self, s: &mut Session, copy: &CopyIn, data: &[u8]) -> Result<usize, PgError> {
        let rows = scribe_pgsql::parse_copy_rows(copy, data)?;
        let columns = match &copy.columns {
            Some(c) => c.clone(),
            None => self.table_columns(&copy.table).await?,
        };
        let sql = scribe_pgsql::copy_insert_sql(&copy.table, &columns);
        let n = rows.len();
        let statements: Vec<Statement> = rows
            .into_iter()
            .map(|r| {
                Statement::with_params(
                    sql.clone(),
                    r.into_iter()
                        .map(|v| v.map_or(Value::Null, Value::Text))
                        .collect(),
                )
            })
            .collect();
        if statements.is_empty() {
            return Ok(0);
        }
        self.write(s, statements).await?;
        Ok(n)
    }

    /// Abandons a COPY the client failed.
    pub fn copy_fail(&self, s: &mut Session) {
        s.copy = None;
        s.fail();
    }

    /// Whether the session is inside a transaction block.
    pub fn in_transaction(s: &Session) -> bool {
        s.txn.is_some()
    }
}

fn op_sql(op: SavepointOp) -> &'static str {
    match op {
        SavepointOp::Create => "SAVEPOINT",
        SavepointOp::Release => "RELEASE SAVEPOINT",
        SavepointOp::RollbackTo => "ROLLBACK TO SAVEPOINT",
    }
}

/// [`Runner::may_write`]'s 42501 for a statement or block that would hold the writer, saying so.
fn holds_the_writer(e: PgError) -> PgError {
    PgError::new(
        e.sqlstate,
        format!("{} (SELECT ... FOR UPDATE, REPEATABLE READ and SERIALIZABLE hold the writer; a read user's block runs at READ COMMITTED)", e.message),
    )
}

/// A savepoint operation in a block without a writer side: kept as names, in order.
fn read_savepoint(
    names: &mut Vec<String>,
    op: SavepointOp,
    name: String,
) -> Result<Outcome, PgError> {
    let tag = match op {
        SavepointOp::Create => {
            names.push(name);
            "SAVEPOINT"
        }
        SavepointOp::Release | SavepointOp::RollbackTo => {
            let Some(at) = names.iter().rposition(|n| n.eq_ignore_ascii_case(&name)) else {
                return Err(PgError::new(
                    INVALID_SAVEPOINT,
                    format!("savepoint \"{name}\" does not exist"),
                ));
            };
            if op == SavepointOp::Release {
                names.truncate(at);
                "RELEASE"
            } else {
                names.truncate(at + 1);
                "ROLLBACK"
            }
        }
    };
    Ok(Outcome::Done {
        tag: tag.into(),
        rows: None,
    })
}

/// `SAVEPOINT x`, `RELEASE [SAVEPOINT] x`, `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x`.
pub fn savepoint_of(sql: &str) -> Option<(SavepointOp, String)> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let name = |i: usize| -> Option<String> {
        let raw = sql.trim().trim_end_matches(';').split_whitespace().nth(i)?;
        Some(raw.trim_matches('"').to_string())
    };
    match w.as_slice() {
        ["SAVEPOINT", _] => Some((SavepointOp::Create, name(1)?)),
        ["RELEASE", "SAVEPOINT", _] => Some((SavepointOp::Release, name(2)?)),
        ["RELEASE", _] => Some((SavepointOp::Release, name(1)?)),
        ["ROLLBACK", "TO", "SAVEPOINT", _] => Some((SavepointOp::RollbackTo, name(3)?)),
        ["ROLLBACK", "TO", _] => Some((SavepointOp::RollbackTo, name(2)?)),
        ["ROLLBACK", "WORK" | "TRANSACTION", "TO", "SAVEPOINT", _] => {
            Some((SavepointOp::RollbackTo, name(4)?))
        }
        ["ROLLBACK", "WORK" | "TRANSACTION", "TO", _] => Some((SavepointOp::RollbackTo, name(3)?)),
        _ => None,
    }
}

/// Refuses what the session layer cannot do.
pub fn unsupported(what: &str) -> PgError {
    PgError::new(
        FEATURE_NOT_SUPPORTED,
        format!("{what} is not supported by Scribe"),
    )
}

/// What the raw text of a statement says beyond its translation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// `SELECT ... FOR UPDATE / FOR SHARE`: rows the transaction means to change.
    pub locking: bool,
    /// `ISOLATION LEVEL SERIALIZABLE` or `REPEATABLE READ` asked for.
    pub serializable: bool,
}

impl Hints {
    /// Reads them off a statement's text.
    pub fn of(sql: &str) -> Hints {
        let up = sql.to_ascii_uppercase();
        let words: Vec<&str> = up.split_whitespace().collect();
        let has = |seq: &[&str]| words.windows(seq.len()).any(|w| w == seq);
        Hints {
            locking: has(&["FOR", "UPDATE"])
                || has(&["FOR", "SHARE"])
                || has(&["FOR", "NO", "KEY", "UPDATE"])
                || has(&["FOR", "KEY", "SHARE"]),
            serializable: has(&["ISOLATION", "LEVEL", "SERIALIZABLE"])
                || has(&["ISOLATION", "LEVEL", "REPEATABLE", "READ"]),
        }
    }
}

/// Replaces SQLite's clock keywords outside quotes with the transaction's start time.
fn freeze_time(sql: &str, at: std::time::SystemTime) -> String {
    let up = sql.to_ascii_uppercase();
    if !up.contains("CURRENT_") {
        return sql.to_string();
    }
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let date = format!("{y:04}-{m:02}-{d:02}");
    let time = format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    let mut out = String::with_capacity(sql.len() + 16);
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            out.push(c as char);
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == b'\'' || c == b'"' {
            quote = Some(c);
            out.push(c as char);
            i += 1;
            continue;
        }
        let rest = &up[i..];
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let mut replaced = false;
        if word_start {
            for (kw, value) in [
                ("CURRENT_TIMESTAMP", format!("'{date} {time}'")),
                ("CURRENT_DATE", format!("'{date}'")),
                ("CURRENT_TIME", format!("'{time}'")),
            ] {
                let end = i + kw.len();
                let word_end = end >= bytes.len()
                    || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
                if rest.starts_with(kw) && word_end {
                    out.push_str(&value);
                    i = end;
                    replaced = true;
                    break;
                }
            }
        }
        if !replaced {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Whether a statement's result may differ when it runs again on the same data.
fn nondeterministic(sql: &str) -> bool {
    let up = sql.to_ascii_uppercase();
    [
        "RANDOM(",
        "RANDOMBLOB(",
        "GEN_RANDOM_UUID",
        "'NOW'",
        "CHANGES(",
        "LAST_INSERT_ROWID(",
    ]
    .iter()
    .any(|f| up.contains(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_are_read_as_pgoptions_writes_them() {
        assert_eq!(
            startup_options("-c statement_timeout=60s --scribe.commit=sync -c a=b\\ c"),
            vec![
                ("statement_timeout".to_string(), "60s".to_string()),
                ("scribe.commit".to_string(), "sync".to_string()),
                ("a".to_string(), "b c".to_string()),
            ]
        );
        assert!(startup_options("  -c  ").is_empty());
    }

    #[test]
    fn clock_keywords_become_the_transactions_time_outside_quotes() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(
            freeze_time(
                "INSERT INTO t VALUES (CURRENT_TIMESTAMP, 'CURRENT_DATE', current_date)",
                at
            ),
            "INSERT INTO t VALUES ('2023-11-14 22:13:20', 'CURRENT_DATE', '2023-11-14')"
        );
        assert_eq!(
            freeze_time("SELECT my_current_timestamp_col FROM t", at),
            "SELECT my_current_timestamp_col FROM t"
        );
    }

    #[test]
    fn hints_see_locking_reads_and_strict_isolation() {
        assert!(Hints::of("select * from t where id = 1 for update").locking);
        assert!(Hints::of("SELECT 1 FOR\n SHARE").locking);
        assert!(Hints::of("BEGIN ISOLATION LEVEL SERIALIZABLE").serializable);
        assert!(Hints::of("begin transaction isolation level repeatable read").serializable);
        assert!(!Hints::of("BEGIN ISOLATION LEVEL READ COMMITTED").serializable);
    }
}
