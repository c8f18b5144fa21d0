//! [`NodeConfig`]: everything a node needs to start, validated once by whoever builds it (the
//! CLI merges flags, environment and a TOML file) and passed in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use scribe_core::{CommitMode, OnSyncTimeout, SyncSet};

/// A node's configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name, unique in its cluster.
    pub name: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_request_bytes: usize,
    /// Read connections in the pool.
    pub readers: usize,
    /// Most transactions in one group-commit batch.
    pub max_batch: usize,
    /// Size at which a change-log segment is closed, in bytes.
    pub segment_bytes: u64,
    /// Where the peer protocol listens (replicas connect here); `None`: no replicas can follow.
    pub peer_addr: Option<SocketAddr>,
    /// The primary's peer address to follow; `Some` makes this node a read-only replica.
    pub follow: Option<String>,
    /// Default commit mode of writes on this node when primary.
    pub commit: CommitMode,
    /// Which replicas count for semi-sync and sync commits.
    pub sync_replicas: SyncSet,
    /// How long a semi-sync or sync commit waits for its replicas.
    pub sync_timeout: Duration,
    /// What happens when that wait times out.
    pub on_sync_timeout: OnSyncTimeout,
    /// Most bytes of change log kept for replicas that are behind; past it the oldest segments
    /// go and such a replica is re-seeded from a snapshot.
    pub max_log_size: u64,
    /// Silence after which a peer connection is considered dead and dropped (the other side
    /// reports or heartbeats every 200 ms).
    pub peer_timeout: Duration,
    /// The URL of this node's HTTP API as others reach it (when `http_addr` is a wildcard or
    /// behind NAT); `None`: `http://` + the bound address.
    pub advertise_url: Option<String>,
    /// Address of the PostgreSQL wire protocol; `None`: not served.
    pub pg_addr: Option<SocketAddr>,
    /// Password PostgreSQL clients must give (SCRAM-SHA-256); `None`: no authentication.
    pub pg_password: Option<String>,
    /// PEM certificate chain and private key files for TLS on the PostgreSQL port; `None`: no TLS.
    pub pg_tls: Option<(PathBuf, PathBuf)>,
    /// A file holding the cluster's peer secret (at least 32 bytes); `None`: peers are not
    /// asked to prove they hold it. See `crate::peer_link`.
    pub peer_secret: Option<PathBuf>,
    /// Mutual TLS on the peer port (certificate, key, CA); `None`: plain TCP.
    pub peer_tls: Option<crate::peer_link::PeerTlsFiles>,
    /// PEM certificate chain and private key files for TLS on the HTTP port; `None`: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// PEM file of CA certificates this node trusts for its own outgoing HTTPS (forwarding to the
    /// primary, cluster operations); `None`: it reaches only `http://` peers.
    pub tls_ca: Option<PathBuf>,
    /// How long an HTTP connection may take to send a request's headers (the first request's, or
    /// the next one's after an answer: it also bounds an idle keep-alive connection) and to
    /// finish a TLS handshake.
    pub http_header_timeout: Duration,
    /// How long a request body may take to arrive.
    pub http_body_timeout: Duration,
    /// How long a PostgreSQL connection may take from its first byte to the end of its login
    /// (TLS, startup, authentication); a slower one is closed and its slot freed.
    pub pg_login_timeout: Duration,
    /// The longest an interactive transaction may stay idle between statements before it is
    /// rolled back (it holds the writer meanwhile).
    pub txn_idle_timeout: Duration,
    /// How long a request's statements may run when it does not say (zero: no limit); see
    /// [`scribe_sqlite::Limits::timeout`].
    pub statement_timeout: Duration,
    /// The longest statement timeout a request or session may ask for (zero: any).
    pub max_statement_timeout: Duration,
    /// Most bytes a transaction's captured changes may take (zero: no limit).
    pub max_txn_bytes: u64,
    /// Most bytes of rows one statement may return (zero: no limit).
    pub max_result_bytes: u64,
    /// Most client connections open at once, on each of the HTTP and PostgreSQL ports.
    pub max_connections: usize,
    /// Cluster mode (`--cluster`): the control plane's members and the lease timings; `None`: a
    /// primary by configuration, or a manually managed replica (`--follow`).
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// Multi-master mode (`--multi-master --peers`): every node accepts writes and streams its
    /// log to the others; `None`: primary/replica.
    pub multi_master: Option<MultiMasterSettings>,
    /// The users (`--users`); `None`: no authentication (and loopback-only unless `insecure`).
    pub users: Option<std::sync::Arc<crate::auth::UserStore>>,
    /// Allow listening on non-loopback addresses without `--users` (`--insecure`).
    pub insecure: bool,
    /// Test-only fault injection: a replica pauses this long between making streamed records
    /// durable and applying them (`SCRIBE_TEST_APPLY_DELAY_MS`). Zero in production.
    pub test_apply_delay: Duration,
}

/// A multi-master node's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiMasterSettings {
    /// The other masters: `(name, peer address)`, sorted by name (this node not among them).
    pub peers: Vec<(String, String)>,
    /// Conflict policies by table (`--table-policy`); a table not named is `lww`.
    pub policies: std::collections::BTreeMap<String, scribe_core::multi_master::TablePolicy>,
    /// How far ahead of this node's clock a peer's timestamp may be (`--max-clock-offset`).
    pub max_clock_offset: Duration,
}

impl MultiMasterSettings {
    /// The node that runs schema changes: the first of all the masters' names, sorted.
    pub fn ddl_node<'a>(&'a self, me: &'a str) -> &'a str {
        self.peers
            .iter()
            .map(|(n, _)| n.as_str())
            .chain([me])
            .min()
            .expect("at least this node")
    }

    /// The policies as text, `table=policy` sorted and joined by `;` (peers compare them).
    pub fn policies_text(&self) -> String {
        self.policies
            .iter()
            .map(|(t, p)| format!("{t}={p}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The cluster id every master derives from the names of all the masters.
    pub fn cluster_id(&self, me: &str) -> String {
        let mut names: Vec<&str> = self.peers.iter().map(|(n, _)| n.as_str()).collect();
        names.push(me);
        names.sort();
        format!("mm-{}", names.join("-"))
    }
}

/// Checks a node name: 1 to 64 letters, digits, '-' or '_' (it names files and metrics).
pub fn check_name(name: &str) -> Result<(), String> {
    Ok(scribe_core::check_node_name(name)?)
}

/// The statement timeout of a request that gives none: long enough for ordinary work, short
/// enough that a runaway statement does not hold the single writer for long.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

impl NodeConfig {
    /// The limits of a request, with its own statement timeout if it gives one: zero asks for
    /// the longest allowed (`--max-statement-timeout`, or none), more than that is refused.
    pub fn limits(&self, timeout: Option<Duration>) -> Result<scribe_sqlite::Limits, String> {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let max = nonzero(self.max_statement_timeout);
        let timeout = match timeout {
            None => nonzero(self.statement_timeout),
            Some(d) if d.is_zero() => max,
            Some(d) => match max {
                Some(m) if d > m => {
                    return Err(format!(
                        "a statement timeout of {d:?} is longer than this node allows (--max-statement-timeout {m:?})"
                    ))
                }
                _ => Some(d),
            },
        };
        let nonzero_bytes = |b: u64| (b != 0).then_some(b);
        Ok(scribe_sqlite::Limits {
            timeout,
            max_txn_bytes: nonzero_bytes(self.max_txn_bytes),
            max_result_bytes: nonzero_bytes(self.max_result_bytes),
        })
    }

    /// A configuration with defaults for everything but the name, directory and address.
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        http_addr: SocketAddr,
    ) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            http_addr,
            max_request_bytes: 16 << 20,
            readers: 4,
            max_batch: 1024,
            segment_bytes: 64 << 20,
            peer_addr: None,
            follow: None,
            commit: CommitMode::Async,
            sync_replicas: SyncSet {
                quorum: scribe_core::Quorum::Any,
                n: 1,
                members: None,
            },
            sync_timeout: Duration::from_secs(5),
            on_sync_timeout: OnSyncTimeout::Error,
            max_log_size: 1 << 30,
            peer_timeout: crate::replication::IDLE_TIMEOUT,
            test_apply_delay: Duration::ZERO,
            advertise_url: None,
            pg_addr: None,
            pg_password: None,
            pg_tls: None,
            peer_secret: None,
            peer_tls: None,
            tls: None,
            tls_ca: None,
            http_header_timeout: Duration::from_secs(10),
            pg_login_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(30),
            txn_idle_timeout: Duration::from_secs(30),
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            max_statement_timeout: Duration::from_secs(300),
            max_txn_bytes: 64 << 20,
            max_result_bytes: 64 << 20,
            max_connections: 512,
            cluster: None,
            multi_master: None,
            users: None,
            insecure: false,
        }
    }

    /// Checks the values that can be wrong.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.max_request_bytes < 1024 {
            return Err("the request size limit must be at least 1 KiB".into());
        }
        if self.readers == 0 || self.readers > 256 {
            return Err("readers must be between 1 and 256".into());
        }
        if self.max_batch == 0 {
            return Err("the batch limit must be at least 1".into());
        }
        if self.segment_bytes < 4096 {
            return Err("log segments must be at least 4 KiB".into());
        }
        if self.max_log_size < self.segment_bytes {
            return Err(format!(
                "--max-log-size ({}) must be at least one segment (--segment-bytes {})",
                self.max_log_size, self.segment_bytes
            ));
        }
        if self.txn_idle_timeout.is_zero() {
            return Err("--txn-idle-timeout must be more than zero".into());
        }
        if !self.max_statement_timeout.is_zero()
            && (self.statement_timeout.is_zero()
                || self.statement_timeout > self.max_statement_timeout)
        {
            return Err(format!(
                "--statement-timeout ({:?}) must be at most --max-statement-timeout ({:?})",
                self.statement_timeout, self.max_statement_timeout
            ));
        }
        if self.http_header_timeout.is_zero() || self.http_body_timeout.is_zero() {
            return Err(
                "--http-header-timeout and --http-body-timeout must be more than zero".into(),
            );
        }
        if self.pg_login_timeout.is_zero() {
            return Err("--pg-login-timeout must be more than zero".into());
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_txn_bytes != 0 && self.max_txn_bytes < 64 << 10 {
            return Err("--max-txn-bytes must be at least 64 KiB (or 0: no limit)".into());
        }
        if self.max_result_bytes != 0 && self.max_result_bytes < 64 << 10 {
            return Err("--max-result-bytes must be at least 64 KiB (or 0: no limit)".into());
        }
        if self.users.is_none() && !self.insecure {
            let mut addrs = vec![("--http", self.http_addr)];
            addrs.extend(self.pg_addr.map(|a| ("--pg", a)));
            addrs.extend(self.peer_addr.map(|a| ("--peer", a)));
            if let Some((flag, a)) = addrs.iter().find(|(_, a)| !a.ip().is_loopback()) {
                return Err(format!(
                    "{flag} {a} is not a loopback address: without --users anyone who reaches it could read and write everything; give --users FILE, or --insecure to allow it"
                ));
            }
        }
        if let Some(users) = &self.users {
            users.check_serving()?;
        }
        if self.users.is_some() && self.pg_password.is_some() {
            return Err("--pg-password and --users do not go together: with --users, PostgreSQL clients log in as the file's users".into());
        }
        if matches!(&self.pg_password, Some(p) if p.is_empty()) {
            return Err(
                "--pg-password must not be empty (leave it out for no authentication)".into(),
            );
        }
        if let Some(u) = &self.advertise_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!(
                    "--advertise-url {u:?} must start with http:// or https://"
                ));
            }
        }
        if self.peer_timeout < Duration::from_secs(1) {
            return Err("--peer-timeout must be at least 1s (peers report every 200 ms)".into());
        }
        if self.sync_timeout.is_zero() {
            return Err("--sync-timeout must be longer than zero".into());
        }
        if let Some(f) = &self.follow {
            if f.trim().is_empty() || !f.contains(':') {
                return Err(format!(
                    "--follow {f:?} must be the primary's peer address, HOST:PORT"
                ));
            }
        }
        if let Some(mm) = &self.multi_master {
            if self.follow.is_some() || self.cluster.is_some() {
                return Err("--multi-master excludes --follow and --cluster: every master takes writes, none follows another".into());
            }
            if self.peer_addr.is_none() {
                return Err("--multi-master needs --peer: the other masters stream this node's log from there".into());
            }
            if mm.peers.is_empty() {
                return Err(
                    "--multi-master needs --peers NAME=PEER_ADDR,...: the other masters".into(),
                );
            }
            if let Some((n, _)) = mm.peers.iter().find(|(n, _)| n == &self.name) {
                return Err(format!(
                    "--peers lists this node itself ({n}): list the other masters only"
                ));
            }
            if mm.peers.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err("--peers names a master twice".into());
            }
        }
        if let Some(cluster) = &self.cluster {
            if self.follow.is_some() {
                return Err("--cluster and --follow exclude each other: in a cluster the control plane decides whom a replica follows".into());
            }
            if self.peer_addr.is_none() {
                return Err(
                    "--cluster needs --peer: the other members reach this node there".into(),
                );
            }
            if !cluster.members.iter().any(|(n, _)| n == &self.name) {
                return Err(format!(
                    "this node's name {} is not in the --cluster list ({})",
                    self.name,
                    cluster
                        .members
                        .iter()
                        .map(|(n, a)| format!("{n}={a}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            cluster.lease.validate().map_err(|e| e.to_string())?;
            if let Some(w) = self
                .sync_replicas
                .members
                .iter()
                .flatten()
                .find(|m| cluster.witnesses.contains(*m))
            {
                return Err(format!(
                    "--sync-replicas {} names the witness {w}: a witness holds no data, so it never acknowledges a write; name data nodes only",
                    self.sync_replicas
                ));
            }
        }
        // In cluster mode every node is given the same set, and whichever is primary simply
        // does not count for it (a primary never acknowledges its own records): a set that
        // names members needs n of them besides whichever one is primary.
        if let (Some(members), Some(_)) = (&self.sync_replicas.members, &self.cluster) {
            if self.sync_replicas.n >= members.len() && members.iter().any(|m| m == &self.name) {
                return Err(format!(
                    "--sync-replicas {}: when {} is the primary only {} of the named members can acknowledge, fewer than the {} it asks for; name more members or ask for fewer",
                    self.sync_replicas,
                    self.name,
                    members.len() - 1,
                    self.sync_replicas.n
                ));
            }
        }
        if let (Some(members), None) = (&self.sync_replicas.members, &self.cluster) {
            if members.iter().any(|m| m == &self.name) {
                return Err(format!(
                    "the sync set {} names this node itself ({})",
                    self.sync_replicas, self.name
                ));
            }
        }
        Ok(())
    }
}
