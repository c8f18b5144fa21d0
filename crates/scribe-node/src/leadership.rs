//! [`Leadership`]: the one owner of this node's view of the control state — its role, the term,
//! who the primary is and where to reach it, and the primary's lease (DESIGN.md §4, "Leadership
//! has one owner").
//!
//! The view is published on a `watch` channel. Everything that behaves differently on a primary
//! and on a replica subscribes to it instead of keeping a copy: the peer listener (it serves
//! replicas only while this node is primary), the follower (it follows only while this node is a
//! replica, and reconnects when the primary changes), retention, the HTTP routes, the PostgreSQL
//! sessions and the metrics page. A node can so change role at run time without a restart.
//!
//! Who decides the view: with `--follow` (a manually managed replica) or without it (a primary by
//! configuration) the view is fixed at start, except for what the follower learns of its primary
//! in the handshake (its name and HTTP URL). With a control plane the view follows its state.
//! Either way the decision is made elsewhere; this type only holds and publishes it.

use std::time::Instant;

use scribe_core::Term;
use scribe_sqlite::{Engine, WriteGate};
use serde::Serialize;
use tokio::sync::watch;

/// What this node is in replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// It takes writes (while its lease holds) and streams its log to replicas.
    Primary,
    /// It follows the primary and serves reads.
    Replica,
}

impl NodeRole {
    /// `primary` or `replica`.
    pub fn name(self) -> &'static str {
        match self {
            NodeRole::Primary => "primary",
            NodeRole::Replica => "replica",
        }
    }
}

/// The primary, as far as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrimaryInfo {
    /// Its node name, once known.
    pub name: Option<String>,
    /// Its peer address (replicas connect there), once known.
    pub peer_addr: Option<String>,
    /// Its HTTP API (writes are forwarded there), once known.
    pub http_url: Option<String>,
}

impl PrimaryInfo {
    /// Name and HTTP URL, when both are known (what a forwarded request needs).
    pub fn reachable(&self) -> Option<(String, String)> {
        Some((self.name.clone()?, self.http_url.clone()?))
    }
}

/// This node's view of the control state. Invariant: on a primary `primary.name` is this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlView {
    /// What this node is.
    pub role: NodeRole,
    /// The current term as this node knows it.
    pub term: Term,
    /// The primary of that term.
    pub primary: PrimaryInfo,
    /// On a primary: until when its lease holds (by this node's monotonic clock); `None` for a
    /// primary by configuration, which has no lease.
    pub lease_until: Option<Instant>,
    /// On a primary: a planned switchover is under way, so it takes no new write although its
    /// lease holds (what was durable before it drained is still confirmed).
    pub draining: bool,
}

impl ControlView {
    /// Whether this node is the primary and its lease (if it has one) holds at `now`.
    pub fn is_serving_primary(&self, now: Instant) -> bool {
        self.role == NodeRole::Primary
            && !self.draining
            && self.lease_until.is_none_or(|until| now < until)
    }
}

impl ControlView {
    /// The engine's write gate for this view: open in the view's term (until its lease runs
    /// out) on a primary, closed on a replica.
    pub fn write_gate(&self) -> WriteGate {
        match self.role {
            // A primary whose lease is not held (not renewed yet after a promotion or a restart)
            // keeps the gate closed: it takes no write, and can still take records or rewind
            // should it turn out not to be the primary any more.
            NodeRole::Primary if self.draining => {
                WriteGate::closed("this primary is handing over to another (a planned switchover)")
            }
            NodeRole::Primary if self.lease_until.is_some_and(|t| t <= Instant::now()) => {
                WriteGate::closed(format!(
                    "this node is the primary of term {} but does not hold its lease",
                    self.term
                ))
            }
            NodeRole::Primary => WriteGate::Open {
                term: self.term,
                until: self.lease_until,
            },
            NodeRole::Replica => WriteGate::closed(match &self.primary.name {
                Some(p) => format!("this node is a replica of {p}"),
                None => "this node is a replica".to_string(),
            }),
        }
    }
}

/// Keeps the engine's write gate in step with the view until the task is dropped: the writer
/// fences itself by the gate, so a node that stops being the primary (or whose lease is not
/// renewed) takes no further write whatever its front ends do.
///
/// With `mark_terms` (cluster mode), a node that opens its gate in a term newer than its log's
/// last record writes the term's first record at once ([`Engine::start_term`]).
pub async fn keep_gate(engine: Engine, leadership: Leadership, mark_terms: bool) {
    let mut view = leadership.subscribe();
    loop {
        let gate = view.borrow_and_update().write_gate();
        let e = engine.clone();
        // Closing waits for a batch's fsync in flight: off the async threads.
        let term = gate.term();
        match tokio::task::spawn_blocking(move || e.set_gate(gate)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "set the write gate"),
            Err(e) => tracing::error!(error = %e, "set the write gate"),
        }
        // A new primary marks where its term begins in the log (and so in every history).
        if mark_terms && term.is_some_and(|t| t > engine.progress().last.term) {
            match engine.start_term().await {
                Ok(c) if c.logged => {
                    tracing::info!(position = %c.position, "started the term in the log")
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "mark the start of the term"),
            }
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}

/// The owner of the view. Cheap to clone; every clone publishes to the same channel.
#[derive(Clone)]
pub struct Leadership {
    tx: std::sync::Arc<watch::Sender<ControlView>>,
}

impl Leadership {
    /// A leadership fixed by configuration: a primary (no `--follow`) or a replica of the node at
    /// peer address `follow`.
    pub fn configured(name: &str, http_url: &str, follow: Option<&str>, term: Term) -> Leadership {
        let view = match follow {
            None => ControlView {
                role: NodeRole::Primary,
                term,
                primary: PrimaryInfo {
                    name: Some(name.to_string()),
                    peer_addr: None,
                    http_url: Some(http_url.to_string()),
                },
                lease_until: None,
                draining: false,
            },
            Some(addr) => ControlView {
                role: NodeRole::Replica,
                term,
                primary: PrimaryInfo {
                    name: None,
                    peer_addr: Some(addr.to_string()),
                    http_url: None,
                },
                lease_until: None,
                draining: false,
            },
        };
        Leadership {
            tx: std::sync::Arc::new(watch::channel(view).0),
        }
    }

    /// A leadership the control plane will decide (cluster mode): until it does, this node is
    /// a replica that knows no primary.
    pub fn clustered(term: Term) -> Leadership {
        Leadership {
            tx: std::sync::Arc::new(
                watch::channel(ControlView {
                    role: NodeRole::Replica,
                    term,
                    primary: PrimaryInfo::default(),
                    lease_until: None,
                    draining: false,
                })
                .0,
            ),
        }
    }

    /// The view now.
    pub fn view(&self) -> ControlView {
        self.tx.borrow().clone()
    }

    /// Runs `f` on the view without copying it (for the per-request checks of the write and
    /// read paths). `f` must not block: it holds the view's read lock.
    pub fn peek<R>(&self, f: impl FnOnce(&ControlView) -> R) -> R {
        f(&self.tx.borrow())
    }

    /// The current term as this node knows it.
    pub fn term(&self) -> Term {
        self.peek(|v| v.term)
    }

    /// A receiver that sees every change of the view.
    pub fn subscribe(&self) -> watch::Receiver<ControlView> {
        self.tx.subscribe()
    }

    /// This node's role now.
    pub fn role(&self) -> NodeRole {
        self.tx.borrow().role
    }

    /// Whether this node is the primary now (whatever its lease says).
    pub fn is_primary(&self) -> bool {
        self.role() == NodeRole::Primary
    }

    /// The primary's name and HTTP URL, when known.
    pub fn primary(&self) -> Option<(String, String)> {
        self.tx.borrow().primary.reachable()
    }

    /// "n1 at http://…", or the peer address followed, for error messages.
    pub fn primary_description(&self) -> String {
        let v = self.tx.borrow();
        match (&v.primary.name, &v.primary.http_url, &v.primary.peer_addr) {
            (Some(name), Some(url), _) => format!("{name} at {url}"),
            (Some(name), None, _) => name.clone(),
            (None, _, Some(addr)) => format!("the node at peer address {addr}"),
            (None, _, None) => "no primary is known".to_string(),
        }
    }

    /// Replaces the view (a control-plane decision). Subscribers are told only when it changed.
    ///
    /// The control state learns a member's HTTP URL only once that member has announced it;
    /// until then a view naming the same primary without a URL keeps the URL this replica
    /// learned from the primary itself in the handshake, so forwarding does not stop for a new
    /// control state that knows less.
    pub fn set(&self, mut view: ControlView) {
        self.tx.send_if_modified(|v| {
            if view.primary.http_url.is_none()
                && view.primary.name.is_some()
                && view.primary.name == v.primary.name
            {
                view.primary.http_url = v.primary.http_url.clone();
            }
            if *v == view {
                false
            } else {
                *v = view;
                true
            }
        });
    }

    /// What a replica learned of its primary in the handshake: its name, HTTP URL and term.
    /// Ignored unless this node is a replica following that peer address.
    pub fn learned_primary(&self, peer_addr: &str, name: &str, http_url: &str, term: Term) {
        self.tx.send_if_modified(|v| {
            if v.role != NodeRole::Replica || v.primary.peer_addr.as_deref() != Some(peer_addr) {
                return false;
            }
            let learned = PrimaryInfo {
                name: Some(name.to_string()),
                peer_addr: Some(peer_addr.to_string()),
                http_url: Some(http_url.to_string()),
            };
            let term = v.term.max(term);
            if v.primary == learned && v.term == term {
                return false;
            }
            v.primary = learned;
            v.term = term;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_configured_primary_names_itself_and_has_no_lease() {
        let l = Leadership::configured("n1", "http://a", None, Term(1));
        let v = l.view();
        assert_eq!(v.role, NodeRole::Primary);
        assert_eq!(l.primary(), Some(("n1".into(), "http://a".into())));
        assert!(v.is_serving_primary(Instant::now()));
    }

    #[test]
    fn a_control_view_without_the_primarys_url_keeps_the_one_learned() {
        let l = Leadership::configured("n2", "http://b", Some("10.0.0.1:6480"), Term(1));
        l.learned_primary("10.0.0.1:6480", "n1", "http://a", Term(1));
        let view = |name: &str, url: Option<&str>, term: u64| ControlView {
            role: NodeRole::Replica,
            term: Term(term),
            primary: PrimaryInfo {
                name: Some(name.to_string()),
                peer_addr: Some("10.0.0.1:6480".to_string()),
                http_url: url.map(str::to_string),
            },
            lease_until: None,
            draining: false,
        };
        l.set(view("n1", None, 2));
        assert_eq!(l.primary(), Some(("n1".into(), "http://a".into())));
        assert_eq!(l.view().term, Term(2));
        // The control state's URL wins once it has one.
        l.set(view("n1", Some("http://a2"), 2));
        assert_eq!(l.primary(), Some(("n1".into(), "http://a2".into())));
        // Another primary: nothing carries over.
        l.set(view("n3", None, 3));
        assert_eq!(l.primary(), None);
    }

    #[test]
    fn a_replica_learns_its_primary_once_and_subscribers_hear_of_it() {
        let l = Leadership::configured("n2", "http://b", Some("10.0.0.1:6480"), Term(1));
        let mut rx = l.subscribe();
        rx.borrow_and_update();
        assert_eq!(l.primary(), None);
        assert!(l.primary_description().contains("10.0.0.1:6480"));
        l.learned_primary("10.0.0.1:6480", "n1", "http://a", Term(3));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert_eq!(l.primary(), Some(("n1".into(), "http://a".into())));
        assert_eq!(l.view().term, Term(3));
        // The same again changes nothing; an older term never lowers the view's.
        l.learned_primary("10.0.0.1:6480", "n1", "http://a", Term(2));
        assert!(!rx.has_changed().unwrap());
        // A primary at another address than the one followed is not taken.
        l.learned_primary("10.0.0.9:6480", "n9", "http://z", Term(9));
        assert_eq!(l.primary(), Some(("n1".into(), "http://a".into())));
    }

    #[test]
    fn a_lease_that_ran_out_stops_serving() {
        let now = Instant::now();
        let v = ControlView {
            role: NodeRole::Primary,
            term: Term(2),
            primary: PrimaryInfo::default(),
            lease_until: Some(now + Duration::from_millis(10)),
            draining: false,
        };
        assert!(v.is_serving_primary(now));
        assert!(!v.is_serving_primary(now + Duration::from_millis(10)));
        let replica = ControlView {
            role: NodeRole::Replica,
            lease_until: None,
            ..v
        };
        assert!(!replica.is_serving_primary(now));
    }
}
