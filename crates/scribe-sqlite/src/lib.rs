//! Scribe's storage engine: the only crate that touches SQLite.
//!
//! It owns the write path of DESIGN.md §2 — one writer thread that runs queued transactions with
//! change capture (session-extension changesets for rows, SQL text for DDL), appends their
//! records to the change log, fsyncs once per batch and then commits SQLite — plus the pool of
//! read connections, start-up replay of the log after the applied position kept in the meta
//! table, and applying a record (replay now, replicas later). It does not own the network, the
//! HTTP API or the log format (`scribe-log`).
//!
//! Modules:
//! - [`engine`]: [`Engine`], opening, recovery and replay, the public handle.
//! - [`writer`]: the writer thread and group commit.
//! - [`gate`]: the write gate: whether the writer takes client writes, and in which term.
//! - [`reader`]: the read pool.
//! - [`occ`]: optimistic transactions: statements run speculatively, replayed and checked at commit.
//! - [`txn`]: interactive transactions (statements across round trips), which lease the writer.
//! - [`rewind`]: undoing this node's own records after a position (a returning old primary).
//! - [`exec`]: binding parameters and collecting rows.
//! - [`budget`]: statement timeouts, size limits and abandoned requests (SQLite's progress handler).
//! - [`capture`]: session-extension change capture and changeset replay.
//! - [`changeset`]: reading, merging and inverting changesets.
//! - [`payload`]: what a record's payload holds.
//! - [`policy`]: what clients' SQL may do (SQLite authorizer).
//! - [`meta`]: the `_scribe_meta` table.
//! - [`mm`]: the multi-master write path: records stamped with origin, sequence and clock, made
//!   from local transactions and applied from other masters.
//! - [`multi_master`]: multi-master rows: their replicated state beside them, and applying a
//!   change to it.
//! - [`value`]: SQL values and parameters in JSON.
//! - [`metrics`]: write-path metrics.
//! - [`error`]: the engine's error type, [`EngineError`].

pub mod budget;
pub mod capture;
pub mod changeset;
pub mod engine;
pub mod error;
pub mod exec;
pub mod gate;
pub mod meta;
pub mod metrics;
pub mod mm;
pub mod multi_master;
pub mod occ;
pub mod payload;
pub mod policy;
pub mod reader;
pub mod rewind;
mod session_ffi;
pub mod txn;
pub mod value;
pub mod versioned;
pub mod writer;

pub use budget::Limits;
pub use engine::{db_path, Engine, EngineOptions, OpenReport, Progress};
pub use error::EngineError;
pub use exec::{Described, Rows, Statement};
pub use gate::WriteGate;
pub use metrics::EngineMetrics;
pub use occ::{Optimistic, Speculated};
pub use reader::QueryResult;
pub use rewind::RewindReport;
pub use txn::{SavepointOp, Transaction};
pub use value::{Params, Value};
pub use writer::{Committed, Retention, StatementResult};
