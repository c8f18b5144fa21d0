//! Who may be promoted when the primary is gone (DESIGN.md §4): the failover manager gathers
//! what it learned of every member ([`Candidate`]) and [`choose_promotion`] picks the new
//! primary, or refuses when it cannot be sure that no acknowledged write would be lost.
//! [`force_promotion`] is the operator's override and says what may be lost;
//! [`switchover_ready`] tells a planned handover when the target has caught up.
//!
//! Rules: never a witness, never an unreachable node, never the old primary. `async`: the
//! reachable data node with the most up-to-date log. `semi-sync`/`sync`: only members of the
//! sync set; an acknowledged write was flushed on at least `n` of its `m` members, so when at
//! least `m − n + 1` of them are reachable one of those holds it, and the most up-to-date of
//! them holds every acknowledged write. With fewer reachable the choice is refused.
//!
//! "Most up-to-date" compares the last flushed record's term first, then its LSN (as Raft does):
//! a log whose last record has an older term may hold records the newer term superseded (an
//! old primary back before it rewound), so more of them proves nothing. Ties go to the sync
//! set's priority order (its listed order; for `*`, by name), then to the name.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::{CommitMode, Position, SyncSet};

/// What the failover manager learned of one member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Node name.
    pub name: String,
    /// Last record fsynced in its log (as it answered, or last reported when unreachable).
    pub flushed: Position,
    /// Last record applied to its SQLite.
    pub applied: Position,
    /// Whether it answered the failover manager.
    pub reachable: bool,
    /// A Raft voter with no data.
    pub witness: bool,
}

/// The node to promote, and why it is the right one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    /// The node to promote.
    pub name: String,
    /// Its flushed position: the new term starts after it.
    pub flushed: Position,
    /// Why this node, in words for the log and the status page.
    pub reason: String,
}

/// A promotion the operator forced, with what it may lose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedPromotion {
    /// The node to promote.
    pub name: String,
    /// Its flushed position.
    pub flushed: Position,
    /// The most up-to-date position any member was known to have (the old primary's last
    /// report included): records after `flushed` up to it may be lost.
    pub best_known: Position,
    /// Members of the sync set that could not be asked: in `semi-sync`/`sync`, writes they
    /// acknowledged may be lost.
    pub unreachable_sync_members: Vec<String>,
    /// What may be lost, in words.
    pub warning: String,
}

/// No promotion: why, and what would make one possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum PromotionRefused {
    /// No node may be promoted at all (the manager waits for one to become reachable).
    #[error("no node can be promoted: {why}")]
    NoCandidate {
        /// Why none, in words.
        why: String,
    },
    /// Too few sync-set members reachable to be sure the new primary holds every acknowledged
    /// write (the manager waits for more, or an operator forces a promotion).
    #[error(
        "only {reachable} of the {members} sync-set members are reachable, and {needed} are needed to be sure the new primary holds every acknowledged write ({mode} waits for {n} per write); wait for more to come back, or force a promotion and accept that acknowledged writes may be lost"
    )]
    NotEnoughSyncMembers {
        /// Members reachable.
        reachable: usize,
        /// Members needed: `members − n + 1`.
        needed: usize,
        /// Members of the sync set that hold data (the old primary left out).
        members: usize,
        /// Acknowledgements each write waited for.
        n: usize,
        /// The commit mode in force.
        mode: CommitMode,
    },
}

/// Picks the new primary when `old_primary` is gone, under `mode` and the sync set `sync`.
///
/// `candidates` must list every member of the cluster, reachable or not: for `*` the sync set
/// is every data member but the old primary, and a member left out would make the count of
/// reachable members look better than it is. Members a listed sync set names that are missing
/// from `candidates` count as unreachable.
pub fn choose_promotion(
    candidates: &[Candidate],
    mode: CommitMode,
    sync: &SyncSet,
    old_primary: &str,
) -> Result<Promotion, PromotionRefused> {
    let order = PriorityOrder::new(candidates, sync, old_primary);
    if mode == CommitMode::Async {
        let best = best_of(eligible(candidates, old_primary), &order).ok_or_else(|| {
            PromotionRefused::NoCandidate {
                why: format!("no reachable data node other than the old primary {old_primary}"),
            }
        })?;
        let reachable = eligible(candidates, old_primary).count();
        return Ok(Promotion {
            name: best.name.clone(),
            flushed: best.flushed,
            reason: format!(
                "{} has the most up-to-date log ({}) of the {reachable} reachable data nodes (async: writes the old primary had not sent may be lost)",
                best.name, best.flushed
            ),
        });
    }
    let members = order.members();
    if members.is_empty() {
        return Err(PromotionRefused::NoCandidate {
            why: format!(
                "the sync set {sync} has no data member other than the old primary {old_primary}"
            ),
        });
    }
    let reachable: Vec<&Candidate> = eligible(candidates, old_primary)
        .filter(|c| members.contains(&c.name.as_str()))
        .collect();
    let needed = (members.len() + 1).saturating_sub(sync.n).max(1);
    if reachable.len() < needed {
        return Err(PromotionRefused::NotEnoughSyncMembers {
            reachable: reachable.len(),
            needed,
            members: members.len(),
            n: sync.n,
            mode,
        });
    }
    let count = reachable.len();
    let best =
        best_of(reachable.into_iter(), &order).ok_or_else(|| PromotionRefused::NoCandidate {
            why: "no reachable member of the sync set".into(),
        })?;
    Ok(Promotion {
        name: best.name.clone(),
        flushed: best.flushed,
        reason: format!(
            "{} has the most up-to-date log ({}) of the {count} reachable sync-set members; with {count} of {} reachable and {} acknowledgements per write ({mode}), it holds every acknowledged write",
            best.name,
            best.flushed,
            members.len(),
            sync.n
        ),
    })
}

/// The operator's override: the most up-to-date reachable data node other than the old
/// primary, sync-set member or not — or the one the operator named, `target` — with what the
/// promotion may lose. Still never a witness, an unreachable node or the old primary.
pub fn force_promotion(
    candidates: &[Candidate],
    mode: CommitMode,
    sync: &SyncSet,
    old_primary: &str,
    target: Option<&str>,
) -> Result<ForcedPromotion, PromotionRefused> {
    let order = PriorityOrder::new(candidates, sync, old_primary);
    let best = match target {
        None => best_of(eligible(candidates, old_primary), &order).ok_or_else(|| {
            PromotionRefused::NoCandidate {
                why: format!("no reachable data node other than the old primary {old_primary}"),
            }
        })?,
        Some(t) => {
            let why = match candidates.iter().find(|c| c.name == t) {
                None => Some(format!("no member is called {t:?}")),
                Some(c) if c.witness => Some(format!("{t} is a witness: it holds no data")),
                Some(_) if t == old_primary => Some(format!("{t} is the primary already")),
                Some(c) if !c.reachable => Some(format!("{t} did not answer")),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Err(PromotionRefused::NoCandidate { why });
            }
            candidates
                .iter()
                .find(|c| c.name == t)
                .expect("checked above")
        }
    };
    let best_known = candidates
        .iter()
        .filter(|c| !c.witness)
        .map(|c| c.flushed)
        .max_by(up_to_date)
        .unwrap_or(best.flushed);
    let unreachable_sync_members: Vec<String> = if mode == CommitMode::Async {
        Vec::new()
    } else {
        order
            .members()
            .into_iter()
            .filter(|m| {
                !candidates
                    .iter()
                    .any(|c| c.name == *m && c.reachable && !c.witness)
            })
            .map(str::to_string)
            .collect()
    };
    let mut warning = format!("forced promotion of {} at {}", best.name, best.flushed);
    if up_to_date(&best_known, &best.flushed) == Ordering::Greater {
        warning.push_str(&format!(
            "; a member was known to have {best_known}, so records after {} may be lost",
            best.flushed
        ));
    }
    if !unreachable_sync_members.is_empty() {
        warning.push_str(&format!(
            "; sync-set members {} could not be asked, so writes acknowledged in {mode} may be lost",
            unreachable_sync_members.join(", ")
        ));
    }
    Ok(ForcedPromotion {
        name: best.name.clone(),
        flushed: best.flushed,
        best_known,
        unreachable_sync_members,
        warning,
    })
}

/// Whether a planned switchover may hand over: the target's flushed position is exactly the
/// primary's final flushed position after it stopped taking writes (same record, so nothing is
/// lost in any mode). A target past it, or with another term there, is not ready: its log does
/// not end where the primary's does.
pub fn switchover_ready(target_flushed: Position, primary_final: Position) -> bool {
    target_flushed == primary_final
}

/// Compares two flushed positions by how up to date their logs are: term first, then LSN.
fn up_to_date(a: &Position, b: &Position) -> Ordering {
    (a.term, a.lsn).cmp(&(b.term, b.lsn))
}

/// Reachable data nodes other than the old primary.
fn eligible<'a>(
    candidates: &'a [Candidate],
    old_primary: &'a str,
) -> impl Iterator<Item = &'a Candidate> + 'a {
    candidates
        .iter()
        .filter(move |c| c.reachable && !c.witness && c.name != old_primary)
}

/// The most up-to-date of `nodes`; ties by priority, then name.
fn best_of<'a>(
    nodes: impl Iterator<Item = &'a Candidate>,
    order: &PriorityOrder,
) -> Option<&'a Candidate> {
    nodes.min_by(|a, b| {
        up_to_date(&b.flushed, &a.flushed)
            .then_with(|| order.rank(&a.name).cmp(&order.rank(&b.name)))
            .then_with(|| a.name.cmp(&b.name))
    })
}

/// The sync set's data members (the old primary and witnesses left out), in priority order.
struct PriorityOrder {
    members: Vec<String>,
}

impl PriorityOrder {
    fn new(candidates: &[Candidate], sync: &SyncSet, old_primary: &str) -> PriorityOrder {
        let witness = |name: &str| candidates.iter().any(|c| c.name == name && c.witness);
        let members = match &sync.members {
            Some(listed) => listed
                .iter()
                .filter(|m| m.as_str() != old_primary && !witness(m))
                .cloned()
                .collect(),
            None => {
                let mut all: Vec<String> = candidates
                    .iter()
                    .filter(|c| !c.witness && c.name != old_primary)
                    .map(|c| c.name.clone())
                    .collect();
                all.sort();
                all.dedup();
                all
            }
        };
        PriorityOrder { members }
    }

    fn members(&self) -> Vec<&str> {
        self.members.iter().map(String::as_str).collect()
    }

    /// Position in the priority order; non-members after every member.
    fn rank(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m == name)
            .unwrap_or(self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lsn, Quorum, Term};
    use proptest::prelude::*;

    fn pos(t: u64, l: u64) -> Position {
        Position::new(Term(t), Lsn(l))
    }

    fn node(name: &str, flushed: Position, reachable: bool) -> Candidate {
        Candidate {
            name: name.into(),
            flushed,
            applied: flushed,
            reachable,
            witness: false,
        }
    }

    fn witness(name: &str) -> Candidate {
        Candidate {
            name: name.into(),
            flushed: pos(9, 999),
            applied: Position::ZERO,
            reachable: true,
            witness: true,
        }
    }

    fn set(s: &str) -> SyncSet {
        s.parse().unwrap()
    }

    #[test]
    fn async_picks_the_most_up_to_date_reachable_data_node() {
        let c = [
            node("n1", pos(2, 100), true),
            node("n2", pos(2, 90), true),
            node("n3", pos(2, 95), false),
            node("n4", pos(2, 80), true),
            witness("w"),
        ];
        let p = choose_promotion(&c, CommitMode::Async, &set("ANY 1 (*)"), "n1").unwrap();
        assert_eq!(p.name, "n2");
        assert_eq!(p.flushed, pos(2, 90));
        assert!(
            p.reason.contains("of the 2 reachable data nodes"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn a_newer_term_beats_more_records() {
        // n3 is an older primary back with records term 3 superseded.
        let c = [
            node("n1", pos(3, 120), false),
            node("n2", pos(3, 110), true),
            node("n3", pos(2, 150), true),
        ];
        let p = choose_promotion(&c, CommitMode::Async, &set("ANY 1 (*)"), "n1").unwrap();
        assert_eq!(p.name, "n2");
    }

    #[test]
    fn ties_follow_the_priority_order_then_the_name() {
        let c = [
            node("n1", pos(2, 100), false),
            node("a", pos(2, 90), true),
            node("n3", pos(2, 90), true),
            node("n2", pos(2, 90), true),
        ];
        let first = set("FIRST 1 (n3, n2)");
        assert_eq!(
            choose_promotion(&c, CommitMode::Async, &first, "n1")
                .unwrap()
                .name,
            "n3"
        );
        assert_eq!(
            choose_promotion(&c, CommitMode::SemiSync, &first, "n1")
                .unwrap()
                .name,
            "n3"
        );
        assert_eq!(
            choose_promotion(&c, CommitMode::Async, &set("ANY 1 (*)"), "n1")
                .unwrap()
                .name,
            "a"
        );
    }

    #[test]
    fn semi_sync_only_promotes_reachable_sync_members_when_enough_answer() {
        // ANY 2 of (n2, n3, n4): every acknowledged write is on two of them, so two reachable
        // suffice and one does not.
        let s = set("ANY 2 (n2, n3, n4)");
        let c = [
            node("n1", pos(2, 100), false),
            node("n2", pos(2, 90), true),
            node("n3", pos(2, 95), true),
            node("n4", pos(2, 99), false),
            node("n5", pos(2, 100), true),
            witness("w"),
        ];
        let p = choose_promotion(&c, CommitMode::SemiSync, &s, "n1").unwrap();
        assert_eq!(p.name, "n3");
        assert!(p.reason.contains("holds every acknowledged write"));
        let c2 = [
            node("n1", pos(2, 100), false),
            node("n2", pos(2, 90), true),
            node("n3", pos(2, 95), false),
            node("n5", pos(2, 100), true),
        ];
        let e = choose_promotion(&c2, CommitMode::Sync, &s, "n1").unwrap_err();
        assert_eq!(
            e,
            PromotionRefused::NotEnoughSyncMembers {
                reachable: 1,
                needed: 2,
                members: 3,
                n: 2,
                mode: CommitMode::Sync
            }
        );
        assert!(e.to_string().contains("only 1 of the 3 sync-set members"));
    }

    #[test]
    fn the_old_primary_does_not_count_in_the_sync_set() {
        // FIRST 1 (n1, n2, n3) with n1 primary: its replicas n2, n3 acknowledged, one each.
        let s = set("FIRST 1 (n1, n2, n3)");
        let c = [
            node("n1", pos(2, 100), true),
            node("n2", pos(2, 90), false),
            node("n3", pos(2, 95), false),
        ];
        assert!(matches!(
            choose_promotion(&c, CommitMode::SemiSync, &s, "n1"),
            Err(PromotionRefused::NotEnoughSyncMembers {
                members: 2,
                needed: 2,
                ..
            })
        ));
        // `*`: every data member but the old primary.
        let c = [
            node("n1", pos(2, 100), true),
            node("n2", pos(2, 90), true),
            node("n3", pos(2, 95), false),
            witness("w"),
        ];
        assert_eq!(
            choose_promotion(&c, CommitMode::SemiSync, &set("ANY 2 (*)"), "n1")
                .unwrap()
                .name,
            "n2"
        );
    }

    #[test]
    fn nobody_to_promote() {
        let c = [node("n1", pos(2, 100), true), witness("w")];
        let e = choose_promotion(&c, CommitMode::Async, &set("ANY 1 (*)"), "n1").unwrap_err();
        assert!(e
            .to_string()
            .contains("no reachable data node other than the old primary n1"));
        let e = choose_promotion(&c, CommitMode::SemiSync, &set("ANY 1 (n1, w)"), "n1");
        assert!(matches!(e, Err(PromotionRefused::NoCandidate { .. })));
        assert!(force_promotion(&c, CommitMode::SemiSync, &set("ANY 1 (*)"), "n1", None).is_err());
    }

    #[test]
    fn a_forced_promotion_says_what_may_be_lost() {
        let s = set("ANY 1 (n2, n3)");
        let c = [
            node("n1", pos(2, 100), false),
            node("n2", pos(2, 95), false),
            node("n3", pos(2, 80), false),
            node("n4", pos(2, 90), true),
        ];
        assert!(choose_promotion(&c, CommitMode::SemiSync, &s, "n1").is_err());
        let f = force_promotion(&c, CommitMode::SemiSync, &s, "n1", None).unwrap();
        assert_eq!(f.name, "n4");
        assert_eq!(f.best_known, pos(2, 100));
        assert_eq!(f.unreachable_sync_members, vec!["n2", "n3"]);
        assert!(
            f.warning.contains("records after 2/90 may be lost"),
            "{}",
            f.warning
        );
        assert!(f.warning.contains("n2, n3 could not be asked"));
        // Nothing known beyond it, async: nothing to warn of.
        let c = [node("n1", pos(2, 90), false), node("n4", pos(2, 90), true)];
        let f = force_promotion(&c, CommitMode::Async, &s, "n1", None).unwrap();
        assert_eq!(f.warning, "forced promotion of n4 at 2/90");
    }

    #[test]
    fn a_forced_promotion_of_a_named_node_checks_it_and_warns_of_a_better_one() {
        let s = set("ANY 1 (n2, n3)");
        let c = [
            node("n1", pos(2, 100), false),
            node("n2", pos(2, 95), true),
            node("n3", pos(2, 80), true),
            node("n4", pos(2, 90), false),
            witness("w"),
        ];
        let f = force_promotion(&c, CommitMode::SemiSync, &s, "n1", Some("n3")).unwrap();
        assert_eq!(f.name, "n3");
        assert!(
            f.warning.contains("records after 2/80 may be lost"),
            "{}",
            f.warning
        );
        for (t, why) in [
            ("n9", "no member is called"),
            ("w", "is a witness"),
            ("n1", "is the primary already"),
            ("n4", "did not answer"),
        ] {
            let e = force_promotion(&c, CommitMode::SemiSync, &s, "n1", Some(t)).unwrap_err();
            assert!(e.to_string().contains(why), "{t}: {e}");
        }
    }

    #[test]
    fn switchover_waits_for_the_exact_final_position() {
        assert!(switchover_ready(pos(2, 100), pos(2, 100)));
        assert!(!switchover_ready(pos(2, 99), pos(2, 100)));
        assert!(!switchover_ready(pos(1, 100), pos(2, 100)));
        assert!(switchover_ready(Position::ZERO, Position::ZERO));
    }

    /// The n members (of m) that acknowledged a write, chosen by `seed`.
    fn subset(m: usize, n: usize, seed: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..m).collect();
        idx.sort_by_key(|&i| {
            (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_mul(0xBF58_476D_1CE4_E5B9)
        });
        idx.truncate(n);
        idx
    }

    proptest! {
        /// Whatever was acknowledged and whoever is reachable: a promotion in semi-sync or sync
        /// only ever picks a node that holds every acknowledged write.
        #[test]
        fn a_promoted_node_holds_every_acknowledged_write(
            m in 1usize..6,
            n_pick in 0usize..6,
            any_quorum in any::<bool>(),
            star in any::<bool>(),
            sync_mode in any::<bool>(),
            len in 1u64..50,
            writes in proptest::collection::vec((1u64..50, any::<u64>()), 0..12),
            extra in proptest::collection::vec(0u64..50, 6),
            reachable in proptest::collection::vec(any::<bool>(), 6),
            old_reachable in any::<bool>(),
        ) {
            let n = 1 + n_pick % m;
            let names: Vec<String> = (0..m).map(|i| format!("r{i}")).collect();
            let mut flushed: Vec<u64> = (0..m).map(|i| extra[i] % (len + 1)).collect();
            let mut acked = Vec::new();
            for (lsn, seed) in writes {
                let lsn = 1 + lsn % len;
                for i in subset(m, n, seed) {
                    flushed[i] = flushed[i].max(lsn);
                }
                acked.push(lsn);
            }
            let term = 3;
            let mut candidates: Vec<Candidate> = (0..m)
                .map(|i| node(&names[i], pos(term, flushed[i]), reachable[i]))
                .collect();
            // Tempting but ineligible: the old primary (which has everything), a witness, and
            // (for a listed set) a replica outside the set that is ahead of everyone.
            candidates.push(node("old", pos(term, len), old_reachable));
            candidates.push(witness("w"));
            let mut listed = names.clone();
            listed.push("old".into());
            if !star {
                candidates.push(node("outside", pos(term, len), true));
            }
            let sync = SyncSet {
                quorum: if any_quorum { Quorum::Any } else { Quorum::First },
                n,
                members: (!star).then_some(listed),
            };
            let mode = if sync_mode { CommitMode::Sync } else { CommitMode::SemiSync };
            let reachable_members = (0..m).filter(|&i| reachable[i]).count();
            match choose_promotion(&candidates, mode, &sync, "old") {
                Ok(p) => {
                    let i = names.iter().position(|x| *x == p.name);
                    prop_assert!(i.is_some(), "promoted {} outside the sync set", p.name);
                    let i = i.unwrap();
                    prop_assert!(reachable[i]);
                    for &w in &acked {
                        prop_assert!(flushed[i] >= w, "{} at {} lacks acknowledged {}", p.name, flushed[i], w);
                    }
                }
                Err(PromotionRefused::NotEnoughSyncMembers { reachable, needed, members, .. }) => {
                    prop_assert_eq!(members, m);
                    prop_assert_eq!(reachable, reachable_members);
                    prop_assert_eq!(needed, m - n + 1);
                    prop_assert!(reachable < needed);
                }
                Err(e) => prop_assert!(false, "unexpected refusal {e}"),
            }
        }

        /// Async and forced promotions pick an eligible node no other eligible node beats.
        #[test]
        fn async_picks_an_eligible_node_nobody_beats(
            nodes in proptest::collection::vec((1u64..4, 0u64..30, any::<bool>(), any::<bool>()), 1..7),
        ) {
            let candidates: Vec<Candidate> = nodes
                .iter()
                .enumerate()
                .map(|(i, &(t, l, r, w))| Candidate { witness: w, ..node(&format!("n{i}"), pos(t, l), r) })
                .collect();
            let sync = set("ANY 1 (*)");
            let chosen = choose_promotion(&candidates, CommitMode::Async, &sync, "n0");
            let forced = force_promotion(&candidates, CommitMode::Async, &sync, "n0", None);
            let eligible: Vec<&Candidate> = candidates.iter().filter(|c| c.reachable && !c.witness && c.name != "n0").collect();
            match (chosen, forced) {
                (Ok(p), Ok(f)) => {
                    prop_assert_eq!(&p.name, &f.name);
                    let c = eligible.iter().find(|c| c.name == p.name);
                    prop_assert!(c.is_some());
                    for o in &eligible {
                        prop_assert!((o.flushed.term, o.flushed.lsn) <= (p.flushed.term, p.flushed.lsn));
                    }
                }
                (Err(_), Err(_)) => prop_assert!(eligible.is_empty()),
                (a, b) => prop_assert!(false, "choose {a:?} but force {b:?}"),
            }
        }
    }
}
