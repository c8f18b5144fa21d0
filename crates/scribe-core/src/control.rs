//! The cluster's control state (DESIGN.md §4) and the commands that change it: the members, the
//! current primary and term, the primary's lease, the commit settings and the failover history.
//! Pure decision logic: [`ControlState::apply`] takes one [`ControlCommand`] and either changes the
//! state or says, in words an operator can act on, why not. The runtime (`scribe_node::control`)
//! keeps this state in a Raft group, so every node applies the same commands in the same order;
//! `apply` is therefore deterministic — the time it records is passed in by the proposer, never
//! read from a clock here.
//!
//! Fencing lives here: a [`ControlCommand::Promote`] names the term its proposer saw, so of two
//! concurrent promotions only the first to commit wins; a [`ControlCommand::RenewLease`] from
//! anyone but the primary of the current term is refused, which is what stops a deposed primary.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::commit::{CommitMode, Quorum, SyncSet};
use crate::Term;

mod command;

pub use command::{Applied, ControlCommand, ControlError};

/// How many failover events the state keeps (the oldest are dropped first).
pub const HISTORY_LIMIT: usize = 50;

/// One node of the cluster as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name, unique in the cluster (`--name`).
    pub name: String,
    /// Where peers reach it (`--peer`): replication and the control plane.
    pub peer_addr: String,
    /// Its HTTP API as clients reach it, announced by the node when it starts.
    pub http_url: Option<String>,
    /// A witness votes in the control plane but holds no data: it is never primary, never in
    /// the sync set.
    pub witness: bool,
}

/// The primary's lease as the control plane records it. The lease's *duration* is judged by
/// clocks outside this state: the primary by its own monotonic clock from when it sent the
/// renewal, the failover manager by watching `renewals` stop growing.
///
/// Invariant: once bootstrapped, `holder` is the primary and `term` the current term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The primary holding it.
    pub holder: String,
    /// The term it was granted in.
    pub term: Term,
    /// How many renewals were committed in this term (0 right after the promotion).
    pub renewals: u64,
    /// The proposer's wall clock at the last renewal or grant, for status pages only.
    pub renewed_at_unix_ms: u64,
}

/// What the primary waits for before answering a write, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSettings {
    /// The default commit mode.
    pub mode: CommitMode,
    /// Which replicas count for semi-sync and sync, serialized as its text (`ANY 1 (*)`).
    #[serde(with = "sync_set_text")]
    pub sync_set: SyncSet,
}

impl Default for CommitSettings {
    fn default() -> Self {
        CommitSettings {
            mode: CommitMode::Async,
            sync_set: SyncSet {
                quorum: Quorum::Any,
                n: 1,
                members: None,
            },
        }
    }
}

/// Why the primary changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    /// The first primary, chosen when the cluster was bootstrapped.
    Bootstrap,
    /// The failover manager replaced a primary whose heartbeats stopped.
    Automatic,
    /// A planned hand-over (drain, catch up, hand over).
    Switchover,
    /// An operator forced it.
    Forced,
}

impl fmt::Display for FailoverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailoverKind::Bootstrap => "bootstrap",
            FailoverKind::Automatic => "automatic",
            FailoverKind::Switchover => "switchover",
            FailoverKind::Forced => "forced",
        })
    }
}

/// One change of primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// The proposer's wall clock when it was committed.
    pub at_unix_ms: u64,
    /// The previous primary (`None` at bootstrap).
    pub from: Option<String>,
    /// The new primary.
    pub to: String,
    /// The term the new primary starts.
    pub term: Term,
    /// Why, in the proposer's words.
    pub reason: String,
    /// What kind of change.
    pub kind: FailoverKind,
    /// How many transactions the old primary undid when it rejoined, once it reported them.
    pub rolled_back: Option<u64>,
}

/// A planned switchover under way: the primary drains (accepts no new writes) while `to` catches
/// up; a `Promote` of kind switchover to `to` finishes it, `CancelSwitchover` abandons it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSwitchover {
    /// The member taking over.
    pub to: String,
    /// The term it was begun in.
    pub term: Term,
    /// The proposer's wall clock when it was begun.
    pub since_unix_ms: u64,
}

/// The cluster's control state.
///
/// Invariants (checked by [`ControlState::check_invariants`], kept by every `apply`):
/// - before bootstrap: no primary, no lease, term 0, no pending switchover;
/// - once bootstrapped: `primary` is a non-witness member, `term >= 1`, the lease is held by the
///   primary in the current term;
/// - the term never decreases; each promotion raises it by exactly one;
/// - a pending switchover names a non-witness member other than the primary, in the current term;
/// - the sync set names only non-witness members;
/// - `history` holds at most [`HISTORY_LIMIT`] events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ControlState {
    /// The cluster's id; empty until bootstrapped.
    pub cluster_id: String,
    /// Every member, by name.
    pub members: BTreeMap<String, Member>,
    /// The current primary.
    pub primary: Option<String>,
    /// The current term (0 before bootstrap).
    pub term: Term,
    /// The primary's lease.
    pub lease: Option<Lease>,
    /// Commit mode and sync set.
    pub commit: CommitSettings,
    /// A planned switchover under way.
    pub switchover: Option<PendingSwitchover>,
    /// The last changes of primary, oldest first.
    pub history: VecDeque<FailoverEvent>,
}

impl ControlState {
    /// Whether `Bootstrap` has been applied.
    pub fn is_bootstrapped(&self) -> bool {
        self.primary.is_some()
    }

    /// The primary's member entry.
    pub fn primary_member(&self) -> Option<&Member> {
        self.primary.as_ref().and_then(|p| self.members.get(p))
    }

    /// The members that hold data (not witnesses), by name.
    pub fn data_members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| !m.witness)
    }

    /// Applies one command at `now_unix_ms` (the proposer's clock). On error the state is
    /// unchanged.
    pub fn apply(
        &mut self,
        cmd: ControlCommand,
        now_unix_ms: u64,
    ) -> Result<Applied, ControlError> {
        match cmd {
            ControlCommand::Bootstrap {
                cluster_id,
                members,
                primary,
            } => self.bootstrap(
                cluster_id,
                members,
                primary,
                (
                    Term::FIRST,
                    FailoverKind::Bootstrap,
                    "cluster bootstrapped".into(),
                ),
                now_unix_ms,
            ),
            ControlCommand::Reform {
                cluster_id,
                member,
                term,
                reason,
            } => {
                if term < Term::FIRST {
                    return Err(ControlError::Invalid(
                        "a cluster starts in term 1 or later".into(),
                    ));
                }
                let primary = member.name.clone();
                self.bootstrap(
                    cluster_id,
                    vec![member],
                    primary,
                    (term, FailoverKind::Forced, reason),
                    now_unix_ms,
                )
            }
            ControlCommand::AddMember(m) => {
                self.require_bootstrapped()?;
                validate_member(&m)?;
                if self.members.contains_key(&m.name) {
                    return Err(ControlError::MemberExists { name: m.name });
                }
                if let Some(other) = self.members.values().find(|o| o.peer_addr == m.peer_addr) {
                    return Err(ControlError::Invalid(format!(
                        "{:?} already uses the peer address {}",
                        other.name, m.peer_addr
                    )));
                }
                let name = m.name.clone();
                self.members.insert(name.clone(), m);
                Ok(Applied::MemberAdded { name })
            }
            ControlCommand::RemoveMember { name } => {
                self.require_bootstrapped()?;
                self.member(&name)?;
                if self.primary.as_deref() == Some(name.as_str()) {
                    return Err(ControlError::IsPrimary { name });
                }
                if let Some(s) = self.switchover.as_ref().filter(|s| s.to == name) {
                    return Err(ControlError::SwitchoverPending { to: s.to.clone() });
                }
                if self.names_in_sync_set(&name) {
                    return Err(ControlError::InSyncSet {
                        name,
                        sync_set: self.commit.sync_set.to_string(),
                    });
                }
                self.members.remove(&name);
                Ok(Applied::MemberRemoved { name })
            }
            ControlCommand::SetAddresses { name, http_url } => {
                if http_url.trim().is_empty() {
                    return Err(ControlError::Invalid("the HTTP URL is empty".into()));
                }
                let m = self
                    .members
                    .get_mut(&name)
                    .ok_or_else(|| ControlError::UnknownMember { name: name.clone() })?;
                m.http_url = Some(http_url);
                Ok(Applied::AddressesSet { name })
            }
            ControlCommand::RenewLease { holder, term } => {
                let primary = self.require_bootstrapped()?.to_string();
                if holder != primary || term != self.term {
                    return Err(ControlError::NotLeaseHolder {
                        holder,
                        term,
                        primary,
                        current_term: self.term,
                    });
                }
                let lease = self.lease.get_or_insert(Lease {
                    holder,
                    term,
                    renewals: 0,
                    renewed_at_unix_ms: now_unix_ms,
                });
                lease.renewals += 1;
                lease.renewed_at_unix_ms = now_unix_ms;
                Ok(Applied::LeaseRenewed {
                    term,
                    renewals: lease.renewals,
                })
            }
            ControlCommand::Promote {
                name,
                expected_term,
                reason,
                kind,
                from,
                lease_renewals,
            } => {
                if let (Some(seen), Some(lease)) = (lease_renewals, &self.lease) {
                    if lease.term == self.term && lease.renewals != seen {
                        return Err(ControlError::LeaseRenewed {
                            seen,
                            now: lease.renewals,
                        });
                    }
                }
                self.promote(name, expected_term, reason, kind, from, now_unix_ms)
            }
            ControlCommand::SetCommit { mode, sync_set } => {
                if let Some(names) = &sync_set.members {
                    for n in names {
                        let m = self.member(n)?;
                        if m.witness {
                            return Err(ControlError::Witness { name: n.clone() });
                        }
                    }
                }
                self.commit = CommitSettings { mode, sync_set };
                Ok(Applied::CommitSet)
            }
            ControlCommand::BeginSwitchover { to, expected_term } => {
                let primary = self.require_bootstrapped()?.to_string();
                self.require_term(expected_term)?;
                if let Some(s) = &self.switchover {
                    return Err(ControlError::SwitchoverPending { to: s.to.clone() });
                }
                self.require_eligible(&to)?;
                if to == primary {
                    return Err(ControlError::AlreadyPrimary {
                        name: to,
                        term: self.term,
                    });
                }
                self.switchover = Some(PendingSwitchover {
                    to: to.clone(),
                    term: self.term,
                    since_unix_ms: now_unix_ms,
                });
                Ok(Applied::SwitchoverBegun { to })
            }
            ControlCommand::CancelSwitchover { expected_term } => {
                self.require_bootstrapped()?;
                self.require_term(expected_term)?;
                if self.switchover.take().is_none() {
                    return Err(ControlError::NoSwitchover(
                        "no switchover is under way".into(),
                    ));
                }
                Ok(Applied::SwitchoverCancelled)
            }
            ControlCommand::ReportRollback { term, transactions } => {
                let event = self
                    .history
                    .iter_mut()
                    .rev()
                    .find(|e| e.term == term)
                    .ok_or_else(|| {
                        ControlError::Invalid(format!(
                            "no failover to term {term} is in the history (it keeps the last {HISTORY_LIMIT})"
                        ))
                    })?;
                event.rolled_back = Some(event.rolled_back.unwrap_or(0) + transactions);
                Ok(Applied::RollbackReported)
            }
        }
    }

    /// Sets up a fresh control state; `first` is the term it starts in, and how the history
    /// records it.
    fn bootstrap(
        &mut self,
        cluster_id: String,
        members: Vec<Member>,
        primary: String,
        first: (Term, FailoverKind, String),
        now_unix_ms: u64,
    ) -> Result<Applied, ControlError> {
        let (term, kind, reason) = first;
        if self.is_bootstrapped() {
            return Err(ControlError::AlreadyBootstrapped {
                cluster_id: self.cluster_id.clone(),
            });
        }
        if cluster_id.trim().is_empty() {
            return Err(ControlError::Invalid("the cluster id is empty".into()));
        }
        let mut by_name = BTreeMap::new();
        for m in members {
            validate_member(&m)?;
            if by_name
                .values()
                .any(|o: &Member| o.peer_addr == m.peer_addr)
            {
                return Err(ControlError::Invalid(format!(
                    "two members share the peer address {}",
                    m.peer_addr
                )));
            }
            if let Some(old) = by_name.insert(m.name.clone(), m) {
                return Err(ControlError::Invalid(format!(
                    "{:?} is listed twice",
                    old.name
                )));
            }
        }
        match by_name.get(&primary) {
            None => return Err(ControlError::UnknownMember { name: primary }),
            Some(m) if m.witness => return Err(ControlError::Witness { name: primary }),
            Some(_) => {}
        }
        self.cluster_id = cluster_id;
        self.members = by_name;
        self.term = term;
        self.primary = Some(primary.clone());
        self.lease = Some(Lease {
            holder: primary.clone(),
            term,
            renewals: 0,
            renewed_at_unix_ms: now_unix_ms,
        });
        self.push_history(FailoverEvent {
            at_unix_ms: now_unix_ms,
            from: None,
            to: primary.clone(),
            term,
            reason,
            kind,
            rolled_back: None,
        });
        Ok(Applied::Bootstrapped { primary, term })
    }

    fn promote(
        &mut self,
        name: String,
        expected_term: Term,
        reason: String,
        kind: FailoverKind,
        from: Option<String>,
        now_unix_ms: u64,
    ) -> Result<Applied, ControlError> {
        let primary = self.require_bootstrapped()?.to_string();
        self.require_term(expected_term)?;
        if let Some(assumed) = from.filter(|f| *f != primary) {
            return Err(ControlError::StalePrimary {
                assumed,
                actual: primary,
            });
        }
        self.require_eligible(&name)?;
        if name == primary {
            return Err(ControlError::AlreadyPrimary {
                name,
                term: self.term,
            });
        }
        match kind {
            FailoverKind::Bootstrap => {
                return Err(ControlError::Invalid(
                    "a promotion cannot be of kind bootstrap".into(),
                ))
            }
            FailoverKind::Switchover => match &self.switchover {
                Some(s) if s.to == name => {}
                Some(s) => {
                    return Err(ControlError::NoSwitchover(format!(
                        "the switchover under way is to {:?}, not {name:?}",
                        s.to
                    )))
                }
                None => {
                    return Err(ControlError::NoSwitchover(format!(
                        "no switchover to {name:?} was begun: begin one first so the primary drains"
                    )))
                }
            },
            FailoverKind::Automatic | FailoverKind::Forced => {}
        }
        let term = Term(self.term.0 + 1);
        self.term = term;
        self.primary = Some(name.clone());
        self.switchover = None;
        self.lease = Some(Lease {
            holder: name.clone(),
            term,
            renewals: 0,
            renewed_at_unix_ms: now_unix_ms,
        });
        self.push_history(FailoverEvent {
            at_unix_ms: now_unix_ms,
            from: Some(primary),
            to: name.clone(),
            term,
            reason,
            kind,
            rolled_back: None,
        });
        Ok(Applied::Promoted {
            primary: name,
            term,
        })
    }

    fn push_history(&mut self, e: FailoverEvent) {
        self.history.push_back(e);
        while self.history.len() > HISTORY_LIMIT {
            self.history.pop_front();
        }
    }

    fn require_bootstrapped(&self) -> Result<&str, ControlError> {
        self.primary.as_deref().ok_or(ControlError::NotBootstrapped)
    }

    fn require_term(&self, expected: Term) -> Result<(), ControlError> {
        if expected != self.term {
            return Err(ControlError::StaleTerm {
                expected,
                current: self.term,
            });
        }
        Ok(())
    }

    fn member(&self, name: &str) -> Result<&Member, ControlError> {
        self.members
            .get(name)
            .ok_or_else(|| ControlError::UnknownMember { name: name.into() })
    }

    /// A member that may become primary: known and not a witness.
    fn require_eligible(&self, name: &str) -> Result<(), ControlError> {
        if self.member(name)?.witness {
            return Err(ControlError::Witness { name: name.into() });
        }
        Ok(())
    }

    fn names_in_sync_set(&self, name: &str) -> bool {
        self.commit
            .sync_set
            .members
            .as_ref()
            .is_some_and(|m| m.iter().any(|x| x == name))
    }

    /// Checks the invariants documented on the type; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        match &self.primary {
            None => {
                if self.term != Term(0) || self.lease.is_some() || self.switchover.is_some() {
                    return Err("not bootstrapped, yet a term, lease or switchover is set".into());
                }
            }
            Some(p) => {
                match self.members.get(p) {
                    None => return Err(format!("the primary {p:?} is not a member")),
                    Some(m) if m.witness => return Err(format!("the primary {p:?} is a witness")),
                    Some(_) => {}
                }
                if self.term < Term::FIRST {
                    return Err("bootstrapped in term 0".into());
                }
                match &self.lease {
                    Some(l) if l.holder == *p && l.term == self.term => {}
                    other => return Err(format!("the lease {other:?} is not the primary's")),
                }
                if let Some(s) = &self.switchover {
                    let ok = s.term == self.term
                        && s.to != *p
                        && self.members.get(&s.to).is_some_and(|m| !m.witness);
                    if !ok {
                        return Err(format!("the pending switchover {s:?} is not valid"));
                    }
                }
            }
        }
        if let Some(names) = &self.commit.sync_set.members {
            if let Some(n) = names
                .iter()
                .find(|n| self.members.get(*n).is_none_or(|m| m.witness))
            {
                return Err(format!("the sync set names {n:?}, not a data member"));
            }
        }
        if self.history.len() > HISTORY_LIMIT {
            return Err(format!("{} history events kept", self.history.len()));
        }
        Ok(())
    }
}

fn validate_member(m: &Member) -> Result<(), ControlError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if m.name.is_empty() || !m.name.chars().all(ok) {
        return Err(ControlError::Invalid(format!(
            "invalid member name {:?}: use letters, digits, '-', '_' or '.'",
            m.name
        )));
    }
    if m.peer_addr.trim().is_empty() {
        return Err(ControlError::Invalid(format!(
            "the member {:?} has no peer address",
            m.name
        )));
    }
    Ok(())
}

/// Serializes a [`SyncSet`] as its text, `FIRST 1 (n2, n3)`.
pub(crate) mod sync_set_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::commit::SyncSet;

    pub fn serialize<S: Serializer>(s: &SyncSet, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SyncSet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
