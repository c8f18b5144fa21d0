//! [`Versions`]: one row of a `versioned` table — every write that no other write has seen and
//! replaced (its *siblings*), kept until the application resolves them. The winner, the row the
//! table shows, is the sibling with the greatest [`Stamp`]; the others are the row's conflicts,
//! which the application reads and resolves with a write that has seen them all.
//!
//! Which writes are concurrent is decided by causality, not by clocks: each write has a *dot*
//! (its node and that node's count of writes to this row) and the row's version vector at the
//! writer when it wrote (what it had seen). A write replaces exactly the siblings it had seen. This
//! is a dotted version vector set (Preguiça et al.): merging two states is a join, so every node
//! that has seen the same writes holds the same siblings — and so the same conflicts, each exactly
//! once — whatever the order of delivery.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::row::Stamp;

/// A write's identity within one row: its node and that node's count of writes to the row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node that wrote.
    pub node: String,
    /// 1 for its first write of this row, 2 for the next...
    pub n: u64,
}

/// Per node, how many of its writes to one row are known: a row's causal context.
pub type Context = BTreeMap<String, u64>;

/// A write whose context is older than this node's own writes of the row (see
/// [`Versions::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the row was written on this node since its versions were read: read them again and resolve with that context")]
pub struct StaleContext;

/// One write that nothing has replaced yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version<V> {
    /// Which write.
    pub dot: Dot,
    /// When, for choosing the winner.
    pub stamp: Stamp,
    /// The row it wrote; `None` for a delete.
    pub value: Option<V>,
}

/// One row's versions.
///
/// Invariants: every sibling's dot is covered by `context`; no sibling's dot is covered by the
/// context another sibling was written with (it would have been replaced); siblings are sorted by
/// dot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions<V> {
    siblings: Vec<Version<V>>,
    context: Context,
}

impl<V> Default for Versions<V> {
    fn default() -> Self {
        Versions {
            siblings: Vec::new(),
            context: Context::new(),
        }
    }
}

fn covers(context: &Context, dot: &Dot) -> bool {
    context.get(&dot.node).is_some_and(|n| *n >= dot.n)
}

fn join(a: &Context, b: &Context) -> Context {
    let mut out = a.clone();
    for (node, n) in b {
        let e = out.entry(node.clone()).or_insert(0);
        *e = (*e).max(*n);
    }
    out
}

impl<V: Clone + PartialEq> Versions<V> {
    /// What a writer on this node has seen of the row: the context a write made now carries.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The siblings, sorted by dot.
    pub fn siblings(&self) -> &[Version<V>] {
        &self.siblings
    }

    /// The version the table shows: the sibling with the greatest stamp (`None`: never written).
    pub fn winner(&self) -> Option<&Version<V>> {
        self.siblings.iter().max_by(|a, b| a.stamp.cmp(&b.stamp))
    }

    /// The siblings that lost to the winner: the row's conflicts, in dot order.
    pub fn conflicts(&self) -> Vec<&Version<V>> {
        let winner = self.winner().map(|w| &w.dot);
        self.siblings
            .iter()
            .filter(|v| Some(&v.dot) != winner)
            .collect()
    }

    /// The context of an ordinary write on `node` (a statement, not a resolution): it replaces
    /// the version the table shows and `node`'s own versions, but not the conflicts other nodes
    /// wrote, which stay until the application resolves them. Siblings come from distinct nodes
    /// (a node's writes each replace its previous one), so lowering a conflict's node to just
    /// below its dot uncovers that conflict alone.
    pub fn ordinary_context(&self, node: &str) -> Context {
        let mut seen = self.context.clone();
        for c in self.conflicts() {
            if c.dot.node != node {
                seen.insert(c.dot.node.clone(), c.dot.n - 1);
            }
        }
        seen
    }

    /// A write on `node` at `stamp` that has seen `seen` (the row's context when the write was
    /// made: [`Versions::context`] for an ordinary write, the context the application read the
    /// conflicts with for a resolution). Answers the write's dot and context, which replicate
    /// with it.
    ///
    /// Refused with [`StaleContext`] when this node has written the row since `seen` was read:
    /// the new dot would claim those writes as seen and drop them unseen. The application reads
    /// the row again (its conflicts now include them) and writes with that context.
    pub fn write(
        &mut self,
        node: &str,
        stamp: Stamp,
        value: Option<V>,
        seen: &Context,
    ) -> Result<(Dot, Context), StaleContext> {
        let mine = self.context.get(node).copied().unwrap_or(0);
        if seen.get(node).copied().unwrap_or(0) < mine {
            return Err(StaleContext);
        }
        let n = mine + 1;
        let dot = Dot {
            node: node.to_string(),
            n,
        };
        let seen = seen.clone();
        self.apply(
            Version {
                dot: dot.clone(),
                stamp,
                value,
            },
            &seen,
        );
        Ok((dot, seen))
    }

    /// Takes in a write (local or from another node) that had seen `seen`: it replaces the
    /// siblings it had seen, and is dropped if this row has seen it already (a duplicate, or
    /// replaced by a later write that arrived first). `seen` holds every earlier write of the
    /// write's own node ([`Versions::write`] refuses it otherwise), so adding the write's dot to
    /// it claims nothing unseen.
    pub fn apply(&mut self, version: Version<V>, seen: &Context) {
        let mut incoming = Versions {
            siblings: vec![version.clone()],
            context: seen.clone(),
        };
        incoming
            .context
            .entry(version.dot.node.clone())
            .and_modify(|n| *n = (*n).max(version.dot.n))
            .or_insert(version.dot.n);
        *self = self.merge(&incoming);
    }

    /// The join of two states of the row: a sibling survives unless the other side has seen it
    /// and does not hold it (then something replaced it).
    pub fn merge(&self, other: &Versions<V>) -> Versions<V> {
        let keep = |mine: &Versions<V>, theirs: &Versions<V>| -> Vec<Version<V>> {
            mine.siblings
                .iter()
                .filter(|v| {
                    theirs.siblings.iter().any(|t| t.dot == v.dot)
                        || !covers(&theirs.context, &v.dot)
                })
                .cloned()
                .collect()
        };
        let mut siblings = keep(self, other);
        for v in keep(other, self) {
            if !siblings.iter().any(|s| s.dot == v.dot) {
                siblings.push(v);
            }
        }
        siblings.sort_by(|a, b| a.dot.cmp(&b.dot));
        Versions {
            siblings,
            context: join(&self.context, &other.context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multi_master::testing::{at, join_laws};
    use proptest::prelude::*;

    #[test]
    fn an_ordinary_write_keeps_other_nodes_conflicts_and_a_resolution_ends_them() {
        let mut a: Versions<&str> = Versions::default();
        let mut b: Versions<&str> = Versions::default();
        let (da, sa) = a
            .write("n1", at(1, "n1"), Some("x"), &Context::new())
            .unwrap();
        let (db, sb) = b
            .write("n2", at(2, "n2"), Some("y"), &Context::new())
            .unwrap();
        a.apply(
            Version {
                dot: db,
                stamp: at(2, "n2"),
                value: Some("y"),
            },
            &sb,
        );
        b.apply(
            Version {
                dot: da,
                stamp: at(1, "n1"),
                value: Some("x"),
            },
            &sa,
        );
        assert_eq!(a, b);
        assert_eq!(a.conflicts().len(), 1);
        // n2 (the winner's node) writes again as usual: n1's losing version stays.
        let seen = b.ordinary_context("n2");
        b.write("n2", at(3, "n2"), Some("z"), &seen).unwrap();
        assert_eq!(b.winner().unwrap().value, Some("z"));
        assert_eq!(b.conflicts().len(), 1);
        assert_eq!(b.conflicts()[0].value, Some("x"));
        // A resolution, with everything seen, leaves one version.
        let all = b.context().clone();
        b.write("n2", at(4, "n2"), Some("xz"), &all).unwrap();
        assert_eq!(b.siblings().len(), 1);
    }

    #[test]
    fn sequential_writes_replace_each_other() {
        let mut r: Versions<&str> = Versions::default();
        let seen = r.context().clone();
        r.write("n1", at(1, "n1"), Some("a"), &seen).unwrap();
        let seen = r.context().clone();
        r.write("n1", at(2, "n1"), Some("b"), &seen).unwrap();
        assert_eq!(r.siblings().len(), 1);
        assert!(r.conflicts().is_empty());
        assert_eq!(r.winner().and_then(|v| v.value), Some("b"));
    }

    #[test]
    fn concurrent_writes_are_kept_the_later_wins_and_a_resolution_replicates() {
        let base: Versions<&str> = Versions::default();
        let (mut x, mut y) = (base.clone(), base);
        let (dx, cx) = x
            .write("n1", at(5, "n1"), Some("x"), &Context::new())
            .unwrap();
        let (dy, cy) = y
            .write("n2", at(7, "n2"), Some("y"), &Context::new())
            .unwrap();
        // Each takes in the other's write, in its own order.
        let vx = x.siblings()[0].clone();
        let vy = y.siblings()[0].clone();
        x.apply(vy.clone(), &cy);
        y.apply(vx.clone(), &cx);
        assert_eq!(x, y);
        assert_eq!(x.winner().map(|v| v.dot.clone()), Some(dy));
        assert_eq!(
            x.conflicts()
                .iter()
                .map(|v| v.dot.clone())
                .collect::<Vec<_>>(),
            vec![dx]
        );
        // The application resolves on n1 with a merged row, having seen both.
        let seen = x.context().clone();
        let (dr, cr) = x.write("n1", at(9, "n1"), Some("xy"), &seen).unwrap();
        let vr = x.siblings()[0].clone();
        assert_eq!(vr.dot, dr);
        y.apply(vr, &cr);
        assert_eq!(x, y);
        assert!(y.conflicts().is_empty());
        assert_eq!(y.winner().and_then(|v| v.value), Some("xy"));
        // A duplicate of an old write changes nothing.
        y.apply(vx, &cx);
        assert_eq!(x, y);
    }

    #[test]
    fn a_write_replaced_before_it_arrives_stays_replaced() {
        let mut a: Versions<u8> = Versions::default();
        let (d1, c1) = a
            .write("n1", at(1, "n1"), Some(1), &Context::new())
            .unwrap();
        let v1 = a.siblings()[0].clone();
        let seen = a.context().clone();
        let (_, c2) = a.write("n1", at(2, "n1"), Some(2), &seen).unwrap();
        let v2 = a.siblings()[0].clone();
        // Another node gets the second write first, then the first.
        let mut b: Versions<u8> = Versions::default();
        b.apply(v2, &c2);
        b.apply(v1, &c1);
        assert_eq!(a, b);
        assert!(b.siblings().iter().all(|v| v.dot != d1));
    }

    #[test]
    fn a_resolution_with_a_context_older_than_this_nodes_writes_is_refused() {
        let (mut x, mut y): (Versions<u8>, Versions<u8>) = Default::default();
        let (_, cx) = x
            .write("n1", at(1, "n1"), Some(1), &Context::new())
            .unwrap();
        let (_, cy) = y
            .write("n2", at(2, "n2"), Some(2), &Context::new())
            .unwrap();
        x.apply(y.siblings()[0].clone(), &cy);
        y.apply(x.siblings()[0].clone(), &cx);
        // The application reads the conflicts on n1 ...
        let read = x.context().clone();
        // ... another client writes z there meanwhile ...
        let now = x.context().clone();
        x.write("n1", at(3, "n1"), Some(3), &now).unwrap();
        // ... and the resolution made with the old context would drop z unseen: refused.
        assert_eq!(
            x.write("n1", at(4, "n1"), Some(9), &read),
            Err(StaleContext)
        );
        assert!(x.siblings().iter().any(|v| v.value == Some(3)));
        let again = x.context().clone();
        x.write("n1", at(5, "n1"), Some(9), &again).unwrap();
        assert!(x.conflicts().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u8),
        Delete,
        /// Resolve: write having seen everything this node has.
        Resolve(u8),
        Sync(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..10).prop_map(Op::Write),
            Just(Op::Delete),
            (0u8..10).prop_map(Op::Resolve),
            (0usize..3).prop_map(Op::Sync),
        ]
    }

    const NODES: [&str; 3] = ["n1", "n2", "n3"];

    fn run(schedule: &[(usize, Op)]) -> Vec<Versions<u8>> {
        let mut rows: Vec<Versions<u8>> = vec![Versions::default(); 3];
        for (t, (n, op)) in schedule.iter().enumerate() {
            let stamp = at(t as u64 + 1, NODES[*n]);
            match op {
                Op::Write(v) | Op::Resolve(v) => {
                    let seen = rows[*n].context().clone();
                    rows[*n]
                        .write(NODES[*n], stamp, Some(*v), &seen)
                        .expect("current context");
                }
                Op::Delete => {
                    let seen = rows[*n].context().clone();
                    rows[*n]
                        .write(NODES[*n], stamp, None, &seen)
                        .expect("current context");
                }
                Op::Sync(from) => {
                    let other = rows[*from].clone();
                    rows[*n] = rows[*n].merge(&other);
                }
            }
        }
        rows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            schedule in proptest::collection::vec((0usize..3, op()), 0..40)
        ) {
            let rows = run(&schedule);
            join_laws((&rows[0], &rows[1], &rows[2]), |x, y| x.merge(y))?;
        }

        /// Once every node has taken in the others', they hold the same siblings: the same
        /// winner, each conflict exactly once; and a resolution made then leaves none anywhere.
        #[test]
        fn nodes_agree_on_the_winner_and_every_conflict_once(
            schedule in proptest::collection::vec((0usize..3, op()), 0..40),
            resolver in 0usize..3,
        ) {
            let mut rows = run(&schedule);
            for _ in 0..2 {
                for i in 0..3 {
                    let other = rows[(i + 1) % 3].clone();
                    rows[i] = rows[i].merge(&other);
                }
            }
            prop_assert_eq!(&rows[0], &rows[1]);
            prop_assert_eq!(&rows[1], &rows[2]);
            let conflicts: Vec<&Dot> = rows[0].conflicts().iter().map(|v| &v.dot).collect();
            let mut unique = conflicts.clone();
            unique.dedup();
            prop_assert_eq!(conflicts.len(), unique.len());
            // Resolve on one node; the resolution reaches the others.
            let seen = rows[resolver].context().clone();
            rows[resolver]
                .write(NODES[resolver], at(1_000, NODES[resolver]), Some(99), &seen)
                .expect("current context");
            for _ in 0..2 {
                for i in 0..3 {
                    let other = rows[(i + 1) % 3].clone();
                    rows[i] = rows[i].merge(&other);
                }
            }
            for r in &rows {
                prop_assert!(r.conflicts().is_empty());
                prop_assert_eq!(r.winner().and_then(|v| v.value), Some(99));
            }
        }
    }
}
