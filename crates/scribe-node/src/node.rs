//! [`Node`]: starts a node — identity, storage engine (with recovery and replay), HTTP listener —
//! serves until told to stop, then drains requests and stops the writer cleanly.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use scribe_log::LogOptions;
use scribe_sqlite::{Engine, EngineOptions, OpenReport};

use crate::api::{self, AppState};
use crate::{identity, NodeConfig};

/// A started node: its engine is open and its listener bound.
pub struct Node {
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    report: OpenReport,
}

impl Node {
    /// Opens the data directory (recovering and replaying the log) and binds the HTTP address.
    pub async fn start(config: NodeConfig) -> Result<Node, String> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("create data directory {}: {e}", config.data_dir.display()))?;
        let identity = identity::load_or_create(&config.data_dir, &config.name)?;
        let mut opts = EngineOptions::new(&config.data_dir);
        opts.log = LogOptions {
            segment_bytes: config.segment_bytes,
        };
        opts.readers = config.readers;
        opts.max_batch = config.max_batch;
        let (engine, report) = tokio::task::spawn_blocking(move || Engine::open(opts))
            .await
            .map_err(|e| format!("open storage: {e}"))?
            .map_err(|e| format!("open storage in {}: {e}", config.data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|e| format!("listen for HTTP on {}: {e}", config.http_addr))?;
        let state = Arc::new(AppState {
            engine,
            identity,
            config,
            started: Instant::now(),
            requests: Mutex::new(BTreeMap::new()),
        });
        Ok(Node {
            state,
            listener,
            report,
        })
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// What recovery found at start.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The storage engine.
    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and stops the writer.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), String> {
        let engine = self.state.engine.clone();
        let app = api::router(self.state);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        engine.shutdown().await;
        served.map_err(|e| format!("serve HTTP: {e}"))
    }
}
