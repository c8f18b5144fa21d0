//! The peer messages and their binary encoding: little-endian integers, strings and byte strings
//! prefixed by a `u32` length, records as the change log's frames. Decoding checks every length
//! against what is left, so no input can make it read out of bounds or allocate without limit.

use scribe_core::{Lsn, Position, Term};
use scribe_log::Record;

use crate::WireError;

/// The wire version this code speaks.
pub const WIRE_VERSION: u8 = 2;

/// The replica's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The cluster the replica's data belongs to.
    pub cluster_id: String,
    /// The replica's node name.
    pub name: String,
    /// The newest term the replica knows.
    pub term: Term,
    /// The last record in the replica's log (`Position::ZERO` when it has none).
    pub last: Position,
    /// The replica's HTTP API, as clients reach it.
    pub http_url: String,
    /// The replica's history of terms: `(term, first LSN of that term in its log)`, oldest first
    /// (see `scribe_core::TermHistory`), so the primary can tell where their logs diverge.
    pub history: Vec<(Term, Lsn)>,
}

/// The opening message of a control-plane connection (DESIGN.md §4): the Raft group that holds
/// the cluster's control state talks over the peer port too, and the listener tells the two
/// kinds of connection apart by their first message. Every node is started with the same
/// `--cluster` list, so a hello carrying another list or cluster id is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlHello {
    /// The cluster the sender belongs to.
    pub cluster_id: String,
    /// The sender's node name.
    pub from: String,
    /// The sender's `--cluster` list: `(name, peer address)`, sorted by name.
    pub members: Vec<(String, String)>,
}

/// How the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Records follow from this LSN.
    Stream {
        /// The first LSN sent.
        from: Lsn,
    },
    /// A snapshot follows, then records from the LSN after its position.
    Snapshot,
    /// The replica holds records this primary never had (an old primary coming back): it must
    /// undo its records after `to`, the last position both logs share, and connect again.
    Rewind {
        /// The divergence point.
        to: Position,
    },
}

/// The primary's answer to [`Hello`] when it accepts the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The cluster id; a replica whose data is empty adopts it.
    pub cluster_id: String,
    /// The primary's node name.
    pub primary: String,
    /// The primary's term.
    pub term: Term,
    /// The primary's HTTP API.
    pub http_url: String,
    /// How the stream starts.
    pub start: Start,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The replica's data belongs to another cluster.
    WrongCluster,
    /// The other side's term is older than one this side knows.
    StaleTerm,
    /// The replica holds records the primary does not have.
    Diverged,
    /// This node is not a primary.
    NotPrimary,
    /// Another connected replica has this name.
    NameInUse,
    /// The peer broke the protocol.
    Protocol,
    /// Something failed on this side.
    Internal,
    /// The two nodes were started with `--cluster` lists (or cluster ids) that disagree.
    ClusterMismatch,
    /// Peer authentication failed: no proof of the peer secret, or a wrong one.
    Unauthenticated,
}

impl RefusalCode {
    fn to_u8(self) -> u8 {
        match self {
            RefusalCode::WrongCluster => 1,
            RefusalCode::StaleTerm => 2,
            RefusalCode::Diverged => 3,
            RefusalCode::NotPrimary => 4,
            RefusalCode::NameInUse => 5,
            RefusalCode::Protocol => 6,
            RefusalCode::Internal => 7,
            RefusalCode::ClusterMismatch => 8,
            RefusalCode::Unauthenticated => 9,
        }
    }

    fn from_u8(v: u8) -> Result<RefusalCode, WireError> {
        Ok(match v {
            1 => RefusalCode::WrongCluster,
            2 => RefusalCode::StaleTerm,
            3 => RefusalCode::Diverged,
            4 => RefusalCode::NotPrimary,
            5 => RefusalCode::NameInUse,
            6 => RefusalCode::Protocol,
            7 => RefusalCode::Internal,
            8 => RefusalCode::ClusterMismatch,
            9 => RefusalCode::Unauthenticated,
            _ => return Err(WireError::Malformed(format!("unknown refusal code {v}"))),
        })
    }

    /// A short name for logs and status pages.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::WrongCluster => "wrong_cluster",
            RefusalCode::StaleTerm => "stale_term",
            RefusalCode::Diverged => "diverged",
            RefusalCode::NotPrimary => "not_primary",
            RefusalCode::NameInUse => "name_in_use",
            RefusalCode::Protocol => "protocol",
            RefusalCode::Internal => "internal",
            RefusalCode::ClusterMismatch => "cluster_mismatch",
            RefusalCode::Unauthenticated => "unauthenticated",
        }
    }
}

/// A refusal: the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal.
    pub code: RefusalCode,
    /// What happened and what to do, for the operator.
    pub message: String,
}

/// A replica's positions, as in PostgreSQL's `pg_stat_replication`.
/// Invariant: `applied <= flushed <= written`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Last record received into its log.
    pub written: Position,
    /// Last record fsynced in its log.
    pub flushed: Position,
    /// Last record applied to its SQLite.
    pub applied: Position,
}

/// One peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Replica → primary, first.
    Hello(Hello),
    /// Primary → replica: accepted.
    Welcome(Welcome),
    /// Either way: refused, the connection closes.
    Refused(Refusal),
    /// Primary → replica: consecutive records.
    Records(Vec<Record>),
    /// Primary → replica when idle: the primary's flushed position.
    Heartbeat {
        /// The primary's last durable record.
        flushed: Position,
    },
    /// Primary → replica: a snapshot of `bytes` bytes taken at `at` follows.
    SnapshotBegin {
        /// The applied position the snapshot holds.
        at: Position,
        /// Its size.
        bytes: u64,
    },
    /// Primary → replica: the next bytes of the snapshot.
    SnapshotChunk(Vec<u8>),
    /// Primary → replica: the snapshot is complete; CRC32C of all its bytes.
    SnapshotEnd {
        /// Checksum of the whole file.
        crc32c: u32,
    },
    /// Replica → primary: its positions.
    Progress(Progress),
    /// Control plane, first message of a connection.
    ControlHello(ControlHello),
    /// Control plane: a request (a Raft RPC or a forwarded proposal, as JSON).
    ControlRequest {
        /// Chosen by the sender; the response carries it back.
        id: u64,
        /// The request.
        body: Vec<u8>,
    },
    /// Control plane: the answer to the request with the same `id`.
    ControlResponse {
        /// The request's id.
        id: u64,
        /// The response.
        body: Vec<u8>,
    },
    /// Replica → primary: it cannot apply what it receives (`Some(why)`: its disk is full, say)
    /// or it applies again (`None`).
    Stalled {
        /// Why, while stalled.
        reason: Option<String>,
    },
    /// Peer authentication (`--peer-secret`), dialer → listener, first: its fresh nonce.
    AuthHello {
        /// The dialer's nonce.
        nonce: Vec<u8>,
    },
    /// Peer authentication, listener → dialer: its fresh nonce and its proof of the secret
    /// (see `scribe_core::peer_auth`).
    AuthChallenge {
        /// The listener's nonce.
        nonce: Vec<u8>,
        /// The listener's proof over both nonces.
        proof: Vec<u8>,
    },
    /// Peer authentication, dialer → listener: the dialer's proof over both nonces.
    AuthProof {
        /// The proof.
        proof: Vec<u8>,
    },
    /// Peer authentication, listener → dialer: the proof was accepted; the peer protocol
    /// (`Hello` or `ControlHello`) follows.
    AuthAccepted,
    /// Multi-master, first message of a stream: the dialer asks for the listener's log from
    /// `from_lsn`. Refused unless both are masters of the same cluster with the same table
    /// policies, and the dialer is not the listener itself.
    MmHello {
        /// The cluster the dialer belongs to.
        cluster_id: String,
        /// The dialer's node name.
        from: String,
        /// The dialer's HTTP API, as clients reach it.
        http_url: String,
        /// The dialer's table policies, as text (`table=policy;...`, sorted).
        policies: String,
        /// The first LSN of the listener's log the dialer wants.
        from_lsn: Lsn,
        /// The id of the listener's log that `from_lsn` is a position in (0: the dialer has
        /// read none of it). A listener whose log has another id (it was seeded anew since)
        /// streams from its start instead.
        log_id: u64,
        /// What the dialer holds of each origin's records (its version vector, its own entry
        /// included).
        vv: Vec<(String, u64)>,
    },
    /// Multi-master: the listener accepts; its records from the LSN asked for follow.
    MmWelcome {
        /// The listener's node name.
        name: String,
        /// How many of its own records the listener holds.
        own_seq: u64,
        /// The id of the listener's log (the dialer keeps it with its position in that log).
        log_id: u64,
    },
    /// Multi-master, dialer → listener: what the dialer has applied of the listener's log and
    /// made durable (for semi-sync and sync commits and lag).
    MmAck {
        /// The listener's last LSN the dialer has made durable and applied.
        applied: Lsn,
    },
}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REFUSED: u8 = 3;
const RECORDS: u8 = 4;
const HEARTBEAT: u8 = 5;
const SNAPSHOT_BEGIN: u8 = 6;
const SNAPSHOT_CHUNK: u8 = 7;
const SNAPSHOT_END: u8 = 8;
const PROGRESS: u8 = 9;
const CONTROL_HELLO: u8 = 10;
const CONTROL_REQUEST: u8 = 11;
const CONTROL_RESPONSE: u8 = 12;
const STALLED: u8 = 20;
const AUTH_HELLO: u8 = 13;
const AUTH_CHALLENGE: u8 = 14;
const AUTH_PROOF: u8 = 15;
const AUTH_ACCEPTED: u8 = 16;
// The multi-master hello and welcome of the first multi-master build (21, 22) carried no version
// vector nor log id; those kinds are no longer read, so such a peer is refused as unknown.
const MM_HELLO: u8 = 24;
const MM_WELCOME: u8 = 25;
const MM_ACK: u8 = 23;

impl Message {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Refused(_) => "refused",
            Message::Records(_) => "records",
            Message::Heartbeat { .. } => "heartbeat",
            Message::SnapshotBegin { .. } => "snapshot-begin",
            Message::SnapshotChunk(_) => "snapshot-chunk",
            Message::SnapshotEnd { .. } => "snapshot-end",
            Message::Progress(_) => "progress",
            Message::ControlHello(_) => "control-hello",
            Message::ControlRequest { .. } => "control-request",
            Message::ControlResponse { .. } => "control-response",
            Message::Stalled { .. } => "stalled",
            Message::AuthHello { .. } => "auth-hello",
            Message::AuthChallenge { .. } => "auth-challenge",
            Message::AuthProof { .. } => "auth-proof",
            Message::AuthAccepted => "auth-accepted",
            Message::MmHello { .. } => "mm-hello",
            Message::MmWelcome { .. } => "mm-welcome",
            Message::MmAck { .. } => "mm-ack",
        }
    }

    /// Appends the message's body (version, kind, fields) to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.push(WIRE_VERSION);
        match self {
            Message::Hello(h) => {
                out.push(HELLO);
                put_str(out, &h.cluster_id);
                put_str(out, &h.name);
                put_u64(out, h.term.0);
                put_pos(out, h.last);
                put_str(out, &h.http_url);
                put_u32(out, h.history.len() as u32);
                for (term, lsn) in &h.history {
                    put_u64(out, term.0);
                    put_u64(out, lsn.0);
                }
            }
            Message::Welcome(w) => {
                out.push(WELCOME);
                put_str(out, &w.cluster_id);
                put_str(out, &w.primary);
                put_u64(out, w.term.0);
                put_str(out, &w.http_url);
                match w.start {
                    Start::Stream { from } => {
                        out.push(1);
                        put_u64(out, from.0);
                    }
                    Start::Snapshot => out.push(2),
                    Start::Rewind { to } => {
                        out.push(3);
                        put_pos(out, to);
                    }
                }
            }
            Message::Refused(r) => {
                out.push(REFUSED);
                out.push(r.code.to_u8());
                put_str(out, &r.message);
            }
            Message::Records(records) => {
                out.push(RECORDS);
                put_u32(out, records.len() as u32);
                for r in records {
                    r.encode_into(out)
                        .map_err(|e| WireError::Malformed(format!("encode record: {e}")))?;
                }
            }
            Message::Heartbeat { flushed } => {
                out.push(HEARTBEAT);
                put_pos(out, *flushed);
            }
            Message::SnapshotBegin { at, bytes } => {
                out.push(SNAPSHOT_BEGIN);
                put_pos(out, *at);
                put_u64(out, *bytes);
            }
            Message::SnapshotChunk(bytes) => {
                out.push(SNAPSHOT_CHUNK);
                put_bytes(out, bytes);
            }
            Message::SnapshotEnd { crc32c } => {
                out.push(SNAPSHOT_END);
                put_u32(out, *crc32c);
            }
            Message::Progress(p) => {
                out.push(PROGRESS);
                put_pos(out, p.written);
                put_pos(out, p.flushed);
                put_pos(out, p.applied);
            }
            Message::ControlHello(h) => {
                out.push(CONTROL_HELLO);
                put_str(out, &h.cluster_id);
                put_str(out, &h.from);
                put_u32(out, h.members.len() as u32);
                for (name, addr) in &h.members {
                    put_str(out, name);
                    put_str(out, addr);
                }
            }
            Message::ControlRequest { id, body } => {
                out.push(CONTROL_REQUEST);
                put_u64(out, *id);
                put_bytes(out, body);
            }
            Message::ControlResponse { id, body } => {
                out.push(CONTROL_RESPONSE);
                put_u64(out, *id);
                put_bytes(out, body);
            }
            Message::Stalled { reason } => {
                out.push(STALLED);
                match reason {
                    Some(why) => {
                        out.push(1);
                        put_str(out, why);
                    }
                    None => out.push(0),
                }
            }
            Message::AuthHello { nonce } => {
                out.push(AUTH_HELLO);
                put_bytes(out, nonce);
            }
            Message::AuthChallenge { nonce, proof } => {
                out.push(AUTH_CHALLENGE);
                put_bytes(out, nonce);
                put_bytes(out, proof);
            }
            Message::AuthProof { proof } => {
                out.push(AUTH_PROOF);
                put_bytes(out, proof);
            }
            Message::AuthAccepted => out.push(AUTH_ACCEPTED),
            Message::MmHello {
                cluster_id,
                from,
                http_url,
                policies,
                from_lsn,
                log_id,
                vv,
            } => {
                out.push(MM_HELLO);
                put_str(out, cluster_id);
                put_str(out, from);
                put_str(out, http_url);
                put_str(out, policies);
                put_u64(out, from_lsn.0);
                put_u64(out, *log_id);
                put_u32(out, vv.len() as u32);
                for (origin, seq) in vv {
                    put_str(out, origin);
                    put_u64(out, *seq);
                }
            }
            Message::MmWelcome {
                name,
                own_seq,
                log_id,
            } => {
                out.push(MM_WELCOME);
                put_str(out, name);
                put_u64(out, *own_seq);
                put_u64(out, *log_id);
            }
            Message::MmAck { applied } => {
                out.push(MM_ACK);
                put_u64(out, applied.0);
            }
        }
        Ok(())
    }

    /// Decodes a body written by [`Message::encode_body`].
    pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
        let mut r = Cursor { buf: body };
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(WireError::Version(version));
        }
        let kind = r.u8()?;
        let m = match kind {
            HELLO => Message::Hello(Hello {
                cluster_id: r.string()?,
                name: r.string()?,
                term: Term(r.u64()?),
                last: r.pos()?,
                http_url: r.string()?,
                history: {
                    let n = r.u32()? as usize;
                    // Each entry takes 16 bytes; this bounds the allocation.
                    if n > r.buf.len() / 16 {
                        return Err(WireError::Malformed(format!(
                            "{n} history entries cannot fit in {} bytes",
                            r.buf.len()
                        )));
                    }
                    let mut h = Vec::with_capacity(n);
                    for _ in 0..n {
                        h.push((Term(r.u64()?), Lsn(r.u64()?)));
                    }
                    h
                },
            }),
            WELCOME => Message::Welcome(Welcome {
                cluster_id: r.string()?,
                primary: r.string()?,
                term: Term(r.u64()?),
                http_url: r.string()?,
                start: match r.u8()? {
                    1 => Start::Stream {
                        from: Lsn(r.u64()?),
                    },
                    2 => Start::Snapshot,
                    3 => Start::Rewind { to: r.pos()? },
                    v => return Err(WireError::Malformed(format!("unknown start kind {v}"))),
                },
            }),
            REFUSED => Message::Refused(Refusal {
                code: RefusalCode::from_u8(r.u8()?)?,
                message: r.string()?,
            }),
            RECORDS => {
                let n = r.u32()? as usize;
                // Each record takes at least a frame header; this bounds the allocation.
                if n > r.buf.len() / scribe_log::record::FRAME_HEADER {
                    return Err(WireError::Malformed(format!(
                        "{n} records cannot fit in {} bytes",
                        r.buf.len()
                    )));
                }
                let mut records = Vec::with_capacity(n);
                for i in 0..n {
                    let (rec, len) = scribe_log::record::decode_frame(r.buf)
                        .map_err(|e| WireError::Malformed(format!("record {i}: {e:?}")))?;
                    r.buf = &r.buf[len..];
                    records.push(rec);
                }
                Message::Records(records)
            }
            HEARTBEAT => Message::Heartbeat { flushed: r.pos()? },
            MM_HELLO => Message::MmHello {
                cluster_id: r.string()?,
                from: r.string()?,
                http_url: r.string()?,
                policies: r.string()?,
                from_lsn: Lsn(r.u64()?),
                log_id: r.u64()?,
                vv: {
                    let n = r.u32()? as usize;
                    // Each entry takes at least 12 bytes; this bounds the allocation.
                    if n > r.buf.len() / 12 {
                        return Err(WireError::Malformed(format!(
                            "{n} version vector entries cannot fit in {} bytes",
                            r.buf.len()
                        )));
                    }
                    let mut vv = Vec::with_capacity(n);
                    for _ in 0..n {
                        vv.push((r.string()?, r.u64()?));
                    }
                    vv
                },
            },
            MM_WELCOME => Message::MmWelcome {
                name: r.string()?,
                own_seq: r.u64()?,
                log_id: r.u64()?,
            },
            MM_ACK => Message::MmAck {
                applied: Lsn(r.u64()?),
            },
            SNAPSHOT_BEGIN => Message::SnapshotBegin {
                at: r.pos()?,
                bytes: r.u64()?,
            },
            SNAPSHOT_CHUNK => Message::SnapshotChunk(r.bytes()?.to_vec()),
            SNAPSHOT_END => Message::SnapshotEnd { crc32c: r.u32()? },
            PROGRESS => Message::Progress(Progress {
                written: r.pos()?,
                flushed: r.pos()?,
                applied: r.pos()?,
            }),
            CONTROL_HELLO => {
                let cluster_id = r.string()?;
                let from = r.string()?;
                let n = r.u32()? as usize;
                // Each member takes at least two length prefixes; this bounds the allocation.
                if n > r.buf.len() / 8 {
                    return Err(WireError::Malformed(format!(
                        "{n} members cannot fit in {} bytes",
                        r.buf.len()
                    )));
                }
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push((r.string()?, r.string()?));
                }
                Message::ControlHello(ControlHello {
                    cluster_id,
                    from,
                    members,
                })
            }
            CONTROL_REQUEST => Message::ControlRequest {
                id: r.u64()?,
                body: r.bytes()?.to_vec(),
            },
            CONTROL_RESPONSE => Message::ControlResponse {
                id: r.u64()?,
                body: r.bytes()?.to_vec(),
            },
            STALLED => Message::Stalled {
                reason: match r.u8()? {
                    0 => None,
                    1 => Some(r.string()?),
                    b => {
                        return Err(WireError::Malformed(format!(
                            "a stalled message's flag is {b}, not 0 or 1"
                        )))
                    }
                },
            },
            AUTH_HELLO => Message::AuthHello {
                nonce: r.bytes()?.to_vec(),
            },
            AUTH_CHALLENGE => Message::AuthChallenge {
                nonce: r.bytes()?.to_vec(),
                proof: r.bytes()?.to_vec(),
            },
            AUTH_PROOF => Message::AuthProof {
                proof: r.bytes()?.to_vec(),
            },
            AUTH_ACCEPTED => Message::AuthAccepted,
            k => return Err(WireError::Malformed(format!("unknown message kind {k}"))),
        };
        if !r.buf.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} bytes after a {} message",
                r.buf.len(),
                m.kind()
            )));
        }
        Ok(m)
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_pos(out: &mut Vec<u8>, p: Position) {
    put_u64(out, p.term.0);
    put_u64(out, p.lsn.0);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed(format!(
                "message ends early: {n} bytes needed, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn pos(&mut self) -> Result<Position, WireError> {
        Ok(Position::new(Term(self.u64()?), Lsn(self.u64()?)))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| WireError::Malformed("a string is not UTF-8".into()))
    }
}
