//! The hybrid logical clock (Kulkarni et al., 2014) every multi-master record is stamped with:
//! close to physical time, yet strictly increasing on each node and past every timestamp the node
//! has seen from others, so "later" means the same on every node. Time is an input: the runtime
//! passes the physical clock's milliseconds, tests pass whatever they like.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An HLC timestamp: the physical milliseconds it is close to, and a counter that orders events
/// within one millisecond (or while the physical clock is behind). Ordered by both.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the largest physical time seen).
    pub wall_ms: u64,
    /// Orders events with the same `wall_ms`.
    pub logical: u32,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.logical)
    }
}

impl Hlc {
    /// The timestamp right after this one.
    fn next(self) -> Hlc {
        match self.logical.checked_add(1) {
            Some(logical) => Hlc {
                wall_ms: self.wall_ms,
                logical,
            },
            // 4 billion events in one millisecond: borrow the next one.
            None => Hlc {
                wall_ms: self.wall_ms + 1,
                logical: 0,
            },
        }
    }
}

/// Why a remote timestamp was not taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The remote clock is further ahead of this node's physical clock than allowed: taking it
    /// in would drag every later local timestamp that far into the future.
    #[error("a timestamp {ahead_ms} ms ahead of this node's clock (at most {max_ms} ms allowed): check the clocks (NTP)")]
    TooFarAhead {
        /// How far ahead it was.
        ahead_ms: u64,
        /// The allowed offset.
        max_ms: u64,
    },
}

/// One node's hybrid logical clock.
///
/// Invariant: every timestamp it hands out (from [`Clock::tick`] or [`Clock::observe`]) is
/// greater than every timestamp it handed out or observed before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    last: Hlc,
    max_offset_ms: u64,
}

impl Clock {
    /// A clock that refuses remote timestamps more than `max_offset_ms` ahead of physical time,
    /// starting after `last` (what the node stamped before it restarted).
    pub fn new(last: Hlc, max_offset_ms: u64) -> Clock {
        Clock {
            last,
            max_offset_ms,
        }
    }

    /// The last timestamp handed out or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The timestamp of a local event (a write) at physical time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            self.last.next()
        };
        self.last
    }

    /// Takes in `remote` (a record from another node) at physical time `now_ms`: afterwards the
    /// clock is past it. Answers the clock's new timestamp.
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> Result<Hlc, ClockError> {
        let ahead_ms = remote.wall_ms.saturating_sub(now_ms);
        if ahead_ms > self.max_offset_ms {
            return Err(ClockError::TooFarAhead {
                ahead_ms,
                max_ms: self.max_offset_ms,
            });
        }
        let last = self.last;
        let wall_ms = now_ms.max(last.wall_ms).max(remote.wall_ms);
        self.last = if wall_ms == last.wall_ms && wall_ms == remote.wall_ms {
            last.max(remote).next()
        } else if wall_ms == last.wall_ms {
            last.next()
        } else if wall_ms == remote.wall_ms {
            remote.next()
        } else {
            Hlc {
                wall_ms,
                logical: 0,
            }
        };
        Ok(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hlc(wall_ms: u64, logical: u32) -> Hlc {
        Hlc { wall_ms, logical }
    }

    #[test]
    fn follows_physical_time_and_counts_within_a_millisecond() {
        let mut c = Clock::new(Hlc::default(), 500);
        assert_eq!(c.tick(100), hlc(100, 0));
        assert_eq!(c.tick(100), hlc(100, 1));
        // The physical clock stepped back (NTP): the HLC does not.
        assert_eq!(c.tick(90), hlc(100, 2));
        assert_eq!(c.tick(101), hlc(101, 0));
    }

    #[test]
    fn a_remote_timestamp_moves_the_clock_past_it() {
        let mut c = Clock::new(Hlc::default(), 500);
        c.tick(100);
        assert_eq!(c.observe(hlc(300, 4), 120), Ok(hlc(300, 5)));
        assert_eq!(c.tick(130), hlc(300, 6), "local events come after it");
        assert_eq!(c.observe(hlc(200, 9), 400), Ok(hlc(400, 0)));
    }

    #[test]
    fn a_clock_running_far_ahead_is_refused_and_changes_nothing() {
        let mut c = Clock::new(hlc(100, 3), 500);
        assert_eq!(
            c.observe(hlc(10_000, 0), 1_000),
            Err(ClockError::TooFarAhead {
                ahead_ms: 9_000,
                max_ms: 500
            })
        );
        assert_eq!(c.last(), hlc(100, 3));
        assert!(c.observe(hlc(1_500, 0), 1_000).is_ok(), "within the offset");
    }

    #[test]
    fn the_counter_overflows_into_the_next_millisecond() {
        let mut c = Clock::new(hlc(7, u32::MAX), 0);
        assert_eq!(c.tick(7), hlc(8, 0));
    }

    proptest! {
        /// Whatever the physical clock does and whatever arrives, every timestamp handed out is
        /// greater than everything before it, and no further ahead of physical time than the
        /// largest accepted remote one.
        #[test]
        fn timestamps_only_grow(
            events in proptest::collection::vec((any::<bool>(), 0u64..2_000, 0u64..2_000, 0u32..4), 1..200)
        ) {
            let mut c = Clock::new(Hlc::default(), 300);
            let mut seen = Hlc::default();
            let mut max_physical = 0;
            for (remote, now, wall, logical) in events {
                max_physical = max_physical.max(now);
                let before = c.last();
                let got = if remote {
                    match c.observe(hlc(wall, logical), now) {
                        Ok(t) => {
                            prop_assert!(t > hlc(wall, logical));
                            seen = seen.max(hlc(wall, logical));
                            t
                        }
                        Err(_) => {
                            prop_assert_eq!(c.last(), before);
                            continue;
                        }
                    }
                } else {
                    c.tick(now)
                };
                prop_assert!(got > before);
                prop_assert!(got.wall_ms <= max_physical.max(seen.wall_ms) + 1);
            }
        }
    }
}
