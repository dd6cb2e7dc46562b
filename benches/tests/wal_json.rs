//! End to end: the `tc-bench wal --json` binary prints one parseable JSON
//! object per run on stdout and nothing else, and rejects bad arguments
//! naming the flag.

use std::process::Command;

const REQUIRED_KEYS: [&str; 14] = [
    "bench",
    "backend",
    "producers",
    "record_bytes",
    "seconds",
    "records",
    "records_per_sec",
    "p50_us",
    "p99_us",
    "p999_us",
    "records_per_fsync",
    "fdatasync_p50_us",
    "fdatasync_p99_us",
    "spare_misses",
];

fn tc_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tc-bench"))
}

#[test]
fn json_mode_prints_one_object_per_run_and_nothing_else() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let output = tc_bench()
        .args(["wal", "--producers", "1,8", "--backend", "portable"])
        .args(["--record-bytes", "64", "--seconds", "0.3"])
        .args(["--warmup-seconds", "0.1", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run tc-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tc-bench failed: {stderr}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "stdout: {stdout}");
    for (line, producers) in lines.iter().zip([1u64, 8]) {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        for key in REQUIRED_KEYS {
            assert!(value.get(key).is_some(), "missing {key}: {line}");
        }
        assert_eq!(value["bench"], "wal");
        assert_eq!(value["backend"], "portable");
        assert_eq!(value["producers"].as_u64(), Some(producers));
        assert_eq!(value["record_bytes"].as_u64(), Some(64));
        assert!(value["records"].as_u64().expect("records") > 0, "{line}");
        assert!(value["records_per_sec"].as_f64().expect("rate") > 0.0);
        assert!(value["fdatasync_p50_us"].as_u64().is_some());
    }
    assert!(stderr.contains("fdatasync"), "progress goes to stderr");
}

#[test]
fn zero_producers_is_a_usage_error_naming_the_flag() {
    let output = tc_bench()
        .args(["wal", "--producers", "0"])
        .output()
        .expect("run tc-bench");
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap's usage-error exit code"
    );
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--producers"), "{stderr}");
}
