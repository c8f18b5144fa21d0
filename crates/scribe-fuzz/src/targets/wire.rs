//! The peer protocol (`scribe-wire`): whole frames through [`frame::decode`], the same bytes as a
//! stream through [`read_message`] in small reads, and bodies through [`Message::decode_body`]
//! (past the frame checksum, which random bytes almost never match). A decoded message must
//! encode again and decode to the same message; a message read from the stream must be the one
//! `frame::decode` reads from the same bytes.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use scribe_core::handshake::{decide_handshake, HandshakeDecision, PrimaryView, ReplicaView};
use scribe_core::{Lsn, Position, Term, TermHistory};
use scribe_log::Record;
use scribe_wire::frame::{self, FRAME_HEADER};
use scribe_wire::{
    read_message, ControlHello, Hello, Message, Progress, Refusal, RefusalCode, Start, Welcome,
};
use tokio::io::{AsyncRead, ReadBuf};

/// `wire_frame`: the input is a byte stream on the peer port.
pub fn frame(input: &[u8]) -> bool {
    let whole = frame::decode(input);
    if let Ok(m) = &whole {
        round_trip(m);
    }
    // The stream, read in pieces of a size chosen by the input's first byte.
    let chunk = 1 + usize::from(input.first().copied().unwrap_or(0) % 13);
    let mut reader = Chunks {
        data: input,
        pos: 0,
        chunk,
    };
    let mut read = 0;
    loop {
        let start = reader.pos;
        match block_on(read_message(&mut reader)) {
            Ok(m) => {
                read += 1;
                let used = &input[start..reader.pos];
                match frame::decode(used) {
                    Ok(again) => assert_eq!(again, m, "read_message and frame::decode disagree"),
                    Err(e) => panic!("read_message read a message that frame::decode refuses: {e}"),
                }
                round_trip(&m);
            }
            Err(_) => break,
        }
    }
    whole.is_ok() || read > 0
}

/// `wire_body`: the input is a frame's body (version, kind, fields).
pub fn body(input: &[u8]) -> bool {
    match Message::decode_body(input) {
        Ok(m) => {
            let mut again = Vec::new();
            if let Err(e) = m.encode_body(&mut again) {
                panic!("a decoded message does not encode: {e}");
            }
            assert_eq!(
                Message::decode_body(&again).ok().as_ref(),
                Some(&m),
                "a message does not survive encoding and decoding"
            );
            round_trip(&m);
            true
        }
        Err(_) => false,
    }
}

fn round_trip(m: &Message) {
    let bytes = match frame::encode(m) {
        Ok(b) => b,
        Err(e) => panic!("a decoded message does not encode: {e}"),
    };
    match frame::decode(&bytes) {
        Ok(again) => assert_eq!(
            &again, m,
            "a message does not survive encoding and decoding"
        ),
        Err(e) => panic!("an encoded message does not decode: {e}"),
    }
}

/// A reader over a buffer that hands out at most `chunk` bytes per read and is never pending.
struct Chunks<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Polls a future whose I/O is never pending to completion.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read over a ready buffer was pending"),
    }
}

/// One message of every kind, as the real encoder writes them.
pub fn messages() -> Vec<Message> {
    let pos = Position::new(Term(3), Lsn(42));
    let record = |lsn: u64, payload: &[u8]| Record {
        term: Term(2),
        lsn: Lsn(lsn),
        batch_first: Lsn(lsn.saturating_sub(1).max(1)),
        time_us: 1_700_000_000_000_000 + lsn,
        payload: payload.to_vec(),
    };
    vec![
        Message::Hello(Hello {
            cluster_id: "c-7f3a".into(),
            name: "n2".into(),
            term: Term(3),
            last: pos,
            http_url: "http://127.0.0.1:8081".into(),
            history: vec![(Term(1), Lsn(1)), (Term(3), Lsn(40))],
        }),
        Message::Hello(Hello {
            cluster_id: String::new(),
            name: "fresh".into(),
            term: Term(0),
            last: Position::ZERO,
            http_url: String::new(),
            history: Vec::new(),
        }),
        Message::Welcome(Welcome {
            cluster_id: "c-7f3a".into(),
            primary: "n1".into(),
            term: Term(3),
            http_url: "http://127.0.0.1:8080".into(),
            start: Start::Stream { from: Lsn(43) },
        }),
        Message::Welcome(Welcome {
            cluster_id: "c".into(),
            primary: "n1".into(),
            term: Term(1),
            http_url: "http://n1".into(),
            start: Start::Snapshot,
        }),
        Message::Welcome(Welcome {
            cluster_id: "c".into(),
            primary: "n1".into(),
            term: Term(4),
            http_url: "http://n1".into(),
            start: Start::Rewind { to: pos },
        }),
        Message::Refused(Refusal {
            code: RefusalCode::NotPrimary,
            message: "not the primary".into(),
        }),
        Message::Refused(Refusal {
            code: RefusalCode::ClusterMismatch,
            message: String::new(),
        }),
        Message::Records(vec![record(41, b"insert"), record(42, &[0, 1, 2, 255])]),
        Message::Records(Vec::new()),
        Message::Heartbeat { flushed: pos },
        Message::SnapshotBegin {
            at: pos,
            bytes: 4096,
        },
        Message::SnapshotChunk(b"SQLite format 3\0".to_vec()),
        Message::SnapshotEnd {
            crc32c: 0xdead_beef,
        },
        Message::Progress(Progress {
            written: pos,
            flushed: pos,
            applied: Position::new(Term(3), Lsn(40)),
        }),
        Message::ControlHello(ControlHello {
            cluster_id: "c".into(),
            from: "n1".into(),
            members: vec![
                ("n1".into(), "127.0.0.1:9001".into()),
                ("n2".into(), "127.0.0.1:9002".into()),
            ],
        }),
        Message::ControlRequest {
            id: 7,
            body: br#"{"vote":{"term":3}}"#.to_vec(),
        },
        Message::ControlResponse {
            id: 7,
            body: br#"{"ok":true}"#.to_vec(),
        },
    ]
}

/// Seeds for `wire_frame`: every message as a frame, and two frames back to back.
pub fn frame_seeds() -> Vec<Vec<u8>> {
    let frames: Vec<Vec<u8>> = messages()
        .iter()
        .filter_map(|m| frame::encode(m).ok())
        .collect();
    let mut seeds = frames.clone();
    for pair in frames.windows(2) {
        seeds.push([pair[0].clone(), pair[1].clone()].concat());
    }
    seeds.push(frames[0][..FRAME_HEADER].to_vec());
    seeds
}

/// Seeds for `wire_body`: every message's body.
pub fn body_seeds() -> Vec<Vec<u8>> {
    messages()
        .iter()
        .filter_map(|m| {
            let mut b = Vec::new();
            m.encode_body(&mut b).ok().map(|()| b)
        })
        .collect()
}

/// Words of the peer protocol.
pub const DICT: &[&[u8]] = &[b"SCRW", b"SREC", &[2, 4], &[2, 1], &[2, 10]];

/// `wire_handshake`: the input is a mode byte, then a body; a `Hello` goes through the primary's
/// decision ([`decide_handshake`]) as the peer listener makes it, against one of four primaries
/// (chosen by the mode byte): empty, a log from LSN 1, a log whose old segments are deleted, and
/// one at the end of the LSN range.
pub fn handshake(input: &[u8]) -> bool {
    let Some((&mode, body)) = input.split_first() else {
        return false;
    };
    let Ok(Message::Hello(hello)) = Message::decode_body(body) else {
        return false;
    };
    let Ok(theirs) = TermHistory::from_entries(hello.history.clone()) else {
        return false;
    };
    let max = scribe_log::record::MAX_LSN;
    let (flushed, log_first, ours) = match mode % 4 {
        0 => (Position::ZERO, Lsn(1), vec![]),
        1 => (
            Position::new(Term(3), Lsn(100)),
            Lsn(1),
            vec![(Term(1), Lsn(1)), (Term(2), Lsn(40)), (Term(3), Lsn(80))],
        ),
        2 => (
            Position::new(Term(3), Lsn(100)),
            Lsn(60),
            vec![(Term(2), Lsn(59)), (Term(3), Lsn(80))],
        ),
        _ => (
            Position::new(Term(5), max),
            Lsn(max.0 - 10),
            vec![(Term(5), Lsn(max.0 - 11))],
        ),
    };
    let Ok(ours) = TermHistory::from_entries(ours) else {
        panic!("the fuzzer's primary history is invalid");
    };
    let primary = PrimaryView {
        name: "n1",
        cluster_id: "c-7f3a",
        term: flushed.term.max(Term(3)),
        flushed,
        log_first,
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
        HandshakeDecision::Stream { from } => {
            assert!(
                from.0 >= 1 && from.0 - 1 <= flushed.lsn.0,
                "streams from {from} past the log's end"
            );
            assert!(
                from >= log_first,
                "streams from {from}, which the log no longer holds"
            );
        }
        HandshakeDecision::Rewind { to } => {
            assert!(
                to.lsn < hello.last.lsn,
                "rewinds to {to}, not before the replica's last"
            );
            assert!(to.lsn <= flushed.lsn);
        }
        HandshakeDecision::Snapshot | HandshakeDecision::Refuse { .. } => {}
    }
    true
}

/// Seeds for `wire_handshake`: each hello against each primary.
pub fn handshake_seeds() -> Vec<Vec<u8>> {
    let hellos: Vec<Vec<u8>> = body_seeds()
        .into_iter()
        .filter(|b| b.get(1) == Some(&1))
        .collect();
    let mut seeds = Vec::new();
    for mode in 0..4u8 {
        for h in &hellos {
            seeds.push([&[mode][..], h].concat());
        }
    }
    let replica = |last: Position, history: Vec<(Term, Lsn)>| {
        let mut b = vec![0u8];
        let m = Message::Hello(Hello {
            cluster_id: "c-7f3a".into(),
            name: "n2".into(),
            term: last.term,
            last,
            http_url: "http://n2".into(),
            history,
        });
        if m.encode_body(&mut b).is_err() {
            panic!("a seed hello does not encode");
        }
        b
    };
    for (mode, last, history) in [
        (
            1u8,
            Position::new(Term(2), Lsn(50)),
            vec![(Term(1), Lsn(1)), (Term(2), Lsn(40))],
        ),
        (
            1,
            Position::new(Term(4), Lsn(90)),
            vec![(Term(1), Lsn(1)), (Term(2), Lsn(40)), (Term(4), Lsn(85))],
        ),
        (2, Position::new(Term(2), Lsn(45)), vec![(Term(2), Lsn(30))]),
        (
            3,
            Position::new(Term(5), Lsn(scribe_log::record::MAX_LSN.0 - 1)),
            vec![(Term(5), Lsn(1))],
        ),
    ] {
        let mut s = replica(last, history);
        s[0] = mode;
        seeds.push(s);
    }
    seeds
}
