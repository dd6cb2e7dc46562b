//! End to end: each object-store workload of `tc-bench`, run briefly with
//! tiny sizes and `--json`, prints one parseable JSON object per run on
//! stdout (nothing else) with its documented keys and sensible values.

use std::process::Command;

use serde_json::Value;

/// Runs `tc-bench <args> --json --dir <tmp>`; returns one JSON value per
/// stdout line, after checking the bench directory was emptied.
fn run_json(args: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_tc-bench"))
        .args(args)
        .arg("--json")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run tc-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tc-bench {args:?} failed: {stderr}"
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let rows: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let left = std::fs::read_dir(dir.path()).expect("ls").count();
    assert_eq!(left, 0, "run directories are removed");
    rows
}

fn has_keys(row: &Value, keys: &[&str]) {
    for key in keys {
        assert!(row.get(key).is_some(), "missing {key}: {row}");
    }
}

fn f64_of(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} not a number: {row}"))
}

fn u64_of(row: &Value, key: &str) -> u64 {
    row[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} not an integer: {row}"))
}

#[test]
fn store_commit_reports_throughput_latency_and_the_wal_ratio() {
    let rows = run_json(&[
        "store-commit",
        "--committers",
        "1,4",
        "--fields",
        "2-5",
        "--seconds",
        "0.3",
        "--warmup-seconds",
        "0.1",
        "--backend",
        "portable",
    ]);
    assert_eq!(rows.len(), 2);
    for (row, committers) in rows.iter().zip([1u64, 4]) {
        has_keys(
            row,
            &[
                "workload",
                "backend",
                "committers",
                "fields_min",
                "fields_max",
                "seconds",
                "transactions",
                "tx_per_sec",
                "p50_us",
                "p99_us",
                "p999_us",
                "mean_tx_bytes",
                "wal_records_per_fsync",
                "wal_record_bytes",
                "wal_records_per_sec",
                "ratio_vs_wal",
                "fdatasync_p50_us",
            ],
        );
        assert_eq!(row["workload"], "store-commit");
        assert_eq!(row["backend"], "portable");
        assert_eq!(u64_of(row, "committers"), committers);
        assert_eq!(
            (u64_of(row, "fields_min"), u64_of(row, "fields_max")),
            (2, 5)
        );
        assert!(f64_of(row, "tx_per_sec") > 0.0, "{row}");
        assert!(u64_of(row, "p50_us") <= u64_of(row, "p99_us"));
        assert!(u64_of(row, "p99_us") <= u64_of(row, "p999_us"));
        let tx_bytes = f64_of(row, "mean_tx_bytes");
        assert!((10.0..200.0).contains(&tx_bytes), "{row}");
        // The baseline's records are the first round's mean transaction.
        let record_bytes = u64_of(row, "wal_record_bytes") as f64;
        assert!((record_bytes - tx_bytes).abs() <= 2.0, "{row}");
        assert!(f64_of(row, "wal_records_per_fsync") >= 1.0, "{row}");
        assert!(f64_of(row, "wal_records_per_sec") > 0.0, "{row}");
        let ratio = f64_of(row, "ratio_vs_wal");
        assert!(ratio > 0.0 && ratio.is_finite(), "{row}");
    }
}

#[test]
fn store_read_reports_reads_latency_and_hit_rate() {
    let rows = run_json(&[
        "store-read",
        "--objects",
        "5000",
        "--objects-per-tx",
        "500",
        "--cache-fraction",
        "0.2",
        "--readers",
        "1,2",
        "--seconds",
        "0.3",
        "--warmup-seconds",
        "0.1",
    ]);
    assert_eq!(rows.len(), 2);
    for (row, readers) in rows.iter().zip([1u64, 2]) {
        has_keys(
            row,
            &[
                "workload",
                "objects",
                "readers",
                "cache_fraction",
                "cache_bytes",
                "heap_bytes_estimate",
                "heap_bytes_method",
                "reads",
                "reads_per_sec",
                "p50_us",
                "p99_us",
                "p999_us",
                "cache_hits",
                "cache_misses",
                "hit_rate",
            ],
        );
        assert_eq!(row["workload"], "store-read");
        assert_eq!(u64_of(row, "objects"), 5000);
        assert_eq!(u64_of(row, "readers"), readers);
        assert_eq!(row["heap_bytes_method"], "cache.bytes");
        let heap = u64_of(row, "heap_bytes_estimate");
        let cache = u64_of(row, "cache_bytes");
        assert!(heap > 5000 * 50, "{row}");
        assert!(cache.abs_diff(heap / 5) <= 1, "{row}");
        assert!(f64_of(row, "reads_per_sec") > 0.0, "{row}");
        assert!(u64_of(row, "p50_us") <= u64_of(row, "p99_us"));
        // A fifth of the heap is cached and reads are uniform: a hit rate
        // well below 1 and above 0.
        let hit_rate = f64_of(row, "hit_rate");
        assert!(hit_rate > 0.02 && hit_rate < 0.6, "{row}");
        // One cache lookup per get; the counters are read by another
        // thread at the window's edges, so allow some slack.
        let lookups = (u64_of(row, "cache_hits") + u64_of(row, "cache_misses")) as f64;
        let reads = u64_of(row, "reads") as f64;
        assert!((lookups - reads).abs() <= 0.2 * reads, "{row}");
    }
}

#[test]
fn recovery_reports_the_replay() {
    let rows = run_json(&[
        "recovery",
        "--wal-bytes",
        "256KiB",
        "--objects",
        "200",
        "--committers",
        "8",
    ]);
    assert_eq!(rows.len(), 2);
    for (row, state) in rows.iter().zip(["cold", "warm"]) {
        has_keys(
            row,
            &[
                "workload",
                "page_cache",
                "wal_bytes_target",
                "replayed_records",
                "replayed_bytes",
                "replay_seconds",
                "replay_mb_per_sec",
                "open_seconds",
            ],
        );
        assert_eq!(row["workload"], "recovery");
        assert_eq!(row["page_cache"], state);
        assert_eq!(u64_of(row, "wal_bytes_target"), 256 << 10);
        assert!(u64_of(row, "replayed_bytes") >= 256 << 10, "{row}");
        assert!(u64_of(row, "replayed_records") > 0, "{row}");
        assert!(f64_of(row, "replay_mb_per_sec") > 0.0, "{row}");
        assert!(f64_of(row, "open_seconds") >= f64_of(row, "replay_seconds"));
    }
    assert_eq!(
        rows[0]["replayed_records"], rows[1]["replayed_records"],
        "the second open replays the same WAL"
    );
}

#[test]
fn write_amp_reports_bytes_and_ratios() {
    let rows = run_json(&[
        "write-amp",
        "--objects",
        "2000",
        "--seconds",
        "1",
        "--committers",
        "4",
        "--checkpoint-wal-bytes",
        "64KiB",
        "--data-segment-bytes",
        "64KiB",
    ]);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    has_keys(
        row,
        &[
            "workload",
            "objects",
            "committers",
            "seconds",
            "transactions",
            "logical_bytes",
            "wal_bytes",
            "data_bytes",
            "data_bytes_method",
            "checkpoints",
            "write_amplification",
            "device_write_bytes",
        ],
    );
    assert_eq!(row["workload"], "write-amp");
    let logical = u64_of(row, "logical_bytes");
    let wal = u64_of(row, "wal_bytes");
    let data = u64_of(row, "data_bytes");
    assert!(logical > 0, "{row}");
    // Every transaction is one WAL frame: its bytes plus a header.
    assert!(wal > logical, "{row}");
    assert!(data > 0, "{row}");
    assert!(u64_of(row, "checkpoints") >= 2, "{row}");
    let amplification = f64_of(row, "write_amplification");
    let expected = (wal + data) as f64 / logical as f64;
    assert!((amplification - expected).abs() < 1e-9, "{row}");
}
