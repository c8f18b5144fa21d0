//! [`Registry`]: the primary's view of its replicas — who is connected, their written / flushed /
//! applied positions, what was sent to them and not yet applied (for lag in bytes and time), and
//! the quorum positions the sync set guarantees, published on a watch channel for the writes
//! that wait on them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use scribe_core::{CommitMode, Histogram, Lsn, Position, QuorumPosition, ReplicaAck, SyncSet};
use scribe_wire::Progress;
use serde::Serialize;
use tokio::sync::watch;

/// Where a replica is in its life, as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Receiving a snapshot.
    Seeding,
    /// Connected, behind the primary's log.
    CatchingUp,
    /// Connected and has applied everything the primary has flushed.
    Streaming,
    /// Not connected.
    Disconnected,
}

/// The quorum positions the sync set guarantees, for each waiting level.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quorums {
    /// Records flushed on the quorum (semi-sync).
    pub flushed: Option<QuorumPosition>,
    /// Records applied on the quorum (sync).
    pub applied: Option<QuorumPosition>,
}

impl Quorums {
    /// The quorum position for `mode`'s level (`None` for async).
    pub fn level(&self, mode: CommitMode) -> Option<&QuorumPosition> {
        match mode {
            CommitMode::Async => None,
            CommitMode::SemiSync => self.flushed.as_ref(),
            CommitMode::Sync => self.applied.as_ref(),
        }
    }
}

/// A record sent to a replica and not yet applied there.
#[derive(Debug, Clone, Copy)]
struct Sent {
    lsn: Lsn,
    /// Bytes sent to this replica up to and including this record.
    bytes_through: u64,
    /// Its commit time on the primary.
    time_us: u64,
}

#[derive(Debug)]
struct Entry {
    conn: u64,
    addr: SocketAddr,
    http_url: String,
    state: ReplicaState,
    progress: Progress,
    last_contact: Instant,
    connected_at: Instant,
    seeding: Option<(u64, u64)>,
    inflight: VecDeque<Sent>,
    /// Bytes of records sent on this connection; invariant `bytes_applied <= bytes_sent`.
    bytes_sent: u64,
    /// Bytes of the sent records it has applied.
    bytes_applied: u64,
    /// The oldest LSN it still needs from the log.
    needs: Lsn,
    apply_lag: Arc<Histogram>,
    error: Option<String>,
    /// Woken when a newer connection of the same replica replaces this one.
    superseded: Arc<tokio::sync::Notify>,
}

/// What `GET /v1/status` shows of one replica.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    /// Node name.
    pub name: String,
    /// State.
    pub state: ReplicaState,
    /// Whether it is a member of the sync set.
    pub sync_member: bool,
    /// Peer address it connected from.
    pub addr: String,
    /// Its HTTP API.
    pub http_url: String,
    /// Last record received.
    pub written_lsn: u64,
    /// Last record fsynced in its log.
    pub flushed_lsn: u64,
    /// Last record applied to its SQLite.
    pub applied_lsn: u64,
    /// Records the primary has flushed and the replica has not applied.
    pub lag_records: u64,
    /// Bytes of those records that were already sent (records still unread on the primary
    /// during a catch-up are not counted).
    pub lag_bytes: u64,
    /// Age of the oldest record not yet received, milliseconds (0 when caught up).
    pub write_lag_ms: Option<f64>,
    /// Age of the oldest record not yet fsynced there.
    pub flush_lag_ms: Option<f64>,
    /// Age of the oldest record not yet applied there.
    pub apply_lag_ms: Option<f64>,
    /// Milliseconds since the replica last sent anything.
    pub last_contact_ms_ago: u64,
    /// Seconds since it connected (or since it disconnected, when disconnected).
    pub since_seconds: u64,
    /// Snapshot transfer, while seeding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeding: Option<SeedingView>,
    /// Why it last disconnected or was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Snapshot transfer progress.
#[derive(Debug, Clone, Serialize)]
pub struct SeedingView {
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// Size of the snapshot.
    pub bytes_total: u64,
}

/// Per-replica figures for the metrics page.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    /// The status view.
    pub view: ReplicaView,
    /// Commit-to-applied time of each transaction, as the primary learns it.
    pub apply_lag: Arc<Histogram>,
}

/// Why a replica cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameInUse(pub SocketAddr);

/// The primary's replicas. Cheap to share; every method takes the lock briefly.
#[derive(Debug)]
pub struct Registry {
    sync_set: SyncSet,
    entries: Mutex<BTreeMap<String, Entry>>,
    next_conn: Mutex<u64>,
    quorums: watch::Sender<Quorums>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Registry {
    /// An empty registry for `sync_set`.
    pub fn new(sync_set: SyncSet) -> Registry {
        Registry {
            sync_set,
            entries: Mutex::new(BTreeMap::new()),
            next_conn: Mutex::new(0),
            quorums: watch::channel(Quorums::default()).0,
        }
    }

    /// The sync set.
    pub fn sync_set(&self) -> &SyncSet {
        &self.sync_set
    }

    /// A receiver of the quorum positions, which change whenever a replica acknowledges,
    /// connects or disconnects.
    pub fn quorums(&self) -> watch::Receiver<Quorums> {
        self.quorums.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().expect("replica registry")
    }

    /// Records a newly connected replica that still needs the log from `needs`; answers the
    /// connection's id, or who already holds the name.
    pub fn connect(
        &self,
        name: &str,
        addr: SocketAddr,
        http_url: &str,
        last: Position,
        needs: Lsn,
    ) -> Result<(u64, Arc<tokio::sync::Notify>), NameInUse> {
        let conn = {
            let mut n = self.next_conn.lock().expect("connection counter");
            *n += 1;
            *n
        };
        let mut entries = self.lock();
        if let Some(e) = entries.get(name) {
            if e.state != ReplicaState::Disconnected {
                // A connection still heard from is another node with the same name; a silent one
                // is this replica's previous connection (it restarted, or a partition hid the
                // close from us): the new one supersedes it and the old one's reports are ignored.
                if e.last_contact.elapsed() < super::HEARTBEAT * 3 && e.addr.ip() != addr.ip() {
                    return Err(NameInUse(e.addr));
                }
                e.superseded.notify_one();
            }
        }
        let apply_lag = entries
            .get(name)
            .map(|e| e.apply_lag.clone())
            .unwrap_or_else(|| Arc::new(Histogram::exponential(0.000_1, 1.25, 48)));
        let now = Instant::now();
        let superseded = Arc::new(tokio::sync::Notify::new());
        entries.insert(
            name.to_string(),
            Entry {
                conn,
                addr,
                http_url: http_url.to_string(),
                state: ReplicaState::CatchingUp,
                progress: Progress {
                    written: last,
                    flushed: last,
                    applied: last,
                },
                last_contact: now,
                connected_at: now,
                seeding: None,
                inflight: VecDeque::new(),
                bytes_sent: 0,
                bytes_applied: 0,
                needs,
                apply_lag,
                error: None,
                superseded: superseded.clone(),
            },
        );
        self.publish(&entries);
        Ok((conn, superseded))
    }

    /// Marks connection `conn` of `name` as gone, with why.
    pub fn disconnect(&self, name: &str, conn: u64, error: Option<String>) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(name) {
            if e.conn == conn {
                e.state = ReplicaState::Disconnected;
                e.seeding = None;
                e.inflight.clear();
                e.bytes_applied = e.bytes_sent;
                e.connected_at = Instant::now();
                e.error = error;
            }
        }
        self.publish(&entries);
    }

    /// Snapshot transfer progress of `name` (`None` when it ends), and the LSN the replica will
    /// need from the log once it is installed.
    pub fn seeding(&self, name: &str, conn: u64, progress: Option<(u64, u64)>, needs: Lsn) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(name).filter(|e| e.conn == conn) {
            e.seeding = progress;
            e.needs = needs;
            e.state = if progress.is_some() {
                ReplicaState::Seeding
            } else {
                ReplicaState::CatchingUp
            };
            if progress.is_none() {
                e.progress = Progress {
                    written: Position::new(e.progress.written.term, needs.prev()),
                    flushed: Position::new(e.progress.flushed.term, needs.prev()),
                    applied: Position::new(e.progress.applied.term, needs.prev()),
                };
            }
        }
    }

    /// Notes records just sent to `name`, with the size of the message that carried them.
    pub fn sent(&self, name: &str, conn: u64, records: &[scribe_log::Record]) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(name).filter(|e| e.conn == conn) {
            for r in records {
                e.bytes_sent += r.frame_len() as u64;
                e.inflight.push_back(Sent {
                    lsn: r.lsn,
                    bytes_through: e.bytes_sent,
                    time_us: r.time_us,
                });
            }
        }
    }

    /// Takes a replica's reported positions; `primary_flushed` is the primary's own.
    pub fn progress(&self, name: &str, conn: u64, p: Progress, primary_flushed: Lsn) {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(name).filter(|e| e.conn == conn) else {
            return;
        };
        e.last_contact = Instant::now();
        let moved = p != e.progress;
        e.progress = p;
        e.needs = e.needs.max(p.flushed.lsn.next());
        let now = now_us();
        while let Some(&s) = e.inflight.front() {
            if s.lsn > p.applied.lsn {
                break;
            }
            e.apply_lag
                .observe(now.saturating_sub(s.time_us) as f64 / 1e6);
            e.bytes_applied = s.bytes_through;
            e.inflight.pop_front();
        }
        if e.seeding.is_none() {
            e.state = if p.applied.lsn >= primary_flushed {
                ReplicaState::Streaming
            } else {
                ReplicaState::CatchingUp
            };
        }
        if moved {
            self.publish(&entries);
        }
    }

    /// Milliseconds since `name` last sent anything (for the connection's idle check).
    pub fn idle_ms(&self, name: &str) -> Option<u64> {
        self.lock()
            .get(name)
            .map(|e| e.last_contact.elapsed().as_millis() as u64)
    }

    fn acks(entries: &BTreeMap<String, Entry>) -> Vec<ReplicaAck> {
        entries
            .iter()
            .filter(|(_, e)| matches!(e.state, ReplicaState::CatchingUp | ReplicaState::Streaming))
            .map(|(name, e)| ReplicaAck {
                name: name.clone(),
                flushed: e.progress.flushed.lsn,
                applied: e.progress.applied.lsn,
            })
            .collect()
    }

    fn publish(&self, entries: &BTreeMap<String, Entry>) {
        let acks = Self::acks(entries);
        let level = |f: fn(&ReplicaAck) -> Lsn| {
            let v: Vec<(String, Lsn)> = acks.iter().map(|a| (a.name.clone(), f(a))).collect();
            self.sync_set.quorum_position(&v)
        };
        let q = Quorums {
            flushed: Some(level(|a| a.flushed)),
            applied: Some(level(|a| a.applied)),
        };
        self.quorums.send_if_modified(|old| {
            if *old == q {
                false
            } else {
                *old = q;
                true
            }
        });
    }

    /// The connected replicas' acknowledgements.
    pub fn current_acks(&self) -> Vec<ReplicaAck> {
        Self::acks(&self.lock())
    }

    /// The oldest LSN any known replica (connected or not) still needs; `None` when no replica
    /// has been seen since this node started.
    pub fn needed_from(&self) -> Option<Lsn> {
        self.lock().values().map(|e| e.needs).min()
    }

    /// Forgets `name` (an operator removed it, or it was re-seeded elsewhere).
    pub fn forget(&self, name: &str) {
        let mut entries = self.lock();
        entries.remove(name);
        self.publish(&entries);
    }

    /// Every known replica, for the status page, given the primary's flushed position.
    pub fn views(&self, primary_flushed: Lsn) -> Vec<ReplicaMetrics> {
        let now = now_us();
        let entries = self.lock();
        entries
            .iter()
            .map(|(name, e)| {
                let p = e.progress;
                let connected = e.state != ReplicaState::Disconnected;
                // Age of the oldest record beyond `lsn` still in flight; 0 when caught up.
                let age = |lsn: Lsn| -> Option<f64> {
                    if lsn >= primary_flushed {
                        return Some(0.0);
                    }
                    if !connected {
                        return None;
                    }
                    e.inflight
                        .iter()
                        .find(|s| s.lsn > lsn)
                        .map(|s| now.saturating_sub(s.time_us) as f64 / 1000.0)
                };
                let lag_bytes = e.bytes_sent - e.bytes_applied;
                let view = ReplicaView {
                    name: name.clone(),
                    state: e.state,
                    sync_member: self.sync_set.contains(name),
                    addr: e.addr.to_string(),
                    http_url: e.http_url.clone(),
                    written_lsn: p.written.lsn.0,
                    flushed_lsn: p.flushed.lsn.0,
                    applied_lsn: p.applied.lsn.0,
                    lag_records: primary_flushed.0.saturating_sub(p.applied.lsn.0),
                    lag_bytes,
                    write_lag_ms: age(p.written.lsn),
                    flush_lag_ms: age(p.flushed.lsn),
                    apply_lag_ms: age(p.applied.lsn),
                    last_contact_ms_ago: e.last_contact.elapsed().as_millis() as u64,
                    since_seconds: e.connected_at.elapsed().as_secs(),
                    seeding: e.seeding.map(|(sent, total)| SeedingView {
                        bytes_sent: sent,
                        bytes_total: total,
                    }),
                    error: e.error.clone(),
                };
                ReplicaMetrics {
                    view,
                    apply_lag: e.apply_lag.clone(),
                }
            })
            .collect()
    }
}
