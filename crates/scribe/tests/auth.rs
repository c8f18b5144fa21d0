//! Users and roles, end to end: a real `scribe node --users FILE` made with `scribe user add`,
//! driven over HTTP with Basic credentials and bearer tokens; and the loopback-only default of
//! a node without users.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

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
    let users = dir.path().join("users.toml");
    add_user(&users, "reader", "read", "r-pass");
    add_user(&users, "writer", "write", "w-pass");
    add_user(&users, "boss", "admin", "a-pass");
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
    let (s, body, _) = c
        .call("/v1/status", Value::Null, Cred::Basic("writer", "w-pass"))
        .await;
    assert_eq!(s, 403, "{body}");
    let (s, body, _) = c
        .call("/v1/status", Value::Null, Cred::Basic("boss", "a-pass"))
        .await;
    assert_eq!(s, 200, "{body}");

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
