//! Multi-master streaming (issue 12, DESIGN.md §6): every master pulls every other master's
//! log, and serves its own.
//!
//! - **Serving** ([`serve_master`]): a master that dials this node's peer port with an
//!   `MmHello` of the same cluster and the same table policies gets this node's log from the LSN
//!   it asks for — the records this node wrote and the ones it applied from others, in the order
//!   it applied them — exactly as a replica gets a primary's. It is registered like a replica,
//!   so its acknowledgements drive semi-sync and sync commits and its lag shows in status and
//!   metrics.
//! - **Pulling** ([`run_puller`], one task per peer): dial, ask for the peer's log after where
//!   this node has read it up to (kept in SQLite with the rows), hand each batch of records to the
//!   engine — which applies what is new and skips what it has from elsewhere — and acknowledge.
//!   On any failure: back off and dial again; nothing is lost, as the position is durable.
//!
//! A node that can reach only one peer still converges: that peer's log holds the third node's
//! records it applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use scribe_core::multi_master::{Seq, VersionVector};
use scribe_core::{Lsn, Position};
use scribe_sqlite::Engine;
use scribe_wire::{read_message, write_message, Message, Progress, RefusalCode, Start, WireError};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};

use crate::config::MultiMasterSettings;
use crate::peer_link::{PeerReader, PeerSecurity, PeerWriter};
use crate::replication::sender::PeerContext;

/// What a multi-master node knows of one peer's log, for status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PeerLink {
    /// The peer's name.
    pub name: String,
    /// Its peer address.
    pub addr: String,
    /// Whether this node is streaming the peer's log now.
    pub connected: bool,
    /// The peer's LSN this node has applied up to.
    pub applied_lsn: u64,
    /// The peer's log end, as it last said.
    pub peer_flushed_lsn: u64,
    /// Records of the peer's log this node has not applied yet.
    pub lag_records: u64,
    /// How far behind the peer's newest record this node's copy is, in milliseconds (0 when
    /// caught up).
    pub lag_ms: u64,
    /// Records applied from this peer since start (new to this node).
    pub records_applied: u64,
    /// Records skipped since start (this node had them from another peer).
    pub records_duplicate: u64,
    /// Milliseconds since the peer last sent anything (it heartbeats every 200 ms): a link
    /// cut off silently shows here before the connection times out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// While this node is seeded from the peer's snapshot: bytes received, of how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeding: Option<[u64; 2]>,
    /// The last error, while not connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    heard: Option<Instant>,
}

/// A multi-master node's runtime: its settings and what its pullers know.
pub struct MultiMaster {
    /// This node's name.
    pub name: String,
    /// The cluster id all masters derive from their names.
    pub cluster_id: String,
    /// The settings (`--peers`, `--table-policy`).
    pub settings: MultiMasterSettings,
    /// This node's HTTP URL, sent to peers.
    pub http_url: String,
    /// The data directory (a snapshot that seeds this node is received there).
    data_dir: PathBuf,
    /// Held while a snapshot is installed: one at a time.
    seeding: tokio::sync::Mutex<()>,
    links: Mutex<BTreeMap<String, PeerLink>>,
}

impl MultiMaster {
    /// The runtime of node `name` under `settings`.
    pub fn new(
        name: &str,
        settings: MultiMasterSettings,
        http_url: String,
        data_dir: PathBuf,
    ) -> MultiMaster {
        let links = settings
            .peers
            .iter()
            .map(|(n, a)| {
                (
                    n.clone(),
                    PeerLink {
                        name: n.clone(),
                        addr: a.clone(),
                        ..PeerLink::default()
                    },
                )
            })
            .collect();
        MultiMaster {
            name: name.to_string(),
            cluster_id: settings.cluster_id(name),
            settings,
            http_url,
            data_dir,
            seeding: tokio::sync::Mutex::new(()),
            links: Mutex::new(links),
        }
    }

    /// The node that runs schema changes.
    pub fn ddl_node(&self) -> &str {
        self.settings.ddl_node(&self.name)
    }

    /// What this node knows of each peer's log.
    pub fn links(&self) -> Vec<PeerLink> {
        self.lock()
            .values()
            .map(|l| PeerLink {
                idle_ms: l.heard.map(|t| t.elapsed().as_millis() as u64),
                ..l.clone()
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PeerLink>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, peer: &str, f: impl FnOnce(&mut PeerLink)) {
        if let Some(l) = self.lock().get_mut(peer) {
            f(l);
        }
    }

    /// Whether the master that sent `asked` may stream this node's log, and from where: this
    /// node has applied `held` of its records and holds its own log (of id `log_id`) over `log`
    /// (first, last). Refused: itself, another cluster, a master not in `--peers`, other table
    /// policies, a master that lost data (it holds fewer of its own records than this node has
    /// applied), a position past this log's end (this log was reset). A position this log no
    /// longer holds, or one in an older log of this node, is [`Serve::FromStart`].
    fn admit(
        &self,
        asked: &Asked<'_>,
        held: u64,
        log: (Lsn, Lsn),
        log_id: u64,
    ) -> Result<Serve, (RefusalCode, String)> {
        let Asked {
            cluster_id,
            from,
            policies,
            from_lsn,
            log_id: asked_log,
            vv,
        } = *asked;
        let mismatch = |why: String| Err((RefusalCode::ClusterMismatch, why));
        if from == self.name {
            return mismatch(format!(
                "a master named {from} dialed {from}: it is this node (two nodes of one name, or --peers lists the node itself)"
            ));
        }
        if cluster_id != self.cluster_id {
            return mismatch(format!(
                "{from} belongs to cluster {cluster_id}, this node ({}) to {}: every master must list all the others in --peers",
                self.name, self.cluster_id
            ));
        }
        if !self.settings.peers.iter().any(|(n, _)| n == from) {
            return mismatch(format!("{from} is not in this node's --peers list"));
        }
        let ours = self.settings.policies_text();
        if policies != ours {
            return mismatch(format!(
                "{from}'s table policies ({policies:?}) differ from this node's ({ours:?}): give every master the same --table-policy flags"
            ));
        }
        let own_seq = vv.get(from).0;
        if held > own_seq {
            return mismatch(format!(
                "{from} holds {own_seq} of its own records but {} has applied {held} of them: {from} lost data (an emptied or older data directory); its new writes would be taken for the old ones. Start it with its data, or under a new name (listed in every master's --peers; a new name holds nothing and is seeded from a peer)",
                self.name
            ));
        }
        let (first, end) = log;
        // A position means something only in the log it was read from. A position without a
        // log id was read before masters' logs had ids (or is none, at lsn 1): this log is
        // the one it was read in, as only seeding starts a new one.
        let same_log = asked_log == log_id || asked_log == 0;
        if same_log && from_lsn.0 > end.0 + 1 {
            return Err((
                RefusalCode::Protocol,
                format!(
                    "{from} asks for {}'s log from lsn {from_lsn} but it ends at {end}: this node's log was reset or replaced",
                    self.name
                ),
            ));
        }
        let from_lsn = if same_log {
            Lsn(from_lsn.0.max(1))
        } else {
            Lsn(1)
        };
        if from_lsn < first {
            return Ok(Serve::FromStart);
        }
        Ok(Serve::From(from_lsn))
    }

    /// For a master whose position this node's log no longer holds: whether it can stream the
    /// log from its start — it holds everything this node had applied before it (`before`, see
    /// [`scribe_sqlite::Engine::mm_log_start_vv`]) — or, holding nothing at all, is seeded
    /// from a snapshot. Otherwise it is refused until it gets what it lacks from another master.
    fn admit_before_start(
        &self,
        asked: &Asked<'_>,
        before: &VersionVector,
        first: Lsn,
    ) -> Result<Start, (RefusalCode, String)> {
        if asked.vv.covers(before) {
            return Ok(Start::Stream { from: first });
        }
        if asked.vv.iter().next().is_none() {
            return Ok(Start::Snapshot);
        }
        let lacks: Vec<String> = before
            .missing_in(asked.vv)
            .iter()
            .map(|m| format!("{} {}..={}", m.origin, m.from.0, m.to.0))
            .collect();
        Err((
            RefusalCode::Protocol,
            format!(
                "{} no longer holds its log from before lsn {first}, and {} lacks records from before it ({}): it takes them from another master that has them (a master that holds nothing at all is seeded from a snapshot instead); keep more log on the masters (--max-log-size)",
                self.name,
                asked.from,
                lacks.join(", ")
            ),
        ))
    }
}

/// Where an admitted master's stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// At this LSN.
    From(Lsn),
    /// Before this log's start: see [`MultiMaster::admit_before_start`].
    FromStart,
}

/// What a master's hello asks for.
#[derive(Debug, Clone, Copy)]
struct Asked<'a> {
    cluster_id: &'a str,
    from: &'a str,
    policies: &'a str,
    from_lsn: Lsn,
    log_id: u64,
    vv: &'a VersionVector,
}

/// Serves this node's log to the master that sent `hello` (see the module docs).
pub(crate) async fn serve_master(
    ctx: Arc<PeerContext>,
    mm: Arc<MultiMaster>,
    mut rd: BufReader<PeerReader>,
    mut wr: BufWriter<PeerWriter>,
    addr: SocketAddr,
    hello: Message,
) {
    let Message::MmHello {
        cluster_id,
        from,
        http_url,
        policies,
        from_lsn,
        log_id,
        vv,
    } = hello
    else {
        return;
    };
    let status = ctx.engine.mm_status().unwrap_or_default();
    let held = status.vv.get(&from).0;
    let first = ctx.engine.log_first_lsn();
    let log = (first, ctx.engine.progress().flushed.lsn);
    let vv = VersionVector::from_entries(vv.into_iter().map(|(o, s)| (o, Seq(s))));
    let asked = Asked {
        cluster_id: &cluster_id,
        from: &from,
        policies: &policies,
        from_lsn,
        log_id,
        vv: &vv,
    };
    let start = match mm.admit(&asked, held, log, status.log_id) {
        Ok(Serve::From(lsn)) => Ok(Start::Stream { from: lsn }),
        Ok(Serve::FromStart) => match ctx.engine.mm_log_start_vv().await {
            Ok(before) => mm.admit_before_start(&asked, &before, first),
            Err(e) => Err((
                RefusalCode::Protocol,
                format!("{} could not read its log: {e}", mm.name),
            )),
        },
        Err(refused) => Err(refused),
    };
    let start = match start {
        Ok(start) => start,
        Err((code, why)) => {
            tracing::error!(peer = %addr, %from, "refused a master: {why}");
            crate::peer_link::refuse_and_close(rd, wr, code, why).await;
            return;
        }
    };
    let from_lsn = match start {
        Start::Stream { from } => from,
        _ => first,
    };
    let term = ctx
        .engine
        .progress()
        .last
        .term
        .max(scribe_core::Term::FIRST);
    let last = Position {
        term,
        lsn: from_lsn.prev(),
    };
    let registry = ctx.registry.clone();
    // Registered without its HTTP URL: a client library that reaches this master must not
    // take the other masters for its replicas (their logs are not this one's, so position
    // tokens mean nothing there), nor wander off to them for its writes.
    let _ = http_url;
    let (conn, superseded) = match registry.connect(&from, addr, "", last, from_lsn) {
        Ok(c) => c,
        Err(in_use) => {
            let why = format!(
                "a master named {from} is already connected from {}: node names must be unique",
                in_use.0
            );
            tracing::error!(peer = %addr, "refused a master: {why}");
            crate::peer_link::refuse_and_close(rd, wr, RefusalCode::NameInUse, why).await;
            return;
        }
    };
    let welcome = Message::MmWelcome {
        name: mm.name.clone(),
        own_seq: status.vv.get(&mm.name).0,
        log_id: status.log_id,
    };
    if write_message(&mut wr, &welcome).await.is_err() || wr.flush().await.is_err() {
        registry.disconnect(&from, conn, Some("closed during the handshake".into()));
        return;
    }
    match start {
        Start::Snapshot => {
            tracing::info!(master = %from, peer = %addr, "a master that holds nothing is seeded from this node's snapshot; its position is before this log's start")
        }
        _ => {
            tracing::info!(master = %from, peer = %addr, %from_lsn, "a master streams this node's log")
        }
    }
    let outcome = tokio::select! {
        r = receive_acks(&mut rd, &ctx, &from, conn, term) => r,
        r = crate::replication::sender::stream_to(&mut wr, &ctx, &registry, &from, conn, start) => r,
        _ = superseded.notified() => Err("a newer connection of this master replaced it".into()),
    };
    let why = outcome
        .err()
        .unwrap_or_else(|| "the node is stopping".into());
    tracing::warn!(master = %from, peer = %addr, "a master stopped streaming this node's log: {why}");
    registry.disconnect(&from, conn, Some(why));
}

/// Takes a streaming master's acknowledgements into the registry.
async fn receive_acks(
    rd: &mut BufReader<PeerReader>,
    ctx: &PeerContext,
    name: &str,
    conn: u64,
    term: scribe_core::Term,
) -> Result<(), String> {
    loop {
        let msg = match tokio::time::timeout(ctx.peer_timeout, read_message(rd)).await {
            Ok(Ok(m)) => m,
            Ok(Err(WireError::Closed)) => return Err("the master closed the connection".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "no word from the master for {:?}",
                    ctx.peer_timeout
                ))
            }
        };
        match msg {
            Message::MmAck { applied } => {
                let at = Position { term, lsn: applied };
                let p = Progress {
                    written: at,
                    flushed: at,
                    applied: at,
                };
                ctx.registry
                    .progress(name, conn, p, ctx.engine.progress().flushed.lsn)?;
            }
            Message::Refused(r) => {
                return Err(format!("the master refused the stream: {}", r.message))
            }
            other => {
                return Err(format!(
                    "the master sent an unexpected {} message",
                    other.kind()
                ))
            }
        }
    }
}

/// Pulls `peer`'s log into this node for as long as the node runs (see the module docs).
pub async fn run_puller(
    engine: Engine,
    mm: Arc<MultiMaster>,
    security: Arc<PeerSecurity>,
    peer: String,
    addr: String,
    peer_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let why = pull_once(&engine, &mm, &security, &peer, &addr, peer_timeout).await;
        mm.update(&peer, |l| {
            l.connected = false;
            l.error = Some(why.clone());
        });
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        tracing::warn!(%peer, %addr, retry_in = ?backoff, "streaming from a master stopped: {why}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection to `peer`: answers why it ended.
async fn pull_once(
    engine: &Engine,
    mm: &MultiMaster,
    security: &PeerSecurity,
    peer: &str,
    addr: &str,
    peer_timeout: Duration,
) -> String {
    let status = engine.mm_status().unwrap_or_default();
    let cursor = status.cursors.get(peer).copied().unwrap_or_default();
    let held = status.vv.get(peer).0;
    let (rd, wr) = match security.dial(addr, peer_timeout).await {
        Ok(h) => h,
        Err(e) => return format!("dial: {e:?}"),
    };
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(64 << 10, wr);
    let hello = Message::MmHello {
        cluster_id: mm.cluster_id.clone(),
        from: mm.name.clone(),
        http_url: mm.http_url.clone(),
        policies: mm.settings.policies_text(),
        from_lsn: Lsn(cursor.lsn + 1),
        log_id: cursor.log_id,
        vv: status
            .vv
            .iter()
            .map(|(o, s)| (o.to_string(), s.0))
            .collect(),
    };
    if let Err(e) = write_message(&mut wr, &hello).await {
        return format!("send the hello: {e}");
    }
    if let Err(e) = wr.flush().await {
        return format!("send the hello: {e}");
    }
    let log_id = match tokio::time::timeout(peer_timeout, read_message(&mut rd)).await {
        Ok(Ok(Message::MmWelcome { name, own_seq, .. })) if name == peer && own_seq < held => {
            return format!(
                "{peer} holds {own_seq} of its own records but this node has applied {held} of them: {peer} lost data (an emptied or older data directory); start it with its data, or under a new name (listed in every master's --peers; a new name holds nothing and is seeded from a peer)"
            )
        }
        Ok(Ok(Message::MmWelcome { name, log_id, .. })) if name == peer => log_id,
        Ok(Ok(Message::MmWelcome { name, .. })) => {
            return format!("the node at {addr} is {name}, not {peer}: check --peers")
        }
        Ok(Ok(Message::Refused(r))) => return format!("refused: {}", r.message),
        Ok(Ok(other)) => return format!("answered the hello with a {} message", other.kind()),
        Ok(Err(e)) => return format!("read the welcome: {e}"),
        Err(_) => return format!("no welcome within {peer_timeout:?}"),
    };
    // A position in an older log of the peer's (it was seeded since) is no position; one kept
    // without a log id (before logs had ids) is in this log.
    let cursor = if log_id == cursor.log_id || cursor.log_id == 0 {
        cursor.lsn
    } else {
        0
    };
    tracing::info!(%peer, %addr, from_lsn = cursor + 1, "streaming a master's log");
    mm.update(peer, |l| {
        l.connected = true;
        l.error = None;
        l.applied_lsn = cursor;
    });
    let mut applied_lsn = cursor;
    let mut newest_us = 0u64;
    loop {
        let msg = match tokio::time::timeout(peer_timeout, read_message(&mut rd)).await {
            Ok(Ok(m)) => m,
            Ok(Err(WireError::Closed)) => return "the peer closed the connection".into(),
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return format!("no word from the peer for {peer_timeout:?}"),
        };
        mm.update(peer, |l| l.heard = Some(Instant::now()));
        match msg {
            Message::Records(mut records) => {
                // Whatever else has arrived already joins this batch: one transaction and one
                // fsync for all of it, so a busy peer's stream does not cost an fsync a message.
                let mut ended = None;
                while !rd.buffer().is_empty() && records.len() < 8192 {
                    match read_message(&mut rd).await {
                        Ok(Message::Records(more)) => records.extend(more),
                        Ok(Message::Heartbeat { flushed }) => {
                            mm.update(peer, |l| {
                                l.peer_flushed_lsn = l.peer_flushed_lsn.max(flushed.lsn.0)
                            });
                        }
                        Ok(Message::Refused(r)) => ended = Some(format!("refused: {}", r.message)),
                        Ok(other) => {
                            ended = Some(format!("sent an unexpected {} message", other.kind()))
                        }
                        Err(e) => ended = Some(e.to_string()),
                    }
                    if ended.is_some() {
                        break;
                    }
                }
                let Some(last) = records.last() else { continue };
                let (last_lsn, last_us) = (last.lsn.0, last.time_us);
                let batch: Vec<(u64, Vec<u8>)> =
                    records.into_iter().map(|r| (r.lsn.0, r.payload)).collect();
                match engine.mm_apply(peer.to_string(), log_id, batch).await {
                    Ok(done) => {
                        applied_lsn = done.cursor.max(last_lsn);
                        newest_us = newest_us.max(last_us);
                        mm.update(peer, |l| {
                            l.applied_lsn = applied_lsn;
                            l.peer_flushed_lsn = l.peer_flushed_lsn.max(applied_lsn);
                            l.lag_records = l.peer_flushed_lsn - applied_lsn;
                            l.lag_ms = if l.lag_records == 0 {
                                0
                            } else {
                                now_us().saturating_sub(last_us) / 1000
                            };
                            l.records_applied += done.applied;
                            l.records_duplicate += done.duplicates;
                        });
                    }
                    Err(e) => return format!("apply its records: {e}"),
                }
                if let Some(why) = ended {
                    return why;
                }
            }
            Message::Heartbeat { flushed } => {
                mm.update(peer, |l| {
                    l.peer_flushed_lsn = flushed.lsn.0.max(applied_lsn);
                    l.lag_records = l.peer_flushed_lsn - applied_lsn;
                    if l.lag_records == 0 {
                        l.lag_ms = 0;
                    }
                });
            }
            Message::SnapshotBegin { at, bytes } => {
                match seed(
                    engine,
                    mm,
                    peer,
                    log_id,
                    &mut rd,
                    &mut wr,
                    (at, bytes),
                    peer_timeout,
                )
                .await
                {
                    Ok(at) => applied_lsn = at.lsn.0,
                    Err(why) => return why,
                }
            }
            Message::Refused(r) => return format!("refused: {}", r.message),
            other => return format!("sent an unexpected {} message", other.kind()),
        }
        if let Err(e) = write_message(
            &mut wr,
            &Message::MmAck {
                applied: Lsn(applied_lsn),
            },
        )
        .await
        {
            return format!("acknowledge: {e}");
        }
        if let Err(e) = wr.flush().await {
            return format!("acknowledge: {e}");
        }
    }
}

/// Receives `peer`'s snapshot, announced as `begun`, and seeds this node with it (it holds
/// nothing yet: see [`scribe_sqlite::Engine::mm_install_snapshot`]); acknowledges meanwhile so
/// the peer keeps hearing from this node. Answers the snapshot's position in `peer`'s log.
#[allow(clippy::too_many_arguments)]
async fn seed(
    engine: &Engine,
    mm: &MultiMaster,
    peer: &str,
    log_id: u64,
    rd: &mut BufReader<PeerReader>,
    wr: &mut BufWriter<PeerWriter>,
    begun: (Position, u64),
    peer_timeout: Duration,
) -> Result<Position, String> {
    use crate::replication::snapshot::{self, NotReceived, Received};
    let started = Instant::now();
    let path = mm.data_dir.join(format!("{}.{peer}", snapshot::INCOMING));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let keepalive = async {
        let mut tick = tokio::time::interval(crate::replication::HEARTBEAT);
        loop {
            tokio::select! {
                _ = &mut stopped => return Ok::<(), String>(()),
                _ = tick.tick() => {}
            }
            write_message(wr, &Message::MmAck { applied: Lsn::ZERO })
                .await
                .map_err(|e| format!("acknowledge: {e}"))?;
            wr.flush().await.map_err(|e| format!("acknowledge: {e}"))?;
        }
    };
    let install = async {
        let received = snapshot::receive(rd, path.clone(), Some(begun), peer_timeout, |r| {
            if let Received::Bytes { got, total } = r {
                mm.update(peer, |l| {
                    l.seeding = Some([got, total]);
                    l.heard = Some(Instant::now());
                });
            }
        })
        .await;
        let r = match received {
            Ok((path, at)) => install(engine, mm, peer, log_id, path, at).await,
            Err(NotReceived::Stream(why) | NotReceived::Local(why)) => {
                Err(format!("receive its snapshot: {why}"))
            }
        };
        let _ = std::fs::remove_file(&path);
        mm.update(peer, |l| l.seeding = None);
        let _ = stop.send(());
        r
    };
    let (installed, kept) = tokio::join!(install, keepalive);
    kept?;
    let at = installed?;
    tracing::info!(%peer, %at, seconds = started.elapsed().as_secs_f64(), "seeded from a master's snapshot; streaming its log from there");
    Ok(at)
}

/// Installs a received snapshot under the seeding marker: a node killed meanwhile starts again
/// empty and is seeded again.
async fn install(
    engine: &Engine,
    mm: &MultiMaster,
    peer: &str,
    log_id: u64,
    path: PathBuf,
    at: Position,
) -> Result<Position, String> {
    use crate::replication::snapshot;
    let _one = mm.seeding.lock().await;
    let marker = mm.data_dir.join(snapshot::SEEDING_MARKER);
    match engine
        .mm_install_snapshot(path, peer.to_string(), log_id, marker)
        .await
    {
        Ok(installed) => Ok(installed),
        Err(e) => Err(format!("install its snapshot: {e}")),
    }
    .and_then(|installed| {
        if installed == at {
            Ok(at)
        } else {
            Err(format!(
                "install its snapshot: it announced position {at} but holds {installed}"
            ))
        }
    })
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Master n1 of n1, n2, n3.
    fn n1_of_three() -> MultiMaster {
        let settings = MultiMasterSettings {
            peers: vec![("n2".into(), "a:1".into()), ("n3".into(), "a:2".into())],
            policies: BTreeMap::new(),
            max_clock_offset: Duration::from_secs(10),
        };
        MultiMaster::new("n1", settings, String::new(), PathBuf::new())
    }

    fn vv(entries: &[(&str, u64)]) -> VersionVector {
        VersionVector::from_entries(entries.iter().map(|(o, s)| (o.to_string(), Seq(*s))))
    }

    #[test]
    fn a_master_is_admitted_only_of_this_cluster_with_its_data_and_a_position_in_the_log() {
        let mm = n1_of_three();
        let has = vv(&[("n1", 4), ("n2", 3)]);
        let ok = Asked {
            cluster_id: "mm-n1-n2-n3",
            from: "n2",
            policies: "",
            from_lsn: Lsn(5),
            log_id: 7,
            vv: &has,
        };
        let log = (Lsn(1), Lsn(9));
        assert_eq!(mm.admit(&ok, 3, log, 7), Ok(Serve::From(Lsn(5))));
        let from_zero = Asked {
            from_lsn: Lsn(0),
            ..ok
        };
        assert_eq!(mm.admit(&from_zero, 3, log, 7), Ok(Serve::From(Lsn(1))));
        let refused = |asked: Asked<'_>, held: u64, log: (Lsn, Lsn)| {
            mm.admit(&asked, held, log, 7).unwrap_err().1
        };
        assert!(refused(Asked { from: "n1", ..ok }, 0, log).contains("it is this node"));
        let other = Asked {
            cluster_id: "mm-n1-n2",
            ..ok
        };
        assert!(refused(other, 0, log).contains("belongs to cluster"));
        assert!(refused(Asked { from: "n9", ..ok }, 0, log).contains("not in this node's --peers"));
        let policies = Asked {
            policies: "t=lww",
            ..ok
        };
        assert!(refused(policies, 0, log).contains("table policies"));
        assert!(refused(ok, 4, log).contains("lost data"));
        let past = Asked {
            from_lsn: Lsn(11),
            ..ok
        };
        assert!(refused(past, 3, log).contains("reset or replaced"));
        // Before this log's start, or in an older log of this node: decided by what it holds.
        assert_eq!(mm.admit(&ok, 3, (Lsn(6), Lsn(9)), 7), Ok(Serve::FromStart));
        let older_log = Asked { log_id: 6, ..past };
        assert_eq!(mm.admit(&older_log, 3, log, 7), Ok(Serve::From(Lsn(1))));
        assert_eq!(
            mm.admit(&older_log, 3, (Lsn(6), Lsn(9)), 7),
            Ok(Serve::FromStart)
        );
    }

    #[test]
    fn a_master_before_this_logs_start_streams_it_if_it_holds_what_came_before_or_is_seeded_if_it_holds_nothing(
    ) {
        let mm = n1_of_three();
        let before = vv(&[("n1", 40), ("n3", 12)]);
        let asked = |held: &VersionVector| {
            let a = Asked {
                cluster_id: "mm-n1-n2-n3",
                from: "n2",
                policies: "",
                from_lsn: Lsn(1),
                log_id: 0,
                vv: held,
            };
            mm.admit_before_start(&a, &before, Lsn(100))
        };
        let all = vv(&[("n1", 45), ("n2", 9), ("n3", 12)]);
        assert_eq!(asked(&all), Ok(Start::Stream { from: Lsn(100) }));
        assert_eq!(asked(&VersionVector::new()), Ok(Start::Snapshot));
        let lacking = vv(&[("n1", 45), ("n2", 9), ("n3", 10)]);
        let why = asked(&lacking).unwrap_err().1;
        assert!(why.contains("n3 11..=12"), "{why}");
        assert!(why.contains("seeded from a snapshot"), "{why}");
    }
}
