//! The raw-disk baseline: latency of one small overwrite + `fdatasync`.
//!
//! Owns: the probe file (a zero-filled 1 MiB temporary file in the bench
//! directory, removed when the probe ends) and its latency histogram.
//! Not: the WAL; this is what a perfect WAL would pay per commit on the same
//! disk, the number the WAL targets are relative to.
//! Invariant: every probed write lands inside the already written and synced
//! region, so `fdatasync` flushes data only (no size or block-allocation
//! metadata), the same case as the WAL writing into a pre-zeroed segment.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::report::{self, LatencySummary};

const PROBE_FILE_BYTES: u64 = 1 << 20;
const WRITE_BYTES: u64 = 64;
const ITERATION_COUNT_MAX: u32 = 2000;
const DURATION_MAX: Duration = Duration::from_secs(1);

/// Measures `pwrite(64 B)` + `fdatasync` in `dir` until 2000 iterations or
/// 1 s have passed, whichever comes first.
pub fn measure(dir: &Path) -> io::Result<LatencySummary> {
    let mut file = tempfile::Builder::new()
        .prefix("fsync-probe-")
        .tempfile_in(dir)?;
    let zeroes = vec![0u8; PROBE_FILE_BYTES as usize];
    file.write_all(&zeroes)?;
    file.as_file().sync_all()?;

    let mut histogram = report::latency_histogram();
    let payload = [0xA5u8; WRITE_BYTES as usize];
    let started = Instant::now();
    let mut offset = 0u64;
    for _ in 0..ITERATION_COUNT_MAX {
        if started.elapsed() >= DURATION_MAX {
            break;
        }
        assert!(offset + WRITE_BYTES <= PROBE_FILE_BYTES);
        let begin = Instant::now();
        file.as_file().write_all_at(&payload, offset)?;
        file.as_file().sync_data()?;
        report::record_latency(&mut histogram, begin.elapsed());
        offset = (offset + WRITE_BYTES) % PROBE_FILE_BYTES;
    }
    assert!(!histogram.is_empty(), "the probe ran at least once");
    Ok(LatencySummary::of(&histogram))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_measures_a_positive_latency() {
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = measure(dir.path()).expect("probe");
        assert!(summary.count > 0);
        assert!(summary.p50_us <= summary.p99_us);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
