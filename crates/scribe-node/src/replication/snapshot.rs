//! Receiving a snapshot over the peer port — a replica's from its primary, a new master's from a
//! peer: into a file beside the data, checked against its announced size and CRC-32C, and made
//! durable before anyone installs it. Also the marker that says an install is under way, so a
//! node killed in the middle starts again from an empty copy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scribe_core::{Lsn, Position};
use scribe_wire::{read_message, Message};
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::identity;

/// The file in a data directory whose presence says a snapshot install did not finish.
pub const SEEDING_MARKER: &str = "SEEDING";
/// Where a snapshot is received, in the data directory (a master's: with the peer's name after
/// it, as two peers may each be sending one).
pub const INCOMING: &str = "snapshot.incoming";

/// What the sender said while a snapshot arrived.
pub(crate) enum Received {
    /// `got` of `total` bytes are in.
    Bytes { got: u64, total: u64 },
    /// A heartbeat: the sender's log ends at this LSN.
    Heartbeat(Lsn),
}

/// Why a snapshot did not arrive.
pub(crate) enum NotReceived {
    /// The stream failed or the sender misbehaved: dial again.
    Stream(String),
    /// This node could not write it (its disk): no use dialing again at once.
    Local(String),
}

/// Receives the snapshot the sender is about to send into the file `path`; answers its path
/// and the position it holds. `begun` is its announcement (position, bytes) when the caller has
/// read it already. `seen` hears of its progress.
pub(crate) async fn receive<R: AsyncRead + Unpin>(
    rd: &mut R,
    path: PathBuf,
    begun: Option<(Position, u64)>,
    peer_timeout: Duration,
    mut seen: impl FnMut(Received),
) -> Result<(PathBuf, Position), NotReceived> {
    use NotReceived::{Local, Stream};
    let (at, total) = match begun {
        Some(b) => b,
        // Taking the snapshot can take a while on a large database.
        None => match tokio::time::timeout(Duration::from_secs(3600), read_message(rd)).await {
            Ok(Ok(Message::SnapshotBegin { at, bytes })) => (at, bytes),
            Ok(Ok(other)) => {
                return Err(Stream(format!(
                    "expected a snapshot, got a {} message",
                    other.kind()
                )))
            }
            Ok(Err(e)) => return Err(Stream(e.to_string())),
            Err(_) => return Err(Stream("no snapshot within an hour".into())),
        },
    };
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| Local(format!("create {}: {e}", path.display())))?;
    tracing::info!(%at, bytes = total, "receiving a snapshot");
    seen(Received::Bytes { got: 0, total });
    let mut crc = 0u32;
    let mut got = 0u64;
    let mut next_report = total / 10;
    let started = Instant::now();
    loop {
        let msg = match tokio::time::timeout(peer_timeout, read_message(rd)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(Stream(e.to_string())),
            Err(_) => return Err(Stream("the snapshot transfer stalled".into())),
        };
        match msg {
            Message::SnapshotChunk(bytes) => {
                got += bytes.len() as u64;
                if got > total {
                    return Err(Stream(format!(
                        "the snapshot is larger than the {total} bytes announced"
                    )));
                }
                crc = crc32c::crc32c_append(crc, &bytes);
                file.write_all(&bytes)
                    .await
                    .map_err(|e| Local(format!("write {}: {e}", path.display())))?;
                seen(Received::Bytes { got, total });
                if got >= next_report && total > 0 {
                    tracing::info!(
                        percent = got * 100 / total,
                        bytes = got,
                        of = total,
                        "receiving the snapshot"
                    );
                    next_report = got + total / 10;
                }
            }
            Message::SnapshotEnd { crc32c } => {
                if got != total || crc != crc32c {
                    return Err(Stream(format!(
                        "the snapshot arrived damaged ({got} of {total} bytes, checksum {crc:08x}, expected {crc32c:08x})"
                    )));
                }
                break;
            }
            Message::Heartbeat { flushed } => seen(Received::Heartbeat(flushed.lsn)),
            other => {
                return Err(Stream(format!(
                    "unexpected {} message during a snapshot",
                    other.kind()
                )))
            }
        }
    }
    file.sync_all()
        .await
        .map_err(|e| Local(format!("fsync {}: {e}", path.display())))?;
    tracing::info!(
        bytes = total,
        seconds = started.elapsed().as_secs_f64(),
        "snapshot received"
    );
    Ok((path, at))
}

/// Marks `dir` as holding an install under way.
pub(crate) fn write_marker(dir: &Path) -> Result<(), String> {
    identity::write_atomically(
        dir,
        SEEDING_MARKER,
        b"a snapshot is being installed; this data directory is incomplete until it is done\n",
    )
    .map_err(|e| format!("write {}: {e}", dir.join(SEEDING_MARKER).display()))
}

/// Removes the marker once the install is complete and durable.
pub(crate) fn remove_marker(dir: &Path) -> Result<(), String> {
    let path = dir.join(SEEDING_MARKER);
    std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync {}: {e}", dir.display()))
}

/// At start-up: if an earlier snapshot install did not finish, the database and log are a mix
/// of old and new; delete both so the node is seeded again. Answers whether it did.
pub fn discard_unfinished_seeding(dir: &Path) -> Result<bool, String> {
    if !dir.join(SEEDING_MARKER).exists() {
        return Ok(false);
    }
    for sub in ["db", "log"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(INCOMING) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    remove_marker(dir)?;
    Ok(true)
}
