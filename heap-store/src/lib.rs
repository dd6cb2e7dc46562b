//! tc-heap-store: the durable heap. Objects live in log-structured data
//! segments located through a memory-mapped object table; every change is
//! first a transaction (DNA) in the write-ahead log (tc-wal).
//!
//! The object model and the DNA encoding live in tc-model and are
//! re-exported here (`codec`, `model`, `dna`). Formats: `docs/formats/`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub use tc_model::{codec, dna, model};
mod error;

pub use error::{Rejection, Result, StoreError};
pub use tc_model::{
    Array, ClassDef, ClassId, ClassKind, FieldDef, FieldKind, ObjectId, ScalarKind, Value,
};
pub use tc_wal::{Backend, BackendChoice, Lsn};
mod cache;
pub mod checkpoint;
pub mod datafile;
mod heap;
pub mod records;
mod replay;
mod replay_feed;
mod sequencer;
mod store;
pub mod table;

pub use cache::{CacheStats, Snapshot};
pub use heap::ENTRY_DELETED;
pub use replay::REPLAY_THREADS_MAX;
pub use store::{
    CheckpointReport, CleanReport, CommitTicket, GcReport, Got, ID_BLOCK_MAX, ImageRead,
    OpenReport, SEGMENTS_DIR, Store, StoreConfig, StoreStats, WAL_DIR,
};
