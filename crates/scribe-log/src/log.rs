//! The [`Log`]: recovery at open, append, group-commit sync, segment rotation and deletion.
//!
//! One owner (the node's writer) appends records to an in-memory batch and calls
//! [`Log::sync`], which writes the batch with one `pwrite` and makes it durable with one
//! `fdatasync`. Only then may the caller make the batch visible anywhere else.
//!
//! ## Preallocation
//!
//! `fdatasync` after a write that grows a file must also write the inode (its size changed): two
//! disk writes per commit. So the active segment is zero-filled ahead of the records, in chunks
//! of [`PREALLOCATE_BYTES`] (never past the segment size unless a batch needs it), and the chunk
//! made durable with one `fsync` before the first batch lands in it; a batch then overwrites
//! zeros inside the file and its `fdatasync` writes the data alone. Real zeros are written: a
//! sparse hole (`set_len`) or an unwritten extent (`fallocate`) would still change metadata on
//! the first write into it.
//!
//! The log keeps each segment's *logical* size (header and records, what
//! [`Log::segment_sizes`] reports) apart from the active file's length; the bytes between are
//! zeros, always: a failed write is cut back to the logical end, padding included, so no
//! remains of a refused batch can lie past it. If the zero-fill fails (a full disk), the padding
//! is cut and the batch written as it would be without preallocation, growing the file, so a
//! batch that fits is not refused for want of a whole chunk. At rotation, and when the log is
//! dropped, the padding is cut (`ftruncate` and `fsync`), so closed segments end at their last
//! record.
//!
//! ## Recovery
//!
//! At open every segment is read and every frame checked (checksum, version, LSNs contiguous,
//! terms never decreasing). A bad frame is handled by where it is:
//!
//! - In any segment but the last: corruption; open fails naming the segment and byte offset.
//! - In the last segment: it is a *torn tail* — the remains of a batch whose write was cut by a
//!   crash and which therefore was never acknowledged — if no whole frame after it belongs to a
//!   later batch. Every frame records the first LSN of its batch (`batch_first`); a batch is only
//!   written after the previous one was fsynced, so a whole frame after the bad one whose batch
//!   started after the bad frame's LSN proves the bad frame had already been durable: corruption.
//!   A torn tail is cut (the file is truncated and fsynced) and reported in [`Recovery`].
//!
//! Damage inside the very last batch looks exactly like a torn write and is cut too; that batch
//! is the only one that can be lost this way.
//!
//! Zeros from the last valid frame to the end of a segment are padding, not a torn tail: in the
//! last segment they stay (the next batch overwrites them) and nothing is reported; in an earlier
//! one (a crash while a rotation was cutting them) they are cut. A torn write into the padding
//! leaves bytes that are not all zero, and is cut as above, padding and all.
//!
//! ## Term history
//!
//! The log keeps every term it holds with the LSN of its first record ([`Log::term_history`]),
//! also for records whose segments were deleted, in a file beside the segments (see
//! [`crate::terms`]). An append that starts a new term changes it; [`Log::sync`] then replaces the
//! file before it writes the batch, so the file is durable no later than the term's records; a
//! batch that starts no term costs no extra fsync. At open the file is reconciled with the
//! segments: an entry past the recovered end (written before a crash that lost its records) is
//! dropped, a term found in the segments and missing from the file is added, a log without the
//! file (from before it was kept) gets one built from its segments. A damaged file stops open,
//! unless the segments start at LSN 1: then they hold every term and the file is rebuilt.
//!
//! ## Cutting the tail
//!
//! [`Log::truncate_after`] removes every record after an LSN (a returning old primary undoing
//! its own unreplicated records). Later segments are deleted newest first, each delete made
//! durable before the next, then the segment holding the LSN is cut after its frame and fsynced:
//! a crash at any point leaves a prefix of the log, never a hole.
//!
//! ## Invariants
//!
//! `first_lsn <= durable.lsn + 1`, `durable <= last`, and the bytes of the records in
//! `(durable, last]` are exactly `buf`. The active segment's logical size is at most
//! `allocated`, and every byte of its file past the logical size is zero. `terms` holds an entry
//! for every term of the records up to `last` (pending ones included); once a sync returns,
//! the term history file holds exactly `terms`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scribe_core::{Lsn, Position, Term};

use crate::reader::LogReader;
use crate::record::Record;
use crate::segment::{self, SEGMENT_HEADER};
use crate::terms::Terms;
use crate::LogError;

/// Bytes of zeros the active segment is extended by at a time, ahead of the records (or fewer, to
/// stay within the segment size; more when one batch needs more).
pub const PREALLOCATE_BYTES: u64 = 1 << 20;

/// How the log is laid out.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A segment is closed and a new one started once it holds at least this many bytes.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
        }
    }
}

/// What recovery found when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Oldest LSN still held (the next LSN when the log is empty).
    pub first_lsn: Lsn,
    /// The last durable record, `Position::ZERO` if none.
    pub last: Position,
    /// Whole records found.
    pub records: u64,
    /// Segment files found.
    pub segments: usize,
    /// A torn tail that was cut: the segment, the offset it was cut at, and the bytes removed.
    pub torn: Option<(PathBuf, u64, u64)>,
}

/// What one [`Log::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Records made durable.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// How long the fsync took.
    pub fsync: Duration,
}

/// The change log of one node. See the module documentation for its guarantees.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    opts: LogOptions,
    /// Every segment, sorted by first LSN, with its durable size in bytes; the last is active.
    segments: Vec<(Lsn, PathBuf, u64)>,
    active: File,
    /// Length of the active segment's file: its durable size and then zeros (padding).
    allocated: u64,
    buf: Vec<u8>,
    buf_records: u64,
    batch_first: Lsn,
    last: Position,
    durable: Position,
    poisoned: bool,
    /// The term history, pending records included.
    terms: Terms,
    /// What the term history file holds; `None` when unknown (a failed write), so that the next
    /// sync writes it again.
    terms_saved: Option<Terms>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, checks every segment and cuts a torn tail.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(Log, Recovery), LogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LogError::io(format!("create log directory {}", dir.display()), e))?;
        let found = segment::list_segments(dir)?;
        if found.is_empty() {
            let (path, active) = segment::create_segment(dir, Lsn(1))?;
            let log = Log {
                dir: dir.to_path_buf(),
                opts,
                segments: vec![(Lsn(1), path, SEGMENT_HEADER as u64)],
                active,
                allocated: SEGMENT_HEADER as u64,
                buf: Vec::new(),
                buf_records: 0,
                batch_first: Lsn(1),
                last: Position::ZERO,
                durable: Position::ZERO,
                poisoned: false,
                terms: Terms::default(),
                // A stale file in a directory without segments names no LSN a new log holds
                // (recovery drops it), and the first record's sync replaces it.
                terms_saved: Some(Terms::default()),
            };
            let recovery = Recovery {
                first_lsn: Lsn(1),
                last: Position::ZERO,
                records: 0,
                segments: 1,
                torn: None,
            };
            return Ok((log, recovery));
        }

        let mut segments = Vec::with_capacity(found.len());
        let mut last = Position::ZERO;
        let mut records = 0u64;
        let mut torn = None;
        // Each term of the held records with its first held LSN.
        let mut held = Terms::default();
        let count = found.len();
        for (i, (named_first, path)) in found.into_iter().enumerate() {
            let bytes = segment::read_segment(&path)?;
            let scan = segment::scan(&bytes, &path)?;
            let corrupt = |offset: u64, reason: String| LogError::Corrupt {
                segment: path.clone(),
                offset,
                reason,
            };
            if scan.first != named_first {
                return Err(corrupt(
                    0,
                    format!(
                        "header says first lsn {} but the file name says {named_first}",
                        scan.first
                    ),
                ));
            }
            if i > 0 && scan.first != last.lsn.next() {
                return Err(corrupt(
                    0,
                    format!(
                        "segment starts at lsn {} but the previous one ends at {}",
                        scan.first, last.lsn
                    ),
                ));
            }
            if let (Some(first), true) = (scan.records.first(), i > 0) {
                if first.term < last.term {
                    return Err(corrupt(
                        SEGMENT_HEADER as u64,
                        format!("term {} after term {}", first.term, last.term),
                    ));
                }
            }
            let mut size = bytes.len() as u64;
            if scan.padding > 0 {
                size = scan.valid_len;
                if i + 1 < count {
                    // Left by a crash between cutting a full segment's padding and starting the
                    // next one; the next segment's first LSN (checked below) shows nothing is
                    // missing.
                    cut_to(&path, size, "cut the padding of")?;
                    tracing::info!(segment = %path.display(), bytes = scan.padding, "cut the padding of a closed log segment");
                }
            }
            if let Some((offset, reason)) = scan.bad {
                if i + 1 < count {
                    return Err(corrupt(offset, reason));
                }
                let last_good = scan.records.last().map_or(scan.first.prev(), |r| r.lsn);
                let bad_lsn = last_good.next();
                let later = segment::frames_after(&bytes, offset as usize + 1);
                let reason_is_order =
                    reason.starts_with("record lsn") || reason.starts_with("record term");
                if reason_is_order || later.iter().any(|(_, r)| r.batch_first > bad_lsn) {
                    return Err(corrupt(
                        offset,
                        format!(
                            "{reason}; {} whole records follow it, so this is not a torn write",
                            later.len()
                        ),
                    ));
                }
                cut_to(&path, offset, "cut the torn tail of")?;
                tracing::warn!(segment = %path.display(), offset, bytes = size - offset, %reason, "cut torn tail of the change log");
                torn = Some((path.clone(), offset, size - offset));
                size = offset;
            }
            records += scan.records.len() as u64;
            for r in &scan.records {
                held.note(r.term, r.lsn);
            }
            if let Some(r) = scan.records.last() {
                last = r.position();
            } else if i == 0 {
                last = Position::new(Term(0), scan.first.prev());
            }
            segments.push((scan.first, path, size));
        }
        let active_path = &segments.last().expect("at least one segment").1;
        let active = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(active_path)
            .map_err(|e| LogError::io(format!("open log segment {}", active_path.display()), e))?;
        let allocated = active
            .metadata()
            .map_err(|e| LogError::io(format!("stat log segment {}", active_path.display()), e))?
            .len();
        let first_lsn = segments[0].0;
        let (terms, terms_saved) = Terms::recover(dir, &held, first_lsn, last.lsn)?;
        if records == 0 {
            // An empty log after a snapshot install: its base entry names the base's term.
            if let Some(term) = terms.term_at(last.lsn) {
                last.term = last.term.max(term);
            }
        }
        let recovery = Recovery {
            first_lsn,
            last,
            records,
            segments: segments.len(),
            torn,
        };
        let log = Log {
            dir: dir.to_path_buf(),
            opts,
            segments,
            active,
            allocated,
            buf: Vec::new(),
            buf_records: 0,
            batch_first: last.lsn.next(),
            last,
            durable: last,
            poisoned: false,
            terms,
            terms_saved,
        };
        Ok((log, recovery))
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last record appended, durable or not.
    pub fn last_position(&self) -> Position {
        self.last
    }

    /// The last record made durable by [`Log::sync`].
    pub fn durable_position(&self) -> Position {
        self.durable
    }

    /// The oldest LSN still held.
    pub fn first_lsn(&self) -> Lsn {
        self.segments.first().map_or(self.last.lsn.next(), |s| s.0)
    }

    /// Every term of this log's history with the LSN of its first record, oldest first: the terms
    /// of the records held, of those whose segments were deleted, and after a snapshot install
    /// the base position's term at the base LSN. Includes the terms of records appended but not
    /// yet synced.
    pub fn term_history(&self) -> &[(Term, Lsn)] {
        self.terms.entries()
    }

    /// Bytes of all segments' headers and records; the active segment's padding (at most
    /// [`PREALLOCATE_BYTES`]) is not counted.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.2).sum()
    }

    /// Each segment's first LSN and size in bytes (headers and records, not padding), oldest
    /// first; the last is the active one.
    pub fn segment_sizes(&self) -> Vec<(Lsn, u64)> {
        self.segments.iter().map(|(l, _, n)| (*l, *n)).collect()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes appended but not yet synced.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends a new record with the next LSN to the batch and returns its position. It is not
    /// durable until [`Log::sync`] returns.
    pub fn append(
        &mut self,
        term: Term,
        time_us: u64,
        payload: Vec<u8>,
    ) -> Result<Position, LogError> {
        let lsn = self.last.lsn.next();
        self.push(Record {
            term,
            lsn,
            batch_first: lsn,
            time_us,
            payload,
        })
    }

    /// Appends a record received from elsewhere (a replica's copy of the primary's log): its LSN
    /// must be the next one and its term no older than the log's newest.
    pub fn append_record(&mut self, record: Record) -> Result<Position, LogError> {
        self.push(record)
    }

    fn push(&mut self, mut record: Record) -> Result<Position, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if record.term < self.last.term {
            return Err(LogError::StaleTerm {
                last: self.last.term,
                got: record.term,
            });
        }
        let expected = self.last.lsn.next();
        if record.lsn != expected {
            return Err(LogError::OutOfOrder {
                expected,
                got: record.lsn,
            });
        }
        if self.buf.is_empty() {
            self.batch_first = record.lsn;
        }
        record.batch_first = self.batch_first;
        record.encode_into(&mut self.buf)?;
        self.terms.note(record.term, record.lsn);
        self.buf_records += 1;
        self.last = record.position();
        Ok(self.last)
    }

    /// The records appended since the last sync, oldest first (decoded again from the batch:
    /// for the rare caller that must redo what they did, not for the write path).
    pub fn pending_records(&self) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::with_capacity(self.buf_records as usize);
        let mut at = 0;
        while at < self.buf.len() {
            let (record, used) =
                crate::record::decode_frame(&self.buf[at..]).map_err(|e| LogError::Corrupt {
                    segment: self.dir.join("(pending batch)"),
                    offset: at as u64,
                    reason: format!("a pending record does not decode: {e:?}"),
                })?;
            out.push(record);
            at += used;
        }
        Ok(out)
    }

    /// Drops the records appended since the last sync.
    pub fn discard_pending(&mut self) {
        self.buf.clear();
        self.buf_records = 0;
        self.last = self.durable;
        self.terms.truncate_after(self.durable.lsn);
    }

    /// Replaces the term history file if the history changed since it was last written.
    fn save_terms(&mut self) -> Result<(), LogError> {
        if self.terms_saved.as_ref() == Some(&self.terms) {
            return Ok(());
        }
        self.terms_saved = None;
        self.terms.store(&self.dir)?;
        self.terms_saved = Some(self.terms.clone());
        Ok(())
    }

    /// Writes the batch with one write and makes it durable with one fsync.
    ///
    /// When the batch starts a new term, the term history file is replaced first (see the module
    /// documentation); if that fails the batch is dropped and the log stays usable.
    ///
    /// A failed write (a full disk, say) removes what it wrote and drops the batch: the log is as
    /// before and usable. A failed fsync poisons the log: it refuses every further append. So
    /// does a failed write whose remains cannot be cut off again.
    pub fn sync(&mut self) -> Result<SyncReport, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if let Err(e) = self.save_terms() {
            self.discard_pending();
            return Err(e);
        }
        if self.buf.is_empty() {
            return Ok(SyncReport::default());
        }
        let len = self.segments.last().expect("at least one segment").2;
        let end = len + self.buf.len() as u64;
        if end > self.allocated {
            self.preallocate(len, end)?;
        }
        if let Err(source) = self.active.write_all_at(&self.buf, len) {
            let segment = self.active_path().to_path_buf();
            self.discard_pending();
            // Bytes of the refused batch left past the logical end could pass for records once a
            // shorter batch is written over their start: they must go, with the padding.
            match self.active.set_len(len) {
                Ok(()) => self.allocated = len,
                Err(e) => {
                    tracing::error!(segment = %segment.display(), error = %e, "cut a failed write from the change log; refusing further writes");
                    self.poisoned = true;
                }
            }
            return Err(LogError::Write { segment, source });
        }
        let started = Instant::now();
        if let Err(source) = self.active.sync_data() {
            self.poisoned = true;
            return Err(LogError::Fsync {
                segment: self.active_path().to_path_buf(),
                source,
            });
        }
        let report = SyncReport {
            records: self.buf_records,
            bytes: self.buf.len() as u64,
            fsync: started.elapsed(),
        };
        self.segments.last_mut().expect("at least one segment").2 = end;
        self.allocated = self.allocated.max(end);
        let full = end >= self.opts.segment_bytes;
        self.buf.clear();
        self.buf_records = 0;
        self.durable = self.last;
        if full {
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "start a new log segment; will retry after the next batch");
            }
        }
        Ok(report)
    }

    fn active_path(&self) -> &Path {
        &self.segments.last().expect("at least one segment").1
    }

    /// Zero-fills the active segment from `allocated` up so that it holds at least `end` bytes,
    /// and makes that durable; `len` is its logical size. If the zeros cannot be written (a full
    /// disk), the padding is cut back to `len` and the batch grows the file as it is written, as
    /// it would without preallocation.
    fn preallocate(&mut self, len: u64, end: u64) -> Result<(), LogError> {
        let target = end
            .div_ceil(PREALLOCATE_BYTES)
            .saturating_mul(PREALLOCATE_BYTES)
            .min(self.opts.segment_bytes.max(end));
        let zeros = vec![0u8; (target - self.allocated).min(PREALLOCATE_BYTES) as usize];
        let mut at = self.allocated;
        let mut written = Ok(());
        while at < target && written.is_ok() {
            let n = (target - at).min(zeros.len() as u64);
            written = self.active.write_all_at(&zeros[..n as usize], at);
            at += n;
        }
        if let Err(e) = written {
            tracing::debug!(segment = %self.active_path().display(), error = %e, "zero-fill the change log ahead of a batch; writing the batch without");
            // Only zeros lie past `len`: if this cut fails too, the file is still sound.
            if self.active.set_len(len).is_ok() {
                self.allocated = len;
            }
            return Ok(());
        }
        if let Err(source) = self.active.sync_all() {
            self.poisoned = true;
            self.discard_pending();
            return Err(LogError::Fsync {
                segment: self.active_path().to_path_buf(),
                source,
            });
        }
        self.allocated = target;
        Ok(())
    }

    /// Cuts the active segment's padding, so that it ends at its last record.
    fn cut_padding(&mut self) -> Result<(), LogError> {
        let len = self.segments.last().expect("at least one segment").2;
        if self.allocated > len {
            let ctx = |e| {
                LogError::io(
                    format!(
                        "cut the padding of log segment {}",
                        self.active_path().display()
                    ),
                    e,
                )
            };
            self.active
                .set_len(len)
                .and_then(|()| self.active.sync_all())
                .map_err(ctx)?;
            self.allocated = len;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        self.cut_padding()?;
        let first = self.durable.lsn.next();
        let (path, file) = segment::create_segment(&self.dir, first)?;
        self.segments.push((first, path, SEGMENT_HEADER as u64));
        self.active = file;
        self.allocated = SEGMENT_HEADER as u64;
        Ok(())
    }

    /// Deletes every segment all of whose records are below `lsn`; the active segment is kept.
    /// Returns how many segments were deleted.
    pub fn delete_before(&mut self, lsn: Lsn) -> Result<usize, LogError> {
        let mut n = 0;
        while self.segments.len() > 1 && self.segments[1].0 <= lsn {
            let (_, path, _) = self.segments.remove(0);
            std::fs::remove_file(&path)
                .map_err(|e| LogError::io(format!("delete log segment {}", path.display()), e))?;
            n += 1;
        }
        if n > 0 {
            segment::sync_dir(&self.dir)?;
        }
        Ok(n)
    }

    /// After a snapshot install the log starts empty and its file names carry the base LSN but
    /// not the base term; the database knows it. An empty log takes `term` as the term of its
    /// base position, so fencing holds from the first append.
    ///
    /// The term history's base entry takes the term too; the file is written at the next sync,
    /// before any record.
    pub fn adopt_term(&mut self, term: Term) {
        if self.last == self.durable
            && self.last.lsn.next() == self.first_lsn()
            && term > self.last.term
        {
            self.last.term = term;
            self.durable.term = term;
            self.terms.adopt_base(term, self.last.lsn);
        }
    }

    /// Empties the log and starts it again after `at`: every segment is deleted and a new, empty
    /// one starts at `at.lsn + 1`, and the term history starts anew as `[(at.term, at.lsn)]`. A
    /// replica does this when it installs a snapshot taken at `at`. Not crash-atomic with the
    /// snapshot it goes with: the caller marks the directory as being seeded until both are done.
    pub fn reset_to(&mut self, at: Position) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.discard_pending();
        // Past this point a failure leaves no usable log: refuse every later use.
        self.poisoned = true;
        for (_, path, _) in self.segments.drain(..) {
            std::fs::remove_file(&path)
                .map_err(|e| LogError::io(format!("delete log segment {}", path.display()), e))?;
        }
        let first = at.lsn.next();
        let (path, file) = segment::create_segment(&self.dir, first)?;
        segment::sync_dir(&self.dir)?;
        self.terms.reset_to(at.term, at.lsn);
        self.terms_saved = None;
        self.save_terms()?;
        self.poisoned = false;
        self.segments.push((first, path, SEGMENT_HEADER as u64));
        self.active = file;
        self.allocated = SEGMENT_HEADER as u64;
        self.batch_first = first;
        self.last = at;
        self.durable = at;
        Ok(())
    }

    /// Reads the durable records from `from` on.
    pub fn read_from(&self, from: Lsn) -> Result<LogReader, LogError> {
        let segments = self
            .segments
            .iter()
            .map(|(first, path, _)| (*first, path.clone()))
            .collect();
        LogReader::new(segments, from, self.durable.lsn)
    }
}

impl Drop for Log {
    /// Cuts the active segment's padding, so that a log closed cleanly holds none. Best effort:
    /// recovery takes padding in its stride. A poisoned log is left as it is.
    fn drop(&mut self) {
        if !self.poisoned {
            if let Err(e) = self.cut_padding() {
                tracing::debug!(error = %e, "cut the change log's padding on close");
            }
        }
    }
}

/// Truncates the segment at `path` to `len` bytes and fsyncs it; `what` is the verb phrase of
/// the error context ("cut the torn tail of").
fn cut_to(path: &Path, len: u64, what: &str) -> Result<(), LogError> {
    let ctx = |e| LogError::io(format!("{what} log segment {}", path.display()), e);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(ctx)?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(ctx)
}

mod cut;
#[cfg(test)]
mod cut_tests;
#[cfg(test)]
mod tests;
