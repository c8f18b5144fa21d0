//! [`Node`]: starts a node — identity, storage engine (with recovery and replay), HTTP listener,
//! peer listener, and its replication role (a primary with its replicas, or a replica following
//! one) — serves until told to stop, then drains requests and stops the writer cleanly.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use scribe_log::LogOptions;
use scribe_sqlite::{Engine, EngineOptions, OpenReport};

use crate::api;
use crate::leadership::Leadership;
use crate::replication::follower::{self, Follower};
use crate::replication::registry::Registry;
use crate::replication::{retention, sender};
use crate::state::NodeState;
use crate::{identity, NodeConfig};

/// The URL other nodes and clients reach this node's HTTP API at: `--advertise-url`, or the
/// address bound, `https://` with `--tls-cert` (which is only useful to others when it is not a wildcard like 0.0.0.0).
fn advertised_url(
    config: &NodeConfig,
    listener: &tokio::net::TcpListener,
) -> Result<String, String> {
    if let Some(url) = &config.advertise_url {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if addr.ip().is_unspecified() {
        tracing::warn!(%addr, "the HTTP API listens on a wildcard address: set --advertise-url so replicas can forward to this node and clients can find it");
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{addr}"))
}

/// In cluster mode every member's data belongs to the cluster its `--cluster` list names: a
/// node with an empty data directory takes that cluster's id; one whose data belongs to another
/// cluster is refused, with nothing changed.
fn join_cluster(
    config: &NodeConfig,
    cluster: &crate::cluster::ClusterSettings,
    identity: identity::Identity,
    engine: &Engine,
) -> Result<identity::Identity, String> {
    // A joining node takes the cluster's id as its member reported it; the others derive it
    // from the --cluster list they bootstrapped with.
    let id = match &cluster.join {
        Some(j) => j.cluster_id.clone(),
        None => {
            crate::control::ControlConfig::derived_cluster_id(&cluster.members, &cluster.witnesses)
        }
    };
    // A node re-formed into a cluster of its own keeps the id it took then.
    if identity.cluster_id == id
        || (cluster.join.is_none() && reformed_id_of(&id, &identity.cluster_id))
    {
        return Ok(identity);
    }
    if engine.progress().last.lsn != scribe_core::Lsn::ZERO {
        return Err(format!(
            "data directory {} holds data of cluster {}, but the --cluster list names cluster {id}: \
             start this node with the --cluster list it was started with, or with an empty data directory to join this cluster",
            config.data_dir.display(),
            identity.cluster_id
        ));
    }
    identity::adopt_cluster(&config.data_dir, &config.name, &id)?;
    Ok(identity::Identity {
        cluster_id: id,
        ..identity
    })
}

/// The file that makes a re-formation resumable: written (durably) before anything else
/// changes, removed once the new control plane is bootstrapped.
const REFORM_MARKER: &str = "reform.pending";

/// Whether `id` is the id of a cluster re-formed from the list whose derived id is `derived`.
fn reformed_id_of(derived: &str, id: &str) -> bool {
    id.strip_prefix(derived)
        .and_then(|rest| rest.strip_prefix(".r"))
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
}

/// `--reform-cluster OLD_ID`, in steps that survive a crash between any two of them: check
/// everything; write `reform.pending` (the new cluster id and first term); set the old control
/// plane aside (`control.before-reform-<unix ms>/`); take the new cluster id. A start that finds
/// the marker resumes from it. Answers the term the new cluster starts in — above every term of
/// this node's log and of its old control plane — or `None` when there is nothing (more) to do:
/// re-formed already (then the flag should be removed).
fn reform_cluster(
    config: &NodeConfig,
    cluster: &crate::cluster::ClusterSettings,
    old_id: &str,
    identity: &identity::Identity,
    engine: &Engine,
) -> Result<Option<(scribe_core::Term, String)>, String> {
    if cluster.members.len() != 1 || cluster.members[0].0 != config.name {
        return Err(format!(
            "--reform-cluster re-forms a cluster of this node alone: give it --cluster {}=PEER_ADDR, and add the others back later with --join",
            config.name
        ));
    }
    if cluster.witnesses.contains(&config.name) {
        return Err("--reform-cluster: a witness holds no data to re-form a cluster around".into());
    }
    let dir = &config.data_dir;
    let marker = dir.join(REFORM_MARKER);
    let control = dir.join("control");
    let derived =
        crate::control::ControlConfig::derived_cluster_id(&cluster.members, &cluster.witnesses);
    let (new_id, term) = if marker.exists() {
        let text = std::fs::read_to_string(&marker)
            .map_err(|e| format!("read {}: {e}", marker.display()))?;
        let mut parts = text.split_whitespace();
        let (Some(id), Some(term)) = (parts.next(), parts.next().and_then(|t| t.parse().ok()))
        else {
            return Err(format!(
                "{} is damaged ({text:?}); remove it and start again",
                marker.display()
            ));
        };
        // Done already if the new control plane is bootstrapped under the new id.
        if control.exists() {
            let sm = crate::control::state_machine::StateMachine::open(&control)
                .map_err(|e| format!("read {}: {e}", control.display()))?;
            let st = sm.subscribe().borrow().clone();
            if st.is_bootstrapped() && st.cluster_id == id {
                let _ = std::fs::remove_file(&marker);
                return Ok(None);
            }
        }
        tracing::warn!(marker = %marker.display(), "resuming an unfinished re-formation of the cluster");
        (id.to_string(), scribe_core::Term(term))
    } else {
        if identity.cluster_id != old_id && reformed_id_of(&derived, &identity.cluster_id) {
            tracing::warn!(cluster = %identity.cluster_id, "--reform-cluster {old_id}: this node was re-formed already; remove the flag");
            return Ok(None);
        }
        if identity.cluster_id != old_id {
            return Err(format!(
                "--reform-cluster {old_id}: this node belongs to cluster {}, not {old_id}; give the id of the cluster to re-form (its status shows it) to confirm",
                identity.cluster_id
            ));
        }
        if !control.exists() {
            return Err(format!(
                "--reform-cluster: {} holds no control plane of an earlier cluster; start a new cluster without the flag",
                dir.display()
            ));
        }
        let old_highest = crate::control::log_store::LogStore::open(&control)
            .map_err(|e| format!("read {}: {e}", control.display()))?
            .highest_term();
        let old_state = crate::control::state_machine::StateMachine::open(&control)
            .map_err(|e| format!("read {}: {e}", control.display()))?
            .subscribe()
            .borrow()
            .clone();
        let highest = old_state
            .history
            .iter()
            .map(|e| e.term)
            .chain([old_state.term, old_highest, engine.progress().last.term])
            .max()
            .unwrap_or(scribe_core::Term::FIRST);
        let term = scribe_core::Term(highest.get().max(1) + 1);
        // A new id for every re-formation (a second disaster re-forms again), recognisably this
        // list's (see `reformed_id_of`).
        let new_id = format!("{derived}.r{}", term.get());
        identity::write_atomically(
            dir,
            REFORM_MARKER,
            format!("{new_id} {}\n", term.get()).as_bytes(),
        )
        .map_err(|e| format!("write {}: {e}", marker.display()))?;
        (new_id, term)
    };
    if control.exists() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let aside = dir.join(format!("control.before-reform-{now}"));
        std::fs::rename(&control, &aside).map_err(|e| {
            format!(
                "set the old control plane aside as {}: {e}",
                aside.display()
            )
        })?;
        crate::control::files::sync_dir(dir).map_err(|e| format!("sync {}: {e}", dir.display()))?;
    }
    tracing::warn!(
        old_cluster = %identity.cluster_id,
        new_cluster = %new_id,
        %term,
        "RE-FORMING THE CLUSTER around this node alone: it becomes primary with the data it has; \
         writes the lost members had and it has not are lost to the cluster, and those members must be \
         emptied and added back with --join (started with their old data and lists, two of them would \
         re-form the old cluster's majority); remove --reform-cluster from this node's start once it runs"
    );
    Ok(Some((term, new_id)))
}

/// A started node: its engine is open and its listeners bound.
pub struct Node {
    state: Arc<NodeState>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: Option<tokio::net::TcpListener>,
    pg: Option<crate::pg::PgServer>,
    report: OpenReport,
    security: Arc<crate::peer_link::PeerSecurity>,
}

impl Node {
    /// Opens the data directory (recovering and replaying the log) and binds the HTTP and peer
    /// addresses.
    pub async fn start(config: NodeConfig) -> Result<Node, String> {
        config.validate()?;
        let security = Arc::new(crate::peer_link::PeerSecurity::load(
            config.peer_secret.as_deref(),
            config.peer_tls.as_ref(),
        )?);
        if config.peer_addr.is_some() {
            tracing::info!(
                secret = security.has_secret(),
                tls = security.has_tls(),
                "peer port security"
            );
        }
        if config.users.is_none() {
            tracing::warn!(
                insecure = config.insecure,
                "no --users: requests are not authenticated; anyone who can reach this node's ports can read, write and administer it (loopback only unless --insecure)"
            );
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("create data directory {}: {e}", config.data_dir.display()))?;
        let identity = identity::load_or_create(&config.data_dir, &config.name)?;
        // A replica (fixed, or any member of a cluster, which may be one) or a master killed
        // while being seeded starts again from an empty copy and is seeded again (a master is
        // seeded only while it holds nothing, so nothing is lost).
        if config.follow.is_some() || config.cluster.is_some() || config.multi_master.is_some() {
            if follower::discard_unfinished_seeding(&config.data_dir)? {
                tracing::warn!(data = %config.data_dir.display(), "an earlier snapshot install did not finish; discarded the partial copy, this node will be seeded again");
            }
        } else if config.data_dir.join(follower::SEEDING_MARKER).exists() {
            return Err(format!(
                "data directory {} holds an unfinished snapshot install; it can only be used as a replica (--follow) or a master (--multi-master), which is seeded again",
                config.data_dir.display()
            ));
        }
        let mut opts = EngineOptions::new(&config.data_dir);
        opts.log = LogOptions {
            segment_bytes: config.segment_bytes,
        };
        opts.readers = config.readers;
        opts.max_batch = config.max_batch;
        opts.apply_delay = config.test_apply_delay;
        opts.limits = config.limits(None)?;
        if let Some(mm) = &config.multi_master {
            opts.multi_master = Some(scribe_sqlite::mm::MultiMaster {
                node: config.name.clone(),
                ddl_node: mm.ddl_node(&config.name).to_string(),
                policies: mm.policies.clone(),
                max_offset_ms: mm.max_clock_offset.as_millis() as u64,
            });
        }
        if config.follow.is_some() {
            // Fenced from the start; the leadership's gate keeper owns it from then on.
            opts.gate = scribe_sqlite::WriteGate::closed("this node is a replica");
        } else if config.cluster.is_some() {
            opts.gate = scribe_sqlite::WriteGate::closed(
                "the control plane has not named this node primary yet",
            );
        }
        let dir = config.data_dir.clone();
        let (engine, report) = tokio::task::spawn_blocking(move || Engine::open(opts))
            .await
            .map_err(|e| format!("open storage: {e}"))?
            .map_err(|e| format!("open storage in {}: {e}", dir.display()))?;
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|e| format!("listen for HTTP on {}: {e}", config.http_addr))?;
        let peer = match config.peer_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("listen for peers on {addr}: {e}"))?,
            ),
            None => None,
        };
        let pg = crate::pg::PgServer::bind(&config).await?;
        let tls =
            match &config.tls {
                Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(
                    crate::tls::server_config(cert, key, &[b"http/1.1"])?,
                )),
                None => None,
            };
        let http = crate::node_http::NodeHttp::new(&config)?;
        let http_url = advertised_url(&config, &listener)?;
        let term = engine.progress().last.term.max(scribe_core::Term::FIRST);
        let mut identity = identity;
        if let Some(mm) = &config.multi_master {
            let id = mm.cluster_id(&config.name);
            if identity.cluster_id != id {
                if engine.progress().last.lsn != scribe_core::Lsn::ZERO {
                    return Err(format!(
                        "data directory {} holds data of cluster {}, but the --peers list makes cluster {id}: \
                         start this node with the --peers list it was started with, or with an empty data directory",
                        config.data_dir.display(),
                        identity.cluster_id
                    ));
                }
                identity::adopt_cluster(&config.data_dir, &config.name, &id)?;
                identity = identity::Identity {
                    cluster_id: id,
                    ..identity
                };
            }
        }
        let mm = config.multi_master.as_ref().map(|s| {
            Arc::new(crate::multi_master::MultiMaster::new(
                &config.name,
                s.clone(),
                http_url.clone(),
                config.data_dir.clone(),
            ))
        });
        let (leadership, control) = match &config.cluster {
            None => (
                Leadership::configured(&config.name, &http_url, config.follow.as_deref(), term),
                None,
            ),
            Some(cluster) => {
                let reform = match &cluster.reform {
                    Some(old_id) => reform_cluster(&config, cluster, old_id, &identity, &engine)?,
                    None => None,
                };
                let reform_term = reform.as_ref().map(|(t, _)| *t);
                if let Some((_, id)) = reform {
                    identity::adopt_cluster(&config.data_dir, &config.name, &id)?;
                    identity = identity::Identity {
                        cluster_id: id,
                        ..identity
                    };
                }
                identity = join_cluster(&config, cluster, identity, &engine)?;
                let mut cc = crate::control::ControlConfig::new(
                    config.name.clone(),
                    config.data_dir.clone(),
                    cluster.members.clone(),
                    identity.cluster_id.clone(),
                );
                cc.witnesses = cluster.witnesses.clone();
                cc.join = cluster.join.is_some();
                cc.reform_term = reform_term;
                cc.security = security.clone();
                cc.validate()?;
                let plane = crate::control::ControlPlane::start(cc)
                    .await
                    .map_err(|e| format!("start the control plane: {e}"))?;
                if reform_term.is_some() {
                    // The re-formation is done once the new control plane is bootstrapped.
                    let (mut states, marker) = (plane.state(), config.data_dir.join(REFORM_MARKER));
                    let id = identity.cluster_id.clone();
                    tokio::spawn(async move {
                        loop {
                            let done = {
                                let st = states.borrow_and_update();
                                st.is_bootstrapped() && st.cluster_id == id
                            };
                            if done {
                                let _ = std::fs::remove_file(&marker);
                                tracing::warn!(cluster = %id, "the cluster is re-formed; remove --reform-cluster from this node's start");
                                return;
                            }
                            if states.changed().await.is_err() {
                                return;
                            }
                        }
                    });
                }
                (Leadership::clustered(term), Some(plane))
            }
        };
        let follower = Arc::new(
            Follower::new(
                engine.clone(),
                config.name.clone(),
                identity.cluster_id.clone(),
                leadership.clone(),
                http_url,
                config.data_dir.clone(),
                config.peer_timeout,
            )
            .with_control(control.clone())
            .with_security(security.clone()),
        );
        let registry = Arc::new(Registry::new(config.sync_replicas.clone()));
        let peer_addr = peer.as_ref().and_then(|l| l.local_addr().ok());
        let state = Arc::new(NodeState {
            engine,
            identity,
            config,
            control,
            started: Instant::now(),
            requests: Mutex::new(BTreeMap::new()),
            leadership,
            registry,
            follower,
            peer_addr,
            mm,
            http,
            txns: crate::txns::TxnTable::default(),
        });
        Ok(Node {
            state,
            listener,
            tls,
            peer,
            pg,
            report,
            security,
        })
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The address the peer protocol listens on, if any.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.state.peer_addr
    }

    /// The address the PostgreSQL protocol listens on, if any.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg.as_ref().and_then(|p| p.local_addr())
    }

    /// `primary`, `replica` or `witness`.
    pub fn role(&self) -> &'static str {
        if self.state.is_witness() {
            return "witness";
        }
        self.state.leadership.role().name()
    }

    /// What recovery found at start.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The storage engine.
    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests, stops replication
    /// and stops the writer.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let state = self.state.clone();
        let mut tasks = Vec::new();
        if let Some(peer) = self.peer {
            let ctx = Arc::new(sender::PeerContext {
                engine: state.engine.clone(),
                name: state.identity.name.clone(),
                http_url: advertised_url(&state.config, &self.listener)?,
                snapshot_dir: state.config.data_dir.join("snapshots"),
                leadership: state.leadership.clone(),
                registry: state.registry.clone(),
                follower: state.follower.clone(),
                peer_timeout: state.config.peer_timeout,
                control: state.control.clone(),
                security: self.security.clone(),
                mm: state.mm.clone(),
            });
            tasks.push(tokio::spawn(sender::serve(peer, ctx)));
        }
        if let (Some(plane), Some(cluster)) = (&state.control, &state.config.cluster) {
            tasks.push(tokio::spawn(crate::cluster::run_controller(
                plane.clone(),
                state.leadership.clone(),
                state.identity.name.clone(),
                cluster.witnesses.contains(&state.identity.name),
                advertised_url(&state.config, &self.listener)?,
                cluster.lease,
            )));
            if let (Some(join), Some(peer)) = (&cluster.join, state.peer_addr) {
                tasks.push(tokio::spawn(crate::cluster::ask_to_join(
                    plane.clone(),
                    state.http.clone(),
                    join.clone(),
                    state.identity.name.clone(),
                    cluster
                        .members
                        .iter()
                        .find(|(n, _)| *n == state.identity.name)
                        .map_or_else(|| peer.to_string(), |(_, a)| a.clone()),
                    cluster.witnesses.contains(&state.identity.name),
                )));
            }
            tasks.push(tokio::spawn(crate::cluster::run_failover_manager(
                plane.clone(),
                state.http.clone(),
                crate::cluster::FailoverPolicy {
                    mode: state.config.commit,
                    sync_set: state.config.sync_replicas.clone(),
                    lease: cluster.lease,
                },
            )));
        }
        tasks.push(tokio::spawn(crate::leadership::keep_gate(
            state.engine.clone(),
            state.leadership.clone(),
            state.control.is_some(),
        )));
        tasks.push(tokio::spawn(state.follower.clone().run()));
        if let Some(mm) = &state.mm {
            for (peer, addr) in &mm.settings.peers {
                tasks.push(tokio::spawn(crate::multi_master::run_puller(
                    state.engine.clone(),
                    mm.clone(),
                    self.security.clone(),
                    peer.clone(),
                    addr.clone(),
                    state.config.peer_timeout,
                )));
            }
        }
        if let Some(pg) = self.pg {
            tasks.push(tokio::spawn(pg.serve(state.clone())));
        }
        tasks.push(tokio::spawn(retention::run(
            state.engine.clone(),
            state.leadership.clone(),
            state.registry.clone(),
            state.config.max_log_size,
        )));
        let app = api::router(self.state);
        let limits = crate::http_server::HttpLimits {
            max_connections: state.config.max_connections,
            header_timeout: state.config.http_header_timeout,
        };
        let served =
            crate::http_server::serve(self.listener, self.tls, app, limits, shutdown).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Some(plane) = &state.control {
            plane.shutdown().await;
        }
        state.engine.shutdown().await;
        served.map_err(|e| format!("serve HTTP: {e}"))
    }
}
