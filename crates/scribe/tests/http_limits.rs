//! The HTTP port under abuse and over TLS, end to end against real `scribe node` processes:
//! `--max-connections` (503 past it, served again once connections close), a slow-loris client
//! cut off at `--http-header-timeout` while others are served, bodies that are too large, not
//! JSON or too slow, and `--tls-cert/--tls-key` with `scribe sql/status --ca`, the client
//! library's `ca_file`, and a replica forwarding to an https:// primary (`--tls-ca`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{scribe_cli, Api, NodeProc};
use serde_json::{json, Value};

/// The `host:port` of a node URL.
fn host_port(url: &str) -> String {
    url.split("://").nth(1).unwrap_or(url).to_string()
}

/// Sends one HTTP/1.1 request on `stream` and reads its answer: status and JSON body.
fn raw_request(stream: &mut TcpStream, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: scribe\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).expect("send request");
    read_response(stream)
}

/// Reads one response (headers, then a Content-Length body).
fn read_response(stream: &mut TcpStream) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read response head");
        assert!(n == 1, "connection closed before a response: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("read response body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, json)
}

fn connect(url: &str) -> TcpStream {
    let s = TcpStream::connect(host_port(url)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    s
}

/// How long until the server closes `stream` (EOF or reset), reading and dropping what it sends.
fn time_to_close(mut stream: TcpStream, since: Instant) -> Duration {
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return since.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_answers_503_and_recovers_when_they_close() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--max-connections", "4"]);
    let url = node.url.clone();
    tokio::task::spawn_blocking(move || {
        // Four keep-alive connections, each answered once and then held open, idle.
        let mut held: Vec<TcpStream> = (0..4).map(|_| connect(&url)).collect();
        for s in &mut held {
            let (code, _) = raw_request(s, "GET", "/v1/status", "");
            assert_eq!(code, 200);
        }
        // The fifth is answered 503 with the JSON error, and closed.
        let mut fifth = connect(&url);
        let (code, body) = raw_request(&mut fifth, "GET", "/v1/status", "");
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("--max-connections"),
            "{body}"
        );
        let closed = time_to_close(fifth, Instant::now());
        assert!(
            closed < Duration::from_secs(2),
            "the refused connection stayed open {closed:?}"
        );
        // The held ones still work.
        let (code, _) = raw_request(&mut held[0], "GET", "/v1/status", "");
        assert_eq!(code, 200);
        drop(held);
        // Once they are closed, new connections are served again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = connect(&url);
            let (code, body) = raw_request(&mut s, "POST", "/v1/query", r#"{"sql":"SELECT 1"}"#);
            if code == 200 {
                assert_eq!(body["rows"], json!([[1]]));
                break;
            }
            assert!(Instant::now() < deadline, "still refused: {code} {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start("n1", dir.path(), &["--http-header-timeout", "2s"]);
    let url = node.url.clone();
    let loris = std::thread::spawn(move || {
        let mut s = connect(&url);
        let reader = s.try_clone().expect("clone");
        let start = Instant::now();
        let closed = std::thread::spawn(move || time_to_close(reader, start));
        // A header byte every 500 ms, never finishing; stops when the server has closed.
        let header = b"GET /v1/status HTTP/1.1\r\nHost: scribe\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in header.iter() {
            if s.write_all(&[*b]).is_err() || closed.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        closed.join().expect("reader")
    });
    // An idle connection that sends nothing is closed at the same timeout.
    let idle_url = node.url.clone();
    let idle = std::thread::spawn(move || time_to_close(connect(&idle_url), Instant::now()));
    // Meanwhile the node answers others promptly.
    let api = Api::new(&node.url);
    let mut worst = Duration::ZERO;
    for _ in 0..6 {
        let t = Instant::now();
        let (code, body) = api
            .post("/v1/query", &json!({ "sql": "SELECT 1" }))
            .await
            .expect("query");
        assert_eq!(code, 200, "{body}");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        worst < Duration::from_millis(500),
        "a normal query took {worst:?}"
    );
    let cut = tokio::task::spawn_blocking(move || loris.join().expect("loris"))
        .await
        .unwrap();
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(4),
        "the slow-loris connection was closed after {cut:?}, expected about 2s"
    );
    let idle = tokio::task::spawn_blocking(move || idle.join().expect("idle"))
        .await
        .unwrap();
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_secs(4),
        "the idle connection was closed after {idle:?}, expected about 2s"
    );
    println!("slow-loris cut after {cut:?}, idle connection after {idle:?}, worst normal query {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_malformed_and_slow_bodies_get_clear_errors_and_the_node_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        "n1",
        dir.path(),
        &["--max-request-bytes", "65536", "--http-body-timeout", "1s"],
    );
    let api = Api::new(&node.url);
    // Announced too large: 413 before the body is read.
    let big = "x".repeat(100_000);
    let (code, body) = api
        .post("/v1/query", &json!({ "sql": format!("SELECT '{big}'") }))
        .await
        .expect("send");
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    // Chunked, with no length announced: 413 once the limit is passed.
    let url = node.url.clone();
    let (code, body) = tokio::task::spawn_blocking(move || {
        let mut s = connect(&url);
        s.write_all(b"POST /v1/query HTTP/1.1\r\nHost: scribe\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let chunk = vec![b' '; 16 << 10];
        for _ in 0..8 {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                || s.write_all(&chunk).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        read_response(&mut s)
    })
    .await
    .unwrap();
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    // Not JSON: 400 saying where.
    let (code, body) = api
        .post_raw("/v1/execute", b"{\"statements\": [\"SELECT 1\"".to_vec())
        .await
        .expect("send");
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("invalid request body") && msg.contains("line 1"),
        "{msg}"
    );
    // A body that trickles: 408 at the body timeout.
    let url = node.url.clone();
    let (code, body, took) = tokio::task::spawn_blocking(move || {
        let mut s = connect(&url);
        let t = Instant::now();
        s.write_all(b"POST /v1/query HTTP/1.1\r\nHost: scribe\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"sql\":").unwrap();
        let (code, body) = read_response(&mut s);
        (code, body, t.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(code, 408, "{body}");
    assert_eq!(body["error"]["code"], "body_timeout", "{body}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // And the node goes on.
    let (code, body) = api
        .execute(&["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('ok')"])
        .await
        .expect("execute");
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.rows("SELECT v FROM t").await, vec![vec![json!("ok")]]);
}

/// A CA and a server certificate for localhost and 127.0.0.1 signed by it, written to `dir`:
/// (ca.pem, server.pem, server.key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Scribe test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    params.distinguished_name.push(DnType::CommonName, "scribe");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_http_port_for_the_cli_the_client_library_and_a_forwarding_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let peer = format!("127.0.0.1:{}", common::free_port());
    let (cert_s, key_s, ca_s) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
    );
    let primary = NodeProc::start(
        "p",
        &dir.path().join("p"),
        &["--peer", &peer, "--tls-cert", cert_s, "--tls-key", key_s],
    );
    assert!(primary.url.starts_with("https://"), "{}", primary.url);

    // The CLI, with the CA.
    let (code, out, err) = scribe_cli(&[
        "sql",
        "--url",
        &primary.url,
        "--ca",
        ca_s,
        "-c",
        "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('over tls'); SELECT v FROM t",
    ]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("over tls"), "{out}");
    let (code, out, err) = scribe_cli(&["status", "--url", &primary.url, "--ca", ca_s]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("primary"), "{out}");
    // Without the CA the certificate is refused.
    let (code, out, err) = scribe_cli(&["sql", "--url", &primary.url, "-c", "SELECT 1"]);
    assert_ne!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate")
            || err.to_lowercase().contains("error sending request"),
        "{err}"
    );

    // Plain HTTP to the TLS port does not get an answer.
    let plain = format!("http://{}", host_port(&primary.url));
    let answered = reqwest::Client::new()
        .get(format!("{plain}/v1/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(answered.is_err(), "plain HTTP was answered: {answered:?}");
    // A client without the CA refuses the certificate.
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/status", primary.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let e = refused.expect_err("a client without the CA connected");
    assert!(
        format!("{e:?}").to_lowercase().contains("certificate"),
        "{e:?}"
    );

    // The client library with ca_file.
    let cluster = scribe_client::Cluster::connect_with(
        [primary.url.as_str()],
        scribe_client::Options::default().ca_file(&ca),
    )
    .await
    .expect("connect over https");
    cluster
        .execute(["INSERT INTO t VALUES ('from the library')"])
        .await
        .expect("write over https");
    let rows = cluster
        .query("SELECT count(*) FROM t", ())
        .await
        .expect("read over https");
    assert_eq!(rows.rows[0][0].as_i64(), Some(2));
    // ...and without it, no connection.
    let no_ca = scribe_client::Cluster::connect([primary.url.as_str()]).await;
    assert!(no_ca.is_err(), "connected without the CA");

    // A replica whose primary is https:// forwards a write, trusting the CA (--tls-ca).
    let replica = NodeProc::start(
        "r",
        &dir.path().join("r"),
        &["--follow", &peer, "--tls-ca", ca_s],
    );
    let rapi = Api::new(&replica.url);
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (code, body) = rapi
            .execute(&["INSERT INTO t VALUES ('forwarded')"])
            .await
            .expect("execute on the replica");
        if code == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not forward: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["forwarded_to"], "p", "{body}");
    let rows = cluster
        .query("SELECT v FROM t WHERE v = 'forwarded'", ())
        .await
        .expect("read");
    assert_eq!(rows.rows.len(), 1);
}
