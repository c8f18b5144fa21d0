//! Framing: `SCRW` | body length `u32` | CRC32C of the body `u32` | body, little-endian. A frame
//! longer than [`MAX_FRAME`] is refused before anything is allocated for it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Message;

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SCRW";
/// Bytes before the body.
pub const FRAME_HEADER: usize = 12;
/// Largest body accepted: one record of the log's largest size, with room to spare.
pub const MAX_FRAME: usize = (256 << 20) + (1 << 20);

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection between messages.
    #[error("the peer closed the connection")]
    Closed,
    /// The bytes are not a Scribe peer frame at all.
    #[error("not a Scribe peer protocol frame (starts with {0:02x?}): is something else connected to the peer port?")]
    BadMagic([u8; 4]),
    /// A frame announced a body larger than [`MAX_FRAME`].
    #[error("a frame announces {0} bytes, more than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    /// A frame's checksum does not match its body.
    #[error("a frame's checksum does not match its body (damaged in transit)")]
    Checksum,
    /// The peer speaks another version of the protocol.
    #[error("the peer speaks wire version {0}, this node speaks version {v}", v = crate::WIRE_VERSION)]
    Version(u8),
    /// The body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one frame.
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]);
    msg.encode_body(&mut out)?;
    let body_len = out.len() - FRAME_HEADER;
    if body_len > MAX_FRAME {
        return Err(WireError::TooLarge(body_len));
    }
    let crc = crc32c::crc32c(&out[FRAME_HEADER..]);
    out[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Writes `msg` as one frame (not flushed).
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
) -> Result<(), WireError> {
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads one message. A clean close before a frame starts is [`WireError::Closed`].
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, WireError> {
    let mut header = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Err(WireError::Closed)
            } else {
                Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
        got += n;
        if got >= 4 && header[..4] != MAGIC {
            return Err(WireError::BadMagic(
                header[..4].try_into().expect("4 bytes"),
            ));
        }
    }
    let body_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    if body_len > MAX_FRAME {
        return Err(WireError::TooLarge(body_len));
    }
    let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body).await?;
    if crc32c::crc32c(&body) != crc {
        return Err(WireError::Checksum);
    }
    Message::decode_body(&body)
}

/// Decodes one whole frame from a buffer (tests and fuzzing).
pub fn decode(frame: &[u8]) -> Result<Message, WireError> {
    if frame.len() < FRAME_HEADER {
        return Err(WireError::Malformed("frame shorter than its header".into()));
    }
    if frame[..4] != MAGIC {
        return Err(WireError::BadMagic(frame[..4].try_into().expect("4 bytes")));
    }
    let body_len = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes")) as usize;
    if body_len > MAX_FRAME || frame.len() - FRAME_HEADER != body_len {
        return Err(WireError::Malformed(format!(
            "frame announces {body_len} bytes but carries {}",
            frame.len() - FRAME_HEADER
        )));
    }
    let crc = u32::from_le_bytes(frame[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(&frame[FRAME_HEADER..]) != crc {
        return Err(WireError::Checksum);
    }
    Message::decode_body(&frame[FRAME_HEADER..])
}

#[cfg(test)]
mod tests;
