//! Tests of the log against real files: round trips, rotation, deletion, and recovery from torn
//! tails and corruption.

use super::*;

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes }
}

fn payload(i: u64) -> Vec<u8> {
    format!("payload of record {i}").into_bytes()
}

/// Writes `batches` batches of `per_batch` records and returns the log's directory.
fn write_batches(dir: &Path, segment_bytes: u64, batches: u64, per_batch: u64) -> Log {
    let (mut log, _) = Log::open(dir, opts(segment_bytes)).unwrap();
    for b in 0..batches {
        for i in 0..per_batch {
            log.append(Term(1), 0, payload(b * per_batch + i + 1))
                .unwrap();
        }
        log.sync().unwrap();
    }
    log
}

fn read_all(log: &Log) -> Vec<Record> {
    log.read_from(Lsn(1))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn last_segment(dir: &Path) -> PathBuf {
    segment::list_segments(dir).unwrap().pop().unwrap().1
}

#[test]
fn records_survive_reopen_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = write_batches(dir.path(), 1 << 20, 5, 10);
    assert_eq!(log.durable_position(), Position::new(Term(1), Lsn(50)));
    drop(log);
    let (log, rec) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.last, Position::new(Term(1), Lsn(50)));
    assert_eq!(rec.records, 50);
    assert_eq!(rec.torn, None);
    let all = read_all(&log);
    assert_eq!(all.len(), 50);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.lsn, Lsn(i as u64 + 1));
        assert_eq!(r.payload, payload(i as u64 + 1));
    }
    let tail: Vec<_> = log
        .read_from(Lsn(48))
        .unwrap()
        .map(|r| r.unwrap().lsn.0)
        .collect();
    assert_eq!(tail, vec![48, 49, 50]);
}

#[test]
fn unsynced_records_are_not_read_and_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = write_batches(dir.path(), 1 << 20, 1, 3);
    log.append(Term(1), 0, payload(4)).unwrap();
    assert_eq!(log.last_position().lsn, Lsn(4));
    assert_eq!(read_all(&log).len(), 3);
    drop(log);
    let (log, rec) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.last.lsn, Lsn(3));
    assert_eq!(log.last_position().lsn, Lsn(3));
}

#[test]
fn segments_rotate_and_old_ones_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = write_batches(dir.path(), 300, 20, 3);
    assert!(
        log.segment_count() > 5,
        "only {} segments",
        log.segment_count()
    );
    assert_eq!(read_all(&log).len(), 60);
    let before = log.segment_count();
    let deleted = log.delete_before(Lsn(31)).unwrap();
    assert!(deleted > 0);
    assert_eq!(log.segment_count(), before - deleted);
    assert!(log.first_lsn() <= Lsn(31));
    let rest: Vec<_> = log
        .read_from(Lsn(31))
        .unwrap()
        .map(|r| r.unwrap().lsn.0)
        .collect();
    assert_eq!(rest, (31..=60).collect::<Vec<_>>());
    assert!(matches!(
        log.read_from(Lsn(1)),
        Err(LogError::Truncated { .. })
    ));
    drop(log);
    let (log, rec) = Log::open(dir.path(), opts(300)).unwrap();
    assert_eq!(rec.last.lsn, Lsn(60));
    assert_eq!(log.first_lsn(), rec.first_lsn);
}

#[test]
fn truncated_last_segment_recovers_to_last_whole_record_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    drop(write_batches(dir.path(), 1 << 20, 4, 5));
    let seg = last_segment(dir.path());
    let full = std::fs::read(&seg).unwrap();
    // Frame end offsets, to know how many records are whole at each cut.
    let scan = segment::scan(&full, &seg).unwrap();
    let mut ends = vec![];
    let mut off = SEGMENT_HEADER as u64;
    for r in &scan.records {
        off += r.frame_len() as u64;
        ends.push(off);
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let mut cuts: Vec<u64> = (0..40)
        .map(|_| rng.u64(SEGMENT_HEADER as u64..full.len() as u64))
        .collect();
    cuts.extend([
        SEGMENT_HEADER as u64,
        full.len() as u64 - 1,
        ends[0],
        ends[0] + 1,
    ]);
    for cut in cuts {
        std::fs::write(&seg, &full[..cut as usize]).unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
        let (log, rec) = Log::open(dir.path(), LogOptions::default()).unwrap();
        assert_eq!(rec.last.lsn, Lsn(whole), "cut at {cut}");
        assert_eq!(read_all(&log).len() as u64, whole);
        if ends.contains(&cut) || cut == SEGMENT_HEADER as u64 {
            assert_eq!(rec.torn, None, "cut at a frame boundary is no tear");
        } else {
            assert_eq!(
                rec.torn.as_ref().unwrap().1,
                ends.iter()
                    .rev()
                    .find(|&&e| e <= cut)
                    .copied()
                    .unwrap_or(SEGMENT_HEADER as u64)
            );
        }
        drop(log);
        // The log keeps working after recovery.
        let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
        log.append(Term(1), 0, payload(99)).unwrap();
        log.sync().unwrap();
        assert_eq!(read_all(&log).len() as u64, whole + 1);
    }
}

#[test]
fn a_flipped_byte_in_an_earlier_batch_stops_open_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    drop(write_batches(dir.path(), 1 << 20, 6, 5));
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let err = Log::open(dir.path(), LogOptions::default()).unwrap_err();
    let LogError::Corrupt {
        segment, offset, ..
    } = &err
    else {
        panic!("expected corruption, got {err}")
    };
    assert_eq!(segment, &seg);
    assert!(*offset <= mid as u64 && *offset >= SEGMENT_HEADER as u64);
    let msg = err.to_string();
    assert!(
        msg.contains(&seg.display().to_string()) && msg.contains(&format!("offset {offset}")),
        "{msg}"
    );
    assert!(err.is_fatal());
    // Nothing was cut: the file is as it was.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[test]
fn damage_in_a_sealed_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    drop(write_batches(dir.path(), 300, 10, 3));
    let first = segment::list_segments(dir.path()).unwrap()[0].1.clone();
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    std::fs::write(&first, &bytes).unwrap();
    assert!(matches!(
        Log::open(dir.path(), LogOptions::default()),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn a_torn_last_batch_with_later_pages_present_is_cut_not_refused() {
    // Power loss can persist a later page of the last batch but not an earlier one.
    let dir = tempfile::tempdir().unwrap();
    drop(write_batches(dir.path(), 1 << 20, 3, 10));
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let scan = segment::scan(&bytes, &seg).unwrap();
    let batch_start: u64 = SEGMENT_HEADER as u64
        + scan.records[..20]
            .iter()
            .map(|r| r.frame_len() as u64)
            .sum::<u64>();
    let hole = batch_start as usize + scan.records[20].frame_len() + 5;
    for b in &mut bytes[hole..hole + 40] {
        *b = 0;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let (log, rec) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.last.lsn, Lsn(21));
    assert!(rec.torn.is_some());
    assert_eq!(read_all(&log).len(), 21);
}

#[test]
fn fencing_refuses_older_terms_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.append(Term(2), 0, payload(1)).unwrap();
    assert!(matches!(
        log.append(Term(1), 0, payload(2)),
        Err(LogError::StaleTerm { .. })
    ));
    let rec = Record {
        term: Term(2),
        lsn: Lsn(5),
        batch_first: Lsn(5),
        time_us: 0,
        payload: vec![],
    };
    assert!(matches!(
        log.append_record(rec),
        Err(LogError::OutOfOrder {
            expected: Lsn(2),
            got: Lsn(5)
        })
    ));
    log.append(Term(3), 0, payload(2)).unwrap();
    log.sync().unwrap();
    assert_eq!(log.durable_position(), Position::new(Term(3), Lsn(2)));
}

#[test]
fn discarded_records_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = write_batches(dir.path(), 1 << 20, 1, 2);
    log.append(Term(1), 0, payload(3)).unwrap();
    log.discard_pending();
    assert_eq!(log.last_position().lsn, Lsn(2));
    log.append(Term(1), 0, payload(33)).unwrap();
    log.sync().unwrap();
    let all = read_all(&log);
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].payload, payload(33));
}

#[test]
fn a_tailing_reader_follows_appends_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = write_batches(dir.path(), 600, 1, 5);
    let mut reader = crate::reader::open_reader(dir.path(), Lsn(1), Lsn(5)).unwrap();
    let first: Vec<_> = reader.by_ref().map(|r| r.unwrap().lsn.0).collect();
    assert_eq!(first, vec![1, 2, 3, 4, 5]);
    // Many more batches, across several new segments, each read as it becomes durable.
    let mut seen = first;
    for b in 0..40u64 {
        for i in 0..3 {
            log.append(Term(1), 0, payload(100 + b * 3 + i)).unwrap();
        }
        log.sync().unwrap();
        reader.extend(log.durable_position().lsn).unwrap();
        seen.extend(reader.by_ref().map(|r| r.unwrap().lsn.0));
        assert_eq!(reader.next_lsn(), log.durable_position().lsn.next());
    }
    assert!(log.segment_count() > 3, "the test must cross rotations");
    assert_eq!(seen, (1..=125).collect::<Vec<_>>());
}

#[test]
fn reset_starts_an_empty_log_after_a_position_that_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = write_batches(dir.path(), 600, 4, 5);
    let at = Position::new(Term(3), Lsn(1000));
    log.reset_to(at).unwrap();
    assert_eq!(log.durable_position(), at);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.first_lsn(), Lsn(1001));
    assert!(matches!(
        log.append(Term(2), 0, payload(1)),
        Err(LogError::StaleTerm { .. })
    ));
    log.append(Term(3), 0, payload(1001)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, rec) = Log::open(dir.path(), opts(600)).unwrap();
    assert_eq!(rec.first_lsn, Lsn(1001));
    assert_eq!(rec.last, Position::new(Term(3), Lsn(1001)));
    let all: Vec<_> = log
        .read_from(Lsn(1001))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].payload, payload(1001));
    assert!(matches!(
        log.read_from(Lsn(999)),
        Err(LogError::Truncated { .. })
    ));
    // Reopened empty right after a reset, the log knows its base LSN but not its term until
    // told; then fencing holds from the first append.
    drop(log);
    let dir2 = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir2.path(), opts(600)).unwrap();
    log.reset_to(at).unwrap();
    drop(log);
    let (mut log, rec) = Log::open(dir2.path(), opts(600)).unwrap();
    assert_eq!(rec.last, Position::new(Term(0), Lsn(1000)));
    log.adopt_term(Term(3));
    assert_eq!(log.durable_position(), at);
    assert!(matches!(
        log.append(Term(2), 0, payload(1)),
        Err(LogError::StaleTerm { .. })
    ));
}
