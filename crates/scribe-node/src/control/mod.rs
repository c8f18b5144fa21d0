//! The embedded control plane (DESIGN.md §4): a small Raft group (openraft 0.9) among the nodes
//! of the `--cluster` list that holds the cluster's [`ControlState`] — members, primary and term,
//! the primary's lease, commit settings, failover history. It is not in the data path.
//!
//! **What is in the Raft log.** Each normal entry is a [`Proposal`]: one
//! [`scribe_core::ControlCommand`] and the proposer's wall clock (so applying is deterministic on
//! every node). Raft's own entries (blank entries of a new leader, membership changes) sit
//! beside them. The state machine applies each command with [`ControlState::apply`]; a refused
//! command is still in the log but changes nothing, and its refusal is the proposer's answer.
//! Lease renewals are entries too (a few a second), so the log is compacted: a snapshot (the
//! whole state as JSON, a few kilobytes) every [`ControlConfig::snapshot_every`] entries, after
//! which the entries it covers are purged; the log stays a few hundred entries long.
//!
//! **Storage** (`<data_dir>/control/`, see [`log_store`] and [`state_machine`]): the vote
//! (fsynced before it is answered), the log (append-only, checksummed frames, fsync per batch),
//! the snapshot, and a committed-index hint. Every file is versioned and checksummed.
//!
//! **Node ids.** Raft needs integers: at bootstrap a node's id is its position in the
//! `--cluster` list sorted by name, plus one. The Raft membership stores each id's
//! [`ControlNode`] (name and peer address), and a restarted node takes its id from there, so
//! ids survive later changes of the list (`members add` assigns the next free id).
//!
//! **Bootstrap, made safe when every node starts at once.** On a fresh data directory only the
//! member that sorts first calls `initialize` with the full membership; the others wait to be
//! contacted by it. If it has not contacted them within [`ControlConfig::bootstrap_grace`] (it
//! may be down), they initialise too, with the same membership — openraft's initial entry is
//! identical on every node, so several initialisations with the same list cannot split the
//! group. Once a leader is elected it proposes `Bootstrap` (the first primary is
//! [`ControlConfig::bootstrap_primary`], or else the leader itself if it holds data); a second
//! `Bootstrap` is refused by the state machine, so racing leaders are harmless.
//!
//! **Network** ([`network`], [`server`]): TCP to each member's peer port; a connection opens
//! with `ControlHello` (cluster id, sender, `--cluster` list) — a node whose list or cluster id
//! differs is refused with a message naming both — and then carries `ControlRequest` /
//! `ControlResponse` pairs whose bodies are the JSON of openraft's RPCs or of a proposal a
//! follower forwards to the leader.
//!
//! **Timeouts.** Heartbeats every 200 ms; a follower stands for election after openraft's leader
//! lease (the maximum election timeout, 0.6 s) plus a random election timeout (0.4–0.6 s) of
//! silence, so a new leader 1.0–1.2 s after the old one stopped; each append-entries RPC bounded by the
//! heartbeat interval and each vote by the minimum election timeout, a proposal by
//! [`ControlConfig::propose_timeout`] (after which its outcome is unknown).
//!
//! **Voters.** Every member of the `--cluster` list is a voter, witnesses included. The Raft
//! voter set is changed only by the runtime (`members add`/`remove`, not built yet); the
//! control state's `AddMember`/`RemoveMember` record the cluster's view and the runtime keeps
//! the voters in step after they commit.

pub mod files;
pub mod log_store;
pub mod network;
mod plane;
pub mod server;
pub mod state_machine;
pub mod types;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

pub use plane::{ControlPlane, MembershipError, StartError};
pub use scribe_core::ControlState;
pub use server::{serve_connection, ServeError};
pub use types::{ControlNode, NodeId, Proposal, ProposeError, RaftStatus, Role};

/// The control plane's configuration, validated once by [`ControlConfig::validate`].
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// This node's name; must be in `members`.
    pub name: String,
    /// The node's data directory; the Raft state lives in `<data_dir>/control/`.
    pub data_dir: PathBuf,
    /// The `--cluster` list: `(name, peer address)` of every member, this node included.
    pub members: Vec<(String, String)>,
    /// Which members are witnesses (vote, hold no data).
    pub witnesses: BTreeSet<String>,
    /// The cluster id, the same on every node.
    pub cluster_id: String,
    /// The first primary at bootstrap; `None`: the first Raft leader, if it holds data.
    pub bootstrap_primary: Option<String>,
    /// How often the Raft leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing for a random time in this range starts an election.
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
    /// How long `propose` waits for a commit.
    pub propose_timeout: Duration,
    /// How long a fresh node that does not sort first waits to be contacted before it
    /// initialises the group itself.
    pub bootstrap_grace: Duration,
    /// A snapshot is taken every this many log entries (the log is purged behind it).
    pub snapshot_every: u64,
    /// This node joins a cluster that exists (`--join`): it never initialises the Raft group or
    /// bootstraps the control state, and waits to be added by the leader (`members add`).
    pub join: bool,
    /// `--reform-cluster`: this node re-forms a cluster of itself alone, starting in this term
    /// (above every term in its log); it bootstraps with `Reform` instead of `Bootstrap`.
    pub reform_term: Option<scribe_core::Term>,
    /// How control connections are secured (TLS, the peer secret); the peer listener checks
    /// incoming ones.
    pub security: std::sync::Arc<crate::peer_link::PeerSecurity>,
}

impl ControlConfig {
    /// A configuration with the default timings.
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        members: Vec<(String, String)>,
        cluster_id: impl Into<String>,
    ) -> ControlConfig {
        ControlConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            members,
            witnesses: BTreeSet::new(),
            cluster_id: cluster_id.into(),
            bootstrap_primary: None,
            // openraft bounds every append-entries call by the heartbeat interval: on a loaded
            // machine (three nodes fsyncing on one disk) 100 ms was seen to run out, failing
            // lease renewals of a healthy primary; 200 ms leaves room. A follower of a known
            // leader waits openraft's leader lease (the maximum election timeout) *plus* a random
            // election timeout before it stands, so 0.4–0.6 s here means a new leader 1.0–1.2 s
            // after the old one stopped — five heartbeats missed at least — which is about when
            // the failover timeout (counted from the last renewal's arrival) runs out too.
            heartbeat_interval: Duration::from_millis(200),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(600),
            propose_timeout: Duration::from_secs(2),
            bootstrap_grace: Duration::from_secs(3),
            snapshot_every: 200,
            join: false,
            reform_term: None,
            security: std::sync::Arc::new(crate::peer_link::PeerSecurity::none()),
        }
    }

    /// A cluster id derived from the `--cluster` list, for nodes that are given no other: every
    /// node started with the same list derives the same id. The witness marks are part of the
    /// list, so nodes that disagree on who is a witness belong to different clusters (and refuse
    /// each other's hellos); a list without witnesses derives the id it always did.
    pub fn derived_cluster_id(
        members: &[(String, String)],
        witnesses: &BTreeSet<String>,
    ) -> String {
        let mut sorted = members.to_vec();
        sorted.sort();
        let text: Vec<String> = sorted
            .iter()
            .map(|(n, a)| {
                let mark = if witnesses.contains(n) {
                    "/witness"
                } else {
                    ""
                };
                format!("{n}={a}{mark}")
            })
            .collect();
        let text = text.join(",");
        let a = crc32c::crc32c(text.as_bytes());
        let b = crc32c::crc32c_append(0x5c71_be00, text.as_bytes());
        format!("{a:08x}{b:08x}")
    }

    /// Checks the configuration; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster_id.trim().is_empty() {
            return Err("the control plane needs a cluster id".into());
        }
        if self.members.is_empty() {
            return Err("--cluster lists no members".into());
        }
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (name, addr) in &self.members {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if name.is_empty() || !name.chars().all(ok) {
                return Err(format!(
                    "--cluster: invalid node name {name:?}: use letters, digits, '-', '_' or '.'"
                ));
            }
            if addr.trim().is_empty() {
                return Err(format!("--cluster: {name} has no peer address"));
            }
            if !names.insert(name.as_str()) {
                return Err(format!("--cluster lists {name} twice"));
            }
            if !addrs.insert(addr.as_str()) {
                return Err(format!("--cluster lists the peer address {addr} twice"));
            }
        }
        if !names.contains(self.name.as_str()) {
            return Err(format!(
                "this node's name {:?} is not in the --cluster list ({})",
                self.name,
                names.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(w) = self.witnesses.iter().find(|w| !names.contains(w.as_str())) {
            return Err(format!("the witness {w:?} is not in the --cluster list"));
        }
        if names.iter().all(|n| self.witnesses.contains(*n)) {
            return Err("every member is a witness: at least one must hold data".into());
        }
        if let Some(p) = &self.bootstrap_primary {
            if !names.contains(p.as_str()) || self.witnesses.contains(p) {
                return Err(format!(
                    "the bootstrap primary {p:?} is not a data member of the --cluster list"
                ));
            }
        }
        if self.heartbeat_interval.is_zero() {
            return Err("the heartbeat interval must be positive".into());
        }
        if self.election_timeout_min < self.heartbeat_interval * 2 {
            return Err(format!(
                "the election timeout ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.election_timeout_min, self.heartbeat_interval
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return Err("the maximum election timeout must exceed the minimum".into());
        }
        if self.propose_timeout.is_zero() {
            return Err("the proposal timeout must be positive".into());
        }
        if self.snapshot_every < 10 {
            return Err("snapshot_every must be at least 10 entries".into());
        }
        Ok(())
    }

    /// The `--cluster` list sorted by name (what hellos carry and compare).
    pub fn sorted_members(&self) -> Vec<(String, String)> {
        let mut m = self.members.clone();
        m.sort();
        m
    }

    /// The Raft id a member gets at bootstrap: its position in the sorted list, plus one.
    pub fn bootstrap_id(&self, name: &str) -> Option<NodeId> {
        if self.join {
            return Some(joined_id(name));
        }
        self.sorted_members()
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| i as NodeId + 1)
    }
}

/// The Raft id of a member added after bootstrap (`members add`, `--join`): above every id a
/// bootstrap hands out (those are 1..=list length), from the name, so the leader and the joining
/// node agree on it without a round trip. Two names colliding is refused by the leader.
pub fn joined_id(name: &str) -> NodeId {
    // FNV-1a, 32 bits: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (1 << 32) | NodeId::from(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_ids_are_stable_and_above_bootstrap_ids() {
        assert_eq!(joined_id("n4"), joined_id("n4"));
        assert_ne!(joined_id("n4"), joined_id("n5"));
        assert!(joined_id("") > 1 << 31);
    }

    fn list() -> Vec<(String, String)> {
        vec![
            ("n2".into(), "127.0.0.1:2".into()),
            ("n1".into(), "127.0.0.1:1".into()),
            ("w".into(), "127.0.0.1:3".into()),
        ]
    }

    #[test]
    fn ids_follow_the_sorted_list_and_the_cluster_id_ignores_its_order() {
        let c = ControlConfig::new("n2", "/tmp/x", list(), "c");
        assert_eq!(c.bootstrap_id("n1"), Some(1));
        assert_eq!(c.bootstrap_id("n2"), Some(2));
        assert_eq!(c.bootstrap_id("w"), Some(3));
        assert_eq!(c.bootstrap_id("zz"), None);
        let mut reversed = list();
        reversed.reverse();
        let none = BTreeSet::new();
        let id =
            |m: &[(String, String)], w: &BTreeSet<String>| ControlConfig::derived_cluster_id(m, w);
        assert_eq!(id(&list(), &none), id(&reversed, &none));
        assert_ne!(id(&list(), &none), id(&list()[..2], &none));
        // Clusters started before witness marks existed keep their id (the crc32c pair of
        // "n1=127.0.0.1:1,n2=127.0.0.1:2,w=127.0.0.1:3").
        assert_eq!(id(&list(), &none), "df521b98531d429d");
        // Witness marks are part of the list.
        let w = BTreeSet::from(["w".to_string()]);
        let n2 = BTreeSet::from(["n2".to_string()]);
        assert_ne!(id(&list(), &none), id(&list(), &w));
        assert_ne!(id(&list(), &w), id(&list(), &n2));
        assert_eq!(id(&list(), &w), id(&reversed, &w));
    }

    #[test]
    fn validate_names_what_to_fix() {
        let ok = ControlConfig::new("n1", "/tmp/x", list(), "c");
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.name = "n9".into();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("not in the --cluster list"));
        let mut c = ok.clone();
        c.members.push(("n1".into(), "127.0.0.1:9".into()));
        assert!(c.validate().unwrap_err().contains("twice"));
        let mut c = ok.clone();
        c.witnesses = ["n1", "n2", "w"].iter().map(|s| s.to_string()).collect();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("every member is a witness"));
        let mut c = ok.clone();
        c.bootstrap_primary = Some("w".into());
        c.witnesses.insert("w".into());
        assert!(c.validate().unwrap_err().contains("bootstrap primary"));
        let mut c = ok.clone();
        c.election_timeout_min = Duration::from_millis(150);
        assert!(c.validate().unwrap_err().contains("twice the heartbeat"));
        let mut c = ok;
        c.cluster_id = " ".into();
        assert!(c.validate().is_err());
    }
}
