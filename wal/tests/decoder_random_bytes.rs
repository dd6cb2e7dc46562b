//! The WAL decoders on random and on damaged bytes, so that CI catches a
//! decoder regression without cargo-fuzz (the same checks, with coverage
//! guidance, are in `fuzz/fuzz_targets/wal_{segment,frame}.rs`).
//!
//! 1. Random bytes (raw, or behind a valid header) through `scan_segment`,
//!    `SegmentHeader::decode` and `decode_frame`: no panic; a decoded header
//!    or frame re-encodes to exactly its input bytes; a decoded frame has
//!    `first <= inflight_lsn <= write_lsn <= lsn`, read from its back fields;
//!    a successful scan has `end_lsn >= first_lsn`, walking `record_count`
//!    frames from the header ends at `end_lsn`, and no valid frame after the
//!    run (as the scan resynchronises) was submitted after the run's end was
//!    durable (`inflight_lsn > end_lsn`).
//! 2. A valid segment of random pipelined writes (each write's frames carry
//!    the start of the write itself or of one of the 1..=3 writes before it
//!    as `inflight_lsn`), then a few random mutations (flip a byte, zero a
//!    range, truncate): no panic; an accepted run is a prefix of the records
//!    written, `inflight_lsn` included; with the header intact, the first
//!    damaged record is a torn tail (scan Ok, records before it) unless an
//!    intact record after it has `inflight_lsn` above its LSN (its write was
//!    submitted after the damaged one was durable), and then it is corruption
//!    reported at its file offset.

use proptest::prelude::*;
use tc_wal::format::{
    FRAME_HEADER_BYTES, Frame, FrameError, Lsn, SEGMENT_HEADER_BYTES, ScanError, SegmentHeader,
    SegmentScan, decode_frame, encode_frame, frame_bytes, scan_segment,
};

const CASES: u32 = 384;

/// The LSN of a frame starting at file offset `offset`, if it fits u64.
fn lsn_at(first: Lsn, offset: usize) -> Option<Lsn> {
    let delta = offset.checked_sub(SEGMENT_HEADER_BYTES)?;
    first.0.checked_add(delta as u64).map(Lsn)
}

/// Decodes and checks the frame at `offset`: valid frames honour the limit
/// and re-encode to exactly their bytes. Returns its end offset and LSN.
fn checked_frame(bytes: &[u8], first: Lsn, limit: u32, offset: usize) -> Option<(usize, Lsn)> {
    let lsn = lsn_at(first, offset)?;
    let frame = decode_frame(bytes.get(offset..)?, lsn, first, limit).ok()?;
    assert_eq!(frame.lsn, lsn);
    assert!(
        frame.payload.len() <= limit as usize,
        "payload over the limit"
    );
    check_write_starts(&frame, first, &bytes[offset..]);
    let end = offset + frame_bytes(frame.payload.len()) as usize;
    let end_lsn = lsn
        .0
        .checked_add(frame_bytes(frame.payload.len()))
        .expect("a valid frame's end lsn fits u64");
    let mut encoded = Vec::new();
    encode_frame(&mut encoded, &frame);
    assert_eq!(encoded[..], bytes[offset..end], "frame round trip");
    Some((end, Lsn(end_lsn)))
}

/// A decoded frame's write and in-flight starts are in order and are its
/// back fields (header bytes 16..20 and 20..24) subtracted from its LSN.
fn check_write_starts(frame: &Frame<'_>, first: Lsn, bytes: &[u8]) {
    assert!(
        first <= frame.inflight_lsn
            && frame.inflight_lsn <= frame.write_lsn
            && frame.write_lsn <= frame.lsn,
        "write starts out of order: {frame:?} in a segment from {first}"
    );
    let back = |at: usize| u64::from(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()));
    assert_eq!(frame.write_lsn, Lsn(frame.lsn.0 - back(16)));
    assert_eq!(frame.inflight_lsn, Lsn(frame.lsn.0 - back(20)));
}

/// The valid frames the scan meets after the damage at `offset`, as it
/// resynchronises: the first valid frame after `offset`, then the first
/// at or after that frame's end, and so on (bytes inside a valid frame are
/// its payload, not frames). Each as (offset, end offset, inflight LSN).
fn frames_after(bytes: &[u8], first: Lsn, limit: u32, offset: usize) -> Vec<(usize, usize, Lsn)> {
    let mut found = Vec::new();
    let mut probe = offset + 1;
    while probe + FRAME_HEADER_BYTES <= bytes.len() {
        let frame = lsn_at(first, probe)
            .and_then(|lsn| decode_frame(&bytes[probe..], lsn, first, limit).ok());
        match frame {
            Some(frame) => {
                let end = probe + frame_bytes(frame.payload.len()) as usize;
                found.push((probe, end, frame.inflight_lsn));
                probe = end;
            }
            None => probe += 1,
        }
    }
    found
}

/// Scans `bytes`, checks the result against what the bytes show, returns it.
fn check_scan(bytes: &[u8], limit: u32) -> Result<SegmentScan, ScanError> {
    let header = SegmentHeader::decode(bytes);
    let scan = scan_segment(bytes, limit);
    let header = match header {
        Err(decoded) => {
            assert_eq!(scan, Err(ScanError::Header(decoded)));
            return scan;
        }
        Ok(header) => header,
    };
    assert_eq!(header.encode()[..], bytes[..SEGMENT_HEADER_BYTES]);
    // Bytes past the header's segment size are not part of the segment.
    let bytes = bytes.get(..header.segment_bytes as usize).unwrap_or(bytes);
    let first = header.first_lsn;
    match &scan {
        Ok(scan) => {
            assert_eq!(scan.header, header);
            assert!(scan.end_lsn >= first, "end_lsn before the first lsn");
            let (mut offset, mut lsn) = (SEGMENT_HEADER_BYTES, first);
            for index in 0..scan.record_count {
                (offset, lsn) = checked_frame(bytes, first, limit, offset)
                    .unwrap_or_else(|| panic!("reported record {index} is invalid"));
            }
            assert_eq!(lsn, scan.end_lsn);
            if offset < bytes.len() {
                let stop = decode_frame(&bytes[offset..], lsn, first, limit)
                    .expect_err("the run stops at a bad frame");
                let later = frames_after(bytes, first, limit, offset);
                if let Some((at, _, inflight)) = later.iter().find(|f| f.2 > lsn) {
                    panic!(
                        "the frame at offset {at} was submitted after {lsn} was durable \
                         (in flight from {inflight}), yet the scan found no corruption"
                    );
                }
                match &scan.tail {
                    Some(tail) => {
                        assert_eq!(tail.cause, stop);
                        let dirty = tail.dirty_until_offset as usize;
                        assert!(offset < dirty && dirty <= bytes.len());
                        if let Some((_, end, _)) = later.last() {
                            assert!(dirty >= *end, "valid frames left after the dirty range");
                        }
                    }
                    None => {
                        assert!(
                            matches!(
                                stop,
                                FrameError::Empty { .. } | FrameError::LsnMismatch { .. }
                            ) || bytes[offset..].iter().all(|&b| b == 0),
                            "damage {stop:?} at the end of the run not reported"
                        );
                        assert!(later.is_empty(), "valid frames after the run ignored");
                    }
                }
            } else {
                assert_eq!(scan.tail, None);
            }
        }
        Err(ScanError::Corrupt {
            offset,
            lsn,
            cause,
            later_offset,
        }) => {
            let (offset, later_offset) = (*offset as usize, *later_offset as usize);
            let (mut at, mut at_lsn) = (SEGMENT_HEADER_BYTES, first);
            while at < offset {
                (at, at_lsn) = checked_frame(bytes, first, limit, at)
                    .expect("valid records up to the corrupt one");
            }
            assert_eq!((at, at_lsn), (offset, *lsn));
            assert_eq!(
                decode_frame(&bytes[offset..], *lsn, first, limit).as_ref(),
                Err(cause)
            );
            assert!(later_offset > offset);
            let later_lsn = lsn_at(first, later_offset).expect("later lsn fits");
            let later = decode_frame(&bytes[later_offset..], later_lsn, first, limit)
                .expect("the later record is valid");
            assert!(
                later.inflight_lsn > *lsn,
                "the later record's write was submitted after the damaged one was durable"
            );
            // It is the first such frame the scan meets after the damage.
            let first_later = frames_after(bytes, first, limit, offset)
                .into_iter()
                .find(|f| f.2 > *lsn)
                .map(|f| f.0);
            assert_eq!(first_later, Some(later_offset));
        }
        Err(other) => panic!("valid header but the scan gave {other:?}"),
    }
    scan
}

fn limits(bytes: &[u8]) -> [u32; 4] {
    let last = bytes.last().copied().map_or(0, u32::from);
    [u32::MAX, bytes.len() as u32, last, 0]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn random_bytes_never_break_the_segment_decoders(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        for limit in limits(&bytes) {
            let _checked = check_scan(&bytes, limit);
        }
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_break_the_scan(
        first_lsn in prop_oneof![0..1u64 << 40, any::<u64>()],
        epoch in any::<u64>(),
        segment_extra in 0..2048u64,
        body in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let segment_bytes = SEGMENT_HEADER_BYTES as u64 + segment_extra;
        let mut bytes = SegmentHeader {
            first_lsn: Lsn(first_lsn),
            epoch,
            segment_bytes,
        }
        .encode()
        .to_vec();
        bytes.extend_from_slice(&body);
        for limit in limits(&body) {
            let _checked = check_scan(&bytes, limit);
        }
    }

    #[test]
    fn random_bytes_never_break_decode_frame(
        lsn_from_bytes in any::<bool>(),
        lsn in any::<u64>(),
        first_back in prop_oneof![0..4096u64, any::<u64>()],
        limit in prop_oneof![0..512u32, any::<u32>()],
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let lsn = match bytes.get(8..16) {
            Some(field) if lsn_from_bytes => u64::from_le_bytes(field.try_into().unwrap()),
            _ => lsn,
        };
        let (lsn, first) = (Lsn(lsn), Lsn(lsn.saturating_sub(first_back)));
        match decode_frame(&bytes, lsn, first, limit) {
            Ok(frame) => {
                assert!(frame.payload.len() <= limit as usize);
                check_write_starts(&frame, first, &bytes);
                let total = frame_bytes(frame.payload.len()) as usize;
                let mut encoded = Vec::new();
                encode_frame(&mut encoded, &frame);
                assert_eq!(encoded[..], bytes[..total]);
            }
            Err(FrameError::Truncated { needed, available, .. }) => {
                assert_eq!(available, bytes.len() as u64);
                assert!(needed > available);
            }
            Err(FrameError::TooLarge { len, max, .. }) => assert!(max == limit && len > max),
            Err(_) => {}
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    /// XOR the byte at this position (modulo the file size) with a non-zero mask.
    Flip(usize, u8),
    /// Zero this many bytes from this position.
    Zero(usize, usize),
    /// Cut the file at this position.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        2 => (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Zero(at, len)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// A write: how many writes back its oldest in-flight write is (0: none
/// was in flight; more than there are writes before it: the first one),
/// and its (kind, payload size) records.
type Write = (usize, Vec<(u8, usize)>);

/// Writes, some submitted while up to 3 earlier ones were in flight.
fn writes() -> impl Strategy<Value = Vec<Write>> {
    let records = prop::collection::vec((1..=255u8, 0..300usize), 1..5);
    prop::collection::vec((0..=3usize, records), 1..7)
}

#[derive(Debug)]
struct Written {
    offset: usize,
    end: usize,
    lsn: Lsn,
    write_lsn: Lsn,
    inflight_lsn: Lsn,
    kind: u8,
    payload: Vec<u8>,
}

/// A valid segment holding `writes`, followed by `zero_tail` zero bytes.
fn segment(first: Lsn, writes: &[Write], zero_tail: usize, seed: u8) -> (Vec<u8>, Vec<Written>) {
    let mut body = Vec::new();
    let mut records = Vec::new();
    let mut lsn = first;
    let mut write_starts: Vec<Lsn> = Vec::new();
    for (back, write) in writes {
        let write_lsn = lsn;
        let back = (*back).min(write_starts.len());
        let inflight_lsn = write_starts
            .len()
            .checked_sub(back)
            .and_then(|index| write_starts.get(index))
            .copied()
            .unwrap_or(write_lsn);
        write_starts.push(write_lsn);
        for &(kind, size) in write {
            let payload: Vec<u8> = (0..size)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ kind))
                .collect();
            let offset = SEGMENT_HEADER_BYTES + body.len();
            let frame = Frame {
                lsn,
                write_lsn,
                inflight_lsn,
                kind,
                payload: &payload,
            };
            encode_frame(&mut body, &frame);
            records.push(Written {
                offset,
                end: SEGMENT_HEADER_BYTES + body.len(),
                lsn,
                write_lsn,
                inflight_lsn,
                kind,
                payload,
            });
            lsn = Lsn(lsn.0 + frame_bytes(size));
        }
    }
    let file_bytes = SEGMENT_HEADER_BYTES + body.len() + zero_tail;
    let mut bytes = SegmentHeader {
        first_lsn: first,
        epoch: 1,
        segment_bytes: file_bytes as u64,
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(&body);
    bytes.resize(file_bytes, 0);
    (bytes, records)
}

/// Applies `mutation` with its position taken modulo the file size.
fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len().max(1);
    let at_most = match *mutation {
        Mutation::Flip(at, mask) => Mutation::Flip(at % len, mask),
        Mutation::Zero(at, count) => Mutation::Zero(at % len, count),
        Mutation::Truncate(at) => Mutation::Truncate(at % len),
    };
    apply_at(bytes, &at_most);
}

/// Applies `mutation` at its position, clipped to the file.
fn apply_at(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len();
    match *mutation {
        Mutation::Flip(at, mask) => {
            if let Some(byte) = bytes.get_mut(at) {
                *byte ^= mask;
            }
        }
        Mutation::Zero(at, count) => {
            let start = at.min(len);
            bytes[start..(start + count).min(len)].fill(0);
        }
        Mutation::Truncate(at) => bytes.truncate(at),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn damaged_segment_is_a_prefix_a_torn_tail_or_corruption_at_the_damage(
        first_lsn in prop_oneof![0..1u64 << 40, (u64::MAX - (1 << 20))..=(u64::MAX - (1 << 16))],
        writes in writes(),
        zero_tail in 0..512usize,
        seed in any::<u8>(),
        mutations in prop::collection::vec(mutation(), 1..=3),
        only_after_the_records in any::<bool>(),
    ) {
        let (original, records) = segment(Lsn(first_lsn), &writes, zero_tail, seed);
        let records_end = records.last().map_or(SEGMENT_HEADER_BYTES, |r| r.end);
        let max_payload = records.iter().map(|r| r.payload.len()).max().unwrap_or(0);
        let limit = max_payload as u32;
        let mut bytes = original.clone();
        for mutation in &mutations {
            if only_after_the_records {
                // Aim at the bytes after the last record (if there are any).
                let tail = original.len() - records_end;
                let after = |at: usize| records_end + at % (tail + 1);
                let aimed = match *mutation {
                    Mutation::Flip(at, mask) if tail > 0 => {
                        Mutation::Flip(records_end + at % tail, mask)
                    }
                    Mutation::Flip(..) => continue,
                    Mutation::Zero(at, count) => Mutation::Zero(after(at), count),
                    Mutation::Truncate(at) => Mutation::Truncate(after(at)),
                };
                apply_at(&mut bytes, &aimed);
            } else {
                apply(&mut bytes, mutation);
            }
        }
        let scan = check_scan(&bytes, limit);

        if bytes.get(..SEGMENT_HEADER_BYTES) != original.get(..SEGMENT_HEADER_BYTES) {
            return Ok(()); // a damaged header: nothing more to expect
        }
        // An accepted run is a prefix of what was written.
        if let Ok(scan) = &scan {
            prop_assert!(scan.record_count as usize <= records.len());
            for record in &records[..scan.record_count as usize] {
                let frame = decode_frame(&bytes[record.offset..], record.lsn, Lsn(first_lsn), limit)
                    .expect("a reported record is valid");
                prop_assert_eq!(
                    (frame.write_lsn, frame.inflight_lsn, frame.kind, frame.payload),
                    (record.write_lsn, record.inflight_lsn, record.kind, &record.payload[..])
                );
            }
        }
        let intact = |r: &Written| bytes.get(r.offset..r.end) == original.get(r.offset..r.end);
        let Some(damaged) = records.iter().position(|r| !intact(r)) else {
            // Damage, if any, only after the records: all of them are found.
            let scan = scan.expect("intact records scan fine");
            prop_assert_eq!(scan.record_count as usize, records.len());
            prop_assert_eq!(
                scan.end_lsn,
                Lsn(first_lsn + (records_end - SEGMENT_HEADER_BYTES) as u64)
            );
            return Ok(());
        };
        let at = &records[damaged];
        // An intact record whose write was submitted after the damaged one
        // was durable: the damage cannot be a torn in-flight write.
        let later_write = records[damaged + 1..]
            .iter()
            .find(|r| r.inflight_lsn > at.lsn && intact(r));
        match (later_write, scan) {
            (Some(later), Err(ScanError::Corrupt { offset, lsn, later_offset, .. })) => {
                prop_assert_eq!(offset, at.offset as u64);
                prop_assert_eq!(lsn, at.lsn);
                prop_assert!(later_offset <= later.offset as u64);
            }
            (Some(later), other) => prop_assert!(
                false,
                "record {} at offset {} is damaged and an intact record submitted after it \
                 was durable follows at offset {}, yet the scan gave {:?}",
                damaged, at.offset, later.offset, other
            ),
            (None, Ok(scan)) => {
                prop_assert_eq!(scan.record_count as usize, damaged);
                prop_assert_eq!(scan.end_lsn, at.lsn);
            }
            (None, Err(e)) => prop_assert!(
                false,
                "only writes in flight with record {} are damaged, yet the scan gave {:?}",
                damaged, e
            ),
        }
    }
}
