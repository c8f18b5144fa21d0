//! The record and its frame on disk and on the wire.
//!
//! ```text
//! frame  := magic u32 | body_len u32 | crc u32 | body          (little endian)
//! body   := version u8 | flags u8 | term u64 | lsn u64 | batch_first u64 | time_us u64 | payload
//! crc    := CRC32C over body_len (4 bytes, LE) followed by body
//! ```
//!
//! `batch_first` is the first LSN of the group-commit batch the record was written in. Recovery
//! uses it to tell a torn last batch (which was never acknowledged) from damage to a batch that
//! was already fsynced (see [`crate::log`]).

use scribe_core::{Lsn, Position, Term};

use crate::LogError;

/// Marks the start of every frame: "SREC".
pub const FRAME_MAGIC: u32 = 0x5352_4543;
/// Bytes before the body: magic, length, checksum.
pub const FRAME_HEADER: usize = 12;
/// Bytes of the fixed part of the body.
pub const BODY_HEADER: usize = 1 + 1 + 8 + 8 + 8 + 8;
/// The record format this code writes.
pub const RECORD_VERSION: u8 = 1;
/// Largest body a frame may carry (256 MiB).
pub const MAX_BODY: usize = 256 << 20;
/// The largest LSN a record or a segment may name: `i64::MAX`, the largest SQLite stores (it
/// keeps the applied position as signed 64-bit integers). No log gets there (a million records a
/// second for 292,000 years), so a larger LSN is damage or a hostile peer; refusing it when
/// decoding keeps `Lsn::next` of every decoded LSN from overflowing.
pub const MAX_LSN: Lsn = Lsn(i64::MAX as u64);

/// One committed transaction in the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Term of the primary that wrote it.
    pub term: Term,
    /// Its sequence number.
    pub lsn: Lsn,
    /// First LSN of the group-commit batch it was written in (`batch_first <= lsn`).
    pub batch_first: Lsn,
    /// Commit time on the writing primary, microseconds since the Unix epoch.
    pub time_us: u64,
    /// What the transaction did, opaque to the log.
    pub payload: Vec<u8>,
}

impl Record {
    /// Its `(term, lsn)`.
    pub fn position(&self) -> Position {
        Position::new(self.term, self.lsn)
    }

    /// Size of its frame in bytes.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER + BODY_HEADER + self.payload.len()
    }

    /// Appends its frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), LogError> {
        let body_len = BODY_HEADER + self.payload.len();
        if body_len > MAX_BODY {
            return Err(LogError::TooLarge(body_len));
        }
        if self.lsn > MAX_LSN {
            return Err(LogError::LsnOutOfRange(self.lsn));
        }
        let start = out.len();
        out.reserve(FRAME_HEADER + body_len);
        out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(RECORD_VERSION);
        out.push(0);
        out.extend_from_slice(&self.term.0.to_le_bytes());
        out.extend_from_slice(&self.lsn.0.to_le_bytes());
        out.extend_from_slice(&self.batch_first.0.to_le_bytes());
        out.extend_from_slice(&self.time_us.to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&out[start + 4..start + 8]),
            &out[start + FRAME_HEADER..],
        );
        out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Encodes its frame.
    pub fn encode(&self) -> Result<Vec<u8>, LogError> {
        let mut v = Vec::with_capacity(self.frame_len());
        self.encode_into(&mut v)?;
        Ok(v)
    }
}

/// Why bytes do not form a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: a torn write, or more data still to come.
    Short {
        /// Bytes the whole frame needs.
        needed: usize,
    },
    /// The bytes are there but are not a valid frame.
    Invalid(String),
}

/// Decodes the frame at the start of `buf`, returning the record and the frame's length.
pub fn decode_frame(buf: &[u8]) -> Result<(Record, usize), FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(FrameError::Short {
            needed: FRAME_HEADER,
        });
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if magic != FRAME_MAGIC {
        return Err(FrameError::Invalid(format!(
            "bad frame magic {magic:#010x}"
        )));
    }
    let body_len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if !(BODY_HEADER..=MAX_BODY).contains(&body_len) {
        return Err(FrameError::Invalid(format!(
            "impossible body length {body_len}"
        )));
    }
    let total = FRAME_HEADER + body_len;
    if buf.len() < total {
        return Err(FrameError::Short { needed: total });
    }
    let stored = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let body = &buf[FRAME_HEADER..total];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[4..8]), body);
    if crc != stored {
        return Err(FrameError::Invalid(format!(
            "checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
        )));
    }
    let version = body[0];
    if version != RECORD_VERSION {
        return Err(FrameError::Invalid(format!(
            "unknown record version {version}"
        )));
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    let record = Record {
        term: Term(u64_at(2)),
        lsn: Lsn(u64_at(10)),
        batch_first: Lsn(u64_at(18)),
        time_us: u64_at(26),
        payload: body[BODY_HEADER..].to_vec(),
    };
    if record.lsn > MAX_LSN {
        return Err(FrameError::Invalid(format!(
            "record lsn {} is past the largest possible lsn {MAX_LSN}",
            record.lsn
        )));
    }
    if record.batch_first > record.lsn {
        return Err(FrameError::Invalid(format!(
            "batch start {} after the record's own lsn {}",
            record.batch_first, record.lsn
        )));
    }
    Ok((record, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record {
            term: Term(2),
            lsn: Lsn(7),
            batch_first: Lsn(5),
            time_us: 99,
            payload: b"hello".to_vec(),
        }
    }

    #[test]
    fn frame_round_trips() {
        let r = sample();
        let bytes = r.encode().unwrap();
        assert_eq!(bytes.len(), r.frame_len());
        assert_eq!(decode_frame(&bytes).unwrap(), (r, bytes.len()));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample().encode().unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode_frame(&b).is_err(), "bit {i} flip not detected");
        }
    }

    #[test]
    fn every_prefix_is_short() {
        let bytes = sample().encode().unwrap();
        for n in 0..bytes.len() {
            assert!(
                matches!(decode_frame(&bytes[..n]), Err(FrameError::Short { .. })),
                "prefix {n}"
            );
        }
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn any_record_round_trips(term in any::<u64>(), lsn in 1u64..=MAX_LSN.0, back in 0u64..1000, time in any::<u64>(),
                                  payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let r = Record { term: Term(term), lsn: Lsn(lsn), batch_first: Lsn(lsn.saturating_sub(back)), time_us: time, payload };
            let bytes = r.encode().unwrap();
            prop_assert_eq!(decode_frame(&bytes).unwrap(), (r, bytes.len()));
        }
    }
}
