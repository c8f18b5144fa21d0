//! The primary's decision when a replica says hello ([`decide_handshake`]): stream its log from
//! where the replica's ends, seed it from a snapshot, have it rewind records the primary never
//! had (an old primary coming back), or refuse it with a reason the replica can act on. Pure: the
//! runtime gathers both sides' positions and term histories, and performs the answer. Also node
//! name validation ([`check_node_name`]), which the handshake and the configuration share.

use serde::{Deserialize, Serialize};

use crate::{Lsn, Position, Term, TermHistory};

/// A node name that is not 1 to 64 letters, digits, `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNodeName {
    /// Empty or longer than 64 characters.
    #[error("the node name must be 1 to 64 characters")]
    Length,
    /// A character outside letters, digits, `-` and `_`.
    #[error("node name {0:?} may only hold letters, digits, '-' and '_'")]
    Characters(String),
}

impl From<InvalidNodeName> for String {
    fn from(e: InvalidNodeName) -> String {
        e.to_string()
    }
}

/// Checks a node name: 1 to 64 ASCII letters, digits, `-` and `_` (it appears in file names,
/// URLs and the sync set syntax).
pub fn check_node_name(name: &str) -> Result<(), InvalidNodeName> {
    if name.is_empty() || name.len() > 64 {
        return Err(InvalidNodeName::Length);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(InvalidNodeName::Characters(name.to_string()));
    }
    Ok(())
}

/// The primary's side of the handshake.
#[derive(Debug, Clone, Copy)]
pub struct PrimaryView<'a> {
    /// Its node name.
    pub name: &'a str,
    /// Its cluster id.
    pub cluster_id: &'a str,
    /// The term it is primary of.
    pub term: Term,
    /// Its last flushed record: the end of its log.
    pub flushed: Position,
    /// The first LSN its log still holds (retention may have deleted older segments).
    pub log_first: Lsn,
    /// Its term history.
    pub history: &'a TermHistory,
}

/// What the replica's hello says.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaView<'a> {
    /// Its node name.
    pub name: &'a str,
    /// The cluster id of its data.
    pub cluster_id: &'a str,
    /// The newest term it has seen.
    pub term: Term,
    /// Its last flushed record.
    pub last: Position,
    /// Its term history, when it sent one (older replicas do not).
    pub history: Option<&'a TermHistory>,
}

/// Why a replica is refused; mirrors the wire protocol's refusal codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseReason {
    /// The hello is unusable: an invalid name, this primary's own name, an inconsistent
    /// history.
    Protocol,
    /// The replica has seen a newer term: this node must not serve as primary.
    StaleTerm,
    /// The replica holds data of another cluster.
    WrongCluster,
    /// The replica holds records this primary does not, and rewinding them is not the answer.
    Diverged,
}

/// The primary's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "start")]
pub enum HandshakeDecision {
    /// The replica's log is a prefix of this one: send records from `from`.
    Stream {
        /// First LSN to send (the one after the replica's last).
        from: Lsn,
    },
    /// Seed the replica from a snapshot: it is empty, or its log ends where this log no longer
    /// reaches.
    Snapshot,
    /// The replica holds records this primary never had (an old primary coming back): it must
    /// undo its records after `to`, the last record both logs share, save them for the operator,
    /// and reconnect.
    Rewind {
        /// The divergence point.
        to: Position,
    },
    /// Refuse the replica.
    Refuse {
        /// Why, for the wire code.
        reason: RefuseReason,
        /// Why, for the operator.
        message: String,
    },
}

fn refuse(reason: RefuseReason, message: String) -> HandshakeDecision {
    HandshakeDecision::Refuse { reason, message }
}

/// Decides what the primary does with a replica's hello: refuse an invalid name, the primary's
/// own name, a replica of a newer term, a replica of another cluster that holds data; seed an
/// empty replica unless the primary has no records; then compare the logs.
///
/// With the replica's history, the logs are compared with [`TermHistory::divergence`]: a prefix
/// streams (or is seeded when this log no longer holds what follows it); records past the
/// divergence point are rewound when the replica can undo them and this log still holds what
/// follows (else seeded), unless they are of this primary's own term (then this primary lost
/// records it wrote, and the replica is refused as diverged). Without it, as before histories:
/// the replica's last record must be in this log with the same term, else it is refused as
/// diverged (or seeded when this log no longer holds that record).
pub fn decide_handshake(primary: &PrimaryView<'_>, replica: &ReplicaView<'_>) -> HandshakeDecision {
    let term = primary.term;
    let flushed = primary.flushed;
    let last = replica.last;
    if let Err(why) = check_node_name(replica.name) {
        return refuse(
            RefuseReason::Protocol,
            format!("invalid replica name: {why}"),
        );
    }
    if replica.name == primary.name {
        return refuse(
            RefuseReason::Protocol,
            format!(
                "the replica calls itself {}, which is this primary's own name",
                replica.name
            ),
        );
    }
    if replica.term > term {
        return refuse(
            RefuseReason::StaleTerm,
            format!(
                "replica {} has seen term {} but this primary is in term {term}: a newer primary exists, so this node must not serve as primary",
                replica.name, replica.term
            ),
        );
    }
    if replica.cluster_id != primary.cluster_id && last.lsn > Lsn::ZERO {
        return refuse(
            RefuseReason::WrongCluster,
            format!(
                "replica {} holds data of cluster {}, but this primary's cluster is {}: start it with an empty data directory to join this cluster",
                replica.name, replica.cluster_id, primary.cluster_id
            ),
        );
    }
    if last.lsn == Lsn::ZERO {
        return if flushed.lsn == Lsn::ZERO {
            HandshakeDecision::Stream { from: Lsn(1) }
        } else {
            HandshakeDecision::Snapshot
        };
    }
    match replica.history {
        Some(theirs) => compare_histories(primary, replica, theirs),
        None => compare_last_record(primary, replica),
    }
}

/// The decision from both term histories.
fn compare_histories(
    primary: &PrimaryView<'_>,
    replica: &ReplicaView<'_>,
    theirs: &TermHistory,
) -> HandshakeDecision {
    let last = replica.last;
    if let Some(t) = theirs.term_at(last.lsn, last.lsn) {
        if t != last.term {
            return refuse(
                RefuseReason::Protocol,
                format!(
                    "replica {} reports its last record as {last} but its term history gives lsn {} term {t}",
                    replica.name, last.lsn
                ),
            );
        }
    }
    let shared = primary
        .history
        .divergence(primary.flushed.lsn, theirs, last.lsn);
    if shared == last.lsn {
        return if last.lsn.next() < primary.log_first {
            HandshakeDecision::Snapshot
        } else {
            HandshakeDecision::Stream {
                from: last.lsn.next(),
            }
        };
    }
    let term = primary.term;
    if theirs.current_term().is_some_and(|t| t >= term) {
        return refuse(
            RefuseReason::Diverged,
            format!(
                "replica {} holds records of term {} after lsn {shared} that this primary of term {term} no longer has: this primary lost records it wrote, so its log must not overwrite them; repair this primary or promote the replica",
                replica.name, last.term
            ),
        );
    }
    // The replica keeps its record at `shared` and undoes what follows: it cannot undo its
    // snapshot base, and this log must still hold what it then streams.
    let can_undo = theirs.base().is_some_and(|b| shared >= b);
    let to_term = primary.history.term_at(shared, primary.flushed.lsn);
    match to_term {
        Some(t) if can_undo && shared.next() >= primary.log_first => HandshakeDecision::Rewind {
            to: Position::new(t, shared),
        },
        _ => HandshakeDecision::Snapshot,
    }
}

/// The decision from the replica's last record alone (a replica that sent no history).
fn compare_last_record(primary: &PrimaryView<'_>, replica: &ReplicaView<'_>) -> HandshakeDecision {
    let last = replica.last;
    let flushed = primary.flushed;
    if last.lsn > flushed.lsn {
        return refuse(
            RefuseReason::Diverged,
            format!(
                "replica {} has records up to {last} but this primary's log ends at {flushed}: it holds writes this primary never had",
                replica.name
            ),
        );
    }
    // The replica's last record must be in this log, with the same term, for its log to be a
    // prefix of this one; a record this log no longer holds cannot be checked: seed it.
    if last.lsn < primary.log_first {
        return HandshakeDecision::Snapshot;
    }
    match primary.history.term_at(last.lsn, flushed.lsn) {
        Some(t) if t == last.term => HandshakeDecision::Stream {
            from: last.lsn.next(),
        },
        Some(t) => refuse(
            RefuseReason::Diverged,
            format!(
                "replica {} has lsn {} in term {}, but this primary has it in term {t}: their logs diverged",
                replica.name, last.lsn, last.term
            ),
        ),
        None => HandshakeDecision::Snapshot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{brute_divergence, cluster};
    use proptest::prelude::*;

    fn pos(t: u64, l: u64) -> Position {
        Position::new(Term(t), Lsn(l))
    }

    fn h(entries: &[(u64, u64)]) -> TermHistory {
        TermHistory::from_entries(entries.iter().map(|&(t, s)| (Term(t), Lsn(s))).collect())
            .unwrap()
    }

    /// Primary n1 of cluster c1 in term 3, log 1..=100 (term 1 up to 49, term 3 from 50).
    fn primary(history: &TermHistory) -> PrimaryView<'_> {
        PrimaryView {
            name: "n1",
            cluster_id: "c1",
            term: Term(3),
            flushed: pos(3, 100),
            log_first: Lsn(1),
            history,
        }
    }

    fn replica(last: Position, history: Option<&TermHistory>) -> ReplicaView<'_> {
        ReplicaView {
            name: "n2",
            cluster_id: "c1",
            term: last.term,
            last,
            history,
        }
    }

    fn refused(d: HandshakeDecision) -> (RefuseReason, String) {
        match d {
            HandshakeDecision::Refuse { reason, message } => (reason, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn node_names_are_checked() {
        assert_eq!(check_node_name("n1-a_B"), Ok(()));
        assert_eq!(check_node_name(""), Err(InvalidNodeName::Length));
        assert_eq!(
            check_node_name(&"x".repeat(65)),
            Err(InvalidNodeName::Length)
        );
        let e = check_node_name("n 1").unwrap_err();
        assert_eq!(
            String::from(e),
            "node name \"n 1\" may only hold letters, digits, '-' and '_'"
        );
    }

    #[test]
    fn hellos_that_cannot_be_served_are_refused() {
        let ph = h(&[(1, 1), (3, 50)]);
        let p = primary(&ph);
        let (r, m) = refused(decide_handshake(
            &p,
            &ReplicaView {
                name: "bad name",
                ..replica(pos(3, 10), None)
            },
        ));
        assert_eq!(r, RefuseReason::Protocol);
        assert!(
            m.starts_with("invalid replica name: node name \"bad name\""),
            "{m}"
        );
        let (r, m) = refused(decide_handshake(
            &p,
            &ReplicaView {
                name: "n1",
                ..replica(pos(3, 10), None)
            },
        ));
        assert_eq!(r, RefuseReason::Protocol);
        assert!(m.contains("which is this primary's own name"));
        let (r, m) = refused(decide_handshake(&p, &replica(pos(4, 10), None)));
        assert_eq!(r, RefuseReason::StaleTerm);
        assert!(m.contains("has seen term 4 but this primary is in term 3: a newer primary exists"));
        let (r, m) = refused(decide_handshake(
            &p,
            &ReplicaView {
                cluster_id: "c2",
                ..replica(pos(3, 10), None)
            },
        ));
        assert_eq!(r, RefuseReason::WrongCluster);
        assert!(m.contains("holds data of cluster c2, but this primary's cluster is c1"));
    }

    #[test]
    fn empty_replicas_are_seeded_or_streamed_from_the_start() {
        let ph = h(&[(1, 1), (3, 50)]);
        let empty = TermHistory::new();
        // An empty replica of another cluster joins this one.
        let r = ReplicaView {
            cluster_id: "other",
            ..replica(Position::ZERO, Some(&empty))
        };
        assert_eq!(
            decide_handshake(&primary(&ph), &r),
            HandshakeDecision::Snapshot
        );
        let p = PrimaryView {
            flushed: Position::ZERO,
            history: &empty,
            ..primary(&ph)
        };
        assert_eq!(
            decide_handshake(&p, &r),
            HandshakeDecision::Stream { from: Lsn(1) }
        );
    }

    #[test]
    fn without_a_history_the_last_record_decides() {
        let ph = h(&[(1, 1), (3, 50)]);
        let p = primary(&ph);
        assert_eq!(
            decide_handshake(&p, &replica(pos(3, 60), None)),
            HandshakeDecision::Stream { from: Lsn(61) }
        );
        assert_eq!(
            decide_handshake(&p, &replica(pos(1, 49), None)),
            HandshakeDecision::Stream { from: Lsn(50) }
        );
        let (r, m) = refused(decide_handshake(&p, &replica(pos(3, 101), None)));
        assert_eq!(r, RefuseReason::Diverged);
        assert_eq!(m, "replica n2 has records up to 3/101 but this primary's log ends at 3/100: it holds writes this primary never had");
        let (r, m) = refused(decide_handshake(&p, &replica(pos(2, 60), None)));
        assert_eq!(r, RefuseReason::Diverged);
        assert_eq!(m, "replica n2 has lsn 60 in term 2, but this primary has it in term 3: their logs diverged");
        // Retention deleted the replica's last record: it cannot be checked, so seed.
        let p = PrimaryView {
            log_first: Lsn(61),
            ..primary(&ph)
        };
        assert_eq!(
            decide_handshake(&p, &replica(pos(3, 60), None)),
            HandshakeDecision::Snapshot
        );
    }

    #[test]
    fn with_histories_a_prefix_streams() {
        let ph = h(&[(1, 1), (3, 50)]);
        let p = primary(&ph);
        let rh = h(&[(1, 1), (3, 50)]);
        assert_eq!(
            decide_handshake(&p, &replica(pos(3, 70), Some(&rh))),
            HandshakeDecision::Stream { from: Lsn(71) }
        );
        // Streaming needs the next record, not the last one, in this log.
        let p2 = PrimaryView {
            log_first: Lsn(71),
            ..p
        };
        assert_eq!(
            decide_handshake(&p2, &replica(pos(3, 70), Some(&rh))),
            HandshakeDecision::Stream { from: Lsn(71) }
        );
        let p3 = PrimaryView {
            log_first: Lsn(72),
            ..p
        };
        assert_eq!(
            decide_handshake(&p3, &replica(pos(3, 70), Some(&rh))),
            HandshakeDecision::Snapshot
        );
        // A replica seeded from a snapshot at 3/60.
        let seeded = h(&[(3, 60)]);
        assert_eq!(
            decide_handshake(&p, &replica(pos(3, 80), Some(&seeded))),
            HandshakeDecision::Stream { from: Lsn(81) }
        );
    }

    #[test]
    fn an_old_primary_coming_back_rewinds_to_the_divergence_point() {
        // n2 was primary of term 2 from 40 and wrote up to 70; n1 had term 1 up to 49 and
        // became primary of term 3 at 50.
        let ph = h(&[(1, 1), (3, 50)]);
        let p = primary(&ph);
        let old = h(&[(1, 1), (2, 40)]);
        assert_eq!(
            decide_handshake(&p, &replica(pos(2, 70), Some(&old))),
            HandshakeDecision::Rewind { to: pos(1, 39) }
        );
        // Retention deleted what it would stream after the rewind: seed it instead.
        let p2 = PrimaryView {
            log_first: Lsn(41),
            ..p
        };
        assert_eq!(
            decide_handshake(&p2, &replica(pos(2, 70), Some(&old))),
            HandshakeDecision::Snapshot
        );
        // Diverged at its snapshot base: it cannot undo that, seed it.
        let seeded = h(&[(2, 45)]);
        assert_eq!(
            decide_handshake(&p, &replica(pos(2, 70), Some(&seeded))),
            HandshakeDecision::Snapshot
        );
        // Without a history, the same replica is refused as before.
        assert_eq!(
            refused(decide_handshake(&p, &replica(pos(2, 70), None))).0,
            RefuseReason::Diverged
        );
    }

    #[test]
    fn records_of_the_primarys_own_term_are_not_rewound() {
        // The replica has term-3 records up to 120 that this primary of term 3 lost.
        let ph = h(&[(1, 1), (3, 50)]);
        let p = primary(&ph);
        let rh = h(&[(1, 1), (3, 50)]);
        let (r, m) = refused(decide_handshake(&p, &replica(pos(3, 120), Some(&rh))));
        assert_eq!(r, RefuseReason::Diverged);
        assert!(m.contains("this primary lost records it wrote"), "{m}");
    }

    #[test]
    fn a_hello_that_contradicts_its_history_is_refused() {
        let ph = h(&[(1, 1), (3, 50)]);
        let rh = h(&[(1, 1)]);
        let (r, m) = refused(decide_handshake(
            &primary(&ph),
            &replica(pos(3, 60), Some(&rh)),
        ));
        assert_eq!(r, RefuseReason::Protocol);
        assert!(m.contains("its term history gives lsn 60 term 1"));
    }

    proptest! {
        /// Over random forked histories: Stream only when the replica's log is a prefix of the
        /// primary's, and Rewind exactly to the divergence point.
        #[test]
        fn stream_only_for_prefixes_and_rewind_to_the_divergence(
            nodes in cluster(),
            retained in 0u64..40,
            send_history in any::<bool>(),
        ) {
            for p in &nodes {
                for r in &nodes {
                    let ph = p.history();
                    let rh = r.history();
                    let last_p = p.last();
                    let flushed = Position::new(ph.term_at(last_p, last_p).unwrap_or_default(), last_p);
                    let last_r = r.last();
                    let last = Position::new(rh.term_at(last_r, last_r).unwrap_or_default(), last_r);
                    let primary = PrimaryView {
                        name: "p",
                        cluster_id: "c",
                        term: ph.current_term().unwrap_or(Term::FIRST),
                        flushed,
                        // A snapshot-seeded primary holds records after its base.
                        log_first: Lsn(p.base + u64::from(p.base > 1) + retained % 8),
                        history: &ph,
                    };
                    let hello = ReplicaView {
                        name: "r",
                        cluster_id: "c",
                        term: rh.current_term().unwrap_or_default(),
                        last,
                        history: send_history.then_some(&rh),
                    };
                    let shared = brute_divergence(p, r);
                    match decide_handshake(&primary, &hello) {
                        HandshakeDecision::Stream { from } => {
                            prop_assert_eq!(shared, last_r, "streamed to a replica that is no prefix");
                            prop_assert_eq!(from, last_r.next());
                            prop_assert!(from >= primary.log_first || last_r == Lsn::ZERO);
                        }
                        HandshakeDecision::Rewind { to } => {
                            prop_assert!(send_history);
                            prop_assert_eq!(to.lsn, shared);
                            prop_assert!(to.lsn < last_r);
                            prop_assert_eq!(Some(to.term.0), p.term_of(to.lsn.0));
                            prop_assert!(to.lsn.next() >= primary.log_first);
                        }
                        HandshakeDecision::Snapshot => {}
                        HandshakeDecision::Refuse { reason, .. } => {
                            // Refusals only for a newer term or logs that do not fit.
                            prop_assert!(
                                reason == RefuseReason::StaleTerm && hello.term > primary.term
                                    || reason == RefuseReason::Diverged && shared < last_r,
                                "refused {:?} with shared {} of {}", reason, shared, last_r
                            );
                        }
                    }
                }
            }
        }
    }
}
