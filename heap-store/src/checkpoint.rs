//! The checkpoint record: the file `CHECKPOINT` in the data dir, replaced
//! atomically (write `CHECKPOINT.tmp`, fsync, rename, fsync the dir).
//!
//! Owns: the checkpoint file format v1 and writing it durably.
//! Invariants: every change below `lsn` is in the data segments reachable
//! from the object table (flushed before this file was written), so the WAL
//! below `lsn` may be dropped and recovery replays from `lsn`. The classes,
//! roots and id high-water mark here are those of the state at `lsn`.
//!
//! File v1, little-endian:
//! `|0 magic u32 = "TCCP"|4 version u16 = 1|6 flags u16 = 0|8 body_len u32|`
//! `|12 crc32 u32 of the body|16 body|` where body =
//! `|lsn varint|next_id varint|next_segment varint|class count varint|`
//! `{class definition}*|root count varint|{name str|object varint}*|`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::{DecodeError, Reader, Writer};
use crate::error::{Result, StoreError};
use crate::model::{ClassDef, ObjectId};
use tc_wal::Lsn;

pub const CHECKPOINT_FILE: &str = "CHECKPOINT";
const MAGIC: u32 = u32::from_le_bytes(*b"TCCP");
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 16;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checkpoint {
    /// Recovery replays the WAL from here.
    pub lsn: Lsn,
    /// The first id never handed out.
    pub next_id: u64,
    /// The id the next data segment file gets.
    pub next_segment: u32,
    /// Class `i + 1` is `classes[i]`.
    pub classes: Vec<ClassDef>,
    pub roots: Vec<(String, ObjectId)>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Writer::new();
        body.varint(self.lsn.0);
        body.varint(self.next_id);
        body.varint(u64::from(self.next_segment));
        body.varint(self.classes.len() as u64);
        self.classes.iter().for_each(|c| c.encode(&mut body));
        body.varint(self.roots.len() as u64);
        for (name, id) in &self.roots {
            body.str(name);
            body.varint(id.0);
        }
        let body = body.into_bytes();
        let mut w = Writer::new();
        w.u32_le(MAGIC);
        w.u16_le(VERSION);
        w.u16_le(0);
        w.u32_le(body.len() as u32);
        w.u32_le(crc32fast::hash(&body));
        w.buf.extend_from_slice(&body);
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u32_le("magic")? != MAGIC {
            return Err(DecodeError::new(0, "not a checkpoint file (bad magic)"));
        }
        let version = r.u16_le("version")?;
        if version != VERSION {
            return Err(DecodeError::new(
                4,
                format!("checkpoint format version {version}, this store reads {VERSION}"),
            ));
        }
        let flags = r.u16_le("flags")?;
        if flags != 0 {
            return Err(DecodeError::new(
                6,
                format!("unknown checkpoint flags {flags:#x}"),
            ));
        }
        let len = r.u32_le("body length")? as usize;
        let crc = r.u32_le("crc")?;
        let body = r.take(len, "checkpoint body")?;
        r.finish("checkpoint")?;
        let computed = crc32fast::hash(body);
        if computed != crc {
            return Err(DecodeError::new(
                HEADER_BYTES,
                format!("checkpoint crc mismatch: stored {crc:#010x}, computed {computed:#010x}"),
            ));
        }
        let shift = |e: DecodeError| e.shifted(HEADER_BYTES);
        let mut r = Reader::new(body);
        let lsn = Lsn(r.varint("lsn").map_err(shift)?);
        let next_id = r.varint("next id").map_err(shift)?;
        let next_segment = r
            .varint_max(u64::from(u32::MAX), "next segment")
            .map_err(shift)? as u32;
        let n = r.count(3, "class count").map_err(shift)?;
        let mut classes = Vec::with_capacity(n);
        for _ in 0..n {
            classes.push(ClassDef::decode(&mut r).map_err(shift)?);
        }
        let n = r.count(2, "root count").map_err(shift)?;
        let mut roots = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str("root name").map_err(shift)?.to_string();
            roots.push((name, ObjectId(r.varint("root object").map_err(shift)?)));
        }
        r.finish("checkpoint body").map_err(shift)?;
        Ok(Checkpoint {
            lsn,
            next_id,
            next_segment,
            classes,
            roots,
        })
    }

    /// Reads `dir/CHECKPOINT`; `Ok(None)` if there is none.
    pub fn read(dir: &Path) -> Result<Option<Checkpoint>> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", path, e)),
        };
        Checkpoint::decode(&bytes)
            .map(Some)
            .map_err(|e| StoreError::corrupt(path, Some(e.offset() as u64), e.what()))
    }

    /// Replaces `dir/CHECKPOINT` atomically and durably.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("CHECKPOINT.tmp");
        let path: PathBuf = dir.join(CHECKPOINT_FILE);
        let mut file = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        file.write_all(&self.encode())
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| StoreError::io("fsync", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &path, e))?;
        sync_dir(dir)
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FieldKind, ScalarKind};

    #[test]
    fn round_trip_and_damage() {
        let cp = Checkpoint {
            lsn: Lsn(4096),
            next_id: 100,
            next_segment: 3,
            classes: vec![ClassDef::plain(
                "a.B",
                &[("x", FieldKind::Scalar(ScalarKind::Int))],
            )],
            roots: vec![("r".into(), ObjectId(5))],
        };
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                Checkpoint::decode(&bad).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }
}
