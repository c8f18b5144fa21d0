//! [`VersionVector`]: what a node has applied from each origin — the highest sequence number of
//! each origin's records, applied in order — and the decisions it drives: apply a record now,
//! drop it as a duplicate, or ask for the gap before it; and which records one node can give
//! another so that a node reaching only one peer still gets every origin's records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A record's sequence number in its origin's own log: 1, 2, 3… with no gaps.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Seq(pub u64);

/// What to do with a record `(origin, seq)` that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The next one from that origin: apply it, then [`VersionVector::applied`].
    Apply,
    /// Applied already (a duplicate, or a record relayed by two peers): drop it.
    Duplicate,
    /// Records before it are missing: ask for them from `from` on, and do not apply this one.
    Gap {
        /// The first missing sequence number.
        from: Seq,
    },
}

/// Records one node has and another lacks, for one origin: the sequence numbers `from..=to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The origin node.
    pub origin: String,
    /// The first sequence number the other node lacks.
    pub from: Seq,
    /// The last one this node has.
    pub to: Seq,
}

/// Per origin, the highest sequence number applied. An origin absent has none applied.
///
/// Invariant: every record of an origin up to its entry has been applied, and none after it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<String, Seq>);

impl VersionVector {
    /// Nothing applied.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The vector whose entries are `entries`: each origin's records up to its sequence number
    /// applied (as a node stores its vector); a zero entry is left out.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Seq)>) -> VersionVector {
        VersionVector(entries.into_iter().filter(|(_, s)| s.0 > 0).collect())
    }

    /// The highest sequence number applied from `origin` (0: none).
    pub fn get(&self, origin: &str) -> Seq {
        self.0.get(origin).copied().unwrap_or_default()
    }

    /// What to do with record `seq` of `origin`.
    pub fn check(&self, origin: &str, seq: Seq) -> Delivery {
        let have = self.get(origin);
        if seq <= have {
            Delivery::Duplicate
        } else if seq.0 == have.0 + 1 {
            Delivery::Apply
        } else {
            Delivery::Gap {
                from: Seq(have.0 + 1),
            }
        }
    }

    /// Notes that record `seq` of `origin` is applied. It must be the one [`VersionVector::check`]
    /// said to apply; anything else is refused and changes nothing.
    pub fn applied(&mut self, origin: &str, seq: Seq) -> Result<(), Delivery> {
        match self.check(origin, seq) {
            Delivery::Apply => {
                self.0.insert(origin.to_string(), seq);
                Ok(())
            }
            other => Err(other),
        }
    }

    /// Whether everything `other` has applied, this one has too.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(o, s)| self.get(o) >= *s)
    }

    /// The pointwise maximum: what a node has once it has everything either had.
    pub fn join(&self, other: &VersionVector) -> VersionVector {
        let mut out = self.clone();
        for (o, s) in &other.0 {
            let e = out.0.entry(o.clone()).or_default();
            *e = (*e).max(*s);
        }
        out
    }

    /// The records this node has and `other` lacks, per origin: what to send a peer that
    /// reports `other` — its own records and those it relays from third nodes.
    pub fn missing_in(&self, other: &VersionVector) -> Vec<Missing> {
        self.0
            .iter()
            .filter(|(o, s)| other.get(o) < **s)
            .map(|(o, s)| Missing {
                origin: o.clone(),
                from: Seq(other.get(o).0 + 1),
                to: *s,
            })
            .collect()
    }

    /// What this vector was before a run of records was applied whose first record of each
    /// origin is `first_seen`: that origin's entry one before it, every other origin's as now.
    /// (A node applies each origin's records in order, so its log from any point holds each
    /// origin's records from one sequence number on.)
    pub fn before(&self, first_seen: &BTreeMap<String, Seq>) -> VersionVector {
        let mut out = self.clone();
        for (o, s) in first_seen {
            let prior = Seq(s.0.saturating_sub(1)).min(self.get(o));
            if prior.0 == 0 {
                out.0.remove(o);
            } else {
                out.0.insert(o.clone(), prior);
            }
        }
        out
    }

    /// The origins and their sequence numbers, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Seq)> {
        self.0.iter().map(|(o, s)| (o.as_str(), *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_before_a_run_of_records_steps_back_only_the_origins_in_it() {
        let now = VersionVector::from_entries([
            ("a".to_string(), Seq(9)),
            ("b".to_string(), Seq(4)),
            ("c".to_string(), Seq(2)),
        ]);
        let first_seen: BTreeMap<String, Seq> =
            [("a".to_string(), Seq(7)), ("c".to_string(), Seq(1))].into();
        let before = now.before(&first_seen);
        assert_eq!(
            before,
            VersionVector::from_entries([("a".to_string(), Seq(6)), ("b".to_string(), Seq(4))])
        );
        assert!(now.covers(&before));
        assert_eq!(now.before(&BTreeMap::new()), now);
    }

    #[test]
    fn a_vector_from_its_entries_is_the_one_built_record_by_record() {
        let mut built = VersionVector::new();
        for s in 1..=3 {
            built.applied("a", Seq(s)).unwrap();
        }
        built.applied("b", Seq(1)).unwrap();
        let stored = VersionVector::from_entries([
            ("a".to_string(), Seq(3)),
            ("b".to_string(), Seq(1)),
            ("c".to_string(), Seq(0)),
        ]);
        assert_eq!(stored, built);
    }
    use proptest::prelude::*;

    #[test]
    fn records_apply_in_order_once() {
        let mut v = VersionVector::new();
        assert_eq!(v.check("n1", Seq(1)), Delivery::Apply);
        assert_eq!(v.check("n1", Seq(3)), Delivery::Gap { from: Seq(1) });
        v.applied("n1", Seq(1)).expect("next");
        assert_eq!(v.check("n1", Seq(1)), Delivery::Duplicate);
        assert_eq!(v.applied("n1", Seq(3)), Err(Delivery::Gap { from: Seq(2) }));
        assert_eq!(v.get("n1"), Seq(1), "a refused record changes nothing");
        assert_eq!(v.get("n2"), Seq(0));
    }

    #[test]
    fn a_peer_relays_what_the_other_lacks_from_every_origin() {
        let mut a = VersionVector::new();
        let mut b = VersionVector::new();
        for s in 1..=5 {
            a.applied("n1", Seq(s)).unwrap();
        }
        for s in 1..=2 {
            a.applied("n3", Seq(s)).unwrap();
            b.applied("n3", Seq(s)).unwrap();
        }
        b.applied("n1", Seq(1)).unwrap();
        b.applied("n2", Seq(1)).unwrap();
        assert_eq!(
            a.missing_in(&b),
            vec![Missing {
                origin: "n1".into(),
                from: Seq(2),
                to: Seq(5)
            }]
        );
        assert_eq!(
            b.missing_in(&a),
            vec![Missing {
                origin: "n2".into(),
                from: Seq(1),
                to: Seq(1)
            }]
        );
        assert!(!a.covers(&b) && !b.covers(&a));
        let j = a.join(&b);
        assert!(j.covers(&a) && j.covers(&b));
        assert!(j.missing_in(&a).len() == 1 && a.join(&j) == j);
    }

    proptest! {
        /// Delivering every origin's records in any order, with duplicates, and re-asking from
        /// the gap whenever one shows, ends with each record applied exactly once, in order.
        #[test]
        fn any_delivery_order_applies_each_record_once(
            order in proptest::collection::vec((0usize..3, 1u64..8), 0..120)
        ) {
            let origins = ["n1", "n2", "n3"];
            let mut v = VersionVector::new();
            let mut log: Vec<(usize, u64)> = Vec::new();
            for (o, s) in order {
                let origin = origins[o];
                match v.check(origin, Seq(s)) {
                    Delivery::Apply => {
                        v.applied(origin, Seq(s)).unwrap();
                        log.push((o, s));
                    }
                    Delivery::Duplicate => prop_assert!(log.contains(&(o, s))),
                    Delivery::Gap { from } => {
                        // The peer sends the gap: from `from` up to `s`, in order.
                        for g in from.0..=s {
                            v.applied(origin, Seq(g)).unwrap();
                            log.push((o, g));
                        }
                    }
                }
            }
            for (i, origin) in origins.iter().enumerate() {
                let applied: Vec<u64> = log.iter().filter(|(o, _)| *o == i).map(|(_, s)| *s).collect();
                let want: Vec<u64> = (1..=v.get(origin).0).collect();
                prop_assert_eq!(applied, want);
            }
        }

        /// Join is the least upper bound: commutative, associative, idempotent, and it covers both.
        #[test]
        fn join_is_a_semilattice(
            a in proptest::collection::btree_map("n[1-4]", 0u64..9, 0..4),
            b in proptest::collection::btree_map("n[1-4]", 0u64..9, 0..4),
            c in proptest::collection::btree_map("n[1-4]", 0u64..9, 0..4),
        ) {
            let vv = |m: std::collections::BTreeMap<String, u64>| VersionVector(m.into_iter().map(|(k, s)| (k, Seq(s))).collect());
            let (a, b, c) = (vv(a), vv(b), vv(c));
            let eq = |x: &VersionVector, y: &VersionVector| x.covers(y) && y.covers(x);
            prop_assert!(eq(&a.join(&b), &b.join(&a)));
            prop_assert!(eq(&a.join(&b).join(&c), &a.join(&b.join(&c))));
            prop_assert!(eq(&a.join(&a), &a));
            prop_assert!(a.join(&b).covers(&a) && a.join(&b).covers(&b));
            prop_assert!(a.join(&b).missing_in(&a).iter().all(|m| m.from <= m.to));
        }
    }
}
