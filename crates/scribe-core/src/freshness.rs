//! [`Freshness`]: how stale a replica's reads may be (the `max_lag` bound of stale reads,
//! DESIGN.md §5), judged from the primary's heartbeats. Pure: the follower feeds in each
//! heartbeat and each applied batch with the time it happened, and asks for the lag with the
//! current time and positions.

use std::time::{Duration, Instant};

use crate::Lsn;

/// A replica's knowledge of how far behind its primary it is.
///
/// A replica is fresh (lag zero) while the primary's latest heartbeat is at most three heartbeat
/// intervals old and the replica has applied both the flushed position that heartbeat carried and
/// everything it has received. Otherwise its lag is the time since it last knew itself caught up
/// — the arrival of a heartbeat whose position it had applied (possibly only later, when records
/// queued ahead of it were applied) — so a replica cut off from its primary, or catching up,
/// ages; and unknown (`None`) if it never knew. It can understate by the time that heartbeat
/// spent in transit.
///
/// Invariant: `caught_up_at`, when set, is the arrival time of a heartbeat whose flushed position
/// was applied; it only moves forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    interval: Duration,
    /// When this replica last knew it had applied everything the primary had flushed.
    caught_up_at: Option<Instant>,
    /// The primary's last heartbeat on this connection: its flushed position, and when it came.
    heartbeat: Option<(Lsn, Instant)>,
}

impl Freshness {
    /// Nothing known yet, for a primary that sends a heartbeat every `heartbeat_interval`.
    pub fn new(heartbeat_interval: Duration) -> Freshness {
        Freshness {
            interval: heartbeat_interval,
            caught_up_at: None,
            heartbeat: None,
        }
    }

    /// A heartbeat carrying the primary's `flushed` position arrived at `now`, when this replica
    /// had applied up to `applied`.
    pub fn heartbeat(&mut self, flushed: Lsn, applied: Lsn, now: Instant) {
        self.heartbeat = Some((flushed, now));
        self.applied(applied);
    }

    /// This replica has applied up to `applied`: if that covers the latest heartbeat's position,
    /// it knows itself caught up as of that heartbeat's arrival.
    pub fn applied(&mut self, applied: Lsn) {
        if let Some((flushed, at)) = self.heartbeat {
            if applied >= flushed && self.caught_up_at.is_none_or(|t| t < at) {
                self.caught_up_at = Some(at);
            }
        }
    }

    /// A new connection: freshness is known again only from its heartbeats. When it last knew
    /// itself caught up is kept, so the lag goes on ageing meanwhile.
    pub fn reset(&mut self) {
        self.heartbeat = None;
    }

    /// How stale reads may be at `now`, with `applied` applied and `received` received (records
    /// received and not applied yet mean behind, whatever the last heartbeat said); `None` when
    /// unknown.
    pub fn lag(&self, applied: Lsn, received: Lsn, now: Instant) -> Option<Duration> {
        match self.heartbeat {
            Some((flushed, at))
                if applied >= flushed.max(received)
                    && now.saturating_duration_since(at) <= self.interval * 3 =>
            {
                Some(Duration::ZERO)
            }
            _ => self.caught_up_at.map(|t| now.saturating_duration_since(t)),
        }
    }

    /// When this replica last knew itself caught up, if ever.
    pub fn caught_up_at(&self) -> Option<Instant> {
        self.caught_up_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(200);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn never_caught_up_is_unknown() {
        let t0 = Instant::now();
        let mut f = Freshness::new(HB);
        assert_eq!(f.lag(Lsn(0), Lsn(0), t0), None);
        // A heartbeat of a position not yet applied: still unknown.
        f.heartbeat(Lsn(10), Lsn(3), t0);
        assert_eq!(f.lag(Lsn(3), Lsn(10), t0 + ms(50)), None);
    }

    #[test]
    fn a_replica_with_everything_applied_is_fresh_until_heartbeats_stop() {
        let t0 = Instant::now();
        let mut f = Freshness::new(HB);
        f.heartbeat(Lsn(10), Lsn(10), t0);
        assert_eq!(f.lag(Lsn(10), Lsn(10), t0 + ms(600)), Some(Duration::ZERO));
        // Cut off: after three intervals without a heartbeat it ages from the last one.
        assert_eq!(f.lag(Lsn(10), Lsn(10), t0 + ms(601)), Some(ms(601)));
        assert_eq!(f.lag(Lsn(10), Lsn(10), t0 + ms(5000)), Some(ms(5000)));
    }

    #[test]
    fn catching_up_a_backlog_counts_from_the_last_caught_up_heartbeat() {
        let t0 = Instant::now();
        let mut f = Freshness::new(HB);
        f.heartbeat(Lsn(10), Lsn(10), t0);
        // The primary moves on; the replica is behind.
        f.heartbeat(Lsn(50), Lsn(10), t0 + ms(200));
        assert_eq!(f.lag(Lsn(10), Lsn(50), t0 + ms(300)), Some(ms(300)));
        // It applies the backlog after the heartbeat: caught up as of that heartbeat's arrival.
        f.applied(Lsn(50));
        assert_eq!(f.caught_up_at(), Some(t0 + ms(200)));
        assert_eq!(f.lag(Lsn(50), Lsn(50), t0 + ms(700)), Some(Duration::ZERO));
        assert_eq!(f.lag(Lsn(50), Lsn(50), t0 + ms(900)), Some(ms(700)));
    }

    #[test]
    fn received_but_unapplied_records_mean_behind() {
        let t0 = Instant::now();
        let mut f = Freshness::new(HB);
        f.heartbeat(Lsn(10), Lsn(10), t0);
        // Records 11..=12 arrived after the heartbeat and are not applied yet.
        assert_eq!(f.lag(Lsn(10), Lsn(12), t0 + ms(100)), Some(ms(100)));
        assert_eq!(f.lag(Lsn(12), Lsn(12), t0 + ms(100)), Some(Duration::ZERO));
    }

    #[test]
    fn a_new_connection_needs_a_new_heartbeat() {
        let t0 = Instant::now();
        let mut f = Freshness::new(HB);
        f.heartbeat(Lsn(10), Lsn(10), t0);
        f.reset();
        // Not fresh until the new connection's first heartbeat, but the age is kept.
        assert_eq!(f.lag(Lsn(10), Lsn(10), t0 + ms(100)), Some(ms(100)));
        f.heartbeat(Lsn(10), Lsn(10), t0 + ms(150));
        assert_eq!(f.lag(Lsn(10), Lsn(10), t0 + ms(160)), Some(Duration::ZERO));
        // An older heartbeat applied late never moves the caught-up time back.
        f.applied(Lsn(10));
        assert_eq!(f.caught_up_at(), Some(t0 + ms(150)));
    }
}
