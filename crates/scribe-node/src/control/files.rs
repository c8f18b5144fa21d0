//! The control plane's file format: every file under `<data_dir>/control/` starts with a header
//! (`SCRC`, format version, file kind) followed by frames of `length u32 | CRC32C u32 | body`
//! (little-endian, body JSON). Small files (vote, committed, snapshot) hold one frame and are
//! replaced atomically: written to a temporary file, fsynced, renamed, and the directory fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// The four bytes every control-plane file starts with.
pub const MAGIC: [u8; 4] = *b"SCRC";
/// The format version written and understood.
pub const VERSION: u8 = 1;
/// Bytes of the file header: magic, version, kind.
pub const HEADER: usize = 6;
/// Bytes before a frame's body.
pub const FRAME_HEADER: usize = 8;
/// Largest frame body accepted (the control state is a few kilobytes; a snapshot chunk never
/// exceeds this).
pub const MAX_BODY: usize = 64 << 20;

/// What a file holds; part of its header, so one file is never read as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// The Raft vote.
    Vote = 1,
    /// The Raft log.
    Log = 2,
    /// The last snapshot of the state machine.
    Snapshot = 3,
    /// The last known committed log id (a hint, see `log_store`).
    Committed = 4,
}

/// The file header for `kind`.
pub fn header(kind: FileKind) -> [u8; HEADER] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, kind as u8]
}

/// Checks a file header; the error names the file and what is wrong.
pub fn check_header(path: &Path, bytes: &[u8], kind: FileKind) -> io::Result<()> {
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    if bytes.len() < HEADER || bytes[..4] != MAGIC {
        return Err(bad("not a Scribe control-plane file".into()));
    }
    if bytes[4] != VERSION {
        return Err(bad(format!(
            "format version {} is not the supported version {VERSION}",
            bytes[4]
        )));
    }
    if bytes[5] != kind as u8 {
        return Err(bad(format!(
            "holds file kind {}, expected {:?}",
            bytes[5], kind
        )));
    }
    Ok(())
}

/// Appends one frame holding `body` to `out`.
pub fn put_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// Reads the frame at the start of `buf`: `Some((body, frame length))`, or `None` when the bytes
/// are too short or the checksum does not match (a torn or damaged write).
pub fn take_frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    if buf.len() < FRAME_HEADER {
        return None;
    }
    let len = u32::from_le_bytes(buf[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    if len > MAX_BODY || buf.len() - FRAME_HEADER < len {
        return None;
    }
    let body = &buf[FRAME_HEADER..FRAME_HEADER + len];
    (crc32c::crc32c(body) == crc).then_some((body, FRAME_HEADER + len))
}

/// Replaces `path` with a one-frame file of `kind` holding `body`: temporary file, write,
/// (fsync when `durable`), rename, (fsync the directory when `durable`).
pub fn write_atomic(path: &Path, kind: FileKind, body: &[u8], durable: bool) -> io::Result<()> {
    let mut bytes = header(kind).to_vec();
    put_frame(&mut bytes, body);
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)?;
    if durable {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Reads a one-frame file written by [`write_atomic`]: `Ok(None)` when it does not exist.
pub fn read_single(path: &Path, kind: FileKind) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    check_header(path, &bytes, kind)?;
    match take_frame(&bytes[HEADER..]) {
        Some((body, len)) if HEADER + len == bytes.len() => Ok(Some(body.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: damaged (checksum or length wrong)", path.display()),
        )),
    }
}

/// Fsyncs a directory, so a rename or a new file in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    OpenOptions::new().read(true).open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_frame_file_round_trips_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vote");
        assert_eq!(read_single(&p, FileKind::Vote).unwrap(), None);
        write_atomic(&p, FileKind::Vote, b"{\"a\":1}", true).unwrap();
        assert_eq!(
            read_single(&p, FileKind::Vote).unwrap().as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        let e = read_single(&p, FileKind::Snapshot).unwrap_err();
        assert!(e.to_string().contains("expected Snapshot"), "{e}");
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&p, &bytes).unwrap();
        let e = read_single(&p, FileKind::Vote).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
    }

    #[test]
    fn a_torn_frame_is_not_read() {
        let mut buf = Vec::new();
        put_frame(&mut buf, b"hello");
        assert_eq!(take_frame(&buf), Some((&b"hello"[..], buf.len())));
        assert_eq!(take_frame(&buf[..buf.len() - 1]), None);
        let mut bad = buf.clone();
        bad[FRAME_HEADER] ^= 0x40;
        assert_eq!(take_frame(&bad), None);
    }
}
