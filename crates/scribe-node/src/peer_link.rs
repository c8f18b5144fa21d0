//! The peer port's transport: a connection between two nodes (replication or control plane),
//! whichever way it was opened, as one boxed byte stream split into a read and a write half.
//! A plain TCP connection and one wrapped in TLS look the same to the protocol above it.

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Any byte stream a peer connection can run over.
pub trait PeerIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerIo for T {}

/// A peer connection's byte stream (TCP, or TLS over TCP).
pub type PeerStream = Box<dyn PeerIo>;
/// The read half of a peer connection.
pub type PeerReader = ReadHalf<PeerStream>;
/// The write half of a peer connection.
pub type PeerWriter = WriteHalf<PeerStream>;

/// Splits a stream into its halves.
pub fn split(stream: PeerStream) -> (PeerReader, PeerWriter) {
    tokio::io::split(stream)
}

/// A plain TCP connection as a peer stream (Nagle off: the protocol flushes whole messages).
pub fn plain(stream: TcpStream) -> PeerStream {
    let _ = stream.set_nodelay(true);
    Box::new(stream)
}
