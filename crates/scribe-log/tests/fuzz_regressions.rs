//! Inputs the fuzzer (`crates/scribe-fuzz`) found to crash the log's decoders or recovery, kept
//! as regression tests. Each is also in the fuzzer's corpus.

use scribe_core::{Lsn, Term};
use scribe_log::record::{decode_frame, FrameError, MAX_LSN};
use scribe_log::segment::{self, SEGMENT_HEADER};
use scribe_log::{Log, LogError, LogOptions, Record};

/// A segment named and headed `u64::MAX` holding one record at LSN `u64::MAX`: recovery computed
/// the next LSN and overflowed (a panic in a debug build; in a release build a wrap to LSN 0).
/// It is corruption, and start-up must say so.
const LSN_MAX_SEGMENT: &[u8] = include_bytes!("fuzz/lsn_max.seg");

#[test]
fn a_segment_at_the_largest_u64_lsn_is_corruption_not_an_overflow() {
    assert!(segment::decode_header(LSN_MAX_SEGMENT)
        .unwrap_err()
        .contains("past the largest possible lsn"));
    match decode_frame(&LSN_MAX_SEGMENT[SEGMENT_HEADER..]) {
        Err(FrameError::Invalid(why)) => assert!(why.contains("past the largest"), "{why}"),
        other => panic!("a record at lsn u64::MAX decoded as {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(segment::segment_name(Lsn(u64::MAX))),
        LSN_MAX_SEGMENT,
    )
    .unwrap();
    match Log::open(dir.path(), LogOptions::default()) {
        Err(LogError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, 0);
            assert!(reason.contains("past the largest possible lsn"), "{reason}");
        }
        other => panic!("opening the log gave {other:?}"),
    }
}

#[test]
fn the_largest_lsn_is_still_written_read_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = segment::encode_header(MAX_LSN).to_vec();
    let record = Record {
        term: Term(1),
        lsn: MAX_LSN,
        batch_first: MAX_LSN,
        time_us: 1,
        payload: b"last".to_vec(),
    };
    record.encode_into(&mut bytes).unwrap();
    std::fs::write(dir.path().join(segment::segment_name(MAX_LSN)), &bytes).unwrap();
    let (log, recovery) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(recovery.last.lsn, MAX_LSN);
    let read: Vec<Record> = log
        .read_from(MAX_LSN)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(read, vec![record.clone()]);
    let past = Record {
        lsn: MAX_LSN.next(),
        ..record
    };
    assert!(matches!(past.encode(), Err(LogError::LsnOutOfRange(_))));
}
