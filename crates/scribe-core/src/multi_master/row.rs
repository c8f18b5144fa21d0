//! [`Row`]: one row's replicated state under multi-master, and [`Row::merge`], the one rule every
//! node applies to concurrent writes of it. The merge is a join: commutative, associative and
//! idempotent, so nodes that have seen the same writes hold the same row whatever the order,
//! the duplicates or the partitions — the property tests below check exactly that.
//!
//! A row's existence is its *life* (a causal length, as in cr-sqlite): odd while it exists, even
//! once deleted; each delete or re-insert adds one. The row of the greater life wins whole, so a
//! delete wins over an update made concurrently to the life it deletes, and a row inserted again
//! later comes back with what that insert (and later writes) set. Within one life each column
//! merges by its [`ColumnRule`]: last writer wins on the [`Stamp`] (the HLC, ties broken by node
//! name), the larger or smaller value, or a counter that adds every node's increments.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hlc::Hlc;

/// When a write happened and where: its HLC, ties broken by the node's name. A total order, the
/// same on every node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The write's HLC timestamp.
    pub hlc: Hlc,
    /// The node it was made on.
    pub node: String,
}

/// How one column merges concurrent writes: a `merge` table names one per column, an `lww`
/// table has `Lww` for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnRule {
    /// The value of the latest write.
    Lww,
    /// A counter: every node's changes are added up.
    Sum,
    /// The largest value ever written.
    Max,
    /// The smallest value ever written.
    Min,
}

/// One column's replicated state within one life of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cell<V> {
    /// Last writer wins: the value and the stamp of the write that set it.
    Register {
        /// The value.
        value: V,
        /// Who set it, when.
        stamp: Stamp,
    },
    /// The largest value written.
    Max(V),
    /// The smallest value written.
    Min(V),
    /// A counter: per node, the total it added and the total it took away (both only grow).
    Counter(BTreeMap<String, (u64, u64)>),
}

/// What a write does to a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write<V> {
    /// Sets the value (`lww`, `max`, `min` columns).
    Set(V),
    /// Adds to a counter (`sum` columns): the change the statement made, positive or negative.
    Add(i64),
}

/// Why a local write does not apply to a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// An insert of a row that exists.
    #[error("the row exists")]
    Exists,
    /// An update or delete of a row that does not exist.
    #[error("the row does not exist")]
    Missing,
    /// A write that does not fit the column's rule (`Add` to a non-counter, `Set` on a counter).
    #[error("column {0:?}: the write does not fit its merge rule")]
    Rule(String),
}

impl<V: Clone + Ord> Cell<V> {
    /// The rank of a kind, so that two cells of different kinds (a column whose rule changed)
    /// still merge deterministically: the higher kind wins.
    fn rank(&self) -> u8 {
        match self {
            Cell::Register { .. } => 0,
            Cell::Max(_) => 1,
            Cell::Min(_) => 2,
            Cell::Counter(_) => 3,
        }
    }

    /// The join of two states of one column.
    pub fn merge(&self, other: &Cell<V>) -> Cell<V> {
        match (self, other) {
            (
                Cell::Register {
                    value: a,
                    stamp: sa,
                },
                Cell::Register {
                    value: b,
                    stamp: sb,
                },
            ) => {
                // Equal stamps carry equal values in any real history; the value breaks the tie
                // anyway, so the merge stays a join for any input.
                if (sa, a) >= (sb, b) {
                    self.clone()
                } else {
                    other.clone()
                }
            }
            (Cell::Max(a), Cell::Max(b)) => Cell::Max(a.max(b).clone()),
            (Cell::Min(a), Cell::Min(b)) => Cell::Min(a.min(b).clone()),
            (Cell::Counter(a), Cell::Counter(b)) => {
                let mut out = a.clone();
                for (node, (inc, dec)) in b {
                    let e = out.entry(node.clone()).or_insert((0, 0));
                    *e = (e.0.max(*inc), e.1.max(*dec));
                }
                Cell::Counter(out)
            }
            _ if self.rank() >= other.rank() => self.clone(),
            _ => other.clone(),
        }
    }

    /// A counter's value: everything added less everything taken away.
    pub fn count(&self) -> Option<i128> {
        match self {
            Cell::Counter(m) => Some(m.values().map(|(i, d)| *i as i128 - *d as i128).sum()),
            _ => None,
        }
    }

    /// The column's value for a register, `max` or `min` cell.
    pub fn value(&self) -> Option<&V> {
        match self {
            Cell::Register { value, .. } | Cell::Max(value) | Cell::Min(value) => Some(value),
            Cell::Counter(_) => None,
        }
    }

    /// This cell after `write` at `stamp`, under `rule`; `None` when the write does not fit.
    fn written(
        cell: Option<&Cell<V>>,
        rule: ColumnRule,
        write: Write<V>,
        stamp: &Stamp,
    ) -> Option<Cell<V>> {
        let fresh = match (rule, write) {
            (ColumnRule::Lww, Write::Set(value)) => Cell::Register {
                value,
                stamp: stamp.clone(),
            },
            (ColumnRule::Max, Write::Set(v)) => Cell::Max(v),
            (ColumnRule::Min, Write::Set(v)) => Cell::Min(v),
            (ColumnRule::Sum, Write::Add(delta)) => {
                let mut m = match cell {
                    Some(Cell::Counter(m)) => m.clone(),
                    _ => BTreeMap::new(),
                };
                let e = m.entry(stamp.node.clone()).or_insert((0, 0));
                if delta >= 0 {
                    e.0 = e.0.saturating_add(delta.unsigned_abs());
                } else {
                    e.1 = e.1.saturating_add(delta.unsigned_abs());
                }
                return Some(Cell::Counter(m));
            }
            _ => return None,
        };
        // A register's new write has the greatest stamp on this node; `max`/`min` keep the
        // bound of what was there.
        Some(match cell {
            Some(c) if rule != ColumnRule::Lww => c.merge(&fresh),
            _ => fresh,
        })
    }
}

/// One row's replicated state.
///
/// Invariant: `cells` is empty while `life` is even (the row does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row<V> {
    /// Odd while the row exists, even once deleted (0: never inserted here).
    pub life: u64,
    /// Its columns, as set in the current life.
    pub cells: BTreeMap<String, Cell<V>>,
}

impl<V> Default for Row<V> {
    fn default() -> Self {
        Row {
            life: 0,
            cells: BTreeMap::new(),
        }
    }
}

impl<V: Clone + Ord> Row<V> {
    /// Whether the row exists.
    pub fn exists(&self) -> bool {
        self.life % 2 == 1
    }

    /// The join of two states of one row: the greater life wins whole; within one life, each
    /// column merges by its own rule.
    pub fn merge(&self, other: &Row<V>) -> Row<V> {
        if self.life != other.life {
            return if self.life > other.life {
                self.clone()
            } else {
                other.clone()
            };
        }
        let mut cells = self.cells.clone();
        for (col, cell) in &other.cells {
            let merged = match cells.get(col) {
                Some(mine) => mine.merge(cell),
                None => cell.clone(),
            };
            cells.insert(col.clone(), merged);
        }
        Row {
            life: self.life,
            cells,
        }
    }

    /// Inserts the row with `values` (each with its column's rule), at `stamp`.
    pub fn insert(
        &mut self,
        values: Vec<(String, ColumnRule, Write<V>)>,
        stamp: &Stamp,
    ) -> Result<(), RowError> {
        if self.exists() {
            return Err(RowError::Exists);
        }
        let mut cells = BTreeMap::new();
        for (col, rule, write) in values {
            let cell =
                Cell::written(None, rule, write, stamp).ok_or(RowError::Rule(col.clone()))?;
            cells.insert(col, cell);
        }
        self.life += 1;
        self.cells = cells;
        Ok(())
    }

    /// Applies one column's write at `stamp`.
    pub fn update(
        &mut self,
        col: &str,
        rule: ColumnRule,
        write: Write<V>,
        stamp: &Stamp,
    ) -> Result<(), RowError> {
        if !self.exists() {
            return Err(RowError::Missing);
        }
        let cell = Cell::written(self.cells.get(col), rule, write, stamp)
            .ok_or(RowError::Rule(col.to_string()))?;
        self.cells.insert(col.to_string(), cell);
        Ok(())
    }

    /// Deletes the row.
    pub fn delete(&mut self) -> Result<(), RowError> {
        if !self.exists() {
            return Err(RowError::Missing);
        }
        self.life += 1;
        self.cells.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multi_master::testing::{at, join_laws};
    use proptest::prelude::*;

    fn set(col: &str, v: i64) -> (String, ColumnRule, Write<i64>) {
        (col.to_string(), ColumnRule::Lww, Write::Set(v))
    }

    fn inserted(values: Vec<(String, ColumnRule, Write<i64>)>, stamp: &Stamp) -> Row<i64> {
        let mut r = Row::default();
        r.insert(values, stamp).expect("insert");
        r
    }

    #[test]
    fn concurrent_updates_of_different_columns_both_survive() {
        let base = inserted(vec![set("a", 1), set("b", 1)], &at(1, "n1"));
        let (mut x, mut y) = (base.clone(), base);
        x.update("a", ColumnRule::Lww, Write::Set(2), &at(5, "n1"))
            .unwrap();
        y.update("b", ColumnRule::Lww, Write::Set(3), &at(4, "n2"))
            .unwrap();
        let m = x.merge(&y);
        assert_eq!(m, y.merge(&x));
        assert_eq!(m.cells["a"].value(), Some(&2));
        assert_eq!(m.cells["b"].value(), Some(&3));
    }

    #[test]
    fn the_later_write_of_one_column_wins_and_a_tie_goes_to_the_greater_node_name() {
        let base = inserted(vec![set("a", 1)], &at(1, "n1"));
        let (mut x, mut y) = (base.clone(), base.clone());
        x.update("a", ColumnRule::Lww, Write::Set(10), &at(9, "n1"))
            .unwrap();
        y.update("a", ColumnRule::Lww, Write::Set(20), &at(8, "n2"))
            .unwrap();
        assert_eq!(x.merge(&y).cells["a"].value(), Some(&10));
        let (mut x, mut y) = (base.clone(), base);
        x.update("a", ColumnRule::Lww, Write::Set(10), &at(9, "n1"))
            .unwrap();
        y.update("a", ColumnRule::Lww, Write::Set(20), &at(9, "n2"))
            .unwrap();
        assert_eq!(y.merge(&x).cells["a"].value(), Some(&20));
    }

    #[test]
    fn a_delete_wins_over_a_concurrent_update_and_a_later_insert_brings_the_row_back() {
        let base = inserted(vec![set("a", 1)], &at(1, "n1"));
        let (mut x, mut y) = (base.clone(), base);
        x.delete().unwrap();
        // Even with a later clock, an update of the deleted life is lost.
        y.update("a", ColumnRule::Lww, Write::Set(2), &at(50, "n2"))
            .unwrap();
        let m = x.merge(&y);
        assert!(!m.exists() && m == y.merge(&x));
        let mut back = m.clone();
        back.insert(vec![set("a", 7)], &at(60, "n1")).unwrap();
        let m2 = back.merge(&y).merge(&x);
        assert!(m2.exists());
        assert_eq!(m2.cells["a"].value(), Some(&7));
        assert_eq!(m2.life, 3);
    }

    #[test]
    fn counters_add_every_nodes_changes() {
        let c = |d| ("c".to_string(), ColumnRule::Sum, Write::Add(d));
        let base = inserted(vec![c(10)], &at(1, "n1"));
        let (mut x, mut y, mut z) = (base.clone(), base.clone(), base);
        x.update("c", ColumnRule::Sum, Write::Add(5), &at(2, "n1"))
            .unwrap();
        y.update("c", ColumnRule::Sum, Write::Add(-3), &at(2, "n2"))
            .unwrap();
        z.update("c", ColumnRule::Sum, Write::Add(1), &at(2, "n3"))
            .unwrap();
        z.update("c", ColumnRule::Sum, Write::Add(1), &at(3, "n3"))
            .unwrap();
        let m = x.merge(&y).merge(&z);
        assert_eq!(m.cells["c"].count(), Some(14));
        assert_eq!(m.merge(&x).merge(&m), m, "merging again adds nothing");
    }

    #[test]
    fn max_and_min_keep_their_bound() {
        let base = inserted(
            vec![
                ("hi".into(), ColumnRule::Max, Write::Set(5)),
                ("lo".into(), ColumnRule::Min, Write::Set(5)),
            ],
            &at(1, "n1"),
        );
        let (mut x, mut y) = (base.clone(), base);
        x.update("hi", ColumnRule::Max, Write::Set(3), &at(2, "n1"))
            .unwrap();
        x.update("lo", ColumnRule::Min, Write::Set(3), &at(2, "n1"))
            .unwrap();
        y.update("hi", ColumnRule::Max, Write::Set(9), &at(2, "n2"))
            .unwrap();
        let m = x.merge(&y);
        assert_eq!(
            (m.cells["hi"].value(), m.cells["lo"].value()),
            (Some(&9), Some(&3))
        );
    }

    #[test]
    fn local_writes_that_do_not_fit_are_refused() {
        let mut r: Row<i64> = Row::default();
        assert_eq!(r.delete(), Err(RowError::Missing));
        assert_eq!(
            r.insert(
                vec![("c".into(), ColumnRule::Sum, Write::Set(1))],
                &at(1, "n1")
            ),
            Err(RowError::Rule("c".into()))
        );
        assert_eq!(r, Row::default(), "a refused insert changes nothing");
        r.insert(vec![set("a", 1)], &at(1, "n1")).unwrap();
        assert_eq!(
            r.insert(vec![set("a", 1)], &at(2, "n1")),
            Err(RowError::Exists)
        );
        assert_eq!(
            r.update("a", ColumnRule::Lww, Write::Add(1), &at(2, "n1")),
            Err(RowError::Rule("a".into()))
        );
    }

    /// A local operation at one node.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(i64),
        Update(usize, i64),
        Delete,
        /// This node takes in another node's state.
        Sync(usize),
    }

    const NODES: [&str; 3] = ["n1", "n2", "n3"];
    const COLUMNS: [(&str, ColumnRule); 4] = [
        ("a", ColumnRule::Lww),
        ("b", ColumnRule::Lww),
        ("c", ColumnRule::Sum),
        ("d", ColumnRule::Max),
    ];

    fn write(rule: ColumnRule, v: i64) -> Write<i64> {
        match rule {
            ColumnRule::Sum => Write::Add(v),
            _ => Write::Set(v),
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (-5i64..5).prop_map(Op::Insert),
            (0usize..4, -5i64..5).prop_map(|(c, v)| Op::Update(c, v)),
            Just(Op::Delete),
            (0usize..3).prop_map(Op::Sync),
        ]
    }

    /// Runs `schedule` (node, op) on three replicas of one row, each node's clock ticking per
    /// op; returns their states.
    fn run(schedule: &[(usize, Op)]) -> Vec<Row<i64>> {
        let mut rows: Vec<Row<i64>> = vec![Row::default(); 3];
        for (t, (n, op)) in schedule.iter().enumerate() {
            let stamp = at(t as u64 + 1, NODES[*n]);
            let row = &mut rows[*n];
            // Refused local writes (update of a missing row...) are what a node would refuse.
            let _ = match op {
                Op::Insert(v) => row.insert(
                    COLUMNS
                        .iter()
                        .map(|(c, r)| (c.to_string(), *r, write(*r, *v)))
                        .collect(),
                    &stamp,
                ),
                Op::Update(c, v) => {
                    let (col, rule) = COLUMNS[*c];
                    row.update(col, rule, write(rule, *v), &stamp)
                }
                Op::Delete => row.delete(),
                Op::Sync(from) => {
                    let other = rows[*from].clone();
                    rows[*n] = rows[*n].merge(&other);
                    Ok(())
                }
            };
        }
        rows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The merge laws, on states reached by real histories.
        #[test]
        fn merge_is_commutative_associative_and_idempotent(
            schedule in proptest::collection::vec((0usize..3, op()), 0..40)
        ) {
            let rows = run(&schedule);
            join_laws((&rows[0], &rows[1], &rows[2]), |x, y| x.merge(y))?;
        }

        /// Convergence: however the nodes' states reach each other — any order, any repeats —
        /// once each has taken in the others', all three hold the same row.
        #[test]
        fn nodes_that_exchanged_everything_hold_the_same_row(
            schedule in proptest::collection::vec((0usize..3, op()), 0..40),
            order in proptest::collection::vec((0usize..3, 0usize..3), 0..12),
        ) {
            let mut rows = run(&schedule);
            for (to, from) in order {
                let other = rows[from].clone();
                rows[to] = rows[to].merge(&other);
            }
            // A final full exchange, in a fixed ring.
            for _ in 0..2 {
                for i in 0..3 {
                    let other = rows[(i + 1) % 3].clone();
                    rows[i] = rows[i].merge(&other);
                }
            }
            prop_assert_eq!(&rows[0], &rows[1]);
            prop_assert_eq!(&rows[1], &rows[2]);
            prop_assert!(rows[0].exists() || rows[0].cells.is_empty());
        }
    }
}
