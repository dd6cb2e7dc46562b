//! Recovery: turns the segment files found on open into a verified log.
//!
//! Owns: the decision table below. Maps every segment in full and checks
//! every frame's CRC (`format::scan_segment` does the classification).
//!
//! | where                     | what is found after the last good record | decision |
//! |---------------------------|-------------------------------------------|----------|
//! | any segment               | a valid frame of a *later* write          | corruption: refuse, name file/offset/LSN |
//! | a segment with a successor| damage (frames of the same write or not)  | corruption: the write had been synced |
//! | a segment with a successor| its end LSN != successor's first LSN      | gap: refuse |
//! | the last segment          | zeroes or stale frames of another LSN     | clean end |
//! | the last segment          | damage, then only frames of the same write| torn tail: zero it, log it, carry on |
//!
//! A caller that reads every record from some LSN on right after opening
//! (store replay) may leave the segments that start at or after it, other
//! than the last, unread here (`read_from`): its reader checks each of
//! their frames as this scan would, and reports damage or a gap there with
//! the same errors (`WalReader`). Their headers are still checked.
//!
//! Invariant: recovery never moves data; the only write it makes is zeroing
//! a torn tail of the last segment (and extending a short last file).

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, WalError};
use crate::format::{self, FrameError, Lsn, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::segment;

#[derive(Clone, Debug)]
pub(crate) struct SegmentInfo {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

/// What recovery found and did, for logs and tools.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segment_count: usize,
    /// Records in the segments read at open (all but `segments_left_to_reader`).
    pub record_count: u64,
    /// Segments whose records were left to the caller's reader (`read_from`).
    pub segments_left_to_reader: usize,
    pub first_lsn: Lsn,
    pub end_lsn: Lsn,
    /// Epoch in the header of the last segment.
    pub epoch: u64,
    pub torn_tail: Option<TornTailReport>,
}

#[derive(Clone, Debug)]
pub struct TornTailReport {
    pub path: PathBuf,
    pub offset: u64,
    pub lsn: Lsn,
    pub cause: FrameError,
}

pub(crate) struct Recovered {
    pub segments: Vec<SegmentInfo>,
    pub active: ActiveSegment,
    pub report: RecoveryReport,
}

pub(crate) struct ActiveSegment {
    pub file: File,
    pub first_lsn: Lsn,
    pub capacity_bytes: u64,
    /// File offset of the next frame.
    pub write_offset: u64,
}

impl ActiveSegment {
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.first_lsn.0 + self.write_offset - SEGMENT_HEADER_BYTES as u64)
    }
}

/// Lists the segment files of `dir` in LSN order.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentInfo>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io("listing", dir, e))? {
        let entry = entry.map_err(|e| WalError::io("listing", dir, e))?;
        if let Some(first_lsn) = segment::parse_segment_name(&entry.file_name().to_string_lossy()) {
            segments.push(SegmentInfo {
                first_lsn,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Verifies every segment (but those left to a reader from `read_from`);
/// returns `None` for a directory without segments.
pub(crate) fn recover(dir: &Path, read_from: Option<Lsn>) -> Result<Option<Recovered>> {
    let segments = list_segments(dir)?;
    let Some(last_index) = segments.len().checked_sub(1) else {
        return Ok(None);
    };
    let mut report = RecoveryReport {
        segment_count: segments.len(),
        first_lsn: segments[0].first_lsn,
        ..RecoveryReport::default()
    };
    let mut active = None;
    for (index, info) in segments.iter().enumerate() {
        let left_to_reader =
            index != last_index && read_from.is_some_and(|lsn| info.first_lsn >= lsn);
        if left_to_reader {
            check_header(info)?;
            report.segments_left_to_reader += 1;
            continue;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(index == last_index)
            .open(&info.path)
            .map_err(|e| WalError::io("opening segment", &info.path, e))?;
        let map = map_segment(&file, &info.path)?;
        let header = decode_header(info, &map)?;
        let capacity_bytes = header.segment_bytes.max(SEGMENT_HEADER_BYTES as u64);
        let file_bytes = map.len() as u64;
        let bytes = &map[..map.len().min(capacity_bytes as usize)];
        let read_limit = u32::try_from(capacity_bytes).unwrap_or(u32::MAX);
        let scan = format::scan_segment(bytes, read_limit).map_err(|source| WalError::Corrupt {
            path: info.path.clone(),
            source,
        })?;
        drop(map);
        report.record_count += scan.record_count;
        report.end_lsn = scan.end_lsn;
        report.epoch = header.epoch;
        let end_offset = SEGMENT_HEADER_BYTES as u64 + (scan.end_lsn.0 - header.first_lsn.0);
        if let Some(next) = segments.get(index + 1) {
            if let Some(torn) = scan.tail {
                return Err(WalError::DamagedBeforeNextSegment {
                    path: info.path.clone(),
                    offset: end_offset,
                    lsn: scan.end_lsn,
                    cause: torn.cause,
                });
            }
            if next.first_lsn != scan.end_lsn {
                return Err(WalError::Gap {
                    path: info.path.clone(),
                    end: scan.end_lsn,
                    next_path: next.path.clone(),
                    next_first: next.first_lsn,
                });
            }
            continue;
        }
        if let Some(torn) = scan.tail {
            let zero_bytes = torn.dirty_until_offset.saturating_sub(end_offset) as usize;
            file.write_all_at(&vec![0u8; zero_bytes], end_offset)
                .and_then(|()| file.sync_data())
                .map_err(|e| WalError::io("zeroing torn tail of", &info.path, e))?;
            tracing::warn!(
                "WAL: discarded a torn tail (an unacknowledged write) in {} at offset {end_offset} (lsn {}): {}",
                info.path.display(),
                scan.end_lsn,
                torn.cause
            );
            report.torn_tail = Some(TornTailReport {
                path: info.path.clone(),
                offset: end_offset,
                lsn: scan.end_lsn,
                cause: torn.cause,
            });
        }
        if file_bytes < capacity_bytes {
            file.set_len(capacity_bytes)
                .and_then(|()| extend_with_zeroes(&file, file_bytes, capacity_bytes))
                .map_err(|e| WalError::io("extending short segment", &info.path, e))?;
        }
        active = Some(ActiveSegment {
            file,
            first_lsn: header.first_lsn,
            capacity_bytes,
            write_offset: end_offset,
        });
    }
    let active = active.expect("the last segment sets the active one");
    Ok(Some(Recovered {
        segments,
        active,
        report,
    }))
}

/// A segment's bytes, mapped to be scanned: reading a 64 MiB segment into
/// a new buffer cost about 45 ms of page faults and copying at every open.
fn map_segment(file: &File, path: &Path) -> Result<memmap2::Mmap> {
    // SAFETY: the file is a segment of a log this process holds the lock
    // of (`lock_dir`), so no tc process changes it while it is mapped;
    // recovery's own write (zeroing a torn tail) comes after the map is
    // dropped. As with the object table's map, a file cut short by
    // someone else meanwhile would end the process (SIGBUS).
    let map = unsafe { memmap2::MmapOptions::new().populate().map(file) };
    map.map_err(|e| WalError::io("mapping segment", path, e))
}

/// Decodes a segment's header and checks it against the file's name.
fn decode_header(info: &SegmentInfo, bytes: &[u8]) -> Result<SegmentHeader> {
    let header = SegmentHeader::decode(bytes).map_err(|source| WalError::BadHeader {
        path: info.path.clone(),
        source,
    })?;
    if header.first_lsn != info.first_lsn {
        return Err(WalError::NameMismatch {
            path: info.path.clone(),
            named: info.first_lsn,
            stored: header.first_lsn,
        });
    }
    Ok(header)
}

/// Reads and checks only a segment's header.
fn check_header(info: &SegmentInfo) -> Result<SegmentHeader> {
    let file =
        File::open(&info.path).map_err(|e| WalError::io("opening segment", &info.path, e))?;
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    file.take(SEGMENT_HEADER_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| WalError::io("reading segment", &info.path, e))?;
    decode_header(info, &bytes)
}

/// Writes zeroes over `[from, to)` so later commits overwrite written blocks.
fn extend_with_zeroes(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}
