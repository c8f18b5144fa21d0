//! The replica's side of the peer protocol: connect to the primary (reconnecting with backoff),
//! say where this node's log ends, install a snapshot when the primary sends one, then append,
//! fsync and apply the streamed records in batches and report written / flushed / applied as
//! they move — and on a timer, so the primary's lag figures read zero when nothing happens.
//!
//! Three futures per connection: the receiver reads messages and hands records to the applier
//! over a bounded channel (so a slow disk slows the stream instead of filling memory); the
//! applier takes everything queued as one batch (one fsync, one SQLite transaction); the
//! reporter owns the socket's write half. Fencing: a primary whose term is older than this
//! node's is refused, and so is any record of an older term (the engine checks every append).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scribe_core::{Freshness, Lsn, Position};
use scribe_log::Record;
use scribe_sqlite::Engine;
use scribe_wire::{
    read_message, write_message, Hello, Message, Progress, Refusal, RefusalCode, Start, WireError,
};
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch};

use super::{HANDSHAKE_TIMEOUT, HEARTBEAT};
use crate::identity;
use crate::leadership::{Leadership, NodeRole};
use crate::peer_link::{DialError, PeerReader, PeerSecurity, PeerWriter};

mod rejoin;

/// The file whose presence says the data directory is being seeded and is not usable.
pub use super::snapshot::{discard_unfinished_seeding, SEEDING_MARKER};
use super::snapshot::{remove_marker, write_marker};

/// Where the replica is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowState {
    /// Connecting (or waiting to reconnect).
    Connecting,
    /// Receiving and installing a snapshot.
    Seeding,
    /// Connected, behind the primary.
    CatchingUp,
    /// Connected, caught up.
    Streaming,
    /// The primary refused this replica; retrying.
    Refused,
    /// Applying failed; this replica needs repair.
    Failed,
    /// This node is not a replica (it is the primary): nothing to follow.
    Idle,
    /// Undoing records the new primary never had (an old primary rejoining).
    RollingBack,
    /// Connected, but it cannot apply what it receives (its disk is full): it keeps what it
    /// had, serves reads from it, and goes on by itself once there is room.
    Stalled,
}

/// A roll-back this node did to rejoin a new primary, as its status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackView {
    /// When, milliseconds since the epoch.
    pub at_unix_ms: u64,
    /// Where its log ended before.
    pub from: String,
    /// Where it ends now: the last position it shares with the new primary.
    pub to: String,
    /// Transactions undone.
    pub transactions: u64,
    /// Row changes undone.
    pub rows: u64,
    /// The rollback file that lists them.
    pub file: String,
}

/// What the status page shows of the replication of a replica.
#[derive(Debug, Clone, Serialize)]
pub struct FollowView {
    /// State.
    pub state: FollowState,
    /// The peer address it follows.
    pub follow: String,
    /// The primary's name, once known.
    pub primary: Option<String>,
    /// The primary's HTTP API, once known.
    pub primary_url: Option<String>,
    /// The primary's flushed LSN, from its last heartbeat or records.
    pub primary_flushed_lsn: u64,
    /// Last record received.
    pub written_lsn: u64,
    /// Records the primary has that this node has not applied (as of the last word from it).
    pub lag_records: u64,
    /// How stale its reads may be, milliseconds (see `max_lag` on `/v1/query`); `null` when
    /// unknown (it has not yet known itself caught up).
    pub lag_ms: Option<f64>,
    /// Milliseconds since the primary last sent anything.
    pub last_contact_ms_ago: Option<u64>,
    /// Snapshot transfer, while seeding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeding: Option<super::registry::SeedingView>,
    /// The last error, if the connection is not up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it stopped applying, while it is stalled (state `stalled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<String>,
    /// Roll-backs done since start to rejoin a new primary (see the rollback files).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollbacks: Vec<RollbackView>,
}

#[derive(Debug)]
struct Shared {
    state: FollowState,
    /// The peer address followed now.
    follow: String,
    primary: Option<(String, String)>,
    primary_flushed: Lsn,
    last_contact: Option<Instant>,
    seeding: Option<(u64, u64)>,
    error: Option<String>,
    /// Why it cannot apply, while it cannot (a full disk).
    stalled: Option<String>,
    /// How stale this replica's reads may be, from the primary's heartbeats.
    freshness: Freshness,
    /// Roll-backs done since start.
    rollbacks: Vec<RollbackView>,
}

/// A replica's follower: its configuration and the state its status page shows.
pub struct Follower {
    engine: Engine,
    name: String,
    leadership: Leadership,
    http_url: String,
    data_dir: PathBuf,
    cluster_id: Mutex<String>,
    shared: Mutex<Shared>,
    written: watch::Sender<Position>,
    peer_timeout: Duration,
    /// In cluster mode: where a roll-back is reported, for the failover history.
    control: Option<crate::control::ControlPlane>,
    /// How connections to the primary are secured.
    security: Arc<PeerSecurity>,
}

/// Why a connection ended.
enum Ended {
    Refused(Refusal),
    Failed(String),
    Fatal(String),
}

impl From<WireError> for Ended {
    fn from(e: WireError) -> Self {
        Ended::Failed(e.to_string())
    }
}

impl From<std::io::Error> for Ended {
    fn from(e: std::io::Error) -> Self {
        Ended::Failed(e.to_string())
    }
}

type Writer = BufWriter<PeerWriter>;
type Reader = BufReader<PeerReader>;

impl Follower {
    /// The follower of this node: while [`Leadership`] says this node is a replica, it follows
    /// the primary's peer address the view names (see [`Follower::run`]).
    pub fn new(
        engine: Engine,
        name: String,
        cluster_id: String,
        leadership: Leadership,
        http_url: String,
        data_dir: PathBuf,
        peer_timeout: Duration,
    ) -> Follower {
        let at = engine.progress().last;
        Follower {
            engine,
            name,
            leadership,
            http_url,
            data_dir,
            cluster_id: Mutex::new(cluster_id),
            shared: Mutex::new(Shared {
                state: FollowState::Idle,
                follow: String::new(),
                primary: None,
                primary_flushed: Lsn::ZERO,
                last_contact: None,
                seeding: None,
                error: None,
                stalled: None,
                freshness: Freshness::new(HEARTBEAT),
                rollbacks: Vec::new(),
            }),
            written: watch::channel(at).0,
            peer_timeout,
            control: None,
            security: Arc::new(PeerSecurity::none()),
        }
    }

    /// How connections to the primary are secured (TLS, the peer secret).
    pub fn with_security(mut self, security: Arc<PeerSecurity>) -> Follower {
        self.security = security;
        self
    }

    /// In cluster mode: the control plane where roll-backs are reported.
    pub fn with_control(mut self, control: Option<crate::control::ControlPlane>) -> Follower {
        self.control = control;
        self
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("follower state")
    }

    /// The cluster id of this node's data (it changes once, when an empty replica joins).
    pub fn cluster_id(&self) -> String {
        self.cluster_id.lock().expect("cluster id").clone()
    }

    /// How stale this replica's reads may be, `None` when unknown (it has never known itself
    /// caught up); see [`Freshness`].
    pub fn lag(&self) -> Option<Duration> {
        let s = self.shared();
        let applied = self.engine.progress().applied.lsn;
        // Records received and not yet applied mean behind, whatever the last heartbeat said.
        let received = self.written.borrow().lsn;
        s.freshness.lag(applied, received, Instant::now())
    }

    /// The status view.
    pub fn view(&self) -> FollowView {
        let lag_ms = self.lag().map(|l| l.as_secs_f64() * 1000.0);
        let s = self.shared();
        let applied = self.engine.progress().applied.lsn;
        FollowView {
            state: if s.stalled.is_some() {
                FollowState::Stalled
            } else {
                s.state
            },
            follow: s.follow.clone(),
            primary: s.primary.as_ref().map(|p| p.0.clone()),
            primary_url: s.primary.as_ref().map(|p| p.1.clone()),
            primary_flushed_lsn: s.primary_flushed.0,
            written_lsn: self.written.borrow().lsn.0,
            lag_records: s.primary_flushed.0.saturating_sub(applied.0),
            lag_ms,
            last_contact_ms_ago: s.last_contact.map(|t| t.elapsed().as_millis() as u64),
            seeding: s.seeding.map(|(sent, total)| super::registry::SeedingView {
                bytes_sent: sent,
                bytes_total: total,
            }),
            error: s.error.clone(),
            stalled: s.stalled.clone(),
            rollbacks: s.rollbacks.clone(),
        }
    }

    fn set_state(&self, state: FollowState, error: Option<String>) {
        let mut s = self.shared();
        s.state = state;
        if error.is_some() || state == FollowState::Streaming || state == FollowState::CatchingUp {
            s.error = error;
        }
    }

    /// Notes a message from the primary; `heartbeat` is the flushed position a heartbeat carried.
    fn contact(&self, heartbeat: Option<Lsn>) {
        let mut s = self.shared();
        let now = Instant::now();
        s.last_contact = Some(now);
        let applied = self.engine.progress().applied.lsn;
        match heartbeat {
            Some(f) => {
                s.primary_flushed = s.primary_flushed.max(f);
                s.freshness.heartbeat(f, applied, now);
            }
            // Caught up as of the latest heartbeat once its position is applied (which may
            // happen after it arrived, when records were still queued ahead of it).
            None => s.freshness.applied(applied),
        }
        if s.state == FollowState::CatchingUp || s.state == FollowState::Streaming {
            s.state = if applied >= s.primary_flushed {
                FollowState::Streaming
            } else {
                FollowState::CatchingUp
            };
        }
    }

    /// Follows the primary while this node is a replica, until the task is dropped: connect,
    /// stream, reconnect with backoff; when the view names another primary (a failover, a
    /// switchover), the connection to the old one is dropped and the new one followed; while this
    /// node is the primary, it waits.
    pub async fn run(self: Arc<Self>) {
        let mut view = self.leadership.subscribe();
        loop {
            let target = {
                let v = view.borrow_and_update();
                match (&v.role, &v.primary.peer_addr) {
                    (NodeRole::Replica, Some(addr)) => Some(addr.clone()),
                    _ => None,
                }
            };
            let Some(target) = target else {
                self.set_state(FollowState::Idle, None);
                if view.changed().await.is_err() {
                    return;
                }
                continue;
            };
            {
                let mut s = self.shared();
                s.follow = target.clone();
                s.state = FollowState::Connecting;
                s.freshness.reset();
            }
            let retarget = async {
                loop {
                    if view.changed().await.is_err() {
                        return;
                    }
                    let v = view.borrow();
                    if v.role != NodeRole::Replica
                        || v.primary.peer_addr.as_deref() != Some(&target)
                    {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = self.clone().follow_target(target.clone()) => return,
                _ = retarget => {
                    tracing::info!(was = %target, "the primary changed; following the new one");
                }
            }
        }
    }

    /// Follows the primary at `target` until the task is dropped (or applying fails for good).
    async fn follow_target(self: Arc<Self>, target: String) {
        let mut backoff = Duration::from_millis(100);
        // A target not primary yet is usually a promotion a few milliseconds from reaching it:
        // look again soon, then less often.
        let mut not_primary = Duration::from_millis(10);
        let mut last_error = String::new();
        loop {
            let outcome = self.session(&target).await;
            let (state, error, pause) = match outcome {
                Ended::Refused(r) => {
                    // An authentication failure says so first, whichever side found it.
                    let msg = if r.code == RefusalCode::Unauthenticated {
                        format!("{} (following {target})", r.message)
                    } else {
                        format!("the primary refused this replica: {}", r.message)
                    };
                    // A node that is not primary yet (a promotion still on its way to it) soon
                    // may be: try again as after a lost connection. Other refusals need an
                    // operator, or time.
                    let pause = if r.code == RefusalCode::NotPrimary {
                        not_primary = (not_primary * 2).min(backoff);
                        not_primary
                    } else {
                        Duration::from_secs(5)
                    };
                    (FollowState::Refused, msg, pause)
                }
                Ended::Failed(e) => (FollowState::Connecting, e, backoff),
                Ended::Fatal(e) => {
                    tracing::error!("stopped following the primary: {e}");
                    self.set_state(FollowState::Failed, Some(e));
                    std::future::pending::<()>().await;
                    return;
                }
            };
            if error != last_error {
                if state == FollowState::Refused {
                    tracing::error!(follow = %target, "{error}");
                } else {
                    tracing::warn!(follow = %target, error = %error, "lost the connection to the primary; reconnecting");
                }
                last_error = error.clone();
            }
            self.set_state(state, Some(error));
            let jitter = Duration::from_millis(fastrand::u64(0..=pause.as_millis() as u64 / 4));
            tokio::time::sleep(pause + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            if matches!(state, FollowState::Connecting)
                && self
                    .shared()
                    .last_contact
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
            {
                backoff = Duration::from_millis(100);
            }
        }
    }

    fn my_progress(&self) -> Progress {
        let p = self.engine.progress();
        let written = (*self.written.borrow()).max(p.flushed);
        Progress {
            written,
            flushed: p.flushed,
            applied: p.applied,
        }
    }

    async fn session(&self, target: &str) -> Ended {
        // Records received on an earlier connection and never written (a full disk dropped
        // them) are not had: a new session starts from what the log holds.
        self.written.send_replace(self.engine.progress().flushed);
        let (rd, wr) = match self.security.dial(target, HANDSHAKE_TIMEOUT).await {
            Ok(halves) => halves,
            Err(e @ DialError::Unreachable { .. }) => return Ended::Failed(e.to_string()),
            Err(DialError::Refused(r)) => return Ended::Refused(r),
            Err(e @ DialError::Unauthenticated(_)) => {
                return Ended::Refused(Refusal {
                    code: RefusalCode::Unauthenticated,
                    message: e.to_string(),
                })
            }
        };
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let mut wr = BufWriter::with_capacity(64 << 10, wr);
        match self.handshake(target, &mut rd, &mut wr).await {
            Ok(()) => {}
            Err(e) => return e,
        }
        match self.stream(rd, wr).await {
            Ok(()) => Ended::Failed("the connection ended".into()),
            Err(e) => e,
        }
    }

    async fn handshake(&self, target: &str, rd: &mut Reader, wr: &mut Writer) -> Result<(), Ended> {
        let p = self.engine.progress();
        let hello = Message::Hello(Hello {
            cluster_id: self.cluster_id(),
            name: self.name.clone(),
            term: p.last.term.max(self.leadership.term()),
            last: p.flushed,
            http_url: self.http_url.clone(),
            history: self.engine.term_history(),
        });
        write_message(wr, &hello).await?;
        wr.flush().await?;
        let welcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(rd)).await {
            Ok(Ok(Message::Welcome(w))) => w,
            Ok(Ok(Message::Refused(r))) => return Err(Ended::Refused(r)),
            Ok(Ok(other)) => {
                return Err(Ended::Failed(format!(
                    "the primary answered the hello with a {} message",
                    other.kind()
                )))
            }
            Ok(Err(e)) if self.security.is_tls_rejection(&e) => {
                return Err(Ended::Refused(Refusal {
                    code: RefusalCode::Unauthenticated,
                    message: format!(
                        "peer authentication failed: {target} did not accept this node's TLS certificate: {e}"
                    ),
                }))
            }
            Ok(Err(e)) => return Err(Ended::Failed(format!("handshake with {target}: {e}"))),
            Err(_) => return Err(Ended::Failed(format!("handshake with {target}: no answer"))),
        };
        let known = p.last.term.max(self.leadership.term());
        if welcome.term < known {
            let message = format!(
                "the primary {} at {} is in term {}, older than term {} this replica has seen: refusing its stream",
                welcome.primary, target, welcome.term, known
            );
            let _ = write_message(
                wr,
                &Message::Refused(Refusal {
                    code: RefusalCode::StaleTerm,
                    message: message.clone(),
                }),
            )
            .await;
            let _ = wr.flush().await;
            return Err(Ended::Refused(Refusal {
                code: RefusalCode::StaleTerm,
                message,
            }));
        }
        if welcome.cluster_id != self.cluster_id() {
            if p.flushed.lsn != Lsn::ZERO {
                return Err(Ended::Failed(format!(
                    "the primary's cluster is {} but this node's data belongs to {}",
                    welcome.cluster_id,
                    self.cluster_id()
                )));
            }
            identity::adopt_cluster(&self.data_dir, &self.name, &welcome.cluster_id)
                .map_err(Ended::Fatal)?;
            tracing::info!(cluster = %welcome.cluster_id, primary = %welcome.primary, "joined the primary's cluster");
            *self.cluster_id.lock().expect("cluster id") = welcome.cluster_id.clone();
        }
        self.leadership
            .learned_primary(target, &welcome.primary, &welcome.http_url, welcome.term);
        {
            let mut s = self.shared();
            s.primary = Some((welcome.primary.clone(), welcome.http_url.clone()));
            s.last_contact = Some(Instant::now());
            // Freshness is known again only from this connection's heartbeats.
            s.freshness.reset();
        }
        tracing::info!(primary = %welcome.primary, follow = %target, start = ?welcome.start, "following the primary");
        match welcome.start {
            Start::Stream { from } => {
                if from != p.flushed.lsn.next() {
                    return Err(Ended::Failed(format!(
                        "the primary offered records from lsn {from} but this replica's log ends at {}",
                        p.flushed.lsn
                    )));
                }
                self.set_state(FollowState::CatchingUp, None);
            }
            Start::Snapshot => {
                self.set_state(FollowState::Seeding, None);
                self.receive_snapshot(rd, wr).await?;
                self.set_state(FollowState::CatchingUp, None);
            }
            Start::Rewind { to } => return Err(self.rewind(&welcome.primary, to).await),
        }
        Ok(())
    }

    /// Receives a snapshot into the data directory and installs it, sending progress reports
    /// meanwhile so the primary knows this replica is alive.
    async fn receive_snapshot(&self, rd: &mut Reader, wr: &mut Writer) -> Result<(), Ended> {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let keepalive = async {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = &mut stopped => return Ok::<(), Ended>(()),
                    _ = tick.tick() => {}
                }
                write_message(wr, &Message::Progress(self.my_progress())).await?;
                wr.flush().await?;
            }
        };
        // The install runs inside the keepalive's lifetime too: on a large database it takes a
        // while, and the primary must keep hearing from this replica meanwhile.
        let receive = async {
            let r = match self.receive_snapshot_body(rd).await {
                Ok((path, at)) => self.install(path, at).await,
                Err(e) => Err(e),
            };
            let _ = stop.send(());
            r
        };
        let (installed, kept) = tokio::join!(receive, keepalive);
        kept?;
        installed
    }

    async fn install(&self, path: PathBuf, at: Position) -> Result<(), Ended> {
        let started = Instant::now();
        // From here until the marker is removed, the database and log may be a mix of old and
        // new: a crash means the next start discards both and this replica is seeded again.
        write_marker(&self.data_dir).map_err(Ended::Fatal)?;
        let installed = self
            .engine
            .install_snapshot(path.clone())
            .await
            .map_err(|e| Ended::Fatal(format!("install the snapshot: {e}")))?;
        let _ = std::fs::remove_file(&path);
        if installed != at {
            return Err(Ended::Fatal(format!(
                "the snapshot announced position {at} but holds {installed}"
            )));
        }
        remove_marker(&self.data_dir).map_err(Ended::Fatal)?;
        self.written.send_replace(at);
        self.shared().seeding = None;
        tracing::info!(%at, seconds = started.elapsed().as_secs_f64(), "installed the snapshot; streaming from the next record");
        Ok(())
    }

    async fn receive_snapshot_body(&self, rd: &mut Reader) -> Result<(PathBuf, Position), Ended> {
        use super::snapshot::{NotReceived, Received};
        let path = self.data_dir.join(super::snapshot::INCOMING);
        super::snapshot::receive(rd, path, None, self.peer_timeout, |r| match r {
            Received::Bytes { got, total } => {
                self.shared().seeding = Some((got, total));
                if got > 0 {
                    self.contact(None);
                }
            }
            Received::Heartbeat(lsn) => self.contact(Some(lsn)),
        })
        .await
        .map_err(|e| match e {
            NotReceived::Stream(why) => Ended::Failed(why),
            NotReceived::Local(why) => Ended::Fatal(why),
        })
    }

    async fn stream(&self, mut rd: Reader, mut wr: Writer) -> Result<(), Ended> {
        let (tx, mut rx) = mpsc::channel::<Vec<Record>>(64);
        let receiver = async {
            loop {
                let msg = match tokio::time::timeout(self.peer_timeout, read_message(&mut rd)).await
                {
                    Ok(Ok(m)) => m,
                    Ok(Err(WireError::Closed)) => {
                        return Err(Ended::Failed("the primary closed the connection".into()))
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => {
                        return Err(Ended::Failed(format!(
                            "no word from the primary for {:?}",
                            self.peer_timeout
                        )))
                    }
                };
                match msg {
                    Message::Records(records) => {
                        let Some(last) = records.last().map(Record::position) else {
                            continue;
                        };
                        self.written.send_replace(last);
                        self.contact(None);
                        if tx.send(records).await.is_err() {
                            return Ok(());
                        }
                    }
                    Message::Heartbeat { flushed } => self.contact(Some(flushed.lsn)),
                    Message::Refused(r) => return Err(Ended::Refused(r)),
                    other => {
                        return Err(Ended::Failed(format!(
                            "the primary sent an unexpected {} message",
                            other.kind()
                        )))
                    }
                }
            }
        };
        let (stalled_tx, mut stalled_rx) = watch::channel::<Option<String>>(None);
        let applier = async {
            while let Some(mut batch) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    batch.extend(more);
                    if batch.len() >= 8192 {
                        break;
                    }
                }
                let last = batch.last().map(|r| r.lsn).unwrap_or_default();
                let bytes: u64 = batch.iter().map(|r| r.frame_len() as u64).sum();
                match self.engine.apply(batch).await {
                    Ok(_) => {
                        let mut s = self.shared();
                        s.primary_flushed = s.primary_flushed.max(last);
                        let resumed = s.stalled.take().is_some();
                        drop(s);
                        if resumed {
                            tracing::info!("applying again: the disk has room");
                            stalled_tx.send_replace(None);
                        }
                        self.contact(None);
                    }
                    Err(e @ scribe_sqlite::EngineError::DiskFull(_)) => {
                        return self.wait_for_room(e.to_string(), bytes, &stalled_tx).await;
                    }
                    Err(e @ scribe_sqlite::EngineError::Log(_)) => {
                        // Out of order or an older term: the stream does not fit this log.
                        return Err(Ended::Failed(format!("append streamed records: {e}")));
                    }
                    Err(e) => return Err(Ended::Fatal(format!("apply streamed records: {e}"))),
                }
            }
            Ok(())
        };
        let reporter = async {
            let mut progress = self.engine.watch_progress();
            let mut written = self.written.subscribe();
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                write_message(&mut wr, &Message::Progress(self.my_progress())).await?;
                wr.flush().await?;
                tokio::select! {
                    r = progress.changed() => if r.is_err() { return Ok(()) },
                    r = written.changed() => if r.is_err() { return Ok(()) },
                    r = stalled_rx.changed() => {
                        if r.is_err() {
                            return Ok(());
                        }
                        let reason = stalled_rx.borrow_and_update().clone();
                        write_message(&mut wr, &Message::Stalled { reason }).await?;
                    }
                    _ = tick.tick() => {}
                }
            }
        };
        tokio::select! {
            r = receiver => r,
            r = applier => r,
            r = reporter => r,
        }
    }
}

impl Follower {
    /// The disk had no room for a batch of `bytes`: says so (status, and the primary through
    /// `stalled`), keeps the connection (and what it had: reads go on), and checks every few
    /// seconds until the records that reached the log are applied and the data directory has room
    /// for the batch again. Then the session ends, and the next one asks for the rest from where
    /// the log ends.
    async fn wait_for_room(
        &self,
        why: String,
        bytes: u64,
        stalled: &watch::Sender<Option<String>>,
    ) -> Result<(), Ended> {
        tracing::error!(error = %why, "stopped applying: the disk is full; this replica keeps what it has, serves reads from it, and goes on once there is room");
        self.shared().stalled = Some(why.clone());
        stalled.send_replace(Some(why));
        let want = bytes.saturating_add(1 << 20);
        let mut pause = Duration::from_millis(500);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
            if free_bytes(&self.data_dir).is_some_and(|free| free < want) {
                continue;
            }
            match self.engine.apply(Vec::new()).await {
                Ok(_) => {
                    self.shared().stalled = None;
                    stalled.send_replace(None);
                    break;
                }
                Err(scribe_sqlite::EngineError::DiskFull(e)) => {
                    let e = format!("still no room: {e}");
                    self.shared().stalled = Some(e.clone());
                    stalled.send_replace(Some(e));
                }
                Err(e) => return Err(Ended::Fatal(format!("apply streamed records: {e}"))),
            }
        }
        tracing::info!(
            "the disk has room again: asking the primary for the records after the log's end"
        );
        Err(Ended::Failed("resuming after the disk had no room".into()))
    }
}

/// Bytes available to this process on the file system holding `dir`, if it can be told.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string live for the call; `st` is written by statvfs
    // and read only when it succeeded.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
