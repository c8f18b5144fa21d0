//! The PostgreSQL wire protocol front end (`--pg ADDR`), on the `pgwire` crate: psql, pgbench,
//! psycopg and other libpq clients talk to any node. Simple and extended query protocol,
//! prepared statements, transaction blocks held across round trips (see [`session`]), COPY FROM
//! STDIN, cancel requests, SCRAM-SHA-256 per user with `--users` (see [`auth`]) or with one
//! `--pg-password`, optional TLS.
//!
//! The SQL is PostgreSQL's, translated for SQLite by `scribe-pgsql`; errors carry SQLSTATEs
//! mapped in [`sqlstate`]. On a replica, writes and transaction blocks run on the primary and the
//! session's reads wait for its own writes.
//!
//! Modules: [`session`] (a connection's state and what its statements do), [`handler`] (pgwire's
//! handlers), [`types`] (values and types), [`sqlstate`] (errors), [`remote`] (a replica's calls
//! to its primary).

pub mod auth;
pub mod handler;
pub mod remote;
pub mod session;
pub mod sqlstate;
pub mod types;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    DefaultServerParameterProvider, LoginInfo, Password, ServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{
    ClientInfo, ConnectionManager, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

use crate::state::NodeState;
use handler::Conn;
use session::Runner;

const SCRAM_ITERATIONS: usize = 4096;

/// The server parameters every client is told at startup.
struct Params {
    inner: DefaultServerParameterProvider,
}

impl Params {
    fn new() -> Params {
        let mut inner = DefaultServerParameterProvider::default();
        inner.server_version = scribe_pgsql::SERVER_VERSION.to_string();
        inner.time_zone = "UTC".into();
        inner.scram_iterations = SCRAM_ITERATIONS;
        Params { inner }
    }
}

impl ServerParameterProvider for Params {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        let mut p = self.inner.server_parameters(client)?;
        p.insert("client_encoding".into(), "UTF8".into());
        Some(p)
    }
}

/// Authentication when no password is configured: every client is let in.
struct Trust {
    params: Arc<Params>,
    pids: RandomPidSecretKeyGenerator,
}

#[async_trait]
impl StartupHandler for Trust {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let (pid, key) = self.pids.generate(client);
            client.set_pid_and_secret_key(pid, key);
            // Cancel requests are registered by the connection's handlers (see handler.rs), which
            // decide what a cancel may interrupt.
            finish_authentication(client, self.params.as_ref()).await?;
        }
        Ok(())
    }
}

/// The configured password, salted afresh for each SCRAM exchange.
#[derive(Debug)]
struct PasswordSource {
    password: String,
}

#[async_trait]
impl AuthSource for PasswordSource {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        let salt: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
        let hash = gen_salted_password(&self.password, &salt, SCRAM_ITERATIONS);
        Ok(Password::new(Some(salt), hash))
    }
}

/// How the port authenticates: trust, the one `--pg-password`, or the users file.
enum Startup {
    Trust(Trust),
    Scram(SASLAuthStartupHandler<Params>),
    Users(auth::UsersStartup<Params>),
}

/// What all connections share.
struct Shared {
    runner: Arc<Runner>,
    manager: Arc<ConnectionManager>,
    startup: Arc<Startup>,
    cancel: Arc<DefaultCancelHandler>,
}

/// One connection's handlers.
struct Handlers {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    startup: Arc<ConnStartup>,
}

/// One connection's startup: the port's authentication, and telling the connection's task when
/// the login is done (so the login timeout stops applying).
struct ConnStartup {
    inner: Arc<Startup>,
    logged_in: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl StartupHandler for ConnStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self.inner.as_ref() {
            Startup::Trust(t) => t.on_startup(client, message).await?,
            Startup::Scram(s) => s.on_startup(client, message).await?,
            Startup::Users(u) => u.on_startup(client, message).await?,
        }
        if matches!(
            client.state(),
            pgwire::api::PgWireConnectionState::ReadyForQuery
        ) {
            self.logged_in.notify_one();
        }
        Ok(())
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.conn.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.conn.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        self.conn.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.shared.cancel.clone()
    }
}

fn load_tls(cert: &Path, key: &Path) -> Result<pgwire::tokio::TlsAcceptor, String> {
    crate::tls::server_config(cert, key, &[]).map(pgwire::tokio::TlsAcceptor::from)
}

/// A bound PostgreSQL listener, ready to serve.
pub struct PgServer {
    listener: TcpListener,
    tls: Option<pgwire::tokio::TlsAcceptor>,
}

impl PgServer {
    /// Binds the address and loads the TLS files, if any.
    pub async fn bind(config: &crate::NodeConfig) -> Result<Option<PgServer>, String> {
        let Some(addr) = config.pg_addr else {
            return Ok(None);
        };
        let tls = match &config.pg_tls {
            Some((cert, key)) => Some(load_tls(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("listen for PostgreSQL clients on {addr}: {e}"))?;
        Ok(Some(PgServer { listener, tls }))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves connections until the task is dropped.
    pub async fn serve(self, state: Arc<NodeState>) {
        let manager = Arc::new(ConnectionManager::new());
        let params = Arc::new(Params::new());
        let startup = match (&state.config.users, &state.config.pg_password) {
            (Some(users), _) => {
                Startup::Users(auth::UsersStartup::new(params.clone(), users.clone()))
            }
            (None, None) => Startup::Trust(Trust {
                params: params.clone(),
                pids: RandomPidSecretKeyGenerator::default(),
            }),
            (None, Some(p)) => {
                let mut scram = ScramAuth::new(Arc::new(PasswordSource {
                    password: p.clone(),
                }));
                scram.set_iterations(SCRAM_ITERATIONS);
                Startup::Scram(SASLAuthStartupHandler::new(params.clone()).with_scram(scram))
            }
        };
        let shared = Arc::new(Shared {
            runner: Arc::new(Runner { state }),
            startup: Arc::new(startup),
            cancel: Arc::new(DefaultCancelHandler::new(manager.clone())),
            manager,
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(
            shared.runner.state.config.max_connections,
        ));
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept a PostgreSQL connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, limit = shared.runner.state.config.max_connections, "refused a PostgreSQL connection: --max-connections reached");
                tokio::spawn(too_many_clients(socket, shared.manager.clone()));
                continue;
            };
            let logged_in = Arc::new(tokio::sync::Notify::new());
            let handlers = Handlers {
                shared: shared.clone(),
                conn: Arc::new(Conn::new(shared.runner.clone(), shared.manager.clone())),
                startup: Arc::new(ConnStartup {
                    inner: shared.startup.clone(),
                    logged_in: logged_in.clone(),
                }),
            };
            let tls = self.tls.clone();
            let login_timeout = shared.runner.state.config.pg_login_timeout;
            tokio::spawn(async move {
                let serve = pgwire::tokio::process_socket(socket, tls, handlers);
                tokio::pin!(serve);
                // Until the login is done the connection holds a slot for nobody: bounded.
                let early = tokio::time::timeout(login_timeout, async {
                    tokio::select! {
                        ended = &mut serve => Some(ended),
                        () = logged_in.notified() => None,
                    }
                })
                .await;
                let ended = match early {
                    Err(_) => {
                        tracing::warn!(%peer, timeout = ?login_timeout, "closed a PostgreSQL connection that did not log in in time (--pg-login-timeout)");
                        Ok(())
                    }
                    Ok(Some(ended)) => ended,
                    Ok(None) => serve.await,
                };
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = ?e, "PostgreSQL connection ended");
                }
                drop(slot);
            });
        }
    }
}

/// Answers a client over `--max-connections` as PostgreSQL does: reads its startup packet (after
/// declining TLS, if it asks first), sends `FATAL 53300 sorry, too many clients already` and
/// closes. A cancel request is carried out instead (it is how a client stops a runaway statement
/// on a full node), with no answer, as PostgreSQL. A client that sends nothing within a second
/// is just closed.
async fn too_many_clients(mut socket: tokio::net::TcpStream, manager: Arc<ConnectionManager>) {
    use tokio::io::AsyncWriteExt;
    const SSL_REQUEST: u32 = 80877103;
    const GSSENC_REQUEST: u32 = 80877104;
    const CANCEL_REQUEST: u32 = 80877102;
    let answered = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let (mut code, mut rest) = read_startup_packet(&mut socket).await?;
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            socket.write_all(b"N").await?;
            (code, rest) = read_startup_packet(&mut socket).await?;
        }
        if code == CANCEL_REQUEST && rest.len() >= 8 {
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let key = pgwire::messages::startup::SecretKey::Bytes(rest[4..].to_vec().into());
            manager.cancel(pid, &key).await;
            return socket.shutdown().await;
        }
        let mut fields = Vec::new();
        for (tag, value) in [
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "53300"),
            (b'M', "sorry, too many clients already (--max-connections)"),
        ] {
            fields.push(tag);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&fields);
        socket.write_all(&msg).await?;
        socket.shutdown().await
    })
    .await;
    if let Ok(Err(e)) = answered {
        tracing::debug!(error = %e, "answer a PostgreSQL client over the connection limit");
    }
}

/// Reads one startup-phase packet (length, code, body): its code and body (at most 10 kB of it
/// is kept).
async fn read_startup_packet(
    socket: &mut tokio::net::TcpStream,
) -> std::io::Result<(u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 8];
    socket.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let mut rest = vec![0u8; len.saturating_sub(8).min(10_000)];
    socket.read_exact(&mut rest).await?;
    Ok((code, rest))
}
