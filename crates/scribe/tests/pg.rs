//! The PostgreSQL wire protocol with the real tools: psql runs the classic walkthrough on a
//! primary and reads it on a replica, `\dt` and `\d users` print the table; pgbench initialises
//! scale 10 and runs the TPC-B-like script at 8 clients for 30 s in each commit mode with no
//! failed transaction, and the select-only script on a replica; the psycopg 3 suite
//! (tests/psycopg) passes against a primary and a replica; SCRAM refuses a wrong password;
//! garbage on the PostgreSQL port is refused and the node serves on.
//!
//! These need psql, pgbench and python3 with the suite's requirements: `.ci/run` installs them.
//! Without them each test says so and passes, unless `SCRIBE_REQUIRE_PG_TOOLS=1` (set by CI),
//! when a missing tool fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{have_tool as have, psql_as, PgNode};
use scribe_testkit::{free_port, wait_status};

fn start(name: &str, dir: &Path, extra: &[&str]) -> PgNode {
    PgNode::start(name, dir, extra)
}

/// psql as the default user, no password.
fn psql(port: u16, args: &[&str]) -> (bool, String, String) {
    psql_as(port, "scribe", None, args)
}

fn pgbench(port: u16, args: &[&str]) -> String {
    // Loading the tables is one long COPY (a debug build takes longer than the default 5 s
    // statement timeout for it), so the session asks for more, as a user's bulk load would.
    let out = Command::new("pgbench")
        .env("PGOPTIONS", "-c statement_timeout=5min")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "scribe"])
        .args(args)
        .arg("scribe")
        .output()
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// The figure after `label` on a line of pgbench's report.
fn figure(report: &str, label: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.contains(label))?;
    line.split(label)
        .nth(1)?
        .trim()
        .trim_start_matches('=')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cluster(dir: &Path, commit: &[&str]) -> (PgNode, PgNode, String) {
    let peer = format!("127.0.0.1:{}", free_port());
    let mut extra = vec!["--peer", peer.as_str()];
    extra.extend_from_slice(commit);
    let primary = start("n1", dir, &extra);
    let replica = start("n2", dir, &["--follow", &peer]);
    (primary, replica, peer)
}

async fn wait_streaming(primary: &PgNode) {
    wait_status(
        &primary.node.url,
        Duration::from_secs(30),
        "n2 streams",
        |s| s["replicas"][0]["state"] == "streaming",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_walkthrough_runs_in_psql_on_a_primary_and_a_replica() {
    if !have("psql", &["--version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica, _) = cluster(dir.path(), &[]);
    wait_streaming(&primary).await;
    let (ok, out, err) = psql(
        primary.pg,
        &[
            "-c",
            "CREATE TABLE users (id SERIAL PRIMARY KEY, name TEXT)",
            "-c",
            "INSERT INTO users (name) VALUES ('Alice')",
        ],
    );
    assert!(ok, "psql on the primary: {err}");
    assert!(
        out.contains("CREATE TABLE") && out.contains("INSERT 0 1"),
        "{out}"
    );

    // On the replica, once applied: Alice with id 1.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, err) = psql(replica.pg, &["-c", "SELECT * FROM users"]);
        if ok && out.contains("Alice") {
            assert!(out.contains(" id | name"), "{out}");
            assert!(out.lines().any(|l| l.trim() == "1 | Alice"), "{out}");
            assert!(out.contains("(1 row)"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never showed Alice: {out}{err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A write through psql on the replica goes to the primary, and the replica reads it back at
    // once (the session's position token).
    let (ok, out, err) = psql(
        replica.pg,
        &[
            "-c",
            "INSERT INTO users (name) VALUES ('Bob')",
            "-c",
            "SELECT name FROM users ORDER BY id",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("INSERT 0 1") && out.contains("Bob"), "{out}");

    let (ok, out, err) = psql(primary.pg, &["-c", "\\dt"]);
    assert!(ok, "\\dt: {err}");
    assert!(out.contains("List of relations"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("public") && l.contains("users") && l.contains("table")),
        "{out}"
    );
    assert!(
        !out.contains("_scribe"),
        "Scribe's own tables are hidden: {out}"
    );

    let (ok, out, err) = psql(primary.pg, &["-c", "\\d users"]);
    assert!(ok, "\\d users: {err}");
    assert!(out.contains("Table \"public.users\""), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("id ") && l.contains("not null")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("name ") && l.contains("text")),
        "{out}"
    );
    assert!(out.contains("PRIMARY KEY"), "{out}");

    // Errors carry SQLSTATEs psql shows, and the session goes on.
    let (ok, _, err) = psql(primary.pg, &["-c", "SELECT * FROM nope"]);
    assert!(
        !ok && err.contains("does not exist") || err.contains("no such table"),
        "{err}"
    );
    let (ok, out, _) = psql(primary.pg, &["-c", "SELECT count(*) FROM users"]);
    assert!(ok && out.contains(" 2"), "{out}");

    // Several statements in one message are one implicit transaction: all or nothing.
    let (ok, _, err) = psql(
        primary.pg,
        &[
            "-c",
            "INSERT INTO users (name) VALUES ('Carol'); SELECT * FROM nope",
        ],
    );
    assert!(!ok, "{err}");
    let (ok, out, _) = psql(
        primary.pg,
        &[
            "-At",
            "-c",
            "SELECT count(*) FROM users WHERE name = 'Carol'",
        ],
    );
    assert!(ok && out.trim() == "0", "Carol was kept: {out}");

    // A transaction block across round trips: rolled back, committed, and one left open by a
    // client that goes away is rolled back.
    let (ok, out, err) = psql(
        primary.pg,
        &[
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO users (name) VALUES ('Dan')",
            "-c",
            "ROLLBACK",
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO users (name) VALUES ('Eve')",
            "-c",
            "UPDATE users SET name = 'Eve!' WHERE name = 'Eve'",
            "-c",
            "COMMIT",
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO users (name) VALUES ('Fay')",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("ROLLBACK") && out.contains("COMMIT"), "{out}");
    let (ok2, out2, _) = psql(
        primary.pg,
        &[
            "-At",
            "-c",
            "SELECT count(*) FROM users WHERE name IN ('Dan', 'Fay')",
        ],
    );
    assert!(
        ok2 && out2.trim() == "0",
        "a rolled back or abandoned insert was kept: {out2}"
    );
    let (ok, out, _) = psql(
        primary.pg,
        &[
            "-At",
            "-c",
            "SELECT count(*) FROM users WHERE name = 'Eve!'",
        ],
    );
    assert!(ok && out.trim() == "1", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_in_every_commit_mode_without_failures_and_select_only_on_a_replica() {
    if !have("pgbench", &["--version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let duration = std::env::var("SCRIBE_PGBENCH_SECONDS").unwrap_or_else(|_| "30".into());
    let modes: [&[&str]; 3] = [
        &["--commit", "async"],
        &["--commit", "semi-sync", "--sync-replicas", "ANY 1 (*)"],
        &["--commit", "sync", "--sync-replicas", "FIRST 1 (n2)"],
    ];
    let peer = format!("127.0.0.1:{}", free_port());
    let replica_dir = dir.path().to_path_buf();
    let mut replica: Option<PgNode> = None;
    for (i, mode) in modes.iter().enumerate() {
        let mut extra = vec!["--peer", peer.as_str()];
        extra.extend_from_slice(mode);
        let primary = start("n1", dir.path(), &extra);
        if replica.is_none() {
            replica = Some(start("n2", &replica_dir, &["--follow", &peer]));
        }
        wait_streaming(&primary).await;
        if i == 0 {
            let out = pgbench(primary.pg, &["-i", "-s", "10", "-q"]);
            assert!(out.contains("done"), "{out}");
        }
        let out = pgbench(primary.pg, &["-c", "8", "-j", "2", "-T", &duration]);
        let failed = figure(&out, "number of failed transactions:").unwrap_or(-1.0);
        let tps = figure(&out, "tps").unwrap_or(0.0);
        eprintln!("pgbench {mode:?}: tps {tps}, failed {failed}");
        assert_eq!(failed, 0.0, "failed transactions in {mode:?}:\n{out}");
        assert!(tps > 0.0, "{out}");
        // The money is conserved: the three balance sums agree (pgbench empties the history
        // table at the start of each run, so it holds this run's deltas only).
        let (ok, sums, err) = psql(
            primary.pg,
            &["-At", "-c", "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers) AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches) AND (SELECT count(*) FROM pgbench_history) > 0"],
        );
        assert!(ok, "{err}");
        assert_eq!(sums.trim(), "1", "balances disagree after {mode:?}");
        primary.node.kill9();
    }
    let replica = replica.expect("started");
    // The replica holds whole transactions only: its balances agree too.
    let (ok, sums, err) = psql(
        replica.pg,
        &["-At", "-c", "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches) AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(bbalance) FROM pgbench_branches)"],
    );
    assert!(ok, "{err}");
    assert_eq!(sums.trim(), "1", "the replica's balances disagree");
    let out = pgbench(replica.pg, &["-S", "-c", "4", "-j", "2", "-T", "5"]);
    assert_eq!(
        figure(&out, "number of failed transactions:"),
        Some(0.0),
        "{out}"
    );
    let dir_keep: PathBuf = dir.path().to_path_buf();
    drop(dir_keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_psycopg_suite_passes_on_a_primary_and_a_replica() {
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/psycopg");
    if !have("python3", &["-c", "import psycopg, pytest"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (primary, replica, _) = cluster(dir.path(), &[]);
    wait_streaming(&primary).await;
    let dsn = |port: u16| format!("host=127.0.0.1 port={port} user=scribe dbname=scribe");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("SCRIBE_PG_DSN", dsn(primary.pg))
        .env("SCRIBE_PG_REPLICA_DSN", dsn(replica.pg))
        .env("SCRIBE_PG_IS_SCRIBE", "1")
        .output()
        .expect("run pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the psycopg suite failed:\n{text}");
    assert!(
        text.contains("passed") && !text.contains("failed"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_lets_in_the_right_password_only_and_garbage_is_refused() {
    if !have("psql", &["--version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = start("n1", dir.path(), &["--pg-password", "s3cret"]);
    let run = |password: &str| {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &node.pg.to_string(),
                "-U",
                "alice",
                "-d",
                "scribe",
                "-X",
                "-At",
                "-c",
                "SELECT 1",
            ])
            .env("PGPASSWORD", password)
            .output()
            .expect("psql")
    };
    let ok = run("s3cret");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "1");
    let bad = run("wrong");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("password") || err.contains("authentication"),
        "{err}"
    );

    // Garbage on the port: the connection is dropped, the node goes on serving.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", node.pg)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let ok = run("s3cret");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_served_when_configured_and_set_local_lasts_one_block() {
    if !have("psql", &["--version"]) || !have("openssl", &["version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let node = start(
        "n1",
        dir.path(),
        &[
            "--pg-tls-cert",
            cert.to_str().unwrap(),
            "--pg-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user=scribe dbname=scribe sslmode=require",
            node.pg
        ))
        .args(["-X", "-At", "-c", "SELECT 'over tls'"])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");

    // SET LOCAL holds inside its block only; SET for the session.
    let (ok, out, err) = psql(
        node.pg,
        &[
            "-At",
            "-c",
            "BEGIN",
            "-c",
            "SET LOCAL scribe.commit = 'sync'",
            "-c",
            "SHOW scribe.commit",
            "-c",
            "COMMIT",
            "-c",
            "SHOW scribe.commit",
            "-c",
            "SET synchronous_commit = remote_write",
            "-c",
            "SHOW scribe.commit",
        ],
    );
    assert!(ok, "{err}");
    let shown: Vec<&str> = out.lines().filter(|l| l.contains("sync")).collect();
    assert_eq!(shown, ["sync", "async", "semi-sync"], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_not_confirmed_in_time_is_a_warning_on_the_primary_and_through_a_replica() {
    if !have("psql", &["--version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The sync set names a replica that never comes: every semi-sync commit times out.
    let (primary, replica, _) = cluster(
        dir.path(),
        &[
            "--commit",
            "semi-sync",
            "--sync-replicas",
            "FIRST 1 (n9)",
            "--sync-timeout",
            "200ms",
        ],
    );
    wait_streaming(&primary).await;
    let (ok, _, err) = psql(
        primary.pg,
        &["-c", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"],
    );
    assert!(ok, "{err}");
    for (node, v) in [
        (&primary, "on the primary"),
        (&replica, "through the replica"),
    ] {
        let insert = format!("INSERT INTO t (v) VALUES ('{v}')");
        let (ok, out, err) = psql(node.pg, &["-c", &insert]);
        assert!(ok, "a committed write must not be an error: {err}");
        assert!(out.contains("INSERT"), "{out}");
        assert!(
            err.contains("WARNING") && err.contains("committed"),
            "{v}: stderr {err:?} stdout {out:?}"
        );
    }
    let (ok, out, _) = psql(primary.pg, &["-At", "-c", "SELECT count(*) FROM t"]);
    assert!(ok && out.trim() == "2", "{out}");
}
