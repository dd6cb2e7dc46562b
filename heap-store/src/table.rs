//! The object table: `objects.tbl`, a memory-mapped array of 32-byte entries
//! indexed by object id, saying where the newest durable image of each
//! object lives (`docs/formats/object-table.md`).
//!
//! Owns: the table file's byte layout (header and entries), its encoders and
//! decoders, creating, growing, mapping and flushing the file.
//! Not: deciding what an entry should say (checkpoint, cleaner, recovery),
//! the images themselves (`datafile.rs`), locking the data directory.
//!
//! Invariants:
//! - The file is `64 + k * 32` bytes: a header, then slot `N` at
//!   `64 + N * 32`. Slot 0 (the null object) is always zero.
//! - A slot is either all zero (no object) or a valid entry whose CRC covers
//!   the object id, so an entry copied to the wrong slot fails its check.
//! - The file only grows. Growth sets the new length in one `set_len` (so
//!   the length is always valid, even after a crash) and then writes zeroes
//!   over the new slots, so that the file system allocates their blocks now
//!   and a full disk is an error here, not a `SIGBUS` on a later store
//!   through the map.
//! - Decoders never panic on bad bytes; every failure is a
//!   `StoreError::Corrupt` naming the file and the offset of the bad field
//!   or slot.
//!
//! Mapping a file is sound only while nobody else changes its length or
//! bytes: one process owns a data directory (the store holds its lock), and
//! offline tools open the table read-only only while no server runs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use memmap2::{Mmap, MmapMut};

use crate::codec::{is_zero, put, read_u16, read_u32, read_u64};
use crate::error::{Result, StoreError};
use crate::model::{ClassId, ObjectId};
use tc_wal::Lsn;

/// The table's file name inside the data directory.
pub const TABLE_FILE_NAME: &str = "objects.tbl";

/// Table header v1, little-endian, 64 bytes:
/// `|0 magic u32 = "TCOT"|4 version u16 = 1|6 flags u16 = 0|`
/// `|8 entry_bytes u32 = 32|12 reserved [u8; 48] = 0|60 crc32 u32 (of 0..60)|`
pub const TABLE_HEADER_BYTES: usize = 64;
pub const TABLE_MAGIC: u32 = u32::from_le_bytes(*b"TCOT");
pub const TABLE_VERSION: u16 = 1;
const HEADER_MAGIC_OFFSET: usize = 0;
const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + size_of::<u32>();
const HEADER_FLAGS_OFFSET: usize = HEADER_VERSION_OFFSET + size_of::<u16>();
const HEADER_ENTRY_BYTES_OFFSET: usize = HEADER_FLAGS_OFFSET + size_of::<u16>();
const HEADER_RESERVED_OFFSET: usize = HEADER_ENTRY_BYTES_OFFSET + size_of::<u32>();
const HEADER_CRC_OFFSET: usize = HEADER_RESERVED_OFFSET + 48;
const _: () = assert!(HEADER_RESERVED_OFFSET == 12);
const _: () = assert!(TABLE_HEADER_BYTES == HEADER_CRC_OFFSET + size_of::<u32>());

/// Entry v1, little-endian, 32 bytes:
/// `|0 version_lsn u64|8 segment u32|12 offset u32|16 length u32|20 class u32|`
/// `|24 flags u16|26 reserved u16 = 0|28 crc32 u32|`
/// The CRC covers the object id (u64 LE) followed by entry bytes 0..28.
pub const TABLE_ENTRY_BYTES: usize = 32;
const ENTRY_VERSION_OFFSET: usize = 0;
const ENTRY_SEGMENT_OFFSET: usize = ENTRY_VERSION_OFFSET + size_of::<u64>();
const ENTRY_OFFSET_OFFSET: usize = ENTRY_SEGMENT_OFFSET + size_of::<u32>();
const ENTRY_LENGTH_OFFSET: usize = ENTRY_OFFSET_OFFSET + size_of::<u32>();
const ENTRY_CLASS_OFFSET: usize = ENTRY_LENGTH_OFFSET + size_of::<u32>();
const ENTRY_FLAGS_OFFSET: usize = ENTRY_CLASS_OFFSET + size_of::<u32>();
const ENTRY_RESERVED_OFFSET: usize = ENTRY_FLAGS_OFFSET + size_of::<u16>();
const ENTRY_CRC_OFFSET: usize = ENTRY_RESERVED_OFFSET + size_of::<u16>();
const _: () = assert!(ENTRY_CRC_OFFSET == 28);
const _: () = assert!(TABLE_ENTRY_BYTES == ENTRY_CRC_OFFSET + size_of::<u32>());

/// Growth adds at least this many slots (and at least doubles the table).
pub const TABLE_GROW_SLOTS_MIN: u64 = 64 * 1024;

/// The largest table this build maps: 2^40 slots (32 TiB). Object ids are
/// dense, so reaching it means a wild id, not a big heap.
pub const TABLE_SLOTS_MAX: u64 = 1 << 40;

/// Zeroes written per `pwrite` while growing.
const GROW_ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Where the newest durable image of one object is, and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// LSN of the transaction that produced the image.
    pub version: Lsn,
    /// Data segment holding the image (`datafile.rs`).
    pub segment: u32,
    /// File offset of the image record in that segment.
    pub offset: u32,
    /// Bytes of the image record (header included).
    pub length: u32,
    pub class: ClassId,
    /// Opaque to the table; defined by the store.
    pub flags: u16,
}

/// Why a table header is not valid. `offset()` is the offset of the field
/// at fault in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableHeaderError {
    #[error("header truncated: need {TABLE_HEADER_BYTES} B, have {available}")]
    Truncated { available: usize },
    #[error("bad magic {found:#010x} (expected {TABLE_MAGIC:#010x}, \"TCOT\")")]
    BadMagic { found: u32 },
    #[error("header checksum: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported object table version {found} (this build reads {TABLE_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("header flags {found:#06x}, expected 0")]
    Flags { found: u16 },
    #[error("entry size {found} B, expected {TABLE_ENTRY_BYTES}")]
    EntrySize { found: u32 },
    #[error("header has non-zero reserved bytes")]
    Reserved,
}

impl TableHeaderError {
    /// Offset in the file of the field at fault.
    pub fn offset(&self) -> u64 {
        let at = match self {
            TableHeaderError::Truncated { .. } | TableHeaderError::BadMagic { .. } => {
                HEADER_MAGIC_OFFSET
            }
            TableHeaderError::Checksum { .. } => HEADER_CRC_OFFSET,
            TableHeaderError::UnsupportedVersion { .. } => HEADER_VERSION_OFFSET,
            TableHeaderError::Flags { .. } => HEADER_FLAGS_OFFSET,
            TableHeaderError::EntrySize { .. } => HEADER_ENTRY_BYTES_OFFSET,
            TableHeaderError::Reserved => HEADER_RESERVED_OFFSET,
        };
        at as u64
    }
}

/// Why a non-zero slot is not a valid entry for its object id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error(
        "entry checksum: stored {stored:#010x}, computed {computed:#010x} (damaged, or written for another object)"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error("entry reserved field is {found:#06x}, expected 0")]
    Reserved { found: u16 },
    #[error("slot 0 (the null object) is not zero")]
    NullSlot,
}

/// The 64 header bytes of a new table.
pub fn encode_header() -> [u8; TABLE_HEADER_BYTES] {
    let mut out = [0u8; TABLE_HEADER_BYTES];
    put(&mut out, HEADER_MAGIC_OFFSET, &TABLE_MAGIC.to_le_bytes());
    put(
        &mut out,
        HEADER_VERSION_OFFSET,
        &TABLE_VERSION.to_le_bytes(),
    );
    put(
        &mut out,
        HEADER_ENTRY_BYTES_OFFSET,
        &(TABLE_ENTRY_BYTES as u32).to_le_bytes(),
    );
    let crc = crc32fast::hash(out.get(..HEADER_CRC_OFFSET).unwrap_or_default());
    put(&mut out, HEADER_CRC_OFFSET, &crc.to_le_bytes());
    out
}

/// Checks the header at the start of `bytes`: magic, CRC, version, flags,
/// entry size, reserved bytes, in that order.
pub fn decode_header(bytes: &[u8]) -> Result<(), TableHeaderError> {
    let Some(header) = bytes.get(..TABLE_HEADER_BYTES) else {
        return Err(TableHeaderError::Truncated {
            available: bytes.len(),
        });
    };
    let magic = read_u32(header, HEADER_MAGIC_OFFSET);
    if magic != TABLE_MAGIC {
        return Err(TableHeaderError::BadMagic { found: magic });
    }
    let stored = read_u32(header, HEADER_CRC_OFFSET);
    let computed = crc32fast::hash(header.get(..HEADER_CRC_OFFSET).unwrap_or_default());
    if stored != computed {
        return Err(TableHeaderError::Checksum { stored, computed });
    }
    let version = read_u16(header, HEADER_VERSION_OFFSET);
    if version != TABLE_VERSION {
        return Err(TableHeaderError::UnsupportedVersion { found: version });
    }
    let flags = read_u16(header, HEADER_FLAGS_OFFSET);
    if flags != 0 {
        return Err(TableHeaderError::Flags { found: flags });
    }
    let entry_bytes = read_u32(header, HEADER_ENTRY_BYTES_OFFSET);
    if entry_bytes != TABLE_ENTRY_BYTES as u32 {
        return Err(TableHeaderError::EntrySize { found: entry_bytes });
    }
    let reserved = header
        .get(HEADER_RESERVED_OFFSET..HEADER_CRC_OFFSET)
        .unwrap_or_default();
    if !is_zero(reserved) {
        return Err(TableHeaderError::Reserved);
    }
    Ok(())
}

/// The 32 bytes of `entry` in the slot of `object`.
///
/// Panics if `object` is null. An entry whose fields are all zero and whose
/// CRC happens to be zero would encode as an empty slot; `ObjectTable::set`
/// refuses it (see there).
pub fn encode_entry(object: ObjectId, entry: &TableEntry) -> [u8; TABLE_ENTRY_BYTES] {
    assert!(!object.is_null(), "the null object has no table entry");
    let mut out = [0u8; TABLE_ENTRY_BYTES];
    put(
        &mut out,
        ENTRY_VERSION_OFFSET,
        &entry.version.0.to_le_bytes(),
    );
    put(&mut out, ENTRY_SEGMENT_OFFSET, &entry.segment.to_le_bytes());
    put(&mut out, ENTRY_OFFSET_OFFSET, &entry.offset.to_le_bytes());
    put(&mut out, ENTRY_LENGTH_OFFSET, &entry.length.to_le_bytes());
    put(&mut out, ENTRY_CLASS_OFFSET, &entry.class.0.to_le_bytes());
    put(&mut out, ENTRY_FLAGS_OFFSET, &entry.flags.to_le_bytes());
    let crc = entry_crc(object, &out);
    put(&mut out, ENTRY_CRC_OFFSET, &crc.to_le_bytes());
    out
}

/// Decodes the slot of `object`: `None` if all zero, else the entry if its
/// CRC (bound to `object`) matches and its reserved field is zero.
pub fn decode_entry(
    object: ObjectId,
    slot: &[u8; TABLE_ENTRY_BYTES],
) -> Result<Option<TableEntry>, EntryError> {
    if is_zero(slot) {
        return Ok(None);
    }
    decode_non_zero_entry(object, slot).map(Some)
}

fn decode_non_zero_entry(
    object: ObjectId,
    slot: &[u8; TABLE_ENTRY_BYTES],
) -> Result<TableEntry, EntryError> {
    if object.is_null() {
        return Err(EntryError::NullSlot);
    }
    let stored = read_u32(slot, ENTRY_CRC_OFFSET);
    let computed = entry_crc(object, slot);
    if stored != computed {
        return Err(EntryError::Checksum { stored, computed });
    }
    let reserved = read_u16(slot, ENTRY_RESERVED_OFFSET);
    if reserved != 0 {
        return Err(EntryError::Reserved { found: reserved });
    }
    Ok(TableEntry {
        version: Lsn(read_u64(slot, ENTRY_VERSION_OFFSET)),
        segment: read_u32(slot, ENTRY_SEGMENT_OFFSET),
        offset: read_u32(slot, ENTRY_OFFSET_OFFSET),
        length: read_u32(slot, ENTRY_LENGTH_OFFSET),
        class: ClassId(read_u32(slot, ENTRY_CLASS_OFFSET)),
        flags: read_u16(slot, ENTRY_FLAGS_OFFSET),
    })
}

fn entry_crc(object: ObjectId, slot: &[u8; TABLE_ENTRY_BYTES]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&object.0.to_le_bytes());
    hasher.update(slot.get(..ENTRY_CRC_OFFSET).unwrap_or_default());
    hasher.finalize()
}

/// File offset of the slot of `object`, if it can exist in a table.
fn slot_offset(object: ObjectId) -> Option<u64> {
    if object.0 >= TABLE_SLOTS_MAX {
        return None;
    }
    Some(TABLE_HEADER_BYTES as u64 + object.0 * TABLE_ENTRY_BYTES as u64)
}

enum Map {
    Writable(MmapMut),
    ReadOnly(Mmap),
}

impl Map {
    fn bytes(&self) -> &[u8] {
        match self {
            Map::Writable(map) => map,
            Map::ReadOnly(map) => map,
        }
    }
}

/// The open object table. `get` and `iter` take `&self`; changes take
/// `&mut self`, so readers and writers are serialised by the borrow rules
/// (or by the caller's lock).
///
/// Durability: `set` and `clear` change the mapped pages only. They reach
/// the disk at `flush`, or earlier whenever the kernel writes dirty pages
/// back, so a caller must make an image durable (`SegmentWriter::sync`)
/// before pointing an entry at it, and must not rely on an old entry
/// surviving a crash once it has been overwritten.
pub struct ObjectTable {
    path: PathBuf,
    file: File,
    map: Map,
    /// Slots in the file, slot 0 included: `(len - 64) / 32`.
    slots: u64,
    sync: Arc<TableSync>,
}

/// What flushing the table needs, shared so that a caller can take it
/// under its own lock and flush without holding that lock
/// (`ObjectTable::sync_handle`): changes made to the table meanwhile are
/// flushed or not, and the next flush takes them.
#[derive(Debug)]
pub struct TableSync {
    path: PathBuf,
    /// Its own descriptor of the table file; `None` for a read-only table.
    file: Option<File>,
    /// The file's length changed since the last flush began.
    grown: AtomicBool,
    /// The first flush failure; every later flush reports it (a failed
    /// fsync may have dropped dirty pages, so it is never retried).
    failed: OnceLock<StoreError>,
}

impl TableSync {
    fn new(path: &Path, file: Option<&File>) -> Result<Arc<TableSync>> {
        let file = file
            .map(File::try_clone)
            .transpose()
            .map_err(|e| StoreError::io("dup", path, e))?;
        Ok(Arc::new(TableSync {
            path: path.to_path_buf(),
            file,
            grown: AtomicBool::new(false),
            failed: OnceLock::new(),
        }))
    }

    /// Makes every change made through the map before this call durable:
    /// `fdatasync` of the file (on Linux what `msync(MS_SYNC)` of a shared
    /// file mapping does: pages written through the map are dirty in the
    /// page cache), `fsync` if the file grew, so its new length is durable
    /// too. After a failure every later call fails with the same error.
    /// Does nothing on a read-only table.
    pub fn flush(&self) -> Result<()> {
        if let Some(failed) = self.failed.get() {
            return Err(failed.clone());
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        // Taken before syncing: a growth during the sync is synced next time.
        let outcome = if self.grown.swap(false, Ordering::AcqRel) {
            file.sync_all()
                .map_err(|e| StoreError::io("fsync", &self.path, e))
        } else {
            file.sync_data()
                .map_err(|e| StoreError::io("fdatasync", &self.path, e))
        };
        if let Err(e) = &outcome {
            let _ = self.failed.set(e.clone());
        }
        outcome
    }
}

impl std::fmt::Debug for ObjectTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTable")
            .field("path", &self.path)
            .field("slots", &self.slots)
            .field("read_only", &self.is_read_only())
            .finish_non_exhaustive()
    }
}

impl ObjectTable {
    /// Opens the table at `path` for reading and writing, creating it (with
    /// just its header) if it does not exist. A new file is written as
    /// `<path>.partial`, synced, renamed into place, and the directory is
    /// synced, so a crash never leaves a table without a valid header.
    pub fn open(path: impl AsRef<Path>) -> Result<ObjectTable> {
        let path = path.as_ref().to_path_buf();
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_table_file(&path)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io("open", &path, e))?
            }
            Err(e) => return Err(StoreError::io("open", &path, e)),
        };
        let slots = check_file(&path, &file)?;
        // SAFETY: one process owns the data directory (the store holds its
        // lock) and this table never shrinks the file, so the mapped bytes
        // stay valid and are changed only through this map.
        let map =
            unsafe { MmapMut::map_mut(&file) }.map_err(|e| StoreError::io("mmap", &path, e))?;
        let table = ObjectTable {
            sync: TableSync::new(&path, Some(&file))?,
            path,
            file,
            map: Map::Writable(map),
            slots,
        };
        table.check_mapped_header()?;
        Ok(table)
    }

    /// Opens an existing table read-only (for offline tools): the file is
    /// opened without write access and mapped read-only; `set` and `clear`
    /// fail with an I/O error of kind `PermissionDenied`; `flush` does
    /// nothing. No server may have the data directory open meanwhile.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<ObjectTable> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| StoreError::io("open", &path, e))?;
        let slots = check_file(&path, &file)?;
        // SAFETY: the caller guarantees no server has the data directory
        // open, so nobody writes or truncates the file while it is mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| StoreError::io("mmap", &path, e))?;
        let table = ObjectTable {
            sync: TableSync::new(&path, None)?,
            path,
            file,
            map: Map::ReadOnly(map),
            slots,
        };
        table.check_mapped_header()?;
        Ok(table)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self.map, Map::ReadOnly(_))
    }

    /// Slots in the file, slot 0 included; ids `>= slots()` have no entry.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// The entry of `object`: `None` for an empty slot or an id beyond the
    /// file; `Corrupt` (naming the slot's file offset and the object) for a
    /// slot that is neither empty nor a valid entry for this id.
    pub fn get(&self, object: ObjectId) -> Result<Option<TableEntry>> {
        let Some(slot) = self.slot(object) else {
            return Ok(None);
        };
        decode_entry(object, slot).map_err(|e| self.entry_corrupt(object, &e))
    }

    /// Points `object`'s slot at `entry`, growing the file if needed (at
    /// least doubling it, by at least `TABLE_GROW_SLOTS_MIN` slots).
    ///
    /// Panics if `object` is null, or (with odds of 2^-32, only for an entry
    /// whose fields are all zero) if the encoding would read back as empty.
    pub fn set(&mut self, object: ObjectId, entry: &TableEntry) -> Result<()> {
        assert!(!object.is_null(), "set on the null object");
        let bytes = encode_entry(object, entry);
        assert!(
            !is_zero(&bytes),
            "entry {entry:?} of {object} encodes as an empty slot"
        );
        self.writable("set")?;
        if object.0 >= self.slots {
            self.grow_to_hold(object)?;
        }
        let slot = self.slot_mut(object);
        assert!(slot.is_some(), "slot of {object} within the grown table");
        if let Some(slot) = slot {
            slot.copy_from_slice(&bytes);
        }
        Ok(())
    }

    /// Empties `object`'s slot (nothing to do beyond the end of the file).
    /// Panics if `object` is null.
    pub fn clear(&mut self, object: ObjectId) -> Result<()> {
        assert!(!object.is_null(), "clear on the null object");
        self.writable("clear")?;
        if let Some(slot) = self.slot_mut(object) {
            slot.fill(0);
        }
        Ok(())
    }

    /// Makes every change so far durable (`TableSync::flush`).
    pub fn flush(&self) -> Result<()> {
        self.sync.flush()
    }

    /// The table's flush, to run after dropping the lock the table is kept
    /// under: the store flushes it at the end of a checkpoint or a cleaning
    /// while commits go on.
    pub fn sync_handle(&self) -> Arc<TableSync> {
        Arc::clone(&self.sync)
    }

    /// Every non-empty slot in id order, with its entry or why it is
    /// corrupt (slot 0 appears only if it is not zero, as an error).
    pub fn iter(&self) -> impl Iterator<Item = (ObjectId, Result<TableEntry>)> + '_ {
        let entries = self
            .map
            .bytes()
            .get(TABLE_HEADER_BYTES..)
            .unwrap_or_default();
        let (slots, _partial) = entries.as_chunks::<TABLE_ENTRY_BYTES>();
        slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| !is_zero(&slot[..]))
            .map(move |(index, slot)| {
                let object = ObjectId(index as u64);
                let entry =
                    decode_non_zero_entry(object, slot).map_err(|e| self.entry_corrupt(object, &e));
                (object, entry)
            })
    }

    fn slot(&self, object: ObjectId) -> Option<&[u8; TABLE_ENTRY_BYTES]> {
        if object.0 >= self.slots {
            return None;
        }
        let start = usize::try_from(slot_offset(object)?).ok()?;
        self.map
            .bytes()
            .get(start..)?
            .first_chunk::<TABLE_ENTRY_BYTES>()
    }

    fn slot_mut(&mut self, object: ObjectId) -> Option<&mut [u8; TABLE_ENTRY_BYTES]> {
        if object.0 >= self.slots {
            return None;
        }
        let start = usize::try_from(slot_offset(object)?).ok()?;
        let Map::Writable(map) = &mut self.map else {
            return None;
        };
        map.get_mut(start..)?.first_chunk_mut::<TABLE_ENTRY_BYTES>()
    }

    fn writable(&self, op: &'static str) -> Result<()> {
        if self.is_read_only() {
            return Err(StoreError::io(
                op,
                &self.path,
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the object table was opened read-only",
                ),
            ));
        }
        Ok(())
    }

    /// Grows the file so that it holds `object`'s slot, then remaps it.
    fn grow_to_hold(&mut self, object: ObjectId) -> Result<()> {
        let too_large = || {
            StoreError::io(
                "grow",
                &self.path,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("object {object} is beyond the table limit of {TABLE_SLOTS_MAX} slots"),
                ),
            )
        };
        let needed = object.0.checked_add(1).ok_or_else(too_large)?;
        if needed > TABLE_SLOTS_MAX {
            return Err(too_large());
        }
        let slots_new = needed
            .max(self.slots.saturating_mul(2))
            .max(self.slots.saturating_add(TABLE_GROW_SLOTS_MIN))
            .min(TABLE_SLOTS_MAX);
        let len_old = TABLE_HEADER_BYTES as u64 + self.slots * TABLE_ENTRY_BYTES as u64;
        let len_new = TABLE_HEADER_BYTES as u64 + slots_new * TABLE_ENTRY_BYTES as u64;
        assert!(len_new > len_old);
        // One set_len keeps the length valid whatever happens next; the
        // zeroes then allocate the blocks, so ENOSPC surfaces here.
        self.file
            .set_len(len_new)
            .map_err(|e| StoreError::io("grow (set_len)", &self.path, e))?;
        self.sync.grown.store(true, Ordering::Release);
        if let Err(e) = write_zeroes(&self.file, len_old, len_new) {
            // Best effort: give the unallocated space back. The length stays
            // valid either way.
            let _ = self.file.set_len(len_old);
            return Err(StoreError::io("grow (write zeroes)", &self.path, e));
        }
        // SAFETY: as in `open`: this process owns the file and never shrinks
        // it while mapped (the failure path above runs before remapping and
        // only cuts slots the current map does not cover).
        let map = unsafe { MmapMut::map_mut(&self.file) }
            .map_err(|e| StoreError::io("mmap", &self.path, e))?;
        self.map = Map::Writable(map);
        self.slots = slots_new;
        Ok(())
    }

    fn check_mapped_header(&self) -> Result<()> {
        decode_header(self.map.bytes())
            .map_err(|e| StoreError::corrupt(&self.path, Some(e.offset()), e.to_string()))
    }

    fn entry_corrupt(&self, object: ObjectId, e: &EntryError) -> StoreError {
        let offset = TABLE_HEADER_BYTES as u64 + object.0 * TABLE_ENTRY_BYTES as u64;
        StoreError::corrupt(
            &self.path,
            Some(offset),
            format!("object table slot of object {object}: {e}"),
        )
    }
}

/// Validates the header and the length of an open table file; returns the
/// number of slots.
fn check_file(path: &Path, file: &File) -> Result<u64> {
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("stat", path, e))?
        .len();
    let mut header = [0u8; TABLE_HEADER_BYTES];
    let available = usize::try_from(len.min(TABLE_HEADER_BYTES as u64)).unwrap_or(0);
    if let Some(head) = header.get_mut(..available) {
        file.read_exact_at(head, 0)
            .map_err(|e| StoreError::io("read header", path, e))?;
    }
    let header = header.get(..available).unwrap_or_default();
    decode_header(header)
        .map_err(|e| StoreError::corrupt(path, Some(e.offset()), e.to_string()))?;
    let entries_bytes = len - TABLE_HEADER_BYTES as u64;
    let partial = entries_bytes % TABLE_ENTRY_BYTES as u64;
    if partial != 0 {
        return Err(StoreError::corrupt(
            path,
            Some(len - partial),
            format!(
                "file length {len} B is not {TABLE_HEADER_BYTES} + a multiple of {TABLE_ENTRY_BYTES}: a partial slot of {partial} B"
            ),
        ));
    }
    let slots = entries_bytes / TABLE_ENTRY_BYTES as u64;
    if slots > TABLE_SLOTS_MAX || usize::try_from(len).is_err() {
        return Err(StoreError::corrupt(
            path,
            Some(0),
            format!("file length {len} B is over the limit of {TABLE_SLOTS_MAX} slots"),
        ));
    }
    Ok(slots)
}

fn create_table_file(path: &Path) -> Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .map_err(|e| StoreError::io("create", &partial, e))?;
    file.write_all_at(&encode_header(), 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("write header", &partial, e))?;
    drop(file);
    fs::rename(&partial, path).map_err(|e| StoreError::io("rename", &partial, e))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync of directory", dir, e))
}

fn write_zeroes(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeroes = vec![0u8; GROW_ZERO_CHUNK_BYTES.min(usize::try_from(to - from).unwrap_or(0))];
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(zeroes.len(), |left| left.min(zeroes.len()));
        file.write_all_at(zeroes.get(..n).unwrap_or_default(), at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> TableEntry {
        TableEntry {
            version: Lsn(1000 + u64::from(n)),
            segment: 1 + n % 7,
            offset: 32 + n * 40,
            length: 24 + n,
            class: ClassId(3),
            flags: (n % 3) as u16,
        }
    }

    #[test]
    fn header_round_trips_and_names_the_bad_field() {
        let header = encode_header();
        assert_eq!(decode_header(&header), Ok(()));
        let mut bad = header;
        bad[0] ^= 1;
        assert!(matches!(
            decode_header(&bad),
            Err(TableHeaderError::BadMagic { .. })
        ));
        let mut bad = header;
        bad[20] ^= 1;
        let err = decode_header(&bad).expect_err("reserved byte flipped");
        assert!(matches!(err, TableHeaderError::Checksum { .. }));
        assert_eq!(err.offset(), 60);
        assert_eq!(
            decode_header(&header[..10]),
            Err(TableHeaderError::Truncated { available: 10 })
        );
    }

    #[test]
    fn header_with_valid_crc_but_wrong_fields_is_refused() {
        let reseal = |mut bytes: [u8; 64]| {
            let crc = crc32fast::hash(&bytes[..60]);
            bytes[60..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let mut v2 = encode_header();
        v2[4] = 2;
        let err = decode_header(&reseal(v2)).expect_err("version 2");
        assert_eq!(err, TableHeaderError::UnsupportedVersion { found: 2 });
        assert_eq!(err.offset(), 4);
        let mut size = encode_header();
        size[8] = 16;
        let err = decode_header(&reseal(size)).expect_err("entry size 16");
        assert_eq!(err, TableHeaderError::EntrySize { found: 16 });
        assert_eq!(err.offset(), 8);
        let mut reserved = encode_header();
        reserved[40] = 1;
        assert_eq!(
            decode_header(&reseal(reserved)),
            Err(TableHeaderError::Reserved)
        );
    }

    #[test]
    fn entry_round_trips_and_is_bound_to_its_id() {
        let e = entry(5);
        let bytes = encode_entry(ObjectId(9), &e);
        assert_eq!(decode_entry(ObjectId(9), &bytes), Ok(Some(e)));
        assert!(matches!(
            decode_entry(ObjectId(10), &bytes),
            Err(EntryError::Checksum { .. })
        ));
        assert_eq!(decode_entry(ObjectId(9), &[0u8; 32]), Ok(None));
        assert_eq!(decode_entry(ObjectId(0), &bytes), Err(EntryError::NullSlot));
    }

    #[test]
    fn every_single_bit_flip_of_an_entry_is_detected() {
        let bytes = encode_entry(ObjectId(77), &entry(1));
        for bit in 0..TABLE_ENTRY_BYTES * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_entry(ObjectId(77), &bad).is_err(),
                "flip of bit {bit} not detected"
            );
        }
    }

    #[test]
    fn reserved_field_must_be_zero_even_with_a_valid_crc() {
        let mut bytes = encode_entry(ObjectId(4), &entry(2));
        bytes[26] = 1;
        let crc = entry_crc(ObjectId(4), &bytes);
        bytes[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_entry(ObjectId(4), &bytes),
            Err(EntryError::Reserved { found: 1 })
        );
    }

    #[test]
    fn new_table_is_empty_then_grows_geometrically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TABLE_FILE_NAME);
        let mut table = ObjectTable::open(&path).expect("create");
        assert_eq!(table.slots(), 0);
        assert_eq!(table.get(ObjectId(1)).expect("get"), None);
        assert!(!dir.path().join("objects.tbl.partial").exists());
        table.set(ObjectId(1), &entry(1)).expect("set");
        assert_eq!(table.slots(), TABLE_GROW_SLOTS_MIN);
        table
            .set(ObjectId(TABLE_GROW_SLOTS_MIN), &entry(2))
            .expect("set beyond");
        assert_eq!(table.slots(), 2 * TABLE_GROW_SLOTS_MIN);
        table.set(ObjectId(500_000), &entry(3)).expect("set far");
        assert_eq!(table.slots(), 500_001);
        let len = fs::metadata(&path).expect("stat").len();
        assert_eq!(len, 64 + 500_001 * 32);
        table.flush().expect("flush");
        assert!(!table.sync.grown.load(Ordering::Acquire));
    }

    #[test]
    fn a_sync_handle_taken_before_a_growth_syncs_the_new_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(TABLE_FILE_NAME);
        let mut table = ObjectTable::open(&path).expect("create");
        let handle = table.sync_handle();
        table.set(ObjectId(70_000), &entry(7)).expect("set grows");
        assert!(table.sync.grown.load(Ordering::Acquire));
        handle.flush().expect("flush through the handle");
        assert!(!table.sync.grown.load(Ordering::Acquire));
        let reopened = ObjectTable::open_read_only(&path).expect("reopen");
        assert_eq!(reopened.get(ObjectId(70_000)).expect("get"), Some(entry(7)));
        assert!(
            reopened.sync_handle().flush().is_ok(),
            "read-only: nothing to do"
        );
    }

    #[test]
    fn clear_empties_a_slot_and_ignores_ids_beyond_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut table = ObjectTable::open(dir.path().join("t")).expect("create");
        table.clear(ObjectId(5)).expect("clear beyond the end");
        assert_eq!(table.slots(), 0);
        table.set(ObjectId(5), &entry(5)).expect("set");
        table.clear(ObjectId(5)).expect("clear");
        assert_eq!(table.get(ObjectId(5)).expect("get"), None);
        assert_eq!(table.iter().count(), 0);
    }

    #[test]
    #[should_panic(expected = "null object")]
    fn set_on_the_null_object_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut table = ObjectTable::open(dir.path().join("t")).expect("create");
        let _ = table.set(ObjectId::NULL, &entry(0));
    }
}
