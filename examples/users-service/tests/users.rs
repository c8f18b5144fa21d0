//! The users service against real nodes — a primary and a replica made to lag — as its users
//! would drive it: a user created and listed right away is always in the list, though the list is
//! read on the lagging replica.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::Pair;
use scribe_client::Cluster;
use serde_json::{json, Value};
use users_service::User;

/// Create-then-list rounds.
const ROUNDS: usize = 1000;
/// How long the replica pauses between fsync and apply.
const APPLY_DELAY_MS: u64 = 25;

/// Serves the service in this process; answers its URL.
async fn serve(cluster: Cluster) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, users_service::router(cluster)).await });
    url
}

/// `/v1/query` answers with status 200 a node has given.
async fn queries_answered(http: &reqwest::Client, node: &str) -> u64 {
    let text = http
        .get(format!("{node}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("scribe_http_requests_total{route=\"/v1/query\",code=\"200\"} ")
        })
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_created_is_in_the_list_right_away() {
    let pair = Pair::start(APPLY_DELAY_MS).await;
    let cluster = Cluster::connect([&pair.primary.url, &pair.replica.url])
        .await
        .expect("connect");
    users_service::prepare(&cluster).await.expect("schema");
    let app = serve(cluster).await;
    let http = reqwest::Client::new();
    let mut missing = Vec::new();
    // Reads of the replica itself, without a token, right after the create: how often it had
    // not applied the new user yet — the lag the service hides.
    let mut replica_behind = 0;
    for i in 0..ROUNDS {
        let name = format!("user {i}");
        let r = http
            .post(format!("{app}/users"))
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status().as_u16(), 201);
        let created: User = r.json().await.expect("created user");
        assert_eq!(created.name, name);

        let (_, direct) = post(
            &http,
            &format!("{}/v1/query", pair.replica.url),
            &json!({"sql": "SELECT count(*) FROM users WHERE id = ?", "params": [created.id]}),
        )
        .await;
        if direct["rows"] == json!([[0]]) {
            replica_behind += 1;
        }

        let r = http.get(format!("{app}/users")).send().await.expect("list");
        assert_eq!(r.status().as_u16(), 200);
        let users: Vec<User> = r.json().await.expect("users");
        if !users.contains(&created) {
            missing.push(created.id);
        }
    }
    let on_primary = queries_answered(&http, &pair.primary.url).await;
    let on_replica = queries_answered(&http, &pair.replica.url).await;
    eprintln!(
        "{ROUNDS} create-then-list rounds: {} listings without the new user; the replica had not applied it yet at {replica_behind} of them; /v1/query answered by the replica {on_replica}, by the primary {on_primary}",
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "users missing from the list: {missing:?}"
    );
    // The listings were read on the lagging replica (not all sent to the primary), and that
    // replica was really behind: the test could have failed.
    assert!(
        on_primary <= (ROUNDS / 10) as u64,
        "{on_primary} reads on the primary"
    );
    // Less the direct reads above, one per round.
    let listings_on_replica = on_replica.saturating_sub(ROUNDS as u64);
    assert!(
        listings_on_replica >= (ROUNDS * 9 / 10) as u64,
        "{listings_on_replica} listings read on the replica"
    );
    assert!(
        replica_behind > ROUNDS / 2,
        "the replica did not lag: {replica_behind}"
    );
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = http.post(url).json(body).send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// The `users-service` binary, run as a user would.
struct ServiceProc(std::process::Child);

impl Drop for ServiceProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_users_from_a_cluster() {
    let pair = Pair::start(0).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_users-service"))
        .args([
            "--scribe",
            &format!("{},{}", pair.primary.url, pair.replica.url),
        ])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn users-service");
    let stdout = child.stdout.take().expect("stdout");
    let service = ServiceProc(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let url = line
        .trim()
        .strip_prefix("users-service listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let http = reqwest::Client::new();

    let (status, ada) = post(&http, &format!("{url}/users"), &json!({"name": "Ada"})).await;
    assert_eq!(status, 201, "{ada}");
    assert_eq!(ada["name"], "Ada");
    let users: Value = http
        .get(format!("{url}/users"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(users, json!([{"id": ada["id"], "name": "Ada"}]));

    let (status, err) = post(&http, &format!("{url}/users"), &json!({"name": "  "})).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"], "name must not be empty");
    let (status, err) = post(&http, &format!("{url}/users"), &json!({"nom": "x"})).await;
    assert_eq!(status, 400, "{err}");
    drop(service);
}
