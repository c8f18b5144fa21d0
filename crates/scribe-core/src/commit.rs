//! Commit modes and sync sets (DESIGN.md §3): what a primary waits for before it answers a
//! write, and which replicas count. Pure decision logic: the runtime feeds in each replica's
//! acknowledged positions and asks how far the sync set guarantees durability.
//!
//! - [`CommitMode`]: `async` (the primary's own flush), `semi-sync` (the quorum has the record
//!   flushed in its logs), `sync` (the quorum has applied it).
//! - [`SyncSet`]: `FIRST n (a, b, c)` — the first `n` connected members in priority order must
//!   answer — or `ANY n (a, b, c)` — any `n` members; `*` stands for every replica.

use std::fmt;
use std::str::FromStr;

use crate::Lsn;

/// What the primary waits for before answering a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CommitMode {
    /// The record is fsynced in the primary's own log.
    #[default]
    Async,
    /// The sync set's quorum has the record fsynced in their logs.
    SemiSync,
    /// The sync set's quorum has applied the record.
    Sync,
}

impl fmt::Display for CommitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommitMode::Async => "async",
            CommitMode::SemiSync => "semi-sync",
            CommitMode::Sync => "sync",
        })
    }
}

impl serde::Serialize for CommitMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CommitMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A commit mode or sync set that does not parse; the message says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseCommitError(pub String);

impl FromStr for CommitMode {
    type Err = ParseCommitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "async" => Ok(CommitMode::Async),
            "semi-sync" | "semisync" => Ok(CommitMode::SemiSync),
            "sync" => Ok(CommitMode::Sync),
            other => Err(ParseCommitError(format!(
                "unknown commit mode {other:?}: expected async, semi-sync or sync"
            ))),
        }
    }
}

/// How the members of a sync set count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quorum {
    /// The first `n` connected members, in the order listed.
    First,
    /// Any `n` members.
    Any,
}

/// Which replicas count for semi-sync and sync commits, and how many must answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SyncSet {
    /// How members count.
    pub quorum: Quorum,
    /// How many must answer (at least 1).
    pub n: usize,
    /// The members in priority order; `None` means every replica (`*`).
    pub members: Option<Vec<String>>,
}

impl fmt::Display for SyncSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = match self.quorum {
            Quorum::First => "FIRST",
            Quorum::Any => "ANY",
        };
        match &self.members {
            None => write!(f, "{q} {} (*)", self.n),
            Some(m) => write!(f, "{q} {} ({})", self.n, m.join(", ")),
        }
    }
}

impl FromStr for SyncSet {
    type Err = ParseCommitError;

    /// Parses `FIRST n (a, b)`, `ANY n (a, b)`, `n (a, b)` (FIRST, as in PostgreSQL), with `*`
    /// for every replica.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| {
            ParseCommitError(format!("invalid sync set {s:?}: {why}; expected for example \"FIRST 1 (n2, n3)\" or \"ANY 2 (*)\""))
        };
        let t = s.trim();
        let (head, list) = t
            .split_once('(')
            .ok_or_else(|| err("no member list in parentheses"))?;
        let list = list
            .trim_end()
            .strip_suffix(')')
            .ok_or_else(|| err("the member list is not closed with ')'"))?;
        let mut words = head.split_whitespace();
        let (quorum, n) = match (words.next(), words.next(), words.next()) {
            (Some(q), Some(n), None) if q.eq_ignore_ascii_case("first") => (Quorum::First, n),
            (Some(q), Some(n), None) if q.eq_ignore_ascii_case("any") => (Quorum::Any, n),
            (Some(n), None, None) => (Quorum::First, n),
            _ => return Err(err("it must start with FIRST n or ANY n")),
        };
        let n: usize = n.parse().map_err(|_| err("the count is not a number"))?;
        if n == 0 {
            return Err(err("the count must be at least 1"));
        }
        let names: Vec<String> = list.split(',').map(|m| m.trim().to_string()).collect();
        let members = if names.len() == 1 && names[0] == "*" {
            None
        } else {
            if names.iter().any(|m| m.is_empty() || m == "*") {
                return Err(err(
                    "members are node names separated by commas, or a lone *",
                ));
            }
            let mut seen = names.clone();
            seen.sort();
            seen.dedup();
            if seen.len() != names.len() {
                return Err(err("a member is listed twice"));
            }
            if n > names.len() {
                return Err(err("the count is larger than the member list"));
            }
            Some(names)
        };
        Ok(SyncSet { quorum, n, members })
    }
}

/// How far a sync set guarantees a commit level, and who stands behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumPosition {
    /// Every record up to this LSN has the level on the quorum.
    pub lsn: Lsn,
    /// The members whose acknowledgement makes up the quorum at `lsn`.
    pub acked_by: Vec<String>,
}

impl SyncSet {
    /// Whether the named replica is a member.
    pub fn contains(&self, name: &str) -> bool {
        self.members
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == name))
    }

    /// Given each connected replica's acknowledged LSN for one level (flushed for semi-sync,
    /// applied for sync), the highest LSN the set guarantees at that level. `Lsn::ZERO` with
    /// nobody when too few members are connected.
    pub fn quorum_position(&self, acks: &[(String, Lsn)]) -> QuorumPosition {
        let none = QuorumPosition {
            lsn: Lsn::ZERO,
            acked_by: Vec::new(),
        };
        // Members that are connected, in priority order.
        let mut candidates: Vec<(String, Lsn)> = match &self.members {
            Some(m) => m
                .iter()
                .filter_map(|name| acks.iter().find(|(a, _)| a == name).cloned())
                .collect(),
            None => {
                let mut all = acks.to_vec();
                all.sort_by(|a, b| a.0.cmp(&b.0));
                all
            }
        };
        if candidates.len() < self.n {
            return none;
        }
        let chosen: Vec<(String, Lsn)> = match self.quorum {
            Quorum::First => candidates.into_iter().take(self.n).collect(),
            Quorum::Any => {
                candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                candidates.into_iter().take(self.n).collect()
            }
        };
        let lsn = chosen.iter().map(|c| c.1).min().unwrap_or(Lsn::ZERO);
        let mut acked_by: Vec<String> = chosen.into_iter().map(|c| c.0).collect();
        acked_by.sort();
        QuorumPosition { lsn, acked_by }
    }
}

/// What a primary does when a semi-sync or sync commit is not confirmed within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnSyncTimeout {
    /// Answer with an error that says the transaction is committed on the primary but not
    /// confirmed replicated.
    #[default]
    Error,
    /// Answer success, reporting the durability actually reached and `degraded: true`.
    Degrade,
}

impl fmt::Display for OnSyncTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnSyncTimeout::Error => "error",
            OnSyncTimeout::Degrade => "degrade",
        })
    }
}

impl FromStr for OnSyncTimeout {
    type Err = ParseCommitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(OnSyncTimeout::Error),
            "degrade" => Ok(OnSyncTimeout::Degrade),
            other => Err(ParseCommitError(format!(
                "unknown sync timeout policy {other:?}: expected error or degrade"
            ))),
        }
    }
}

/// One connected replica's acknowledged positions, as the commit rule sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaAck {
    /// Its node name.
    pub name: String,
    /// Last record fsynced in its log.
    pub flushed: Lsn,
    /// Last record applied to its SQLite.
    pub applied: Lsn,
}

impl SyncSet {
    /// Whether a commit at `lsn` holds in `mode`, given the connected replicas' acknowledgements:
    /// `Some(acked_by)` with the members that make up the quorum (empty for async), `None` while
    /// it does not hold yet.
    pub fn confirms(&self, mode: CommitMode, acks: &[ReplicaAck], lsn: Lsn) -> Option<Vec<String>> {
        let level: Vec<(String, Lsn)> = match mode {
            CommitMode::Async => return Some(Vec::new()),
            CommitMode::SemiSync => acks.iter().map(|a| (a.name.clone(), a.flushed)).collect(),
            CommitMode::Sync => acks.iter().map(|a| (a.name.clone(), a.applied)).collect(),
        };
        let q = self.quorum_position(&level);
        (q.lsn >= lsn && !q.acked_by.is_empty()).then_some(q.acked_by)
    }

    /// Who has `lsn` at `mode`'s level right now, members of the set or not (for an answer that
    /// reports a timeout truthfully).
    pub fn holders(mode: CommitMode, acks: &[ReplicaAck], lsn: Lsn) -> Vec<String> {
        acks.iter()
            .filter(|a| match mode {
                CommitMode::Async => false,
                CommitMode::SemiSync => a.flushed >= lsn,
                CommitMode::Sync => a.applied >= lsn,
            })
            .map(|a| a.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acks(v: &[(&str, u64)]) -> Vec<(String, Lsn)> {
        v.iter().map(|(n, l)| (n.to_string(), Lsn(*l))).collect()
    }

    #[test]
    fn modes_parse_and_print() {
        for (s, m) in [
            ("async", CommitMode::Async),
            ("semi-sync", CommitMode::SemiSync),
            ("SYNC", CommitMode::Sync),
            ("semi_sync", CommitMode::SemiSync),
        ] {
            assert_eq!(s.parse::<CommitMode>().unwrap(), m);
        }
        assert_eq!(CommitMode::SemiSync.to_string(), "semi-sync");
        assert!("fast"
            .parse::<CommitMode>()
            .unwrap_err()
            .0
            .contains("expected async"));
    }

    #[test]
    fn sync_sets_parse_and_print() {
        let s: SyncSet = "FIRST 1 (n2, n3)".parse().unwrap();
        assert_eq!(
            s,
            SyncSet {
                quorum: Quorum::First,
                n: 1,
                members: Some(vec!["n2".into(), "n3".into()])
            }
        );
        assert_eq!(s.to_string(), "FIRST 1 (n2, n3)");
        let s: SyncSet = "any 2 (*)".parse().unwrap();
        assert_eq!(
            s,
            SyncSet {
                quorum: Quorum::Any,
                n: 2,
                members: None
            }
        );
        assert_eq!("2 (a,b)".parse::<SyncSet>().unwrap().quorum, Quorum::First);
        for bad in [
            "FIRST 1",
            "FIRST x (a)",
            "ANY 0 (*)",
            "ANY 3 (a, b)",
            "FIRST 1 (a, a)",
            "FIRST 1 (a,)",
            "MOST 1 (a)",
            "FIRST 1 (a",
        ] {
            assert!(bad.parse::<SyncSet>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn first_waits_for_the_first_connected_members_in_order() {
        let s: SyncSet = "FIRST 1 (n2, n3)".parse().unwrap();
        assert_eq!(
            s.quorum_position(&acks(&[("n2", 5), ("n3", 9)])),
            QuorumPosition {
                lsn: Lsn(5),
                acked_by: vec!["n2".into()]
            }
        );
        // n2 gone: n3 is next in line.
        assert_eq!(s.quorum_position(&acks(&[("n3", 9)])).lsn, Lsn(9));
        // Nobody of the set connected: nothing is guaranteed.
        assert_eq!(s.quorum_position(&acks(&[("n4", 9)])).lsn, Lsn::ZERO);
    }

    #[test]
    fn any_takes_the_best_n() {
        let s: SyncSet = "ANY 2 (*)".parse().unwrap();
        let q = s.quorum_position(&acks(&[("a", 3), ("b", 7), ("c", 5)]));
        assert_eq!(
            q,
            QuorumPosition {
                lsn: Lsn(5),
                acked_by: vec!["b".into(), "c".into()]
            }
        );
        assert_eq!(s.quorum_position(&acks(&[("a", 3)])).lsn, Lsn::ZERO);
    }

    proptest! {
        /// Whatever the acknowledgements, the quorum position is acknowledged by at least n
        /// members of the set, each at or beyond it.
        #[test]
        fn the_quorum_position_is_always_backed_by_n_members(
            n in 1usize..4, any in any::<bool>(), star in any::<bool>(),
            lsns in proptest::collection::vec(0u64..20, 0..6),
        ) {
            let names: Vec<String> = (0..lsns.len()).map(|i| format!("r{i}")).collect();
            let members = if star { None } else { Some(names.iter().take(4).cloned().collect::<Vec<_>>()) };
            if members.as_ref().is_some_and(|m| m.len() < n) { return Ok(()); }
            let set = SyncSet { quorum: if any { Quorum::Any } else { Quorum::First }, n, members };
            let a: Vec<(String, Lsn)> = names.iter().cloned().zip(lsns.iter().map(|&l| Lsn(l))).collect();
            let q = set.quorum_position(&a);
            if q.lsn > Lsn::ZERO {
                prop_assert_eq!(q.acked_by.len(), n);
                for who in &q.acked_by {
                    prop_assert!(set.contains(who));
                    let l = a.iter().find(|(x, _)| x == who).unwrap().1;
                    prop_assert!(l >= q.lsn);
                }
            }
            // ANY never guarantees less than FIRST over the same members.
            let first = SyncSet { quorum: Quorum::First, ..set.clone() }.quorum_position(&a).lsn;
            let anyq = SyncSet { quorum: Quorum::Any, ..set }.quorum_position(&a).lsn;
            prop_assert!(anyq >= first);
        }
    }

    fn ack(name: &str, flushed: u64, applied: u64) -> ReplicaAck {
        ReplicaAck {
            name: name.into(),
            flushed: Lsn(flushed),
            applied: Lsn(applied),
        }
    }

    #[test]
    fn semi_sync_counts_flushed_and_sync_counts_applied() {
        let set: SyncSet = "ANY 1 (*)".parse().unwrap();
        let acks = [ack("n2", 10, 7), ack("n3", 5, 5)];
        assert_eq!(
            set.confirms(CommitMode::SemiSync, &acks, Lsn(10)),
            Some(vec!["n2".into()])
        );
        assert_eq!(set.confirms(CommitMode::Sync, &acks, Lsn(10)), None);
        assert_eq!(
            set.confirms(CommitMode::Sync, &acks, Lsn(7)),
            Some(vec!["n2".into()])
        );
        assert_eq!(set.confirms(CommitMode::Async, &[], Lsn(10)), Some(vec![]));
        let two: SyncSet = "ANY 2 (*)".parse().unwrap();
        assert_eq!(two.confirms(CommitMode::SemiSync, &acks, Lsn(6)), None);
        assert_eq!(
            two.confirms(CommitMode::SemiSync, &acks, Lsn(5))
                .map(|mut v| {
                    v.sort();
                    v
                }),
            Some(vec!["n2".into(), "n3".into()])
        );
    }

    #[test]
    fn nobody_connected_confirms_nothing() {
        let set: SyncSet = "FIRST 1 (n2, n3)".parse().unwrap();
        assert_eq!(set.confirms(CommitMode::Sync, &[], Lsn(1)), None);
        assert_eq!(
            set.confirms(CommitMode::Sync, &[ack("n9", 5, 5)], Lsn(1)),
            None
        );
        assert_eq!(
            SyncSet::holders(CommitMode::Sync, &[ack("n9", 5, 5)], Lsn(1)),
            vec!["n9".to_string()]
        );
    }

    #[test]
    fn timeout_policies_parse() {
        assert_eq!(
            "degrade".parse::<OnSyncTimeout>().unwrap(),
            OnSyncTimeout::Degrade
        );
        assert_eq!(
            " Error".parse::<OnSyncTimeout>().unwrap(),
            OnSyncTimeout::Error
        );
        assert!("ignore".parse::<OnSyncTimeout>().is_err());
    }
}
