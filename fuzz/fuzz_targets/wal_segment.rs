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
#[path = "../../wal/tests/oracle/mod.rs"]
mod oracle;

use oracle::{EncodedRecord, check_behind_valid_header, check_scan, limits, lsn_at};
use tc_wal::format::{
    Frame, Lsn, SEGMENT_HEADER_BYTES, ScanError, SegmentHeader, decode_frame, encode_frame,
    frame_bytes,
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
    let header = SegmentHeader {
        first_lsn: Lsn(first_lsn),
        epoch,
        segment_bytes,
    };
    check_behind_valid_header(&header, body);
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

/// Encodes `writes`, each given as (how many writes back its oldest
/// in-flight write is, modulo 4; its records), from LSN `first` on.
fn encode_writes<'a>(
    first: u64,
    writes: impl IntoIterator<Item = (u8, &'a [Record])>,
) -> (Vec<u8>, Vec<EncodedRecord>) {
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
            records.push(EncodedRecord {
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
    let intact = |r: &EncodedRecord| bytes.get(r.offset..r.end) == original.get(r.offset..r.end);
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
