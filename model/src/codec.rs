//! Byte-level primitives shared by every format of the store: LEB128
//! varints, length-prefixed strings, little-endian fixed-width integers.
//!
//! Invariant: `Reader` never reads past its slice, never panics and never
//! allocates more than the bytes that are actually left could hold; every
//! failure is a `DecodeError` naming the offset and what was expected.

use std::fmt;

/// Why bytes failed to decode, and where (offset within the decoded slice).
/// Boxed, so the `Result`s of the small decoders on hot paths stay two
/// words (returned in registers) instead of going through memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {}: {}", .0.offset, .0.what)]
pub struct DecodeError(Box<DecodeErrorAt>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct DecodeErrorAt {
    offset: usize,
    what: String,
}

impl DecodeError {
    #[cold]
    pub fn new(offset: usize, what: impl Into<String>) -> DecodeError {
        DecodeError(Box::new(DecodeErrorAt {
            offset,
            what: what.into(),
        }))
    }

    /// Byte offset of the problem within the decoded slice.
    pub fn offset(&self) -> usize {
        self.0.offset
    }

    /// What was wrong there.
    pub fn what(&self) -> &str {
        &self.0.what
    }

    /// The same problem, `by` bytes further on (the slice decoded was part
    /// of a larger one).
    pub fn shifted(mut self, by: usize) -> DecodeError {
        self.0.offset += by;
        self
    }
}

/// Appends encoded values to a byte vector.
#[derive(Default, Debug)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(bytes: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(bytes),
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16_le(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32_le(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64_le(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Unsigned LEB128: 7 bits per byte, low bits first, at most 10 bytes.
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// Signed values as zigzag varints, so small negatives stay short.
    #[inline]
    pub fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// Writes what `body` writes, preceded by its length as a varint (one
    /// byte reserved up front, widened afterwards if the body is long).
    pub fn length_prefixed(&mut self, body: impl FnOnce(&mut Writer)) {
        let at = self.buf.len();
        self.buf.push(0);
        body(self);
        let len = self.buf.len() - at - 1;
        if len < 0x80 {
            self.buf[at] = len as u8;
        } else {
            let mut prefix = Writer::new();
            prefix.varint(len as u64);
            self.buf.splice(at..at + 1, prefix.buf);
        }
    }
}

/// Reads encoded values from a byte slice, tracking the offset for errors.
#[derive(Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reader at {} of {}", self.pos, self.bytes.len())
    }
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// A reader of `bytes` at `pos` (which may be anywhere: reads past the
    /// end fail as usual).
    pub(crate) fn at(bytes: &'a [u8], pos: usize) -> Self {
        Reader { bytes, pos }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// An error at the current offset.
    #[cold]
    pub fn error(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::new(self.pos, what)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self, what: &str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.error(format!("{} trailing bytes after {what}", self.remaining())))
        }
    }

    #[inline]
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.short(n, what));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    #[cold]
    fn short(&self, n: usize, what: &str) -> DecodeError {
        self.error(format!(
            "{what}: needs {n} bytes, only {} left",
            self.remaining()
        ))
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    #[inline]
    pub fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&byte) => {
                self.pos += 1;
                Ok(byte)
            }
            None => Err(self.short(1, what)),
        }
    }

    pub fn u16_le(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub fn u32_le(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64_le(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Unsigned LEB128 (see `Writer::varint`). One-byte values, the common
    /// case, take the inlined path.
    #[inline]
    pub fn varint(&mut self, what: &str) -> Result<u64, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.varint_long(what),
        }
    }

    fn varint_long(&mut self, what: &str) -> Result<u64, DecodeError> {
        if let Some(bytes) = self.bytes[self.pos..].first_chunk::<10>() {
            // Ten bytes are there: no bounds check per byte.
            let mut value: u64 = 0;
            for (i, &byte) in bytes.iter().enumerate() {
                value |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    if i == 9 && byte > 1 {
                        break;
                    }
                    self.pos += i + 1;
                    return Ok(value);
                }
            }
        }
        self.varint_checked(what)
    }

    /// `varint` byte by byte, near the end of the input or on an error.
    fn varint_checked(&mut self, what: &str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.u8(what)?;
            if shift == 63 && byte > 1 {
                self.pos = start;
                return Err(self.error(format!("{what}: varint overflows 64 bits")));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.pos = start;
        Err(self.error(format!("{what}: varint longer than 10 bytes")))
    }

    /// A varint that must fit `max`.
    #[inline]
    pub fn varint_max(&mut self, max: u64, what: &str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let v = self.varint(what)?;
        if v > max {
            self.pos = start;
            return Err(self.error(format!("{what}: {v} exceeds the limit {max}")));
        }
        Ok(v)
    }

    #[inline]
    pub fn zigzag(&mut self, what: &str) -> Result<i64, DecodeError> {
        let v = self.varint(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of items each at least `min_item_bytes` long: checked against
    /// the bytes left, so a forged count can never cause a large allocation.
    #[inline]
    pub fn count(&mut self, min_item_bytes: usize, what: &str) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.varint(what)?;
        let fits = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > fits {
            self.pos = start;
            return Err(self.error(format!(
                "{what}: count {n} cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        let len = self.count(1, what)?;
        self.take(len, what)
    }

    pub fn str(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map_err(|_| DecodeError::new(start, format!("{what}: not valid UTF-8")))
    }
}

// Fixed-layout headers (object table, data segments): fields at known
// offsets, little-endian.

pub fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

pub fn put(out: &mut [u8], offset: usize, bytes: &[u8]) {
    out[offset..offset + bytes.len()].copy_from_slice(bytes);
}

pub fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(read_array(bytes, offset))
}

pub fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(read_array(bytes, offset))
}

pub fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(read_array(bytes, offset))
}

/// `N` bytes at `offset`, or zeroes if they are not all there.
pub fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    bytes
        .get(offset..)
        .and_then(|rest| rest.first_chunk::<N>())
        .copied()
        .unwrap_or([0u8; N])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut w = Writer::new();
            w.varint(v);
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.varint("v").unwrap(), v);
            assert!(r.is_empty());
        }
        for v in [0, -1, 1, i64::MIN, i64::MAX] {
            let mut w = Writer::new();
            w.zigzag(v);
            assert_eq!(Reader::new(&w.buf).zigzag("v").unwrap(), v);
        }
    }

    #[test]
    fn a_length_prefix_says_how_long_the_body_is() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 20_000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut w = Writer::new();
            w.u8(0xAA);
            w.length_prefixed(|w| w.buf.extend_from_slice(&body));
            w.u8(0xBB);
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.u8("before").unwrap(), 0xAA);
            assert_eq!(r.varint("length").unwrap(), len as u64);
            assert_eq!(r.take(len, "body").unwrap(), &body[..], "{len} B");
            assert_eq!(r.u8("after").unwrap(), 0xBB);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn overlong_and_overflowing_varints_are_errors() {
        assert!(Reader::new(&[0xff; 11]).varint("v").is_err());
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert!(Reader::new(&too_big).varint("v").is_err());
    }

    /// `varint` (whose path for ten bytes left skips the bounds checks)
    /// against the byte-by-byte `varint_checked`: the same value or error
    /// and the same position, for encodings of every length (canonical or
    /// padded with a 0x80 group), overflowing tenth bytes, and random
    /// bytes, with ten or more bytes left and with fewer.
    #[test]
    fn varint_agrees_with_the_byte_by_byte_decoder() {
        let check = |bytes: &[u8]| {
            let mut fast = Reader::new(bytes);
            let mut slow = Reader::new(bytes);
            let fast_value = fast.varint("v").map_err(|e| e.to_string());
            let slow_value = slow.varint_checked("v").map_err(|e| e.to_string());
            assert_eq!(fast_value, slow_value, "{bytes:02x?}");
            assert_eq!(fast.position(), slow.position(), "{bytes:02x?}");
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for bits in 0..64 {
            for _ in 0..64 {
                // Up to `bits + 1` significant bits: every encoded length.
                let value = next() >> (63 - bits);
                let mut w = Writer::new();
                w.varint(value);
                let canonical = w.buf.clone();
                w.buf.extend((0..12).map(|_| next() as u8));
                check(&w.buf);
                check(&canonical);
                // The same value padded with a 0x80 group: longer, still accepted.
                if canonical.len() < 10 {
                    let mut padded = canonical.clone();
                    *padded.last_mut().expect("a byte") |= 0x80;
                    padded.push(0);
                    padded.extend([0xaa; 10]);
                    check(&padded);
                }
            }
        }
        for tenth in 0..=255u8 {
            let mut bytes = vec![0xff; 9];
            bytes.extend([tenth, 0x55, 0x55]);
            check(&bytes);
        }
        // Random bytes, three in four continuing, so most run long.
        for len in 0..24 {
            for _ in 0..2000 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| match next() & 3 {
                        0 => next() as u8 & 0x7f,
                        _ => next() as u8 | 0x80,
                    })
                    .collect();
                check(&bytes);
            }
        }
    }

    #[test]
    fn a_forged_count_is_refused_before_allocating() {
        let mut w = Writer::new();
        w.varint(u64::MAX / 2);
        w.u8(0);
        let err = Reader::new(&w.buf).count(1, "items").unwrap_err();
        assert!(err.what().contains("cannot fit"), "{err}");
    }
}
