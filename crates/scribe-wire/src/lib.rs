//! Scribe's peer protocol: the messages a primary and its replicas exchange, and their framing.
//!
//! It owns the byte format only — no sockets, no decisions. A replica opens a TCP connection to
//! its primary's peer port and sends [`Hello`]; the primary answers [`Welcome`] (stream from an
//! LSN, or first a snapshot) or [`Refusal`] and closes. Then the primary sends records,
//! heartbeats and snapshot chunks, and the replica sends its [`Progress`]. The control plane's
//! Raft group uses the same port: its connections open with [`ControlHello`] and then carry
//! `ControlRequest`/`ControlResponse` pairs.
//!
//! Every message travels in a frame: magic `SCRW`, body length, CRC32C of the body, body. The
//! body starts with the wire version and the message kind, so garbage on the peer port, a torn
//! frame or a peer of another version is recognised at once and answered with a clear error.
//! Records inside a `Records` message keep the change log's own checksummed frames.
//!
//! Modules:
//! - [`message`]: the messages and their encoding.
//! - [`frame`]: framing, reading and writing messages on a byte stream.

pub mod frame;
pub mod message;

pub use frame::{read_message, write_message, WireError, MAX_FRAME};
pub use message::{
    ControlHello, Hello, Message, Progress, Refusal, RefusalCode, Start, Welcome, WIRE_VERSION,
};
