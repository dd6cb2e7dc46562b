//! tc-wal: the segmented write-ahead log under tc's durable heap.
//!
//! Producers `append(kind, payload)` (blocking) or `append_async` (tokio)
//! and get the record's LSN once it is durable. One writer thread owns the
//! active segment and makes everything pending durable with one write and
//! one `fdatasync` (group commit), through io_uring or `pwrite`. Readers
//! (`Wal::reader`) iterate durable records from any LSN and follow the tail.
//!
//! Guarantees:
//! - An acknowledged record survives a crash of the process or the machine.
//! - After recovery the log is exactly a prefix of what was written: a torn
//!   tail (the one write in flight at the crash) is discarded; damage
//!   anywhere else makes `open` fail, naming the file, offset and LSN.
//! - LSN = byte position in the log stream; the log is gap-free.
//!
//! Limits and non-goals: one process per directory (a `LOCK` file enforces
//! it); records up to `max_record_bytes` (default 4 MiB, at most ~4 GiB);
//! no compression or encryption; the caller decides what a record means
//! (`kind` is an opaque non-zero byte). A single flipped bit in the very
//! last record is indistinguishable from a torn write and is discarded as
//! one (it was, by construction, the most recent write).
//!
//! ```
//! use tc_wal::{Lsn, Wal, WalConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let wal = Wal::open(dir.path(), WalConfig::default())?;
//! let first = wal.append(1, &b"hello"[..])?; // returns once durable
//! let second = wal.append(2, &b"world"[..])?;
//! assert_eq!(first, Lsn(0));
//! assert!(second > first);
//! drop(wal);
//!
//! // After a reopen (or a crash) every acknowledged record is there.
//! let wal = Wal::open(dir.path(), WalConfig::default())?;
//! let mut reader = wal.reader(Lsn(0))?;
//! let record = reader.try_next()?.expect("first record");
//! assert_eq!((record.lsn, record.kind, &record.payload[..]), (first, 1, &b"hello"[..]));
//! assert_eq!(reader.try_next()?.expect("second record").lsn, second);
//! assert!(reader.try_next()?.is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layout: `format` (bytes on disk), `segment` (file names and creation),
//! `spares` (pre-zeroed segments), `device` (io_uring / portable I/O),
//! `writer` (group commit), `recovery` (open-time verification), `reader`
//! (tail reader), `log` (the `Wal` handle). Format: `docs/formats/wal.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod device;
mod error;
pub mod format;
mod log;
mod reader;
mod recovery;
mod segment;
mod spares;
mod writer;

pub use device::{Backend, BackendChoice};
pub use error::{Result, WalError};
pub use format::{FrameError, HeaderError, Lsn, ScanError};
pub use log::{AppendSlot, PendingAppend, Wal, WalConfig, WalStats};
pub use reader::{Record, WalReader};
pub use recovery::{RecoveryReport, TornTailReport};
