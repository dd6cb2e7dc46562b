//! tc-tools: offline tools for a tc data dir, `tc-fsck` and `tc-dump`.
//!
//! Owns: reading a data dir without a server (`view`, `walscan`), checking
//! it (`fsck`, which returns an `FsckReport` for tests and other crates),
//! and printing its contents (`dump`, `render`). The binaries in `src/bin/`
//! only parse the command line and pick the exit code.
//!
//! Invariant: **the tools never write to the data dir.** They do not call
//! `Store::open` or `Wal::open` (WAL recovery zeroes a torn tail, the store
//! creates `CHECKPOINT`); they read WAL segments with `tc_wal::format`,
//! map the object table read-only, and open data segments only for
//! reading. While they run they hold a shared `flock` on `wal/LOCK`, so
//! they refuse to run beside a server and a server cannot start beside
//! them. Decoders never panic on bad bytes.
//!
//! Limits: the WAL records after the checkpoint are held in memory
//! (bounded by the store's checkpoint interval, `checkpoint_wal_bytes`);
//! `tc-fsck` reads every image once (and the images of objects the WAL
//! changes twice) and holds one object at a time.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::indexing_slicing))]

pub mod dump;
pub mod error;
pub mod fsck;
pub mod render;
pub mod view;
pub mod walscan;

pub use error::ToolError;
pub use fsck::{Counts, Finding, FsckReport, check};
pub use view::HeapView;
