//! Lease arithmetic (DESIGN.md §4): how long the primary may keep accepting writes after a
//! renewal the Raft group committed ([`PrimaryLease`]), and how long everyone else must wait
//! before they may take its lease as over ([`LeaseConfig::expired_for_others`]). Time is an
//! input: every method takes the caller's monotonic `Instant`s and reads no clock.
//!
//! The safety argument. The primary counts its lease from the moment it *sent* the renewal, by
//! its own clock, so network and commit delay only shorten it. The Raft leader counts from the
//! moment it *saw* the renewal committed (or became leader), which is later in real time, by its
//! own clock, and waits `lease × (1 + clock_margin)`. If no clock runs faster than another by
//! more than the factor `1 + clock_margin` over a lease's length, the observer's wait ends after
//! the holder's lease has run out. The failover manager then adds a fixed gap
//! ([`SAFETY_GAP`]) before promoting, for the writer to see its lease end and stop.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Time between "an observer may consider the old lease over" and a promotion, at least: slack
/// for scheduling delays between the old primary's last check of its lease and its last action.
/// Correctness does not rest on it bounding a slow fsync: the old primary confirms a write only
/// if its lease still held once the write was durable (and, in semi-sync/sync, acknowledged by
/// its replicas); a confirmation that comes later is answered as an unknown outcome instead.
pub const SAFETY_GAP: Duration = Duration::from_millis(100);

/// The lease timings, validated once at start-up and passed in.
///
/// Invariants (checked by [`LeaseConfig::validate`]): `lease > 0`;
/// `3 × renew_interval <= lease`; `0 <= clock_margin < 1`;
/// `failover_timeout >= lease × (1 + clock_margin) + SAFETY_GAP`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LeaseConfig {
    /// How long a committed renewal lets the primary accept writes, counted from when it sent
    /// the renewal.
    pub lease: Duration,
    /// How much faster one node's monotonic clock may run than another's, as a fraction (0.1:
    /// at most 10 % over a lease's length).
    pub clock_margin: f64,
    /// Silence from the primary after which the failover manager promotes another node.
    pub failover_timeout: Duration,
    /// How often the primary sends a renewal.
    pub renew_interval: Duration,
}

impl Default for LeaseConfig {
    /// A failover well under 3 s: an 800 ms lease renewed every 200 ms (three renewals may fail
    /// or be slow before the lease runs out, so a brief hiccup does not stop writes); a 10 % clock
    /// margin (monotonic clocks of healthy machines drift by parts per million; 10 % also covers
    /// a VM paused and resumed mid-lease by a good deal); a failover timeout of 1 s, just over the
    /// 880 ms + 100 ms the rule needs. The promotion itself (ask the replicas, commit the new
    /// term) then takes a few round trips.
    fn default() -> LeaseConfig {
        LeaseConfig {
            lease: Duration::from_millis(800),
            clock_margin: 0.1,
            failover_timeout: Duration::from_millis(1000),
            renew_interval: Duration::from_millis(200),
        }
    }
}

/// Lease timings that disagree; the message names the setting to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseConfigError {
    /// A zero lease.
    #[error("the lease must be longer than zero")]
    ZeroLease,
    /// Renewals too rare for the lease.
    #[error(
        "the lease renew interval ({renew_interval:?}) must be at most a third of the lease ({lease:?}), so one lost renewal does not stop writes"
    )]
    RenewTooRare {
        /// The renew interval.
        renew_interval: Duration,
        /// The lease.
        lease: Duration,
    },
    /// A zero renew interval.
    #[error("the lease renew interval must be longer than zero")]
    ZeroRenewInterval,
    /// A clock margin out of range.
    #[error("the clock margin must be a fraction from 0 up to (not including) 1, not {0}")]
    BadClockMargin(f64),
    /// A failover that could start while the old primary may still accept writes.
    #[error(
        "the failover timeout ({failover_timeout:?}) must be at least {needed:?}: the lease ({lease:?}) times 1 + the clock margin ({clock_margin}), plus {SAFETY_GAP:?}, so the old primary has stopped before another is promoted"
    )]
    FailoverTooSoon {
        /// The failover timeout.
        failover_timeout: Duration,
        /// The least it may be.
        needed: Duration,
        /// The lease.
        lease: Duration,
        /// The clock margin.
        clock_margin: f64,
    },
}

impl LeaseConfig {
    /// Checks the invariants on the type.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.lease.is_zero() {
            return Err(LeaseConfigError::ZeroLease);
        }
        if self.renew_interval.is_zero() {
            return Err(LeaseConfigError::ZeroRenewInterval);
        }
        if self.renew_interval * 3 > self.lease {
            return Err(LeaseConfigError::RenewTooRare {
                renew_interval: self.renew_interval,
                lease: self.lease,
            });
        }
        if !(self.clock_margin.is_finite() && (0.0..1.0).contains(&self.clock_margin)) {
            return Err(LeaseConfigError::BadClockMargin(self.clock_margin));
        }
        let needed = self.others_wait() + SAFETY_GAP;
        if self.failover_timeout < needed {
            return Err(LeaseConfigError::FailoverTooSoon {
                failover_timeout: self.failover_timeout,
                needed,
                lease: self.lease,
                clock_margin: self.clock_margin,
            });
        }
        Ok(())
    }

    /// How long after seeing the latest renewal another node must wait, by its own clock,
    /// before the holder's lease is surely over: `lease × (1 + clock_margin)`, rounded up to the
    /// nanosecond.
    pub fn others_wait(&self) -> Duration {
        let nanos = self.lease.as_nanos() as f64 * (1.0 + self.clock_margin.max(0.0));
        Duration::from_nanos(nanos.ceil() as u64)
    }

    /// Whether a node that saw the latest renewal (or became Raft leader) at `observed_at`, by
    /// its own clock, may consider the holder's lease over at `now`.
    pub fn expired_for_others(&self, observed_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(observed_at) >= self.others_wait()
    }

    /// Whether the failover manager, which last heard from the primary at `observed_at`, should
    /// promote another node at `now` (`failover_timeout` has passed; it is never shorter than
    /// the lease rule by [`LeaseConfig::validate`]).
    pub fn failover_due(&self, observed_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(observed_at) >= self.failover_timeout.max(self.others_wait())
    }
}

/// The primary's side of its lease: until when it may accept writes.
///
/// Invariant: `until` only moves forward while the term lasts (a renewal answered late never
/// shortens a lease a later renewal granted); [`PrimaryLease::revoke`] ends it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryLease {
    lease: Duration,
    until: Option<Instant>,
}

impl PrimaryLease {
    /// No lease yet; renewals will hold for `lease`.
    pub fn new(lease: Duration) -> PrimaryLease {
        PrimaryLease { lease, until: None }
    }

    /// The Raft group committed the renewal this node sent at `sent_at` (its monotonic clock):
    /// the lease holds until `sent_at + lease`, or longer if a later renewal already said so.
    pub fn renewed(&mut self, sent_at: Instant) {
        let until = sent_at + self.lease;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// Ends the lease now (a newer term was seen, or the node steps down).
    pub fn revoke(&mut self) {
        self.until = None;
    }

    /// Whether the lease holds at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// How long the lease still holds at `now` (zero once over, or before the first renewal).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }

    /// When the lease runs out, if it was ever granted.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

/// The failover manager's memory of when it last heard from the primary, by its own monotonic
/// clock: the latest of when this process started watching, when the current primary (or term)
/// came into force here, and when a lease renewal *arrived in this node's control log*.
///
/// Why arrival and not application. A renewal is applied only once this node learns it is
/// committed, and when the primary that sent it also led the Raft group and died, that news
/// comes only from the next leader, an election later; counting from then would add a whole
/// failover timeout to every such failover. Arrival is safe: a renewal arrives after it was
/// sent, so the holder's lease (counted from the send) ends before `arrival + lease`; a renewal
/// that never commits extends nothing, so counting from its arrival only waits longer. A node
/// that becomes Raft leader holds every committed entry (Raft's leader completeness), so it saw
/// the latest committed renewal arrive — or restarted since, and counts from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySilence {
    since: Instant,
}

impl PrimarySilence {
    /// Starts watching at `now`: renewals before it are unknown, so silence counts from here.
    pub fn new(now: Instant) -> PrimarySilence {
        PrimarySilence { since: now }
    }

    /// The primary was heard from at `at`: a renewal arrived, or a new primary or term took
    /// effect. An older instant than one already heard changes nothing.
    pub fn heard(&mut self, at: Instant) {
        self.since = self.since.max(at);
    }

    /// When the primary was last heard from.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Whether the failover manager should promote another node at `now`.
    pub fn failover_due(&self, config: &LeaseConfig, now: Instant) -> bool {
        config.failover_due(self.since, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_valid_and_fail_over_well_under_three_seconds() {
        let c = LeaseConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.failover_timeout + c.renew_interval < Duration::from_secs(2));
        // 880 ms, rounded up to the nanosecond (never shorter than the rule).
        assert!(c.others_wait() >= ms(880) && c.others_wait() < ms(881));
    }

    #[test]
    fn disagreeing_timeouts_are_refused() {
        let ok = LeaseConfig::default();
        let e = LeaseConfig {
            failover_timeout: ms(880),
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(e, LeaseConfigError::FailoverTooSoon { needed, .. } if needed == ok.others_wait() + SAFETY_GAP)
        );
        assert!(e
            .to_string()
            .contains("the failover timeout (880ms) must be at least 980"));
        assert!(matches!(
            LeaseConfig {
                renew_interval: ms(400),
                ..ok
            }
            .validate(),
            Err(LeaseConfigError::RenewTooRare { .. })
        ));
        assert_eq!(
            LeaseConfig {
                renew_interval: ms(0),
                ..ok
            }
            .validate(),
            Err(LeaseConfigError::ZeroRenewInterval)
        );
        assert_eq!(
            LeaseConfig { lease: ms(0), ..ok }.validate(),
            Err(LeaseConfigError::ZeroLease)
        );
        for m in [-0.1, 1.0, f64::NAN] {
            assert!(matches!(
                LeaseConfig {
                    clock_margin: m,
                    ..ok
                }
                .validate(),
                Err(LeaseConfigError::BadClockMargin(_))
            ));
        }
    }

    #[test]
    fn the_lease_counts_from_the_send() {
        let t0 = Instant::now();
        let mut l = PrimaryLease::new(ms(1000));
        assert!(!l.holds(t0));
        assert_eq!(l.remaining(t0), Duration::ZERO);
        // Sent at t0, committed 300 ms later: 700 ms remain.
        l.renewed(t0);
        assert_eq!(l.remaining(t0 + ms(300)), ms(700));
        assert!(l.holds(t0 + ms(999)));
        assert!(!l.holds(t0 + ms(1000)));
        // A late answer to an older renewal does not shorten the lease.
        l.renewed(t0 + ms(500));
        l.renewed(t0 + ms(250));
        assert_eq!(l.until(), Some(t0 + ms(1500)));
        l.revoke();
        assert!(!l.holds(t0 + ms(600)));
    }

    #[test]
    fn silence_counts_from_the_latest_thing_heard() {
        let c = LeaseConfig::default();
        let start = Instant::now();
        let mut s = PrimarySilence::new(start);
        assert!(!s.failover_due(&c, start + ms(999)));
        assert!(s.failover_due(&c, start + ms(1000)));
        s.heard(start + ms(500));
        assert!(!s.failover_due(&c, start + ms(1400)));
        assert!(s.failover_due(&c, start + ms(1500)));
        // A renewal that arrived earlier (applied late) does not move it back.
        s.heard(start + ms(100));
        assert_eq!(s.since(), start + ms(500));
    }

    #[test]
    fn others_wait_for_the_margin_too() {
        let c = LeaseConfig::default();
        let seen = Instant::now();
        assert!(!c.expired_for_others(seen, seen + ms(879)));
        assert!(c.expired_for_others(seen, seen + ms(881)));
        assert!(!c.failover_due(seen, seen + ms(999)));
        assert!(c.failover_due(seen, seen + ms(1000)));
        // A clock that seems to go backwards is no time at all.
        assert!(!c.expired_for_others(seen + ms(5000), seen));
    }

    proptest! {
        /// Two clocks whose rates differ by at most the margin: whenever the observer says the
        /// lease is over, the holder no longer holds it.
        #[test]
        fn when_others_see_it_expired_the_holder_has_stopped(
            margin_pct in 0u64..50,
            lease_ms in 1u64..5000,
            holder_rate in 500u64..2000,
            faster in 0u64..=1000,
            observer_faster in any::<bool>(),
            sent_ticks in 0u64..1_000_000,
            delay_ticks in prop_oneof![0u64..1000, 0u64..5_000_000],
            jitter_ticks in prop_oneof![0u64..1000, 0u64..20_000_000],
            renewals in proptest::collection::vec(0u64..1_000_000, 0..4),
        ) {
            // Real time in ticks; each clock reads `rate` nanoseconds per tick. The observer's
            // rate is the holder's times a factor in [1/(1+m), 1+m].
            let m = margin_pct as f64 / 100.0;
            let f = 100 + faster % (margin_pct + 1);
            let observer_rate = if observer_faster {
                holder_rate * f / 100
            } else {
                (holder_rate * 100).div_ceil(f)
            };
            let epoch = Instant::now();
            let holder = |tick: u64| epoch + Duration::from_nanos(tick * holder_rate);
            let observer = |tick: u64| epoch + Duration::from_nanos(tick * observer_rate);
            let config = LeaseConfig {
                lease: ms(lease_ms),
                clock_margin: m,
                failover_timeout: ms(lease_ms) * 3,
                renew_interval: ms(lease_ms) / 4,
            };
            let mut lease = PrimaryLease::new(config.lease);
            // Earlier renewals, then the latest one, sent at `sent_ticks`, which the observer
            // sees committed `delay_ticks` later.
            for r in renewals {
                lease.renewed(holder(r.min(sent_ticks)));
            }
            lease.renewed(holder(sent_ticks));
            // From the first tick at which the observer says "expired", on.
            let observed = sent_ticks + delay_ticks;
            let wait_ticks = (config.others_wait().as_nanos() as u64).div_ceil(observer_rate);
            let now = observed + wait_ticks + jitter_ticks;
            prop_assert!(config.expired_for_others(observer(observed), observer(now)));
            prop_assert!(!lease.holds(holder(now)), "the holder still holds its lease");
            // Just before, the observer does not say so.
            if wait_ticks > 0 {
                let before = observed + wait_ticks - 1;
                prop_assert!(!config.expired_for_others(observer(observed), observer(before)));
            }
        }
    }
}
