//! Helpers shared by the WAL integration tests.
#![allow(dead_code)]

use std::path::Path;

use tc_wal::{Backend, BackendChoice, Lsn, Record, Wal, WalConfig};

/// Both backends; io_uring only where the kernel allows it (the test says so).
pub fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Portable];
    if io_uring_available() {
        out.push(Backend::Uring);
    } else {
        eprintln!("io_uring is not available on this machine: testing the portable backend only");
    }
    out
}

pub fn io_uring_available() -> bool {
    io_uring::IoUring::new(2).is_ok()
}

/// A configuration with small segments so tests roll over often.
pub fn small_config(backend: Backend) -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        max_record_bytes: 8 << 10,
        backend: BackendChoice::Only(backend),
        ..WalConfig::default()
    }
}

pub fn read_all(wal: &Wal) -> Vec<Record> {
    read_all_from(wal, wal.first_lsn())
}

pub fn read_all_from(wal: &Wal, from: Lsn) -> Vec<Record> {
    let mut reader = wal.reader(from).expect("reader");
    let mut out = Vec::new();
    while let Some(record) = reader.try_next().expect("read") {
        out.push(record);
    }
    out
}

/// The segment files of a WAL directory, in LSN order.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// Deterministic payload for record `i` of `len` bytes.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
