//! The oracle for the WAL segment decoders, shared by the proptest
//! `decoder_random_bytes.rs` (normal test suite) and the cargo-fuzz target
//! `fuzz/fuzz_targets/wal_segment.rs` (which includes this file by path), so
//! both check exactly the same things.
//!
//! `check_scan` runs `scan_segment` and checks the result against what the
//! bytes show: a decoded header re-encodes to the same 64 bytes; a
//! successful scan has `end_lsn >= first_lsn`, and walking frames from the
//! header gives exactly `record_count` frames ending at `end_lsn`, each
//! re-encoding to exactly its input bytes with
//! `first <= inflight_lsn <= write_lsn <= lsn`; the reported torn tail or
//! corruption is the one the valid frames after the run show.
#![allow(dead_code)]

use tc_wal::format::{
    FRAME_HEADER_BYTES, Frame, FrameError, Lsn, SEGMENT_HEADER_BYTES, ScanError, SegmentHeader,
    SegmentScan, decode_frame, encode_frame, frame_bytes, scan_segment,
};

/// A record as a generator encoded it into a segment: where its frame lies
/// (`offset..end`) and what a scan must give back for it.
#[derive(Debug)]
pub struct EncodedRecord {
    pub offset: usize,
    pub end: usize,
    pub lsn: Lsn,
    pub write_lsn: Lsn,
    pub inflight_lsn: Lsn,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// A few payload limits, some derived from the input.
pub fn limits(bytes: &[u8]) -> [u32; 4] {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let last = bytes.last().copied().map_or(0, u32::from);
    [u32::MAX, len, last, 0]
}

/// `check_scan` on `header` followed by `body`, for each of `limits(body)`.
pub fn check_behind_valid_header(header: &SegmentHeader, body: &[u8]) {
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(body);
    for limit in limits(body) {
        let _checked = check_scan(&bytes, limit);
    }
}

/// Scans `bytes` and checks the result against the invariants; returns it.
pub fn check_scan(bytes: &[u8], limit: u32) -> Result<SegmentScan, ScanError> {
    let header = SegmentHeader::decode(bytes);
    if let Ok(header) = &header {
        assert_eq!(
            header.encode()[..],
            bytes[..SEGMENT_HEADER_BYTES],
            "header round trip"
        );
    }
    let scan = scan_segment(bytes, limit);
    // Bytes past the header's segment size are not part of the segment.
    let bytes = match &header {
        Ok(header) => bytes
            .get(..usize::try_from(header.segment_bytes).expect("segment size fits usize"))
            .unwrap_or(bytes),
        Err(_) => bytes,
    };
    match (&header, &scan) {
        (Err(decoded), Err(ScanError::Header(scanned))) => assert_eq!(decoded, scanned),
        (Err(decoded), other) => panic!("header {decoded:?} but scan gave {other:?}"),
        (Ok(header), Ok(scan)) => {
            assert_eq!(&scan.header, header);
            check_run(bytes, limit, scan);
        }
        (
            Ok(header),
            Err(ScanError::Corrupt {
                offset,
                lsn,
                cause,
                later_offset,
            }),
        ) => {
            let offset = usize::try_from(*offset).expect("offset in the input");
            let later_offset = usize::try_from(*later_offset).expect("offset in the input");
            let (end, end_lsn) = walk_until(bytes, header.first_lsn, limit, offset);
            assert_eq!(end, offset, "corruption reported at a frame boundary");
            assert_eq!(end_lsn, *lsn);
            assert_eq!(
                decode_frame(&bytes[offset..], *lsn, header.first_lsn, limit).as_ref(),
                Err(cause)
            );
            assert!(later_offset > offset);
            let later = decode_frame(
                &bytes[later_offset..],
                lsn_at(header.first_lsn, later_offset).expect("later lsn fits"),
                header.first_lsn,
                limit,
            )
            .expect("the later frame is valid");
            assert!(
                later.inflight_lsn > *lsn,
                "the later frame's write was submitted after the damaged one was durable"
            );
            // It is the first such frame met after the damage.
            let first_later = frames_after(bytes, header.first_lsn, limit, offset)
                .into_iter()
                .find(|found| found.inflight_lsn > *lsn)
                .map(|found| found.offset);
            assert_eq!(first_later, Some(later_offset));
        }
        (Ok(_), Err(other)) => panic!("valid header but scan gave {other:?}"),
    }
    scan
}

/// The LSN of the frame that would start at file offset `offset`.
pub fn lsn_at(first: Lsn, offset: usize) -> Option<Lsn> {
    let delta = offset.checked_sub(SEGMENT_HEADER_BYTES)?;
    first.0.checked_add(delta as u64).map(Lsn)
}

/// Decodes the frame at `offset`, checking everything a valid frame implies,
/// including that it re-encodes to exactly the bytes it was decoded from.
/// Returns its end offset and end LSN, or `None` if it is not valid.
pub fn checked_frame(bytes: &[u8], first: Lsn, limit: u32, offset: usize) -> Option<(usize, Lsn)> {
    let lsn = lsn_at(first, offset)?;
    let frame = decode_frame(bytes.get(offset..)?, lsn, first, limit).ok()?;
    assert_eq!(frame.lsn, lsn);
    assert!(frame.payload.len() <= limit as usize);
    check_write_starts(&frame, first, &bytes[offset..]);
    let end = offset + frame_bytes(frame.payload.len()) as usize;
    let end_lsn = lsn
        .0
        .checked_add(frame_bytes(frame.payload.len()))
        .expect("a valid frame's end lsn fits u64");
    assert_eq!(frame.end_lsn(), Lsn(end_lsn));
    let mut encoded = Vec::new();
    encode_frame(&mut encoded, &frame);
    assert_eq!(encoded[..], bytes[offset..end], "frame round trip");
    Some((end, Lsn(end_lsn)))
}

/// A decoded frame's write and in-flight starts are in order and are its
/// back fields (header bytes 16..20 and 20..24) subtracted from its LSN.
pub fn check_write_starts(frame: &Frame<'_>, first: Lsn, bytes: &[u8]) {
    assert!(
        first <= frame.inflight_lsn
            && frame.inflight_lsn <= frame.write_lsn
            && frame.write_lsn <= frame.lsn,
        "write starts out of order: {frame:?} in a segment from {first}"
    );
    let back = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
    assert_eq!(frame.write_lsn, Lsn(frame.lsn.0 - back(16)), "write_back");
    assert_eq!(
        frame.inflight_lsn,
        Lsn(frame.lsn.0 - back(20)),
        "inflight_back"
    );
}

/// Walks valid frames from the header until `stop` (or the first invalid
/// frame); returns where the walk ended.
pub fn walk_until(bytes: &[u8], first: Lsn, limit: u32, stop: usize) -> (usize, Lsn) {
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut lsn = first;
    while offset < stop {
        let Some((end, end_lsn)) = checked_frame(bytes, first, limit, offset) else {
            break;
        };
        offset = end;
        lsn = end_lsn;
    }
    (offset, lsn)
}

/// A valid frame found after the damage.
pub struct Found {
    pub offset: usize,
    pub end: usize,
    pub inflight_lsn: Lsn,
}

/// The valid frames met after the damage at `offset` when resynchronising:
/// the first valid frame after `offset`, then the first at or after that
/// frame's end, and so on (bytes inside a valid frame are its payload, not
/// frames).
pub fn frames_after(bytes: &[u8], first: Lsn, limit: u32, offset: usize) -> Vec<Found> {
    let mut found = Vec::new();
    let mut probe = offset + 1;
    while probe + FRAME_HEADER_BYTES <= bytes.len() {
        let frame = lsn_at(first, probe)
            .and_then(|lsn| decode_frame(&bytes[probe..], lsn, first, limit).ok());
        match frame {
            Some(frame) => {
                let end = probe + frame_bytes(frame.payload.len()) as usize;
                found.push(Found {
                    offset: probe,
                    end,
                    inflight_lsn: frame.inflight_lsn,
                });
                probe = end;
            }
            None => probe += 1,
        }
    }
    found
}

pub fn check_run(bytes: &[u8], limit: u32, scan: &SegmentScan) {
    let first = scan.header.first_lsn;
    assert!(scan.end_lsn >= first, "end_lsn before the first lsn");
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut lsn = first;
    for index in 0..scan.record_count {
        let Some((end, end_lsn)) = checked_frame(bytes, first, limit, offset) else {
            panic!(
                "record {index} of {} at offset {offset} is invalid",
                scan.record_count
            );
        };
        offset = end;
        lsn = end_lsn;
    }
    assert_eq!(lsn, scan.end_lsn);
    let rest = &bytes[offset..];
    let stop = if rest.is_empty() {
        None
    } else {
        let stop = decode_frame(rest, lsn, first, limit).expect_err("the run stops at a bad frame");
        Some(stop)
    };
    let later = frames_after(bytes, first, limit, offset);
    if let Some(found) = later.iter().find(|found| found.inflight_lsn > lsn) {
        panic!(
            "the frame at offset {} was submitted after {lsn} was durable (in flight from {}), \
             but the scan found no corruption",
            found.offset, found.inflight_lsn
        );
    }
    match (&scan.tail, stop) {
        (None, None) => {}
        (None, Some(FrameError::Truncated { .. })) => {
            // Slack too small for a frame at the end of a full segment holds
            // anything (old bytes of a recycled segment); elsewhere only zeros.
            let slack =
                rest.len() < FRAME_HEADER_BYTES && bytes.len() as u64 == scan.header.segment_bytes;
            assert!(
                slack || rest.iter().all(|&b| b == 0),
                "torn non-zero bytes ignored"
            );
        }
        (None, Some(FrameError::Empty { .. } | FrameError::LsnMismatch { .. })) => {
            assert!(
                later.is_empty(),
                "valid frames after the end of the run ignored"
            );
        }
        (None, Some(other)) => panic!("damage {other:?} at the end of the run not reported"),
        (Some(tail), stop) => {
            assert_eq!(stop.as_ref(), Some(&tail.cause));
            let dirty = usize::try_from(tail.dirty_until_offset).expect("offset fits");
            assert!(
                offset < dirty && dirty <= bytes.len(),
                "dirty range {dirty}"
            );
            if let Some(found) = later.last() {
                assert!(
                    dirty >= found.end,
                    "dirty range {dirty} leaves the valid frame at {}..{}",
                    found.offset,
                    found.end
                );
            }
            if later.is_empty() {
                assert!(
                    !matches!(
                        tail.cause,
                        FrameError::Empty { .. } | FrameError::LsnMismatch { .. }
                    ),
                    "end of data reported as a torn tail"
                );
            }
        }
    }
}
