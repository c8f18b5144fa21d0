//! Users and roles, end to end: a real `scribe node --users FILE` made with `scribe user add`,
//! driven over HTTP with Basic credentials and bearer tokens; and the loopback-only default of
//! a node without users.

mod cluster;
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{scribe_bin, scribe_cli, NodeProc};
use serde_json::{json, Value};

fn add_user(users: &Path, name: &str, role: &str, password: &str) {
    let mut child = Command::new(scribe_bin())
        .args([
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--users",
        ])
        .arg(users)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scribe user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A users file in `dir` with `reader` (read, `r-pass`), `writer` (write, `w-pass`) and `boss`
/// (admin, `a-pass`).
fn three_users(dir: &Path) -> std::path::PathBuf {
    let users = dir.join("users.toml");
    add_user(&users, "reader", "read", "r-pass");
    add_user(&users, "writer", "write", "w-pass");
    add_user(&users, "boss", "admin", "a-pass");
    users
}

struct Caller {
    http: reqwest::Client,
    url: String,
}

enum Cred<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

impl Caller {
    async fn call(&self, path: &str, body: Value, cred: Cred<'_>) -> (u16, Value, Option<String>) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(&body);
        if path == "/v1/status" {
            req = self.http.get(format!("{}{path}", self.url));
        }
        req = match cred {
            Cred::None => req,
            Cred::Basic(u, p) => req.basic_auth(u, Some(p)),
            Cred::Bearer(t) => req.bearer_auth(t),
        };
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let www = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body, www)
    }
}

fn insert(v: i64) -> Value {
    json!({ "statements": [{ "sql": "INSERT INTO t (v) VALUES (?)", "params": [v] }] })
}

#[tokio::test]
async fn roles_decide_what_each_user_may_do_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = three_users(dir.path());
    let (code, list, err) = scribe_cli(&["user", "list", "--users", users.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list, "reader\tread\nwriter\twrite\nboss\tadmin\n");
    // The file holds verifiers, never the passwords.
    let text = std::fs::read_to_string(&users).expect("read users");
    assert!(text.contains("SCRAM-SHA-256$4096:"), "{text}");
    assert!(!text.contains("w-pass"), "{text}");

    let node = NodeProc::start(
        "n1",
        &dir.path().join("n1"),
        &["--users", users.to_str().expect("utf8")],
    );
    let c = Caller {
        http: reqwest::Client::new(),
        url: node.url.clone(),
    };
    let create = json!({ "statements": [{ "sql": "CREATE TABLE t (v INTEGER)" }] });
    let (s, body, _) = c
        .call("/v1/execute", create, Cred::Basic("writer", "w-pass"))
        .await;
    assert_eq!(s, 200, "{body}");

    // No credentials, a wrong password, an unknown user: 401 with a challenge.
    for cred in [
        Cred::None,
        Cred::Basic("writer", "nope"),
        Cred::Basic("nobody", "w-pass"),
    ] {
        let (s, body, www) = c.call("/v1/execute", insert(1), cred).await;
        assert_eq!(s, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        assert!(www.expect("WWW-Authenticate").contains("Basic"));
    }
    // A reader reads but may not write.
    let (s, body, _) = c
        .call("/v1/execute", insert(2), Cred::Basic("reader", "r-pass"))
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let q = json!({ "sql": "SELECT count(*) FROM t" });
    let (s, body, _) = c
        .call("/v1/query", q.clone(), Cred::Basic("reader", "r-pass"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["rows"], json!([[0]]));
    // A writer writes, and may not switch over, change membership or promote.
    let (s, body, _) = c
        .call("/v1/execute", insert(3), Cred::Basic("writer", "w-pass"))
        .await;
    assert_eq!(s, 200, "{body}");
    for path in ["/v1/switchover", "/v1/members", "/v1/promote"] {
        let (s, body, _) = c
            .call(path, json!({}), Cred::Basic("writer", "w-pass"))
            .await;
        assert_eq!(s, 403, "{path}: {body}");
    }
    // Below admin the status is a summary (what a client routes by), an admin sees it all.
    for (user, password) in [("reader", "r-pass"), ("writer", "w-pass")] {
        let (s, body, _) = c
            .call("/v1/status", Value::Null, Cred::Basic(user, password))
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["detail"], "summary", "{body}");
        assert_eq!(body["role"], "primary", "{body}");
        let mut keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "accepting_writes",
                "applied_lsn",
                "detail",
                "flushed_lsn",
                "node",
                "position",
                "primary",
                "replicas",
                "role",
                "term",
                "version"
            ],
            "nothing but what a client routes by"
        );
    }
    let (s, body, _) = c.call("/v1/status", Value::Null, Cred::None).await;
    assert_eq!(s, 401, "{body}");
    let (s, body, _) = c
        .call("/v1/status", Value::Null, Cred::Basic("boss", "a-pass"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.get("detail").is_none() && body["commit"].is_object(),
        "{body}"
    );
    let metrics = c
        .http
        .get(format!("{}/metrics", c.url))
        .basic_auth("writer", Some("w-pass"))
        .send()
        .await
        .expect("send");
    assert_eq!(metrics.status().as_u16(), 403, "metrics need admin");

    // A client cannot pass for another node: a made-up assertion is refused.
    for forged in [
        "fwd2.Ym9zcw.admin.POST.L3YxL2V4ZWN1dGU.99999999999.AAAA",
        "garbage",
    ] {
        let r = c
            .http
            .post(format!("{}/v1/execute", c.url))
            .header("x-scribe-assert-user", forged)
            .json(&insert(9))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 401, "{forged}");
    }

    // A bearer token from `scribe user token` stands for its user and role.
    let (code, token, err) = scribe_cli(&[
        "user",
        "token",
        "writer",
        "--users",
        users.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim();
    let (s, body, _) = c.call("/v1/execute", insert(4), Cred::Bearer(token)).await;
    assert_eq!(s, 200, "{body}");
    let (s, _, _) = c
        .call("/v1/switchover", json!({}), Cred::Bearer(token))
        .await;
    assert_eq!(s, 403);
    let forged = format!("{}x", &token[..token.len() - 1]);
    let (s, _, _) = c
        .call("/v1/execute", insert(5), Cred::Bearer(&forged))
        .await;
    assert_eq!(s, 401);
    let (s, body, _) = c
        .call("/v1/query", q, Cred::Basic("reader", "r-pass"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["rows"],
        json!([[2]]),
        "only the writer's two inserts landed"
    );
    // Each refused login is logged with the client's address, the user name escaped.
    let (_, log) = node.terminate();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP authentication failed"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("127.0.0.1:") && l.contains("\"nobody\"")),
        "{log}"
    );
}

#[test]
fn a_malformed_users_file_stops_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nname = \"a\"\nrole = \"root\"\npassword = \"x\"\n",
    )
    .expect("write");
    let err = NodeProc::try_start(
        "n1",
        &dir.path().join("n1"),
        &["--users", users.to_str().expect("utf8")],
    )
    .err()
    .expect("must not start");
    assert!(err.contains("users file") && err.contains("root"), "{err}");
    // A file without a token_key would let anyone make tokens: refused.
    let good = dir.path().join("good.toml");
    add_user(&good, "a", "read", "pw");
    let text = std::fs::read_to_string(&good).expect("read");
    let verifier = text
        .lines()
        .find(|l| l.starts_with("password"))
        .expect("a password line");
    std::fs::write(
        &users,
        format!("[[user]]\nname = \"a\"\nrole = \"read\"\n{verifier}\n"),
    )
    .expect("write");
    let err = NodeProc::try_start(
        "n1",
        &dir.path().join("n1"),
        &["--users", users.to_str().expect("utf8")],
    )
    .err()
    .expect("must not start without a token_key");
    assert!(err.contains("token_key"), "{err}");
    let missing = dir.path().join("nope.toml");
    let err = NodeProc::try_start(
        "n1",
        &dir.path().join("n1"),
        &["--users", missing.to_str().expect("utf8")],
    )
    .err()
    .expect("must not start");
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn without_users_only_loopback_unless_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = NodeProc::try_start_with(&[], "0.0.0.0:0", "n1", &dir.path().join("n1"), &[], &[])
        .err()
        .expect("0.0.0.0 without --users must be refused");
    assert!(
        err.contains("not a loopback address") && err.contains("--insecure"),
        "{err}"
    );
    let node = NodeProc::try_start_with(
        &[],
        "0.0.0.0:0",
        "n1",
        &dir.path().join("n1"),
        &["--insecure"],
        &[],
    )
    .expect("--insecure allows it");
    let (_, stderr) = node.terminate();
    assert!(stderr.contains("no --users"), "{stderr}");
}

/// `psql -c SQL` as `user` (verbose errors, so the SQLSTATE shows): success, stdout, stderr.
fn psql_user(port: u16, user: &str, password: Option<&str>, sql: &str) -> (bool, String, String) {
    common::psql_as(
        port,
        user,
        password,
        &["-v", "VERBOSITY=verbose", "-At", "-c", sql],
    )
}

/// `psql -c SQL` as `user`, which must succeed: its output.
fn psql_ok(port: u16, user: &str, password: Option<&str>, sql: &str) -> String {
    let (ok, out, err) = psql_user(port, user, password, sql);
    assert!(ok, "{user}: {sql}: {err}");
    out
}

/// `psql -c SQL` as `user`, which must fail with SQLSTATE `code`.
fn psql_refused(port: u16, user: &str, password: Option<&str>, sql: &str, code: &str) {
    let (ok, _, err) = psql_user(port, user, password, sql);
    assert!(
        !ok && err.contains(code),
        "{user}: {sql}: want {code}: {err}"
    );
}

/// Polls `sql` on the node as `cred` until its first cell is `want`.
async fn wait_rows(c: &Caller, sql: &str, cred: (&str, &str), want: Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (s, body, _) = c
            .call(
                "/v1/query",
                json!({ "sql": sql }),
                Cred::Basic(cred.0, cred.1),
            )
            .await;
        if s == 200 && body["rows"] == json!([[want.clone()]]) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql} on {} did not reach {want}: {s} {body}",
            c.url
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn roles_hold_on_postgres_and_through_a_replica() {
    if !common::have_tool("psql", &["--version"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let users = three_users(dir.path());
    let users = users.to_str().expect("utf8");
    let peer = format!("127.0.0.1:{}", common::free_port());
    let pg_primary = common::PgNode::start("p", dir.path(), &["--users", users, "--peer", &peer]);
    let pg_replica = common::PgNode::start("r", dir.path(), &["--users", users, "--follow", &peer]);
    let (pg_p, pg_r) = (pg_primary.pg, pg_replica.pg);
    let (primary, replica) = (&pg_primary.node, &pg_replica.node);
    let http = reqwest::Client::new();
    let p = Caller {
        http: http.clone(),
        url: primary.url.clone(),
    };
    let r = Caller {
        http,
        url: replica.url.clone(),
    };

    // PostgreSQL on the primary: SCRAM-SHA-256 per user.
    let (ok, _, err) = psql_user(pg_p, "writer", None, "SELECT 1");
    assert!(!ok && err.contains("no password supplied"), "{err}");
    for (user, password) in [("writer", "nope"), ("nobody", "w-pass")] {
        let (ok, _, err) = psql_user(pg_p, user, Some(password), "SELECT 1");
        assert!(
            !ok && err.contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{user}: {err}"
        );
    }
    let out = psql_ok(
        pg_p,
        "writer",
        Some("w-pass"),
        "CREATE TABLE t (v INTEGER); INSERT INTO t (v) VALUES (1); SELECT count(*) FROM t",
    );
    assert_eq!(out.lines().last(), Some("1"), "{out}");
    psql_refused(
        pg_p,
        "reader",
        Some("r-pass"),
        "INSERT INTO t (v) VALUES (2)",
        "42501",
    );
    psql_refused(
        pg_p,
        "reader",
        Some("r-pass"),
        "BEGIN; INSERT INTO t (v) VALUES (2); COMMIT",
        "42501",
    );
    let out = psql_ok(pg_p, "reader", Some("r-pass"), "SELECT count(*) FROM t");
    assert_eq!(out.trim(), "1", "the reader's inserts did not land");

    // Through the replica: HTTP writes are forwarded with the client's role.
    wait_rows(&r, "SELECT count(*) FROM t", ("reader", "r-pass"), json!(1)).await;
    let (s, body, _) = r.call("/v1/execute", insert(3), Cred::None).await;
    assert_eq!(s, 401, "{body}");
    let (s, body, _) = r
        .call("/v1/execute", insert(3), Cred::Basic("reader", "r-pass"))
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body, _) = r
        .call("/v1/execute", insert(4), Cred::Basic("writer", "w-pass"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["forwarded_to"], "p", "{body}");
    for path in ["/v1/switchover", "/v1/members"] {
        let (s, body, _) = r
            .call(path, json!({}), Cred::Basic("writer", "w-pass"))
            .await;
        assert_eq!(s, 403, "{path} through the replica: {body}");
    }
    // PostgreSQL on the replica: its writes are forwarded too, with the same checks.
    let (ok, _, err) = psql_user(pg_r, "writer", Some("nope"), "SELECT 1");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    psql_refused(
        pg_r,
        "reader",
        Some("r-pass"),
        "INSERT INTO t (v) VALUES (5)",
        "42501",
    );
    psql_ok(
        pg_r,
        "writer",
        Some("w-pass"),
        "INSERT INTO t (v) VALUES (6)",
    );
    // A block on the replica's port runs on the primary (a remote lease, with the assertion).
    psql_ok(
        pg_r,
        "writer",
        Some("w-pass"),
        "BEGIN; INSERT INTO t (v) VALUES (7); INSERT INTO t (v) VALUES (8); COMMIT",
    );

    // A reader's read-only blocks work as in PostgreSQL (savepoints, nondeterministic reads)
    // without holding the writer; what would hold it is refused, and so is COPY FROM.
    for port in [pg_p, pg_r] {
        let out = psql_ok(port,
            "reader",
            Some("r-pass"),
            "BEGIN; SELECT random() < 2; SAVEPOINT a; SELECT count(*) FROM t; ROLLBACK TO SAVEPOINT a; RELEASE a; COMMIT");
        assert!(
            out.contains("SAVEPOINT") && out.contains("RELEASE"),
            "{out}"
        );
        psql_refused(
            port,
            "reader",
            Some("r-pass"),
            "BEGIN; RELEASE nope; COMMIT",
            "3B001",
        );
        let (ok, _, err) = psql_user(
            port,
            "reader",
            Some("r-pass"),
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1; COMMIT",
        );
        assert!(
            !ok && err.contains("42501") && err.contains("READ COMMITTED"),
            "{err}"
        );
        psql_refused(
            port,
            "reader",
            Some("r-pass"),
            "COPY t (v) FROM STDIN",
            "42501",
        );
        // A refused FOR UPDATE aborts the block like any error, and ROLLBACK TO recovers it;
        // a savepoint that does not exist is 3B001, also in an aborted block.
        let out = common::psql_command(port, "reader", Some("r-pass"))
            .args(["-At", "-v", "VERBOSITY=verbose"])
            .args([
                "-c",
                "BEGIN",
                "-c",
                "SAVEPOINT a",
                "-c",
                "SELECT v FROM t FOR UPDATE",
            ])
            .args(["-c", "ROLLBACK TO SAVEPOINT a", "-c", "SELECT 42"])
            .args([
                "-c",
                "SELECT nope",
                "-c",
                "ROLLBACK TO SAVEPOINT b",
                "-c",
                "COMMIT",
            ])
            .output()
            .expect("psql");
        let (out, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.contains("42"),
            "the block went on after ROLLBACK TO: {out} {err}"
        );
        assert!(err.contains("42501") && err.contains("3B001"), "{err}");
        assert!(
            out.trim_end().ends_with("ROLLBACK"),
            "COMMIT of an aborted block: {out}"
        );
    }

    // Exactly the writer's rows, on both nodes.
    let (s, body, _) = p
        .call(
            "/v1/query",
            json!({ "sql": "SELECT group_concat(v) FROM (SELECT v FROM t ORDER BY v)" }),
            Cred::Basic("reader", "r-pass"),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["rows"], json!([["1,4,6,7,8"]]), "{body}");
    wait_rows(&r, "SELECT count(*) FROM t", ("boss", "a-pass"), json!(5)).await;
    // An admin may ask the replica for its status.
    let (s, body, _) = r
        .call("/v1/status", Value::Null, Cred::Basic("boss", "a-pass"))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["role"], "replica", "{body}");
    // Each refused PostgreSQL login is logged with the client's address, the name escaped.
    let (_, log) = pg_primary.node.terminate();
    assert!(
        log.lines()
            .any(|l| l.contains("PostgreSQL authentication failed")
                && l.contains("127.0.0.1:")
                && l.contains("\"nobody\"")),
        "{log}"
    );
}

/// A cluster whose members all have `--users`: the nodes' own calls to each other (positions,
/// switchover, failover) carry their signed assertions, a client's call keeps its role through
/// forwarding, and a failover loses no acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_with_users_switches_over_and_fails_over() {
    let _serial = cluster::SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let users = three_users(dir.path());
    let mut c = cluster::Cluster::start(&["--users", users.to_str().expect("utf8")]);
    c.admin = Some(("boss".into(), "a-pass".into()));
    let (mut c, p) = c.create_table().await;
    c.caught_up(p, Duration::from_secs(20)).await;
    let as_user = |c: &cluster::Cluster, i: usize, user: &str, password: &str| {
        let url = c.nodes[i].as_ref().expect("running").url.clone();
        common::Api::with_basic_auth(&url, user, password)
    };
    let via = (p + 1) % 3;
    let target = (p + 2) % 3;
    let key =
        |k: &str| json!({"statements": [{"sql": "INSERT INTO t (k) VALUES (?)", "params": [k]}]});
    let mut acked = Vec::new();

    let (code, body) = as_user(&c, via, "reader", "r-pass")
        .post("/v1/execute", &key("reader"))
        .await
        .expect("send");
    assert_eq!(code, 403, "{body}");
    let (code, body) = as_user(&c, via, "writer", "w-pass")
        .post("/v1/execute", &key("w1"))
        .await
        .expect("send");
    assert_eq!(code, 200, "{body}");
    acked.push("w1");
    let switch = json!({ "to": c.names[target] });
    let (code, body) = as_user(&c, via, "writer", "w-pass")
        .post("/v1/switchover", &switch)
        .await
        .expect("send");
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        c.primary(Duration::from_secs(1)).await.0,
        p,
        "nothing changed"
    );
    let (code, body) = as_user(&c, via, "boss", "a-pass")
        .post("/v1/switchover", &switch)
        .await
        .expect("send");
    assert_eq!(code, 200, "{body}");
    assert_eq!(c.primary(Duration::from_secs(5)).await.0, target);
    let (code, body) = as_user(&c, p, "writer", "w-pass")
        .post("/v1/execute", &key("w2"))
        .await
        .expect("send");
    assert_eq!(code, 200, "forwarded from the old primary: {body}");
    acked.push("w2");

    // A fourth node joins through a replica: its own calls (the cluster's status, adding
    // itself) are signed as the node.
    let peer4 = format!("127.0.0.1:{}", common::free_port());
    let n4 = common::NodeProc::start(
        "n4",
        &dir.path().join("n4"),
        &[
            "--peer",
            &peer4,
            "--join",
            &c.nodes[via].as_ref().expect("running").url,
            "--users",
            users.to_str().expect("utf8"),
        ],
    );
    let n4_api = common::Api::with_basic_auth(&n4.url, "boss", "a-pass");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.api(target).expect("running").status().await;
        let voters = st["cluster"]["raft"]["voters"].to_string();
        if voters.contains("n4") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n4 did not become a voter: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The primary dies; the others elect a new one among themselves, with --users throughout.
    c.caught_up(target, Duration::from_secs(20)).await;
    c.kill(target);
    let (now, _) = c.primary(Duration::from_secs(30)).await;
    assert_ne!(now, target);
    let (code, body) = as_user(&c, now, "writer", "w-pass")
        .post("/v1/execute", &key("w3"))
        .await
        .expect("send");
    assert_eq!(code, 200, "{body}");
    acked.push("w3");
    c.restart(target);
    c.caught_up(now, Duration::from_secs(30)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while n4_api.status().await["applied_lsn"].as_u64()
        < c.api(now).expect("running").status().await["flushed_lsn"].as_u64()
    {
        assert!(std::time::Instant::now() < deadline, "n4 did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let apis: Vec<common::Api> = (0..3)
        .map(|i| c.api(i).expect("running"))
        .chain([n4_api])
        .collect();
    for api in &apis {
        let rows = api.rows("SELECT k FROM t ORDER BY k").await;
        let keys: Vec<&str> = rows.iter().filter_map(|r| r[0].as_str()).collect();
        assert_eq!(keys, acked, "on {}", api.url);
    }
}

/// The Rust client library and the CLI against nodes with `--users`: credentials on every
/// request (discovery included), refusals as their own errors, never retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_and_the_cli_log_in() {
    use scribe_client::{Cluster, Consistency, Error, Options};
    let dir = tempfile::tempdir().expect("tempdir");
    let users = three_users(dir.path());
    let users = users.to_str().expect("utf8");
    let peer = format!("127.0.0.1:{}", common::free_port());
    let primary = common::start_primary("p", &dir.path().join("p"), &peer, &["--users", users]);
    let replica = common::start_replica("r", &dir.path().join("r"), &peer, &["--users", users]);
    let seeds = [replica.url.clone()];

    // No credentials, a wrong password: discovery itself is refused, as such.
    let e = Cluster::connect(seeds.clone())
        .await
        .expect_err("no credentials");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let bad = Options::default().basic_auth("writer", "nope");
    let e = Cluster::connect_with(seeds.clone(), bad)
        .await
        .expect_err("wrong password");
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");

    let writer = Cluster::connect_with(
        seeds.clone(),
        Options::default().basic_auth("writer", "w-pass"),
    )
    .await
    .expect("the writer connects through the replica");
    assert_eq!(writer.primary_url().as_deref(), Some(primary.url.as_str()));
    writer
        .execute(["CREATE TABLE t (v INTEGER)", "INSERT INTO t (v) VALUES (1)"])
        .await
        .expect("the writer writes");
    let session = writer.session();
    session
        .execute(["INSERT INTO t (v) VALUES (2)"])
        .await
        .expect("write");
    let rows = session
        .query("SELECT count(*) FROM t", ())
        .await
        .expect("read your writes");
    assert_eq!(rows.rows, vec![vec![scribe_client::Value::Integer(2)]]);

    let reader = Cluster::connect_with(
        seeds.clone(),
        Options::default().basic_auth("reader", "r-pass"),
    )
    .await
    .expect("the reader connects");
    let started = std::time::Instant::now();
    let e = reader
        .execute(["INSERT INTO t (v) VALUES (3)"])
        .await
        .expect_err("a reader may not write");
    assert!(
        matches!(&e, Error::Forbidden(m) if m.contains("reader")),
        "{e:?}"
    );
    assert_eq!(e.code(), Some("forbidden"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "refused at once, not retried"
    );
    let rows = reader
        .query_with("SELECT count(*) FROM t", (), Consistency::Strong)
        .await
        .expect("the reader reads");
    assert_eq!(
        rows.rows,
        vec![vec![scribe_client::Value::Integer(2)]],
        "nothing of the reader's write"
    );

    let (code, token, err) = scribe_cli(&["user", "token", "writer", "--users", users]);
    assert_eq!(code, 0, "{err}");
    let by_token =
        Cluster::connect_with(seeds.clone(), Options::default().bearer_token(token.trim()))
            .await
            .expect("a token connects");
    by_token
        .execute(["INSERT INTO t (v) VALUES (4)"])
        .await
        .expect("the token's user writes");

    // The CLI: --user with SCRIBE_PASSWORD or --password-stdin, --token.
    let cli = |args: &[&str], env: &[(&str, &str)], stdin: &str| {
        let mut child = Command::new(scribe_bin())
            .args(args)
            .env_remove("SCRIBE_PASSWORD")
            .env_remove("SCRIBE_USER")
            .env_remove("SCRIBE_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scribe");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = replica.url.as_str();
    let (code, _, err) = cli(&["status", "--url", url], &[], "");
    assert_ne!(code, 0);
    assert!(err.contains("authentication"), "{err}");
    let (code, out, err) = cli(
        &["status", "--url", url, "--user", "boss", "--json"],
        &[("SCRIBE_PASSWORD", "a-pass")],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"replication\""), "{out}");
    let (code, _, err) = cli(
        &[
            "sql",
            "--url",
            url,
            "--user",
            "reader",
            "--password-stdin",
            "-c",
            "INSERT INTO t (v) VALUES (5)",
        ],
        &[],
        "r-pass\n",
    );
    assert_ne!(code, 0);
    assert!(err.contains("reader") && err.contains("write"), "{err}");
    let (code, out, err) = cli(
        &[
            "sql",
            "--url",
            url,
            "--token",
            token.trim(),
            "-c",
            "INSERT INTO t (v) VALUES (6); SELECT count(*) FROM t",
        ],
        &[],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('4'), "{out}");
    let (code, _, err) = cli(
        &["switchover", "--to", "r", "--url", url, "--user", "writer"],
        &[("SCRIBE_PASSWORD", "w-pass")],
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("admin"), "a writer may not switch over: {err}");
    let (code, _, err) = cli(&["status", "--url", url, "--user", "boss"], &[], "");
    assert_ne!(code, 0);
    assert!(
        err.contains("SCRIBE_PASSWORD"),
        "no password and no terminal: {err}"
    );
}

/// Nodes whose users files have different token keys cannot vouch for each other's clients:
/// a write forwarded by such a replica is refused (401), never run with a role the primary's file
/// does not give; the replica's reads go on.
#[tokio::test]
async fn a_replica_with_another_users_file_cannot_forward_for_its_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pu, ru) = (dir.path().join("p.toml"), dir.path().join("r.toml"));
    add_user(&pu, "writer", "write", "w-pass");
    add_user(&ru, "writer", "admin", "w-pass");
    let peer = format!("127.0.0.1:{}", common::free_port());
    let primary = common::start_primary(
        "p",
        &dir.path().join("p"),
        &peer,
        &["--users", pu.to_str().expect("utf8")],
    );
    let replica = common::start_replica(
        "r",
        &dir.path().join("r"),
        &peer,
        &["--users", ru.to_str().expect("utf8")],
    );
    let p = common::Api::with_basic_auth(&primary.url, "writer", "w-pass");
    let r = common::Api::with_basic_auth(&replica.url, "writer", "w-pass");
    let (code, body) = p
        .execute(&["CREATE TABLE t (v INTEGER)"])
        .await
        .expect("send");
    assert_eq!(code, 200, "{body}");
    let (code, body) = r
        .execute(&["INSERT INTO t (v) VALUES (1)"])
        .await
        .expect("send");
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("assertion"),
        "{body}"
    );
    let rows = p.rows("SELECT count(*) FROM t").await;
    assert_eq!(rows, vec![vec![json!(0)]]);
}
