//! The pgwire handlers of one connection: simple and extended query protocol, COPY FROM STDIN,
//! on top of the connection's [`Session`].

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{stream, Sink, SinkExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionGuard, ConnectionHandle, ConnectionManager, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::response::{CommandComplete, NoticeResponse};
use pgwire::messages::PgWireBackendMessage;
use scribe_pgsql::{Command, Kind};
use tokio::sync::Mutex;

use super::session::{savepoint_of, Hints, Outcome, Runner, Session};
use super::sqlstate::PgError;
use super::types;

/// A parsed statement: the PostgreSQL text and what it became.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The command.
    pub command: Arc<Command>,
    /// What its text says beyond the translation.
    pub hints: Hints,
    /// Highest `$n` it uses.
    pub params: usize,
}

/// Translates statements for the extended protocol.
pub struct Parser {
    /// The connection's session: a statement that does not parse fails its transaction.
    session: Arc<Mutex<Session>>,
    /// Whether the node is a multi-master one.
    multi_master: bool,
}

/// Parses one PostgreSQL statement (savepoint statements are the session's own) for a node
/// that is `multi_master` or not.
pub fn parse(sql: &str, multi_master: bool) -> Result<Parsed, PgError> {
    let command = if savepoint_of(sql).is_some() {
        Command::Sql {
            sql: sql.trim().trim_end_matches(';').to_string(),
            kind: Kind::Other {
                tag: "SAVEPOINT".into(),
            },
        }
    } else {
        let info = scribe_pgsql::SessionInfo {
            multi_master,
            ..scribe_pgsql::SessionInfo::default()
        };
        scribe_pgsql::translate_for(sql, &info)?
    };
    Ok(Parsed {
        hints: Hints::of(sql),
        command: Arc::new(command),
        params: scribe_pgsql::param_count(sql),
    })
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Parsed;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Parsed>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let p = match parse(sql, self.multi_master) {
            Ok(p) => p,
            Err(e) => {
                self.session.lock().await.fail();
                return Err(wire(e));
            }
        };
        if matches!(*p.command, Command::Empty) {
            return Ok(None);
        }
        Ok(Some(p))
    }

    fn get_parameter_types(&self, stmt: &Parsed) -> PgWireResult<Vec<Type>> {
        Ok(vec![Type::TEXT; stmt.params])
    }

    fn get_result_schema(
        &self,
        _stmt: &Parsed,
        _format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(Vec::new())
    }
}

/// One connection.
pub struct Conn {
    pub runner: Arc<Runner>,
    pub session: Arc<Mutex<Session>>,
    parser: Arc<Parser>,
    /// A read run early to describe its portal, kept for the Execute that follows (keyed by the
    /// portal instance: a portal bound again is a new instance).
    prefetched: Mutex<Option<(PrefetchKey, Outcome)>>,
    manager: Arc<ConnectionManager>,
    /// The cancel handle and its registration (unregistered when the connection goes).
    cancel: std::sync::Mutex<Option<(Arc<ConnectionHandle>, ConnectionGuard)>>,
}

impl Conn {
    /// A new connection's handlers.
    pub fn new(runner: Arc<Runner>, manager: Arc<ConnectionManager>) -> Conn {
        let session = Arc::new(Mutex::new(Session::default()));
        let multi_master = runner.state.mm.is_some();
        Conn {
            runner,
            session: session.clone(),
            parser: Arc::new(Parser {
                session,
                multi_master,
            }),
            prefetched: Mutex::new(None),
            manager,
            cancel: std::sync::Mutex::new(None),
        }
    }

    /// This connection's cancel handle, registered on first use under its key.
    fn cancel_handle<C: ClientInfo>(&self, client: &C) -> Arc<ConnectionHandle> {
        let mut c = self.cancel.lock().expect("cancel handle");
        if let Some((h, _)) = &*c {
            return h.clone();
        }
        let (pid, key) = client.pid_and_secret_key();
        let (h, guard) = self.manager.register(pid, key);
        *c = Some((h.clone(), guard));
        h
    }

    /// The session, knowing who logged in (pg/auth.rs left it in the connection's extensions)
    /// from whichever message comes first — a query, or a Describe that runs a read.
    async fn session_for<C: ClientInfo>(&self, client: &C) -> tokio::sync::MutexGuard<'_, Session> {
        let mut s = self.session.lock().await;
        if s.principal.is_none() {
            s.principal = client
                .session_extensions()
                .get::<crate::auth::Principal>()
                .map(|p| (*p).clone());
        }
        s
    }

    /// Runs a parsed command, or fails the session's block when it could not even be parsed or
    /// its parameters decoded.
    async fn run_or_fail<C: ClientInfo>(
        &self,
        client: &C,
        s: &mut Session,
        input: Result<(Arc<Command>, Vec<scribe_sqlite::Value>, Hints), PgError>,
    ) -> Result<Outcome, PgError> {
        if !s.started {
            // The startup packet's `options` (`PGOPTIONS='-c statement_timeout=60s'`): settings
            // as if SET first; a bad one fails every statement (PostgreSQL refuses the
            // connection).
            if let Some(options) = client.metadata().get("options").cloned() {
                for (name, value) in super::session::startup_options(&options) {
                    self.runner.set_from_startup(s, &name, &value)?;
                }
            }
            s.started = true;
        }
        match input {
            Ok((command, params, hints)) => {
                self.run_cancellable(client, s, &command, params, hints)
                    .await
            }
            Err(e) => {
                s.fail();
                Err(e)
            }
        }
    }

    /// Runs a command; a cancel request interrupts it only while it is a read outside a
    /// transaction block. A write or a commit already sent runs to its end — its outcome could
    /// not be told otherwise.
    async fn run_cancellable<C: ClientInfo>(
        &self,
        client: &C,
        s: &mut Session,
        command: &Command,
        params: Vec<scribe_sqlite::Value>,
        hints: Hints,
    ) -> Result<Outcome, PgError> {
        let read = matches!(
            command,
            Command::Sql {
                kind: Kind::Read,
                ..
            } | Command::Show { .. }
        ) && !Runner::in_transaction(s);
        if !read {
            return self.runner.run(s, command, params, hints).await;
        }
        let cancelled = self.cancel_handle(client).start_query().await;
        tokio::select! {
            r = self.runner.run(s, command, params, hints) => r,
            _ = cancelled => Err(PgError::new(
                super::sqlstate::QUERY_CANCELED,
                "canceling statement due to user request",
            )),
        }
    }
}

async fn send_notices<C>(client: &mut C, s: &mut Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for n in s.notices.drain(..) {
        client
            .feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(
                ErrorInfo::new("WARNING".into(), "01000".into(), n),
            )))
            .await?;
    }
    Ok(())
}

fn to_response(outcome: Outcome, format: &Format) -> Response {
    match outcome {
        Outcome::Rows { columns, rows, tag } => {
            let types: Vec<Type> = columns.iter().map(|c| c.1.clone()).collect();
            let fields = Arc::new(types::fields(&columns, format));
            let mut encoder = DataRowEncoder::new(fields.clone());
            let encoded: Vec<PgWireResult<_>> = rows
                .iter()
                .map(|r| types::encode_row(&mut encoder, &types, r))
                .collect();
            let mut q = QueryResponse::new(fields, stream::iter(encoded));
            q.set_command_tag(&tag);
            Response::Query(q)
        }
        Outcome::Done { tag, rows } => {
            let (cmd, oid) = match tag.strip_suffix(" 0") {
                Some(c) if rows.is_some() => (c.to_string(), Some(0)),
                _ => (tag, None),
            };
            let mut t = Tag::new(&cmd);
            if let Some(o) = oid {
                t = t.with_oid(o);
            }
            if let Some(n) = rows {
                t = t.with_rows(n);
            }
            Response::Execution(t)
        }
        Outcome::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Outcome::End(tag) => Response::TransactionEnd(Tag::new(tag)),
        Outcome::CopyIn { columns } => {
            Response::CopyIn(CopyResponse::new(0, columns, stream::empty()))
        }
        Outcome::Empty => Response::EmptyQuery,
    }
}

fn describe_fields(outcome: &Outcome, format: &Format) -> Vec<FieldInfo> {
    match outcome {
        Outcome::Rows { columns, .. } => types::fields(columns, format),
        _ => Vec::new(),
    }
}

fn err_response(e: PgError) -> Response {
    Response::Error(Box::new(ErrorInfo::new(
        "ERROR".into(),
        e.sqlstate.into(),
        e.message,
    )))
}

#[async_trait]
impl SimpleQueryHandler for Conn {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut out = Vec::new();
        let mut s = self.session_for(client).await;
        let statements = scribe_pgsql::split(query);
        let mm = self.parser.multi_master;
        let parsed: Vec<Result<Parsed, PgError>> =
            statements.iter().map(|q| parse(q, mm)).collect();
        // Several statements in one message outside a block run as one implicit transaction,
        // as in PostgreSQL: all or nothing.
        let implicit = parsed.len() > 1
            && !Runner::in_transaction(&s)
            && parsed.iter().all(|p| {
                matches!(p, Ok(p) if !matches!(
                    &*p.command,
                    Command::Begin | Command::Commit | Command::Rollback | Command::CopyIn(_)
                ) && p.hints == Hints::default())
            });
        if implicit {
            self.runner
                .run(&mut s, &Command::Begin, Vec::new(), Hints::default())
                .await
                .map_err(wire)?;
        }
        let mut failed = false;
        for p in parsed {
            let result = self
                .run_or_fail(client, &mut s, p.map(|p| (p.command, Vec::new(), p.hints)))
                .await;
            send_notices(client, &mut s).await?;
            match result {
                Ok(o) => {
                    let copy = matches!(o, Outcome::CopyIn { .. });
                    out.push(to_response(o, &Format::UnifiedText));
                    if copy {
                        break;
                    }
                }
                Err(e) => {
                    failed = true;
                    if implicit {
                        self.runner
                            .run(&mut s, &Command::Rollback, Vec::new(), Hints::default())
                            .await
                            .map_err(wire)?;
                        s.notices.clear();
                    }
                    idle_unless_in_block(client, &s);
                    if out.is_empty() {
                        return Err(wire(e));
                    }
                    out.push(err_response(e));
                    break;
                }
            }
        }
        if implicit && !failed {
            let r = self
                .runner
                .run(&mut s, &Command::Commit, Vec::new(), Hints::default())
                .await;
            send_notices(client, &mut s).await?;
            if let Err(e) = r {
                out.push(err_response(e));
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Conn {
    type Statement = Parsed;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Parsed>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let early = {
            let mut p = self.prefetched.lock().await;
            match p.take() {
                Some((key, o)) if key == prefetch_key(portal) => Some(o),
                _ => None,
            }
        };
        let mut s = self.session_for(client).await;
        let result = match early {
            Some(o) => Ok(o),
            None => {
                let statement = &portal.statement.statement;
                let input = types::decode_params(
                    &portal.parameters,
                    &portal.statement.parameter_types,
                    &portal.parameter_format,
                )
                .map(|params| (statement.command.clone(), params, statement.hints));
                self.run_or_fail(client, &mut s, input).await
            }
        };
        send_notices(client, &mut s).await?;
        match result {
            Ok(o) => Ok(to_response(o, &portal.result_column_format)),
            Err(e) => {
                idle_unless_in_block(client, &s);
                Err(wire(e))
            }
        }
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<Parsed>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let n = target.statement.params.max(target.parameter_types.len());
        let params = (0..n)
            .map(|i| {
                target
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let fields = self.static_fields(&target.statement.command).await?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Parsed>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let command = &portal.statement.statement.command;
        let is_read = matches!(
            &**command,
            Command::Sql {
                kind: Kind::Read,
                ..
            } | Command::Show { .. }
        );
        if !is_read {
            let fields = self.static_fields(command).await?;
            return Ok(DescribePortalResponse::new(fields));
        }
        // Run the read now: its values give the types of computed columns; Execute sends them.
        let mut s = self.session_for(client).await;
        let params = match types::decode_params(
            &portal.parameters,
            &portal.statement.parameter_types,
            &portal.parameter_format,
        ) {
            Ok(p) => p,
            Err(e) => {
                s.fail();
                return Err(wire(e));
            }
        };
        let outcome = self
            .runner
            .run(&mut s, command, params, portal.statement.statement.hints)
            .await
            .map_err(wire)?;
        let fields = describe_fields(&outcome, &portal.result_column_format);
        *self.prefetched.lock().await = Some((prefetch_key(portal), outcome));
        Ok(DescribePortalResponse::new(fields))
    }
}

impl Conn {
    /// Columns a statement returns, from declared types (computed columns are text), without
    /// running it.
    async fn static_fields(&self, command: &Command) -> PgWireResult<Vec<FieldInfo>> {
        match command {
            Command::Sql { sql, .. } if savepoint_of(sql).is_none() => {
                let d = match self.runner.state.engine.describe(sql.clone()).await {
                    Ok(d) => d,
                    // Not describable here (a table created in this session's open transaction):
                    // the answer will say.
                    Err(_) => return Ok(Vec::new()),
                };
                let columns: Vec<(String, Type)> = d
                    .columns
                    .into_iter()
                    .map(|(n, decl)| {
                        let t = decl
                            .as_deref()
                            .and_then(types::from_decltype)
                            .unwrap_or(Type::TEXT);
                        (n, t)
                    })
                    .collect();
                Ok(types::fields(&columns, &Format::UnifiedText))
            }
            Command::Show { name } => Ok(types::fields(
                &[(name.clone(), Type::TEXT)],
                &Format::UnifiedText,
            )),
            _ => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl pgwire::api::copy::CopyHandler for Conn {
    async fn on_copy_data<C>(&self, _client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut s = self.session.lock().await;
        self.runner.copy_data(&mut s, &data.data).map_err(wire)
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut s = self.session.lock().await;
        let n = self.runner.copy_done(&mut s).await;
        send_notices(client, &mut s).await?;
        let n = n.map_err(wire)?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                CommandComplete::from(Tag::new("COPY").with_rows(n)),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut s = self.session.lock().await;
        self.runner.copy_fail(&mut s);
        PgError::new("57014", format!("COPY from stdin failed: {}", fail.message)).into()
    }
}

/// A session error as pgwire's (outside the generic handlers, whose bounds make `From` ambiguous).
fn wire(e: PgError) -> PgWireError {
    e.into()
}

/// What identifies a portal's execution: the portal instance, its statement and its parameters
/// (an address may be reused by a later portal; the whole key then still has to match).
#[derive(PartialEq)]
struct PrefetchKey {
    portal: usize,
    statement: usize,
    params: Vec<Option<bytes::Bytes>>,
}

fn prefetch_key(portal: &Portal<Parsed>) -> PrefetchKey {
    PrefetchKey {
        portal: std::sync::Arc::as_ptr(&portal.state) as *const () as usize,
        statement: std::sync::Arc::as_ptr(&portal.statement) as *const () as usize,
        params: portal.parameters.clone(),
    }
}

/// After an error: a session no longer in a block (a failed COMMIT ended it) is idle, not
/// failed, whatever pgwire would report.
fn idle_unless_in_block<C: ClientInfo>(client: &mut C, s: &Session) {
    if !Runner::in_transaction(s) {
        client.set_transaction_status(TransactionStatus::Idle);
    }
}
