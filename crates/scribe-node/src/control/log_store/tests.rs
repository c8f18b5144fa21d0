//! The log file on real disk: entries survive a reopen, a conflicting suffix is cut, a purge
//! keeps what follows, a torn tail is cut at start-up, and the vote survives a reopen.

use openraft::storage::RaftLogStorage;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use scribe_core::{ControlCommand, Term};

use super::*;
use crate::control::types::Proposal;

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal {
            command: ControlCommand::RenewLease {
                holder: "n1".into(),
                term: Term(term),
            },
            at_unix_ms: index,
        }),
    }
}

fn indexes(log: &LogFile) -> Vec<u64> {
    log.entries.keys().copied().collect()
}

#[test]
fn entries_survive_a_reopen_and_a_conflicting_suffix_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut log = LogFile::open(&path).unwrap();
    log.append((0..5).map(|i| entry(1, i)).collect()).unwrap();
    log.truncate(3).unwrap();
    log.append(vec![entry(2, 3)]).unwrap();
    drop(log);
    let log = LogFile::open(&path).unwrap();
    assert_eq!(indexes(&log), vec![0, 1, 2, 3]);
    assert_eq!(log.entries[&3].log_id.leader_id.term, 2);
    assert_eq!(log.last_log_id().map(|l| l.index), Some(3));
}

#[test]
fn a_purge_keeps_the_entries_after_it_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut log = LogFile::open(&path).unwrap();
    log.append((0..10).map(|i| entry(1, i)).collect()).unwrap();
    log.purge(entry(1, 6).log_id).unwrap();
    assert_eq!(indexes(&log), vec![7, 8, 9]);
    log.append(vec![entry(1, 10)]).unwrap();
    drop(log);
    let log = LogFile::open(&path).unwrap();
    assert_eq!(indexes(&log), vec![7, 8, 9, 10]);
    assert_eq!(log.last_purged.map(|l| l.index), Some(6));
    let mut empty = log;
    empty.purge(entry(1, 10).log_id).unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!(
        empty.last_log_id().map(|l| l.index),
        Some(10),
        "the purged id is the last"
    );
}

#[test]
fn a_torn_tail_is_cut_at_start_up_and_appends_go_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut log = LogFile::open(&path).unwrap();
    log.append((0..3).map(|i| entry(1, i)).collect()).unwrap();
    drop(log);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let mut log = LogFile::open(&path).unwrap();
    assert_eq!(indexes(&log), vec![0, 1]);
    log.append(vec![entry(1, 2)]).unwrap();
    drop(log);
    assert_eq!(indexes(&LogFile::open(&path).unwrap()), vec![0, 1, 2]);
}

#[test]
fn damage_inside_the_log_is_refused_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut log = LogFile::open(&path).unwrap();
    log.append((0..6).map(|i| entry(1, i)).collect()).unwrap();
    let middle = log.offsets[&2] as usize + 12;
    drop(log);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let e = LogFile::open(&path)
        .err()
        .expect("a damaged middle must not open");
    assert!(e.to_string().contains("intact entries follow"), "{e}");
    // Nothing was cut: the file is as it was.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn another_file_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    files::write_atomic(&path, FileKind::Vote, b"{}", true).unwrap();
    let e = LogFile::open(&path).err().unwrap();
    assert!(e.to_string().contains("expected Log"), "{e}");
}

#[tokio::test]
async fn the_vote_and_the_log_reader_see_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), None);
    let vote = Vote::new(3, 2);
    store.save_vote(&vote).await.unwrap();
    store
        .shared
        .log()
        .append((0..4).map(|i| entry(1, i)).collect())
        .unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    let got = store.try_get_log_entries(1..3).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
}

#[tokio::test]
async fn the_committed_hint_is_kept_only_while_the_log_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path()).unwrap();
    store
        .shared
        .log()
        .append((0..4).map(|i| entry(1, i)).collect())
        .unwrap();
    store
        .save_committed(Some(entry(1, 2).log_id))
        .await
        .unwrap();
    drop(store);
    let mut store = LogStore::open(dir.path()).unwrap();
    assert_eq!(
        store.read_committed().await.unwrap(),
        Some(entry(1, 2).log_id)
    );
    // A hint naming an entry this log does not hold (another term at that index) is ignored.
    store
        .save_committed(Some(entry(2, 3).log_id))
        .await
        .unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
    store
        .save_committed(Some(entry(1, 9).log_id))
        .await
        .unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
}
