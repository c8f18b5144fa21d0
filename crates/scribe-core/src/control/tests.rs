//! Each command's rules, and a property: any sequence of commands keeps the invariants.

use proptest::prelude::*;

use super::*;

fn member(name: &str, witness: bool) -> Member {
    Member {
        name: name.into(),
        peer_addr: format!(
            "127.0.0.1:{}",
            7000 + name.len() * 10 + name.as_bytes()[1] as usize
        ),
        http_url: None,
        witness,
    }
}

/// n1, n2, n3 with n1 primary in term 1; w is a witness.
fn bootstrapped() -> ControlState {
    let mut s = ControlState::default();
    let got = s
        .apply(
            ControlCommand::Bootstrap {
                cluster_id: "c1".into(),
                members: vec![
                    member("n1", false),
                    member("n2", false),
                    member("n3", false),
                    member("w9", true),
                ],
                primary: "n1".into(),
            },
            1_000,
        )
        .unwrap();
    assert_eq!(
        got,
        Applied::Bootstrapped {
            primary: "n1".into(),
            term: Term(1)
        }
    );
    s
}

fn promote(name: &str, expected: u64, kind: FailoverKind) -> ControlCommand {
    ControlCommand::Promote {
        name: name.into(),
        expected_term: Term(expected),
        reason: "test".into(),
        kind,
        from: None,
        lease_renewals: None,
    }
}

#[test]
fn bootstrap_sets_term_one_primary_lease_and_history() {
    let s = bootstrapped();
    assert_eq!(s.term, Term(1));
    assert_eq!(s.primary.as_deref(), Some("n1"));
    assert_eq!(s.lease.as_ref().unwrap().holder, "n1");
    assert_eq!(s.history.len(), 1);
    assert_eq!(s.history[0].kind, FailoverKind::Bootstrap);
    assert_eq!(s.history[0].at_unix_ms, 1_000);
    s.check_invariants().unwrap();
}

#[test]
fn bootstrap_refuses_a_second_time_a_witness_primary_and_duplicates() {
    let mut s = bootstrapped();
    let again = ControlCommand::Bootstrap {
        cluster_id: "c2".into(),
        members: vec![member("n1", false)],
        primary: "n1".into(),
    };
    let e = s.apply(again, 2).unwrap_err();
    assert!(e.to_string().contains("already bootstrapped"), "{e}");
    assert_eq!(s.cluster_id, "c1");

    let mut fresh = ControlState::default();
    let e = fresh
        .apply(
            ControlCommand::Bootstrap {
                cluster_id: "c".into(),
                members: vec![member("n1", false), member("w9", true)],
                primary: "w9".into(),
            },
            0,
        )
        .unwrap_err();
    assert_eq!(e, ControlError::Witness { name: "w9".into() });
    let e = fresh
        .apply(
            ControlCommand::Bootstrap {
                cluster_id: "c".into(),
                members: vec![member("n1", false), member("n1", false)],
                primary: "n1".into(),
            },
            0,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("peer address") || e.to_string().contains("twice"),
        "{e}"
    );
    assert_eq!(
        fresh,
        ControlState::default(),
        "a refused command changes nothing"
    );
}

#[test]
fn commands_before_bootstrap_are_refused() {
    let mut s = ControlState::default();
    for cmd in [
        ControlCommand::RenewLease {
            holder: "n1".into(),
            term: Term(0),
        },
        promote("n1", 0, FailoverKind::Forced),
        ControlCommand::AddMember(member("n1", false)),
    ] {
        assert_eq!(s.apply(cmd, 0), Err(ControlError::NotBootstrapped));
    }
}

#[test]
fn only_the_current_primary_renews_its_lease() {
    let mut s = bootstrapped();
    let renew = |h: &str, t: u64| ControlCommand::RenewLease {
        holder: h.into(),
        term: Term(t),
    };
    assert_eq!(
        s.apply(renew("n1", 1), 5).unwrap(),
        Applied::LeaseRenewed {
            term: Term(1),
            renewals: 1
        }
    );
    let e = s.apply(renew("n2", 1), 6).unwrap_err();
    assert!(matches!(e, ControlError::NotLeaseHolder { .. }), "{e}");
    s.apply(promote("n2", 1, FailoverKind::Automatic), 7)
        .unwrap();
    // The deposed primary still believes it holds term 1: refused, so it stops.
    let e = s.apply(renew("n1", 1), 8).unwrap_err();
    assert!(e.to_string().contains("deposed primary"), "{e}");
    let lease = s.lease.clone().unwrap();
    assert_eq!(
        (lease.holder.as_str(), lease.term, lease.renewals),
        ("n2", Term(2), 0)
    );
    assert_eq!(
        s.apply(renew("n2", 2), 9).unwrap(),
        Applied::LeaseRenewed {
            term: Term(2),
            renewals: 1
        }
    );
}

#[test]
fn of_two_concurrent_promotions_only_the_first_wins() {
    let mut s = bootstrapped();
    assert_eq!(
        s.apply(promote("n2", 1, FailoverKind::Automatic), 10)
            .unwrap(),
        Applied::Promoted {
            primary: "n2".into(),
            term: Term(2)
        }
    );
    let e = s
        .apply(promote("n3", 1, FailoverKind::Automatic), 11)
        .unwrap_err();
    assert_eq!(
        e,
        ControlError::StaleTerm {
            expected: Term(1),
            current: Term(2)
        }
    );
    assert_eq!(s.primary.as_deref(), Some("n2"));
    let last = s.history.back().unwrap();
    assert_eq!(
        (last.from.as_deref(), last.to.as_str(), last.term),
        (Some("n1"), "n2", Term(2))
    );
}

#[test]
fn promote_refuses_witnesses_unknown_members_and_the_primary() {
    let mut s = bootstrapped();
    assert_eq!(
        s.apply(promote("w9", 1, FailoverKind::Forced), 0),
        Err(ControlError::Witness { name: "w9".into() })
    );
    assert_eq!(
        s.apply(promote("zz", 1, FailoverKind::Forced), 0),
        Err(ControlError::UnknownMember { name: "zz".into() })
    );
    assert!(matches!(
        s.apply(promote("n1", 1, FailoverKind::Forced), 0),
        Err(ControlError::AlreadyPrimary { .. })
    ));
    let stale_view = ControlCommand::Promote {
        name: "n2".into(),
        expected_term: Term(1),
        reason: "x".into(),
        kind: FailoverKind::Forced,
        from: Some("n3".into()),
        lease_renewals: None,
    };
    assert!(matches!(
        s.apply(stale_view, 0),
        Err(ControlError::StalePrimary { .. })
    ));
    assert_eq!(s.term, Term(1));
}

#[test]
fn a_switchover_is_begun_then_finished_by_a_promotion_of_its_target() {
    let mut s = bootstrapped();
    let e = s
        .apply(promote("n2", 1, FailoverKind::Switchover), 0)
        .unwrap_err();
    assert!(e.to_string().contains("begin one first"), "{e}");
    s.apply(
        ControlCommand::BeginSwitchover {
            to: "n2".into(),
            expected_term: Term(1),
        },
        1,
    )
    .unwrap();
    let again = ControlCommand::BeginSwitchover {
        to: "n3".into(),
        expected_term: Term(1),
    };
    assert!(matches!(
        s.apply(again, 2),
        Err(ControlError::SwitchoverPending { .. })
    ));
    assert!(matches!(
        s.apply(promote("n3", 1, FailoverKind::Switchover), 3),
        Err(ControlError::NoSwitchover(_))
    ));
    s.apply(promote("n2", 1, FailoverKind::Switchover), 4)
        .unwrap();
    assert_eq!(s.switchover, None);
    assert_eq!(s.history.back().unwrap().kind, FailoverKind::Switchover);
    // Cancelling needs one under way.
    assert!(matches!(
        s.apply(
            ControlCommand::CancelSwitchover {
                expected_term: Term(2)
            },
            5
        ),
        Err(ControlError::NoSwitchover(_))
    ));
}

#[test]
fn an_automatic_failover_ends_a_pending_switchover() {
    let mut s = bootstrapped();
    s.apply(
        ControlCommand::BeginSwitchover {
            to: "n2".into(),
            expected_term: Term(1),
        },
        1,
    )
    .unwrap();
    s.apply(promote("n3", 1, FailoverKind::Automatic), 2)
        .unwrap();
    assert_eq!(s.switchover, None);
    s.check_invariants().unwrap();
}

#[test]
fn members_are_added_and_removed_but_never_the_primary_or_a_sync_set_member() {
    let mut s = bootstrapped();
    s.apply(ControlCommand::AddMember(member("n4", false)), 0)
        .unwrap();
    assert!(matches!(
        s.apply(ControlCommand::AddMember(member("n4", false)), 0),
        Err(ControlError::MemberExists { .. })
    ));
    let e = s
        .apply(ControlCommand::RemoveMember { name: "n1".into() }, 0)
        .unwrap_err();
    assert!(e.to_string().contains("switch over"), "{e}");
    s.apply(
        ControlCommand::SetCommit {
            mode: CommitMode::SemiSync,
            sync_set: "FIRST 1 (n4, n2)".parse().unwrap(),
        },
        0,
    )
    .unwrap();
    let e = s
        .apply(ControlCommand::RemoveMember { name: "n4".into() }, 0)
        .unwrap_err();
    assert!(matches!(e, ControlError::InSyncSet { .. }), "{e}");
    assert!(e.to_string().contains("FIRST 1 (n4, n2)"), "{e}");
    s.apply(ControlCommand::RemoveMember { name: "n3".into() }, 0)
        .unwrap();
    assert!(!s.members.contains_key("n3"));
}

#[test]
fn the_sync_set_names_only_data_members() {
    let mut s = bootstrapped();
    let set = |t: &str| ControlCommand::SetCommit {
        mode: CommitMode::Sync,
        sync_set: t.parse().unwrap(),
    };
    assert_eq!(
        s.apply(set("ANY 1 (n2, w9)"), 0),
        Err(ControlError::Witness { name: "w9".into() })
    );
    assert!(matches!(
        s.apply(set("ANY 1 (n2, nx)"), 0),
        Err(ControlError::UnknownMember { .. })
    ));
    s.apply(set("ANY 2 (*)"), 0).unwrap();
    assert_eq!(s.commit.mode, CommitMode::Sync);
}

#[test]
fn addresses_and_rollbacks_are_recorded() {
    let mut s = bootstrapped();
    s.apply(
        ControlCommand::SetAddresses {
            name: "n2".into(),
            http_url: "http://127.0.0.1:5481".into(),
        },
        0,
    )
    .unwrap();
    assert_eq!(
        s.members["n2"].http_url.as_deref(),
        Some("http://127.0.0.1:5481")
    );
    s.apply(promote("n2", 1, FailoverKind::Automatic), 0)
        .unwrap();
    s.apply(
        ControlCommand::ReportRollback {
            term: Term(2),
            transactions: 3,
        },
        0,
    )
    .unwrap();
    assert_eq!(s.history.back().unwrap().rolled_back, Some(3));
    assert!(s
        .apply(
            ControlCommand::ReportRollback {
                term: Term(7),
                transactions: 1
            },
            0
        )
        .is_err());
}

#[test]
fn the_history_keeps_the_last_events() {
    let mut s = bootstrapped();
    let names = ["n2", "n3", "n1"];
    for i in 0..(HISTORY_LIMIT as u64 + 10) {
        let to = names[i as usize % 3];
        s.apply(promote(to, s.term.0, FailoverKind::Forced), i)
            .unwrap();
    }
    assert_eq!(s.history.len(), HISTORY_LIMIT);
    assert_eq!(s.history.back().unwrap().term, s.term);
    assert_eq!(
        s.history.front().unwrap().term,
        Term(s.term.0 + 1 - HISTORY_LIMIT as u64)
    );
}

#[test]
fn state_and_commands_round_trip_through_json() {
    let mut s = bootstrapped();
    s.apply(
        ControlCommand::SetCommit {
            mode: CommitMode::SemiSync,
            sync_set: "FIRST 1 (n2, n3)".parse().unwrap(),
        },
        0,
    )
    .unwrap();
    let text = serde_json::to_string(&s).unwrap();
    assert!(text.contains("\"FIRST 1 (n2, n3)\""), "{text}");
    let back: ControlState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
    let cmd = promote("n2", 1, FailoverKind::Automatic);
    let back: ControlCommand = serde_json::from_str(&serde_json::to_string(&cmd).unwrap()).unwrap();
    assert_eq!(back, cmd);
    let e = ControlError::StaleTerm {
        expected: Term(1),
        current: Term(2),
    };
    let back: ControlError = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert_eq!(back, e);
}

fn arb_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["n1", "n2", "n3", "n4", "w1", "w2"]).prop_map(String::from)
}

fn arb_member() -> impl Strategy<Value = Member> {
    (arb_name(), any::<bool>()).prop_map(|(n, w)| Member {
        peer_addr: format!("{n}:7000"),
        witness: w || n.starts_with('w'),
        name: n,
        http_url: None,
    })
}

fn arb_kind() -> impl Strategy<Value = FailoverKind> {
    prop::sample::select(vec![
        FailoverKind::Automatic,
        FailoverKind::Switchover,
        FailoverKind::Forced,
        FailoverKind::Bootstrap,
    ])
}

fn arb_command() -> impl Strategy<Value = ControlCommand> {
    let term = 0u64..6;
    prop_oneof![
        (prop::collection::vec(arb_member(), 0..5), arb_name()).prop_map(|(members, primary)| {
            ControlCommand::Bootstrap {
                cluster_id: "c".into(),
                members,
                primary,
            }
        }),
        arb_member().prop_map(ControlCommand::AddMember),
        arb_name().prop_map(|name| ControlCommand::RemoveMember { name }),
        arb_name().prop_map(|name| ControlCommand::SetAddresses {
            name,
            http_url: "http://x".into()
        }),
        (arb_name(), term.clone()).prop_map(|(holder, t)| ControlCommand::RenewLease {
            holder,
            term: Term(t)
        }),
        (
            arb_name(),
            term.clone(),
            arb_kind(),
            prop::option::of(arb_name())
        )
            .prop_map(|(name, t, kind, from)| ControlCommand::Promote {
                name,
                expected_term: Term(t),
                reason: "p".into(),
                kind,
                from,
                lease_renewals: None,
            }),
        prop::sample::select(vec![
            "ANY 1 (*)",
            "FIRST 1 (n2, n3)",
            "ANY 1 (w1)",
            "ANY 2 (n1, n4)"
        ])
        .prop_map(|t| ControlCommand::SetCommit {
            mode: CommitMode::SemiSync,
            sync_set: t.parse().unwrap(),
        }),
        (arb_name(), term.clone()).prop_map(|(to, t)| ControlCommand::BeginSwitchover {
            to,
            expected_term: Term(t)
        }),
        term.clone().prop_map(|t| ControlCommand::CancelSwitchover {
            expected_term: Term(t)
        }),
        (term, 0u64..5).prop_map(|(t, n)| ControlCommand::ReportRollback {
            term: Term(t),
            transactions: n
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever is proposed, in whatever order: the term never decreases, a bootstrapped cluster
    /// always has exactly one primary and it is a data member, a successful promotion raises the
    /// term by exactly one, and a refused command changes nothing.
    #[test]
    fn any_command_sequence_keeps_the_invariants(
        cmds in prop::collection::vec(arb_command(), 1..80),
    ) {
        let mut s = ControlState::default();
        for (i, cmd) in cmds.into_iter().enumerate() {
            let before = s.clone();
            let was_promote = matches!(cmd, ControlCommand::Promote { .. });
            let result = s.apply(cmd.clone(), i as u64);
            prop_assert!(s.term >= before.term, "term went back on {cmd:?}");
            if let Err(e) = s.check_invariants() {
                prop_assert!(false, "after {cmd:?}: {e}");
            }
            if before.is_bootstrapped() {
                prop_assert!(s.is_bootstrapped());
            }
            match result {
                Err(_) => prop_assert_eq!(&s, &before, "a refused {:?} changed the state", cmd),
                Ok(Applied::Promoted { term, primary }) => {
                    prop_assert!(was_promote);
                    prop_assert_eq!(term, Term(before.term.0 + 1));
                    prop_assert_eq!(s.term, term);
                    prop_assert_eq!(s.primary.as_ref(), Some(&primary));
                    prop_assert_ne!(before.primary.as_ref(), Some(&primary));
                }
                Ok(_) => {
                    if before.is_bootstrapped() {
                        prop_assert_eq!(s.term, before.term, "only a promotion changes the term");
                        prop_assert_eq!(&s.primary, &before.primary);
                    }
                }
            }
        }
    }
}

/// A bootstrapped start for the property above, so promotions and renewals are exercised, not
/// only refused.
#[test]
fn a_bootstrapped_cluster_survives_random_commands() {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    // A fixed seed: the count of promotions below must not depend on luck.
    let mut runner = TestRunner::new_with_rng(
        Config::with_cases(512),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let promotions = std::cell::Cell::new(0u32);
    runner
        .run(&prop::collection::vec(arb_command(), 1..60), |cmds| {
            let mut s = bootstrapped();
            for (i, cmd) in cmds.into_iter().enumerate() {
                let before_term = s.term;
                let r = s.apply(cmd, i as u64);
                s.check_invariants().map_err(TestCaseError::fail)?;
                prop_assert!(s.primary.is_some());
                if let Ok(Applied::Promoted { term, .. }) = r {
                    prop_assert_eq!(term, Term(before_term.0 + 1));
                    promotions.set(promotions.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    let promotions = promotions.get();
    assert!(
        promotions > 10,
        "the generator promoted only {promotions} times"
    );
}

#[test]
fn an_automatic_promotion_decided_before_a_renewal_is_refused() {
    let mut s = bootstrapped();
    let primary = s.primary.clone().unwrap();
    let term = s.term;
    let other = s
        .data_members()
        .find(|m| m.name != primary)
        .map(|m| m.name.clone())
        .unwrap();
    let seen = s.lease.as_ref().unwrap().renewals;
    s.apply(
        ControlCommand::RenewLease {
            holder: primary.clone(),
            term,
        },
        1,
    )
    .unwrap();
    let promote = |renewals: u64| ControlCommand::Promote {
        name: other.clone(),
        expected_term: term,
        reason: "silent".into(),
        kind: FailoverKind::Automatic,
        from: Some(primary.clone()),
        lease_renewals: Some(renewals),
    };
    assert!(matches!(
        s.apply(promote(seen), 2),
        Err(ControlError::LeaseRenewed { .. })
    ));
    assert_eq!(s.primary.as_deref(), Some(primary.as_str()));
    assert_eq!(s.term, term);
    // Decided on the latest renewal, it goes through.
    let now = s.lease.as_ref().unwrap().renewals;
    s.apply(promote(now), 3).unwrap();
    assert_eq!(s.primary.as_deref(), Some(other.as_str()));
}

#[test]
fn a_reformed_cluster_is_its_survivor_alone_in_the_term_it_asks() {
    let reform = |member: Member, term: u64| ControlCommand::Reform {
        cluster_id: "c2".into(),
        member,
        term: Term(term),
        reason: "re-formed around n2".into(),
    };
    let mut s = ControlState::default();
    assert_eq!(
        s.apply(reform(member("n2", false), 7), 5_000).unwrap(),
        Applied::Bootstrapped {
            primary: "n2".into(),
            term: Term(7)
        }
    );
    assert_eq!(s.term, Term(7));
    assert_eq!(s.primary.as_deref(), Some("n2"));
    assert_eq!(s.members.keys().collect::<Vec<_>>(), vec!["n2"]);
    let event = s.history.back().unwrap();
    assert_eq!((event.kind, event.term), (FailoverKind::Forced, Term(7)));
    s.check_invariants().unwrap();
    // Only a fresh state, only a data node.
    assert!(matches!(
        s.apply(reform(member("n2", false), 9), 6_000),
        Err(ControlError::AlreadyBootstrapped { .. })
    ));
    assert!(ControlState::default()
        .apply(reform(member("w9", true), 3), 0)
        .is_err());
    assert!(ControlState::default()
        .apply(reform(member("n2", false), 0), 0)
        .is_err());
}
