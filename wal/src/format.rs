//! On-disk format of WAL segments, version 1 (`docs/formats/wal.md`).
//!
//! Owns: the byte layout of the segment header and of record frames, their
//! encoders, their decoders, and `scan_segment`, which classifies the bytes of
//! one segment file into "valid records", "torn tail" or "corruption".
//! Not: any I/O (see `segment.rs`), nor deciding what to do about a torn tail
//! (see `recovery.rs`).
//!
//! Invariants:
//! - A frame is valid iff its header fits, `kind != 0`, flags and reserved
//!   are zero, its `lsn` field equals the LSN of the position it was read
//!   from, `len <= max`, the payload fits,
//!   `segment first LSN <= inflight_lsn <= write_lsn <= lsn`, and the CRC
//!   matches. The LSN check makes stale frames in a recycled segment invalid.
//! - Decoders never panic, never index out of bounds and never allocate
//!   from a length field: they only borrow from the input.

use std::fmt;

/// A log sequence number: the byte position of a record in the log stream
/// (the concatenation of all records of all segments, headers excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Segment header v1, little-endian, 64 bytes:
/// `|0 magic u32|4 version u16|6 flags u16=0|8 first_lsn u64|16 epoch u64|`
/// `|24 segment_bytes u64|32 reserved [u8; 28]=0|60 crc32 u32 (of 0..60)|`
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"TCWL");
pub const SEGMENT_VERSION: u16 = 1;
const SEG_MAGIC_OFFSET: usize = 0;
const SEG_VERSION_OFFSET: usize = SEG_MAGIC_OFFSET + size_of::<u32>();
const SEG_FLAGS_OFFSET: usize = SEG_VERSION_OFFSET + size_of::<u16>();
const SEG_FIRST_LSN_OFFSET: usize = SEG_FLAGS_OFFSET + size_of::<u16>();
const SEG_EPOCH_OFFSET: usize = SEG_FIRST_LSN_OFFSET + size_of::<u64>();
const SEG_BYTES_OFFSET: usize = SEG_EPOCH_OFFSET + size_of::<u64>();
const SEG_RESERVED_OFFSET: usize = SEG_BYTES_OFFSET + size_of::<u64>();
const SEG_CRC_OFFSET: usize = 60;
const _: () = assert!(SEG_RESERVED_OFFSET == 32);
const _: () = assert!(SEGMENT_HEADER_BYTES == SEG_CRC_OFFSET + size_of::<u32>());

/// Frame v1, little-endian, 28-byte header then `len` payload bytes:
/// `|0 len u32|4 crc32 u32|8 lsn u64|16 write_back u32|20 inflight_back u32|`
/// `|24 kind u8|25 flags u8=0|26 reserved u16=0|`
/// The CRC covers bytes 0..4 and 8..28 of the header, then the payload.
/// `write_back` = `lsn` - LSN of the first frame of the same write (one
/// write + fdatasync). `inflight_back` = `lsn` - LSN of the first frame of
/// the oldest write that was not yet durable when this frame's write was
/// submitted (its own write if none). Recovery uses it to tell a torn
/// in-flight write from corruption of a write that had been synced.
pub const FRAME_HEADER_BYTES: usize = 28;
const FRAME_LEN_OFFSET: usize = 0;
const FRAME_CRC_OFFSET: usize = FRAME_LEN_OFFSET + size_of::<u32>();
const FRAME_LSN_OFFSET: usize = FRAME_CRC_OFFSET + size_of::<u32>();
const FRAME_WRITE_BACK_OFFSET: usize = FRAME_LSN_OFFSET + size_of::<u64>();
const FRAME_INFLIGHT_BACK_OFFSET: usize = FRAME_WRITE_BACK_OFFSET + size_of::<u32>();
const FRAME_KIND_OFFSET: usize = FRAME_INFLIGHT_BACK_OFFSET + size_of::<u32>();
const FRAME_FLAGS_OFFSET: usize = FRAME_KIND_OFFSET + size_of::<u8>();
const FRAME_RESERVED_OFFSET: usize = FRAME_FLAGS_OFFSET + size_of::<u8>();
const _: () = assert!(FRAME_HEADER_BYTES == FRAME_RESERVED_OFFSET + size_of::<u16>());

/// The bytes a record with `payload_bytes` of payload occupies in the log.
pub fn frame_bytes(payload_bytes: usize) -> u64 {
    (FRAME_HEADER_BYTES + payload_bytes) as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_lsn: Lsn,
    pub epoch: u64,
    pub segment_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("segment header truncated: need {needed} B, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("bad segment magic {found:#010x} (expected {SEGMENT_MAGIC:#010x})")]
    BadMagic { found: u32 },
    #[error("unsupported segment format version {found} (this build reads {SEGMENT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("segment header checksum: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("segment header has non-zero reserved bytes")]
    Reserved,
    #[error(
        "segment header claims a segment size of {bytes} B (allowed {SEGMENT_HEADER_BYTES}..={MAX_SEGMENT_BYTES})"
    )]
    BadSegmentSize { bytes: u64 },
    #[error(
        "segment header first lsn {first_lsn} leaves no room for a segment of {bytes} B below 2^64"
    )]
    BadFirstLsn { first_lsn: Lsn, bytes: u64 },
}

/// Segments are at most 4 GiB so that `write_back` and `inflight_back` fit
/// their u32 fields.
pub const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        put(&mut out, SEG_MAGIC_OFFSET, &SEGMENT_MAGIC.to_le_bytes());
        put(&mut out, SEG_VERSION_OFFSET, &SEGMENT_VERSION.to_le_bytes());
        put(
            &mut out,
            SEG_FIRST_LSN_OFFSET,
            &self.first_lsn.0.to_le_bytes(),
        );
        put(&mut out, SEG_EPOCH_OFFSET, &self.epoch.to_le_bytes());
        put(
            &mut out,
            SEG_BYTES_OFFSET,
            &self.segment_bytes.to_le_bytes(),
        );
        let crc = crc32fast::hash(&out[..SEG_CRC_OFFSET]);
        put(&mut out, SEG_CRC_OFFSET, &crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(HeaderError::Truncated {
                needed: SEGMENT_HEADER_BYTES,
                available: bytes.len(),
            });
        };
        let magic = read_u32(header, SEG_MAGIC_OFFSET);
        if magic != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let stored = read_u32(header, SEG_CRC_OFFSET);
        let computed = crc32fast::hash(header.get(..SEG_CRC_OFFSET).unwrap_or_default());
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        let version = read_u16(header, SEG_VERSION_OFFSET);
        if version != SEGMENT_VERSION {
            return Err(HeaderError::UnsupportedVersion { found: version });
        }
        let reserved = header
            .get(SEG_RESERVED_OFFSET..SEG_CRC_OFFSET)
            .unwrap_or_default();
        if read_u16(header, SEG_FLAGS_OFFSET) != 0 || reserved.iter().any(|&b| b != 0) {
            return Err(HeaderError::Reserved);
        }
        let segment_bytes = read_u64(header, SEG_BYTES_OFFSET);
        if !(SEGMENT_HEADER_BYTES as u64..=MAX_SEGMENT_BYTES).contains(&segment_bytes) {
            return Err(HeaderError::BadSegmentSize {
                bytes: segment_bytes,
            });
        }
        let first_lsn = Lsn(read_u64(header, SEG_FIRST_LSN_OFFSET));
        if first_lsn.0.checked_add(segment_bytes).is_none() {
            return Err(HeaderError::BadFirstLsn {
                first_lsn,
                bytes: segment_bytes,
            });
        }
        Ok(SegmentHeader {
            first_lsn,
            epoch: read_u64(header, SEG_EPOCH_OFFSET),
            segment_bytes,
        })
    }
}

/// Why the bytes at an LSN are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("torn frame at lsn {lsn}: need {needed} B, have {available}")]
    Truncated {
        lsn: Lsn,
        needed: u64,
        available: u64,
    },
    #[error("no frame at lsn {lsn} (zero kind: end of written data)")]
    Empty { lsn: Lsn },
    #[error("frame at lsn {lsn} carries lsn {found}")]
    LsnMismatch { lsn: Lsn, found: Lsn },
    #[error("frame at lsn {lsn} claims {len} B payload, over the limit of {max} B")]
    TooLarge { lsn: Lsn, len: u32, max: u32 },
    #[error("frame at lsn {lsn}: non-zero flags or reserved bytes")]
    Reserved { lsn: Lsn },
    #[error(
        "frame at lsn {lsn}: write start {write_lsn} or in-flight start {inflight_lsn} out of order (segment starts at {segment_first_lsn})"
    )]
    BadWriteStart {
        lsn: Lsn,
        write_lsn: Lsn,
        inflight_lsn: Lsn,
        segment_first_lsn: Lsn,
    },
    #[error("crc at lsn {lsn}: stored {stored:#010x} computed {computed:#010x}")]
    Checksum {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
}

/// A decoded frame borrowing its payload from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub lsn: Lsn,
    /// LSN of the first frame written by the same write + fdatasync.
    pub write_lsn: Lsn,
    /// LSN of the first frame of the oldest write not yet durable when this
    /// frame's write was submitted (`<= write_lsn`).
    pub inflight_lsn: Lsn,
    pub kind: u8,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.lsn.0.saturating_add(frame_bytes(self.payload.len())))
    }
}

/// Appends `frame` (header and payload) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, frame: &Frame<'_>) {
    let Frame {
        lsn,
        write_lsn,
        inflight_lsn,
        kind,
        payload,
    } = *frame;
    assert!(kind != 0, "kind 0 is reserved for 'no frame'");
    assert!(inflight_lsn <= write_lsn);
    assert!(write_lsn <= lsn);
    let len = u32::try_from(payload.len()).expect("payload length fits u32");
    let write_back = u32::try_from(lsn.0 - write_lsn.0).expect("a segment is under 4 GiB");
    let inflight_back = u32::try_from(lsn.0 - inflight_lsn.0).expect("a segment is under 4 GiB");
    let mut header = [0u8; FRAME_HEADER_BYTES];
    put(&mut header, FRAME_LEN_OFFSET, &len.to_le_bytes());
    put(&mut header, FRAME_LSN_OFFSET, &lsn.0.to_le_bytes());
    put(
        &mut header,
        FRAME_WRITE_BACK_OFFSET,
        &write_back.to_le_bytes(),
    );
    put(
        &mut header,
        FRAME_INFLIGHT_BACK_OFFSET,
        &inflight_back.to_le_bytes(),
    );
    header[FRAME_KIND_OFFSET] = kind;
    let crc = frame_crc(&header, payload);
    put(&mut header, FRAME_CRC_OFFSET, &crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

fn frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header.get(..FRAME_CRC_OFFSET).unwrap_or_default());
    hasher.update(
        header
            .get(FRAME_LSN_OFFSET..FRAME_HEADER_BYTES)
            .unwrap_or_default(),
    );
    hasher.update(payload);
    hasher.finalize()
}

/// Decodes the frame at the start of `bytes`, which must sit at `lsn` in a
/// segment whose first LSN is `segment_first_lsn`.
pub fn decode_frame(
    bytes: &[u8],
    lsn: Lsn,
    segment_first_lsn: Lsn,
    max_payload_bytes: u32,
) -> Result<Frame<'_>, FrameError> {
    let Some(header) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Err(FrameError::Truncated {
            lsn,
            needed: FRAME_HEADER_BYTES as u64,
            available: bytes.len() as u64,
        });
    };
    let kind = header.get(FRAME_KIND_OFFSET).copied().unwrap_or(0);
    if kind == 0 {
        return Err(FrameError::Empty { lsn });
    }
    let found = Lsn(read_u64(header, FRAME_LSN_OFFSET));
    if found != lsn {
        return Err(FrameError::LsnMismatch { lsn, found });
    }
    let flags = header.get(FRAME_FLAGS_OFFSET).copied().unwrap_or(0);
    if flags != 0 || read_u16(header, FRAME_RESERVED_OFFSET) != 0 {
        return Err(FrameError::Reserved { lsn });
    }
    let len = read_u32(header, FRAME_LEN_OFFSET);
    if len > max_payload_bytes {
        return Err(FrameError::TooLarge {
            lsn,
            len,
            max: max_payload_bytes,
        });
    }
    let write_back = u64::from(read_u32(header, FRAME_WRITE_BACK_OFFSET));
    let inflight_back = u64::from(read_u32(header, FRAME_INFLIGHT_BACK_OFFSET));
    let write_lsn = Lsn(lsn.0.saturating_sub(write_back));
    let inflight_lsn = Lsn(lsn.0.saturating_sub(inflight_back));
    if inflight_back > lsn.0 || inflight_back < write_back || inflight_lsn < segment_first_lsn {
        return Err(FrameError::BadWriteStart {
            lsn,
            write_lsn,
            inflight_lsn,
            segment_first_lsn,
        });
    }
    let total = FRAME_HEADER_BYTES + len as usize;
    let Some(payload) = bytes.get(FRAME_HEADER_BYTES..total) else {
        return Err(FrameError::Truncated {
            lsn,
            needed: total as u64,
            available: bytes.len() as u64,
        });
    };
    let stored = read_u32(header, FRAME_CRC_OFFSET);
    let computed = frame_crc(header, payload);
    if stored != computed {
        return Err(FrameError::Checksum {
            lsn,
            stored,
            computed,
        });
    }
    Ok(Frame {
        lsn,
        write_lsn,
        inflight_lsn,
        kind,
        payload,
    })
}

/// What `scan_segment` found in the bytes of one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub header: SegmentHeader,
    /// End of the last valid record of the unbroken run from the header on.
    pub end_lsn: Lsn,
    pub record_count: u64,
    /// What stops the run at `end_lsn`. `None`: only zeroes or stale frames
    /// follow, or the segment is full.
    pub tail: Option<TornTail>,
}

/// Damage at `end_lsn` followed only by frames whose writes were submitted
/// while the damaged write was still in flight: the signature of a crash
/// with writes in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub cause: FrameError,
    /// File offset up to which frames of the torn write were found (at
    /// least the damaged frame's header); recovery zeroes up to here.
    pub dirty_until_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A bad frame followed by a valid frame of a write submitted after the
    /// bad one was durable: this is corruption, not a torn tail.
    #[error(
        "corrupt record at offset {offset} (lsn {lsn}): {cause}; a valid record written after it was durable follows at offset {later_offset}"
    )]
    Corrupt {
        offset: u64,
        lsn: Lsn,
        cause: FrameError,
        later_offset: u64,
    },
}

/// Scans a whole segment file's bytes. Bytes past the end of `bytes` are
/// treated as missing (a short file).
pub fn scan_segment(bytes: &[u8], max_payload_bytes: u32) -> Result<SegmentScan, ScanError> {
    let header = SegmentHeader::decode(bytes)?;
    // Bytes past the segment size are not part of the segment. With the
    // header's guarantee (first + segment_bytes < 2^64) no LSN below overflows.
    let bytes = bytes.get(..header.segment_bytes as usize).unwrap_or(bytes);
    let first = header.first_lsn;
    let lsn_at = |offset: usize| Lsn(first.0 + (offset - SEGMENT_HEADER_BYTES) as u64);
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut record_count = 0u64;
    let damage = loop {
        let rest = bytes.get(offset..).unwrap_or_default();
        if rest.is_empty() {
            break None;
        }
        match decode_frame(rest, lsn_at(offset), first, max_payload_bytes) {
            Ok(frame) => {
                offset += FRAME_HEADER_BYTES + frame.payload.len();
                record_count += 1;
            }
            Err(FrameError::Truncated { .. }) if is_zero(rest) => break None,
            // Fewer bytes than a frame header at the end of the segment: no
            // frame can start there (frames never span segments), so they
            // are slack left at rollover, old bytes if the segment was
            // recycled, never a torn write.
            Err(FrameError::Truncated { .. })
                if rest.len() < FRAME_HEADER_BYTES
                    && bytes.len() as u64 == header.segment_bytes =>
            {
                break None;
            }
            Err(cause) => break Some(cause),
        }
    };
    let end_lsn = lsn_at(offset);
    let Some(cause) = damage else {
        return Ok(SegmentScan {
            header,
            end_lsn,
            record_count,
            tail: None,
        });
    };
    // Look for valid frames after the damage: the LSN field acts as a sync
    // marker, so only offsets whose LSN field matches are decoded fully.
    let mut dirty_until = None;
    let mut probe = offset + 1;
    while probe + FRAME_HEADER_BYTES <= bytes.len() {
        let lsn = lsn_at(probe);
        let field = bytes
            .get(probe + FRAME_LSN_OFFSET..probe + FRAME_LSN_OFFSET + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        if field == Some(0) {
            // No LSN after the damage is 0 (it is past the header), so no
            // frame starts where the LSN field would lie in zeroes: jump to
            // the first offset whose field takes in a byte that is not zero.
            // (The tail of a segment after its last record is zeroes, tens
            // of MiB that a byte-by-byte probe took 60-80 ms to pass.)
            let field_start = probe + FRAME_LSN_OFFSET;
            match first_nonzero(&bytes[field_start..]) {
                Some(n) => {
                    probe = (field_start + n)
                        .saturating_sub(FRAME_LSN_OFFSET + 7)
                        .max(probe + 1)
                }
                None => break,
            }
            continue;
        }
        if field != Some(lsn.0) {
            probe += 1;
            continue;
        }
        let rest = bytes.get(probe..).unwrap_or_default();
        match decode_frame(rest, lsn, first, max_payload_bytes) {
            Ok(frame) if frame.inflight_lsn > end_lsn => {
                return Err(ScanError::Corrupt {
                    offset: offset as u64,
                    lsn: end_lsn,
                    cause,
                    later_offset: probe as u64,
                });
            }
            Ok(frame) => {
                probe += FRAME_HEADER_BYTES + frame.payload.len();
                dirty_until = Some(probe);
            }
            Err(_) => probe += 1,
        }
    }
    let tail = match (&cause, dirty_until) {
        // Zeroes, or a stale frame of a recycled segment, with nothing valid
        // after: the normal end of the written data.
        (FrameError::Empty { .. } | FrameError::LsnMismatch { .. }, None) => None,
        _ => Some(TornTail {
            cause,
            dirty_until_offset: dirty_until
                .unwrap_or(offset + FRAME_HEADER_BYTES)
                .min(bytes.len().max(offset)) as u64,
        }),
    };
    Ok(SegmentScan {
        header,
        end_lsn,
        record_count,
        tail,
    })
}

fn is_zero(bytes: &[u8]) -> bool {
    first_nonzero(bytes).is_none()
}

/// Where the first byte that is not zero is, 64 bytes at a time (a loop
/// the compiler vectorizes, unlike a byte-by-byte search).
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let chunks = bytes.chunks_exact(64);
    let rest_start = bytes.len() - chunks.remainder().len();
    let mut at = 0;
    for chunk in chunks {
        if chunk.iter().fold(0, |any, &b| any | b) != 0 {
            break;
        }
        at += 64;
    }
    debug_assert!(at <= rest_start);
    bytes[at..].iter().position(|&b| b != 0).map(|n| at + n)
}

fn put(out: &mut [u8], offset: usize, bytes: &[u8]) {
    out[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut raw = [0u8; 2];
    if let Some(src) = bytes.get(offset..offset + 2) {
        raw.copy_from_slice(src);
    }
    u16::from_le_bytes(raw)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(src) = bytes.get(offset..offset + 4) {
        raw.copy_from_slice(src);
    }
    u32::from_le_bytes(raw)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(src) = bytes.get(offset..offset + 8) {
        raw.copy_from_slice(src);
    }
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(first: u64, records: &[(u8, &[u8])]) -> Vec<u8> {
        let header = SegmentHeader {
            first_lsn: Lsn(first),
            epoch: 3,
            segment_bytes: 4096,
        };
        let mut out = header.encode().to_vec();
        let mut lsn = Lsn(first);
        for (kind, payload) in records {
            let frame = Frame {
                lsn,
                write_lsn: Lsn(first),
                inflight_lsn: Lsn(first),
                kind: *kind,
                payload,
            };
            encode_frame(&mut out, &frame);
            lsn = Lsn(lsn.0 + frame_bytes(payload.len()));
        }
        out.resize(4096, 0);
        out
    }

    /// A frame alone in its write, submitted with nothing else in flight.
    fn single_write(lsn: Lsn, payload: &[u8]) -> Frame<'_> {
        Frame {
            lsn,
            write_lsn: lsn,
            inflight_lsn: lsn,
            kind: 1,
            payload,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_a_flipped_bit() {
        let header = SegmentHeader {
            first_lsn: Lsn(77),
            epoch: 9,
            segment_bytes: 1 << 20,
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        bytes[10] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bytes),
            Err(HeaderError::Checksum { .. })
        ));
    }

    #[test]
    fn header_whose_lsns_would_overflow_is_refused() {
        let header = SegmentHeader {
            first_lsn: Lsn(u64::MAX - 100),
            epoch: 0,
            segment_bytes: 4096,
        };
        assert!(matches!(
            SegmentHeader::decode(&header.encode()),
            Err(HeaderError::BadFirstLsn { .. })
        ));
    }

    #[test]
    fn scan_finds_all_records_then_clean_zero_tail() {
        let bytes = segment(100, &[(1, b"a"), (2, b"bc"), (3, b"")]);
        let scan = scan_segment(&bytes, 1024).expect("valid segment");
        assert_eq!(scan.record_count, 3);
        assert_eq!(scan.end_lsn, Lsn(100 + 3 * FRAME_HEADER_BYTES as u64 + 3));
        assert_eq!(scan.tail, None);
    }

    #[test]
    fn old_bytes_in_the_slack_too_small_for_a_frame_are_the_end_not_a_torn_tail() {
        // A recycled segment: the writer rolled over leaving 14 bytes that
        // still hold data of the segment's previous life.
        let payload = vec![7u8; 4096 - SEGMENT_HEADER_BYTES - FRAME_HEADER_BYTES - 14];
        let mut bytes = segment(100, &[(1, &payload)]);
        bytes[4096 - 14..].fill(0xab);
        let scan = scan_segment(&bytes, 8192).expect("valid segment");
        assert_eq!(scan.record_count, 1);
        assert_eq!(scan.tail, None);
        assert_eq!(
            scan.end_lsn,
            Lsn(100 + 4096 - SEGMENT_HEADER_BYTES as u64 - 14)
        );
        // The same bytes in a short file (not the segment's end) stay torn.
        let short = &bytes[..4096 - 4];
        assert!(scan_segment(short, 8192).expect("scans").tail.is_some());
    }

    #[test]
    fn damage_in_the_last_write_is_a_torn_tail() {
        // All three frames belong to one write starting at the first LSN.
        let mut bytes = segment(0, &[(1, b"one"), (1, b"two"), (1, b"three")]);
        bytes[SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 1] ^= 0xff; // payload of the first frame
        let scan = scan_segment(&bytes, 1024).expect("torn, not corrupt");
        assert_eq!(scan.record_count, 0);
        let tail = scan.tail.expect("torn tail reported");
        assert!(matches!(tail.cause, FrameError::Checksum { .. }));
    }

    #[test]
    fn damage_before_a_later_write_is_corruption() {
        let header = SegmentHeader {
            first_lsn: Lsn(0),
            epoch: 0,
            segment_bytes: 4096,
        };
        let mut bytes = header.encode().to_vec();
        encode_frame(&mut bytes, &single_write(Lsn(0), b"first write"));
        let second = Lsn(frame_bytes(11));
        encode_frame(&mut bytes, &single_write(second, b"second write"));
        bytes.resize(4096, 0);
        bytes[SEGMENT_HEADER_BYTES + 30] ^= 0x40;
        let err = scan_segment(&bytes, 1024).expect_err("corruption");
        assert!(matches!(
            err,
            ScanError::Corrupt { offset: 64, lsn: Lsn(0), later_offset, .. } if later_offset == 64 + second.0
        ));
    }

    /// Zeroes after the damage are passed over quickly (`first_nonzero`),
    /// and the later write is still found wherever it starts after them.
    #[test]
    fn a_later_write_after_a_run_of_zeroes_is_found_whatever_its_offset() {
        let header = SegmentHeader {
            first_lsn: Lsn(0),
            epoch: 0,
            segment_bytes: 8192,
        };
        for zeroes in 0..300 {
            let mut bytes = header.encode().to_vec();
            encode_frame(&mut bytes, &single_write(Lsn(0), b"first write"));
            bytes[SEGMENT_HEADER_BYTES + 30] ^= 0x40;
            bytes.resize(bytes.len() + zeroes, 0);
            let later = Lsn((bytes.len() - SEGMENT_HEADER_BYTES) as u64);
            encode_frame(&mut bytes, &single_write(later, b"later write"));
            bytes.resize(8192, 0);
            let err = scan_segment(&bytes, 1024).expect_err("corruption");
            assert!(
                matches!(
                    err,
                    ScanError::Corrupt { offset: 64, later_offset, .. }
                        if later_offset == 64 + later.0
                ),
                "{zeroes} zeroes: {err:?}"
            );
        }
    }

    #[test]
    fn first_nonzero_finds_the_first_byte_that_is_not_zero() {
        for len in [0, 1, 63, 64, 65, 200] {
            let zeroes = vec![0u8; len];
            assert_eq!(first_nonzero(&zeroes), None);
            for at in 0..len {
                let mut bytes = zeroes.clone();
                bytes[at] = 1;
                bytes[len - 1] = 2;
                assert_eq!(first_nonzero(&bytes), Some(at), "len {len}");
            }
        }
    }

    #[test]
    fn damage_in_a_write_still_in_flight_when_the_next_was_submitted_is_torn() {
        let header = SegmentHeader {
            first_lsn: Lsn(0),
            epoch: 0,
            segment_bytes: 4096,
        };
        let mut bytes = header.encode().to_vec();
        encode_frame(&mut bytes, &single_write(Lsn(0), b"write one"));
        let second = Lsn(frame_bytes(9));
        // Submitted while the first write was in flight (pipelined io_uring).
        let pipelined = Frame {
            inflight_lsn: Lsn(0),
            ..single_write(second, b"write two")
        };
        encode_frame(&mut bytes, &pipelined);
        bytes.resize(4096, 0);
        bytes[SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES + 2] ^= 0x40;
        let scan = scan_segment(&bytes, 1024).expect("torn, not corrupt");
        assert_eq!(scan.record_count, 0);
        assert!(scan.tail.is_some());
    }

    #[test]
    fn oversize_length_is_an_error_not_an_allocation() {
        let mut bytes = segment(0, &[(1, b"x")]);
        bytes[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        let frame = decode_frame(&bytes[SEGMENT_HEADER_BYTES..], Lsn(0), Lsn(0), 1 << 20);
        assert!(matches!(
            frame,
            Err(FrameError::TooLarge { len: u32::MAX, .. })
        ));
    }
}
