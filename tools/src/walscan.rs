//! Reading WAL segment files directly, read-only.
//!
//! Owns: listing `DATA_DIR/wal` (`{first_lsn:016x}.wal` segments, spares,
//! anything else), reading one segment file whole and classifying it with
//! `tc_wal::format::scan_segment`, and decoding the valid frames of the
//! unbroken run from the header on.
//! Not: deciding what is a problem (`fsck.rs`), what a record means
//! (`tc_heap_store::records`).
//! Why not `tc_wal::Wal::open`: recovery writes (it zeroes a torn tail and
//! re-extends a short last segment, and creates `LOCK` and spares). This
//! module opens files for reading only.
//! Invariants: never writes; never panics on bad bytes; holds one segment
//! file's bytes at a time plus the payloads of the records it returns.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tc_wal::format::{self, FrameError, Lsn, SEGMENT_HEADER_BYTES, SegmentHeader};

/// File name suffixes in a WAL directory (`docs/formats/wal.md`).
const SEGMENT_SUFFIX: &str = ".wal";
const SPARE_SUFFIX: &str = ".wal-spare";
const PARTIAL_SUFFIX: &str = ".partial";
/// The lock file the one process that has the WAL open holds with `flock`.
pub const LOCK_FILE: &str = "LOCK";

/// A segment file found in the WAL directory, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFile {
    pub path: PathBuf,
    /// The first LSN the file name gives.
    pub named_lsn: Lsn,
}

/// What the WAL directory holds.
#[derive(Debug, Clone, Default)]
pub struct WalListing {
    /// Segment files in LSN order (by name).
    pub segments: Vec<WalFile>,
    /// `spare-*.wal-spare` files (zero-filled or recycled; never read).
    pub spares: Vec<PathBuf>,
    /// `spare-*.partial` files: a spare being zero-filled when a crash hit.
    pub partials: Vec<PathBuf>,
    /// Files ending in `.wal` whose name is not 16 hex digits.
    pub misnamed: Vec<PathBuf>,
    /// Whether the directory holds a `LOCK` file.
    pub has_lock: bool,
}

/// The first LSN a segment file name gives, if it is one:
/// exactly 16 hex digits, then `.wal` (as `tc_wal` names them).
pub fn parse_segment_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

/// Lists `dir` (the WAL directory).
pub fn list(dir: &Path) -> io::Result<WalListing> {
    let mut listing = WalListing::default();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(named_lsn) = parse_segment_name(&name) {
            listing.segments.push(WalFile {
                path: entry.path(),
                named_lsn,
            });
        } else if name.ends_with(SPARE_SUFFIX) {
            listing.spares.push(entry.path());
        } else if name.starts_with("spare-") && name.ends_with(PARTIAL_SUFFIX) {
            listing.partials.push(entry.path());
        } else if name.ends_with(SEGMENT_SUFFIX) {
            listing.misnamed.push(entry.path());
        } else if name == LOCK_FILE {
            listing.has_lock = true;
        }
    }
    listing.segments.sort_by_key(|s| s.named_lsn);
    listing.spares.sort();
    listing.partials.sort();
    listing.misnamed.sort();
    Ok(listing)
}

/// One valid record frame, copied out of its segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub lsn: Lsn,
    /// LSN just past the frame: the next record's LSN.
    pub end: Lsn,
    pub kind: u8,
    pub payload: Vec<u8>,
    /// File offset of the frame in its segment file.
    pub offset: u64,
}

/// What is wrong with a segment file, as found (not judged: whether a
/// torn tail is a problem depends on whether the segment is the last).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentDamage {
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    #[error("bad segment header: {0}")]
    Header(tc_wal::HeaderError),
    #[error("named for lsn {named} but its header says {stored}")]
    NameMismatch { named: Lsn, stored: Lsn },
    #[error("corrupt record: {cause}; a valid record follows at offset {later_offset}")]
    Corrupt {
        offset: u64,
        lsn: Lsn,
        cause: FrameError,
        later_offset: u64,
    },
    #[error("torn tail (a write that was in flight at a crash): {cause}")]
    Torn {
        offset: u64,
        lsn: Lsn,
        cause: FrameError,
    },
}

impl SegmentDamage {
    /// File offset of the damage, where it has one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            SegmentDamage::Unreadable(_) => None,
            SegmentDamage::Header(_) | SegmentDamage::NameMismatch { .. } => Some(0),
            SegmentDamage::Corrupt { offset, .. } | SegmentDamage::Torn { offset, .. } => {
                Some(*offset)
            }
        }
    }

    pub fn lsn(&self) -> Option<Lsn> {
        match self {
            SegmentDamage::Corrupt { lsn, .. } | SegmentDamage::Torn { lsn, .. } => Some(*lsn),
            _ => None,
        }
    }
}

/// One segment file, read and classified.
#[derive(Debug, Clone)]
pub struct SegmentRead {
    pub file: WalFile,
    pub file_bytes: u64,
    pub header: Option<SegmentHeader>,
    /// Every valid record found, in LSN order: the run from the header on
    /// and, after corruption, the runs that resume at the next valid frame
    /// (the LSN field of a frame is a sync marker). Records in a torn tail
    /// are not resumed: they belong to the write a crash interrupted.
    pub records: Vec<RawRecord>,
    /// End of the last valid record (`None` when the header is unusable).
    pub end_lsn: Option<Lsn>,
    /// Everything found wrong, in file order (a name mismatch and damaged
    /// records can all be there).
    pub damage: Vec<SegmentDamage>,
}

impl SegmentRead {
    /// Whether some records may be missing: corruption, a torn tail, or a
    /// file that could not be used at all.
    pub fn is_broken(&self) -> bool {
        self.damage.iter().any(|d| {
            matches!(
                d,
                SegmentDamage::Unreadable(_)
                    | SegmentDamage::Header(_)
                    | SegmentDamage::Corrupt { .. }
                    | SegmentDamage::Torn { .. }
            )
        })
    }

    /// Whether the segment ends in a torn tail (damage after its last
    /// valid record).
    pub fn has_torn_end(&self) -> bool {
        matches!(self.damage.last(), Some(SegmentDamage::Torn { .. }))
    }
}

/// The bytes of one segment and how to read frames in them.
struct Frames<'a> {
    bytes: &'a [u8],
    first: Lsn,
    read_limit: u32,
}

impl Frames<'_> {
    fn lsn_at(&self, offset: usize) -> Lsn {
        Lsn(self.first.0 + (offset - SEGMENT_HEADER_BYTES) as u64)
    }

    fn decode_at(&self, offset: usize) -> Result<format::Frame<'_>, FrameError> {
        let rest = self.bytes.get(offset..).unwrap_or_default();
        format::decode_frame(rest, self.lsn_at(offset), self.first, self.read_limit)
    }

    /// Decodes frames from `offset` on into `out` until one fails; returns
    /// where and why it stopped (`None`: the end of the bytes, or zeroes).
    fn run(&self, mut offset: usize, out: &mut Vec<RawRecord>) -> (usize, Option<FrameError>) {
        loop {
            let rest = self.bytes.get(offset..).unwrap_or_default();
            if rest.is_empty() {
                return (offset, None);
            }
            match self.decode_at(offset) {
                Ok(frame) => {
                    let lsn = frame.lsn;
                    let end = frame.end_lsn();
                    out.push(RawRecord {
                        lsn,
                        end,
                        kind: frame.kind,
                        payload: frame.payload.to_vec(),
                        offset: offset as u64,
                    });
                    offset += (end.0 - lsn.0) as usize;
                }
                Err(FrameError::Truncated { .. }) if rest.iter().all(|&b| b == 0) => {
                    return (offset, None);
                }
                Err(cause) => return (offset, Some(cause)),
            }
        }
    }

    /// The offset of the first valid frame at or after `from`, if any.
    fn probe(&self, from: usize) -> Option<usize> {
        let mut at = from.max(SEGMENT_HEADER_BYTES);
        while at + format::FRAME_HEADER_BYTES <= self.bytes.len() {
            let field = self
                .bytes
                .get(at + 8..at + 16)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes);
            if field == Some(self.lsn_at(at).0) && self.decode_at(at).is_ok() {
                return Some(at);
            }
            at += 1;
        }
        None
    }
}

/// Reads and classifies one segment file. Never fails: what cannot be
/// read is reported in `damage`.
pub fn read_segment(file: &WalFile) -> SegmentRead {
    let mut out = SegmentRead {
        file: file.clone(),
        file_bytes: 0,
        header: None,
        records: Vec::new(),
        end_lsn: None,
        damage: Vec::new(),
    };
    let mut bytes = match fs::read(&file.path) {
        Ok(bytes) => bytes,
        Err(e) => {
            out.damage.push(SegmentDamage::Unreadable(e.to_string()));
            return out;
        }
    };
    out.file_bytes = bytes.len() as u64;
    let header = match SegmentHeader::decode(&bytes) {
        Ok(header) => header,
        Err(e) => {
            out.damage.push(SegmentDamage::Header(e));
            return out;
        }
    };
    out.header = Some(header);
    if header.first_lsn != file.named_lsn {
        out.damage.push(SegmentDamage::NameMismatch {
            named: file.named_lsn,
            stored: header.first_lsn,
        });
    }
    // As recovery does: bytes past the segment size are not part of it, and
    // a frame may be as large as what fits in the segment.
    let capacity_bytes = header.segment_bytes.max(SEGMENT_HEADER_BYTES as u64);
    bytes.truncate(usize::try_from(capacity_bytes).unwrap_or(usize::MAX));
    let frames = Frames {
        bytes: &bytes,
        first: header.first_lsn,
        read_limit: u32::try_from(capacity_bytes).unwrap_or(u32::MAX),
    };
    out.end_lsn = Some(header.first_lsn);
    match format::scan_segment(&bytes, frames.read_limit) {
        Ok(scan) => {
            let (stopped, _) = frames.run(SEGMENT_HEADER_BYTES, &mut out.records);
            if let Some(torn) = scan.tail {
                out.damage.push(SegmentDamage::Torn {
                    offset: stopped as u64,
                    lsn: frames.lsn_at(stopped),
                    cause: torn.cause,
                });
            }
        }
        Err(tc_wal::ScanError::Header(e)) => {
            out.damage.push(SegmentDamage::Header(e));
            out.header = None;
            out.end_lsn = None;
            return out;
        }
        Err(tc_wal::ScanError::Corrupt { .. }) => {
            // Every damaged place, not just the first: decode up to each
            // damage, then resume at the next valid frame.
            let mut at = SEGMENT_HEADER_BYTES;
            loop {
                let (stopped, cause) = frames.run(at, &mut out.records);
                let Some(cause) = cause else { break };
                let lsn = frames.lsn_at(stopped);
                match frames.probe(stopped + 1) {
                    Some(next) => {
                        out.damage.push(SegmentDamage::Corrupt {
                            offset: stopped as u64,
                            lsn,
                            cause,
                            later_offset: next as u64,
                        });
                        at = next;
                    }
                    None => {
                        if !matches!(
                            cause,
                            FrameError::Empty { .. } | FrameError::LsnMismatch { .. }
                        ) {
                            out.damage.push(SegmentDamage::Torn {
                                offset: stopped as u64,
                                lsn,
                                cause,
                            });
                        }
                        break;
                    }
                }
            }
        }
        Err(other) => {
            out.damage
                .push(SegmentDamage::Unreadable(other.to_string()));
            return out;
        }
    }
    if let Some(last) = out.records.last() {
        out.end_lsn = Some(last.end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_sixteen_hex_digits() {
        assert_eq!(parse_segment_name("0000000000000fae.wal"), Some(Lsn(0xfae)));
        for bad in [
            "fae.wal",
            "0000000000000fae.wal-spare",
            "000000000000fae.wal",
            "0000000000000fxe.wal",
            "0000000000000fae",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_damage_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000000000.wal");
        for bytes in [&b""[..], &b"TCWL"[..], &[0xffu8; 200][..]] {
            fs::write(&path, bytes).unwrap();
            let read = read_segment(&WalFile {
                path: path.clone(),
                named_lsn: Lsn(0),
            });
            assert!(read.records.is_empty());
            assert!(
                matches!(read.damage.as_slice(), [SegmentDamage::Header(_)]),
                "{read:?}"
            );
        }
        let read = read_segment(&WalFile {
            path: dir.path().join("missing.wal"),
            named_lsn: Lsn(0),
        });
        assert!(matches!(
            read.damage.as_slice(),
            [SegmentDamage::Unreadable(_)]
        ));
    }
}
