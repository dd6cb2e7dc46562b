//! tc-heap-store: the durable heap. Objects live in log-structured data
//! segments located through a memory-mapped object table; every change is
//! first a transaction (DNA) in the write-ahead log (tc-wal).
//!
//! Layout: `codec` (varints, strings), `model` (ids, classes, values,
//! objects), `dna` (the transaction encoding), `error`.
//! Formats: `docs/formats/dna.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
mod error;
pub mod model;

pub use error::{Rejection, Result, StoreError};
pub use model::{
    Array, ClassDef, ClassId, ClassKind, FieldDef, FieldKind, Lsn, ObjectId, ScalarKind, Value,
};
pub mod checkpoint;
pub mod datafile;
pub mod dna;
mod heap;
pub mod records;
mod sequencer;
mod store;
pub mod table;

pub use heap::{CacheStats, ENTRY_DELETED, Snapshot};
pub use store::{
    CheckpointReport, CleanReport, GcReport, ID_BLOCK_MAX, OpenReport, SEGMENTS_DIR, Store,
    StoreConfig, StoreStats, WAL_DIR,
};
