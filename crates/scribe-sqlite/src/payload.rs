//! The payload of a change-log record: what one transaction did, as an ordered list of steps.
//!
//! ```text
//! payload := version u8 (=1) | step_count u32 | step*
//! step    := kind u8 (1 = changeset, 2 = DDL as SQL text, 3 = multi-master record) | len u32 | bytes
//! ```
//!
//! Row changes travel as session-extension changesets and are replayed at the storage level;
//! statements that change the schema travel as their SQL text (see DESIGN.md §2).

use crate::EngineError;

const PAYLOAD_VERSION: u8 = 1;
const KIND_CHANGESET: u8 = 1;
const KIND_SQL: u8 = 2;
const KIND_MULTI_MASTER: u8 = 3;

/// One step of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Row changes, as a session-extension changeset.
    Changeset(Vec<u8>),
    /// A schema change, as SQL text to run again.
    Sql(String),
    /// A multi-master node's whole transaction, as [`crate::mm::Record`] encodes it.
    MultiMaster(Vec<u8>),
}

/// Encodes the steps of one transaction.
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let size = 5 + steps.iter().map(|s| 5 + step_bytes(s).len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(PAYLOAD_VERSION);
    out.extend_from_slice(&(steps.len() as u32).to_le_bytes());
    for s in steps {
        out.push(match s {
            Step::Changeset(_) => KIND_CHANGESET,
            Step::Sql(_) => KIND_SQL,
            Step::MultiMaster(_) => KIND_MULTI_MASTER,
        });
        let b = step_bytes(s);
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// How many bytes the steps hold (what a transaction has captured so far).
pub(crate) fn steps_bytes(steps: &[Step]) -> u64 {
    steps.iter().map(|s| step_bytes(s).len() as u64).sum()
}

fn step_bytes(s: &Step) -> &[u8] {
    match s {
        Step::Changeset(b) | Step::MultiMaster(b) => b,
        Step::Sql(t) => t.as_bytes(),
    }
}

/// Decodes a payload written by [`encode`].
pub fn decode(mut b: &[u8]) -> Result<Vec<Step>, EngineError> {
    let bad = |why: &str| EngineError::Corrupt(format!("record payload: {why}"));
    let (&version, rest) = b.split_first().ok_or_else(|| bad("empty"))?;
    if version != PAYLOAD_VERSION {
        return Err(bad(&format!("unknown payload version {version}")));
    }
    b = rest;
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, EngineError> {
        if b.len() < n {
            return Err(bad("truncated"));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head.to_vec())
    };
    let count = u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4 bytes"));
    let mut steps = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let kind = take(&mut b, 1)?[0];
        let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().expect("4 bytes")) as usize;
        let bytes = take(&mut b, len)?;
        steps.push(match kind {
            KIND_CHANGESET => Step::Changeset(bytes),
            KIND_SQL => {
                Step::Sql(String::from_utf8(bytes).map_err(|_| bad("DDL text is not UTF-8"))?)
            }
            KIND_MULTI_MASTER => Step::MultiMaster(bytes),
            k => return Err(bad(&format!("unknown step kind {k}"))),
        });
    }
    if !b.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip() {
        let steps = vec![
            Step::Changeset(vec![1, 2, 3]),
            Step::Sql("CREATE TABLE t(x)".into()),
            Step::Changeset(vec![]),
            Step::MultiMaster(vec![7, 8]),
        ];
        assert_eq!(decode(&encode(&steps)).unwrap(), steps);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let good = encode(&[Step::Sql("x".into())]);
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err());
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut kind = good;
        kind[5] = 9;
        assert!(decode(&kind).is_err());
    }
}
