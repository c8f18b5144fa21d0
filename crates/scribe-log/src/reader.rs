//! [`LogReader`]: iterates durable records from an LSN, segment by segment, reading each file
//! through a buffer. It never reads past the durable position it was given, so it can run beside
//! the writer.
//!
//! The active segment may end in zero padding that the writer later overwrites with records (see
//! [`crate::log`]), and a buffer filled earlier may still hold those zeros. So a zero frame header
//! means "no record here yet", never a record: the reader drops its buffer and reads the file
//! again at that offset; if it still finds zeros, the segment holds no more records, and the
//! reader goes on to the next segment, or, if there is none, stops where it is.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use scribe_core::Lsn;

use crate::record::{decode_frame, Record, FRAME_HEADER, MAX_BODY};
use crate::segment::{decode_header, SEGMENT_HEADER};
use crate::LogError;

/// An iterator over the durable records `[from, upto]`. [`LogReader::extend`] moves `upto` on,
/// so one reader can follow a growing log (a primary's sender tailing its own log).
#[derive(Debug)]
pub struct LogReader {
    /// The log directory, to find segments created after the reader was opened.
    dir: Option<PathBuf>,
    segments: Vec<(Lsn, PathBuf)>,
    next_segment: usize,
    current: Option<(PathBuf, BufReader<File>, u64)>,
    next: Lsn,
    upto: Lsn,
    frame: Vec<u8>,
}

impl LogReader {
    pub(crate) fn new(
        segments: Vec<(Lsn, PathBuf)>,
        from: Lsn,
        upto: Lsn,
    ) -> Result<LogReader, LogError> {
        let from = from.max(Lsn(1));
        let oldest = segments.first().map_or(Lsn(1), |s| s.0);
        if from < oldest {
            return Err(LogError::Truncated {
                requested: from,
                oldest,
            });
        }
        let start = segments.iter().rposition(|s| s.0 <= from).unwrap_or(0);
        Ok(LogReader {
            dir: None,
            segments,
            next_segment: start,
            current: None,
            next: from,
            upto,
            frame: Vec::new(),
        })
    }

    /// The next record this reader will return.
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// Lets the reader go on up to `upto`, which the log's owner must have made durable. Data
    /// read ahead into the buffer is dropped, since it may hold part of a frame that was being
    /// written at the time.
    pub fn extend(&mut self, upto: Lsn) -> Result<(), LogError> {
        if upto <= self.upto {
            return Ok(());
        }
        self.upto = upto;
        if let Some((path, r, offset)) = self.current.as_mut() {
            r.seek(SeekFrom::Start(*offset))
                .map_err(|e| LogError::io(format!("read log segment {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Finds segments created since the list was read.
    fn relist(&mut self) -> Result<bool, LogError> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let known = self.segments.last().map_or(Lsn::ZERO, |s| s.0);
        let newer: Vec<_> = crate::segment::list_segments_readonly(dir)?
            .into_iter()
            .filter(|s| s.0 > known)
            .collect();
        let found = !newer.is_empty();
        self.segments.extend(newer);
        Ok(found)
    }

    fn open_next(&mut self) -> Result<bool, LogError> {
        if self.next_segment >= self.segments.len() && !self.relist()? {
            return Ok(false);
        }
        let Some((_, path)) = self.segments.get(self.next_segment) else {
            return Ok(false);
        };
        let path = path.clone();
        self.next_segment += 1;
        let ctx = |e| LogError::io(format!("read log segment {}", path.display()), e);
        let mut r = BufReader::with_capacity(256 << 10, File::open(&path).map_err(ctx)?);
        let mut h = [0u8; SEGMENT_HEADER];
        r.read_exact(&mut h).map_err(ctx)?;
        decode_header(&h).map_err(|reason| LogError::Corrupt {
            segment: path.clone(),
            offset: 0,
            reason,
        })?;
        self.current = Some((path, r, SEGMENT_HEADER as u64));
        Ok(true)
    }

    fn read_one(&mut self) -> Result<Option<Record>, LogError> {
        // Whether the buffer was dropped during this call: bytes read since then are at least as
        // new as the call, so they hold every record up to `upto`.
        let mut reread = false;
        loop {
            if self.next > self.upto {
                return Ok(None);
            }
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let (path, r, offset) = self.current.as_mut().expect("opened");
            self.frame.resize(FRAME_HEADER, 0);
            match r.read_exact(&mut self.frame[..FRAME_HEADER]) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.current = None;
                    continue;
                }
                Err(e) => {
                    return Err(LogError::io(
                        format!("read log segment {}", path.display()),
                        e,
                    ))
                }
            }
            if self.frame[..FRAME_HEADER].iter().all(|&b| b == 0) {
                let ctx = |e| LogError::io(format!("read log segment {}", path.display()), e);
                r.seek(SeekFrom::Start(*offset)).map_err(ctx)?;
                if !reread {
                    reread = true;
                    continue;
                }
                // Padding: no more records in this segment.
                if self.next_segment < self.segments.len() || self.relist()? {
                    self.current = None;
                    continue;
                }
                return Ok(None);
            }
            let body_len =
                u32::from_le_bytes(self.frame[4..8].try_into().expect("4 bytes")) as usize;
            let corrupt = |offset: u64, reason: String| LogError::Corrupt {
                segment: path.clone(),
                offset,
                reason,
            };
            if body_len > MAX_BODY {
                return Err(corrupt(
                    *offset,
                    format!("impossible body length {body_len}"),
                ));
            }
            self.frame.resize(FRAME_HEADER + body_len, 0);
            r.read_exact(&mut self.frame[FRAME_HEADER..]).map_err(|e| {
                LogError::io(
                    format!("read log segment {} at offset {offset}", path.display()),
                    e,
                )
            })?;
            let (record, len) =
                decode_frame(&self.frame).map_err(|e| corrupt(*offset, format!("{e:?}")))?;
            *offset += len as u64;
            if record.lsn < self.next {
                continue;
            }
            if record.lsn != self.next {
                return Err(corrupt(
                    *offset - len as u64,
                    format!("record lsn {} where {} was expected", record.lsn, self.next),
                ));
            }
            self.next = self.next.next();
            return Ok(Some(record));
        }
    }
}

/// A reader of the durable records `[from, upto]` of the log in `dir`, opened beside the log's
/// owner (which must have made `upto` durable).
pub fn open_reader(dir: &std::path::Path, from: Lsn, upto: Lsn) -> Result<LogReader, LogError> {
    let segments = crate::segment::list_segments_readonly(dir)?;
    let mut reader = LogReader::new(segments, from, upto)?;
    reader.dir = Some(dir.to_path_buf());
    Ok(reader)
}

impl Iterator for LogReader {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.read_one() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.upto = Lsn::ZERO;
                Some(Err(e))
            }
        }
    }
}
