//! Segment files in the WAL directory.
//!
//! Owns: file names, creating zero-filled spare files, directory fsync.
//! Layout of a WAL directory:
//! - `{first_lsn:016x}.wal`: a segment; its header names the same first LSN.
//! - `spare-{n:06}.wal-spare`: a zero-filled (or recycled) file of exactly
//!   the segment size, ready to become the next segment. Never read by
//!   recovery: a spare's bytes are only trusted once it is renamed.
//! - `spare-{n:06}.partial`: a spare being zero-filled; deleted on open.
//! - `LOCK`: held with `flock` by the one process that has the WAL open.
//!
//! Invariant: a file gets a segment name only after its header is durable,
//! and the directory is fsynced after every rename or removal.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, WalError};
use crate::format::Lsn;

pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
pub(crate) const SPARE_SUFFIX: &str = ".wal-spare";
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";
pub(crate) const LOCK_FILE: &str = "LOCK";
const ZERO_CHUNK_BYTES: usize = 1 << 20;

pub(crate) fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{:016x}{SEGMENT_SUFFIX}", first_lsn.0))
}

/// `Some(first_lsn)` if `name` is a segment file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Lsn)
}

/// `Some(n)` if `name` is `spare-{n}` with `suffix`.
pub(crate) fn parse_spare_name(name: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix("spare-")?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

pub(crate) fn spare_path(dir: &Path, n: u64, suffix: &str) -> PathBuf {
    dir.join(format!("spare-{n:06}{suffix}"))
}

/// Creates a zero-filled spare of `bytes` bytes: written under a `.partial`
/// name, fdatasynced, renamed, directory fsynced. Writing the zeroes (rather
/// than `fallocate`) means later commits overwrite written blocks, the cheap
/// case for `fdatasync`.
pub(crate) fn create_spare(dir: &Path, n: u64, bytes: u64) -> Result<PathBuf> {
    let partial = spare_path(dir, n, PARTIAL_SUFFIX);
    let fill = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        let zeroes = vec![0u8; ZERO_CHUNK_BYTES];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(ZERO_CHUNK_BYTES as u64) as usize;
            file.write_all(&zeroes[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    };
    if let Err(err) = fill() {
        let _ = fs::remove_file(&partial);
        return Err(WalError::io("zero-filling spare segment", &partial, err));
    }
    let spare = spare_path(dir, n, SPARE_SUFFIX);
    fs::rename(&partial, &spare).map_err(|e| WalError::io("renaming spare segment", &spare, e))?;
    sync_dir(dir)?;
    Ok(spare)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("fsync of directory", dir, e))
}

/// Turns a spare into the segment starting at `first_lsn`: writes and syncs
/// its header, then renames it and fsyncs the directory. Returns the open
/// segment file (read + write).
pub(crate) fn install_segment(
    dir: &Path,
    spare: &Path,
    header: &crate::format::SegmentHeader,
) -> Result<(File, PathBuf)> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(spare)
        .map_err(|e| WalError::io("opening spare segment", spare, e))?;
    file.write_all_at(&header.encode(), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| WalError::io("writing segment header", spare, e))?;
    let path = segment_path(dir, header.first_lsn);
    fs::rename(spare, &path).map_err(|e| WalError::io("renaming spare to segment", &path, e))?;
    sync_dir(dir)?;
    Ok((file, path))
}
