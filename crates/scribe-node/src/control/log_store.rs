//! The Raft log and vote on disk, under `<data_dir>/control/`.
//!
//! - `vote`: one frame, replaced atomically and fsynced before `save_vote` returns, so a vote is
//!   never forgotten once granted.
//! - `log`: append-only; the file header, then a frame with the log's header (the last purged
//!   log id), then one frame per entry (JSON). An append batch is written and fsynced before
//!   openraft is told it is flushed. A conflicting suffix is cut with `set_len` + fsync. A purge
//!   (after a snapshot) rewrites the file with the entries kept — the log holds a few hundred
//!   small entries at most, so this is cheap — atomically (temporary file, fsync, rename).
//!   At start-up the file is read whole: a torn or damaged frame ends the log there, and the
//!   file is cut to its last good frame (only an append that was never acknowledged can be torn).
//! - `committed`: the last committed log id, a hint that lets a restarted node re-apply its log
//!   without waiting for the leader. It is replaced atomically but not fsynced: losing it only
//!   costs that wait, and a damaged one reads as absent.
//!
//! The entries are also kept in memory (the log is bounded by snapshots), shared with the log
//! reader; the file I/O runs on the blocking pool.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, LogId, Membership, OptionalSend, StorageError, StorageIOError, Vote,
};
use scribe_core::ControlCommand;
use serde::{Deserialize, Serialize};

use super::files::{self, FileKind};
use super::types::{ControlNode, NodeId, Proposal, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The header frame of the log file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LogHeader {
    last_purged: Option<LogId<NodeId>>,
}

/// The log file and its entries in memory.
///
/// Invariants: `entries` are consecutive, starting right after `last_purged`; `offsets[i]` is
/// where entry `i`'s frame starts in the file and `end` is the file's length.
struct LogFile {
    path: PathBuf,
    file: File,
    last_purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    offsets: BTreeMap<u64, u64>,
    end: u64,
}

impl LogFile {
    /// Opens (or creates) the log at `path`, cutting a torn tail.
    fn open(path: &Path) -> io::Result<LogFile> {
        if !path.exists() {
            Self::rewrite(path, None, std::iter::empty())?;
        }
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        files::check_header(path, &bytes, FileKind::Log)?;
        let mut pos = files::HEADER;
        let (head, len) = files::take_frame(&bytes[pos..]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: the log's header frame is damaged", path.display()),
            )
        })?;
        let header: LogHeader = serde_json::from_slice(head).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: read the log header: {e}", path.display()),
            )
        })?;
        pos += len;
        let mut entries = BTreeMap::new();
        let mut offsets = BTreeMap::new();
        let mut next = header.last_purged.map_or(0, |l| l.index + 1);
        while pos < bytes.len() {
            let Some((body, len)) = files::take_frame(&bytes[pos..]) else {
                break;
            };
            let Ok(entry) = serde_json::from_slice::<Entry<TypeConfig>>(body) else {
                break;
            };
            if entry.log_id.index != next {
                break;
            }
            offsets.insert(next, pos as u64);
            entries.insert(next, entry);
            next += 1;
            pos += len;
        }
        // A bad frame followed by an intact one is damage inside the log, not a torn tail: the
        // entries after it were acknowledged to the leader, and cutting them would break Raft's
        // promise. Refuse to start instead.
        if pos < bytes.len() {
            let intact_after = (pos + 1..bytes.len()).any(|off| {
                files::take_frame(&bytes[off..]).is_some_and(|(body, _)| {
                    serde_json::from_slice::<Entry<TypeConfig>>(body)
                        .is_ok_and(|e| e.log_id.index >= next)
                })
            });
            if intact_after {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: the control log is damaged at byte {pos} and intact entries follow: refusing to start; \
                         move the control/ directory aside and let this member rejoin empty (the other members hold the state)",
                        path.display()
                    ),
                ));
            }
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if pos < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() - pos,
                "control log: cutting a torn or damaged tail"
            );
            file.set_len(pos as u64)?;
            file.sync_all()?;
        }
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            last_purged: header.last_purged,
            entries,
            offsets,
            end: pos as u64,
        })
    }

    /// Writes a whole log file atomically.
    fn rewrite<'a>(
        path: &Path,
        last_purged: Option<LogId<NodeId>>,
        entries: impl Iterator<Item = &'a Entry<TypeConfig>>,
    ) -> io::Result<()> {
        let mut bytes = files::header(FileKind::Log).to_vec();
        files::put_frame(&mut bytes, &to_json(&LogHeader { last_purged })?);
        for e in entries {
            files::put_frame(&mut bytes, &to_json(e)?);
        }
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            files::sync_dir(dir)?;
        }
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.last_purged)
    }

    fn append(&mut self, batch: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let Some(first) = batch.first().map(|e| e.log_id.index) else {
            return Ok(());
        };
        if self.entries.contains_key(&first) {
            // openraft truncates before it overwrites; stay correct if it ever does not.
            self.truncate(first)?;
        }
        let mut bytes = Vec::new();
        let mut at = self.end;
        let mut new_offsets = Vec::with_capacity(batch.len());
        for e in &batch {
            let start = bytes.len();
            files::put_frame(&mut bytes, &to_json(e)?);
            new_offsets.push((e.log_id.index, at));
            at += (bytes.len() - start) as u64;
        }
        use std::io::{Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(self.end))?;
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.end = at;
        self.offsets.extend(new_offsets);
        for e in batch {
            self.entries.insert(e.log_id.index, e);
        }
        Ok(())
    }

    /// Removes the entries from `index` on.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(&at) = self.offsets.get(&index) else {
            return Ok(());
        };
        self.file.set_len(at)?;
        self.file.sync_all()?;
        self.end = at;
        self.entries.split_off(&index);
        self.offsets.split_off(&index);
        Ok(())
    }

    /// Removes the entries up to and including `upto`, rewriting the file.
    fn purge(&mut self, upto: LogId<NodeId>) -> io::Result<()> {
        if self.last_purged.is_some_and(|p| p.index >= upto.index) {
            return Ok(());
        }
        let kept = self.entries.split_off(&(upto.index + 1));
        Self::rewrite(&self.path, Some(upto), kept.values())?;
        let reopened = Self::open(&self.path)?;
        debug_assert_eq!(reopened.entries.len(), kept.len());
        *self = reopened;
        Ok(())
    }
}

fn to_json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Shared between the log storage and its readers.
struct Shared {
    dir: PathBuf,
    log: Mutex<LogFile>,
    vote: Mutex<Option<Vote<NodeId>>>,
    committed: Mutex<Option<LogId<NodeId>>>,
    /// When the latest lease renewal arrived in this log, by this node's monotonic clock (see
    /// `scribe_core::PrimarySilence` for why the failover manager counts from arrival).
    renewal_arrived: Arc<Mutex<Option<Instant>>>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, LogFile> {
        // A panic while holding the lock leaves the in-memory log as it was before the failed
        // call, which matches the file's state closely enough to read; keep going.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The log storage openraft drives (and, cloned, its log reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens the vote, log and committed hint under `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let vote = match files::read_single(&dir.join("vote"), FileKind::Vote)? {
            None => None,
            Some(body) => Some(serde_json::from_slice(&body).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("read the Raft vote: {e}"),
                )
            })?),
        };
        // A hint: absent or damaged reads as unknown.
        let committed = files::read_single(&dir.join("committed"), FileKind::Committed)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let log = LogFile::open(&dir.join("log"))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                log: Mutex::new(log),
                vote: Mutex::new(vote),
                committed: Mutex::new(committed),
                renewal_arrived: Arc::new(Mutex::new(None)),
            }),
        })
    }

    /// The last membership entry in the log, if any (to find this node's id at start-up).
    pub fn last_membership(&self) -> Option<Membership<NodeId, ControlNode>> {
        self.shared
            .log()
            .entries
            .values()
            .rev()
            .find_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some(m.clone()),
                _ => None,
            })
    }

    /// The vote stored, if any.
    pub fn vote(&self) -> Option<Vote<NodeId>> {
        *self.shared.vote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last log id (purged or present).
    pub fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.shared.log().last_log_id()
    }

    /// How many entries the log holds.
    pub fn len(&self) -> usize {
        self.shared.log().entries.len()
    }

    /// When the latest lease renewal arrived in this log since the process started (`None`: none
    /// has).
    pub fn renewal_arrived(&self) -> Option<Instant> {
        *self
            .shared
            .renewal_arrived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The cell [`LogStore::renewal_arrived`] reads, for the state machine to mark a snapshot's
    /// renewals as arrived when it installs one.
    pub fn renewal_cell(&self) -> Arc<Mutex<Option<Instant>>> {
        self.shared.renewal_arrived.clone()
    }

    /// The highest primary term any entry of this log names or starts (a promotion's
    /// `expected_term + 1`, a re-formation's term, 1 for a bootstrap), for a node about to
    /// re-form a cluster above every term its old cluster may have used.
    pub fn highest_term(&self) -> scribe_core::Term {
        let mut t = scribe_core::Term(0);
        for e in self.shared.log().entries.values() {
            if let EntryPayload::Normal(p) = &e.payload {
                let named = match &p.command {
                    ControlCommand::Promote { expected_term, .. } => {
                        scribe_core::Term(expected_term.get() + 1)
                    }
                    ControlCommand::Reform { term, .. } => *term,
                    ControlCommand::Bootstrap { .. } => scribe_core::Term::FIRST,
                    _ => scribe_core::Term(0),
                };
                t = t.max(named);
            }
        }
        t
    }

    /// Whether the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn blocking<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> io::Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("control log task failed: {e}"))))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        Ok(self
            .shared
            .log()
            .entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let log = self.shared.log();
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: log.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let v = *vote;
        self.blocking(move |s| {
            files::write_atomic(&s.dir.join("vote"), FileKind::Vote, &to_json(&v)?, true)?;
            *s.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.blocking(move |s| {
            files::write_atomic(
                &s.dir.join("committed"),
                FileKind::Committed,
                &to_json(&committed)?,
                false,
            )?;
            *s.committed.lock().unwrap_or_else(|p| p.into_inner()) = committed;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let committed = *self
            .shared
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Never claim what the log does not hold (the hint is written without fsync).
        let log = self.shared.log();
        Ok(committed.filter(|c| {
            log.last_purged.is_some_and(|p| p >= *c)
                || log.entries.get(&c.index).map(|e| e.log_id) == Some(*c)
        }))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let batch: Vec<_> = entries.into_iter().collect();
        let renewal = batch.iter().any(|e| {
            matches!(
                &e.payload,
                EntryPayload::Normal(Proposal {
                    command: ControlCommand::RenewLease { .. },
                    ..
                })
            )
        });
        if renewal {
            *self
                .shared
                .renewal_arrived
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let result = self.blocking(move |s| s.log().append(batch)).await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(StorageIOError::write_logs(&io::Error::other(msg)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.blocking(move |s| s.log().truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.blocking(move |s| s.log().purge(log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests;
