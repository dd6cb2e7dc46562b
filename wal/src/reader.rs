//! Tail reader: iterates records from any record boundary and follows the
//! live tail. HA shipping and store replay read the log through it.
//!
//! Owns: its own file handle and read-ahead buffer.
//! Invariants: never returns a record whose end is past the durable end;
//! buffered bytes are trusted only below the durable end seen when they were
//! read (bytes above it may still change). A record's payload is a slice of
//! the read-ahead chunk it was read in (no copy): a chunk is read into
//! again only once no payload of it is left, so keeping records keeps
//! their chunks (up to `HELD_CHUNKS_MAX` of them are held, to reuse).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::error::{Result, WalError};
use crate::format::{self, FRAME_HEADER_BYTES, FrameError, Lsn, SEGMENT_HEADER_BYTES};
use crate::log::Shared;
use crate::recovery::SegmentInfo;

const READ_AHEAD_BYTES: usize = 256 << 10;

/// Chunks with payloads still alive that a reader keeps to reuse, at most
/// (8 MiB).
const HELD_CHUNKS_MAX: usize = 32;

/// One durable record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    /// LSN of the first record of the same write + fdatasync (group commit).
    pub write_lsn: Lsn,
    /// LSN of the first record of the oldest write that was not yet durable
    /// when this record's write was submitted. Records below it were durable.
    pub inflight_lsn: Lsn,
    pub kind: u8,
    pub payload: Bytes,
}

impl Record {
    /// LSN just past this record: the next record's LSN.
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.lsn.0 + format::frame_bytes(self.payload.len()))
    }
}

pub struct WalReader {
    shared: Arc<Shared>,
    position: Lsn,
    /// The durable end when last looked at. It only grows, so a record
    /// below it needs no new look (the look takes the log's lock, which
    /// readers on other threads would otherwise pass back and forth for
    /// every record).
    durable: Lsn,
    segment: Option<OpenSegment>,
    /// The read-ahead chunk, shared with the payloads read from it.
    buffer: Bytes,
    /// Earlier chunks whose payloads were still alive when the reader
    /// moved on, to read into again once they are not (`chunk_to_reuse`).
    held: Vec<Bytes>,
    /// File offset of `buffer[0]` in the current segment.
    buffer_offset: u64,
}

struct OpenSegment {
    info: SegmentInfo,
    file: File,
}

enum Step {
    Record(Record),
    /// No frame at the position in this segment: the writer moved on.
    SegmentEnd(FrameError),
}

impl WalReader {
    pub(crate) fn new(shared: Arc<Shared>, from: Lsn) -> Result<WalReader> {
        let first = shared.first_lsn();
        if from < first {
            return Err(WalError::Truncated { lsn: from, first });
        }
        Ok(WalReader {
            shared,
            position: from,
            durable: Lsn(0),
            segment: None,
            buffer: Bytes::new(),
            held: Vec::new(),
            buffer_offset: 0,
        })
    }

    /// LSN of the next record this reader returns.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// The next durable record, or `None` if the reader has caught up.
    pub fn try_next(&mut self) -> Result<Option<Record>> {
        loop {
            if self.position >= self.durable {
                self.durable = self.shared.durable_end();
                if self.position >= self.durable {
                    return Ok(None);
                }
            }
            self.open_segment_for(self.position)?;
            match self.read_frame(self.durable)? {
                Step::Record(record) => {
                    self.position = record.end_lsn();
                    return Ok(Some(record));
                }
                Step::SegmentEnd(cause) => self.advance_segment(cause)?,
            }
        }
    }

    /// The next record, waiting up to `timeout` for one to become durable.
    /// Must not be called from inside an async task (use `next`).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.try_next()? {
                return Ok(Some(record));
            }
            if self.shared.is_closed() {
                return Err(WalError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.shared.wait_durable_past(self.position, left);
        }
    }

    /// The next record, waiting as long as it takes for one to be durable.
    pub async fn next(&mut self) -> Result<Record> {
        let mut durable = self.shared.subscribe();
        loop {
            if let Some(record) = self.try_next()? {
                return Ok(record);
            }
            if self.shared.is_closed() {
                return Err(WalError::Closed);
            }
            let position = self.position;
            let changed = durable.wait_for(|end| *end > position);
            if changed.await.is_err() && self.shared.is_closed() {
                return Err(WalError::Closed);
            }
            if self.shared.is_closed() && self.shared.durable_end() <= position {
                return Err(WalError::Closed);
            }
        }
    }

    fn open_segment_for(&mut self, lsn: Lsn) -> Result<()> {
        if self
            .segment
            .as_ref()
            .is_some_and(|s| s.info.first_lsn <= lsn)
        {
            return Ok(());
        }
        let info = {
            let segments = self.shared.segments();
            let index = segments.partition_point(|s| s.first_lsn <= lsn);
            match index.checked_sub(1).and_then(|i| segments.get(i)) {
                Some(info) => info.clone(),
                None => {
                    let first = segments.first().map(|s| s.first_lsn).unwrap_or_default();
                    return Err(WalError::Truncated { lsn, first });
                }
            }
        };
        self.open(info)
    }

    fn open(&mut self, info: SegmentInfo) -> Result<()> {
        let file = File::open(&info.path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                WalError::Truncated {
                    lsn: self.position,
                    first: self.shared.first_lsn(),
                }
            } else {
                WalError::io("opening segment for reading", &info.path, e)
            }
        })?;
        advise_will_need(&file, &info, self.position, self.shared.durable_end());
        self.segment = Some(OpenSegment { info, file });
        self.buffer.clear();
        Ok(())
    }

    /// Called when the frame at `position` is not there: the next segment
    /// must start exactly at `position`. If a later segment exists, this
    /// segment was complete and durable before it was installed, so a
    /// frame missing here is a gap (zeroes or a stale frame: the data ends
    /// early) or damage, reported as recovery reports them (it leaves such
    /// segments to the reader when asked to, see `Wal::open_to_read_from`).
    fn advance_segment(&mut self, cause: FrameError) -> Result<()> {
        let (next, later) = {
            let segments = self.shared.segments();
            let next = segments
                .iter()
                .find(|s| s.first_lsn == self.position)
                .cloned();
            let later = segments
                .iter()
                .find(|s| s.first_lsn > self.position)
                .cloned();
            (next, later)
        };
        if let Some(next) = next {
            return self.open(next);
        }
        let first = self.shared.first_lsn();
        if self.position < first {
            return Err(WalError::Truncated {
                lsn: self.position,
                first,
            });
        }
        let (path, segment_first) = self
            .segment
            .as_ref()
            .map(|s| (s.info.path.clone(), s.info.first_lsn))
            .unwrap_or_default();
        Err(match (later, cause) {
            (Some(later), FrameError::Empty { .. } | FrameError::LsnMismatch { .. }) => {
                WalError::Gap {
                    path,
                    end: self.position,
                    next_path: later.path,
                    next_first: later.first_lsn,
                }
            }
            (Some(_), cause) => WalError::DamagedBeforeNextSegment {
                path,
                offset: SEGMENT_HEADER_BYTES as u64 + (self.position.0 - segment_first.0),
                lsn: self.position,
                cause,
            },
            (None, cause) => WalError::NotRecordBoundary {
                lsn: self.position,
                path,
                cause,
            },
        })
    }

    /// Memory to read the next chunk into: the current chunk if no
    /// payload read from it is alive, else a held one none of whose
    /// payloads is (the current one is held instead, while there is room),
    /// else new memory. A consumer that keeps records for a while (replay
    /// hands them between threads in batches) then does not make the
    /// reader allocate, and zero, a chunk for every chunk read.
    fn chunk_to_reuse(&mut self) -> BytesMut {
        let current = std::mem::take(&mut self.buffer);
        let current = match current.try_into_mut() {
            Ok(free) => return free,
            Err(current) => current,
        };
        if !current.is_empty() && self.held.len() < HELD_CHUNKS_MAX {
            self.held.push(current);
        }
        match self.held.iter().position(Bytes::is_unique) {
            Some(free) => self
                .held
                .swap_remove(free)
                .try_into_mut()
                .unwrap_or_default(),
            None => BytesMut::new(),
        }
    }

    /// The segment being read (`read_frame` is called only with one
    /// open).
    fn open_segment(&self) -> &OpenSegment {
        self.segment.as_ref().expect("segment opened")
    }

    fn read_frame(&mut self, durable: Lsn) -> Result<Step> {
        let first = self.open_segment().info.first_lsn;
        let offset = SEGMENT_HEADER_BYTES as u64 + (self.position.0 - first.0);
        let durable_offset = SEGMENT_HEADER_BYTES as u64 + (durable.0 - first.0);
        let limit = self.shared.max_record_bytes;
        let position = self.position;
        let header = self.load(offset, FRAME_HEADER_BYTES, durable_offset)?;
        let len = match format::decode_frame(&self.buffer[header], position, first, u32::MAX) {
            Err(FrameError::Truncated { needed, .. }) => needed as usize,
            Err(cause) => return Ok(Step::SegmentEnd(cause)),
            Ok(frame) => frame.payload.len() + FRAME_HEADER_BYTES,
        };
        if len - FRAME_HEADER_BYTES > limit as usize {
            return Err(WalError::StoredRecordTooLarge {
                path: self.open_segment().info.path.clone(),
                lsn: position,
                len: len - FRAME_HEADER_BYTES,
                max: limit,
            });
        }
        let frame = self.load(offset, len, durable_offset)?;
        match format::decode_frame(&self.buffer[frame], position, first, limit) {
            Ok(frame) => Ok(Step::Record(Record {
                lsn: frame.lsn,
                write_lsn: frame.write_lsn,
                inflight_lsn: frame.inflight_lsn,
                kind: frame.kind,
                payload: self.buffer.slice_ref(frame.payload),
            })),
            Err(cause) => Ok(Step::SegmentEnd(cause)),
        }
    }

    /// Where bytes `[offset, offset + len)` of the current segment are in
    /// `buffer` (an empty range if the file ends before): already there, or
    /// read from the file (at least `READ_AHEAD_BYTES`, never trusting
    /// bytes past `durable_offset` on a later call).
    fn load(&mut self, offset: u64, len: usize, durable_offset: u64) -> Result<Range<usize>> {
        let start = offset.checked_sub(self.buffer_offset);
        let cached = start.is_some_and(|s| s as usize + len <= self.buffer.len());
        if !cached {
            let want = len.max(READ_AHEAD_BYTES);
            let mut buffer = self.chunk_to_reuse();
            let segment = self.segment.as_ref().expect("segment opened");
            if buffer.len() < want {
                buffer.resize(want, 0);
            }
            let mut filled = 0;
            while filled < want {
                match segment
                    .file
                    .read_at(&mut buffer[filled..want], offset + filled as u64)
                {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(WalError::io("reading segment", &segment.info.path, e)),
                }
            }
            // Keep only what is known durable, but always what was asked for
            // (the caller only asks past the durable end to look for a frame
            // it then validates).
            let trusted = durable_offset.saturating_sub(offset) as usize;
            buffer.truncate(filled.min(trusted.max(len)));
            self.buffer = buffer.freeze();
            self.buffer_offset = offset;
        }
        let start = (offset - self.buffer_offset) as usize;
        if start + len > self.buffer.len() {
            return Ok(0..0);
        }
        Ok(start..start + len)
    }
}

/// Asks the kernel to start reading the segment's durable bytes from
/// `from` on, so a reader going through them (replay, with a cold page
/// cache) finds them read ahead instead of waiting for each chunk. Only a
/// hint: failure changes nothing.
fn advise_will_need(file: &File, info: &SegmentInfo, from: Lsn, durable: Lsn) {
    use std::os::fd::AsRawFd;
    let start = from.max(info.first_lsn);
    if durable <= start {
        return;
    }
    let offset = SEGMENT_HEADER_BYTES as u64 + (start.0 - info.first_lsn.0);
    let len = durable.0 - start.0;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain advisory call on an open descriptor; no memory is passed.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED) };
}
