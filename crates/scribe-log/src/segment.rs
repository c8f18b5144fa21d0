//! Segment files: `<first lsn, 20 digits>.seg` in the log directory, each a header followed by
//! frames.
//!
//! ```text
//! header := magic "SCRIBLOG" | version u32 | first_lsn u64 | crc32c(preceding 20 bytes) u32
//! ```
//!
//! Segments are created atomically (temporary file, fsync, rename, fsync of the directory), so a
//! segment whose header is damaged is corruption, never a half-created file.
//!
//! The active segment may end in *padding*: zeros written ahead of the records so that appending
//! a batch overwrites space the file already has instead of growing it (see [`crate::log`]). A
//! frame never starts with a zero byte (its magic is "SREC"), so zeros after the last frame are
//! told apart from a torn write by [`scan`]. Closed segments hold no padding.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use scribe_core::Lsn;

use crate::record::{
    decode_frame, FrameError, Record, FRAME_HEADER, FRAME_MAGIC, MAX_BODY, MAX_LSN,
};
use crate::LogError;

/// Magic bytes that open every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SCRIBLOG";
/// The segment format this code writes.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER: usize = 24;
const SUFFIX: &str = ".seg";

/// The file name of the segment whose first record is `first`.
pub fn segment_name(first: Lsn) -> String {
    format!("{:020}{SUFFIX}", first.0)
}

/// The first LSN named by a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// The header bytes of a segment starting at `first`.
pub fn encode_header(first: Lsn) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first.0.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header and returns the first LSN it names.
pub fn decode_header(h: &[u8]) -> Result<Lsn, String> {
    if h.len() < SEGMENT_HEADER {
        return Err(format!(
            "header is {} bytes, expected {SEGMENT_HEADER}",
            h.len()
        ));
    }
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("not a Scribe log segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&h[0..20]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != SEGMENT_VERSION {
        return Err(format!("unknown segment version {version}"));
    }
    let first = Lsn(u64::from_le_bytes(h[12..20].try_into().expect("8 bytes")));
    if first > MAX_LSN {
        return Err(format!(
            "the header's first lsn {first} is past the largest possible lsn {MAX_LSN}"
        ));
    }
    Ok(first)
}

/// Creates the segment for `first` in `dir` atomically and returns it opened for writing.
pub fn create_segment(dir: &Path, first: Lsn) -> Result<(PathBuf, File), LogError> {
    let path = dir.join(segment_name(first));
    let tmp = dir.join(format!("{}.tmp", segment_name(first)));
    let ctx = |what: &str| format!("{what} log segment {}", path.display());
    let mut f = File::create(&tmp).map_err(|e| LogError::io(ctx("create"), e))?;
    f.write_all(&encode_header(first))
        .map_err(|e| LogError::io(ctx("write header of"), e))?;
    f.sync_all().map_err(|e| LogError::io(ctx("fsync"), e))?;
    fs::rename(&tmp, &path).map_err(|e| LogError::io(ctx("rename into place"), e))?;
    sync_dir(dir)?;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io(ctx("open"), e))?;
    Ok((path, f))
}

/// fsyncs a directory so that a create, rename or delete in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(format!("fsync log directory {}", dir.display()), e))
}

/// The segments in `dir`, sorted by first LSN. Leftover temporary files are removed.
pub fn list_segments(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, LogError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir)
        .map_err(|e| LogError::io(format!("list log directory {}", dir.display()), e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| LogError::io(format!("list log directory {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_segment_name(name) {
            out.push((first, entry.path()));
        } else if name.ends_with(".seg.tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The segments in `dir`, sorted by first LSN, touching nothing (for readers beside the owner).
pub fn list_segments_readonly(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>, LogError> {
    let ctx = |e| LogError::io(format!("list log directory {}", dir.display()), e);
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(ctx)? {
        let entry = entry.map_err(ctx)?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a whole segment file.
pub fn read_segment(path: &Path) -> Result<Vec<u8>, LogError> {
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|e| LogError::io(format!("read log segment {}", path.display()), e))?;
    Ok(buf)
}

/// The result of scanning a segment's bytes.
#[derive(Debug)]
pub struct Scan {
    /// First LSN named by the header.
    pub first: Lsn,
    /// The valid records, in order.
    pub records: Vec<Record>,
    /// Byte offset after the last valid frame.
    pub valid_len: u64,
    /// Bytes after the last valid frame that are all zero (padding, not a torn write); the file is
    /// `valid_len + padding` bytes long when `bad` is `None`.
    pub padding: u64,
    /// The first bad frame, if the scan stopped before the end: its offset and what is wrong.
    /// Never set for a tail of zeros, which is `padding`.
    pub bad: Option<(u64, String)>,
}

/// Scans the frames of a segment, stopping at the first one that is not whole and valid or whose
/// LSN does not follow its predecessor. If everything from there to the end of the file is zero,
/// that is padding and not a bad frame.
pub fn scan(bytes: &[u8], path: &Path) -> Result<Scan, LogError> {
    let first = decode_header(bytes).map_err(|reason| LogError::Corrupt {
        segment: path.to_path_buf(),
        offset: 0,
        reason,
    })?;
    let mut records: Vec<Record> = Vec::new();
    let mut off = SEGMENT_HEADER;
    let mut bad = None;
    while off < bytes.len() {
        match decode_frame(&bytes[off..]) {
            Ok((rec, len)) => {
                let expected = records.last().map_or(first, |r| r.lsn.next());
                if rec.lsn != expected {
                    bad = Some((
                        off as u64,
                        format!("record lsn {} where {expected} was expected", rec.lsn),
                    ));
                    break;
                }
                if let Some(prev) = records.last() {
                    if rec.term < prev.term {
                        bad = Some((
                            off as u64,
                            format!("record term {} after term {}", rec.term, prev.term),
                        ));
                        break;
                    }
                }
                records.push(rec);
                off += len;
            }
            Err(FrameError::Short { needed }) => {
                bad = Some((
                    off as u64,
                    format!("incomplete frame: {} of {needed} bytes", bytes.len() - off),
                ));
                break;
            }
            Err(FrameError::Invalid(why)) => {
                bad = Some((off as u64, why));
                break;
            }
        }
    }
    let mut padding = 0;
    if bad.is_some() && bytes[off..].iter().all(|&b| b == 0) {
        bad = None;
        padding = (bytes.len() - off) as u64;
    }
    Ok(Scan {
        first,
        records,
        valid_len: off as u64,
        padding,
        bad,
    })
}

/// Valid frames anywhere after byte `from`, found by looking for the frame magic at every offset.
/// Used only when recovery meets a bad frame, to tell a torn tail from damage in the middle.
pub fn frames_after(bytes: &[u8], from: usize) -> Vec<(u64, Record)> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut out = Vec::new();
    let mut i = from;
    while i + FRAME_HEADER <= bytes.len() {
        if bytes[i..i + 4] == magic {
            let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().expect("4 bytes")) as usize;
            if len <= MAX_BODY {
                if let Ok((rec, n)) = decode_frame(&bytes[i..]) {
                    out.push((i as u64, rec));
                    i += n;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(Lsn(42)), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_name("00000000000000000042.seg"),
            Some(Lsn(42))
        );
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("00000000000000000042.seg.tmp"), None);
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = encode_header(Lsn(9));
        assert_eq!(decode_header(&h), Ok(Lsn(9)));
        for i in 0..h.len() {
            let mut b = h;
            b[i] ^= 0x10;
            assert!(decode_header(&b).is_err(), "byte {i}");
        }
    }
}
