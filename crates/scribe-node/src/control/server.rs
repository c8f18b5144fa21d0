//! The server side of a control-plane connection: after the peer listener has read a
//! `ControlHello` it hands the connection to [`serve_connection`], which checks the hello
//! against this node's `--cluster` list and cluster id, then answers `ControlRequest`s one at a
//! time until the peer closes or the plane shuts down.

use scribe_wire::{
    read_message, write_message, ControlHello, Message, Refusal, RefusalCode, WireError,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::types::{RpcRequest, RpcResponse};
use super::ControlPlane;

/// Why a control connection ended other than by a clean close.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The hello was refused (the peer was told why).
    #[error("refused a control connection: {0}")]
    Refused(String),
    /// The peer sent something other than a control request.
    #[error("control connection: {0}")]
    Protocol(String),
    /// The connection failed.
    #[error("control connection: {0}")]
    Wire(#[from] WireError),
}

/// Serves one control-plane connection whose first message, `hello`, the caller has read.
/// Returns when the peer closes the connection (`Ok`) or the plane shuts down (`Ok`), or on a
/// refusal or broken connection (`Err`, for the caller's log).
pub async fn serve_connection<R, W>(
    plane: ControlPlane,
    mut rd: R,
    mut wr: W,
    hello: ControlHello,
) -> Result<(), ServeError>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    if let Err(message) = plane.check_hello(&hello) {
        let refusal = Message::Refused(Refusal {
            code: RefusalCode::ClusterMismatch,
            message: message.clone(),
        });
        // The refusal is best effort: the peer may be gone already.
        let _ = write_message(&mut wr, &refusal).await;
        let _ = wr.flush().await;
        return Err(ServeError::Refused(message));
    }
    let mut stopped = plane.shutdown_signal();
    loop {
        let msg = tokio::select! {
            m = read_message(&mut rd) => m,
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        let (id, body) = match msg {
            Ok(Message::ControlRequest { id, body }) => (id, body),
            Err(WireError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(other) => {
                let why = format!("expected a control request, got a {} message", other.kind());
                let refusal = Message::Refused(Refusal {
                    code: RefusalCode::Protocol,
                    message: why.clone(),
                });
                let _ = write_message(&mut wr, &refusal).await;
                let _ = wr.flush().await;
                return Err(ServeError::Protocol(why));
            }
        };
        let answer = tokio::select! {
            a = handle(&plane, &body) => a,
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        };
        write_message(&mut wr, &Message::ControlResponse { id, body: answer }).await?;
        wr.flush().await.map_err(WireError::Io)?;
    }
}

/// Answers one request body.
async fn handle(plane: &ControlPlane, body: &[u8]) -> Vec<u8> {
    let resp = match serde_json::from_slice::<RpcRequest>(body) {
        Err(e) => RpcResponse::BadRequest(format!("undecodable control request: {e}")),
        Ok(RpcRequest::AppendEntries(r)) => {
            RpcResponse::AppendEntries(plane.raft().append_entries(r).await)
        }
        Ok(RpcRequest::Vote(r)) => RpcResponse::Vote(plane.raft().vote(r).await),
        Ok(RpcRequest::InstallSnapshot(r)) => {
            RpcResponse::InstallSnapshot(plane.raft().install_snapshot(r).await)
        }
        // A forwarded proposal is written here or refused: it is never forwarded again, so a
        // stale view of the leader cannot make it loop.
        Ok(RpcRequest::Propose(p)) => RpcResponse::Propose(plane.write_local(p).await),
    };
    serde_json::to_vec(&resp).unwrap_or_else(|e| {
        serde_json::to_vec(&RpcResponse::BadRequest(format!("encode the answer: {e}")))
            .unwrap_or_default()
    })
}
