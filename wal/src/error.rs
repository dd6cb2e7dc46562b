//! Errors of the WAL. Each names the file and, for damaged data, the offset
//! and LSN. Errors are `Clone` because one failed write fails every waiter
//! of its batch with the same cause.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::format::{FrameError, HeaderError, Lsn, ScanError};

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("corrupt WAL segment {}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: ScanError,
    },
    #[error("bad WAL segment header in {}: {source}", path.display())]
    BadHeader {
        path: PathBuf,
        #[source]
        source: HeaderError,
    },
    #[error("WAL segment {} is named for lsn {named} but its header says {stored}", path.display())]
    NameMismatch {
        path: PathBuf,
        named: Lsn,
        stored: Lsn,
    },
    #[error("corrupt WAL segment {}: damaged record at offset {offset} (lsn {lsn}) before the next segment: {cause}", path.display())]
    DamagedBeforeNextSegment {
        path: PathBuf,
        offset: u64,
        lsn: Lsn,
        cause: FrameError,
    },
    #[error("WAL gap: segment {} ends at lsn {end} but the next segment {} starts at lsn {next_first}", path.display(), next_path.display())]
    Gap {
        path: PathBuf,
        end: Lsn,
        next_path: PathBuf,
        next_first: Lsn,
    },
    #[error("record of {len} B exceeds the configured maximum of {max} B")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("record at lsn {lsn} in {} has {len} B, over the configured maximum of {max} B", path.display())]
    StoredRecordTooLarge {
        path: PathBuf,
        lsn: Lsn,
        len: usize,
        max: u32,
    },
    #[error("record kind 0 is reserved")]
    ReservedKind,
    #[error("invalid WAL configuration: {field} {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("WAL directory {} is in use by another process (lock file held)", path.display())]
    Locked { path: PathBuf },
    #[error("the WAL stopped accepting writes after an earlier failure: {0}")]
    Poisoned(Box<WalError>),
    #[error("the WAL is closed")]
    Closed,
    #[error("lsn {lsn} is no longer in the log, which now starts at {first}")]
    Truncated { lsn: Lsn, first: Lsn },
    #[error("lsn {lsn} is not a record boundary in {}: {cause}", path.display())]
    NotRecordBoundary {
        lsn: Lsn,
        path: PathBuf,
        cause: FrameError,
    },
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> WalError {
        WalError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True if this error (or the failure that poisoned the WAL) is a full disk.
    pub fn is_no_space(&self) -> bool {
        match self {
            WalError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            WalError::Poisoned(inner) => inner.is_no_space(),
            _ => false,
        }
    }
}

pub type Result<T, E = WalError> = std::result::Result<T, E>;
