//! Data segments: append-only files of whole object images
//! (`docs/formats/data-segment.md`).
//!
//! Owns: the byte layout of segment headers and image records, their pure
//! encoders and decoders (`encode_image`, `decode_image`, fuzzed), file
//! names, creating a segment (`SegmentWriter`), reading one image by its
//! location, scanning a whole segment, deleting a segment (`DataFiles`).
//! Not: what an image body means (the store's object encoding), which
//! images are live (the object table, the cleaner), when to start a new
//! segment (the checkpoint).
//!
//! Invariants:
//! - A segment file exists under its final name only with a complete,
//!   synced header (it is written as `.partial` and renamed).
//! - Segments are never modified in place: records are only appended, at
//!   the true file offsets `SegmentWriter::append` returns, each ending at or
//!   below `u32::MAX`.
//! - A record is read back only after `SegmentWriter::sync` returned (the
//!   store references only synced images).
//! - Decoders never panic, never index out of bounds and never allocate
//!   from a length field before checking it against the bytes available
//!   and the limit. Every failure on disk is a `StoreError::Corrupt` naming
//!   the file and the offset of the record (or header field) at fault.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::codec::{is_zero, put, read_u16, read_u32, read_u64};
use crate::error::{Result, StoreError};
use crate::model::ObjectId;
use tc_wal::Lsn;

/// Segment header v1, little-endian, 32 bytes:
/// `|0 magic u32 = "TCDS"|4 version u16 = 1|6 flags u16 = 0|`
/// `|8 segment_id u32|12 reserved [u8; 16] = 0|28 crc32 u32 (of 0..28)|`
pub const SEGMENT_HEADER_BYTES: usize = 32;
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"TCDS");
pub const SEGMENT_VERSION: u16 = 1;
const SEG_MAGIC_OFFSET: usize = 0;
const SEG_VERSION_OFFSET: usize = SEG_MAGIC_OFFSET + size_of::<u32>();
const SEG_FLAGS_OFFSET: usize = SEG_VERSION_OFFSET + size_of::<u16>();
const SEG_ID_OFFSET: usize = SEG_FLAGS_OFFSET + size_of::<u16>();
const SEG_RESERVED_OFFSET: usize = SEG_ID_OFFSET + size_of::<u32>();
const SEG_CRC_OFFSET: usize = SEG_RESERVED_OFFSET + 16;
const _: () = assert!(SEG_RESERVED_OFFSET == 12);
const _: () = assert!(SEGMENT_HEADER_BYTES == SEG_CRC_OFFSET + size_of::<u32>());

/// Image record v1, little-endian, 24-byte header then `body_len` bytes:
/// `|0 body_len u32|4 crc32 u32|8 object_id u64 (non-zero)|16 version_lsn u64|`
/// `|24 body|`
/// The CRC covers header bytes 8..24, then the body.
pub const IMAGE_HEADER_BYTES: usize = 24;
const IMAGE_BODY_LEN_OFFSET: usize = 0;
const IMAGE_CRC_OFFSET: usize = IMAGE_BODY_LEN_OFFSET + size_of::<u32>();
const IMAGE_OBJECT_OFFSET: usize = IMAGE_CRC_OFFSET + size_of::<u32>();
const IMAGE_VERSION_OFFSET: usize = IMAGE_OBJECT_OFFSET + size_of::<u64>();
const _: () = assert!(IMAGE_HEADER_BYTES == IMAGE_VERSION_OFFSET + size_of::<u64>());

/// The largest body a record can have: the record must end at a u32 offset
/// after the segment header.
pub const IMAGE_BODY_BYTES_MAX: u32 = u32::MAX - (SEGMENT_HEADER_BYTES + IMAGE_HEADER_BYTES) as u32;

/// `SegmentWriter` writes its buffer out once it holds this many bytes (so
/// it holds at most this plus one record).
pub const WRITE_BUFFER_BYTES_MAX: usize = 1 << 20;

/// `DataFiles` keeps at most this many segment files open for reads.
pub const OPEN_SEGMENTS_MAX: usize = 128;

const SEGMENT_SUFFIX: &str = ".seg";
const PARTIAL_SUFFIX: &str = ".partial";
const SCAN_BUFFER_BYTES: usize = 64 * 1024;

/// `{segment_id:08x}.seg`
pub fn segment_file_name(segment_id: u32) -> String {
    format!("{segment_id:08x}{SEGMENT_SUFFIX}")
}

/// The id in a segment file name: exactly 8 lowercase hex digits, not 0.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 8 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().filter(|&id| id != 0)
}

/// The bytes a record with `body_bytes` of body occupies.
pub fn image_record_bytes(body_bytes: usize) -> usize {
    IMAGE_HEADER_BYTES + body_bytes
}

/// Why a segment header is not valid. `offset()` is the offset of the
/// field at fault in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentHeaderError {
    #[error("segment header truncated: need {SEGMENT_HEADER_BYTES} B, have {available}")]
    Truncated { available: usize },
    #[error("bad segment magic {found:#010x} (expected {SEGMENT_MAGIC:#010x}, \"TCDS\")")]
    BadMagic { found: u32 },
    #[error("segment header checksum: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported data segment version {found} (this build reads {SEGMENT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("segment header flags {found:#06x}, expected 0")]
    Flags { found: u16 },
    #[error("segment header has non-zero reserved bytes")]
    Reserved,
    #[error("segment header says segment {found:#x}, the file name says {expected:#x}")]
    WrongId { found: u32, expected: u32 },
}

impl SegmentHeaderError {
    /// Offset in the file of the field at fault.
    pub fn offset(&self) -> u64 {
        let at = match self {
            SegmentHeaderError::Truncated { .. } | SegmentHeaderError::BadMagic { .. } => {
                SEG_MAGIC_OFFSET
            }
            SegmentHeaderError::Checksum { .. } => SEG_CRC_OFFSET,
            SegmentHeaderError::UnsupportedVersion { .. } => SEG_VERSION_OFFSET,
            SegmentHeaderError::Flags { .. } => SEG_FLAGS_OFFSET,
            SegmentHeaderError::Reserved => SEG_RESERVED_OFFSET,
            SegmentHeaderError::WrongId { .. } => SEG_ID_OFFSET,
        };
        at as u64
    }
}

pub fn encode_segment_header(segment_id: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    put(&mut out, SEG_MAGIC_OFFSET, &SEGMENT_MAGIC.to_le_bytes());
    put(&mut out, SEG_VERSION_OFFSET, &SEGMENT_VERSION.to_le_bytes());
    put(&mut out, SEG_ID_OFFSET, &segment_id.to_le_bytes());
    let crc = crc32fast::hash(out.get(..SEG_CRC_OFFSET).unwrap_or_default());
    put(&mut out, SEG_CRC_OFFSET, &crc.to_le_bytes());
    out
}

/// Checks the segment header at the start of `bytes` (magic, CRC, version,
/// flags, reserved, in that order) and returns the segment id it names.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u32, SegmentHeaderError> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(SegmentHeaderError::Truncated {
            available: bytes.len(),
        });
    };
    let magic = read_u32(header, SEG_MAGIC_OFFSET);
    if magic != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::BadMagic { found: magic });
    }
    let stored = read_u32(header, SEG_CRC_OFFSET);
    let computed = crc32fast::hash(header.get(..SEG_CRC_OFFSET).unwrap_or_default());
    if stored != computed {
        return Err(SegmentHeaderError::Checksum { stored, computed });
    }
    let version = read_u16(header, SEG_VERSION_OFFSET);
    if version != SEGMENT_VERSION {
        return Err(SegmentHeaderError::UnsupportedVersion { found: version });
    }
    let flags = read_u16(header, SEG_FLAGS_OFFSET);
    if flags != 0 {
        return Err(SegmentHeaderError::Flags { found: flags });
    }
    if !is_zero(
        header
            .get(SEG_RESERVED_OFFSET..SEG_CRC_OFFSET)
            .unwrap_or_default(),
    ) {
        return Err(SegmentHeaderError::Reserved);
    }
    Ok(read_u32(header, SEG_ID_OFFSET))
}

/// Why bytes are not a valid image record. `offset` is where in the
/// decoded bytes (0 = start of the record) the fault lies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error(
        "image header truncated at byte {offset}: need {IMAGE_HEADER_BYTES} B, have {available}"
    )]
    TruncatedHeader { offset: usize, available: usize },
    #[error("image at byte {offset} claims a body of {body_len} B, over the limit of {max} B")]
    TooLarge {
        offset: usize,
        body_len: u32,
        max: u32,
    },
    #[error("image at byte {offset} names object 0 (null)")]
    NullObject { offset: usize },
    #[error("image body truncated at byte {offset}: need {needed} B, have {available}")]
    TruncatedBody {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("image checksum at byte {offset}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        offset: usize,
        stored: u32,
        computed: u32,
    },
}

/// A decoded record borrowing its body from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRef<'a> {
    pub object: ObjectId,
    pub version: Lsn,
    pub body: &'a [u8],
    /// `IMAGE_HEADER_BYTES + body.len()`: the bytes the record occupies.
    pub record_bytes: usize,
}

/// An image read from a segment, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedImage {
    pub object: ObjectId,
    pub version: Lsn,
    pub body: Vec<u8>,
}

/// Appends the record of `object` at `version` with `body` to `out`.
/// Panics if `object` is null or the body is over `IMAGE_BODY_BYTES_MAX`.
pub fn encode_image(out: &mut Vec<u8>, object: ObjectId, version: Lsn, body: &[u8]) {
    assert!(!object.is_null(), "an image of the null object");
    assert!(
        body.len() <= IMAGE_BODY_BYTES_MAX as usize,
        "image body of {} B over the limit",
        body.len()
    );
    let mut header = [0u8; IMAGE_HEADER_BYTES];
    put(
        &mut header,
        IMAGE_BODY_LEN_OFFSET,
        &(body.len() as u32).to_le_bytes(),
    );
    put(&mut header, IMAGE_OBJECT_OFFSET, &object.0.to_le_bytes());
    put(&mut header, IMAGE_VERSION_OFFSET, &version.0.to_le_bytes());
    let crc = image_crc(&header, body);
    put(&mut header, IMAGE_CRC_OFFSET, &crc.to_le_bytes());
    out.reserve(image_record_bytes(body.len()));
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
}

/// The fields of a record header, checked except for the CRC.
#[derive(Debug, Clone, Copy)]
struct ImageHeader {
    body_len: u32,
    crc: u32,
    object: ObjectId,
    version: Lsn,
}

/// Checks the fields of a record header that need no body: the body length
/// against `body_bytes_max`, then the object id.
fn decode_image_header(
    header: &[u8; IMAGE_HEADER_BYTES],
    body_bytes_max: u32,
) -> Result<ImageHeader, ImageError> {
    let body_len = read_u32(header, IMAGE_BODY_LEN_OFFSET);
    if body_len > body_bytes_max {
        return Err(ImageError::TooLarge {
            offset: IMAGE_BODY_LEN_OFFSET,
            body_len,
            max: body_bytes_max,
        });
    }
    let object = ObjectId(read_u64(header, IMAGE_OBJECT_OFFSET));
    if object.is_null() {
        return Err(ImageError::NullObject {
            offset: IMAGE_OBJECT_OFFSET,
        });
    }
    Ok(ImageHeader {
        body_len,
        crc: read_u32(header, IMAGE_CRC_OFFSET),
        object,
        version: Lsn(read_u64(header, IMAGE_VERSION_OFFSET)),
    })
}

/// Decodes the record at the start of `bytes` (bytes after it are
/// ignored). Checks, in order: the header is there, `body_len <=
/// body_bytes_max`, the object id is not 0, the body is there, the CRC.
pub fn decode_image(bytes: &[u8], body_bytes_max: u32) -> Result<ImageRef<'_>, ImageError> {
    let Some(header) = bytes.first_chunk::<IMAGE_HEADER_BYTES>() else {
        return Err(ImageError::TruncatedHeader {
            offset: 0,
            available: bytes.len(),
        });
    };
    let fields = decode_image_header(header, body_bytes_max)?;
    // body_len <= body_bytes_max <= u32::MAX, so this cannot overflow on a
    // 64-bit target; checked anyway for 32-bit ones.
    let record_bytes = IMAGE_HEADER_BYTES.checked_add(fields.body_len as usize);
    let body = record_bytes.and_then(|end| bytes.get(IMAGE_HEADER_BYTES..end));
    let (Some(record_bytes), Some(body)) = (record_bytes, body) else {
        return Err(ImageError::TruncatedBody {
            offset: IMAGE_HEADER_BYTES,
            needed: fields.body_len as usize,
            available: bytes.len() - IMAGE_HEADER_BYTES,
        });
    };
    let computed = image_crc(header, body);
    if fields.crc != computed {
        return Err(ImageError::Checksum {
            offset: IMAGE_CRC_OFFSET,
            stored: fields.crc,
            computed,
        });
    }
    Ok(ImageRef {
        object: fields.object,
        version: fields.version,
        body,
        record_bytes,
    })
}

fn image_crc(header: &[u8; IMAGE_HEADER_BYTES], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(
        header
            .get(IMAGE_OBJECT_OFFSET..IMAGE_HEADER_BYTES)
            .unwrap_or_default(),
    );
    hasher.update(body);
    hasher.finalize()
}

/// Appends images to one new segment file.
///
/// `append` only buffers (writing the buffer out whenever it reaches
/// `WRITE_BUFFER_BYTES_MAX`); `sync` writes the rest and `fdatasync`s. An
/// image may be read back, or referenced from the object table, only after
/// a `sync` that followed its `append` returned. Nothing is written on
/// drop: images not synced are lost, as in a crash.
///
/// After a failed write or sync every later call fails with the same error
/// (a failed fsync is never retried).
#[derive(Debug)]
pub struct SegmentWriter {
    path: PathBuf,
    file: File,
    segment_id: u32,
    /// Bytes in the file, header included.
    written_bytes: u64,
    /// Bytes known durable: `<= written_bytes`.
    synced_bytes: u64,
    buffer: Vec<u8>,
    failed: Option<StoreError>,
}

impl SegmentWriter {
    /// Creates `dir/{segment_id:08x}.seg` holding just its header: written
    /// to a `.partial` file, synced, renamed into place, directory synced.
    /// Fails (`AlreadyExists`) if the segment exists. Panics if
    /// `segment_id` is 0.
    pub fn create(dir: impl AsRef<Path>, segment_id: u32) -> Result<SegmentWriter> {
        assert!(segment_id != 0, "segment ids start at 1");
        let dir = dir.as_ref();
        let path = dir.join(segment_file_name(segment_id));
        match fs::symlink_metadata(&path) {
            Ok(_) => {
                return Err(StoreError::io(
                    "create segment",
                    &path,
                    io::Error::new(io::ErrorKind::AlreadyExists, "the segment already exists"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("stat", &path, e)),
        }
        let partial = dir.join(format!("{}{PARTIAL_SUFFIX}", segment_file_name(segment_id)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| StoreError::io("create", &partial, e))?;
        file.write_all_at(&encode_segment_header(segment_id), 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io("write segment header", &partial, e))?;
        fs::rename(&partial, &path).map_err(|e| StoreError::io("rename", &partial, e))?;
        sync_dir(dir)?;
        Ok(SegmentWriter {
            path,
            file,
            segment_id,
            written_bytes: SEGMENT_HEADER_BYTES as u64,
            synced_bytes: SEGMENT_HEADER_BYTES as u64,
            buffer: Vec::new(),
            failed: None,
        })
    }

    pub fn segment_id(&self) -> u32 {
        self.segment_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment's length once everything appended is written: the offset
    /// the next record will get.
    pub fn len_bytes(&self) -> u64 {
        self.written_bytes + self.buffer.len() as u64
    }

    /// Bytes made durable by the last successful `sync` (header included).
    pub fn synced_bytes(&self) -> u64 {
        self.synced_bytes
    }

    /// Whether a record with `body_bytes` of body still fits this segment
    /// (records end at or below offset `u32::MAX`).
    pub fn fits(&self, body_bytes: usize) -> bool {
        let end = self
            .len_bytes()
            .checked_add(image_record_bytes(body_bytes) as u64);
        end.is_some_and(|end| end <= u64::from(u32::MAX))
    }

    /// Buffers the record of `object` at `version`; returns its file offset
    /// and its length in bytes (what the object table records).
    ///
    /// Panics if `object` is null or the record does not `fit`.
    pub fn append(&mut self, object: ObjectId, version: Lsn, body: &[u8]) -> Result<(u32, u32)> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        assert!(
            self.fits(body.len()),
            "segment {} is full: {} B plus a record of {} B",
            self.segment_id,
            self.len_bytes(),
            image_record_bytes(body.len())
        );
        let offset = self.len_bytes();
        let before = self.buffer.len();
        encode_image(&mut self.buffer, object, version, body);
        let record_bytes = self.buffer.len() - before;
        assert!(record_bytes == image_record_bytes(body.len()));
        if self.buffer.len() >= WRITE_BUFFER_BYTES_MAX {
            self.write_out()?;
        }
        Ok((offset as u32, record_bytes as u32))
    }

    /// Writes every buffered record, then `fdatasync`s the file.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        self.write_out()?;
        if let Err(e) = self.file.sync_data() {
            return Err(self.fail(StoreError::io("fdatasync", &self.path, e)));
        }
        self.synced_bytes = self.written_bytes;
        Ok(())
    }

    fn write_out(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all_at(&self.buffer, self.written_bytes) {
            return Err(self.fail(StoreError::io("write", &self.path, e)));
        }
        self.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        if self.buffer.capacity() > WRITE_BUFFER_BYTES_MAX {
            // One oversized record went through; do not keep its memory.
            self.buffer.shrink_to(WRITE_BUFFER_BYTES_MAX);
        }
        Ok(())
    }

    fn fail(&mut self, error: StoreError) -> StoreError {
        self.failed = Some(error.clone());
        error
    }
}

/// One image found by `SegmentScanner`, verified, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedImage {
    pub offset: u32,
    pub record_bytes: u32,
    pub object: ObjectId,
    pub version: Lsn,
    pub body: Vec<u8>,
}

/// How a scan of a segment ended (when it did not end in corruption).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// The last record ends exactly at the end of the file.
    Clean { file_len: u64 },
    /// At `offset` the bytes are not a valid record, in a way an unfinished
    /// append can leave behind: the bad record runs past the end of the
    /// file, or only zero bytes follow it (a file extended by a crash
    /// before its data reached the disk). This is what a crash can produce,
    /// not proof of one: the store must treat it as corruption if the
    /// segment was sealed or an object table entry points at or past
    /// `offset`.
    Torn {
        offset: u64,
        file_len: u64,
        cause: ImageError,
    },
}

/// Reads a segment from its header to its end, one record at a time,
/// verifying each. Holds one record's body at a time (a body is allocated
/// only after its length was checked against the limit and the file).
///
/// Yields `Ok(image)` per valid record; then `None`, after which `end()`
/// says how the segment ended; or one `Err(StoreError::Corrupt)` naming
/// the file and the offset of the first bad record that is not a torn
/// tail (`ScanEnd::Torn`), then `None`.
///
/// The file's length is taken when the scan starts; scan the segment a
/// writer is appending to only between its syncs, or a record being
/// written may show up as a torn tail.
#[derive(Debug)]
pub struct SegmentScanner {
    path: PathBuf,
    reader: BufReader<io::Take<File>>,
    position: u64,
    file_len: u64,
    body_bytes_max: u32,
    end: Option<ScanEnd>,
    failed: bool,
}

impl SegmentScanner {
    /// How the scan ended; `None` until the iterator has returned `None`,
    /// and after corruption.
    pub fn end(&self) -> Option<&ScanEnd> {
        self.end.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn step(&mut self) -> Result<Option<ScannedImage>> {
        let offset = self.position;
        let left = self.file_len - offset;
        if left == 0 {
            self.end = Some(ScanEnd::Clean {
                file_len: self.file_len,
            });
            return Ok(None);
        }
        if left < IMAGE_HEADER_BYTES as u64 {
            let cause = ImageError::TruncatedHeader {
                offset: 0,
                available: left as usize,
            };
            return self.damaged(offset, u64::MAX, cause);
        }
        let mut header = [0u8; IMAGE_HEADER_BYTES];
        self.reader
            .read_exact(&mut header)
            .map_err(|e| StoreError::io("read", &self.path, e))?;
        let body_len = u64::from(read_u32(&header, IMAGE_BODY_LEN_OFFSET));
        let record_end = offset + IMAGE_HEADER_BYTES as u64 + body_len;
        let fields = match decode_image_header(&header, self.body_bytes_max) {
            Ok(fields) => fields,
            Err(cause) => return self.damaged(offset, record_end, cause),
        };
        if record_end > self.file_len {
            let cause = ImageError::TruncatedBody {
                offset: IMAGE_HEADER_BYTES,
                needed: body_len as usize,
                available: (left - IMAGE_HEADER_BYTES as u64) as usize,
            };
            return self.damaged(offset, record_end, cause);
        }
        if record_end > u64::from(u32::MAX) {
            return Err(StoreError::corrupt(
                &self.path,
                Some(offset),
                format!("image record ends at {record_end}, past the 4 GiB a segment can address"),
            ));
        }
        // Within the file (checked above), so at most the file's size.
        let mut body = vec![0u8; fields.body_len as usize];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| StoreError::io("read", &self.path, e))?;
        let computed = image_crc(&header, &body);
        if computed != fields.crc {
            let cause = ImageError::Checksum {
                offset: IMAGE_CRC_OFFSET,
                stored: fields.crc,
                computed,
            };
            return self.damaged(offset, record_end, cause);
        }
        self.position = record_end;
        Ok(Some(ScannedImage {
            offset: offset as u32,
            record_bytes: (record_end - offset) as u32,
            object: fields.object,
            version: fields.version,
            body,
        }))
    }

    /// The record at `offset`, claiming to end at `claimed_end`, is bad:
    /// a torn tail if it runs past the end of the file or only zeroes
    /// follow it, else corruption.
    fn damaged(
        &mut self,
        offset: u64,
        claimed_end: u64,
        cause: ImageError,
    ) -> Result<Option<ScannedImage>> {
        let non_zero_at = if claimed_end >= self.file_len {
            None
        } else {
            first_non_zero(self.reader.get_ref().get_ref(), claimed_end, self.file_len)
                .map_err(|e| StoreError::io("read", &self.path, e))?
        };
        match non_zero_at {
            None => {
                self.end = Some(ScanEnd::Torn {
                    offset,
                    file_len: self.file_len,
                    cause,
                });
                Ok(None)
            }
            Some(at) => Err(StoreError::corrupt(
                &self.path,
                Some(offset),
                format!(
                    "image record: {cause}; data follows at offset {at}, so this is not a torn tail"
                ),
            )),
        }
    }
}

impl Iterator for SegmentScanner {
    type Item = Result<ScannedImage>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.end.is_some() {
            return None;
        }
        match self.step() {
            Ok(image) => image.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The first non-zero byte of `file` in `from..to`, if any.
fn first_non_zero(file: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    let mut buffer = vec![0u8; SCAN_BUFFER_BYTES];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(buffer.len(), |left| left.min(buffer.len()));
        let chunk = buffer.get_mut(..n).unwrap_or_default();
        file.read_exact_at(chunk, at)?;
        if let Some(i) = chunk.iter().position(|&b| b != 0) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
    Ok(None)
}

/// An open segment file, its header verified.
#[derive(Debug)]
struct SegmentFile {
    path: PathBuf,
    file: File,
    /// A length the file is known to have reached (it only grows).
    len_known: AtomicU64,
}

/// The data segments of one directory: reading images by location,
/// scanning, deleting. Shareable across threads (`&self` methods); open
/// files are cached (at most `OPEN_SEGMENTS_MAX`) behind a lock.
#[derive(Debug)]
pub struct DataFiles {
    dir: PathBuf,
    body_bytes_max: u32,
    /// Segments found by `open_dir`, created through `create_segment` or
    /// opened for reading; minus those deleted.
    segments: Mutex<BTreeSet<u32>>,
    open: RwLock<HashMap<u32, Arc<SegmentFile>>>,
}

impl DataFiles {
    /// Opens `dir`, creating it (and syncing its parent) if absent, and
    /// lists its segments. A `*.seg` file whose name is not 8 lowercase hex
    /// digits of a non-zero id is `Corrupt`. Other files (such as the
    /// `.partial` file of a segment whose creation a crash interrupted)
    /// are ignored; `SegmentWriter::create` overwrites a stale `.partial`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<DataFiles> {
        DataFiles::open_dir_with_limit(dir, IMAGE_BODY_BYTES_MAX)
    }

    /// `open_dir` with a lower limit on image bodies (checked on every
    /// read and scan).
    pub fn open_dir_with_limit(dir: impl AsRef<Path>, body_bytes_max: u32) -> Result<DataFiles> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let segments = list_segments(&dir)?;
        Ok(DataFiles {
            dir,
            body_bytes_max: body_bytes_max.min(IMAGE_BODY_BYTES_MAX),
            segments: Mutex::new(segments),
            open: RwLock::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn segment_path(&self, segment: u32) -> PathBuf {
        self.dir.join(segment_file_name(segment))
    }

    /// Known segments, in ascending order.
    pub fn segment_ids(&self) -> Vec<u32> {
        lock(&self.segments).iter().copied().collect()
    }

    /// Creates a new segment in this directory (`SegmentWriter::create`)
    /// and records it among `segment_ids`.
    pub fn create_segment(&self, segment: u32) -> Result<SegmentWriter> {
        let writer = SegmentWriter::create(&self.dir, segment)?;
        lock(&self.segments).insert(segment);
        Ok(writer)
    }

    /// Reads and verifies the image record of `length` bytes at `offset` in
    /// `segment` (as recorded in the object table): segment header, record
    /// CRC, that the record is exactly `length` bytes and holds
    /// `expected_object`. Every failure on disk is `Corrupt`, naming the
    /// segment file and the record's offset.
    pub fn read_image(
        &self,
        segment: u32,
        offset: u32,
        length: u32,
        expected_object: ObjectId,
    ) -> Result<OwnedImage> {
        let file = self.segment_file(segment)?;
        let corrupt = |what: String| StoreError::corrupt(&file.path, Some(u64::from(offset)), what);
        if (offset as usize) < SEGMENT_HEADER_BYTES {
            return Err(corrupt(format!(
                "image offset {offset} lies inside the {SEGMENT_HEADER_BYTES}-byte segment header"
            )));
        }
        let body_len = length.checked_sub(IMAGE_HEADER_BYTES as u32);
        if body_len.is_none_or(|body_len| body_len > self.body_bytes_max) {
            return Err(corrupt(format!(
                "image length {length} B out of range ({IMAGE_HEADER_BYTES}..={} B)",
                IMAGE_HEADER_BYTES as u64 + u64::from(self.body_bytes_max)
            )));
        }
        let end = u64::from(offset) + u64::from(length);
        if end > file.len_known.load(Ordering::Acquire) {
            let len = file
                .file
                .metadata()
                .map_err(|e| StoreError::io("stat", &file.path, e))?
                .len();
            file.len_known.fetch_max(len, Ordering::AcqRel);
            if end > len {
                return Err(corrupt(format!(
                    "image of {length} B runs past the end of the file ({len} B)"
                )));
            }
        }
        let mut record = vec![0u8; length as usize];
        file.file
            .read_exact_at(&mut record, u64::from(offset))
            .map_err(|e| StoreError::io("read", &file.path, e))?;
        let image = decode_image(&record, self.body_bytes_max)
            .map_err(|e| corrupt(format!("image record: {e}")))?;
        if image.record_bytes != length as usize {
            return Err(corrupt(format!(
                "image record is {} B, its location says {length} B",
                image.record_bytes
            )));
        }
        if image.object != expected_object {
            return Err(corrupt(format!(
                "image record holds object {}, expected {expected_object}",
                image.object
            )));
        }
        let (object, version) = (image.object, image.version);
        record.drain(..IMAGE_HEADER_BYTES);
        Ok(OwnedImage {
            object,
            version,
            body: record,
        })
    }

    /// Starts a scan of `segment` (see `SegmentScanner`), after verifying
    /// its header.
    pub fn scan(&self, segment: u32) -> Result<SegmentScanner> {
        let path = self.segment_path(segment);
        let mut file = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
        let file_len = check_segment_header(&path, &file, segment)?;
        file.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES as u64))
            .map_err(|e| StoreError::io("seek", &path, e))?;
        let records = file.take(file_len - SEGMENT_HEADER_BYTES as u64);
        Ok(SegmentScanner {
            path,
            reader: BufReader::with_capacity(SCAN_BUFFER_BYTES, records),
            position: SEGMENT_HEADER_BYTES as u64,
            file_len,
            body_bytes_max: self.body_bytes_max,
            end: None,
            failed: false,
        })
    }

    /// Every record of `segment` and how the scan ended: `scan`, collected.
    /// Stops at the first corruption.
    pub fn scan_all(&self, segment: u32) -> Result<(Vec<ScannedImage>, ScanEnd)> {
        let mut scanner = self.scan(segment)?;
        let images = scanner.by_ref().collect::<Result<Vec<_>>>()?;
        let end = scanner
            .end
            .take()
            .expect("a scan that returned no error has an end");
        Ok((images, end))
    }

    /// Lists the directory again, so that `segment_ids` includes segments
    /// created with `SegmentWriter::create` directly and drops segments
    /// whose files are gone. Same name rules as `open_dir`.
    pub fn refresh(&self) -> Result<()> {
        let found = list_segments(&self.dir)?;
        *lock(&self.segments) = found;
        Ok(())
    }

    /// Removes `segment`'s file and syncs the directory.
    pub fn delete(&self, segment: u32) -> Result<()> {
        write_lock(&self.open).remove(&segment);
        let path = self.segment_path(segment);
        fs::remove_file(&path).map_err(|e| StoreError::io("delete", &path, e))?;
        // Again: a reader may have cached the file between the two steps.
        write_lock(&self.open).remove(&segment);
        lock(&self.segments).remove(&segment);
        sync_dir(&self.dir)
    }

    /// The current length of `segment`'s file in bytes.
    pub fn file_len(&self, segment: u32) -> Result<u64> {
        let path = self.segment_path(segment);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| StoreError::io("stat", &path, e))
    }

    fn segment_file(&self, segment: u32) -> Result<Arc<SegmentFile>> {
        if let Some(file) = read_lock(&self.open).get(&segment) {
            return Ok(Arc::clone(file));
        }
        let path = self.segment_path(segment);
        let file = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
        let len = check_segment_header(&path, &file, segment)?;
        let file = Arc::new(SegmentFile {
            path,
            file,
            len_known: AtomicU64::new(len),
        });
        let mut open = write_lock(&self.open);
        if open.len() >= OPEN_SEGMENTS_MAX {
            // Any victim will do: readers holding it keep their Arc.
            if let Some(victim) = open.keys().next().copied() {
                open.remove(&victim);
            }
        }
        let file = Arc::clone(open.entry(segment).or_insert(file));
        drop(open);
        lock(&self.segments).insert(segment);
        Ok(file)
    }
}

/// The ids of the `*.seg` files in `dir`.
fn list_segments(dir: &Path) -> Result<BTreeSet<u32>> {
    let mut segments = BTreeSet::new();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        let Some(id) = parse_segment_file_name(&name) else {
            return Err(StoreError::corrupt(
                entry.path(),
                None,
                "a segment file name must be 8 lowercase hex digits of a non-zero id, then .seg",
            ));
        };
        segments.insert(id);
    }
    Ok(segments)
}

/// Verifies the header of an open segment file against the id its name
/// gives; returns the file's length.
fn check_segment_header(path: &Path, file: &File, segment: u32) -> Result<u64> {
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?
        .len();
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let available =
        usize::try_from(len).map_or(SEGMENT_HEADER_BYTES, |l| l.min(SEGMENT_HEADER_BYTES));
    let head = header.get_mut(..available).unwrap_or_default();
    file.read_exact_at(head, 0)
        .map_err(|e| StoreError::io("read segment header", path, e))?;
    let corrupt =
        |e: SegmentHeaderError| StoreError::corrupt(path, Some(e.offset()), e.to_string());
    let found =
        decode_segment_header(header.get(..available).unwrap_or_default()).map_err(corrupt)?;
    if found != segment {
        return Err(corrupt(SegmentHeaderError::WrongId {
            found,
            expected: segment,
        }));
    }
    Ok(len)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync of directory", dir, e))
}

/// The lock's data even if a panicking thread poisoned it: every critical
/// section here leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(object: u64, version: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_image(&mut out, ObjectId(object), Lsn(version), body);
        out
    }

    #[test]
    fn file_names_round_trip_and_reject_near_misses() {
        assert_eq!(segment_file_name(1), "00000001.seg");
        assert_eq!(segment_file_name(0xdead_beef), "deadbeef.seg");
        assert_eq!(parse_segment_file_name("deadbeef.seg"), Some(0xdead_beef));
        for bad in [
            "00000000.seg",
            "DEADBEEF.seg",
            "0000001.seg",
            "000000001.seg",
            "0000000g.seg",
            "+0000001.seg",
            "00000001.seg.partial",
            "00000001",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn segment_header_round_trips_and_names_the_bad_field() {
        let header = encode_segment_header(42);
        assert_eq!(decode_segment_header(&header), Ok(42));
        let mut bad = header;
        bad[9] ^= 1;
        let err = decode_segment_header(&bad).expect_err("id flipped");
        assert!(matches!(err, SegmentHeaderError::Checksum { .. }));
        assert_eq!(err.offset(), 28);
        let mut v2 = header;
        v2[4] = 2;
        let crc = crc32fast::hash(&v2[..28]);
        v2[28..].copy_from_slice(&crc.to_le_bytes());
        let err = decode_segment_header(&v2).expect_err("version 2");
        assert_eq!(err, SegmentHeaderError::UnsupportedVersion { found: 2 });
        assert_eq!(err.offset(), 4);
        assert_eq!(
            decode_segment_header(&header[..31]),
            Err(SegmentHeaderError::Truncated { available: 31 })
        );
    }

    #[test]
    fn image_round_trips_and_ignores_trailing_bytes() {
        let mut bytes = record(7, 99, b"hello");
        bytes.extend_from_slice(b"trailing");
        let image = decode_image(&bytes, 1024).expect("valid");
        assert_eq!(image.object, ObjectId(7));
        assert_eq!(image.version, Lsn(99));
        assert_eq!(image.body, b"hello");
        assert_eq!(image.record_bytes, 24 + 5);
        let empty = record(1, 0, b"");
        assert_eq!(decode_image(&empty, 0).expect("empty body").body, b"");
    }

    #[test]
    fn image_errors_say_what_and_where() {
        let bytes = record(7, 99, b"hello");
        assert_eq!(
            decode_image(&bytes[..23], 1024),
            Err(ImageError::TruncatedHeader {
                offset: 0,
                available: 23
            })
        );
        assert_eq!(
            decode_image(&bytes, 4),
            Err(ImageError::TooLarge {
                offset: 0,
                body_len: 5,
                max: 4
            })
        );
        assert_eq!(
            decode_image(&bytes[..28], 1024),
            Err(ImageError::TruncatedBody {
                offset: 24,
                needed: 5,
                available: 4
            })
        );
        let mut null = bytes.clone();
        null[8..16].fill(0);
        assert_eq!(
            decode_image(&null, 1024),
            Err(ImageError::NullObject { offset: 8 })
        );
        for at in [4, 8, 16, 24, 28] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(
                matches!(
                    decode_image(&flipped, 1024),
                    Err(ImageError::Checksum { offset: 4, .. })
                ),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn huge_body_len_is_an_error_not_an_allocation() {
        let mut bytes = record(7, 1, b"x");
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_image(&bytes, u32::MAX),
            Err(ImageError::TruncatedBody { .. })
        ));
        assert!(matches!(
            decode_image(&bytes, IMAGE_BODY_BYTES_MAX),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn writer_offsets_are_file_offsets_and_survive_write_outs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = DataFiles::open_dir(dir.path()).expect("open");
        let mut writer = files.create_segment(3).expect("create");
        assert_eq!(writer.len_bytes(), 32);
        let big = vec![0xabu8; WRITE_BUFFER_BYTES_MAX / 3];
        let mut placed = Vec::new();
        for i in 1..=8u64 {
            let body = if i % 2 == 0 { &big[..] } else { &b"small"[..] };
            let (offset, length) = writer
                .append(ObjectId(i), Lsn(i * 10), body)
                .expect("append");
            assert_eq!(u64::from(length), 24 + body.len() as u64);
            placed.push((i, offset, length, body.to_vec()));
        }
        assert!(writer.synced_bytes() < writer.len_bytes());
        writer.sync().expect("sync");
        assert_eq!(writer.synced_bytes(), writer.len_bytes());
        assert_eq!(files.file_len(3).expect("len"), writer.len_bytes());
        for (i, offset, length, body) in placed {
            let image = files
                .read_image(3, offset, length, ObjectId(i))
                .expect("read back");
            assert_eq!(image.version, Lsn(i * 10));
            assert_eq!(image.body, body);
        }
        assert_eq!(files.segment_ids(), vec![3]);
    }

    #[test]
    fn creating_an_existing_segment_fails_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = SegmentWriter::create(dir.path(), 1).expect("create");
        writer.append(ObjectId(1), Lsn(1), b"keep").expect("append");
        writer.sync().expect("sync");
        let err = SegmentWriter::create(dir.path(), 1).expect_err("exists");
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
        );
        let files = DataFiles::open_dir(dir.path()).expect("open");
        assert_eq!(
            files.read_image(1, 32, 28, ObjectId(1)).expect("kept").body,
            b"keep"
        );
    }

    #[test]
    fn a_stale_partial_file_is_ignored_then_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("00000002.seg.partial"), b"junk").expect("write");
        let files = DataFiles::open_dir(dir.path()).expect("open ignores .partial");
        assert!(files.segment_ids().is_empty());
        let writer = files
            .create_segment(2)
            .expect("create over the stale partial");
        assert_eq!(writer.len_bytes(), 32);
        assert!(!dir.path().join("00000002.seg.partial").exists());
        let (images, end) = files.scan_all(2).expect("scan");
        assert!(images.is_empty());
        assert_eq!(end, ScanEnd::Clean { file_len: 32 });
    }

    #[test]
    fn refresh_sees_segments_created_elsewhere_and_forgets_deleted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = DataFiles::open_dir(dir.path()).expect("open");
        SegmentWriter::create(dir.path(), 5).expect("create");
        SegmentWriter::create(dir.path(), 4).expect("create");
        assert!(files.segment_ids().is_empty());
        files.refresh().expect("refresh");
        assert_eq!(files.segment_ids(), vec![4, 5]);
        fs::remove_file(dir.path().join("00000004.seg")).expect("rm");
        files.refresh().expect("refresh");
        assert_eq!(files.segment_ids(), vec![5]);
    }

    #[test]
    fn the_handle_cache_stays_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = DataFiles::open_dir(dir.path()).expect("open");
        let count = OPEN_SEGMENTS_MAX as u32 + 10;
        for segment in 1..=count {
            let mut writer = files.create_segment(segment).expect("create");
            writer
                .append(ObjectId(u64::from(segment)), Lsn(1), b"x")
                .expect("append");
            writer.sync().expect("sync");
        }
        for segment in 1..=count {
            files
                .read_image(segment, 32, 25, ObjectId(u64::from(segment)))
                .expect("read");
        }
        assert!(read_lock(&files.open).len() <= OPEN_SEGMENTS_MAX);
    }
}
