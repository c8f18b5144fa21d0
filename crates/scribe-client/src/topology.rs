//! [`Topology`]: who is the primary and which replicas may serve reads, decided from the nodes'
//! `/v1/status` answers with no I/O, and the round robin that picks where the next read goes.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

/// The parts of a node's `GET /v1/status` the client routes by. Unknown fields are ignored, and
/// missing ones default, so newer and older nodes both read.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StatusView {
    /// The node's name.
    pub node: String,
    /// `primary` or `replica`.
    pub role: String,
    /// The primary's term.
    #[serde(default)]
    pub term: u64,
    /// Whether it takes writes.
    #[serde(default)]
    pub accepting_writes: bool,
    /// On a primary: its replicas.
    #[serde(default)]
    pub replicas: Vec<ReplicaView>,
    /// On a replica: its stream from the primary.
    #[serde(default)]
    pub replication: Option<FollowView>,
}

/// A replica as its primary sees it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ReplicaView {
    /// Its name.
    pub name: String,
    /// `seeding`, `catching_up`, `streaming` or `disconnected`.
    #[serde(default)]
    pub state: String,
    /// Its HTTP API.
    #[serde(default)]
    pub http_url: Option<String>,
    /// Age of the oldest record it has not applied.
    #[serde(default)]
    pub apply_lag_ms: Option<f64>,
}

/// A replica's own view of its stream.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct FollowView {
    /// `connecting`, `seeding`, `catching_up`, `streaming`, `refused` or `failed`.
    #[serde(default)]
    pub state: String,
    /// The primary's HTTP API, once reached.
    #[serde(default)]
    pub primary_url: Option<String>,
    /// Records the primary has and this replica has not applied.
    #[serde(default)]
    pub lag_records: Option<u64>,
    /// How far behind it is, when the node says.
    #[serde(default)]
    pub lag_ms: Option<f64>,
}

/// What one URL answered to `/v1/status`: its view, or `None` when it did not answer.
pub(crate) type Answer = (String, Option<StatusView>);

/// A node of the cluster: its name and the URL the client uses for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub name: String,
    pub url: String,
}

/// A replica and whether it may serve reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReplicaEntry {
    pub node: Node,
    /// It answered, streams from its primary, and lags by no more than the bound.
    pub healthy: bool,
    /// How far behind it was, when known.
    pub lag: Option<Duration>,
}

/// The cluster as the client last learned it.
///
/// Invariant: no node appears twice (nodes are told apart by name); `cursor` only grows.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Topology {
    pub primary: Option<Node>,
    pub replicas: Vec<ReplicaEntry>,
    /// Where the round robin over healthy replicas continues.
    cursor: usize,
}

/// URLs are compared without a trailing slash.
pub(crate) fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

impl Topology {
    /// URLs the answers name (a replica's primary, a primary's replicas) that are not among the
    /// URLs already asked: the next round of discovery.
    pub(crate) fn referenced_urls(answers: &[Answer]) -> Vec<String> {
        let asked: Vec<String> = answers.iter().map(|(u, _)| normalize(u)).collect();
        let mut out: Vec<String> = Vec::new();
        for (_, view) in answers {
            let Some(v) = view else { continue };
            let named = v
                .replicas
                .iter()
                .filter_map(|r| r.http_url.as_deref())
                .chain(
                    v.replication
                        .as_ref()
                        .and_then(|f| f.primary_url.as_deref()),
                );
            for url in named.map(normalize) {
                if !url.is_empty() && !asked.contains(&url) && !out.contains(&url) {
                    out.push(url);
                }
            }
        }
        out
    }

    /// The topology the answers describe; replicas lagging by more than `max_lag` are kept but
    /// not healthy. Answers earlier in the list win when two URLs reach the same node.
    pub(crate) fn build(answers: &[Answer], max_lag: Duration) -> Topology {
        let mut nodes: Vec<(String, &StatusView)> = Vec::new();
        for (url, view) in answers {
            if let Some(v) = view {
                if !nodes.iter().any(|(_, n)| n.node == v.node) {
                    nodes.push((normalize(url), v));
                }
            }
        }
        // The primary: a node that says so (one taking writes, of the newest term, first)...
        let primary = nodes
            .iter()
            .filter(|(_, v)| v.role == "primary")
            .max_by_key(|(_, v)| (v.accepting_writes, v.term))
            .map(|(url, v)| Node {
                name: v.node.clone(),
                url: url.clone(),
            });
        let primary_view = primary
            .as_ref()
            .and_then(|p| nodes.iter().find(|(_, v)| v.node == p.name))
            .map(|(_, v)| *v);
        let seen_by_primary: HashMap<&str, &ReplicaView> = primary_view
            .map(|v| v.replicas.iter().map(|r| (r.name.as_str(), r)).collect())
            .unwrap_or_default();
        let replicas = nodes
            .iter()
            .filter(|(_, v)| v.role == "replica")
            .map(|(url, v)| {
                let own = v.replication.clone().unwrap_or_default();
                let theirs = seen_by_primary.get(v.node.as_str());
                let lag_ms = theirs
                    .and_then(|r| r.apply_lag_ms)
                    .or(own.lag_ms)
                    .or_else(|| (own.lag_records == Some(0)).then_some(0.0));
                let lag = lag_ms
                    .filter(|ms| ms.is_finite() && *ms >= 0.0)
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0));
                let streaming = matches!(own.state.as_str(), "streaming" | "catching_up");
                let disconnected = theirs.is_some_and(|r| r.state == "disconnected");
                ReplicaEntry {
                    node: Node {
                        name: v.node.clone(),
                        url: url.clone(),
                    },
                    healthy: streaming && !disconnected && lag.is_none_or(|l| l <= max_lag),
                    lag,
                }
            })
            .collect();
        Topology {
            primary,
            replicas,
            cursor: 0,
        }
    }

    /// This topology, continuing the round robin where `previous` left it.
    pub(crate) fn continuing(mut self, previous: &Topology) -> Topology {
        self.cursor = previous.cursor;
        self
    }

    /// The URLs to try for one read, in order: the healthy replicas starting with the next in the
    /// round robin, then the primary, then the replicas not known healthy (a last resort). Each
    /// call moves the round robin one step.
    pub(crate) fn read_order(&mut self) -> Vec<String> {
        let healthy: Vec<&ReplicaEntry> = self.replicas.iter().filter(|r| r.healthy).collect();
        let mut order: Vec<String> = Vec::new();
        if !healthy.is_empty() {
            let start = self.cursor % healthy.len();
            self.cursor = self.cursor.wrapping_add(1);
            order.extend(
                healthy[start..]
                    .iter()
                    .chain(&healthy[..start])
                    .map(|r| r.node.url.clone()),
            );
        }
        order.extend(self.primary.iter().map(|p| p.url.clone()));
        order.extend(
            self.replicas
                .iter()
                .filter(|r| !r.healthy)
                .map(|r| r.node.url.clone()),
        );
        order
    }

    /// A node at `url` failed to answer: it serves no more reads until the next discovery.
    pub(crate) fn mark_down(&mut self, url: &str) {
        for r in &mut self.replicas {
            if r.node.url == url {
                r.healthy = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAG: Duration = Duration::from_secs(1);

    fn primary(name: &str, replicas: &[(&str, &str, &str, Option<f64>)]) -> StatusView {
        StatusView {
            node: name.into(),
            role: "primary".into(),
            term: 1,
            accepting_writes: true,
            replicas: replicas
                .iter()
                .map(|(n, url, state, lag)| ReplicaView {
                    name: (*n).into(),
                    state: (*state).into(),
                    http_url: Some((*url).into()),
                    apply_lag_ms: *lag,
                })
                .collect(),
            replication: None,
        }
    }

    fn replica(name: &str, state: &str, primary_url: &str) -> StatusView {
        StatusView {
            node: name.into(),
            role: "replica".into(),
            replication: Some(FollowView {
                state: state.into(),
                primary_url: Some(primary_url.into()),
                lag_records: Some(0),
                lag_ms: None,
            }),
            ..StatusView::default()
        }
    }

    fn answers(list: &[(&str, Option<StatusView>)]) -> Vec<Answer> {
        list.iter()
            .map(|(u, v)| (u.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_replica_leads_to_the_primary_and_the_primary_to_its_replicas() {
        let first = answers(&[("http://r1/", Some(replica("n2", "streaming", "http://p")))]);
        assert_eq!(Topology::referenced_urls(&first), vec!["http://p"]);
        let mut second = first.clone();
        second.push((
            "http://p".into(),
            Some(primary(
                "n1",
                &[
                    ("n2", "http://r1", "streaming", Some(0.0)),
                    ("n3", "http://r2", "streaming", Some(0.0)),
                ],
            )),
        ));
        assert_eq!(Topology::referenced_urls(&second), vec!["http://r2"]);
        let t = Topology::build(&second, LAG);
        assert_eq!(t.primary.as_ref().map(|p| p.url.as_str()), Some("http://p"));
        // n3 did not answer: it serves nothing.
        assert_eq!(t.replicas.len(), 1);
        assert_eq!(t.replicas[0].node.url, "http://r1");
        assert!(t.replicas[0].healthy);
    }

    #[test]
    fn a_node_reached_by_two_urls_counts_once() {
        let t = Topology::build(
            &answers(&[
                (
                    "http://localhost:1",
                    Some(replica("n2", "streaming", "http://p")),
                ),
                (
                    "http://127.0.0.1:1",
                    Some(replica("n2", "streaming", "http://p")),
                ),
            ]),
            LAG,
        );
        assert_eq!(t.replicas.len(), 1);
        assert_eq!(t.replicas[0].node.url, "http://localhost:1");
    }

    #[test]
    fn lagging_disconnected_or_unstreaming_replicas_are_not_healthy() {
        let t = Topology::build(
            &answers(&[
                (
                    "http://p",
                    Some(primary(
                        "n1",
                        &[
                            ("n2", "http://r2", "streaming", Some(1500.0)),
                            ("n3", "http://r3", "disconnected", None),
                            ("n4", "http://r4", "streaming", Some(20.0)),
                        ],
                    )),
                ),
                ("http://r2", Some(replica("n2", "streaming", "http://p"))),
                ("http://r3", Some(replica("n3", "streaming", "http://p"))),
                ("http://r4", Some(replica("n4", "streaming", "http://p"))),
                ("http://r5", Some(replica("n5", "connecting", "http://p"))),
                ("http://down", None),
            ]),
            LAG,
        );
        let healthy: Vec<(&str, bool)> = t
            .replicas
            .iter()
            .map(|r| (r.node.name.as_str(), r.healthy))
            .collect();
        assert_eq!(
            healthy,
            vec![("n2", false), ("n3", false), ("n4", true), ("n5", false)]
        );
        assert_eq!(t.replicas[0].lag, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn the_primary_taking_writes_in_the_newest_term_wins() {
        let mut old = primary("n1", &[]);
        old.accepting_writes = false;
        let mut new = primary("n2", &[]);
        new.term = 2;
        let t = Topology::build(
            &answers(&[("http://a", Some(old)), ("http://b", Some(new))]),
            LAG,
        );
        assert_eq!(t.primary.map(|p| p.name), Some("n2".to_string()));
        assert_eq!(
            Topology::build(&answers(&[("http://a", None)]), LAG).primary,
            None
        );
    }

    fn three_replicas() -> Topology {
        Topology::build(
            &answers(&[
                (
                    "http://p",
                    Some(primary(
                        "n1",
                        &[
                            ("n2", "http://r2", "streaming", Some(0.0)),
                            ("n3", "http://r3", "streaming", Some(5000.0)),
                            ("n4", "http://r4", "streaming", Some(0.0)),
                        ],
                    )),
                ),
                ("http://r2", Some(replica("n2", "streaming", "http://p"))),
                ("http://r3", Some(replica("n3", "streaming", "http://p"))),
                ("http://r4", Some(replica("n4", "streaming", "http://p"))),
            ]),
            LAG,
        )
    }

    #[test]
    fn reads_go_round_robin_over_healthy_replicas_then_the_primary() {
        let mut t = three_replicas();
        assert_eq!(
            t.read_order(),
            vec!["http://r2", "http://r4", "http://p", "http://r3"]
        );
        assert_eq!(
            t.read_order(),
            vec!["http://r4", "http://r2", "http://p", "http://r3"]
        );
        assert_eq!(
            t.read_order(),
            vec!["http://r2", "http://r4", "http://p", "http://r3"]
        );
    }

    #[test]
    fn a_node_marked_down_is_tried_last() {
        let mut t = three_replicas();
        t.mark_down("http://r2");
        assert_eq!(
            t.read_order(),
            vec!["http://r4", "http://p", "http://r2", "http://r3"]
        );
        // Rediscovery brings it back, and the round robin goes on where it was.
        let fresh = three_replicas().continuing(&t);
        let mut fresh = fresh;
        assert_eq!(
            fresh.read_order(),
            vec!["http://r4", "http://r2", "http://p", "http://r3"]
        );
    }

    #[test]
    fn without_replicas_reads_go_to_the_primary() {
        let mut t = Topology::build(&answers(&[("http://p", Some(primary("n1", &[])))]), LAG);
        assert_eq!(t.read_order(), vec!["http://p"]);
        assert_eq!(Topology::default().read_order(), Vec::<String>::new());
    }
}
