//! The HTTP port's accept loop (in place of `axum::serve`), so that no client can hold the port:
//!
//! - `--max-connections`: past it a connection is answered `503 too_many_connections` (JSON, as
//!   every error) and closed; past twice it, closed at once.
//! - `--http-header-timeout`: a connection must send a request's headers within it — the first
//!   request's, and each next one's after an answer (so it also bounds an idle keep-alive
//!   connection). A slow-loris client trickling its headers is cut off at it.
//! - `--http-body-timeout`: a request body must arrive within it, or the request is answered
//!   `408 body_timeout` (see [`read_body`]); a body over `--max-request-bytes` is answered 413.
//! - `--tls-cert/--tls-key`: TLS (the handshake must also finish within the header timeout).
//!
//! When the shutdown future completes it stops accepting, lets each connection finish the request
//! it is serving (idle ones are closed), and returns once all are closed, as `axum::serve`'s
//! graceful shutdown does.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::state::NodeState;
use crate::ApiError;

/// The address an HTTP request's connection came from, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The limits of the HTTP port.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers (and a TLS handshake).
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Connections being told 503: bounded too, so a flood of them holds no more than this.
    let refusals = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to be freed.
                    tracing::warn!(error = %e, "accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let stop = stop_rx.clone();
        let tls = tls.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let inner = TowerToHyperService::new(app.clone());
                // Every request knows the address it came from (for logs of refused logins).
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ClientAddr(peer));
                        hyper::service::Service::call(&inner, req)
                    },
                );
                tokio::spawn(async move {
                    accept(socket, peer, tls, service, true, limits, stop).await;
                    drop(slot);
                });
            }
            Err(_) => {
                let Ok(refusal) = refusals.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "closed an HTTP connection at once: twice --max-connections reached");
                    continue;
                };
                tracing::warn!(%peer, limit = limits.max_connections, "refused an HTTP connection: --max-connections reached");
                let limit = limits.max_connections;
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(ApiError::TooManyConnections(limit).into_response())
                });
                tokio::spawn(async move {
                    accept(socket, peer, tls, service, false, limits, stop).await;
                    drop(refusal);
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    // Every connection holds a receiver: this returns when the last one has closed.
    stop_tx.closed().await;
    Ok(())
}

/// Finishes the TLS handshake, if any, then serves the connection.
async fn accept<S>(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    service: S,
    keep_alive: bool,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
) where
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tls {
        None => connection(socket, peer, service, keep_alive, limits, stop).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_timeout, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => connection(stream, peer, service, keep_alive, limits, stop).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Serves HTTP/1.1 on one connection until it closes, or until told to stop (then the request in
/// flight is finished and the connection closed).
async fn connection<I, S>(
    io: I,
    peer: SocketAddr,
    service: S,
    keep_alive: bool,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(keep_alive)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // `stop` lives to the end of this function: the server waits for every receiver to go.
    let mut signal = stop.clone();
    let stopped = async move {
        let _ = signal.wait_for(|s| *s).await;
    };
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
    drop(stop);
}

/// Middleware: reads the whole request body within `--http-body-timeout` (else 408
/// `body_timeout`) and at most `--max-request-bytes` of it (else 413), before the handler runs.
pub async fn read_body(State(state): State<Arc<NodeState>>, req: Request, next: Next) -> Response {
    let limit = state.config.max_request_bytes;
    let timeout = state.config.http_body_timeout;
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return ApiError::TooLarge(limit).into_response();
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(timeout, async move {
        let mut body = body;
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ApiError::BadJson(format!("could not read the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(ApiError::TooLarge(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    })
    .await;
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::BodyTimeout(timeout).into_response(),
    }
}
