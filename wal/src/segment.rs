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

/// How a spare is zero-filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// At once (a rollover is waiting for it).
    Urgent,
    /// Off the commit path, in small steps. A WAL fdatasync takes every
    /// byte written before it to the disk, so zeroes written at once (and
    /// written back in a burst) held commits up by 20–60 ms here. Written
    /// out `BACKGROUND_STEP_BYTES` at a time (`sync_file_range`, no
    /// journal commit) and fdatasynced every `BACKGROUND_SYNC_BYTES`, a
    /// commit meanwhile waits for at most about a MiB of zeroes; syncing
    /// every step instead committed the file system journal so often that
    /// commits now and then stalled for 80–400 ms.
    Background,
}

const BACKGROUND_STEP_BYTES: usize = 256 << 10;
const BACKGROUND_SYNC_BYTES: u64 = 1 << 20;

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
pub(crate) fn create_spare(dir: &Path, n: u64, bytes: u64, how: Fill) -> Result<PathBuf> {
    let partial = spare_path(dir, n, PARTIAL_SUFFIX);
    let fill = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        let step = match how {
            Fill::Urgent => ZERO_CHUNK_BYTES,
            Fill::Background => BACKGROUND_STEP_BYTES,
        };
        let zeroes = vec![0u8; step];
        let mut written = 0;
        while written < bytes {
            let n = (bytes - written).min(step as u64);
            file.write_all(&zeroes[..n as usize])?;
            if how == Fill::Background {
                write_out(&file, written, n)?;
                if (written + n).is_multiple_of(BACKGROUND_SYNC_BYTES) {
                    file.sync_data()?;
                }
            }
            written += n;
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

/// Writes `len` bytes of `file` at `offset` out of the page cache to the
/// device and waits for that (`sync_file_range`): no metadata, no device
/// cache flush, so no journal commit per step.
fn write_out(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain integers on a file descriptor we own.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Filled at once or in steps (that do not divide its size), a spare
    /// is the whole size in zeroes, under its final name only.
    #[test]
    fn a_spare_is_all_zeroes_whichever_way_it_is_filled() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = (1 << 20) + (300 << 10);
        for (n, how) in [Fill::Urgent, Fill::Background].into_iter().enumerate() {
            let spare = create_spare(dir.path(), n as u64, bytes, how).unwrap();
            let content = fs::read(&spare).unwrap();
            assert_eq!(content.len() as u64, bytes, "{how:?}");
            assert!(content.iter().all(|&b| b == 0), "{how:?}");
            assert!(!spare_path(dir.path(), n as u64, PARTIAL_SUFFIX).exists());
        }
    }
}
