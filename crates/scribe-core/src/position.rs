//! Positions in the change log: the [`Lsn`] of one committed transaction, the [`Term`] of the
//! primary that wrote it, and the [`Position`] pair that identifies a record across the cluster
//! and travels to clients as a position token (`"<term>/<lsn>"`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Log sequence number: the position of one committed transaction in a node's change log.
///
/// LSNs start at 1 and grow by exactly one per record; `Lsn::ZERO` means "nothing yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Before the first record.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN right after this one.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }

    /// The LSN right before this one (saturating at zero).
    pub fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }

    /// The raw number, for formats and metrics.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The primary's epoch: it grows by one at every promotion. Every record carries the term of the
/// primary that wrote it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

impl Term {
    /// The term a brand-new cluster starts in.
    pub const FIRST: Term = Term(1);

    /// The raw number, for formats and metrics.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `(term, lsn)` of a record: what a commit returns to the client as its position token.
///
/// Positions order by LSN first: within one history LSNs are unique, and the term only says which
/// primary wrote the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// Term of the primary that wrote the record.
    pub term: Term,
    /// Sequence number of the record.
    pub lsn: Lsn,
}

impl Position {
    /// The position before any record.
    pub const ZERO: Position = Position {
        term: Term(0),
        lsn: Lsn::ZERO,
    };

    /// A position from its parts.
    pub fn new(term: Term, lsn: Lsn) -> Position {
        Position { term, lsn }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.lsn, self.term).cmp(&(other.lsn, other.term))
    }
}

impl fmt::Display for Position {
    /// The position token: `"<term>/<lsn>"`, for example `"1/42"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.term.0, self.lsn.0)
    }
}

/// A position token that does not read as `"<term>/<lsn>"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position token {0:?}: expected \"<term>/<lsn>\", for example \"1/42\"")]
pub struct ParsePositionError(pub String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_string());
        let (term, lsn) = s.split_once('/').ok_or_else(err)?;
        let term = term.parse::<u64>().map_err(|_| err())?;
        let lsn = lsn.parse::<u64>().map_err(|_| err())?;
        Ok(Position::new(Term(term), Lsn(lsn)))
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_reads_back() {
        let p = Position::new(Term(3), Lsn(1234));
        assert_eq!(p.to_string(), "3/1234");
        assert_eq!("3/1234".parse::<Position>().unwrap(), p);
    }

    #[test]
    fn bad_tokens_are_refused() {
        for bad in ["", "3", "3/", "/4", "a/b", "1/2/3", "-1/2", "1/ 2"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn positions_order_by_lsn() {
        let a = Position::new(Term(2), Lsn(5));
        let b = Position::new(Term(1), Lsn(6));
        assert!(a < b);
        assert!(Position::ZERO < a);
    }

    proptest! {
        #[test]
        fn any_position_round_trips(term in any::<u64>(), lsn in any::<u64>()) {
            let p = Position::new(Term(term), Lsn(lsn));
            prop_assert_eq!(p.to_string().parse::<Position>().unwrap(), p);
        }
    }
}
