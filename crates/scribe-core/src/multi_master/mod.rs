//! Multi-master's decisions (DESIGN.md §6), without I/O: the hybrid logical clock every record
//! is stamped with ([`hlc`]), what a node has applied from each origin and what to send a peer
//! ([`version_vector`]), how concurrent writes of one row merge ([`row`], the `lww` and `merge`
//! policies) or are kept side by side until the application resolves them ([`versioned`]), a
//! table's policy as written ([`policy`]), and which schema changes are safe ([`ddl`]). The
//! runtime that streams records between masters and applies them to SQLite performs what these
//! decide.

pub mod ddl;
pub mod hlc;
pub mod policy;
pub mod row;
pub mod version_vector;
pub mod versioned;

pub use ddl::{check_ddl, created_table, DdlVerdict};
pub use hlc::{Clock, ClockError, Hlc};
pub use policy::{parse_set_policy, ParsePolicyError, TablePolicy};
pub use row::{Cell, ColumnRule, Row, RowError, Stamp, Write};
pub use version_vector::{Delivery, Missing, Seq, VersionVector};
pub use versioned::{Context, Dot, StaleContext, Version, Versions};

/// What the tests of these modules share: stamps, and the laws every merge obeys.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Hlc, Stamp};
    use proptest::prelude::*;

    /// A stamp at `wall_ms` (logical 0) on `node`.
    pub(crate) fn at(wall_ms: u64, node: &str) -> Stamp {
        Stamp {
            hlc: Hlc {
                wall_ms,
                logical: 0,
            },
            node: node.to_string(),
        }
    }

    /// `merge` is a join on these states: commutative, associative, idempotent, and taking in
    /// the same state twice changes nothing.
    pub(crate) fn join_laws<T: Clone + PartialEq + std::fmt::Debug>(
        (a, b, c): (&T, &T, &T),
        merge: impl Fn(&T, &T) -> T,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(merge(a, b), merge(b, a));
        prop_assert_eq!(merge(&merge(a, b), c), merge(a, &merge(b, c)));
        prop_assert_eq!(&merge(a, a), a);
        prop_assert_eq!(merge(&merge(a, b), b), merge(a, b));
        Ok(())
    }
}
