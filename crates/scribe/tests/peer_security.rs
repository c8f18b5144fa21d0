//! Peer security, end to end (real `scribe` processes, real sockets): a primary with
//! `--peer-secret` or mutual TLS refuses replicas that cannot authenticate before a single
//! record or snapshot byte leaves it — a relay between replica and primary counts and keeps
//! what the primary sent — and logs the refusal with the peer's address; the replica says
//! "peer authentication failed" in its status. Authenticated replicas replicate, and with TLS
//! the relayed bytes do not show the rows. A cluster whose members share the secret elects a
//! leader; a member without it is refused.

mod cluster;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{start_primary, start_replica, wait_status, Api, NodeProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay in front of a primary's peer port: per connection, the bytes the primary sent
/// (kept whole, to search them) and the relay's own address towards the primary (the address
/// the primary sees).
struct Relay {
    addr: String,
    conns: Arc<Mutex<Vec<Conn>>>,
}

#[derive(Clone, Default)]
struct Conn {
    upstream_local: String,
    down: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let list = conns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let conn = Conn {
                    upstream_local: server.local_addr().unwrap().to_string(),
                    down: Arc::default(),
                };
                list.lock().unwrap().push(conn.clone());
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                conn.down.lock().unwrap().extend_from_slice(&buf[..n]);
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = cw.shutdown().await;
                });
            }
        });
        Relay { addr, conns }
    }

    fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }

    /// The most bytes the primary sent on any one connection.
    fn max_down(&self) -> usize {
        self.conns()
            .iter()
            .map(|c| c.down.lock().unwrap().len())
            .max()
            .unwrap_or(0)
    }

    /// Whether `needle` appears in anything the primary sent.
    fn saw(&self, needle: &str) -> bool {
        self.conns().iter().any(|c| {
            let d = c.down.lock().unwrap();
            d.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
    }
}

fn write_secret(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}

const SECRET: &str = "c2NyaWJlLXRlc3Qtc2VjcmV0LTAxMjM0NTY3ODlhYmNkZWY=\n";
const WRONG: &str = "b3RoZXItY2x1c3Rlci1zZWNyZXQtMDEyMzQ1Njc4OWFiY2Q=\n";

async fn wait_refused(api: &Api, what: &str) -> serde_json::Value {
    wait_status(api, Duration::from_secs(20), what, |s| {
        s["replication"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("peer authentication failed"))
    })
    .await
}

async fn wait_row(api: &Api, marker: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sql = format!("SELECT v FROM t WHERE v = '{marker}'");
        if let Ok((200, body)) = api
            .post("/v1/query", &serde_json::json!({ "sql": sql }))
            .await
        {
            if body["rows"].as_array().is_some_and(|r| r.len() == 1) {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica at {} never showed the row {marker}: {}",
            api.url,
            api.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_with_a_peer_secret_refuses_replicas_without_it_before_sending_any_data() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let wrong = write_secret(dir.path(), "wrong", WRONG);
    let peer = format!("127.0.0.1:{}", common::free_port());
    let primary = start_primary(
        "p",
        &dir.path().join("p"),
        &peer,
        &["--peer-secret", secret.to_str().unwrap()],
    );
    let papi = Api::new(&primary.url);
    let marker = "scribe-secret-marker-7d3f";
    let (code, body) = papi
        .execute(&[
            "CREATE TABLE t (v TEXT)",
            &format!("INSERT INTO t VALUES ('{marker}')"),
        ])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");

    let none_relay = Relay::start(peer.clone()).await;
    let none = start_replica("r-none", &dir.path().join("r-none"), &none_relay.addr, &[]);
    let wrong_relay = Relay::start(peer.clone()).await;
    let bad = start_replica(
        "r-wrong",
        &dir.path().join("r-wrong"),
        &wrong_relay.addr,
        &["--peer-secret", wrong.to_str().unwrap()],
    );
    let st = wait_refused(&Api::new(&none.url), "r-none refused").await;
    eprintln!("r-none: {}", st["replication"]["error"]);
    let st = wait_refused(&Api::new(&bad.url), "r-wrong refused").await;
    let err = st["replication"]["error"].as_str().unwrap().to_string();
    assert!(err.contains("--peer-secret"), "{err}");
    for (relay, who) in [(&none_relay, "no secret"), (&wrong_relay, "wrong secret")] {
        assert!(!relay.conns().is_empty(), "{who}: never connected");
        eprintln!(
            "{who}: at most {} bytes from the primary on a connection",
            relay.max_down()
        );
        assert!(
            relay.max_down() < 1024,
            "{who}: the primary sent {} bytes on one connection",
            relay.max_down()
        );
        assert!(!relay.saw(marker), "{who}: the primary sent the row");
    }
    // Neither counts as a replica of the primary.
    let pst = papi.status().await;
    assert!(
        !pst.to_string().contains("r-none") && !pst.to_string().contains("r-wrong"),
        "{pst}"
    );

    let good_relay = Relay::start(peer.clone()).await;
    let good = start_replica(
        "r-good",
        &dir.path().join("r-good"),
        &good_relay.addr,
        &["--peer-secret", secret.to_str().unwrap()],
    );
    let gapi = Api::new(&good.url);
    wait_row(&gapi, marker).await;
    // The secret authenticates but does not encrypt: the row crossed the relay in the clear.
    assert!(good_relay.saw(marker));
    let (code, body) = papi
        .execute(&["INSERT INTO t VALUES ('after-auth')"])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_row(&gapi, "after-auth").await;

    let (_, none_log) = none.terminate();
    assert!(
        none_log.contains("peer authentication failed"),
        "{none_log}"
    );
    let (_, bad_log) = bad.terminate();
    assert!(bad_log.contains("peer authentication failed"), "{bad_log}");
    let (_, log) = primary.terminate();
    for relay in [&none_relay, &wrong_relay] {
        let from = &relay.conns()[0].upstream_local;
        assert!(
            log.lines()
                .any(|l| l.contains("refused a peer connection") && l.contains(from.as_str())),
            "the primary did not log the refusal of {from}: {log}"
        );
    }
    drop(good);
}

/// Runs openssl; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA `name`.crt/.key and a node certificate `node`.crt/.key it signs, valid for 127.0.0.1
/// and localhost, for both server and client authentication.
fn make_certs(dir: &Path, ca: &str, node: &str) {
    if !dir.join(format!("{ca}.crt")).exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{node}.key"),
            "-out",
            &format!("{node}.csr"),
            "-subj",
            &format!("/CN={node}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{node}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{node}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{node}.crt"),
            "-extfile",
            &format!("{node}.ext"),
        ],
    );
}

fn tls_args(dir: &Path, ca: &str, node: &str) -> Vec<String> {
    let p = |f: String| dir.join(f).to_str().unwrap().to_string();
    vec![
        "--peer-tls-cert".into(),
        p(format!("{node}.crt")),
        "--peer-tls-key".into(),
        p(format!("{node}.key")),
        "--peer-tls-ca".into(),
        p(format!("{ca}.crt")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_certificate_of_another_ca_and_encrypts_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs, "ca", "p");
    make_certs(&certs, "ca", "r-good");
    make_certs(&certs, "other-ca", "r-other");
    let peer = format!("127.0.0.1:{}", common::free_port());
    let pargs = tls_args(&certs, "ca", "p");
    let pargs: Vec<&str> = pargs.iter().map(String::as_str).collect();
    let primary = start_primary("p", &dir.path().join("p"), &peer, &pargs);
    let papi = Api::new(&primary.url);
    let marker = "scribe-secret-marker-tls-51c2";
    let (code, body) = papi
        .execute(&[
            "CREATE TABLE t (v TEXT)",
            &format!("INSERT INTO t VALUES ('{marker}')"),
        ])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");

    // A certificate of another CA (trusting only that CA too).
    let other_relay = Relay::start(peer.clone()).await;
    let oargs = tls_args(&certs, "other-ca", "r-other");
    let oargs: Vec<&str> = oargs.iter().map(String::as_str).collect();
    let other = start_replica(
        "r-other",
        &dir.path().join("r-other"),
        &other_relay.addr,
        &oargs,
    );
    let st = wait_refused(&Api::new(&other.url), "r-other refused").await;
    eprintln!("r-other: {}", st["replication"]["error"]);
    // That replica also distrusts the primary's certificate. One that trusts the right CA but
    // presents a certificate of the other is refused by the primary:
    let mixed_relay = Relay::start(peer.clone()).await;
    let margs = [
        "--peer-tls-cert".to_string(),
        certs.join("r-other.crt").to_str().unwrap().to_string(),
        "--peer-tls-key".into(),
        certs.join("r-other.key").to_str().unwrap().to_string(),
        "--peer-tls-ca".into(),
        certs.join("ca.crt").to_str().unwrap().to_string(),
    ];
    let margs: Vec<&str> = margs.iter().map(String::as_str).collect();
    let mixed = start_replica(
        "r-mixed",
        &dir.path().join("r-mixed"),
        &mixed_relay.addr,
        &margs,
    );
    let mapi = Api::new(&mixed.url);
    let st = wait_refused(&mapi, "r-mixed refused").await;
    assert_eq!(st["replication"]["state"], "refused", "{st}");
    eprintln!("r-mixed: {}", st["replication"]["error"]);
    for (relay, who) in [
        (&other_relay, "other CA"),
        (&mixed_relay, "foreign certificate"),
    ] {
        assert!(!relay.conns().is_empty(), "{who}: never connected");
        eprintln!(
            "{who}: at most {} bytes from the primary on a connection",
            relay.max_down()
        );
        // The TLS handshake (the primary's certificate) is all it gets: well under one
        // SQLite page, let alone a snapshot.
        assert!(
            relay.max_down() < 4096,
            "{who}: the primary sent {} bytes on one connection",
            relay.max_down()
        );
        assert!(!relay.saw(marker), "{who}: the primary sent the row");
    }

    let good_relay = Relay::start(peer.clone()).await;
    let gargs = tls_args(&certs, "ca", "r-good");
    let gargs: Vec<&str> = gargs.iter().map(String::as_str).collect();
    let good = start_replica(
        "r-good",
        &dir.path().join("r-good"),
        &good_relay.addr,
        &gargs,
    );
    let gapi = Api::new(&good.url);
    wait_row(&gapi, marker).await;
    let (code, body) = papi
        .execute(&["INSERT INTO t VALUES ('scribe-secret-marker-tls-later')"])
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_row(&gapi, "scribe-secret-marker-tls-later").await;
    assert!(
        good_relay.max_down() > 1024,
        "the stream went through the relay"
    );
    assert!(
        !good_relay.saw(marker),
        "the snapshot or records crossed in the clear"
    );
    assert!(!good_relay.saw("scribe-secret-marker-tls-later"));

    let (_, olog) = other.terminate();
    assert!(olog.contains("peer authentication failed"), "{olog}");
    drop(mixed);
    drop(good);
    let (_, log) = primary.terminate();
    let from = &mixed_relay.conns()[0].upstream_local;
    assert!(
        log.lines()
            .any(|l| l.contains("refused a peer connection") && l.contains(from.as_str())),
        "the primary did not log the refusal of {from}: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_the_secret_elects_a_leader_and_refuses_a_member_without_it() {
    let _serial = cluster::SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path(), "secret", SECRET);
    let mut c = cluster::Cluster::start(&["--peer-secret", secret.to_str().unwrap()]);
    let (p, _) = c.primary(Duration::from_secs(30)).await;
    c.caught_up(p, Duration::from_secs(30)).await;
    // Restart one non-primary member without the secret.
    let i = (p + 1) % 3;
    c.kill(i);
    let list = c.list();
    let node_dir = c.dir.path().join(&c.names[i]);
    let lone = NodeProc::start(
        &c.names[i],
        &node_dir,
        &["--peer", &c.peers[i], "--cluster", &list],
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = Api::new(&lone.url).status().await;
    assert_ne!(st["role"], "primary", "{st}");
    // The two members with the secret keep their primary.
    let (p2, _) = c.primary(Duration::from_secs(10)).await;
    assert_ne!(p2, i);
    let (_, log) = lone.terminate();
    assert!(log.contains("peer authentication failed"), "{log}");
}

#[test]
fn a_node_refuses_to_start_with_a_missing_empty_or_short_secret() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_secret(dir.path(), "empty", "\n");
    let short = write_secret(dir.path(), "short", "only-twenty-bytes-xx\n");
    let missing = dir.path().join("missing");
    for (file, expect) in [
        (&missing, "read the peer secret"),
        (&empty, "empty"),
        (&short, "at least 32"),
    ] {
        let peer = format!("127.0.0.1:{}", common::free_port());
        let err = match NodeProc::try_start(
            "p",
            &dir.path().join("p"),
            &["--peer", &peer, "--peer-secret", file.to_str().unwrap()],
        ) {
            Ok(_) => panic!("started with the secret {}", file.display()),
            Err(e) => e,
        };
        assert!(err.contains(expect), "{}: {err}", file.display());
    }
}
