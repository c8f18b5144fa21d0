//! Errors of the change log, shaped by what the caller does next: a failed append or write leaves
//! the log as it was (answer the client, carry on), a failed fsync or a corrupt segment means the
//! log cannot be trusted and the node must stop writing.

use std::io;
use std::path::PathBuf;

use scribe_core::{Lsn, Term};

/// What went wrong in the change log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A segment holds a damaged record that is not a torn tail: start-up must stop.
    #[error("corrupt change log: segment {} at byte offset {offset}: {reason}", segment.display())]
    Corrupt {
        /// The damaged segment file.
        segment: PathBuf,
        /// Byte offset of the first bad frame in that file.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// Writing a batch failed (for example the disk is full). Nothing of the batch is in the log;
    /// the log is usable again.
    #[error("write change log segment {}: {source}", segment.display())]
    Write {
        /// The segment being written.
        segment: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// fsync failed: what the disk holds is unknown, so the log refuses every further write.
    #[error("fsync change log segment {}: {source}; the log refuses further writes until restart", segment.display())]
    Fsync {
        /// The segment being synced.
        segment: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// An earlier fsync failed; the log refuses writes until the process restarts and recovers.
    #[error("the change log refuses writes after an earlier fsync failure; restart the node")]
    Poisoned,
    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, as a verb phrase.
        context: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A record of an older term than the log's newest one (fencing).
    #[error("stale term: record of term {got} after the log's term {last}")]
    StaleTerm {
        /// The newest term in the log.
        last: Term,
        /// The term of the refused record.
        got: Term,
    },
    /// A record whose LSN does not follow the log's last one.
    #[error("out of order: expected lsn {expected}, got {got}")]
    OutOfOrder {
        /// The LSN the log expects next.
        expected: Lsn,
        /// The LSN of the refused record.
        got: Lsn,
    },
    /// The requested LSN is no longer in the log (its segment was deleted).
    #[error("lsn {requested} is no longer in the log (oldest is {oldest})")]
    Truncated {
        /// What was asked for.
        requested: Lsn,
        /// The oldest LSN still held.
        oldest: Lsn,
    },
    /// A record larger than the format allows.
    #[error("record of {0} bytes is larger than the {max} byte limit", max = crate::record::MAX_BODY)]
    TooLarge(usize),
    /// A record whose LSN is past [`crate::record::MAX_LSN`].
    #[error("record lsn {0} is past the largest possible lsn {max}", max = crate::record::MAX_LSN)]
    LsnOutOfRange(scribe_core::Lsn),
    /// The term history file is damaged and cannot be rebuilt (the segments holding the first
    /// records of some terms were deleted): start-up must stop.
    #[error("corrupt term history {}: {reason}; it cannot be rebuilt because the log no longer starts at lsn 1", path.display())]
    CorruptTerms {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A cut was asked for below the records the log holds: they are gone already (a caller
    /// that must undo them re-seeds from a snapshot instead).
    #[error("cannot cut the change log after lsn {at}: its oldest record is lsn {first}, the records before it are gone")]
    CutBelowStart {
        /// Where the cut was asked for.
        at: Lsn,
        /// The oldest LSN held.
        first: Lsn,
    },
    /// A cut was asked for after the end of the log.
    #[error("cannot cut the change log after lsn {at}: it ends at lsn {last}")]
    CutPastEnd {
        /// Where the cut was asked for.
        at: Lsn,
        /// The last LSN in the log.
        last: Lsn,
    },
    /// A cut was asked for while appended records are not yet synced; sync or discard them first.
    #[error("cannot cut the change log while {records} appended records are not yet synced")]
    CutPending {
        /// Records appended since the last sync.
        records: u64,
    },
}

impl LogError {
    /// Whether the log can no longer be written and the node must stop taking writes.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            LogError::Fsync { .. }
                | LogError::Poisoned
                | LogError::Corrupt { .. }
                | LogError::CorruptTerms { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> LogError {
        LogError::Io {
            context: context.into(),
            source,
        }
    }
}
