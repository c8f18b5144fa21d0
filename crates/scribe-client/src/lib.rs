//! The Rust client library for Scribe: the classic setup's two doors — writes to the primary,
//! reads to the replicas — behind one [`Cluster`] handle that carries the position token itself,
//! so read-your-writes needs no thought from the application (DESIGN.md §5).
//!
//! What it owns: finding the primary and the replicas from the nodes' `/v1/status` and finding
//! them again when they change; sending each write to the primary and each read to a healthy
//! replica (round robin, the primary as fallback); the newest position token seen, sent with
//! every read as a session read so the serving replica waits until it has applied it (or forwards
//! the read); retries, only where they are safe. What it does not own: connection pooling beyond
//! `reqwest`'s, transactions spanning several calls (one `execute` call is one transaction),
//! and any caching of results.
//!
//! Retries. A read is idempotent: on a connection error, a lagging or unavailable node, it goes
//! to the next node. A write is sent again only when it provably did not take effect — the
//! connection to the primary could not be made, or the node answered `not_primary` — after
//! discovering the cluster again, a bounded number of times ([`Options::write_retries`]) and for
//! as long as a failover takes ([`Options::failover_wait`], 5 s: an application rides through an
//! automatic failover without an error, its writes resuming on the new primary). A write
//! whose answer is lost (timeout, connection dropped, a server failure) fails with
//! [`Error::OutcomeUnknown`]: it may have committed, and only the application can check. That
//! includes a write sent on a kept-alive connection at the moment the primary crashes: the client
//! cannot tell a crash just before the request from one while it was being handled.
//!
//! Credentials. Against nodes started with `--users`, give [`Options::basic_auth`] or
//! [`Options::bearer_token`]: they go with every request, discovery included, and the user's
//! role decides what it may do. A refusal is [`Error::Unauthenticated`] or
//! [`Error::Forbidden`], never retried.
//!
//! ```no_run
//! use scribe_client::{Cluster, Statement};
//!
//! # async fn run() -> Result<(), scribe_client::Error> {
//! let cluster = Cluster::connect(["http://127.0.0.1:5480", "http://127.0.0.1:5481"]).await?;
//! cluster
//!     .execute(["CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"])
//!     .await?;
//! let created = cluster
//!     .execute([Statement::new("INSERT INTO users (name) VALUES (?)").param("Ada")])
//!     .await?;
//! let id = created.last_insert_id();
//! // Served by a replica, and it sees the insert above: the handle sent its position token.
//! let rows = cluster.query("SELECT name FROM users WHERE id = ?", [id]).await?;
//! assert_eq!(rows.rows[0][0].as_str(), Some("Ada"));
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`cluster`](Cluster) (the handle), [`session`](Session) (a handle with a token of its
//! own), `routing` (discovery, routing and retries: the I/O), `topology` and `retry` (the
//! decisions, without I/O), `token` (the forward-only position token), `transport` (one HTTP
//! round trip), [`statement`](Statement), [`value`](Value), [`answer`](Rows),
//! [`options`](Options), [`error`](Error).

mod answer;
mod cluster;
mod error;
mod options;
mod retry;
mod routing;
mod session;
mod statement;
mod token;
mod topology;
mod transport;
mod value;

pub use answer::{Durability, Executed, Rows, StatementResult};
pub use cluster::{Cluster, ReplicaInfo};
pub use error::Error;
pub use options::{Credentials, Options};
pub use scribe_core::Position;
pub use session::Session;
pub use statement::{CommitMode, Consistency, Statement};
pub use value::{Params, Value};
