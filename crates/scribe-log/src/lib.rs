//! Scribe's write-ahead change log.
//!
//! The change log is the source of truth of a Scribe node: every committed transaction is one
//! [`Record`] carrying its `(term, lsn)`, appended to segment files and fsynced before the
//! transaction becomes visible in SQLite. This crate owns the record format, the segment files,
//! group commit (many appends, one write and one fsync), reading from an LSN, recovery at start-up
//! (a torn tail is cut, corruption anywhere else stops start-up), the history of terms, cutting
//! the log's tail (undoing unreplicated records) and deleting old segments. It
//! knows nothing of what a record's payload means: that is `scribe-sqlite`'s business.
//!
//! The active segment is zero-filled ahead of its records (up to 1 MiB at a time), so that the
//! fsync of each batch writes only the batch's data, not also the file's grown size. A segment
//! file's length is therefore not where its records end: zeros after the last record are padding,
//! which recovery and readers skip; closed segments hold none. Read segment files through this
//! crate ([`segment::scan`], [`LogReader`]), never by their length.
//!
//! Modules:
//! - [`record`]: the record and its checksummed, versioned frame.
//! - [`segment`]: segment file names, headers, and scanning a segment's frames and padding.
//! - [`log`]: the [`Log`] itself: recovery, append, preallocation, sync, rotation, deletion,
//!   cutting the tail.
//! - [`terms`]: the term history (each term and its first LSN) and its file.
//! - [`reader`]: iterating durable records from an LSN.
//! - [`error`]: [`LogError`], split into "this append failed" and "this log must stop".

pub mod error;
pub mod log;
pub mod reader;
pub mod record;
pub mod segment;
pub mod terms;

pub use error::LogError;
pub use log::{Log, LogOptions, Recovery, SyncReport};
pub use reader::LogReader;
pub use record::Record;
pub use terms::Terms;
