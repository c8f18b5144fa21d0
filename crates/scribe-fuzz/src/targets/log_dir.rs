//! Opening a log directory whose files are arbitrary bytes (`log_dir`): recovery must answer an
//! error or a log, never panic; the records a reader returns must be the ones recovery counted;
//! and opening the recovered directory again must find the same log with nothing left to cut.
//!
//! Input: a mode byte, then (mode bit 2) a `u16` length and that many bytes of term history file,
//! then (mode bit 3) a `u16` split point, then the segment bytes: one segment, or two split at
//! the split point. With mode bit 0 the target recomputes the checksums of each segment's header
//! and frames. Each segment is named after the first LSN its header gives, so that headers and
//! names agree unless the header is damaged.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use scribe_core::Lsn;
use scribe_log::record::MAX_LSN;
use scribe_log::segment::{self, SEGMENT_HEADER};
use scribe_log::{Log, LogOptions, Terms};

use super::log::{fix_frames, records};

thread_local! {
    static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// A scratch directory for this thread, in memory when the machine has `/dev/shm`.
fn scratch() -> PathBuf {
    DIR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            let shm = Path::new("/dev/shm");
            let made = if shm.is_dir() {
                tempfile::Builder::new()
                    .prefix("scribe-fuzz")
                    .tempdir_in(shm)
            } else {
                tempfile::Builder::new().prefix("scribe-fuzz").tempdir()
            };
            match made {
                Ok(t) => *d = Some(t),
                Err(e) => panic!("the fuzzer cannot make a scratch directory: {e}"),
            }
        }
        d.as_ref().map(|t| t.path().join("log")).unwrap_or_default()
    })
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(b.len());
    let (head, rest) = b.split_at(n);
    *b = rest;
    head
}

fn take_u16(b: &mut &[u8]) -> usize {
    let h = take(b, 2);
    usize::from(h.first().copied().unwrap_or(0)) | usize::from(h.get(1).copied().unwrap_or(0)) << 8
}

/// `log_dir`.
pub fn open(input: &[u8]) -> bool {
    let Some((&mode, mut rest)) = input.split_first() else {
        return false;
    };
    let terms = if mode & 4 == 4 {
        let n = take_u16(&mut rest);
        Some(take(&mut rest, n).to_vec())
    } else {
        None
    };
    let segments: Vec<Vec<u8>> = if mode & 8 == 8 {
        let k = take_u16(&mut rest) % (rest.len() + 1);
        vec![rest[..k].to_vec(), rest[k..].to_vec()]
    } else {
        vec![rest.to_vec()]
    };
    let dir = scratch();
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            panic!("the fuzzer cannot clear {}: {e}", dir.display());
        }
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("the fuzzer cannot make {}: {e}", dir.display());
    }
    for (i, mut seg) in segments.into_iter().enumerate() {
        if mode & 1 == 1 && seg.len() >= SEGMENT_HEADER {
            let crc = crc32c::crc32c(&seg[0..20]);
            seg[20..24].copy_from_slice(&crc.to_le_bytes());
            fix_frames(&mut seg, SEGMENT_HEADER);
        }
        let first = segment::decode_header(&seg).unwrap_or(Lsn(1 + 1000 * i as u64));
        write(&dir.join(segment::segment_name(first)), &seg);
    }
    if let Some(t) = terms {
        write(&Terms::path(&dir), &t);
    }

    let (log, recovery) = match Log::open(&dir, LogOptions::default()) {
        Ok(opened) => opened,
        Err(_) => return false,
    };
    assert_eq!(log.last_position(), recovery.last);
    if recovery.records > 0 {
        let reader = match log.read_from(recovery.first_lsn) {
            Ok(r) => r,
            Err(e) => panic!("a recovered log cannot be read from its first lsn: {e}"),
        };
        let mut n = 0u64;
        let mut prev: Option<Lsn> = None;
        for r in reader {
            let r = match r {
                Ok(r) => r,
                Err(e) => panic!("a recovered log's record does not read: {e}"),
            };
            if let Some(p) = prev {
                assert_eq!(r.lsn.0, p.0.wrapping_add(1), "the reader skipped a record");
            }
            prev = Some(r.lsn);
            n += 1;
        }
        assert_eq!(
            n, recovery.records,
            "the reader returns other records than recovery found"
        );
        assert_eq!(prev.map(|l| l.0), Some(recovery.last.lsn.0));
    }
    drop(log);
    match Log::open(&dir, LogOptions::default()) {
        Ok((_, again)) => {
            assert_eq!(
                again.last, recovery.last,
                "a second open finds another last record"
            );
            assert_eq!(again.records, recovery.records);
            assert_eq!(again.torn, None, "a second open cuts again");
        }
        Err(e) => panic!("a log that opened once does not open again: {e}"),
    }
    true
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("the fuzzer cannot write {}: {e}", path.display());
    }
}

/// Seeds for `log_dir`: whole logs written by the real encoders, some damaged.
pub fn seeds() -> Vec<Vec<u8>> {
    let seg = |first: u64, n: u64| {
        let mut s = segment::encode_header(Lsn(first)).to_vec();
        for r in records(first, n) {
            if r.encode_into(&mut s).is_err() {
                panic!("a seed record does not encode");
            }
        }
        s
    };
    let one = seg(1, 6);
    let two = seg(7, 3);
    let history = Terms::from_entries(vec![
        (scribe_core::Term(1), Lsn(1)),
        (scribe_core::Term(2), Lsn(4)),
    ])
    .map(|t| t.encode())
    .unwrap_or_default();
    let with_terms = |segs: &[u8]| {
        let mut v = vec![0b101u8];
        v.extend_from_slice(&(history.len() as u16).to_le_bytes());
        v.extend_from_slice(&history);
        v.extend_from_slice(segs);
        v
    };
    let split = |a: &[u8], b: &[u8]| {
        let mut v = vec![0b1001u8];
        v.extend_from_slice(&(a.len() as u16).to_le_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        v
    };
    vec![
        [&[0u8][..], &one].concat(),
        [&[1u8][..], &one[..one.len() - 5]].concat(),
        [&[1u8][..], &one, &[0u8; 100][..]].concat(),
        [&[0u8][..], &segment::encode_header(Lsn(1))].concat(),
        [&[0u8][..], &segment::encode_header(Lsn(50))].concat(),
        with_terms(&one),
        split(&one, &two),
        split(&seg(1, 2), &seg(3, 2)),
        // A gap between segments; a segment that overlaps the one before.
        split(&seg(1, 2), &seg(5, 2)),
        split(&seg(1, 3), &seg(3, 2)),
        // A damaged record in the middle of the only segment.
        {
            let mut v = [&[0u8][..], &one].concat();
            let at = 1 + SEGMENT_HEADER + 40;
            v[at] ^= 0x10;
            v
        },
        // A term history that disagrees with the segments.
        {
            let bad = Terms::from_entries(vec![(scribe_core::Term(5), Lsn(1))])
                .map(|t| t.encode())
                .unwrap_or_default();
            let mut v = vec![0b100u8];
            v.extend_from_slice(&(bad.len() as u16).to_le_bytes());
            v.extend_from_slice(&bad);
            v.extend_from_slice(&one);
            v
        },
        // At the edge of the LSN range: the last two LSNs a log may hold.
        [&[0u8][..], &seg(MAX_LSN.0 - 1, 2)].concat(),
        vec![0u8],
    ]
}
