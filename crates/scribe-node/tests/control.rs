//! The control plane as a cluster: three planes in one process, each with its own data
//! directory and its own loopback listener whose accept loop hands `ControlHello` connections
//! to `serve_connection`, as the node's peer listener does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use scribe_core::{Applied, ControlCommand, ControlError, ControlState, FailoverKind, Term};
use scribe_node::control::{serve_connection, ControlConfig, ControlPlane, ProposeError, Role};
use scribe_wire::{read_message, write_message, ControlHello, Message, RefusalCode};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct TestNode {
    config: ControlConfig,
    addr: SocketAddr,
    plane: Option<ControlPlane>,
    accept: Option<JoinHandle<()>>,
}

impl TestNode {
    fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().expect("node is running")
    }

    async fn start(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let plane = ControlPlane::start(self.config.clone()).await.unwrap();
        self.accept = Some(tokio::spawn(accept_loop(listener, plane.clone())));
        self.plane = Some(plane);
    }

    /// Shuts the plane down and drops its listener.
    async fn stop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        if let Some(p) = self.plane.take() {
            p.shutdown().await;
        }
    }
}

async fn accept_loop(listener: TcpListener, plane: ControlPlane) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let plane = plane.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            let mut rd = BufReader::new(rd);
            if let Ok(Message::ControlHello(hello)) = read_message(&mut rd).await {
                let _ = serve_connection(plane, rd, wr, hello).await;
            }
        });
    }
}

struct Cluster {
    nodes: Vec<TestNode>,
    _dir: tempfile::TempDir,
}

/// Configurations for `n` members on free loopback ports (listeners bound, then released).
async fn configs(n: usize, dir: &std::path::Path) -> Vec<(ControlConfig, SocketAddr)> {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    drop(listeners);
    let members: Vec<(String, String)> = (0..n)
        .map(|i| (format!("n{}", i + 1), addrs[i].to_string()))
        .collect();
    (0..n)
        .map(|i| {
            let name = format!("n{}", i + 1);
            let data: PathBuf = dir.join(&name);
            let mut c = ControlConfig::new(name, data, members.clone(), "test-cluster");
            c.snapshot_every = 20;
            (c, addrs[i])
        })
        .collect()
}

async fn start_cluster(n: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for (config, addr) in configs(n, dir.path()).await {
        let mut node = TestNode {
            config,
            addr,
            plane: None,
            accept: None,
        };
        node.start().await;
        nodes.push(node);
    }
    Cluster { nodes, _dir: dir }
}

impl Cluster {
    /// Waits until every running node has applied a bootstrapped state.
    async fn bootstrapped(&self) -> ControlState {
        let mut last = ControlState::default();
        for n in self.nodes.iter().filter(|n| n.plane.is_some()) {
            last = wait_state(n.plane(), Duration::from_secs(8), |s| s.is_bootstrapped()).await;
        }
        last
    }

    /// The index of the node that is leader, once one of the running nodes is.
    async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if n.plane
                    .as_ref()
                    .is_some_and(|p| p.raft_status().role == Role::Leader)
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
    }
}

async fn wait_state(
    plane: &ControlPlane,
    within: Duration,
    pred: impl Fn(&ControlState) -> bool,
) -> ControlState {
    let mut rx = plane.state();
    let got = tokio::time::timeout(within, rx.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match got {
        Ok(Ok(s)) => s,
        _ => panic!(
            "{}: the state did not get there within {within:?}: {:?}",
            plane.name(),
            *rx.borrow()
        ),
    }
}

fn set_http(name: &str, url: &str) -> ControlCommand {
    ControlCommand::SetAddresses {
        name: name.into(),
        http_url: url.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_bootstrap_agree_and_accept_proposals_from_a_follower() {
    let mut c = start_cluster(3).await;
    let state = c.bootstrapped().await;
    assert_eq!(state.cluster_id, "test-cluster");
    assert_eq!(state.term, Term(1));
    assert_eq!(state.members.len(), 3);
    let leader = c.leader(Duration::from_secs(2)).await;
    let leader_name = c.nodes[leader].config.name.clone();
    assert_eq!(
        state.primary.as_deref(),
        Some(leader_name.as_str()),
        "the first leader bootstraps itself as primary"
    );
    for n in &c.nodes {
        let st = n.plane().raft_status();
        assert_eq!(st.voters.len(), 3, "{st:?}");
        assert_eq!(
            *n.plane().state().borrow(),
            state,
            "{} disagrees",
            n.config.name
        );
    }

    // A follower's proposal is forwarded to the leader and reaches everyone.
    let follower = (leader + 1) % 3;
    let got = c.nodes[follower]
        .plane()
        .propose_retrying(
            set_http("n2", "http://127.0.0.1:5482"),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert_eq!(got, Applied::AddressesSet { name: "n2".into() });
    for n in &c.nodes {
        wait_state(n.plane(), Duration::from_secs(3), |s| {
            s.members["n2"].http_url.as_deref() == Some("http://127.0.0.1:5482")
        })
        .await;
    }

    // The lease: only the primary of the current term renews it.
    let primary = leader_name.clone();
    let other = c.nodes[follower].config.name.clone();
    let renew = |holder: &str, term: u64| ControlCommand::RenewLease {
        holder: holder.into(),
        term: Term(term),
    };
    let e = c.nodes[follower]
        .plane()
        .propose_retrying(renew(&other, 1), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ProposeError::Rejected(ControlError::NotLeaseHolder { .. })
        ),
        "{e}"
    );
    assert!(!e.is_retryable());
    let ok = c.nodes[follower]
        .plane()
        .propose_retrying(renew(&primary, 1), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        ok,
        Applied::LeaseRenewed {
            term: Term(1),
            renewals: 1
        }
    );

    // A promotion moves the lease; the deposed primary's renewal is refused.
    let promote = ControlCommand::Promote {
        name: other.clone(),
        expected_term: Term(1),
        reason: "test".into(),
        kind: FailoverKind::Forced,
        from: Some(primary.clone()),
        lease_renewals: None,
    };
    let p = c.nodes[leader]
        .plane()
        .propose_retrying(promote.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        p,
        Applied::Promoted {
            primary: other.clone(),
            term: Term(2)
        }
    );
    let e = c.nodes[leader]
        .plane()
        .propose_retrying(promote, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProposeError::Rejected(ControlError::StaleTerm { .. })),
        "{e}"
    );
    let e = c.nodes[leader]
        .plane()
        .propose_retrying(renew(&primary, 1), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("deposed primary"), "{e}");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_the_stopped_node_catches_up_after_a_restart() {
    let mut c = start_cluster(3).await;
    c.bootstrapped().await;
    let old = c.leader(Duration::from_secs(2)).await;
    let before = c.nodes[old].plane().raft_status();
    c.nodes[old].stop().await;

    let stopped_at = Instant::now();
    let new = c.leader(Duration::from_secs(4)).await;
    assert_ne!(new, old);
    let took = stopped_at.elapsed();
    // Elections start after 0.6–1 s of silence; a split vote costs one more round.
    assert!(took < Duration::from_secs(3), "a new leader took {took:?}");

    // Proposals work without the old leader, from the new leader and from the other node.
    let third = (0..3).find(|i| *i != old && *i != new).unwrap();
    c.nodes[third]
        .plane()
        .propose_retrying(
            set_http("n1", "http://after-failover"),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    // Enough entries that the leader snapshots and purges its log past what the stopped node
    // has, so it catches up by snapshot.
    let primary = c.nodes[new]
        .plane()
        .state()
        .borrow()
        .primary
        .clone()
        .unwrap();
    for _ in 0..60 {
        c.nodes[new]
            .plane()
            .propose_retrying(
                ControlCommand::RenewLease {
                    holder: primary.clone(),
                    term: Term(1),
                },
                Duration::from_secs(3),
            )
            .await
            .unwrap();
    }
    let expected = wait_state(c.nodes[new].plane(), Duration::from_secs(3), |s| {
        s.lease.as_ref().is_some_and(|l| l.renewals == 60)
    })
    .await;

    // The leader's log no longer holds what the stopped node lacks: only a snapshot can
    // bring it up to date.
    // (Snapshots and purges run after the entries are applied.)
    let mut status = c.nodes[new].plane().raft_status_watch();
    let purged = tokio::time::timeout(
        Duration::from_secs(3),
        status.wait_for(|s| s.purged_index > before.last_log_index),
    )
    .await;
    assert!(
        purged.is_ok(),
        "the leader's log was not purged past {before:?}: {:?}",
        c.nodes[new].plane().raft_status()
    );

    c.nodes[old].start().await;
    let caught_up = wait_state(c.nodes[old].plane(), Duration::from_secs(5), |s| {
        s.lease.as_ref().is_some_and(|l| l.renewals == 60)
    })
    .await;
    assert_eq!(caught_up, expected);
    assert_eq!(
        caught_up.members["n1"].http_url.as_deref(),
        Some("http://after-failover")
    );
    let after = c.nodes[old].plane().raft_status();
    assert!(
        after.raft_term > before.raft_term,
        "{before:?} then {after:?}"
    );
    assert!(after.leader.is_some(), "{after:?}");
    assert_ne!(after.role, Role::Leader);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vote_log_and_state_survive_a_restart_of_a_single_node_group() {
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = configs(1, dir.path()).await.remove(0);
    let mut node = TestNode {
        config,
        addr,
        plane: None,
        accept: None,
    };
    node.start().await;
    let state = wait_state(node.plane(), Duration::from_secs(5), |s| {
        s.is_bootstrapped()
    })
    .await;
    assert_eq!(state.primary.as_deref(), Some("n1"));
    for _ in 0..45 {
        node.plane()
            .propose_retrying(
                ControlCommand::RenewLease {
                    holder: "n1".into(),
                    term: Term(1),
                },
                Duration::from_secs(3),
            )
            .await
            .unwrap();
    }
    let before = node.plane().raft_status();
    let state = node.plane().state().borrow().clone();
    assert_eq!(state.lease.as_ref().unwrap().renewals, 45);
    node.stop().await;

    // The log is compacted behind snapshots (every 20 entries here).
    let log_len = std::fs::metadata(dir.path().join("n1/control/log"))
        .unwrap()
        .len();
    assert!(log_len < 20_000, "the log file holds {log_len} bytes");
    assert!(dir.path().join("n1/control/snapshot").exists());

    node.start().await;
    let again = wait_state(node.plane(), Duration::from_secs(5), |s| {
        s.lease.as_ref().is_some_and(|l| l.renewals == 45)
    })
    .await;
    assert_eq!(again, state);
    let mut status = node.plane().raft_status_watch();
    let after = tokio::time::timeout(
        Duration::from_secs(3),
        status.wait_for(|s| s.role == Role::Leader),
    )
    .await
    .expect("the restarted node leads its group again")
    .unwrap()
    .clone();
    assert!(
        after.raft_term >= before.raft_term,
        "{before:?} then {after:?}"
    );
    assert!(
        after.last_log_index >= before.last_log_index,
        "{before:?} then {after:?}"
    );
    // And it is still writable.
    node.plane()
        .propose_retrying(set_http("n1", "http://x"), Duration::from_secs(3))
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_others_bootstrap_when_the_first_member_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for (mut config, addr) in configs(3, dir.path()).await {
        config.bootstrap_grace = Duration::from_millis(500);
        nodes.push(TestNode {
            config,
            addr,
            plane: None,
            accept: None,
        });
    }
    // n1 sorts first and would initialise the group; it is down.
    for n in &mut nodes[1..] {
        n.start().await;
    }
    let mut c = Cluster { nodes, _dir: dir };
    let state = c.bootstrapped().await;
    let leader = c.leader(Duration::from_secs(2)).await;
    assert_ne!(leader, 0);
    assert_eq!(
        state.primary.as_deref(),
        Some(c.nodes[leader].config.name.as_str())
    );
    // n1 joins later, with an empty data directory, and catches up.
    c.nodes[0].start().await;
    let joined = wait_state(c.nodes[0].plane(), Duration::from_secs(5), |s| {
        s.is_bootstrapped()
    })
    .await;
    assert_eq!(joined, state);
    c.stop_all().await;
}

async fn hello_answer(addr: SocketAddr, hello: ControlHello) -> Message {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    write_message(&mut wr, &Message::ControlHello(hello))
        .await
        .unwrap();
    // The plane answers a refused hello at once; an accepted one waits for a request.
    write_message(
        &mut wr,
        &Message::ControlRequest {
            id: 1,
            body: b"not json".to_vec(),
        },
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(3), read_message(&mut rd))
        .await
        .expect("an answer")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_another_cluster_id_or_member_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, addr) = configs(1, dir.path()).await.remove(0);
    let mut node = TestNode {
        config: config.clone(),
        addr,
        plane: None,
        accept: None,
    };
    node.start().await;
    let good = ControlHello {
        cluster_id: config.cluster_id.clone(),
        from: "n1".into(),
        members: config.sorted_members(),
    };

    let mut other_id = good.clone();
    other_id.cluster_id = "another".into();
    match hello_answer(addr, other_id).await {
        Message::Refused(r) => {
            assert_eq!(r.code, RefusalCode::ClusterMismatch);
            assert!(
                r.message.contains("\"another\"") && r.message.contains("\"test-cluster\""),
                "{}",
                r.message
            );
        }
        m => panic!("expected a refusal, got {m:?}"),
    }

    // Once the group is bootstrapped the membership decides: a non-member is refused, a member
    // is welcome whatever its list. (Before, the lists must agree.)
    wait_state(node.plane(), Duration::from_secs(8), |s| {
        s.is_bootstrapped()
    })
    .await;
    let mut other_list = good.clone();
    other_list.members.push(("n9".into(), "127.0.0.1:1".into()));
    other_list.from = "n9".into();
    match hello_answer(addr, other_list).await {
        Message::Refused(r) => {
            assert_eq!(r.code, RefusalCode::ClusterMismatch);
            assert!(
                r.message.contains("\"n9\" is not a member")
                    && r.message.contains("scribe members add"),
                "{}",
                r.message
            );
        }
        m => panic!("expected a refusal, got {m:?}"),
    }
    // A member whose --cluster list predates a membership change is still a member.
    let mut older_list = good.clone();
    older_list.members.push(("n9".into(), "127.0.0.1:1".into()));
    assert!(matches!(
        hello_answer(addr, older_list).await,
        Message::ControlResponse { .. }
    ));

    // The right hello is accepted: the (undecodable) request gets an answer, not a refusal.
    match hello_answer(addr, good).await {
        Message::ControlResponse { id, body } => {
            assert_eq!(id, 1);
            let text = String::from_utf8(body).unwrap();
            assert!(text.contains("undecodable"), "{text}");
        }
        m => panic!("expected a response, got {m:?}"),
    }
    node.stop().await;
}
