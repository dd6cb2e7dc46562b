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

mod oracle;

use oracle::{EncodedRecord, check_behind_valid_header, check_scan, check_write_starts, limits};
use proptest::prelude::*;
use tc_wal::format::{
    Frame, FrameError, Lsn, SEGMENT_HEADER_BYTES, ScanError, SegmentHeader, decode_frame,
    encode_frame, frame_bytes,
};

/// Cases per property: 4096, or `TC_PROPTEST_CASES` for a longer hunt.
fn cases() -> u32 {
    std::env::var("TC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

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
        let header = SegmentHeader {
            first_lsn: Lsn(first_lsn),
            epoch,
            segment_bytes,
        };
        check_behind_valid_header(&header, &body);
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

/// A valid segment holding `writes`, followed by `zero_tail` zero bytes.
fn segment(
    first: Lsn,
    writes: &[Write],
    zero_tail: usize,
    seed: u8,
) -> (Vec<u8>, Vec<EncodedRecord>) {
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
            records.push(EncodedRecord {
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
    #![proptest_config(ProptestConfig::with_cases(cases()))]

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
        let intact = |r: &EncodedRecord| bytes.get(r.offset..r.end) == original.get(r.offset..r.end);
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
