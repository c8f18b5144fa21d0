//! `scribe node`: runs one node. Settings come from flags, then `SCRIBE_*` environment variables,
//! then an optional TOML file (`--config`), then defaults — the first that gives a value wins.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use scribe_core::{CommitMode, OnSyncTimeout, SyncSet};
use scribe_node::{Node, NodeConfig};
use serde::Deserialize;

/// Flags of `scribe node`. Every flag is also an environment variable and a key of the TOML file.
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// Node name, unique in the cluster (letters, digits, '-', '_') [default: n1]
    #[arg(long, env = "SCRIBE_NAME")]
    pub name: Option<String>,
    /// Data directory: the change log, the SQLite database and the identity file [default: ./scribe-data]
    #[arg(long, env = "SCRIBE_DATA")]
    pub data: Option<PathBuf>,
    /// Address of the HTTP API; port 0 picks a free port (printed at start) [default: 127.0.0.1:5480]
    #[arg(long, env = "SCRIBE_HTTP")]
    pub http: Option<SocketAddr>,
    /// TOML file with any of these settings (keys as the flags, with '_' for '-'); flags and environment win
    #[arg(long, env = "SCRIBE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest request body accepted, in bytes; larger ones get 413 [default: 16777216]
    #[arg(long, env = "SCRIBE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Read connections to SQLite [default: 4]
    #[arg(long, env = "SCRIBE_READERS")]
    pub readers: Option<usize>,
    /// Most transactions in one group-commit batch (one log fsync) [default: 1024]
    #[arg(long, env = "SCRIBE_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Size at which a change-log segment is closed and a new one started, in bytes [default: 67108864]
    #[arg(long, env = "SCRIBE_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Address of the peer protocol, where replicas connect to stream the change log; port 0 picks a free port (see `scribe status`) [default: none]
    #[arg(long, env = "SCRIBE_PEER")]
    pub peer: Option<SocketAddr>,
    /// Run as a read-only replica of the primary whose peer address (HOST:PORT) this is [default: run as primary]
    #[arg(long, env = "SCRIBE_FOLLOW")]
    pub follow: Option<String>,
    /// Default commit mode of writes: async (the primary's own fsync), semi-sync (the sync replicas have it fsynced), sync (they have applied it); a request may override it [default: async]
    #[arg(long, env = "SCRIBE_COMMIT")]
    pub commit: Option<CommitMode>,
    /// Which replicas count for semi-sync and sync, and how many must answer: "FIRST 1 (n2, n3)", "ANY 2 (*)" [default: "ANY 1 (*)"]
    #[arg(long, env = "SCRIBE_SYNC_REPLICAS")]
    pub sync_replicas: Option<SyncSet>,
    /// How long a semi-sync or sync commit waits for its replicas (for example 5s, 500ms) [default: 5s]
    #[arg(long, env = "SCRIBE_SYNC_TIMEOUT", value_parser = humantime::parse_duration)]
    pub sync_timeout: Option<Duration>,
    /// When that wait times out: error (the answer is an error saying the transaction is committed on the primary but not confirmed replicated) or degrade (success, reporting the durability reached and "degraded": true) [default: error]
    #[arg(long, env = "SCRIBE_ON_SYNC_TIMEOUT")]
    pub on_sync_timeout: Option<OnSyncTimeout>,
    /// Most bytes of change log kept for replicas that are behind; a replica further behind is re-seeded from a snapshot [default: 1073741824]
    #[arg(long, env = "SCRIBE_MAX_LOG_SIZE")]
    pub max_log_size: Option<u64>,
    /// URL of this node's HTTP API as other nodes and clients reach it, when --http is a wildcard address (0.0.0.0) or behind NAT; replicas forward writes to the primary's [default: http:// + the bound address]
    #[arg(long, env = "SCRIBE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Silence after which a peer connection (primary to replica) is considered dead and dropped; the replica then reconnects [default: 10s]
    #[arg(long, env = "SCRIBE_PEER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub peer_timeout: Option<Duration>,
    /// Address of the PostgreSQL wire protocol (psql, pgbench, psycopg...); port 0 picks a free port [default: not served]
    #[arg(long, env = "SCRIBE_PG")]
    pub pg: Option<SocketAddr>,
    /// Password PostgreSQL clients must give (SCRAM-SHA-256), for any user name; prefer the environment variable to the flag [default: no authentication]
    #[arg(long, env = "SCRIBE_PG_PASSWORD", hide_env_values = true)]
    pub pg_password: Option<String>,
    /// Users file (TOML, `[[user]]` entries with name, role and a SCRAM-SHA-256 password verifier; made with `scribe user add`): every HTTP request needs credentials of a role that allows it [default: no authentication, loopback addresses only]
    #[arg(long, env = "SCRIBE_USERS")]
    pub users: Option<PathBuf>,
    /// Without --users, allow listening on non-loopback addresses anyway (anyone who reaches the ports can read, write and administer) [default: refused]
    #[arg(long, env = "SCRIBE_INSECURE")]
    pub insecure: bool,
    /// PEM certificate chain for TLS on the PostgreSQL port (with --pg-tls-key); clients that ask for TLS get it [default: no TLS]
    #[arg(long, env = "SCRIBE_PG_TLS_CERT", requires = "pg_tls_key")]
    pub pg_tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the PostgreSQL port (with --pg-tls-cert)
    #[arg(long, env = "SCRIBE_PG_TLS_KEY", requires = "pg_tls_cert")]
    pub pg_tls_key: Option<PathBuf>,
    /// File holding the cluster's peer secret (at least 32 bytes; make one with `head -c 32 /dev/urandom | base64`, chmod 600): every peer connection, replication and control plane, starts with a challenge-response proving both nodes hold it; give every node the same file [default: peers are not authenticated]
    #[arg(long, env = "SCRIBE_PEER_SECRET")]
    pub peer_secret: Option<PathBuf>,
    /// PEM certificate chain of this node for mutual TLS on the peer port (with --peer-tls-key and --peer-tls-ca); it must name the host or IP other nodes dial, and allow both server and client authentication [default: no TLS on the peer port]
    #[arg(long, env = "SCRIBE_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key for --peer-tls-cert
    #[arg(long, env = "SCRIBE_PEER_TLS_KEY", requires_all = ["peer_tls_cert", "peer_tls_ca"])]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM certificate of the CA that signs every node's peer certificate: peers must present one it signed, and the node dialed must too
    #[arg(long, env = "SCRIBE_PEER_TLS_CA", requires_all = ["peer_tls_cert", "peer_tls_key"])]
    pub peer_tls_ca: Option<PathBuf>,
    /// PEM certificate chain for TLS on the HTTP port (with --tls-key): the port then speaks only HTTPS, and the advertised URL is https:// [default: plain HTTP]
    #[arg(long, env = "SCRIBE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the HTTP port (with --tls-cert)
    #[arg(long, env = "SCRIBE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM file of CA certificates this node trusts when it calls other nodes over https:// (a replica forwarding to its primary, switchover, promotion, membership, --join) [default: none, only http:// peers]
    #[arg(long, env = "SCRIBE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// How long an HTTP connection may take to send a request's headers — the first request's, or the next one's after an answer, so it also closes idle keep-alive connections — and to finish a TLS handshake; a slower client is disconnected [default: 10s]
    #[arg(long, env = "SCRIBE_HTTP_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Option<Duration>,
    /// How long an HTTP request body may take to arrive; a slower one is answered 408 body_timeout [default: 30s]
    #[arg(long, env = "SCRIBE_HTTP_BODY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub http_body_timeout: Option<Duration>,
    /// How long a PostgreSQL client may take to log in (TLS, startup and password exchange); a slower one is disconnected and its --max-connections slot freed, like PostgreSQL's authentication_timeout [default: 10s]
    #[arg(long, env = "SCRIBE_PG_LOGIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub pg_login_timeout: Option<Duration>,
    /// Longest an interactive transaction (BEGIN ... COMMIT over PostgreSQL or /v1/tx) may stay idle between statements; it holds the writer, so it is then rolled back [default: 30s]
    #[arg(long, env = "SCRIBE_TXN_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub txn_idle_timeout: Option<Duration>,
    /// How long a request's statements may run when the request (or PostgreSQL session, SET statement_timeout) does not say: a single-request transaction as a whole, each statement of a held transaction, a query including its wait for a read connection; past it the statement is interrupted and its transaction rolled back with a statement_timeout error. 0: no limit [default: 5s]
    #[arg(long, env = "SCRIBE_STATEMENT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub statement_timeout: Option<Duration>,
    /// The longest statement timeout a request or session may ask for; asking for 0 means this. 0: any [default: 5m]
    #[arg(long, env = "SCRIBE_MAX_STATEMENT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub max_statement_timeout: Option<Duration>,
    /// Most bytes a transaction's captured changes may take in memory; a transaction that grows past it is rolled back with a too_large error before the node's memory does. 0: no limit [default: 67108864]
    #[arg(long, env = "SCRIBE_MAX_TXN_BYTES")]
    pub max_txn_bytes: Option<u64>,
    /// Most bytes of rows one statement may return; a larger result is refused with a too_large error instead of being collected. 0: no limit [default: 67108864]
    #[arg(long, env = "SCRIBE_MAX_RESULT_BYTES")]
    pub max_result_bytes: Option<u64>,
    /// Most client connections open at once on each of the HTTP and PostgreSQL ports; past it HTTP answers 503 and closes, PostgreSQL answers FATAL 53300 (too many clients) [default: 512]
    #[arg(long, env = "SCRIBE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Run as a member of a cluster whose control plane (a Raft group of its members) decides who is primary and fails over automatically: every member's NAME=PEER_ADDR, the same list on every node (for example "n1=10.0.0.1:6480,n2=10.0.0.2:6480,n3=10.0.0.3:6480"); a witness's entry ends in /witness ("w=10.0.0.3:6480/witness"); needs --peer, excludes --follow [default: not a cluster member]
    #[arg(long, env = "SCRIBE_CLUSTER")]
    pub cluster: Option<String>,
    /// Join a cluster that exists, through the HTTP URL of any of its members: this node learns the cluster from it and asks to be added (as scribe members add would), is seeded with a snapshot and follows the primary; needs --peer (the address the members reach it at), excludes --cluster and --follow [default: not joining]
    #[arg(long, env = "SCRIBE_JOIN", conflicts_with_all = ["cluster", "follow"])]
    pub join: Option<String>,
    /// DISASTER RECOVERY, given the id of this node's cluster (its status shows it) to confirm: that cluster lost its majority for good; re-form a cluster of this node alone, keeping its data, primary in a term above every term it knows. Give --cluster NAME=PEER_ADDR naming only this node, and make sure the other members are down, not just cut off. Writes the lost members had and this node has not are lost; the old members must be emptied and added back with --join (two of them started with their old data would re-form the old majority). Remove the flag once the node runs [default: off]
    #[arg(long, env = "SCRIBE_REFORM_CLUSTER", value_name = "CLUSTER_ID")]
    pub reform_cluster: Option<String>,
    /// In a cluster: this node is the witness — it votes in the control plane but holds no data, is never primary and answers data requests with an error naming the primary (two data nodes and a witness survive the loss of either data node); its --cluster entry must be marked NAME=HOST:PORT/witness [default: a data node]
    #[arg(long, env = "SCRIBE_WITNESS", value_parser = clap::builder::BoolishValueParser::new())]
    pub witness: bool,
    /// In a cluster: how long the primary may take writes after it last renewed its lease through the control plane; it renews every quarter of it [default: 800ms]
    #[arg(long, env = "SCRIBE_LEASE", value_parser = humantime::parse_duration)]
    pub lease: Option<Duration>,
    /// In a cluster: how long the primary's lease renewals must have stopped before another member is promoted; at least the lease plus 10 % and 100 ms, so the old primary has stopped writing first [default: 1s]
    #[arg(long, env = "SCRIBE_FAILOVER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub failover_timeout: Option<Duration>,
    /// Run as one master of a multi-master cluster: this node accepts writes, records each transaction stamped with its name, sequence number and hybrid logical clock, streams its log to the other masters and applies theirs, merging concurrent writes by each table's policy (see docs/MULTI_MASTER.md); needs --peer and --peers, excludes --follow, --cluster and --join [default: primary/replica]
    #[arg(long, env = "SCRIBE_MULTI_MASTER", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with_all = ["cluster", "follow", "join"])]
    pub multi_master: bool,
    /// Multi-master: the other masters, NAME=PEER_ADDR separated by commas (for example "n2=10.0.0.2:6480,n3=10.0.0.3:6480"); each node lists all the others [default: none]
    #[arg(long, env = "SCRIBE_PEERS", requires = "multi_master")]
    pub peers: Option<String>,
    /// Multi-master: a table's conflict policy, TABLE=POLICY, repeatable: lww (the default: column-level last-writer-wins), versioned (concurrent versions kept; the losers listed by GET /v1/conflicts until resolved) or merge(COLUMN=RULE, ...) with rules sum, max, min and lww (for example "counters=merge(hits=sum,best=max)"); give every master the same flags, before the table exists (a table's policy is fixed once it exists; a policy set through SQL with ALTER TABLE t SET POLICY ... on the DDL node is kept over a flag) [default: every table lww]
    #[arg(
        long = "table-policy",
        value_name = "TABLE=POLICY",
        requires = "multi_master"
    )]
    pub table_policy: Vec<String>,
    /// Multi-master: how far ahead of this node's clock a peer's timestamp may be; a record stamped further ahead waits until this clock catches up, so keep the masters' clocks in sync (NTP) [default: 10s]
    #[arg(long, env = "SCRIBE_MAX_CLOCK_OFFSET", value_parser = humantime::parse_duration, requires = "multi_master")]
    pub max_clock_offset: Option<Duration>,
    /// What to log, in RUST_LOG syntax (for example "info" or "scribe_log=debug") [default: info]
    #[arg(long, env = "SCRIBE_LOG")]
    pub log: Option<String>,
}

/// The TOML config file: the same settings as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    data: Option<PathBuf>,
    http: Option<SocketAddr>,
    max_request_bytes: Option<usize>,
    readers: Option<usize>,
    max_batch: Option<usize>,
    segment_bytes: Option<u64>,
    peer: Option<SocketAddr>,
    follow: Option<String>,
    commit: Option<String>,
    sync_replicas: Option<String>,
    sync_timeout: Option<String>,
    on_sync_timeout: Option<String>,
    max_log_size: Option<u64>,
    peer_timeout: Option<String>,
    advertise_url: Option<String>,
    pg: Option<SocketAddr>,
    pg_password: Option<String>,
    users: Option<PathBuf>,
    insecure: Option<bool>,
    pg_tls_cert: Option<PathBuf>,
    pg_tls_key: Option<PathBuf>,
    peer_secret: Option<PathBuf>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    http_header_timeout: Option<String>,
    http_body_timeout: Option<String>,
    pg_login_timeout: Option<String>,
    txn_idle_timeout: Option<String>,
    statement_timeout: Option<String>,
    max_statement_timeout: Option<String>,
    max_txn_bytes: Option<u64>,
    max_result_bytes: Option<u64>,
    max_connections: Option<usize>,
    cluster: Option<String>,
    join: Option<String>,
    witness: Option<bool>,
    lease: Option<String>,
    failover_timeout: Option<String>,
    log: Option<String>,
}

/// The mark that ends a witness's entry in a `--cluster` list: `w=10.0.0.3:6480/witness`.
const WITNESS_MARK: &str = "/witness";

/// A parsed `--cluster` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterList {
    /// `(name, peer address)` of every member, in the order given.
    pub members: Vec<(String, String)>,
    /// The members marked `/witness`.
    pub witnesses: BTreeSet<String>,
}

/// Parses a `--cluster` list: `NAME=HOST:PORT` items separated by commas, a witness's ending in
/// `/witness`.
pub fn parse_cluster(list: &str) -> anyhow::Result<ClusterList> {
    let mut members = Vec::new();
    let mut witnesses = BTreeSet::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, addr) = item.split_once('=').ok_or_else(|| {
            anyhow!(
                "--cluster item {item:?} must be NAME=HOST:PORT (for example n1=127.0.0.1:6480), or NAME=HOST:PORT/witness for a witness"
            )
        })?;
        let (name, mut addr) = (name.trim(), addr.trim());
        scribe_core::check_node_name(name).map_err(|e| anyhow!("--cluster item {item:?}: {e}"))?;
        if let Some(a) = addr.strip_suffix(WITNESS_MARK) {
            addr = a.trim_end();
            witnesses.insert(name.to_string());
        } else if let Some((_, mark)) = addr.rsplit_once('/') {
            return Err(anyhow!(
                "--cluster item {item:?}: unknown mark /{mark}: the only mark is /witness (NAME=HOST:PORT/witness)"
            ));
        }
        if !addr.contains(':') {
            return Err(anyhow!(
                "--cluster item {item:?}: {addr:?} must be the member's peer address, HOST:PORT"
            ));
        }
        members.push((name.to_string(), addr.to_string()));
    }
    if members.is_empty() {
        return Err(anyhow!("--cluster lists no members"));
    }
    Ok(ClusterList { members, witnesses })
}

/// The `--cluster` list of a node joining through the member at `url` (`--join`): the members
/// that member reports, and this node (at its `--peer` address) unless it is one already; with
/// the cluster's id.
fn joined_list(
    url: &str,
    config: &scribe_node::NodeConfig,
    witness: bool,
) -> anyhow::Result<(String, String)> {
    let (name, peer) = (config.name.as_str(), config.peer_addr);
    let peer =
        peer.ok_or_else(|| anyhow!("--join needs --peer: the members reach this node there"))?;
    if peer.ip().is_unspecified() || peer.port() == 0 {
        return Err(anyhow!(
            "with --join, --peer {peer} must be the address the members reach this node at (not a wildcard address or port 0)"
        ));
    }
    let url = url.trim_end_matches('/');
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The node's own client: it trusts --tls-ca and, with --users, signs the call as the node.
    let http = scribe_node::node_http::NodeHttp::new(config).map_err(|e| anyhow!(e))?;
    let status: serde_json::Value = rt
        .block_on(async {
            http.request(
                reqwest::Method::GET,
                &format!("{url}/v1/status"),
                scribe_node::auth::Role::Admin,
            )
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
        })
        .with_context(|| format!("--join {url}: ask the member for the cluster's status"))?;
    let cluster_id = status["cluster_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| anyhow!("--join {url}: its status names no cluster id"))?
        .to_string();
    let members = status["cluster"]["members"].as_array().ok_or_else(|| {
        anyhow!(
            "--join {url}: that node is not a member of a cluster (its status lists no members)"
        )
    })?;
    let mut items = Vec::new();
    let mut listed = false;
    for m in members {
        let (Some(n), Some(a)) = (m["name"].as_str(), m["peer_addr"].as_str()) else {
            return Err(anyhow!(
                "--join {url}: its status lists a member without name or peer address: {m}"
            ));
        };
        listed |= n == name;
        let mark = if m["witness"] == true {
            WITNESS_MARK
        } else {
            ""
        };
        items.push(format!("{n}={a}{mark}"));
    }
    if !listed {
        let mark = if witness { WITNESS_MARK } else { "" };
        items.push(format!("{name}={peer}{mark}"));
    }
    Ok((items.join(","), cluster_id))
}

/// Checks that `--witness` on this node (`witness`) and its own entry in the `--cluster` list
/// agree, so a node never turns witness (or data node) by a typo in one of the two.
fn check_witness(name: &str, list: &ClusterList, witness: bool) -> anyhow::Result<()> {
    let Some((_, addr)) = list.members.iter().find(|(n, _)| n == name) else {
        // Not in the list at all: the control plane's validation says so.
        return Ok(());
    };
    match (witness, list.witnesses.contains(name)) {
        (true, false) => Err(anyhow!(
            "this node ({name}) was started with --witness, but its --cluster entry {name}={addr} is not marked a witness: \
             mark it {name}={addr}{WITNESS_MARK} in the --cluster list of every node, or start this node without --witness"
        )),
        (false, true) => Err(anyhow!(
            "the --cluster list marks this node ({name}) a witness ({name}={addr}{WITNESS_MARK}), but it was started without --witness: \
             add --witness (a witness holds no data), or remove the {WITNESS_MARK} mark from the --cluster list of every node"
        )),
        _ => Ok(()),
    }
}

/// The node's configuration from flags, environment, file and defaults, validated.
fn resolve(args: NodeArgs) -> anyhow::Result<(NodeConfig, String)> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("parse config file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let name = args.name.or(file.name).unwrap_or_else(|| "n1".into());
    let data = args
        .data
        .or(file.data)
        .unwrap_or_else(|| PathBuf::from("scribe-data"));
    let http = args
        .http
        .or(file.http)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5480)));
    let mut config = NodeConfig::new(name, data, http);
    if let Some(v) = args.max_request_bytes.or(file.max_request_bytes) {
        config.max_request_bytes = v;
    }
    if let Some(v) = args.readers.or(file.readers) {
        config.readers = v;
    }
    if let Some(v) = args.max_batch.or(file.max_batch) {
        config.max_batch = v;
    }
    if let Some(v) = args.segment_bytes.or(file.segment_bytes) {
        config.segment_bytes = v;
    }
    config.peer_addr = args.peer.or(file.peer);
    config.pg_addr = args.pg.or(file.pg);
    config.pg_password = args.pg_password.or(file.pg_password);
    if let Some(path) = args.users.or(file.users) {
        let store = scribe_node::auth::UserStore::load(&path)?;
        config.users = Some(std::sync::Arc::new(store));
    }
    config.insecure = args.insecure || file.insecure.unwrap_or(false);
    match (
        args.pg_tls_cert.or(file.pg_tls_cert),
        args.pg_tls_key.or(file.pg_tls_key),
    ) {
        (Some(c), Some(k)) => config.pg_tls = Some((c, k)),
        (None, None) => {}
        _ => return Err(anyhow!("--pg-tls-cert and --pg-tls-key go together")),
    }
    config.peer_secret = args.peer_secret.or(file.peer_secret);
    match (
        args.peer_tls_cert.or(file.peer_tls_cert),
        args.peer_tls_key.or(file.peer_tls_key),
        args.peer_tls_ca.or(file.peer_tls_ca),
    ) {
        (Some(cert), Some(key), Some(ca)) => {
            config.peer_tls = Some(scribe_node::peer_link::PeerTlsFiles { cert, key, ca })
        }
        (None, None, None) => {}
        _ => {
            return Err(anyhow!(
                "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together"
            ))
        }
    }
    match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(c), Some(k)) => config.tls = Some((c, k)),
        (None, None) => {}
        _ => return Err(anyhow!("--tls-cert and --tls-key go together")),
    }
    config.tls_ca = args.tls_ca.or(file.tls_ca);
    if let Some(v) = args.http_header_timeout {
        config.http_header_timeout = v;
    } else if let Some(v) = &file.http_header_timeout {
        config.http_header_timeout = humantime::parse_duration(v)
            .with_context(|| "config file key http_header_timeout".to_string())?;
    }
    if let Some(v) = args.pg_login_timeout {
        config.pg_login_timeout = v;
    } else if let Some(v) = &file.pg_login_timeout {
        config.pg_login_timeout = humantime::parse_duration(v)
            .with_context(|| "config file key pg_login_timeout".to_string())?;
    }
    if let Some(v) = args.http_body_timeout {
        config.http_body_timeout = v;
    } else if let Some(v) = &file.http_body_timeout {
        config.http_body_timeout = humantime::parse_duration(v)
            .with_context(|| "config file key http_body_timeout".to_string())?;
    }
    if let Some(v) = args.txn_idle_timeout {
        config.txn_idle_timeout = v;
    } else if let Some(v) = &file.txn_idle_timeout {
        config.txn_idle_timeout = humantime::parse_duration(v)
            .with_context(|| "config file key txn_idle_timeout".to_string())?;
    }
    if let Some(v) = args.statement_timeout {
        config.statement_timeout = v;
    } else if let Some(v) = &file.statement_timeout {
        config.statement_timeout = humantime::parse_duration(v)
            .with_context(|| "config file key statement_timeout".to_string())?;
    }
    if let Some(v) = args.max_statement_timeout {
        config.max_statement_timeout = v;
    } else if let Some(v) = &file.max_statement_timeout {
        config.max_statement_timeout = humantime::parse_duration(v)
            .with_context(|| "config file key max_statement_timeout".to_string())?;
    }
    if let Some(v) = args.max_txn_bytes.or(file.max_txn_bytes) {
        config.max_txn_bytes = v;
    }
    if let Some(v) = args.max_result_bytes.or(file.max_result_bytes) {
        config.max_result_bytes = v;
    }
    if let Some(v) = args.max_connections.or(file.max_connections) {
        config.max_connections = v;
    }
    config.follow = args.follow.or(file.follow);
    let key = |k: &str| format!("config file key {k}");
    if let Some(v) = args.commit {
        config.commit = v;
    } else if let Some(v) = file.commit {
        config.commit = v.parse().with_context(|| key("commit"))?;
    }
    if let Some(v) = args.sync_replicas {
        config.sync_replicas = v;
    } else if let Some(v) = file.sync_replicas {
        config.sync_replicas = v.parse().with_context(|| key("sync_replicas"))?;
    }
    if let Some(v) = args.sync_timeout {
        config.sync_timeout = v;
    } else if let Some(v) = file.sync_timeout {
        config.sync_timeout = humantime::parse_duration(&v).with_context(|| key("sync_timeout"))?;
    }
    if let Some(v) = args.on_sync_timeout {
        config.on_sync_timeout = v;
    } else if let Some(v) = file.on_sync_timeout {
        config.on_sync_timeout = v.parse().with_context(|| key("on_sync_timeout"))?;
    }
    if let Some(v) = args.max_log_size.or(file.max_log_size) {
        config.max_log_size = v;
    }
    config.advertise_url = args.advertise_url.or(file.advertise_url);
    if let Some(v) = args.peer_timeout {
        config.peer_timeout = v;
    } else if let Some(v) = file.peer_timeout {
        config.peer_timeout = humantime::parse_duration(&v).with_context(|| key("peer_timeout"))?;
    }
    let witness = args.witness || file.witness.unwrap_or(false);
    let join = args.join.or(file.join);
    let mut joined_cluster_id = None;
    let list = match (&join, args.cluster.or(file.cluster)) {
        (Some(_), Some(_)) => {
            return Err(anyhow!(
                "--join and --cluster exclude each other: a joining node learns the members from the cluster"
            ))
        }
        (Some(url), None) => {
            let (list, id) = joined_list(url, &config, witness)?;
            joined_cluster_id = Some(id);
            Some(list)
        }
        (None, list) => list,
    };
    if args.reform_cluster.is_some() && (list.is_none() || join.is_some()) {
        return Err(anyhow!(
            "--reform-cluster needs --cluster {}=PEER_ADDR (this node alone), not --join",
            config.name
        ));
    }
    if let Some(list) = list {
        let mut lease = scribe_core::LeaseConfig::default();
        if let Some(v) = args.lease {
            lease.lease = v;
        } else if let Some(v) = file.lease {
            lease.lease = humantime::parse_duration(&v).with_context(|| key("lease"))?;
        }
        lease.renew_interval = lease.lease / 4;
        if let Some(v) = args.failover_timeout {
            lease.failover_timeout = v;
        } else if let Some(v) = file.failover_timeout {
            lease.failover_timeout =
                humantime::parse_duration(&v).with_context(|| key("failover_timeout"))?;
        }
        let list = parse_cluster(&list)?;
        check_witness(&config.name, &list, witness)?;
        config.cluster = Some(scribe_node::cluster::ClusterSettings {
            members: list.members,
            witnesses: list.witnesses,
            lease,
            reform: args.reform_cluster.clone(),
            join: join.map(|url| scribe_node::cluster::Join {
                cluster_id: joined_cluster_id.take().unwrap_or_default(),
                url: url.trim_end_matches('/').to_string(),
            }),
        });
    } else if args.lease.is_some() || args.failover_timeout.is_some() {
        return Err(anyhow!(
            "--lease and --failover-timeout only mean something with --cluster"
        ));
    } else if witness {
        return Err(anyhow!(
            "--witness only means something with --cluster: list every member there, this node's entry marked NAME=HOST:PORT{WITNESS_MARK}"
        ));
    }
    if args.multi_master {
        config.multi_master = Some(multi_master_settings(
            args.peers.as_deref().unwrap_or(""),
            &args.table_policy,
            args.max_clock_offset,
        )?);
    }
    // Test-only fault injection, deliberately not a flag: a replica that lags on purpose.
    if let Ok(ms) = std::env::var("SCRIBE_TEST_APPLY_DELAY_MS") {
        let ms: u64 = ms
            .parse()
            .with_context(|| format!("SCRIBE_TEST_APPLY_DELAY_MS={ms:?} is not a number"))?;
        config.test_apply_delay = Duration::from_millis(ms);
    }
    config
        .validate()
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    let log = args.log.or(file.log).unwrap_or_else(|| "info".into());
    Ok((config, log))
}

/// Parses `--peers` and `--table-policy` for `--multi-master`.
fn multi_master_settings(
    peers: &str,
    policies: &[String],
    max_clock_offset: Option<Duration>,
) -> anyhow::Result<scribe_node::config::MultiMasterSettings> {
    let mut list = Vec::new();
    for item in peers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, addr)) = item.split_once('=') else {
            return Err(anyhow!(
                "--peers item {item:?} must be NAME=HOST:PORT (for example n2=127.0.0.1:6481)"
            ));
        };
        scribe_core::check_node_name(name).map_err(|e| anyhow!("--peers item {item:?}: {e}"))?;
        if !addr.contains(':') {
            return Err(anyhow!(
                "--peers item {item:?}: {addr:?} must be the master's peer address, HOST:PORT"
            ));
        }
        list.push((name.to_string(), addr.to_string()));
    }
    list.sort();
    let mut by_table = std::collections::BTreeMap::new();
    for p in policies {
        let Some((table, policy)) = p.split_once('=') else {
            return Err(anyhow!(
                "--table-policy {p:?} must be TABLE=POLICY (for example counters=merge(hits=sum))"
            ));
        };
        let policy: scribe_core::multi_master::TablePolicy = policy
            .parse()
            .map_err(|e| anyhow!("--table-policy {p:?}: {e}"))?;
        if by_table
            .insert(table.trim().to_ascii_lowercase(), policy)
            .is_some()
        {
            return Err(anyhow!("--table-policy names table {table:?} twice"));
        }
    }
    Ok(scribe_node::config::MultiMasterSettings {
        peers: list,
        policies: by_table,
        max_clock_offset: max_clock_offset.unwrap_or(Duration::from_secs(10)),
    })
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs `scribe node` until SIGTERM or Ctrl-C.
pub fn run(args: NodeArgs) -> anyhow::Result<i32> {
    let (config, log) = resolve(args)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&log)
        .map_err(|e| anyhow!("invalid --log filter {log:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        let name = config.name.clone();
        let dir = config.data_dir.clone();
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let node = Node::start(config).await.map_err(|e| anyhow!(e))?;
        let report = node.open_report();
        if let Some((seg, offset, bytes)) = &report.recovery.torn {
            tracing::warn!(segment = %seg.display(), offset, bytes, "cut a torn tail from the change log");
        }
        let p = node.engine().progress();
        tracing::info!(
            node = %name,
            role = node.role(),
            data = %dir.display(),
            position = %p.applied,
            replayed = report.replayed,
            peer = ?node.peer_addr(),
            "node started"
        );
        // One line on stdout for scripts and tests: the address actually bound.
        println!("scribe node {name} listening on {scheme}://{}", node.http_addr());
        if let Some(pg) = node.pg_addr() {
            println!("scribe node {name} serves PostgreSQL on {pg}");
        }
        node.serve(stop_signal()).await.map_err(|e| anyhow!(e))?;
        tracing::info!(node = %name, "node stopped cleanly");
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scribe.toml");
        std::fs::write(&path, "name = \"from-file\"\nreaders = 7\nmax_batch = 9\n").unwrap();
        let args = NodeArgs {
            config: Some(path.clone()),
            name: Some("flag".into()),
            ..Default::default()
        };
        let (c, log) = resolve(args).unwrap();
        assert_eq!(c.name, "flag");
        assert_eq!(c.readers, 7);
        assert_eq!(c.max_batch, 9);
        assert_eq!(c.http_addr.port(), 5480);
        assert_eq!(log, "info");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scribe.toml");
        std::fs::write(&path, "nmae = \"typo\"\n").unwrap();
        let e = resolve(NodeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        let e = resolve(NodeArgs {
            name: Some("bad name".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("may only hold"), "{e}");
    }

    #[test]
    fn a_witness_is_marked_in_the_list_and_on_its_own_node() {
        let list = parse_cluster("n1=a:1, n2=b:2 ,w=c:3/witness").unwrap();
        assert_eq!(list.members[2], ("w".to_string(), "c:3".to_string()));
        assert_eq!(list.witnesses, BTreeSet::from(["w".to_string()]));
        let e = parse_cluster("n1=a:1,w=c:3/wintess").unwrap_err();
        assert!(e.to_string().contains("unknown mark /wintess"), "{e}");

        let cluster = |name: &str, witness: bool| {
            resolve(NodeArgs {
                name: Some(name.into()),
                cluster: Some("n1=a:1,n2=b:2,w=c:3/witness".into()),
                peer: Some("127.0.0.1:0".parse().unwrap()),
                witness,
                ..Default::default()
            })
        };
        let (c, _) = cluster("w", true).unwrap();
        let settings = c.cluster.unwrap();
        assert!(settings.witnesses.contains("w"));
        assert_eq!(settings.members[2].1, "c:3");
        cluster("n1", false).unwrap();
        let e = cluster("w", false).unwrap_err().to_string();
        assert!(
            e.contains("started without --witness") && e.contains("add --witness"),
            "{e}"
        );
        let e = cluster("n1", true).unwrap_err().to_string();
        assert!(
            e.contains("not marked a witness") && e.contains("n1=a:1/witness"),
            "{e}"
        );
        let e = resolve(NodeArgs {
            witness: true,
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("only means something with --cluster"),
            "{e}"
        );
        let e = resolve(NodeArgs {
            name: Some("n1".into()),
            cluster: Some("n1=a:1,n2=b:2,w=c:3/witness".into()),
            peer: Some("127.0.0.1:0".parse().unwrap()),
            sync_replicas: Some("FIRST 1 (n2, w)".parse().unwrap()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("names the witness w"), "{e}");
    }

    #[test]
    fn the_file_key_witness_is_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scribe.toml");
        std::fs::write(
            &path,
            "name = \"w\"\npeer = \"127.0.0.1:0\"\ncluster = \"n1=a:1,n2=b:2,w=c:3/witness\"\nwitness = true\n",
        )
        .unwrap();
        let (c, _) = resolve(NodeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert!(c.cluster.unwrap().witnesses.contains("w"));
    }
}
