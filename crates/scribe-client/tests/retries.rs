//! Retries and rediscovery against fake nodes — small HTTP servers in this process whose role and
//! answers the test sets — for the cases real nodes cannot be made to show on demand: a primary
//! that moves, a write whose answer is lost, a node failing. Each fake counts the writes it
//! received, so a test can assert a write was sent exactly as often as was safe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use scribe_client::{Cluster, Consistency, Error, Options, Statement};
use serde_json::{json, Value};

/// How a fake node answers `/v1/execute` or `/v1/query`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// 200 with a plausible body.
    Ok,
    /// 409 `not_primary`.
    NotPrimary,
    /// An error status with an error body of this code.
    Error(u16, &'static str),
    /// Never answers (the client times out).
    Hang,
}

/// What a fake node is and does now.
#[derive(Debug)]
struct Script {
    name: &'static str,
    /// `primary` or `replica`.
    role: &'static str,
    /// On a replica: its primary's URL.
    primary_url: Option<String>,
    execute: Answer,
    query: Answer,
    /// `/v1/execute` requests received.
    executes: usize,
    /// `/v1/query` requests received.
    queries: usize,
    /// The last position given out.
    lsn: u64,
}

type Shared = Arc<Mutex<Script>>;

/// A fake node serving on 127.0.0.1.
struct Fake {
    url: String,
    script: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Fake {
    async fn start(name: &'static str, role: &'static str) -> Fake {
        let script = Arc::new(Mutex::new(Script {
            name,
            role,
            primary_url: None,
            execute: Answer::Ok,
            query: Answer::Ok,
            executes: 0,
            queries: 0,
            lsn: 1,
        }));
        let app = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/execute", post(execute))
            .route("/v1/query", post(query))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Fake {
            url,
            script,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().expect("script"));
    }

    fn executes(&self) -> usize {
        self.script.lock().expect("script").executes
    }

    fn queries(&self) -> usize {
        self.script.lock().expect("script").queries
    }

    /// Stops listening and closes its connections: from now on, connections are refused.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        // Let the client see its kept-alive connections close: a write racing that close is of
        // unknown outcome, rightly, and these tests are about refused connections.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(State(s): State<Shared>) -> Json<Value> {
    let s = s.lock().expect("script");
    let mut body = json!({
        "node": s.name, "role": s.role, "term": 1, "applied_lsn": s.lsn,
        "position": format!("1/{}", s.lsn), "accepting_writes": s.role == "primary",
        "replicas": [],
    });
    if s.role == "replica" {
        body["replication"] = json!({
            "state": "streaming", "primary": "?", "primary_url": s.primary_url,
            "lag_records": 0, "lag_ms": 0.0,
        });
    }
    Json(body)
}

fn error(status: u16, code: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    (
        status,
        Json(json!({"error": {"code": code, "message": format!("fake {code}")}})),
    )
        .into_response()
}

async fn execute(State(s): State<Shared>) -> Response {
    let answer = {
        let mut s = s.lock().expect("script");
        s.executes += 1;
        if s.execute == Answer::Ok {
            s.lsn += 1;
        }
        s.execute
    };
    let lsn = s.lock().expect("script").lsn;
    match answer {
        Answer::Ok => Json(json!({
            "results": [{"rows_affected": 1, "last_insert_id": lsn}],
            "position": format!("1/{lsn}"),
            "durability": {"mode": "async", "acked_by": [], "degraded": false},
        }))
        .into_response(),
        Answer::NotPrimary => error(409, "not_primary"),
        Answer::Error(status, code) => error(status, code),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            error(500, "internal")
        }
    }
}

async fn query(State(s): State<Shared>) -> Response {
    let (answer, name, lsn) = {
        let mut s = s.lock().expect("script");
        s.queries += 1;
        (s.query, s.name, s.lsn)
    };
    match answer {
        Answer::Ok => Json(json!({
            "columns": ["x"], "rows": [[1]], "position": format!("1/{lsn}"), "served_by": name,
        }))
        .into_response(),
        Answer::NotPrimary => error(409, "not_primary"),
        Answer::Error(status, code) => error(status, code),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            error(500, "internal")
        }
    }
}

/// `n1` the primary and `n2` its replica.
async fn two() -> (Fake, Fake) {
    let a = Fake::start("n1", "primary").await;
    let b = Fake::start("n2", "replica").await;
    b.set(|s| s.primary_url = Some(a.url.clone()));
    (a, b)
}

fn insert() -> [Statement; 1] {
    [Statement::new("INSERT INTO t VALUES (?)").param(1)]
}

fn options() -> Options {
    Options::default()
        .request_timeout(Duration::from_millis(500))
        .refresh_interval(Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_could_not_connect_goes_to_the_new_primary_once() {
    let (mut a, b) = two().await;
    let cluster = Cluster::connect_with([&a.url, &b.url], options())
        .await
        .expect("connect");
    assert_eq!(cluster.primary_url(), Some(a.url.clone()));
    a.stop().await;
    b.set(|s| {
        s.role = "primary";
        s.primary_url = None;
    });
    let done = cluster.execute(insert()).await.expect("write");
    assert_eq!(done.url, b.url);
    assert_eq!(b.executes(), 1);
    assert_eq!(cluster.primary_url(), Some(b.url.clone()));
    assert_eq!(cluster.position(), Some(done.position));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_not_primary_goes_to_the_new_primary_once() {
    let (a, b) = two().await;
    let cluster = Cluster::connect_with([&a.url], options())
        .await
        .expect("connect");
    a.set(|s| {
        s.role = "replica";
        s.primary_url = Some(b.url.clone());
        s.execute = Answer::NotPrimary;
    });
    b.set(|s| {
        s.role = "primary";
        s.primary_url = None;
    });
    let done = cluster.execute(insert()).await.expect("write");
    assert_eq!(done.url, b.url);
    assert_eq!((a.executes(), b.executes()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_is_not_sent_again() {
    let (a, b) = two().await;
    let cluster = Cluster::connect_with([&a.url, &b.url], options())
        .await
        .expect("connect");
    for (answer, unknown) in [
        (Answer::Hang, true),
        (Answer::Error(500, "internal"), true),
        (Answer::Error(502, "bad_gateway"), true),
        (Answer::Error(503, "unavailable"), false),
        (Answer::Error(504, "sync_timeout"), false),
        (Answer::Error(409, "constraint_violation"), false),
    ] {
        a.set(|s| {
            s.execute = answer;
            s.executes = 0;
        });
        let e = cluster.execute(insert()).await.expect_err("fails");
        assert_eq!(a.executes(), 1, "{answer:?} sent once: {e:?}");
        if unknown {
            assert!(
                matches!(&e, Error::OutcomeUnknown { url, .. } if *url == a.url),
                "{answer:?}: {e:?}"
            );
            assert!(e.to_string().contains("check whether it committed"), "{e}");
        } else {
            assert!(matches!(e, Error::Server { .. }), "{answer:?}: {e:?}");
        }
    }
    assert_eq!(b.executes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_give_up_after_the_retry_bound_without_a_primary() {
    let (mut a, b) = two().await;
    let cluster = Cluster::connect_with([&a.url, &b.url], options().write_retries(2))
        .await
        .expect("connect");
    a.stop().await;
    let e = cluster.execute(insert()).await.expect_err("no primary");
    assert!(matches!(e, Error::NoPrimary(_)), "{e:?}");
    assert_eq!(b.executes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_moves_on_to_the_next_node_when_one_cannot_serve_it() {
    let (a, mut b) = two().await;
    let c = Fake::start("n3", "replica").await;
    c.set(|s| s.primary_url = Some(a.url.clone()));
    let cluster = Cluster::connect_with([&a.url, &b.url, &c.url], options())
        .await
        .expect("connect");
    assert_eq!(cluster.replicas().len(), 2);
    // Round robin over the two replicas.
    for _ in 0..4 {
        cluster.query("SELECT 1", ()).await.expect("read");
    }
    assert_eq!((a.queries(), b.queries(), c.queries()), (0, 2, 2));

    b.set(|s| s.query = Answer::Error(503, "lagging"));
    c.set(|s| s.query = Answer::Error(504, "not_caught_up"));
    let r = cluster.query("SELECT 1", ()).await.expect("read");
    assert_eq!(r.served_by.as_deref(), Some("n1"));

    b.stop().await;
    c.set(|s| s.query = Answer::Ok);
    for _ in 0..3 {
        let r = cluster.query("SELECT 1", ()).await.expect("read");
        assert_eq!(r.served_by.as_deref(), Some("n3"));
    }

    c.set(|s| s.query = Answer::Error(400, "sql_error"));
    let e = cluster.query("SELEC 1", ()).await.expect_err("bad SQL");
    assert_eq!(e.code(), Some("sql_error"));
    // A strong read goes to the primary only.
    let before = c.queries();
    let r = cluster
        .query_with("SELECT 1", (), Consistency::Strong)
        .await
        .expect("strong");
    assert_eq!(r.served_by.as_deref(), Some("n1"));
    assert_eq!(c.queries(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_picture_of_the_cluster_is_refreshed_in_the_background() {
    let (a, b) = two().await;
    let cluster = Cluster::connect_with(
        [&a.url, &b.url],
        options().refresh_interval(Duration::from_millis(100)),
    )
    .await
    .expect("connect");
    a.set(|s| {
        s.role = "replica";
        s.primary_url = Some(b.url.clone());
    });
    b.set(|s| {
        s.role = "primary";
        s.primary_url = None;
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A call starts the refresh; it does not wait for it.
    cluster.query("SELECT 1", ()).await.expect("read");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cluster.primary_url() != Some(b.url.clone()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            cluster.primary_url()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.replicas()[0].name, "n1");
}
