//! The primary's side of the peer protocol: the peer listener, the handshake decision, and one
//! sender per replica that streams the change log from where the replica is (after a snapshot,
//! when it needs one) and takes its progress reports.
//!
//! Per connection, reading and writing are two futures: the writer tails the log as the
//! primary's flushed position moves (a watch channel, so nothing polls) and sends a heartbeat
//! when idle; the reader feeds the replica's positions into the [`Registry`]. Either ending
//! ends the connection and marks the replica disconnected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use scribe_core::{
    decide_handshake, HandshakeDecision, Lsn, PrimaryView, RefuseReason, ReplicaView, Term,
    TermHistory,
};
use scribe_log::Record;
use scribe_sqlite::Engine;
use scribe_wire::{
    read_message, write_message, Hello, Message, Refusal, RefusalCode, Start, Welcome, WireError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

use super::follower::Follower;
use super::registry::Registry;
use super::{HANDSHAKE_TIMEOUT, HEARTBEAT};
use crate::leadership::{Leadership, NodeRole};
use crate::peer_link::{PeerReader, PeerSecurity, PeerWriter};

/// Most records in one `Records` message.
const CHUNK_RECORDS: usize = 2048;
/// Most payload bytes in one `Records` message (a single larger record still goes alone).
const CHUNK_BYTES: usize = 1 << 20;
/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// What the peer listener needs.
pub struct PeerContext {
    /// The storage engine.
    pub engine: Engine,
    /// This node's name.
    pub name: String,
    /// This node's HTTP API URL.
    pub http_url: String,
    /// Where snapshots for replicas are written while they are sent.
    pub snapshot_dir: PathBuf,
    /// This node's role and term: it serves replicas only while it is the primary.
    pub leadership: Leadership,
    /// Its replicas.
    pub registry: Arc<Registry>,
    /// Its follower, which holds the cluster id of its data.
    pub follower: Arc<Follower>,
    /// Silence after which a replica's connection is dropped.
    pub peer_timeout: Duration,
    /// The control plane, in cluster mode: its members' connections arrive here too.
    pub control: Option<crate::control::ControlPlane>,
    /// How peers are authenticated (TLS, the peer secret) before anything else is said.
    pub security: Arc<PeerSecurity>,
    /// On a multi-master node: its runtime (other masters stream its log).
    pub mm: Option<Arc<crate::multi_master::MultiMaster>>,
}

impl PeerContext {
    fn term(&self) -> Term {
        self.engine
            .progress()
            .last
            .term
            .max(self.leadership.term())
            .max(Term::FIRST)
    }

    fn cluster_id(&self) -> String {
        self.follower.cluster_id()
    }
}

/// Returns once this node is no longer the primary of `term`.
async fn demoted(leadership: &Leadership, term: Term) {
    let mut view = leadership.subscribe();
    let _ = view
        .wait_for(|v| v.role != NodeRole::Primary || v.term != term)
        .await;
}

/// Accepts peer connections until the listener fails or the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Arc<PeerContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { serve_peer(stream, addr, ctx).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept a peer connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn refuse(wr: &mut BufWriter<PeerWriter>, code: RefusalCode, message: String) {
    let _ = write_message(wr, &Message::Refused(Refusal { code, message })).await;
    let _ = wr.flush().await;
}

async fn serve_peer(stream: TcpStream, addr: SocketAddr, ctx: Arc<PeerContext>) {
    let ctx_mm = ctx.clone();
    // Nothing of the log, a snapshot or the control state goes out before this passes.
    let (rd, wr) = match ctx.security.accept(stream, addr).await {
        Ok(halves) => halves,
        Err(refused) => {
            tracing::warn!(peer = %addr, "refused a peer connection: {}", refused.0);
            return;
        }
    };
    let mut rd = BufReader::with_capacity(64 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut rd)).await {
        Ok(Ok(hello @ Message::MmHello { .. })) => {
            let Some(mm) = ctx.mm.clone() else {
                let why = format!(
                    "{} is not a multi-master node (it was started without --multi-master)",
                    ctx.name
                );
                tracing::warn!(peer = %addr, "refused a master: {why}");
                crate::peer_link::refuse_and_close(rd, wr, RefusalCode::ClusterMismatch, why).await;
                return;
            };
            crate::multi_master::serve_master(ctx_mm, mm, rd, wr, addr, hello).await;
            return;
        }
        Ok(Ok(Message::Hello(h))) if ctx.mm.is_some() => {
            let why = format!(
                "{} is a multi-master node: it has no replicas; start {} with --multi-master and list it in --peers",
                ctx.name, h.name
            );
            tracing::warn!(peer = %addr, replica = %h.name, "refused a replica: {why}");
            refuse(&mut wr, RefusalCode::ClusterMismatch, why).await;
            return;
        }
        Ok(Ok(Message::Hello(h))) => h,
        Ok(Ok(Message::ControlHello(h))) => {
            let Some(plane) = ctx.control.clone() else {
                let why = format!(
                    "{} is not a member of a cluster (it was started without --cluster): it takes no control-plane connections",
                    ctx.name
                );
                tracing::warn!(peer = %addr, from = %h.from, "refused a control-plane connection: {why}");
                refuse(&mut wr, RefusalCode::ClusterMismatch, why).await;
                return;
            };
            let from = h.from.clone();
            if let Err(e) = crate::control::serve_connection(plane, rd, wr, h).await {
                tracing::warn!(peer = %addr, %from, error = %e, "control-plane connection ended");
            }
            return;
        }
        Ok(Ok(Message::AuthHello { .. })) => {
            let why = format!(
                "peer authentication failed: the listening node ({}) has no --peer-secret but the dialing node tried to authenticate: give every node of the cluster the same --peer-secret",
                ctx.name
            );
            tracing::warn!(peer = %addr, "refused a peer connection: {why}");
            crate::peer_link::refuse_and_close(rd, wr, RefusalCode::Unauthenticated, why).await;
            return;
        }
        Ok(Ok(other)) => {
            let why = format!("expected a hello, got a {} message", other.kind());
            tracing::warn!(peer = %addr, "refused a peer connection: {why}");
            refuse(&mut wr, RefusalCode::Protocol, why).await;
            return;
        }
        Ok(Err(WireError::Closed)) => return,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "refused a peer connection");
            refuse(&mut wr, RefusalCode::Protocol, e.to_string()).await;
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, "refused a peer connection: no hello within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let view = ctx.leadership.view();
    if view.role != NodeRole::Primary {
        let primary = ctx.leadership.primary_description();
        let why = format!(
            "{} is a replica, not a primary; follow its primary instead ({primary})",
            ctx.name
        );
        tracing::warn!(peer = %addr, replica = %hello.name, "refused a replica: {why}");
        refuse(&mut wr, RefusalCode::NotPrimary, why).await;
        return;
    }
    // In a cluster only its data members stream (and acknowledge): a removed member that keeps
    // running, or any node that was never added, would otherwise count for `*` sync sets.
    if let Some(why) = not_a_member(&ctx, &hello.name) {
        tracing::warn!(peer = %addr, replica = %hello.name, "refused a replica: {why}");
        refuse(&mut wr, RefusalCode::ClusterMismatch, why).await;
        return;
    }
    let registry = ctx.registry.clone();
    let start = match decide(&ctx, &hello) {
        Ok(s) => s,
        Err(r) => {
            tracing::error!(peer = %addr, replica = %hello.name, code = r.code.as_str(), "refused a replica: {}", r.message);
            refuse(&mut wr, r.code, r.message).await;
            return;
        }
    };
    if let Start::Rewind { to } = start {
        tracing::warn!(replica = %hello.name, peer = %addr, last = %hello.last, %to, "the replica holds records this primary never had: told to undo them back to where the logs diverge");
        let welcome = Message::Welcome(Welcome {
            cluster_id: ctx.cluster_id(),
            primary: ctx.name.clone(),
            term: ctx.term(),
            http_url: ctx.http_url.clone(),
            start,
        });
        let _ = write_message(&mut wr, &welcome).await;
        let _ = wr.flush().await;
        return;
    }
    let needs = match start {
        Start::Stream { from } => from,
        Start::Snapshot | Start::Rewind { .. } => ctx.engine.log_first_lsn(),
    };
    let (conn, superseded) =
        match registry.connect(&hello.name, addr, &hello.http_url, hello.last, needs) {
            Ok(c) => c,
            Err(in_use) => {
                let why = format!(
                    "a replica named {} is already connected from {}: node names must be unique",
                    hello.name, in_use.0
                );
                tracing::error!(peer = %addr, "refused a replica: {why}");
                refuse(&mut wr, RefusalCode::NameInUse, why).await;
                return;
            }
        };
    let welcome = Message::Welcome(Welcome {
        cluster_id: ctx.cluster_id(),
        primary: ctx.name.clone(),
        term: ctx.term(),
        http_url: ctx.http_url.clone(),
        start,
    });
    if write_message(&mut wr, &welcome).await.is_err() || wr.flush().await.is_err() {
        registry.disconnect(
            &hello.name,
            conn,
            Some("closed during the handshake".into()),
        );
        return;
    }
    tracing::info!(replica = %hello.name, peer = %addr, last = %hello.last, ?start, "replica connected");
    let name = hello.name.clone();
    let outcome = tokio::select! {
        r = receive_progress(&mut rd, &ctx, &registry, &name, conn) => r,
        r = stream_to(&mut wr, &ctx, &registry, &name, conn, start) => r,
        _ = superseded.notified() => Err("a newer connection of this replica replaced it".into()),
        _ = demoted(&ctx.leadership, view.term) => Err("this node is no longer the primary".into()),
        why = removed(&ctx, &name) => Err(why),
    };
    let why = match outcome {
        Ok(()) => "the node is stopping".to_string(),
        Err(e) => e,
    };
    tracing::warn!(replica = %name, peer = %addr, "replica disconnected: {why}");
    registry.disconnect(&name, conn, Some(why));
}

/// Why `name` may not stream from this primary in cluster mode: not a data member of the
/// cluster's control state. `None` outside cluster mode, and for a data member.
fn not_a_member(ctx: &PeerContext, name: &str) -> Option<String> {
    let plane = ctx.control.as_ref()?;
    // Read in place: every session asks again at each change of the state (renewals included).
    let states = plane.state();
    let st = states.borrow();
    match st.members.get(name) {
        Some(m) if !m.witness => None,
        Some(_) => Some(format!("{name} is a witness of this cluster: it holds no data")),
        None => Some(format!(
            "{name} is not a member of this cluster (members: {}): add it with scribe members add, or start it with --join",
            st.members.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Resolves when `name` stops being a data member of the cluster (removed at run time), with
/// the reason; never outside cluster mode.
async fn removed(ctx: &PeerContext, name: &str) -> String {
    let Some(plane) = &ctx.control else {
        return std::future::pending().await;
    };
    let mut states = plane.state();
    loop {
        if let Some(why) = not_a_member(ctx, name) {
            return why;
        }
        if states.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The handshake decision ([`scribe_core::decide_handshake`], over this node's and the
/// replica's histories of terms): stream from the replica's next LSN, seed it from a snapshot,
/// tell it to rewind to where the logs diverge, or refuse it.
fn decide(ctx: &PeerContext, hello: &Hello) -> Result<Start, Refusal> {
    let history = |entries: Vec<(Term, Lsn)>, whose: &str| {
        TermHistory::from_entries(entries).map_err(|e| Refusal {
            code: RefusalCode::Protocol,
            message: format!("{whose} history of terms is invalid: {e}"),
        })
    };
    // The writer publishes a new term's history before the progress that includes its first
    // record: read the progress first, so the history is never older than the log end it goes
    // with.
    let flushed = ctx.engine.progress().flushed;
    let ours = history(ctx.engine.term_history(), "this primary's")?;
    let theirs = history(hello.history.clone(), "the replica's")?;
    let cluster_id = ctx.cluster_id();
    let primary = PrimaryView {
        name: &ctx.name,
        cluster_id: &cluster_id,
        term: ctx.term(),
        flushed,
        log_first: ctx.engine.log_first_lsn(),
        history: &ours,
    };
    let replica = ReplicaView {
        name: &hello.name,
        cluster_id: &hello.cluster_id,
        term: hello.term,
        last: hello.last,
        history: Some(&theirs),
    };
    match decide_handshake(&primary, &replica) {
        HandshakeDecision::Stream { from } => Ok(Start::Stream { from }),
        HandshakeDecision::Snapshot => Ok(Start::Snapshot),
        HandshakeDecision::Rewind { to } => Ok(Start::Rewind { to }),
        HandshakeDecision::Refuse { reason, message } => Err(Refusal {
            code: match reason {
                RefuseReason::Protocol => RefusalCode::Protocol,
                RefuseReason::StaleTerm => RefusalCode::StaleTerm,
                RefuseReason::WrongCluster => RefusalCode::WrongCluster,
                RefuseReason::Diverged => RefusalCode::Diverged,
            },
            message,
        }),
    }
}

async fn receive_progress(
    rd: &mut BufReader<PeerReader>,
    ctx: &PeerContext,
    registry: &Registry,
    name: &str,
    conn: u64,
) -> Result<(), String> {
    loop {
        let msg = match tokio::time::timeout(ctx.peer_timeout, read_message(rd)).await {
            Ok(Ok(m)) => m,
            Ok(Err(WireError::Closed)) => return Err("the replica closed the connection".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "no word from the replica for {:?}",
                    ctx.peer_timeout
                ))
            }
        };
        match msg {
            Message::Progress(p) => {
                registry.progress(name, conn, p, ctx.engine.progress().flushed.lsn)?;
            }
            Message::Stalled { reason } => {
                match &reason {
                    Some(why) => {
                        tracing::warn!(replica = %name, reason = %why, "the replica stopped applying; it keeps what it has and goes on once it can")
                    }
                    None => tracing::info!(replica = %name, "the replica applies again"),
                }
                registry.stalled(name, conn, reason);
            }
            Message::Refused(r) => {
                return Err(format!("the replica refused the stream: {}", r.message))
            }
            other => {
                return Err(format!(
                    "the replica sent an unexpected {} message",
                    other.kind()
                ))
            }
        }
    }
}

/// Reads up to a chunk of records from the reader.
fn read_chunk(reader: &mut scribe_log::LogReader) -> Result<Vec<Record>, String> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while chunk.len() < CHUNK_RECORDS && bytes < CHUNK_BYTES {
        match reader.next() {
            Some(Ok(r)) => {
                bytes += r.frame_len();
                chunk.push(r);
            }
            Some(Err(e)) => return Err(format!("read the change log: {e}")),
            None => break,
        }
    }
    Ok(chunk)
}

pub(crate) async fn stream_to(
    wr: &mut BufWriter<PeerWriter>,
    ctx: &PeerContext,
    registry: &Registry,
    name: &str,
    conn: u64,
    start: Start,
) -> Result<(), String> {
    let from = match start {
        Start::Stream { from } => from,
        Start::Snapshot => send_snapshot(wr, ctx, registry, name, conn).await?,
        Start::Rewind { .. } => return Ok(()),
    };
    let mut progress = ctx.engine.watch_progress();
    let mut reader = ctx.engine.read_log(from).map_err(|e| {
        format!("read the change log from lsn {from}: {e}; the replica will be re-seeded when it reconnects")
    })?;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let io = |e: WireError| format!("send to the replica: {e}");
    // A heartbeat goes first, and then at least every HEARTBEAT even while a backlog streams:
    // the replica judges its freshness (`max_lag`) by them.
    let mut last_heartbeat: Option<Instant> = None;
    let mut tick_fired = false;
    loop {
        let flushed = progress.borrow_and_update().flushed;
        reader
            .extend(flushed.lsn)
            .map_err(|e| format!("read the change log: {e}"))?;
        let mut sent = false;
        loop {
            if tick_fired || last_heartbeat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
                tick_fired = false;
                let now_flushed = ctx.engine.progress().flushed;
                write_message(
                    wr,
                    &Message::Heartbeat {
                        flushed: now_flushed,
                    },
                )
                .await
                .map_err(io)?;
                last_heartbeat = Some(Instant::now());
                sent = true;
            }
            let chunk = read_chunk(&mut reader)?;
            if chunk.is_empty() {
                break;
            }
            registry.sent(name, conn, &chunk);
            write_message(wr, &Message::Records(chunk))
                .await
                .map_err(io)?;
            sent = true;
        }
        if sent {
            wr.flush().await.map_err(|e| io(e.into()))?;
        }
        tokio::select! {
            changed = progress.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => tick_fired = true,
        }
    }
}

/// Deletes the snapshot file when the transfer ends, however it ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Takes a snapshot and sends it; answers the LSN streaming continues from.
async fn send_snapshot(
    wr: &mut BufWriter<PeerWriter>,
    ctx: &PeerContext,
    registry: &Registry,
    name: &str,
    conn: u64,
) -> Result<Lsn, String> {
    let started = Instant::now();
    registry.seeding(name, conn, Some((0, 0)), ctx.engine.log_first_lsn());
    std::fs::create_dir_all(&ctx.snapshot_dir)
        .map_err(|e| format!("create {}: {e}", ctx.snapshot_dir.display()))?;
    let path = ctx.snapshot_dir.join(format!("{name}-{conn}.snapshot"));
    let _cleanup = RemoveOnDrop(path.clone());
    tracing::info!(replica = %name, "taking a snapshot to seed the replica");
    let taking = ctx.engine.snapshot(path.clone());
    let at = if ctx.mm.is_some() {
        // A master waits for its peer's word at most --peer-timeout, and a large database
        // takes longer to copy: heartbeats meanwhile (a replica waits for the snapshot itself).
        tokio::pin!(taking);
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                r = &mut taking => break r,
                _ = tick.tick() => {
                    let flushed = ctx.engine.progress().flushed;
                    write_message(wr, &Message::Heartbeat { flushed })
                        .await
                        .map_err(|e| format!("send to the master: {e}"))?;
                    wr.flush()
                        .await
                        .map_err(|e| format!("send to the master: {e}"))?;
                }
            }
        }
    } else {
        taking.await
    }
    .map_err(|e| format!("take a snapshot: {e}"))?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| format!("open snapshot {}: {e}", path.display()))?;
    let total = file
        .metadata()
        .await
        .map_err(|e| format!("read snapshot size: {e}"))?
        .len();
    registry.seeding(name, conn, Some((0, total)), at.lsn.next());
    tracing::info!(replica = %name, %at, bytes = total, "sending a snapshot");
    let io = |e: WireError| format!("send the snapshot: {e}");
    write_message(wr, &Message::SnapshotBegin { at, bytes: total })
        .await
        .map_err(io)?;
    let mut crc = 0u32;
    let mut sent = 0u64;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| format!("read snapshot {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        write_message(wr, &Message::SnapshotChunk(buf[..n].to_vec()))
            .await
            .map_err(io)?;
        sent += n as u64;
        registry.seeding(name, conn, Some((sent, total)), at.lsn.next());
    }
    if sent != total {
        return Err(format!(
            "the snapshot file changed size while it was sent ({sent} of {total} bytes)"
        ));
    }
    // From here the replica may install it and report its position.
    registry.seeding(name, conn, None, at.lsn.next());
    write_message(wr, &Message::SnapshotEnd { crc32c: crc })
        .await
        .map_err(io)?;
    wr.flush().await.map_err(|e| io(e.into()))?;
    tracing::info!(replica = %name, %at, bytes = total, seconds = started.elapsed().as_secs_f64(), "snapshot sent");
    Ok(at.lsn.next())
}
