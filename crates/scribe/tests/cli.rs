//! The `scribe` command as a user types it: the classic example through `scribe sql -c`, errors
//! with a non-zero exit, `scribe status`, `--help` for every command, and `scribe demo` from start
//! to end (failover included).

mod common;

use common::NodeProc;

fn scribe(args: &[&str]) -> (i32, String, String) {
    common::scribe_cli(args)
}

#[test]
fn the_classic_example_through_scribe_sql() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &[]);
    let (code, out, err) = scribe(&[
        "sql",
        "--url",
        &node.url,
        "-c",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('Alice'); SELECT * FROM users;",
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let table: Vec<&str> = out.lines().filter(|l| l.contains("Alice")).collect();
    assert_eq!(
        table.len(),
        1,
        "Alice should appear once in a table row:\n{out}"
    );
    assert!(table[0].contains('1'), "her id should be 1:\n{out}");
    assert!(
        out.contains("id") && out.contains("name"),
        "the header should name the columns:\n{out}"
    );
    assert!(out.contains("(1 row)"), "{out}");
}

#[test]
fn a_failing_statement_exits_non_zero_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &[]);
    let (code, out, err) = scribe(&[
        "sql",
        "--url",
        &node.url,
        "-c",
        "CREATE TABLE t (x); SELEC 1; INSERT INTO t VALUES (1);",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("error:") && err.contains("syntax error"),
        "stderr: {err}"
    );
    // The statement after the failing one did not run.
    let (code, out, _) = scribe(&[
        "sql",
        "--url",
        &node.url,
        "-c",
        "SELECT count(*) AS n FROM t",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.trim_matches(|c: char| !c.is_ascii_digit()) == "0"),
        "{out}"
    );
    // An unreachable node is a clear error too.
    let (code, _, err) = scribe(&["sql", "--url", "http://127.0.0.1:1", "-c", "SELECT 1"]);
    assert_ne!(code, 0);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn scribe_status_prints_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &[]);
    let (code, out, err) = scribe(&["status", "--url", &node.url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n1") && out.contains("primary"), "{out}");
    let (code, out, _) = scribe(&["status", "--url", &node.url, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["role"], "primary");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "node",
        "demo",
        "sql",
        "status",
        "bench",
        "switchover",
        "promote",
        "members",
    ] {
        let (code, out, _) = scribe(&[cmd, "--help"]);
        assert_eq!(code, 0, "{cmd} --help");
        assert!(out.contains("Usage:"), "{cmd}: {out}");
    }
    let (_, out, _) = scribe(&["node", "--help"]);
    for flag in [
        "--name",
        "--data",
        "--http",
        "--config",
        "--max-request-bytes",
        "SCRIBE_DATA",
        "--pg",
        "--pg-password",
        "--pg-tls-cert",
        "--txn-idle-timeout",
        "--cluster",
        "--witness",
        "SCRIBE_WITNESS",
        "--join",
        "--reform-cluster",
        "--lease",
        "--failover-timeout",
    ] {
        assert!(out.contains(flag), "node --help lacks {flag}");
    }
}

/// The text of step `n` of the demo's output: from its `── step N:` heading to the next one.
fn demo_step(out: &str, n: u32) -> &str {
    let start = out
        .find(&format!("── step {n}:"))
        .unwrap_or_else(|| panic!("no step {n}:\n{out}"));
    let rest = &out[start..];
    let heading = "── step ".len();
    let end = rest[heading..]
        .find("── step ")
        .map_or(rest.len(), |e| e + heading);
    &rest[..end]
}

/// The table rows of `text` (lines with a `|`) that contain `what`.
fn rows_with<'a>(text: &'a str, what: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.contains(what) && l.contains('|'))
        .collect()
}

#[test]
fn the_demo_walks_through_the_example_then_fails_over_and_the_old_primary_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    // Base ports kept apart from other tests' free ports (those come from the ephemeral range,
    // 32768 and up): the demo uses PORT..PORT+2, PORT+1000..PORT+1002 and, for PostgreSQL,
    // PORT+2000..PORT+2002 — all below 32768.
    let port = 20_000 + (std::process::id() % 3_000) as u16 * 3;
    let demo_dir = dir.path().join("demo");
    let (code, out, err) = scribe(&[
        "demo",
        "--no-wait",
        "--dir",
        demo_dir.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--pg-port",
        &(port + 2000).to_string(),
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("Done; stopping the nodes."), "{out}");
    // The first primary, as elected (not assumed).
    let first = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| out.contains(&format!("   {n} is the primary (term ")))
        .unwrap_or_else(|| panic!("the first primary is named:\n{out}"));
    // Step 3: Alice read back from a replica, with id 1.
    let step3 = demo_step(&out, 3);
    let alice = rows_with(step3, "Alice");
    assert_eq!(alice.len(), 1, "{out}");
    assert!(alice[0].trim_start().starts_with('1'), "{out}");
    assert!(
        !step3.contains(&format!("(on {first})")),
        "read on a replica:\n{out}"
    );
    // Step 4: the replica refused the write, naming the primary.
    let step4 = demo_step(&out, 4);
    assert!(
        step4.contains("read-only replica") && step4.contains(first),
        "{out}"
    );
    assert!(step4.contains(&format!("forwarded to {first}")), "{out}");
    // Step 5: the status table lists both replicas streaming.
    let step5 = demo_step(&out, 5);
    let replicas: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|&n| n != first)
        .collect();
    for r in &replicas {
        assert!(
            step5
                .lines()
                .any(|l| l.trim_start().starts_with(r) && l.contains("streaming")),
            "{r} streaming:\n{out}"
        );
    }
    // Step 6: another node is promoted, in a later term, and named with the time it took.
    let step6 = demo_step(&out, 6);
    let promoted = replicas
        .iter()
        .copied()
        .find(|n| step6.contains(&format!("{n} is the primary now (term ")))
        .unwrap_or_else(|| panic!("the promoted node is named:\n{out}"));
    assert!(
        step6.contains(&format!("after {first} died")),
        "how long after the kill:\n{out}"
    );
    // Alice (before the failover) and Bob (after it) are both on the new primary.
    assert_eq!(rows_with(step6, "Alice").len(), 1, "{out}");
    assert_eq!(rows_with(step6, "Bob").len(), 1, "{out}");
    assert!(step6.contains(&format!("(on {promoted})")), "{out}");
    // Step 7: the old primary rejoins as a replica of the new one and serves Bob.
    let step7 = demo_step(&out, 7);
    assert!(
        step7.contains(&format!("{first} is a replica of {promoted} now")),
        "{out}"
    );
    let bob = rows_with(step7, "Bob");
    assert_eq!(bob.len(), 1, "Bob read back from {first}:\n{out}");
    assert!(
        step7.contains(&format!("WHERE name = 'Bob'   (on {first})")),
        "{out}"
    );
    // And the new primary lists it streaming.
    assert!(
        step7
            .lines()
            .any(|l| l.trim_start().starts_with(first) && l.contains("streaming")),
        "{first} streaming from {promoted}:\n{out}"
    );
}
