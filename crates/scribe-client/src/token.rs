//! [`Token`]: the newest position a handle has seen — the position token that makes its reads see
//! its writes. It only moves forward: merging an older position changes nothing.

use std::sync::{Arc, Mutex, PoisonError};

use scribe_core::Position;

/// The newer of the two: what a token holds after it saw `seen`.
pub(crate) fn merge(current: Option<Position>, seen: Position) -> Position {
    match current {
        Some(c) if c >= seen => c,
        _ => seen,
    }
}

/// A shared, forward-only position token. Clones share it.
///
/// Invariant: the held position never decreases.
#[derive(Debug, Clone, Default)]
pub(crate) struct Token(Arc<Mutex<Option<Position>>>);

impl Token {
    /// The newest position seen, if any.
    pub(crate) fn get(&self) -> Option<Position> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in a position an answer carried.
    pub(crate) fn observe(&self, seen: Position) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *held = Some(merge(*held, seen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scribe_core::{Lsn, Term};

    fn p(term: u64, lsn: u64) -> Position {
        Position::new(Term(term), Lsn(lsn))
    }

    #[test]
    fn a_token_only_moves_forward() {
        let t = Token::default();
        assert_eq!(t.get(), None);
        t.observe(p(1, 5));
        assert_eq!(t.get(), Some(p(1, 5)));
        t.observe(p(1, 3));
        assert_eq!(t.get(), Some(p(1, 5)));
        t.observe(p(1, 9));
        assert_eq!(t.get(), Some(p(1, 9)));
    }

    #[test]
    fn clones_share_the_token() {
        let a = Token::default();
        let b = a.clone();
        b.observe(p(1, 2));
        assert_eq!(a.get(), Some(p(1, 2)));
        let separate = Token::default();
        assert_eq!(separate.get(), None);
    }

    #[test]
    fn merging_is_commutative_idempotent_and_keeps_the_newest() {
        let all = [p(0, 0), p(1, 1), p(2, 1), p(1, 2), p(3, 7)];
        for &a in &all {
            assert_eq!(merge(Some(a), a), a);
            assert_eq!(merge(None, a), a);
            for &b in &all {
                assert_eq!(merge(Some(a), b), merge(Some(b), a));
                let m = merge(Some(a), b);
                assert!(m >= a && m >= b);
                for &c in &all {
                    // Any order of observations ends at the same token.
                    assert_eq!(
                        merge(Some(merge(Some(a), b)), c),
                        merge(Some(merge(Some(c), b)), a)
                    );
                }
            }
        }
    }
}
