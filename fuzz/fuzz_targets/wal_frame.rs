#![no_main]
//! `decode_frame` on arbitrary bytes at an arbitrary LSN, segment start and
//! payload limit: never panics; a decoded frame honours the limit and has
//! `first <= inflight_lsn <= write_lsn <= lsn`, both starts read from its
//! back fields, and re-encodes to exactly the bytes it was read from; each
//! error variant agrees with the bytes.

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tc_wal::format::{FRAME_HEADER_BYTES, FrameError, Lsn, decode_frame, encode_frame};

/// Header field offsets (`docs/formats/wal.md`), written out here so that a
/// layout change in `format.rs` alone shows up as a failure.
const WRITE_BACK_AT: usize = 16;
const INFLIGHT_BACK_AT: usize = 20;
const KIND_AT: usize = 24;
const FLAGS_AT: usize = 25;
const RESERVED_AT: usize = 26;

fn le_u32(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        bytes[at..at + 4].try_into().expect("4 bytes"),
    ))
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Take the LSN from the frame's own LSN field (bytes 8..16), so that
    /// the fuzzer gets past the LSN check at once, or use `lsn`.
    lsn_from_bytes: bool,
    lsn: u64,
    /// The segment's first LSN is `lsn - first_back` (saturating).
    first_back: u64,
    limit: u32,
    bytes: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let bytes = input.bytes;
    let lsn = match bytes.get(8..16) {
        Some(field) if input.lsn_from_bytes => {
            u64::from_le_bytes(field.try_into().expect("8 bytes"))
        }
        _ => input.lsn,
    };
    let (lsn, first) = (Lsn(lsn), Lsn(lsn.saturating_sub(input.first_back)));
    let limit = input.limit;
    match decode_frame(bytes, lsn, first, limit) {
        Ok(frame) => {
            assert_eq!(frame.lsn, lsn);
            assert_ne!(frame.kind, 0);
            assert!(
                frame.payload.len() <= limit as usize,
                "payload over the limit"
            );
            assert!(
                first <= frame.inflight_lsn
                    && frame.inflight_lsn <= frame.write_lsn
                    && frame.write_lsn <= lsn,
                "write starts out of order"
            );
            assert_eq!(frame.write_lsn, Lsn(lsn.0 - le_u32(bytes, WRITE_BACK_AT)));
            assert_eq!(
                frame.inflight_lsn,
                Lsn(lsn.0 - le_u32(bytes, INFLIGHT_BACK_AT))
            );
            assert_eq!(frame.kind, bytes[KIND_AT]);
            let total = FRAME_HEADER_BYTES + frame.payload.len();
            // No valid segment reaches 2^64 (its header is refused), so a
            // frame ending past it cannot be in one: `end_lsn` saturates.
            assert_eq!(frame.end_lsn(), Lsn(lsn.0.saturating_add(total as u64)));
            // Borrowed from the input, right after the header.
            assert_eq!(frame.payload, &bytes[FRAME_HEADER_BYTES..total]);
            let mut encoded = Vec::new();
            encode_frame(&mut encoded, &frame);
            assert_eq!(encoded[..], bytes[..total], "frame round trip");
            // Bytes after the frame do not matter; missing ones do.
            assert_eq!(decode_frame(&bytes[..total], lsn, first, limit), Ok(frame));
            assert!(matches!(
                decode_frame(&bytes[..total - 1], lsn, first, limit),
                Err(FrameError::Truncated { .. })
            ));
        }
        Err(FrameError::Truncated {
            lsn: at,
            needed,
            available,
        }) => {
            assert_eq!(at, lsn);
            assert_eq!(available, bytes.len() as u64);
            assert!(needed > available);
        }
        Err(FrameError::TooLarge { lsn: at, len, max }) => {
            assert_eq!(at, lsn);
            assert_eq!(max, limit);
            assert!(len > max);
        }
        Err(FrameError::Empty { lsn: at }) => {
            assert_eq!(at, lsn);
            assert_eq!(bytes[KIND_AT], 0, "empty frame with a non-zero kind");
        }
        Err(FrameError::LsnMismatch { lsn: at, found }) => {
            assert_eq!(at, lsn);
            assert_ne!(found, lsn);
        }
        Err(FrameError::Reserved { lsn: at }) => {
            assert_eq!(at, lsn);
            assert!(
                bytes[FLAGS_AT] != 0 || bytes[RESERVED_AT..RESERVED_AT + 2] != [0, 0],
                "reserved error with zero flags and reserved bytes"
            );
        }
        Err(FrameError::BadWriteStart {
            lsn: at,
            write_lsn,
            inflight_lsn,
            segment_first_lsn,
        }) => {
            assert_eq!(at, lsn);
            assert_eq!(segment_first_lsn, first);
            let write_back = le_u32(bytes, WRITE_BACK_AT);
            let inflight_back = le_u32(bytes, INFLIGHT_BACK_AT);
            assert_eq!(write_lsn, Lsn(lsn.0.saturating_sub(write_back)));
            assert_eq!(inflight_lsn, Lsn(lsn.0.saturating_sub(inflight_back)));
            // Some part of `first <= inflight_lsn <= write_lsn <= lsn` fails.
            assert!(
                inflight_back > lsn.0
                    || inflight_back < write_back
                    || lsn.0 - inflight_back < first.0,
                "write starts {inflight_lsn} <= {write_lsn} <= {lsn} within a segment from {first} refused"
            );
        }
        Err(FrameError::Checksum { lsn: at, .. }) => assert_eq!(at, lsn),
        Err(other) => panic!("unknown frame error {other:?}"),
    }
});
