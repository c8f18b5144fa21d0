//! Round trips of every message, and decoding of damaged and random input.

use proptest::prelude::*;
use scribe_core::{Lsn, Position, Term};
use scribe_log::Record;

use super::*;
use crate::{ControlHello, Hello, Progress, Refusal, RefusalCode, Start, Welcome};

fn pos(t: u64, l: u64) -> Position {
    Position::new(Term(t), Lsn(l))
}

fn samples() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            cluster_id: "c0ffee".into(),
            name: "n2".into(),
            term: Term(3),
            last: pos(3, 41),
            http_url: "http://127.0.0.1:5481".into(),
            history: vec![(Term(1), Lsn(1)), (Term(3), Lsn(30))],
        }),
        Message::Welcome(Welcome {
            cluster_id: "c0ffee".into(),
            primary: "n1".into(),
            term: Term(4),
            http_url: "http://127.0.0.1:5480".into(),
            start: Start::Rewind { to: pos(3, 35) },
        }),
        Message::Welcome(Welcome {
            cluster_id: "c0ffee".into(),
            primary: "n1".into(),
            term: Term(3),
            http_url: "http://127.0.0.1:5480".into(),
            start: Start::Stream { from: Lsn(42) },
        }),
        Message::Welcome(Welcome {
            cluster_id: String::new(),
            primary: "n1".into(),
            term: Term(1),
            http_url: String::new(),
            start: Start::Snapshot,
        }),
        Message::Refused(Refusal {
            code: RefusalCode::WrongCluster,
            message: "wrong cluster ✗".into(),
        }),
        Message::Records(vec![
            Record {
                term: Term(1),
                lsn: Lsn(7),
                batch_first: Lsn(7),
                time_us: 99,
                payload: b"abc".to_vec(),
            },
            Record {
                term: Term(1),
                lsn: Lsn(8),
                batch_first: Lsn(7),
                time_us: 100,
                payload: vec![],
            },
        ]),
        Message::Records(vec![]),
        Message::Heartbeat { flushed: pos(1, 8) },
        Message::SnapshotBegin {
            at: pos(1, 8),
            bytes: 1 << 40,
        },
        Message::SnapshotChunk(vec![0, 1, 2, 255]),
        Message::SnapshotEnd {
            crc32c: 0xdead_beef,
        },
        Message::Progress(Progress {
            written: pos(1, 9),
            flushed: pos(1, 8),
            applied: pos(1, 7),
        }),
        Message::Refused(Refusal {
            code: RefusalCode::ClusterMismatch,
            message: "the --cluster lists disagree".into(),
        }),
        Message::ControlHello(ControlHello {
            cluster_id: "c0ffee".into(),
            from: "n1".into(),
            members: vec![
                ("n1".into(), "127.0.0.1:7001".into()),
                ("n2".into(), "127.0.0.1:7002".into()),
            ],
        }),
        Message::ControlHello(ControlHello {
            cluster_id: String::new(),
            from: String::new(),
            members: vec![],
        }),
        Message::ControlRequest {
            id: 7,
            body: br#"{"vote":{}}"#.to_vec(),
        },
        Message::ControlResponse {
            id: u64::MAX,
            body: vec![],
        },
        Message::Stalled {
            reason: Some("disk full".into()),
        },
        Message::Stalled { reason: None },
        Message::AuthHello { nonce: vec![7; 32] },
        Message::AuthChallenge {
            nonce: vec![8; 32],
            proof: vec![9; 32],
        },
        Message::AuthProof { proof: vec![] },
        Message::AuthAccepted,
        Message::MmHello {
            cluster_id: "c".into(),
            from: "n2".into(),
            http_url: "http://127.0.0.1:7002".into(),
            policies: "counters=merge(hits=sum)".into(),
            from_lsn: Lsn(9),
            log_id: 77,
            vv: vec![("n1".into(), 3), ("n2".into(), 4)],
        },
        Message::MmWelcome {
            name: "n1".into(),
            own_seq: 7,
            log_id: 78,
        },
        Message::MmAck { applied: Lsn(3) },
    ]
}

#[test]
fn every_message_round_trips() {
    for m in samples() {
        let frame = encode(&m).unwrap();
        assert_eq!(decode(&frame).unwrap(), m, "{}", m.kind());
    }
}

#[tokio::test]
async fn messages_read_back_from_a_stream_in_order() {
    let mut bytes = Vec::new();
    for m in samples() {
        write_message(&mut bytes, &m).await.unwrap();
    }
    let mut r = &bytes[..];
    for m in samples() {
        assert_eq!(read_message(&mut r).await.unwrap(), m);
    }
    assert!(matches!(read_message(&mut r).await, Err(WireError::Closed)));
}

#[tokio::test]
async fn garbage_is_refused_by_its_first_bytes() {
    let mut r = &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..];
    let e = read_message(&mut r).await.unwrap_err();
    assert!(matches!(e, WireError::BadMagic(_)), "{e}");
    assert!(e.to_string().contains("peer port"), "{e}");
}

#[tokio::test]
async fn a_huge_announced_length_is_refused_before_allocating() {
    let mut frame = MAGIC.to_vec();
    frame.extend_from_slice(&u32::MAX.to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    let e = read_message(&mut &frame[..]).await.unwrap_err();
    assert!(matches!(e, WireError::TooLarge(_)), "{e}");
}

#[test]
fn every_flipped_bit_is_caught() {
    for m in samples() {
        let frame = encode(&m).unwrap();
        for i in 0..frame.len() * 8 {
            let mut bad = frame.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                decode(&bad).is_err(),
                "{} with bit {i} flipped decoded",
                m.kind()
            );
        }
    }
}

#[test]
fn another_version_is_named() {
    let mut frame = encode(&Message::Heartbeat { flushed: pos(1, 1) }).unwrap();
    frame[FRAME_HEADER] = 9;
    let crc = crc32c::crc32c(&frame[FRAME_HEADER..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    let e = decode(&frame).unwrap_err();
    assert!(e.to_string().contains("wire version 9"), "{e}");
}

#[test]
fn a_control_hello_announcing_more_members_than_bytes_is_refused() {
    let mut body = vec![crate::WIRE_VERSION, 10];
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    let e = Message::decode_body(&body).unwrap_err();
    assert!(e.to_string().contains("cannot fit"), "{e}");
}

#[test]
fn every_refusal_code_round_trips() {
    for code in [
        RefusalCode::WrongCluster,
        RefusalCode::StaleTerm,
        RefusalCode::Diverged,
        RefusalCode::NotPrimary,
        RefusalCode::NameInUse,
        RefusalCode::Protocol,
        RefusalCode::Internal,
        RefusalCode::ClusterMismatch,
        RefusalCode::Unauthenticated,
    ] {
        let m = Message::Refused(Refusal {
            code,
            message: code.as_str().into(),
        });
        assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
    }
}

proptest! {
    /// The decoder never panics and never accepts a body with trailing or missing bytes.
    #[test]
    fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode_body(&body);
    }

    /// A valid body cut short is an error, not a different message.
    #[test]
    fn truncated_bodies_are_errors(i in 0usize..16, cut in 0usize..64) {
        let m = &samples()[i];
        let mut body = Vec::new();
        m.encode_body(&mut body).unwrap();
        let cut = cut.min(body.len().saturating_sub(1));
        prop_assert!(Message::decode_body(&body[..cut]).is_err());
    }
}
