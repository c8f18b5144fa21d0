//! The change log (`scribe-log`): record frames ([`decode_frame`]), segment scans
//! ([`segment::scan`], [`segment::frames_after`]), segment headers ([`segment::decode_header`])
//! and the term history file ([`Terms::decode`]).
//!
//! Every format carries a CRC32C, which random mutations almost never match, so the first byte
//! of each input is a mode: with its low bit set the target recomputes the checksums before
//! decoding, so the decoder's later checks get fuzzed too.

use std::path::Path;

use scribe_core::{Lsn, Term};
use scribe_log::record::{decode_frame, FRAME_HEADER, FRAME_MAGIC, MAX_LSN};
use scribe_log::segment::{self, SEGMENT_HEADER};
use scribe_log::{Record, Terms};

/// `log_record`: mode byte, then a record frame (bit 1 clear) or a segment's frames after a valid
/// header (bit 1 set).
pub fn record(input: &[u8]) -> bool {
    let Some((&mode, rest)) = input.split_first() else {
        return false;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        fix_frames(&mut bytes, 0);
    }
    if mode & 2 == 0 {
        return match decode_frame(&bytes) {
            Ok((rec, len)) => {
                assert!(len <= bytes.len(), "a frame longer than its input");
                check_record(&rec, len);
                true
            }
            Err(_) => false,
        };
    }
    let first = Lsn(u64::from(mode >> 2));
    let mut seg = segment::encode_header(first).to_vec();
    seg.extend_from_slice(&bytes);
    let Ok(scan) = segment::scan(&seg, Path::new("fuzz.seg")) else {
        panic!("a segment with a valid header does not scan");
    };
    assert_eq!(scan.first, first);
    let end = scan.valid_len + scan.padding;
    assert!(scan.valid_len as usize <= seg.len() && end as usize <= seg.len());
    if scan.bad.is_none() {
        assert_eq!(
            end as usize,
            seg.len(),
            "a clean scan must account for every byte"
        );
    }
    for (i, r) in scan.records.iter().enumerate() {
        assert_eq!(
            r.lsn.0,
            first.0 + i as u64,
            "scanned records must be consecutive"
        );
        check_record(r, r.frame_len());
    }
    for (offset, r) in segment::frames_after(&seg, SEGMENT_HEADER) {
        assert!(offset as usize + r.frame_len() <= seg.len());
    }
    !scan.records.is_empty()
}

fn check_record(rec: &Record, len: usize) {
    assert!(rec.batch_first <= rec.lsn, "decoded batch_first > lsn");
    let encoded = match rec.encode() {
        Ok(b) => b,
        Err(e) => panic!("a decoded record does not encode: {e}"),
    };
    assert_eq!(encoded.len(), len, "re-encoded frame has another length");
    match decode_frame(&encoded) {
        Ok((again, n)) => {
            assert_eq!(
                &again, rec,
                "a record does not survive encoding and decoding"
            );
            assert_eq!(n, len);
        }
        Err(e) => panic!("an encoded record does not decode: {e:?}"),
    }
}

/// Recomputes the checksum of every frame that starts where the previous one ended (from
/// `from`), as far as the frames' lengths fit the buffer.
pub fn fix_frames(b: &mut [u8], from: usize) {
    let mut off = from;
    while off + FRAME_HEADER <= b.len() {
        let magic = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
        if magic != FRAME_MAGIC {
            break;
        }
        let len = u32::from_le_bytes([b[off + 4], b[off + 5], b[off + 6], b[off + 7]]) as usize;
        let end = off + FRAME_HEADER + len;
        if end > b.len() {
            break;
        }
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&b[off + 4..off + 8]),
            &b[off + FRAME_HEADER..end],
        );
        b[off + 8..off + 12].copy_from_slice(&crc.to_le_bytes());
        off = end;
    }
}

/// `log_headers`: mode byte, then a segment header (bit 1 set) or a term history file.
pub fn headers(input: &[u8]) -> bool {
    let Some((&mode, rest)) = input.split_first() else {
        return false;
    };
    let mut b = rest.to_vec();
    if mode & 2 == 2 {
        if mode & 1 == 1 && b.len() >= SEGMENT_HEADER {
            let crc = crc32c::crc32c(&b[0..20]);
            b[20..24].copy_from_slice(&crc.to_le_bytes());
        }
        match segment::decode_header(&b) {
            Ok(first) => {
                assert_eq!(
                    &segment::encode_header(first)[..],
                    &b[..SEGMENT_HEADER],
                    "a decoded header encodes to other bytes"
                );
                true
            }
            Err(_) => false,
        }
    } else {
        if mode & 1 == 1 && b.len() >= 4 {
            let n = b.len() - 4;
            let crc = crc32c::crc32c(&b[..n]);
            b[n..].copy_from_slice(&crc.to_le_bytes());
        }
        match Terms::decode(&b) {
            Ok(terms) => {
                assert_eq!(
                    terms.encode(),
                    b,
                    "a decoded term history encodes to other bytes"
                );
                for w in terms.entries().windows(2) {
                    assert!(w[0].0 < w[1].0 && w[0].1 < w[1].1, "terms out of order");
                }
                let probe = terms.entries().last().map_or(Lsn(1), |e| e.1);
                let _ = terms.term_at(probe);
                true
            }
            Err(_) => false,
        }
    }
}

/// A few records of consecutive LSNs starting at `first`, in terms that grow.
pub fn records(first: u64, n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            term: Term(1 + i / 3),
            lsn: Lsn(first + i),
            batch_first: Lsn(first + i - i % 2),
            time_us: 1_700_000_000_000_000 + i,
            payload: format!("INSERT {i}").into_bytes(),
        })
        .collect()
}

fn frames(recs: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        if r.encode_into(&mut out).is_err() {
            panic!("a seed record does not encode");
        }
    }
    out
}

/// Seeds for `log_record`.
pub fn record_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, r) in records(1, 4).iter().enumerate() {
        let f = frames(std::slice::from_ref(r));
        seeds.push([&[i as u8 & 1][..], &f].concat());
    }
    let empty = Record {
        payload: Vec::new(),
        ..records(9, 1)[0].clone()
    };
    seeds.push([&[1u8][..], &frames(&[empty])].concat());
    // Segments: header for LSN 1 (mode 0b111 => first 1), frames, then a torn tail or padding.
    seeds.push([&[0u8][..], &frames(&records(MAX_LSN.0, 1))].concat());
    let body = frames(&records(1, 5));
    seeds.push([&[0b111u8][..], &body].concat());
    seeds.push([&[0b111u8][..], &body[..body.len() - 7]].concat());
    seeds.push([&[0b111u8][..], &body, &[0u8; 64][..]].concat());
    seeds.push([&[0b1011u8][..], &frames(&records(2, 3))].concat());
    // A frame whose flags byte is set, and one whose batch starts after it (both fixed up).
    let mut flagged = frames(&records(5, 1));
    flagged[FRAME_HEADER + 1] = 1;
    seeds.push([&[1u8][..], &flagged].concat());
    let mut late = frames(&records(5, 1));
    late[FRAME_HEADER + 18..FRAME_HEADER + 26].copy_from_slice(&9u64.to_le_bytes());
    seeds.push([&[1u8][..], &late].concat());
    // A segment with a damaged frame in the middle.
    let mut middle = frames(&records(1, 4));
    middle[60] ^= 0x40;
    seeds.push([&[0b110u8][..], &middle].concat());
    seeds
}

/// Seeds for `log_headers`.
pub fn header_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for first in [1u64, 2, 1000, u64::MAX] {
        seeds.push([&[0b10u8][..], &segment::encode_header(Lsn(first))].concat());
    }
    // Damaged headers: another version (checksum fixed up), cut short.
    let mut v2 = segment::encode_header(Lsn(7));
    v2[8] = 2;
    seeds.push([&[0b11u8][..], &v2].concat());
    seeds.push([&[0b10u8][..], &segment::encode_header(Lsn(7))[..20]].concat());
    let histories: [&[(u64, u64)]; 4] = [
        &[],
        &[(1, 1)],
        &[(1, 1), (2, 10), (5, 11)],
        &[(3, 100), (u64::MAX, u64::MAX)],
    ];
    for h in histories {
        let entries = h.iter().map(|&(t, l)| (Term(t), Lsn(l))).collect();
        if let Ok(t) = Terms::from_entries(entries) {
            seeds.push([&[0u8][..], &t.encode()].concat());
            let mut unordered = t.encode();
            if unordered.len() > 24 {
                unordered[16] ^= 0xff;
                seeds.push([&[1u8][..], &unordered].concat());
            }
        }
    }
    seeds
}

/// Words of the log's formats.
pub const DICT: &[&[u8]] = &[
    &FRAME_MAGIC.to_le_bytes(),
    b"SCRIBLOG",
    b"SCRIBTRM",
    &[1, 0, 0, 0],
];
