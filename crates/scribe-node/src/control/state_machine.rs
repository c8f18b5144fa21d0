//! The control plane's state machine: the [`ControlState`] with the committed commands applied,
//! published on a `watch` after every applied batch. It lives in memory; what makes it durable
//! is the Raft log plus the snapshot file `<data_dir>/control/snapshot` (the whole state as
//! JSON, with the log id and membership it includes), rewritten atomically at every snapshot
//! openraft asks for. At start-up the state is the snapshot's, and openraft re-applies the
//! committed log after it.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, LogId, OptionalSend, StorageError, StorageIOError, StoredMembership};
use scribe_core::ControlState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::files::{self, FileKind};
use super::types::{ControlNode, NodeId, Reply, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// What a snapshot holds (its data, as openraft ships it to a follower).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotBody {
    state: ControlState,
}

/// The snapshot file: the metadata and the data openraft sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, ControlNode>,
    data: Vec<u8>,
}

/// Invariant: `state` is the result of applying every normal entry up to `last_applied`;
/// `membership` is the last membership entry up to there.
struct Inner {
    state: ControlState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ControlNode>,
    snapshot: Option<SnapshotFile>,
    /// Distinguishes snapshots of the same log id.
    snapshots_built: u64,
}

/// The state machine openraft drives; clones share it.
#[derive(Clone)]
pub struct StateMachine {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    tx: Arc<watch::Sender<ControlState>>,
    /// Where the log store notes when the latest lease renewal arrived: a snapshot received from
    /// the leader brings renewals that never arrived in the log, so installing one counts as
    /// their arrival (see `scribe_core::PrimarySilence`).
    renewal_arrived: Option<Arc<Mutex<Option<std::time::Instant>>>>,
}

impl StateMachine {
    /// Marks installed snapshots' renewals as arrived in `cell` (the log store's).
    pub fn note_renewals_in(
        mut self,
        cell: Arc<Mutex<Option<std::time::Instant>>>,
    ) -> StateMachine {
        self.renewal_arrived = Some(cell);
        self
    }

    /// Opens the state machine from the snapshot in `dir`, if there is one.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        let path = dir.join("snapshot");
        let snapshot = match files::read_single(&path, FileKind::Snapshot)? {
            None => None,
            Some(bytes) => Some(decode::<SnapshotFile>(&bytes, "read the control snapshot")?),
        };
        let mut inner = Inner {
            state: ControlState::default(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(s) = snapshot {
            let body: SnapshotBody = decode(&s.data, "read the control snapshot's state")?;
            inner.state = body.state;
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.snapshot = Some(s);
        }
        let (tx, _) = watch::channel(inner.state.clone());
        Ok(StateMachine {
            path,
            inner: Arc::new(Mutex::new(inner)),
            tx: Arc::new(tx),
            renewal_arrived: None,
        })
    }

    /// The applied state, updated after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<ControlState> {
        self.tx.subscribe()
    }

    /// The membership included in the snapshot or applied since.
    pub fn membership(&self) -> StoredMembership<NodeId, ControlNode> {
        self.lock().membership.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn save_snapshot(&self, file: SnapshotFile) -> io::Result<()> {
        let path = self.path.clone();
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            files::write_atomic(&path, FileKind::Snapshot, &bytes, true)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("snapshot task failed: {e}"))))
    }
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: &str) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}")))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let file = {
            let mut inner = self.lock();
            inner.snapshots_built += 1;
            let data = serde_json::to_vec(&SnapshotBody {
                state: inner.state.clone(),
            })
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
            let id = match inner.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, inner.snapshots_built),
                None => format!("0-0-{}", inner.snapshots_built),
            };
            SnapshotFile {
                meta: SnapshotMeta {
                    last_log_id: inner.last_applied,
                    last_membership: inner.membership.clone(),
                    snapshot_id: id,
                },
                data,
            }
        };
        self.save_snapshot(file.clone())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(file.meta.signature()), &e))?;
        let snapshot = Snapshot {
            meta: file.meta.clone(),
            snapshot: Box::new(Cursor::new(file.data.clone())),
        };
        self.lock().snapshot = Some(file);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, ControlNode>)> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Reply>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let state = {
            let mut inner = self.lock();
            for entry in entries {
                inner.last_applied = Some(entry.log_id);
                replies.push(match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(p) => {
                        let kind = p.command.kind();
                        let r = inner.state.apply(p.command, p.at_unix_ms);
                        if let Err(e) = &r {
                            tracing::debug!(command = kind, error = %e, "control command refused");
                        }
                        Some(r)
                    }
                    EntryPayload::Membership(m) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), m);
                        None
                    }
                });
            }
            inner.state.clone()
        };
        self.tx.send_replace(state);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ControlNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = decode(&data, "read a received control snapshot")
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(file.clone())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        {
            let mut inner = self.lock();
            inner.state = body.state.clone();
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.snapshot = Some(file);
        }
        if let Some(cell) = &self.renewal_arrived {
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        }
        self.tx.send_replace(body.state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.lock().snapshot.as_ref().map(|f| Snapshot {
            meta: f.meta.clone(),
            snapshot: Box::new(Cursor::new(f.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot received from the leader brings renewals that never arrived in the log: its
    /// installation counts as their arrival, so the failover manager never takes them as old.
    #[tokio::test]
    async fn installing_a_snapshot_counts_as_its_renewals_arrival() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = StateMachine::open(a.path()).unwrap();
        let snap = leader.build_snapshot().await.unwrap();
        let cell = Arc::new(Mutex::new(None));
        let mut follower = StateMachine::open(b.path())
            .unwrap()
            .note_renewals_in(cell.clone());
        assert!(cell.lock().unwrap().is_none());
        let before = std::time::Instant::now();
        follower
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let at = cell.lock().unwrap().expect("the installation is noted");
        assert!(at >= before);
    }
}
