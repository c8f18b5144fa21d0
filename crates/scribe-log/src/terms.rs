//! The term history: every term present in the log with the LSN of its first record, kept in a
//! small file beside the segments so that it outlives the segments retention deletes.
//!
//! ```text
//! file  := magic "SCRIBTRM" | version u32 | count u32 | entry* | crc32c(everything before) u32
//! entry := term u64 | first_lsn u64                                        (little endian)
//! ```
//!
//! The file is replaced atomically (temporary file, fsync, rename, fsync of the directory). The
//! [`crate::Log`] writes it before the records of a new term are written, so it is durable no
//! later than they are; at open it is reconciled with the segments, which are the truth for the
//! LSNs they hold (see [`Terms::reconcile`]).
//!
//! After a snapshot install the history starts with the snapshot's base position: its entry's
//! LSN is the base record's, which the log does not hold.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use scribe_core::{Lsn, Term};

use crate::segment::sync_dir;
use crate::LogError;

/// The term history's file name in the log directory.
pub const TERMS_FILE: &str = "terms";
/// Magic bytes that open the file.
pub const TERMS_MAGIC: &[u8; 8] = b"SCRIBTRM";
/// The file format this code writes.
pub const TERMS_VERSION: u32 = 1;
const TMP_SUFFIX: &str = ".tmp";
/// magic, version, count.
const HEADER: usize = 8 + 4 + 4;
const ENTRY: usize = 16;
/// More entries than any real history holds (one per promotion): a larger count is damage.
const MAX_ENTRIES: usize = 1 << 20;

/// The term history of one log.
///
/// Invariant: entries are strictly increasing in term and in LSN; each is a term and the LSN of
/// its first record in this log (or, for the first entry after a snapshot install, of the base
/// record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    entries: Vec<(Term, Lsn)>,
}

impl Terms {
    /// A history from its entries, if they are strictly increasing in term and LSN.
    pub fn from_entries(entries: Vec<(Term, Lsn)>) -> Result<Terms, String> {
        for w in entries.windows(2) {
            if w[1].0 <= w[0].0 || w[1].1 <= w[0].1 {
                return Err(format!(
                    "entry (term {}, lsn {}) after (term {}, lsn {}): entries must grow in term and lsn",
                    w[1].0, w[1].1, w[0].0, w[0].1
                ));
            }
        }
        Ok(Terms { entries })
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(Term, Lsn)] {
        &self.entries
    }

    /// Notes a record `(term, lsn)` appended after every record noted so far: a term newer than
    /// the last entry's starts a new entry.
    pub fn note(&mut self, term: Term, lsn: Lsn) {
        if self.entries.last().is_none_or(|&(t, _)| term > t) {
            self.entries.push((term, lsn));
        }
    }

    /// Drops the entries of terms that start after `lsn`.
    pub fn truncate_after(&mut self, lsn: Lsn) {
        self.entries.retain(|&(_, first)| first <= lsn);
    }

    /// Replaces the whole history with one base entry (after a snapshot install at `(term, lsn)`);
    /// a base at LSN 0 leaves it empty.
    pub fn reset_to(&mut self, term: Term, lsn: Lsn) {
        self.entries.clear();
        if lsn > Lsn::ZERO {
            self.entries.push((term, lsn));
        }
    }

    /// Sets the term of the base position `lsn` of an empty log (see [`crate::Log::adopt_term`]):
    /// the base entry takes `term`, or one is added.
    pub fn adopt_base(&mut self, term: Term, lsn: Lsn) {
        let n = self.entries.len();
        let before = n.checked_sub(2).map(|i| self.entries[i].0);
        match self.entries.last_mut() {
            // The base entry takes the newer term, if that keeps the terms growing.
            Some(last) if last.1 == lsn && before.is_none_or(|t| t < term) => last.0 = term,
            Some(&mut (t, first)) if t < term && first < lsn => self.entries.push((term, lsn)),
            None if lsn > Lsn::ZERO => self.entries.push((term, lsn)),
            _ => {}
        }
    }

    /// The term of the record at `lsn`, as far as the history knows (`None` before its first
    /// entry).
    pub fn term_at(&self, lsn: Lsn) -> Option<Term> {
        self.entries
            .iter()
            .rev()
            .find(|&&(_, first)| first <= lsn)
            .map(|&(t, _)| t)
    }

    /// The history recovery keeps, from the file's (`file`, possibly stale) and the terms found in
    /// the segments (`held`: each term of the held records and its first held LSN, in order).
    /// The segments hold `[first_held, end]`.
    ///
    /// The segments are the truth for what they hold; the file for the LSNs before them, whose
    /// segments retention deleted (or which a snapshot replaced). So file entries at or past
    /// `first_held` are replaced by the segments' (this drops the entries of a crash after the
    /// file was written but before the term's records were durable), and the first held term
    /// keeps the file's entry when it began before the held records.
    pub fn reconcile(
        file: &Terms,
        held: &[(Term, Lsn)],
        first_held: Lsn,
        end: Lsn,
    ) -> Result<Terms, String> {
        let mut out: Vec<(Term, Lsn)> = file
            .entries
            .iter()
            .copied()
            .filter(|&(_, first)| first < first_held && first <= end)
            .collect();
        for &(term, lsn) in held {
            match out.last() {
                Some(&(t, _)) if t == term => {}
                Some(&(t, first)) if t > term => {
                    return Err(format!(
                        "it says term {t} began at lsn {first}, but the record at lsn {lsn} is of the older term {term}"
                    ))
                }
                _ => out.push((term, lsn)),
            }
        }
        Terms::from_entries(out)
    }

    /// Encodes the file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.entries.len() + 4);
        out.extend_from_slice(TERMS_MAGIC);
        out.extend_from_slice(&TERMS_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for &(term, lsn) in &self.entries {
            out.extend_from_slice(&term.0.to_le_bytes());
            out.extend_from_slice(&lsn.0.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the file's bytes, checking magic, checksum, version and order.
    pub fn decode(b: &[u8]) -> Result<Terms, String> {
        if b.len() < HEADER + 4 {
            return Err(format!("{} bytes, too short for a term history", b.len()));
        }
        if &b[0..8] != TERMS_MAGIC {
            return Err("not a Scribe term history (bad magic)".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if stored != crc32c::crc32c(body) {
            return Err("checksum mismatch".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != TERMS_VERSION {
            return Err(format!("unknown term history version {version}"));
        }
        let count = u32_at(12) as usize;
        if count > MAX_ENTRIES || body.len() != HEADER + count * ENTRY {
            return Err(format!(
                "{count} entries do not fit the file's {} bytes",
                b.len()
            ));
        }
        let entries = (0..count)
            .map(|i| {
                let at = HEADER + i * ENTRY;
                (Term(u64_at(at)), Lsn(u64_at(at + 8)))
            })
            .collect();
        Terms::from_entries(entries)
    }

    /// The history's file in the log directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(TERMS_FILE)
    }

    /// Reads the history of the log in `dir`: `None` if there is no file (a log from before the
    /// history was kept). A leftover temporary file is removed. A damaged file is
    /// [`LogError::CorruptTerms`].
    pub fn load(dir: &Path) -> Result<Option<Terms>, LogError> {
        let path = Terms::path(dir);
        let _ = fs::remove_file(tmp_path(&path));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LogError::io(
                    format!("read term history {}", path.display()),
                    e,
                ))
            }
        };
        Terms::decode(&bytes)
            .map(Some)
            .map_err(|reason| LogError::CorruptTerms { path, reason })
    }

    /// Reads the term history file of the log in `dir` and reconciles it with the terms `held` in
    /// the segments, which hold `[first_held, end]` (see [`Terms::reconcile`]); writes the result
    /// back when it differs. Answers the history and what the file holds.
    pub(crate) fn recover(
        dir: &Path,
        held: &Terms,
        first_held: Lsn,
        end: Lsn,
    ) -> Result<(Terms, Option<Terms>), LogError> {
        let path = Terms::path(dir);
        let loaded = match Terms::load(dir) {
            Ok(t) => t,
            // The segments hold every record, so every term: nothing is lost by rebuilding.
            Err(LogError::CorruptTerms { reason, .. }) if first_held == Lsn(1) => {
                tracing::warn!(file = %path.display(), %reason, "rebuild the damaged term history from the log segments");
                None
            }
            Err(e) => return Err(e),
        };
        let terms = Terms::reconcile(
            loaded.as_ref().unwrap_or(&Terms::default()),
            held.entries(),
            first_held,
            end,
        )
        .map_err(|reason| LogError::CorruptTerms {
            path: path.clone(),
            reason: format!("{reason} (the file disagrees with the log segments)"),
        })?;
        if loaded.as_ref() == Some(&terms) {
            return Ok((terms, loaded));
        }
        if loaded.is_some() {
            tracing::info!(file = %path.display(), "reconciled the term history with the log segments");
        }
        terms.store(dir)?;
        let saved = Some(terms.clone());
        Ok((terms, saved))
    }

    /// Replaces the history file in `dir` atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<(), LogError> {
        let path = Terms::path(dir);
        let tmp = tmp_path(&path);
        let ctx = |what: &str| format!("{what} term history {}", tmp.display());
        let mut f = File::create(&tmp).map_err(|e| LogError::io(ctx("create"), e))?;
        f.write_all(&self.encode())
            .map_err(|e| LogError::io(ctx("write"), e))?;
        f.sync_all().map_err(|e| LogError::io(ctx("fsync"), e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| {
            LogError::io(
                format!("rename term history into place at {}", path.display()),
                e,
            )
        })?;
        sync_dir(dir)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(e: &[(u64, u64)]) -> Terms {
        Terms::from_entries(e.iter().map(|&(t, l)| (Term(t), Lsn(l))).collect()).unwrap()
    }

    #[test]
    fn the_file_round_trips_and_every_flipped_bit_is_detected() {
        let t = terms(&[(1, 1), (2, 40), (5, 41)]);
        let bytes = t.encode();
        assert_eq!(Terms::decode(&bytes).unwrap(), t);
        assert_eq!(
            Terms::decode(&Terms::default().encode()).unwrap(),
            Terms::default()
        );
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(Terms::decode(&b).is_err(), "bit {i}");
        }
        for n in 0..bytes.len() {
            assert!(Terms::decode(&bytes[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn noting_records_adds_an_entry_per_new_term() {
        let mut t = Terms::default();
        for (term, lsn) in [(1, 1), (1, 2), (3, 3), (3, 4), (4, 5)] {
            t.note(Term(term), Lsn(lsn));
        }
        assert_eq!(t, terms(&[(1, 1), (3, 3), (4, 5)]));
        assert_eq!(t.term_at(Lsn(0)), None);
        assert_eq!(t.term_at(Lsn(2)), Some(Term(1)));
        assert_eq!(t.term_at(Lsn(4)), Some(Term(3)));
        assert_eq!(t.term_at(Lsn(99)), Some(Term(4)));
        t.truncate_after(Lsn(4));
        assert_eq!(t, terms(&[(1, 1), (3, 3)]));
        t.truncate_after(Lsn(2));
        assert_eq!(t, terms(&[(1, 1)]));
    }

    #[test]
    fn out_of_order_entries_are_refused() {
        assert!(Terms::from_entries(vec![(Term(2), Lsn(1)), (Term(1), Lsn(5))]).is_err());
        assert!(Terms::from_entries(vec![(Term(1), Lsn(5)), (Term(2), Lsn(5))]).is_err());
    }

    #[test]
    fn reconcile_trusts_segments_for_what_they_hold_and_the_file_for_the_rest() {
        // Retention deleted lsn 1..=99; the file remembers terms 1 and 2.
        let file = terms(&[(1, 1), (2, 50), (3, 120)]);
        let held = [(Term(2), Lsn(100)), (Term(3), Lsn(110))];
        assert_eq!(
            Terms::reconcile(&file, &held, Lsn(100), Lsn(130)).unwrap(),
            terms(&[(1, 1), (2, 50), (3, 110)])
        );
        // A term written to the file whose records never became durable goes.
        let file = terms(&[(1, 1), (2, 11)]);
        assert_eq!(
            Terms::reconcile(&file, &[(Term(1), Lsn(1))], Lsn(1), Lsn(10)).unwrap(),
            terms(&[(1, 1)])
        );
        // No file: built from the segments.
        assert_eq!(
            Terms::reconcile(&Terms::default(), &held, Lsn(100), Lsn(130)).unwrap(),
            terms(&[(2, 100), (3, 110)])
        );
        // A snapshot's base entry, and an empty log after it.
        let file = terms(&[(4, 70)]);
        assert_eq!(
            Terms::reconcile(&file, &[], Lsn(71), Lsn(70)).unwrap(),
            file
        );
        // A file contradicting the held records is refused.
        let file = terms(&[(5, 1)]);
        assert!(Terms::reconcile(&file, &[(Term(4), Lsn(10))], Lsn(10), Lsn(12)).is_err());
    }

    #[test]
    fn adopting_the_base_term_of_an_empty_log() {
        let mut t = Terms::default();
        t.adopt_base(Term(3), Lsn(40));
        assert_eq!(t, terms(&[(3, 40)]));
        t.adopt_base(Term(4), Lsn(40));
        assert_eq!(t, terms(&[(4, 40)]));
        let mut t = terms(&[(1, 1)]);
        t.adopt_base(Term(2), Lsn(40));
        assert_eq!(t, terms(&[(1, 1), (2, 40)]));
        let mut t = Terms::default();
        t.adopt_base(Term(2), Lsn(0));
        assert_eq!(t, Terms::default());
    }
}
