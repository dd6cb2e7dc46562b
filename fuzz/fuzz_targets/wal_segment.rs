#![no_main]
//! `scan_segment` and `SegmentHeader::decode` on the bytes of a segment file.
//!
//! The first input byte picks a mode:
//! - `0`: the rest is a whole segment file as read from disk (a real segment
//!   prefixed with a `0x00` byte is a good seed).
//! - `1`: a valid header built from the input, then arbitrary bytes, so the
//!   fuzzer does not have to find the header CRC before reaching frames.
//! - otherwise: a valid segment built from arbitrary pipelined writes of
//!   arbitrary records (each write's frames carry as `inflight_lsn` the start
//!   of the write itself or of one of the 1..=3 writes before it), sometimes
//!   over the stale frames of a recycled segment, then up to three mutations
//!   (flip a bit, zero a range, truncate). Besides the invariants below, the
//!   outcome is checked against the records that were encoded: the most
//!   valuable mode, as random bytes rarely pass the CRCs. The first damaged
//!   record must be `ScanError::Corrupt` at its offset if an intact record
//!   after it has `inflight_lsn` above its LSN (that write was submitted
//!   after the damaged one was durable), else a torn tail: scan Ok with
//!   exactly the records before it.
//!
//! In every mode: no panic; a decoded header re-encodes to the same 64 bytes;
//! if the scan succeeds, `end_lsn >= first_lsn` and walking frames from the
//! header with `decode_frame` gives exactly `record_count` frames ending at
//! `end_lsn`, each re-encoding to exactly its input bytes, with
//! `first <= inflight_lsn <= write_lsn <= lsn`; the reported tail or
//! corruption is the one the valid frames after the run show.

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use tc_wal::format::{
    FRAME_HEADER_BYTES, Frame, FrameError, Lsn, SEGMENT_HEADER_BYTES, ScanError, SegmentHeader,
    SegmentScan, decode_frame, encode_frame, frame_bytes, scan_segment,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => raw(rest),
        1 => valid_header_then(rest),
        _ => {
            let mut input = Unstructured::new(rest);
            if let Ok(spec) = Spec::arbitrary(&mut input) {
                mutated_segment(&spec);
            }
        }
    }
});

/// A few payload limits, some derived from the input.
fn limits(bytes: &[u8]) -> [u32; 4] {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let last = bytes.last().copied().map_or(0, u32::from);
    [u32::MAX, len, last, 0]
}

fn raw(bytes: &[u8]) {
    for limit in limits(bytes) {
        let _checked = check_scan(bytes, limit);
    }
}

fn valid_header_then(rest: &[u8]) {
    let mut input = Unstructured::new(rest);
    let (Ok(first_lsn), Ok(epoch), Ok(size), Ok(near_the_top)) = (
        u64::arbitrary(&mut input),
        u64::arbitrary(&mut input),
        u16::arbitrary(&mut input),
        bool::arbitrary(&mut input),
    ) else {
        return;
    };
    let body = input.take_rest();
    // Sometimes shorter than the file (the scan must ignore the excess),
    // sometimes right below 2^64, sometimes overflowing (refused).
    let segment_bytes = (SEGMENT_HEADER_BYTES + usize::from(size)) as u64;
    let first_lsn = if near_the_top {
        first_lsn.min(u64::MAX - segment_bytes)
    } else {
        first_lsn
    };
    let mut bytes = SegmentHeader {
        first_lsn: Lsn(first_lsn),
        epoch,
        segment_bytes,
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(body);
    for limit in limits(body) {
        let _checked = check_scan(&bytes, limit);
    }
}

/// Scans `bytes` and checks the result against the invariants; returns it.
fn check_scan(bytes: &[u8], limit: u32) -> Result<SegmentScan, ScanError> {
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
fn lsn_at(first: Lsn, offset: usize) -> Option<Lsn> {
    let delta = offset.checked_sub(SEGMENT_HEADER_BYTES)?;
    first.0.checked_add(delta as u64).map(Lsn)
}

/// Decodes the frame at `offset`, checking everything a valid frame implies,
/// including that it re-encodes to exactly the bytes it was decoded from.
/// Returns its end offset and end LSN, or `None` if it is not valid.
fn checked_frame(bytes: &[u8], first: Lsn, limit: u32, offset: usize) -> Option<(usize, Lsn)> {
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
fn check_write_starts(frame: &Frame<'_>, first: Lsn, bytes: &[u8]) {
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
fn walk_until(bytes: &[u8], first: Lsn, limit: u32, stop: usize) -> (usize, Lsn) {
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
struct Found {
    offset: usize,
    end: usize,
    inflight_lsn: Lsn,
}

/// The valid frames met after the damage at `offset` when resynchronising:
/// the first valid frame after `offset`, then the first at or after that
/// frame's end, and so on (bytes inside a valid frame are its payload, not
/// frames).
fn frames_after(bytes: &[u8], first: Lsn, limit: u32, offset: usize) -> Vec<Found> {
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

fn check_run(bytes: &[u8], limit: u32, scan: &SegmentScan) {
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
            assert!(rest.iter().all(|&b| b == 0), "torn non-zero bytes ignored");
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

/// (kind, payload) of a record to write; kind 0 is written as 1.
type Record = (u8, Vec<u8>);

#[derive(Arbitrary, Debug)]
struct Spec {
    first_lsn: u64,
    epoch: u64,
    writes: Vec<Write>,
    /// Frames of an older use of the file, this many LSNs (+1) before.
    stale: Option<(u16, Vec<Record>)>,
    zero_tail: u16,
    /// Bytes after the header's segment size, which the scan must ignore.
    past_the_end: Vec<u8>,
    limit_slack: u8,
    mutations: Vec<Mutation>,
}

/// The records of one write + fdatasync.
#[derive(Arbitrary, Debug)]
struct Write {
    /// How many non-empty writes back the oldest write still in flight when
    /// this one was submitted is, modulo 4 (0: none, its own start is its
    /// `inflight_lsn`; more than there are: the segment's first write).
    inflight_back: u8,
    records: Vec<Record>,
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    Flip { at: u32, bit: u8 },
    Zero { at: u32, len: u8 },
    Truncate { at: u32 },
}

const MAX_RECORDS: usize = 64;
const MAX_PAYLOAD: usize = 600;
/// At most 3 bit flips inside a frame of under 91607 bits are always
/// detected by CRC-32 (Hamming distance 4), so the oracle below cannot be
/// fooled by a forged frame.
const MAX_MUTATIONS: usize = 3;

#[derive(Debug)]
struct Original {
    offset: usize,
    end: usize,
    lsn: Lsn,
    write_lsn: Lsn,
    inflight_lsn: Lsn,
    kind: u8,
    payload: Vec<u8>,
}

/// Encodes `writes`, each given as (how many writes back its oldest
/// in-flight write is, modulo 4; its records), from LSN `first` on.
fn encode_writes<'a>(
    first: u64,
    writes: impl IntoIterator<Item = (u8, &'a [Record])>,
) -> (Vec<u8>, Vec<Original>) {
    let mut body = Vec::new();
    let mut records = Vec::new();
    let mut lsn = first;
    // Where each earlier non-empty write of this segment started.
    let mut write_starts: Vec<u64> = Vec::new();
    'writes: for (inflight_back, write) in writes {
        let write_lsn = lsn;
        let back = usize::from(inflight_back % 4).min(write_starts.len());
        let inflight_lsn = write_starts[write_starts.len() - back..]
            .first()
            .copied()
            .unwrap_or(write_lsn);
        for (kind, payload) in write {
            let payload = &payload[..payload.len().min(MAX_PAYLOAD)];
            if records.len() == MAX_RECORDS {
                break 'writes;
            }
            let Some(end_lsn) = lsn.checked_add(frame_bytes(payload.len())) else {
                break 'writes;
            };
            let offset = SEGMENT_HEADER_BYTES + body.len();
            let kind = (*kind).max(1);
            let frame = Frame {
                lsn: Lsn(lsn),
                write_lsn: Lsn(write_lsn),
                inflight_lsn: Lsn(inflight_lsn),
                kind,
                payload,
            };
            encode_frame(&mut body, &frame);
            records.push(Original {
                offset,
                end: SEGMENT_HEADER_BYTES + body.len(),
                lsn: Lsn(lsn),
                write_lsn: Lsn(write_lsn),
                inflight_lsn: Lsn(inflight_lsn),
                kind,
                payload: payload.to_vec(),
            });
            lsn = end_lsn;
        }
        if lsn != write_lsn {
            write_starts.push(write_lsn);
        }
    }
    (body, records)
}

fn mutated_segment(spec: &Spec) {
    let writes = || {
        spec.writes
            .iter()
            .map(|write| (write.inflight_back, write.records.as_slice()))
    };
    // Sizes do not depend on the LSNs; the LSNs must leave room for the
    // whole segment below 2^64, or the header is (rightly) refused.
    let body_bytes = encode_writes(0, writes()).0.len();
    let stale_bytes = spec.stale.as_ref().map_or(0, |(_, stale)| {
        encode_writes(
            0,
            stale.iter().map(|record| (0, std::slice::from_ref(record))),
        )
        .0
        .len()
    });
    let file_bytes =
        SEGMENT_HEADER_BYTES + body_bytes.max(stale_bytes) + usize::from(spec.zero_tail % 4096);
    let first = Lsn(spec.first_lsn.min(u64::MAX - file_bytes as u64));
    let (body, records) = encode_writes(first.0, writes());
    let stale_body = spec
        .stale
        .as_ref()
        .and_then(|(distance, stale)| {
            let stale_first = first.0.checked_sub(u64::from(*distance) + 1)?;
            let stale_writes = stale.iter().map(|record| (0, std::slice::from_ref(record)));
            Some(encode_writes(stale_first, stale_writes).0)
        })
        .unwrap_or_default();
    let end_lsn = records
        .last()
        .map_or(first, |r| Lsn(r.lsn.0 + frame_bytes(r.payload.len())));
    let mut original = SegmentHeader {
        first_lsn: first,
        epoch: spec.epoch,
        segment_bytes: file_bytes as u64,
    }
    .encode()
    .to_vec();
    original.extend_from_slice(&stale_body);
    original.resize(file_bytes, 0);
    original[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + body.len()].copy_from_slice(&body);
    // Bytes past the segment size are not part of the segment.
    original.extend_from_slice(&spec.past_the_end[..spec.past_the_end.len().min(256)]);
    let max_payload = records.iter().map(|r| r.payload.len()).max().unwrap_or(0);
    let limit = max_payload as u32 + u32::from(spec.limit_slack);

    let mut bytes = original.clone();
    for mutation in spec.mutations.iter().take(MAX_MUTATIONS) {
        if bytes.is_empty() {
            break;
        }
        let at = |at: u32| at as usize % bytes.len();
        match *mutation {
            Mutation::Flip { at: position, bit } => {
                let position = at(position);
                bytes[position] ^= 1 << (bit % 8);
            }
            Mutation::Zero { at: position, len } => {
                let start = at(position);
                let end = (start + usize::from(len)).min(bytes.len());
                bytes[start..end].fill(0);
            }
            Mutation::Truncate { at: position } => {
                let len = at(position);
                bytes.truncate(len);
            }
        }
    }

    let scan = check_scan(&bytes, limit);
    if bytes.get(..SEGMENT_HEADER_BYTES) != original.get(..SEGMENT_HEADER_BYTES) {
        return; // a damaged header: the checks in `check_scan` are all there is
    }

    // Recovery property: an accepted run is a prefix of what was written.
    if let Ok(scan) = &scan {
        assert!(scan.record_count as usize <= records.len());
        let mut offset = SEGMENT_HEADER_BYTES;
        for record in &records[..scan.record_count as usize] {
            let frame = decode_frame(&bytes[offset..], record.lsn, first, limit)
                .expect("a reported record is valid");
            assert_eq!(
                (
                    frame.lsn,
                    frame.write_lsn,
                    frame.inflight_lsn,
                    frame.kind,
                    frame.payload
                ),
                (
                    record.lsn,
                    record.write_lsn,
                    record.inflight_lsn,
                    record.kind,
                    &record.payload[..]
                ),
                "a reported record differs from the one written"
            );
            offset = record.end;
        }
    }

    // A payload may itself contain a valid frame at the right LSN; then
    // damage before it is ambiguous by design, so the exact oracle is off.
    let starts: Vec<usize> = records.iter().map(|r| r.offset).collect();
    let embedded = (SEGMENT_HEADER_BYTES..file_bytes).any(|probe| {
        starts.binary_search(&probe).is_err()
            && lsn_at(first, probe).is_some_and(|lsn| {
                decode_frame(&original[probe..file_bytes], lsn, first, limit).is_ok()
            })
    });
    if embedded {
        return;
    }
    let intact = |r: &Original| bytes.get(r.offset..r.end) == original.get(r.offset..r.end);
    let Some(damaged) = records.iter().position(|r| !intact(r)) else {
        let scan = scan.expect("undamaged records scan fine");
        assert_eq!(scan.record_count as usize, records.len());
        assert_eq!(scan.end_lsn, end_lsn);
        return;
    };
    let at = &records[damaged];
    // An intact record whose write was submitted after the damaged one was
    // durable: the damage cannot be a torn in-flight write.
    let later_write = records[damaged + 1..]
        .iter()
        .find(|r| r.inflight_lsn > at.lsn && intact(r));
    match (later_write, scan) {
        (
            Some(later),
            Err(ScanError::Corrupt {
                offset,
                lsn,
                later_offset,
                ..
            }),
        ) => {
            assert_eq!(
                offset, at.offset as u64,
                "corruption reported at the wrong record"
            );
            assert_eq!(lsn, at.lsn);
            assert!(later_offset <= later.offset as u64);
        }
        (Some(later), other) => panic!(
            "record {damaged} at offset {} is damaged and an intact record submitted after it \
             was durable follows at offset {}, yet the scan gave {other:?}",
            at.offset, later.offset
        ),
        (None, Ok(scan)) => {
            assert_eq!(
                scan.record_count as usize, damaged,
                "torn tail at the wrong record"
            );
            assert_eq!(scan.end_lsn, at.lsn);
        }
        (None, Err(e)) => panic!(
            "only writes in flight with record {damaged} are damaged, yet the scan gave {e:?}"
        ),
    }
}
