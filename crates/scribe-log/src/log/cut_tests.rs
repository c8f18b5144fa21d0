//! Tests of the term history and of cutting the log's tail, against real files: what survives a
//! reopen, retention and torn tails, damaged history files, cuts at every position, refusals,
//! and crashes part way through a cut.

use std::os::unix::fs::MetadataExt;

use super::*;
use crate::terms::TERMS_FILE;

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions { segment_bytes }
}

fn payload(lsn: u64) -> Vec<u8> {
    format!("payload of record {lsn}").into_bytes()
}

/// Appends one synced batch of `n` records in `term`.
fn batch(log: &mut Log, term: u64, n: u64) {
    for _ in 0..n {
        let lsn = log.last_position().lsn.next().0;
        log.append(Term(term), 0, payload(lsn)).unwrap();
    }
    log.sync().unwrap();
}

fn lsns(log: &Log, from: u64) -> Vec<u64> {
    log.read_from(Lsn(from))
        .unwrap()
        .map(|r| r.unwrap().lsn.0)
        .collect()
}

fn history(entries: &[(u64, u64)]) -> Vec<(Term, Lsn)> {
    entries.iter().map(|&(t, l)| (Term(t), Lsn(l))).collect()
}

fn terms_inode(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(TERMS_FILE)).unwrap().ino()
}

/// A log of terms 1 (lsn 1..=10), 2 (11..=15) and 4 (16..=30), in small segments.
fn three_terms(dir: &Path) -> Log {
    let (mut log, _) = Log::open(dir, opts(400)).unwrap();
    for _ in 0..5 {
        batch(&mut log, 1, 2);
    }
    batch(&mut log, 2, 5);
    for _ in 0..5 {
        batch(&mut log, 4, 3);
    }
    log
}

#[test]
fn a_history_across_terms_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = three_terms(dir.path());
    let want = history(&[(1, 1), (2, 11), (4, 16)]);
    assert_eq!(log.term_history(), want.as_slice());
    drop(log);
    let (log, _) = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!(log.term_history(), want.as_slice());
    // Without the file it is rebuilt from the segments, which still hold every record.
    drop(log);
    std::fs::remove_file(dir.path().join(TERMS_FILE)).unwrap();
    let (log, _) = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!(log.term_history(), want.as_slice());
}

#[test]
fn the_history_file_is_rewritten_only_by_batches_that_start_a_term() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    batch(&mut log, 1, 3);
    let ino = terms_inode(dir.path());
    batch(&mut log, 1, 3);
    batch(&mut log, 1, 1);
    assert_eq!(terms_inode(dir.path()), ino, "same term: file untouched");
    batch(&mut log, 2, 2);
    assert_ne!(terms_inode(dir.path()), ino, "a new term replaces the file");
    // A batch that starts a term but is discarded leaves the history as it was.
    log.append(Term(3), 0, payload(10)).unwrap();
    assert_eq!(
        log.term_history(),
        history(&[(1, 1), (2, 8), (3, 10)]).as_slice()
    );
    log.discard_pending();
    assert_eq!(log.term_history(), history(&[(1, 1), (2, 8)]).as_slice());
}

#[test]
fn the_history_outlives_the_segments_retention_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = three_terms(dir.path());
    let want = history(&[(1, 1), (2, 11), (4, 16)]);
    assert!(log.delete_before(Lsn(28)).unwrap() > 0);
    assert!(
        log.first_lsn() > Lsn(16),
        "terms 1 and 2 are gone from the segments"
    );
    assert_eq!(log.term_history(), want.as_slice());
    drop(log);
    let (mut log, _) = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!(log.term_history(), want.as_slice());
    batch(&mut log, 5, 1);
    drop(log);
    let (log, _) = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!(
        log.term_history(),
        history(&[(1, 1), (2, 11), (4, 16), (5, 31)]).as_slice()
    );
}

#[test]
fn a_torn_tail_that_removes_a_terms_first_record_removes_the_term() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    batch(&mut log, 1, 4);
    batch(&mut log, 2, 3);
    assert_eq!(log.term_history(), history(&[(1, 1), (2, 5)]).as_slice());
    // A crash tore term 2's only batch: its file entry was durable, its records were not.
    std::mem::forget(log);
    let seg = segment::list_segments(dir.path()).unwrap().pop().unwrap().1;
    let bytes = std::fs::read(&seg).unwrap();
    let scan = segment::scan(&bytes, &seg).unwrap();
    let four: u64 = scan.records[..4].iter().map(|r| r.frame_len() as u64).sum();
    let cut = SEGMENT_HEADER as u64 + four + 10;
    std::fs::write(&seg, &bytes[..cut as usize]).unwrap();
    let (mut log, rec) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert!(rec.torn.is_some());
    assert_eq!(rec.last, Position::new(Term(1), Lsn(4)));
    assert_eq!(log.term_history(), history(&[(1, 1)]).as_slice());
    // The file was corrected too, and the term can start again at the same LSN.
    batch(&mut log, 2, 1);
    drop(log);
    let (log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.term_history(), history(&[(1, 1), (2, 5)]).as_slice());
}

#[test]
fn a_term_missing_from_the_file_is_added_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = three_terms(dir.path());
    log.delete_before(Lsn(12)).unwrap();
    drop(log);
    // The file as it was before term 4 (as if its rewrite had been lost).
    Terms::from_entries(history(&[(1, 1), (2, 11)]))
        .unwrap()
        .store(dir.path())
        .unwrap();
    let (log, _) = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!(
        log.term_history(),
        history(&[(1, 1), (2, 11), (4, 16)]).as_slice()
    );
}

#[test]
fn a_damaged_history_file_is_refused_naming_it_unless_the_segments_hold_every_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = three_terms(dir.path());
    let file = dir.path().join(TERMS_FILE);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    bad[20] ^= 0x04;
    // The segments start at lsn 1: the file is rebuilt from them.
    drop(log);
    std::fs::write(&file, &bad).unwrap();
    let (mut log2, _) = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!(
        log2.term_history(),
        history(&[(1, 1), (2, 11), (4, 16)]).as_slice()
    );
    assert_eq!(std::fs::read(&file).unwrap(), good);
    // Once the first terms' segments are deleted, nothing could rebuild them: open stops.
    log2.delete_before(Lsn(20)).unwrap();
    drop(log2);
    std::fs::write(&file, &bad).unwrap();
    let err = Log::open(dir.path(), opts(400)).unwrap_err();
    assert!(matches!(err, LogError::CorruptTerms { .. }), "{err:?}");
    assert!(err.is_fatal());
    let msg = err.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
    assert_eq!(std::fs::read(&file).unwrap(), bad, "left as found");
    // A file of another kind is refused the same way.
    std::fs::write(&file, b"not a history").unwrap();
    let err = Log::open(dir.path(), opts(400)).unwrap_err();
    assert!(matches!(err, LogError::CorruptTerms { .. }), "{err:?}");
    std::fs::write(&file, &good).unwrap();
    log = Log::open(dir.path(), opts(400)).unwrap().0;
    assert_eq!(log.last_position(), Position::new(Term(4), Lsn(30)));
}

#[test]
fn a_cut_at_every_position_ends_the_log_there_and_survives_reopen() {
    let template = tempfile::tempdir().unwrap();
    drop(three_terms(template.path()));
    for at in 0..=30u64 {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(template.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let (mut log, _) = Log::open(dir.path(), opts(400)).unwrap();
        let segments = log.segment_count();
        assert_eq!(log.truncate_after(Lsn(at)).unwrap(), 30 - at, "cut at {at}");
        let term = match at {
            0 => 0,
            1..=10 => 1,
            11..=15 => 2,
            _ => 4,
        };
        let want_history: Vec<_> = history(&[(1, 1), (2, 11), (4, 16)])
            .into_iter()
            .filter(|e| e.1 .0 <= at)
            .collect();
        let check = |log: &Log| {
            assert_eq!(log.last_position(), Position::new(Term(term), Lsn(at)));
            assert_eq!(log.durable_position(), log.last_position());
            assert_eq!(lsns(log, 1), (1..=at).collect::<Vec<_>>(), "cut at {at}");
            assert_eq!(log.term_history(), want_history.as_slice(), "cut at {at}");
        };
        check(&log);
        assert!(log.segment_count() <= segments);
        drop(log);
        let (mut log, rec) = Log::open(dir.path(), opts(400)).unwrap();
        assert_eq!(rec.torn, None);
        check(&log);
        // The next record follows the cut, in a newer term.
        batch(&mut log, 7, 2);
        drop(log);
        let (log, _) = Log::open(dir.path(), opts(400)).unwrap();
        assert_eq!(log.last_position(), Position::new(Term(7), Lsn(at + 2)));
        assert_eq!(lsns(&log, 1), (1..=at + 2).collect::<Vec<_>>());
        let mut h = want_history.clone();
        h.push((Term(7), Lsn(at + 1)));
        assert_eq!(log.term_history(), h.as_slice());
    }
}

#[test]
fn a_cut_inside_the_padded_active_segment_leaves_no_padding_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path(), LogOptions::default()).unwrap();
    batch(&mut log, 1, 5);
    batch(&mut log, 2, 5);
    let seg = segment::list_segments(dir.path()).unwrap().pop().unwrap().1;
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), PREALLOCATE_BYTES);
    log.truncate_after(Lsn(3)).unwrap();
    let size = log.segment_sizes()[0].1;
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), size);
    batch(&mut log, 3, 2);
    assert_eq!(lsns(&log, 1), vec![1, 2, 3, 4, 5]);
    // A crash (nothing tidied, padding left) recovers exactly those records.
    std::mem::forget(log);
    let (log, rec) = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(rec.torn, None);
    assert_eq!(rec.last, Position::new(Term(3), Lsn(5)));
    let payloads: Vec<_> = log
        .read_from(Lsn(1))
        .unwrap()
        .map(|r| r.unwrap().payload)
        .collect();
    assert_eq!(payloads, (1..=5).map(payload).collect::<Vec<_>>());
    assert_eq!(log.term_history(), history(&[(1, 1), (3, 4)]).as_slice());
}

#[test]
fn cuts_below_the_start_past_the_end_or_over_pending_records_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = three_terms(dir.path());
    log.delete_before(Lsn(20)).unwrap();
    let first = log.first_lsn();
    let before = (
        log.segment_sizes(),
        log.last_position(),
        log.term_history().to_vec(),
    );
    let err = log.truncate_after(first.prev().prev()).unwrap_err();
    assert!(matches!(err, LogError::CutBelowStart { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("oldest record is lsn {first}")),
        "{err}"
    );
    assert!(!err.is_fatal());
    let err = log.truncate_after(Lsn(31)).unwrap_err();
    assert!(matches!(err, LogError::CutPastEnd { .. }), "{err:?}");
    log.append(Term(4), 0, payload(31)).unwrap();
    let err = log.truncate_after(Lsn(25)).unwrap_err();
    assert!(
        matches!(err, LogError::CutPending { records: 1 }),
        "{err:?}"
    );
    log.discard_pending();
    assert_eq!(log.truncate_after(Lsn(30)).unwrap(), 0);
    assert_eq!(
        (
            log.segment_sizes(),
            log.last_position(),
            log.term_history().to_vec()
        ),
        before
    );
    // Down to the base: every held record goes, the history before it stays.
    log.truncate_after(first.prev()).unwrap();
    let base_term = log
        .term_history()
        .iter()
        .rev()
        .find(|e| e.1 <= first.prev())
        .unwrap()
        .0;
    assert!(base_term > Term(1));
    assert_eq!(log.last_position(), Position::new(base_term, first.prev()));
    assert!(lsns(&log, first.0).is_empty());
    let kept: Vec<_> = before
        .2
        .into_iter()
        .filter(|e| e.1 <= first.prev())
        .collect();
    assert_eq!(log.term_history(), kept.as_slice());
}

#[test]
fn a_crash_part_way_through_a_cut_recovers_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let log = three_terms(dir.path());
    let old_terms = std::fs::read(dir.path().join(TERMS_FILE)).unwrap();
    drop(log);
    let segments = segment::list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 4);
    // The newest segments went (newest first); the crash came before the rest of the cut.
    for (_, path) in segments.iter().rev().take(2) {
        std::fs::remove_file(path).unwrap();
    }
    let (mut log, rec) = Log::open(dir.path(), opts(400)).unwrap();
    let end = rec.last.lsn.0;
    assert!(end < 30);
    assert_eq!(lsns(&log, 1), (1..=end).collect::<Vec<_>>());
    // Finishing the cut then works; a history file left from before it loses its later terms.
    log.truncate_after(Lsn(12)).unwrap();
    drop(log);
    std::fs::write(dir.path().join(TERMS_FILE), &old_terms).unwrap();
    let (log, _) = Log::open(dir.path(), opts(400)).unwrap();
    assert_eq!(log.last_position(), Position::new(Term(2), Lsn(12)));
    assert_eq!(log.term_history(), history(&[(1, 1), (2, 11)]).as_slice());
}
