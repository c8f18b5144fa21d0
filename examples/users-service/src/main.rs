//! `users-service`: serves the users service (see the library) against a Scribe cluster until
//! Ctrl-C or SIGTERM. Its first line on stdout is `users-service listening on http://ADDR`.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use scribe_client::Cluster;

/// The classic users service on Scribe: writes to the primary, reads from the replicas.
#[derive(Parser, Debug)]
#[command(name = "users-service", version)]
struct Args {
    /// The cluster's nodes (their HTTP APIs), comma-separated; any one that answers is enough to
    /// find the others
    #[arg(
        long,
        env = "SCRIBE_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:5480,http://127.0.0.1:5481,http://127.0.0.1:5482"
    )]
    scribe: Vec<String>,
    /// Where the service listens for HTTP
    #[arg(long, env = "USERS_SERVICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster::connect(&args.scribe)
        .await
        .with_context(|| format!("connect to the Scribe cluster at {}", args.scribe.join(",")))?;
    users_service::prepare(&cluster)
        .await
        .context("create the users table")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("read the listening address")?;
    println!("users-service listening on http://{addr}");
    eprintln!(
        "scribe primary {}, replicas {}",
        cluster.primary_url().unwrap_or_else(|| "unknown".into()),
        cluster
            .replicas()
            .iter()
            .map(|r| format!("{} ({})", r.name, r.url))
            .collect::<Vec<_>>()
            .join(", ")
    );
    axum::serve(listener, users_service::router(cluster))
        .with_graceful_shutdown(shutdown())
        .await
        .context("serve HTTP")
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
