//! What to do after one attempt, with no I/O: [`after_write`] retries a write only when it
//! provably did not take effect, [`after_read`] moves a read on to the next node whenever another
//! node might serve it (reads are idempotent), and [`backoff`] spaces write retries.

use std::time::Duration;

/// How one HTTP attempt ended, as far as the next step is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt<'a> {
    /// The connection could not be made: the request never left this process.
    NotSent,
    /// The request was (or may have been) sent and no complete answer came back: a timeout, a
    /// connection reset or closed mid-way.
    Lost,
    /// The node answered with this status and, for an error, the code of its error body (`None`
    /// when the body was not the API's error).
    Answered { status: u16, code: Option<&'a str> },
}

/// The step after a write attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteNext {
    /// It committed: read the answer.
    Done,
    /// It provably did not take effect and another node may take it: rediscover the primary and
    /// send it again.
    Rediscover,
    /// The node refused it with a definite answer: report that.
    Refused,
    /// It may or may not have committed: report that the outcome is unknown.
    Unknown,
}

/// 5xx codes whose transaction the API documents as settled: `unavailable` and `disk_full` kept
/// nothing, `sync_timeout` is committed on the primary (its message says so).
const SETTLED_5XX: [&str; 3] = ["unavailable", "disk_full", "sync_timeout"];

/// The step after a write attempt.
pub(crate) fn after_write(a: Attempt<'_>) -> WriteNext {
    match a {
        Attempt::NotSent => WriteNext::Rediscover,
        Attempt::Lost => WriteNext::Unknown,
        Attempt::Answered { status, .. } if (200..300).contains(&status) => WriteNext::Done,
        // A replica refuses a write before touching it.
        Attempt::Answered {
            status: 409,
            code: Some("not_primary"),
        } => WriteNext::Rediscover,
        Attempt::Answered {
            status: 500..=599,
            code,
        } => match code {
            Some(c) if SETTLED_5XX.contains(&c) => WriteNext::Refused,
            // `internal`, or a gateway's answer: nobody can say what happened.
            _ => WriteNext::Unknown,
        },
        Attempt::Answered { .. } => WriteNext::Refused,
    }
}

/// The step after a read attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadNext {
    /// Read the answer.
    Done,
    /// This node cannot serve it now; try the next one.
    TryNext,
    /// The read itself is refused (bad SQL, a write sent as a read): no node would serve it.
    Refused,
}

/// The step after a read attempt.
pub(crate) fn after_read(a: Attempt<'_>) -> ReadNext {
    match a {
        Attempt::NotSent | Attempt::Lost => ReadNext::TryNext,
        Attempt::Answered { status, .. } if (200..300).contains(&status) => ReadNext::Done,
        // `lagging`, `unavailable`, `not_caught_up`, or a node failing: another may serve it.
        Attempt::Answered {
            status: 500..=599, ..
        } => ReadNext::TryNext,
        Attempt::Answered {
            status: 409,
            code: Some("not_primary"),
        } => ReadNext::TryNext,
        Attempt::Answered { .. } => ReadNext::Refused,
    }
}

/// The pause before write retry number `retry` (0 for the first): 50 ms doubling up to 1 s.
pub(crate) fn backoff(retry: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1u64 << retry.min(5))).min(MAX_BACKOFF)
}

/// The longest pause between write retries: short, so a write resumes soon after a new primary
/// is promoted.
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// Whether a write that provably did not take effect is sent again: within `retries` retries,
/// or for as long as `failover_wait` has not passed since the write began.
pub(crate) fn retry_write(
    retry: u32,
    retries: u32,
    elapsed: Duration,
    failover_wait: Duration,
) -> bool {
    retry <= retries || elapsed < failover_wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16, code: &str) -> Attempt<'_> {
        Attempt::Answered {
            status,
            code: Some(code),
        }
    }

    #[test]
    fn a_write_is_retried_only_when_it_provably_did_not_take_effect() {
        assert_eq!(after_write(Attempt::NotSent), WriteNext::Rediscover);
        assert_eq!(
            after_write(answered(409, "not_primary")),
            WriteNext::Rediscover
        );
        assert_eq!(
            after_write(Attempt::Answered {
                status: 200,
                code: None
            }),
            WriteNext::Done
        );
    }

    #[test]
    fn a_write_whose_answer_was_lost_has_an_unknown_outcome() {
        assert_eq!(after_write(Attempt::Lost), WriteNext::Unknown);
        assert_eq!(after_write(answered(500, "internal")), WriteNext::Unknown);
        for status in [502, 503, 504] {
            assert_eq!(
                after_write(Attempt::Answered { status, code: None }),
                WriteNext::Unknown,
                "{status} from a gateway"
            );
        }
    }

    #[test]
    fn a_refused_write_is_reported_as_it_is() {
        assert_eq!(after_write(answered(400, "sql_error")), WriteNext::Refused);
        assert_eq!(
            after_write(answered(409, "constraint_violation")),
            WriteNext::Refused
        );
        assert_eq!(
            after_write(answered(503, "unavailable")),
            WriteNext::Refused
        );
        assert_eq!(after_write(answered(507, "disk_full")), WriteNext::Refused);
        // Committed on the primary, replication unconfirmed: never sent again.
        assert_eq!(
            after_write(answered(504, "sync_timeout")),
            WriteNext::Refused
        );
    }

    #[test]
    fn a_read_moves_on_when_another_node_may_serve_it() {
        for a in [
            Attempt::NotSent,
            Attempt::Lost,
            answered(503, "lagging"),
            answered(503, "unavailable"),
            answered(504, "not_caught_up"),
            answered(409, "not_primary"),
            answered(500, "internal"),
        ] {
            assert_eq!(after_read(a), ReadNext::TryNext, "{a:?}");
        }
        assert_eq!(after_read(answered(400, "sql_error")), ReadNext::Refused);
        assert_eq!(
            after_read(answered(400, "not_read_only")),
            ReadNext::Refused
        );
        assert_eq!(
            after_read(Attempt::Answered {
                status: 200,
                code: None
            }),
            ReadNext::Done
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(400));
        assert_eq!(backoff(4), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_write_retries_its_count_or_through_a_failover() {
        let s = Duration::from_secs;
        // The count alone.
        assert!(retry_write(3, 3, s(60), s(5)));
        assert!(!retry_write(4, 3, s(60), s(5)));
        // Past the count, while the failover wait lasts.
        assert!(retry_write(10, 3, s(4), s(5)));
        assert!(!retry_write(10, 3, s(5), s(5)));
        assert!(!retry_write(4, 3, s(0), s(0)));
    }
}
