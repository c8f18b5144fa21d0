//! Cutting the log's tail: [`Log::truncate_after`], what a returning old primary uses to undo
//! its own records after the last position it shares with the new primary. Later segments are
//! deleted newest first, each delete made durable before the next, then the segment holding the
//! last kept record is cut after that record's frame (its padding goes with the cut) and
//! fsynced, so a crash at any point leaves a prefix of the log, never a hole.

use scribe_core::{Lsn, Position, Term};

use super::Log;
use crate::segment::{self, SEGMENT_HEADER};
use crate::LogError;

impl Log {
    /// Cuts every record after `lsn`, so that the log ends at `lsn` and the next append is
    /// `lsn + 1` (in its term or a newer one); answers how many records were cut. The term
    /// history loses the terms that start after `lsn`. `lsn` may be the log's base (the LSN
    /// before its first record): then every record goes.
    ///
    /// Refused, changing nothing, below the base ([`LogError::CutBelowStart`]: those records are
    /// gone), past the end ([`LogError::CutPastEnd`]) and while appended records are not synced
    /// ([`LogError::CutPending`]). Crash-safe: later segments are deleted newest first, each
    /// delete made durable, then the segment holding `lsn` is cut and fsynced, so a crash leaves
    /// a prefix of the log. A failure part way poisons the log (restart to recover it); a failure
    /// to rewrite the term history file afterwards does not: recovery drops its stale entries, and
    /// the next sync writes it again.
    pub fn truncate_after(&mut self, lsn: Lsn) -> Result<u64, LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if !self.buf.is_empty() {
            return Err(LogError::CutPending {
                records: self.buf_records,
            });
        }
        if lsn > self.last.lsn {
            return Err(LogError::CutPastEnd {
                at: lsn,
                last: self.last.lsn,
            });
        }
        let first = self.first_lsn();
        if lsn.next() < first {
            return Err(LogError::CutBelowStart { at: lsn, first });
        }
        if lsn == self.last.lsn {
            return Ok(0);
        }
        let cut = self.last.lsn.0 - lsn.0;
        // The segment that keeps the records up to `lsn` and where they end in it.
        let keep = self
            .segments
            .iter()
            .rposition(|s| s.0 <= lsn.next())
            .expect("the first segment starts at or before lsn + 1");
        let (seg_first, path, size) = self.segments[keep].clone();
        let (offset, term) = if seg_first == lsn.next() {
            // `lsn` ends the previous segment, or is the log's base: the history knows its term
            // (a base without an entry has none, as at recovery).
            let term = self.terms.term_at(lsn).unwrap_or(Term(0));
            (SEGMENT_HEADER as u64, term)
        } else {
            let bytes = segment::read_segment(&path)?;
            let held = &bytes[..(size as usize).min(bytes.len())];
            let scan = segment::scan(held, &path)?;
            let mut off = SEGMENT_HEADER as u64;
            let mut found = None;
            for r in &scan.records {
                off += r.frame_len() as u64;
                if r.lsn == lsn {
                    found = Some((off, r.term));
                    break;
                }
            }
            found.ok_or_else(|| LogError::Corrupt {
                segment: path.clone(),
                offset: scan.valid_len,
                reason: format!("lsn {lsn} is not among the segment's records"),
            })?
        };
        // Past this point a failure leaves the log between two states: refuse every later use
        // until a restart recovers it (as a prefix).
        self.poisoned = true;
        while self.segments.len() > keep + 1 {
            let (_, later, _) = self.segments.pop().expect("more than keep + 1");
            std::fs::remove_file(&later)
                .map_err(|e| LogError::io(format!("delete log segment {}", later.display()), e))?;
            segment::sync_dir(&self.dir)?;
        }
        let ctx = |e| {
            LogError::io(
                format!(
                    "cut the records after lsn {lsn} from log segment {}",
                    path.display()
                ),
                e,
            )
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(ctx)?;
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(ctx)?;
        self.active = file;
        self.allocated = offset;
        self.segments[keep].2 = offset;
        self.last = Position::new(term, lsn);
        self.durable = self.last;
        self.batch_first = lsn.next();
        self.poisoned = false;
        self.terms.truncate_after(lsn);
        if let Err(e) = self.save_terms() {
            tracing::warn!(error = %e, "rewrite the term history after cutting the log; the next sync writes it again");
        }
        tracing::info!(after = %lsn, records = cut, "cut the tail of the change log");
        Ok(cut)
    }
}
