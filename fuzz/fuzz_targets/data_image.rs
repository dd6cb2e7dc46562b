#![no_main]
//! `decode_image` (data segment image records, `docs/formats/data-segment.md`)
//! on arbitrary bytes with an arbitrary body limit: never panics; a decoded
//! record honours the limit, borrows its body from right after the header,
//! re-encodes to exactly the bytes it was read from, ignores bytes after it
//! and fails without its last byte; each error variant agrees with the bytes.
//!
//! `fix_crc` patches a correct CRC into the input before decoding, so the
//! fuzzer reaches the success path without having to find a CRC-32.

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tc_heap_store::datafile::{IMAGE_HEADER_BYTES, ImageError, decode_image, encode_image};

/// Header field offsets, written out here so that a layout change in
/// `datafile.rs` alone shows up as a failure.
const BODY_LEN_AT: usize = 0;
const CRC_AT: usize = 4;
const OBJECT_AT: usize = 8;
const HEADER_BYTES: usize = 24;

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Small limits exercise `TooLarge`; `None` means no limit.
    limit: Option<u16>,
    fix_crc: bool,
    bytes: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    assert_eq!(IMAGE_HEADER_BYTES, HEADER_BYTES);
    let limit = input.limit.map_or(u32::MAX, u32::from);
    let mut bytes = input.bytes.to_vec();
    if input.fix_crc && bytes.len() >= HEADER_BYTES {
        let body_len = le_u32(&bytes, BODY_LEN_AT) as usize;
        let end = bytes.len().min(HEADER_BYTES.saturating_add(body_len));
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytes[OBJECT_AT..HEADER_BYTES]);
        hasher.update(&bytes[HEADER_BYTES..end]);
        let crc = hasher.finalize();
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let bytes = &bytes[..];
    match decode_image(bytes, limit) {
        Ok(image) => {
            let total = HEADER_BYTES + image.body.len();
            assert_eq!(image.record_bytes, total);
            assert!(image.body.len() <= limit as usize, "body over the limit");
            assert_eq!(le_u32(bytes, BODY_LEN_AT) as usize, image.body.len());
            assert_ne!(image.object.0, 0, "null object accepted");
            assert_eq!(image.object.0, le_u64(bytes, OBJECT_AT));
            assert_eq!(image.body, &bytes[HEADER_BYTES..total]);
            let mut encoded = Vec::new();
            encode_image(&mut encoded, image.object, image.version, image.body);
            assert_eq!(encoded[..], bytes[..total], "image round trip");
            assert_eq!(decode_image(&bytes[..total], limit), Ok(image));
            assert!(matches!(
                decode_image(&bytes[..total - 1], limit),
                Err(ImageError::TruncatedHeader { .. } | ImageError::TruncatedBody { .. })
            ));
        }
        Err(ImageError::TruncatedHeader { offset, available }) => {
            assert_eq!(offset, 0);
            assert_eq!(available, bytes.len());
            assert!(bytes.len() < HEADER_BYTES);
        }
        Err(ImageError::TooLarge {
            offset,
            body_len,
            max,
        }) => {
            assert_eq!(offset, BODY_LEN_AT);
            assert_eq!(max, limit);
            assert_eq!(body_len, le_u32(bytes, BODY_LEN_AT));
            assert!(body_len > max);
        }
        Err(ImageError::NullObject { offset }) => {
            assert_eq!(offset, OBJECT_AT);
            assert_eq!(le_u64(bytes, OBJECT_AT), 0);
            assert!(le_u32(bytes, BODY_LEN_AT) <= limit);
        }
        Err(ImageError::TruncatedBody {
            offset,
            needed,
            available,
        }) => {
            assert_eq!(offset, HEADER_BYTES);
            assert_eq!(needed, le_u32(bytes, BODY_LEN_AT) as usize);
            assert_eq!(available, bytes.len() - HEADER_BYTES);
            assert!(needed > available);
            assert_ne!(le_u64(bytes, OBJECT_AT), 0);
        }
        Err(ImageError::Checksum {
            offset,
            stored,
            computed,
        }) => {
            assert_eq!(offset, CRC_AT);
            assert_eq!(stored, le_u32(bytes, CRC_AT));
            assert_ne!(stored, computed);
            assert!(!input.fix_crc, "checksum error after fixing the checksum");
        }
        Err(other) => panic!("unknown image error {other:?}"),
    }
});
