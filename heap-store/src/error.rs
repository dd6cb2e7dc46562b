//! Errors of the object store. Damage on disk names the file and offset;
//! a rejected transaction says which rule it broke. Errors are `Clone` so a
//! failed WAL append can poison the store with one shared cause.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::codec::DecodeError;
use crate::model::{ClassId, ObjectId};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Bytes on disk that fail their check: a CRC, a magic number, a bound.
    #[error("corrupt {}{}: {what}", path.display(), offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Corrupt {
        path: PathBuf,
        offset: Option<u64>,
        what: String,
    },
    #[error(transparent)]
    Wal(#[from] tc_wal::WalError),
    /// A transaction (or other request) the store refuses; nothing was written.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// A WAL append failed after the transaction was sequenced; the store
    /// stopped accepting changes. Restart to recover from disk.
    #[error("the store stopped accepting changes after a failed WAL append: {0}")]
    Poisoned(Arc<StoreError>),
    #[error("the store is closed")]
    Closed,
}

/// Why a transaction or request was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("malformed transaction: {0}")]
    Malformed(#[from] DecodeError),
    #[error("unknown class {0}")]
    UnknownClass(ClassId),
    #[error("unknown object {0}")]
    UnknownObject(ObjectId),
    #[error("object {object} (class {class}) has no slot {slot}")]
    NoSuchSlot {
        object: ObjectId,
        class: ClassId,
        slot: u32,
    },
    #[error("object {object} slot {slot} ({field}) holds {expected}, not {got}")]
    WrongKind {
        object: ObjectId,
        slot: u32,
        field: String,
        expected: String,
        got: String,
    },
    #[error("object {object} is a {kind}; {op} does not apply to it")]
    WrongOperation {
        object: ObjectId,
        kind: &'static str,
        op: &'static str,
    },
    #[error("object {object}: index {index} out of bounds for length {len}")]
    IndexOutOfBounds {
        object: ObjectId,
        index: u64,
        len: u64,
    },
    #[error("object {from} references {to}, which does not exist")]
    DanglingReference { from: ObjectId, to: ObjectId },
    #[error("root {name:?} references {to}, which does not exist")]
    DanglingRoot { name: String, to: ObjectId },
    #[error("root {name:?} is already bound to {bound}, not {requested}")]
    RootAlreadyBound {
        name: String,
        bound: ObjectId,
        requested: ObjectId,
    },
    #[error("object {0} already exists")]
    DuplicateObject(ObjectId),
    #[error("object {0} was never allocated (allocate ids first)")]
    UnallocatedId(ObjectId),
    #[error("object {0} appears in two DNAs of one transaction")]
    RepeatedObject(ObjectId),
    #[error("transaction of {len} B exceeds the limit of {max} B")]
    TooLarge { len: usize, max: usize },
    #[error("class {name:?} is already registered as {existing} with a different definition")]
    ClassConflict { name: String, existing: ClassId },
    #[error("invalid class definition: {0}")]
    BadClass(String),
    #[error("cannot allocate {requested} ids: {reason}")]
    BadIdRequest {
        requested: u64,
        reason: &'static str,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            offset,
            what: what.into(),
        }
    }
}
