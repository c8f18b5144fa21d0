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
    /// Why it cannot apply what it receives, while it says so (its disk is full, say).
    stalled: Option<String>,
    /// Woken when a newer connection of the same replica replaces this one.
    superseded: Arc<tokio::sync::Notify>,
    /// Whether it has reported its positions on this connection. Until it has, it counts for no
    /// quorum: its hello says only where its log ends, not what it applied.
    reported: bool,
    /// The last LSN it can have: what it had at the handshake, what it was sent, or the position
    /// of the snapshot it was sent. A report beyond it is a protocol error.
    sent_upto: Lsn,
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
    /// Why it has stopped applying what it receives, while it has (its disk is full, say): it
    /// keeps what it had and goes on by itself once it can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<String>,
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
                if e.last_contact.elapsed() < super::HEARTBEAT * 3 {
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
                stalled: None,
                superseded: superseded.clone(),
                reported: false,
                sent_upto: last.lsn,
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
                // Sent, not yet installed: it counts again once it reports.
                e.sent_upto = e.sent_upto.max(needs.prev());
                e.reported = false;
                ReplicaState::CatchingUp
            };
        }
        self.publish(&entries);
    }

    /// Notes records just sent to `name`, with the size of the message that carried them.
    pub fn sent(&self, name: &str, conn: u64, records: &[scribe_log::Record]) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(name).filter(|e| e.conn == conn) {
            for r in records {
                e.sent_upto = e.sent_upto.max(r.lsn);
                e.bytes_sent += r.frame_len() as u64;
                e.inflight.push_back(Sent {
                    lsn: r.lsn,
                    bytes_through: e.bytes_sent,
                    time_us: r.time_us,
                });
            }
        }
    }

    /// Notes that `name` stopped applying (`Some(why)`) or applies again (`None`).
    pub fn stalled(&self, name: &str, conn: u64, reason: Option<String>) {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(name).filter(|e| e.conn == conn) {
            e.last_contact = Instant::now();
            e.stalled = reason;
        }
        self.publish(&entries);
    }

    /// Takes a replica's reported positions; `primary_flushed` is the primary's own. A report
    /// out of order, or beyond what the replica can have, is refused.
    pub fn progress(
        &self,
        name: &str,
        conn: u64,
        p: Progress,
        primary_flushed: Lsn,
    ) -> Result<(), String> {
        if !(p.applied <= p.flushed && p.flushed <= p.written) {
            return Err(format!(
                "the replica reported positions out of order (written {}, flushed {}, applied {})",
                p.written, p.flushed, p.applied
            ));
        }
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(name).filter(|e| e.conn == conn) else {
            return Ok(());
        };
        if p.written.lsn > e.sent_upto {
            return Err(format!(
                "the replica reported lsn {} but can have at most {}",
                p.written.lsn, e.sent_upto
            ));
        }
        e.last_contact = Instant::now();
        let moved = p != e.progress || !e.reported;
        e.progress = p;
        e.reported = true;
        e.needs = e.needs.max(Lsn(p.flushed.lsn.0.saturating_add(1)));
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
        Ok(())
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
            .filter(|(_, e)| {
                e.reported && matches!(e.state, ReplicaState::CatchingUp | ReplicaState::Streaming)
            })
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

    /// The oldest LSN any known replica (connected or not) still needs — the record at its
    /// flushed position included, so that its reconnection can be checked against this log;
    /// `None` when no replica has been seen since this node started.
    pub fn needed_from(&self) -> Option<Lsn> {
        self.lock().values().map(|e| e.needs.prev()).min()
    }

    /// The oldest LSN a replica being seeded will stream from: kept whatever the size limit,
    /// or the replica would be seeded again and again.
    pub fn pinned_from(&self) -> Option<Lsn> {
        self.lock()
            .values()
            .filter(|e| e.state == ReplicaState::Seeding)
            .map(|e| e.needs)
            .min()
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
                    stalled: e.stalled.clone(),
                };
                ReplicaMetrics {
                    view,
                    apply_lag: e.apply_lag.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use scribe_core::Term;

    use super::*;

    fn pos(l: u64) -> Position {
        Position::new(Term(1), Lsn(l))
    }

    fn prog(w: u64, f: u64, a: u64) -> Progress {
        Progress {
            written: pos(w),
            flushed: pos(f),
            applied: pos(a),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn record(lsn: u64) -> scribe_log::Record {
        scribe_log::Record {
            term: Term(1),
            lsn: Lsn(lsn),
            batch_first: Lsn(lsn),
            time_us: 0,
            payload: vec![0; 10],
        }
    }

    fn sync_lsn(r: &Registry) -> Lsn {
        r.quorums()
            .borrow()
            .applied
            .as_ref()
            .map_or(Lsn::ZERO, |q| q.lsn)
    }

    #[test]
    fn a_replica_counts_only_once_it_has_reported() {
        let r = Registry::new("ANY 1 (*)".parse().unwrap());
        // Its hello says its log ends at 10; it may have applied less.
        let (c, _) = r.connect("n2", addr(1), "", pos(10), Lsn(11)).unwrap();
        assert_eq!(sync_lsn(&r), Lsn::ZERO);
        assert!(r.current_acks().is_empty());
        r.progress("n2", c, prog(10, 10, 7), Lsn(10)).unwrap();
        assert_eq!(sync_lsn(&r), Lsn(7));
        assert_eq!(r.current_acks()[0].flushed, Lsn(10));
    }

    #[test]
    fn a_seeded_replica_counts_again_only_after_reporting_the_snapshot_position() {
        let r = Registry::new("ANY 1 (*)".parse().unwrap());
        let (c, _) = r
            .connect("n2", addr(1), "", Position::ZERO, Lsn(1))
            .unwrap();
        r.progress("n2", c, prog(0, 0, 0), Lsn(0)).unwrap();
        r.seeding("n2", c, Some((0, 100)), Lsn(51));
        assert_eq!(r.pinned_from(), Some(Lsn(51)));
        assert!(r.current_acks().is_empty());
        // Sent, not installed: nothing counts, and a report past the snapshot is refused.
        r.seeding("n2", c, None, Lsn(51));
        assert!(r.current_acks().is_empty());
        assert_eq!(sync_lsn(&r), Lsn::ZERO);
        assert!(r.progress("n2", c, prog(51, 51, 51), Lsn(60)).is_err());
        r.progress("n2", c, prog(50, 50, 50), Lsn(60)).unwrap();
        assert_eq!(sync_lsn(&r), Lsn(50));
        assert_eq!(r.pinned_from(), None);
    }

    #[test]
    fn reports_beyond_what_was_sent_or_out_of_order_are_refused() {
        let r = Registry::new("ANY 1 (*)".parse().unwrap());
        let (c, _) = r.connect("n2", addr(1), "", pos(3), Lsn(4)).unwrap();
        assert!(r.progress("n2", c, prog(4, 4, 4), Lsn(9)).is_err());
        assert!(r.progress("n2", c, prog(3, 3, 4), Lsn(9)).is_err());
        r.sent("n2", c, &[record(4), record(5)]);
        r.progress("n2", c, prog(5, 5, 4), Lsn(9)).unwrap();
        let v = &r.views(Lsn(5))[0].view;
        assert_eq!((v.applied_lsn, v.lag_records), (4, 1));
        assert_eq!(v.lag_bytes, record(5).frame_len() as u64);
        // A huge position does not overflow anything.
        let huge = Progress {
            written: Position::new(Term(1), Lsn(u64::MAX)),
            flushed: Position::new(Term(1), Lsn(u64::MAX)),
            applied: Position::new(Term(1), Lsn(u64::MAX)),
        };
        assert!(r.progress("n2", c, huge, Lsn(9)).is_err());
    }

    #[test]
    fn a_live_connection_keeps_its_name_and_a_closed_one_gives_it_up() {
        let r = Registry::new("ANY 1 (*)".parse().unwrap());
        let (c, _) = r.connect("n2", addr(1), "", pos(3), Lsn(4)).unwrap();
        assert_eq!(
            r.connect("n2", addr(2), "", pos(3), Lsn(4)).unwrap_err(),
            NameInUse(addr(1))
        );
        r.disconnect("n2", c, Some("gone".into()));
        let (c2, _) = r.connect("n2", addr(2), "", pos(3), Lsn(4)).unwrap();
        // Reports of the old connection are ignored.
        r.progress("n2", c, prog(3, 3, 3), Lsn(3)).unwrap();
        assert!(r.current_acks().is_empty());
        r.progress("n2", c2, prog(3, 3, 3), Lsn(3)).unwrap();
        assert_eq!(r.current_acks().len(), 1);
        // Disconnected replicas still hold the log they need (their last record included).
        r.disconnect("n2", c2, None);
        assert_eq!(r.needed_from(), Some(Lsn(3)));
        assert!(r.current_acks().is_empty());
    }
}
