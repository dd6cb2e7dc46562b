//! End to end: `tc-bench server-commit --json` against its in-process
//! server prints one parseable JSON object on stdout and nothing else, with
//! the disk's fdatasync latency measured in the same invocation (the
//! one-writer target is relative to it) and the CPU each party used.

use std::process::Command;

const REQUIRED_KEYS: [&str; 17] = [
    "bench",
    "workload",
    "system",
    "writers",
    "sessions",
    "seconds",
    "ops",
    "ops_per_sec",
    "p50_us",
    "p99_us",
    "p999_us",
    "max_us",
    "records_per_fsync",
    "fdatasync_p50_us",
    "server_cpu_us_per_op",
    "client_cpu_us_per_op",
    "machine_busy_pct",
];

fn server_commit(dir: &std::path::Path, json: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tc-bench"));
    command
        .current_dir(dir)
        .args(["server-commit", "--writers", "2", "--sessions", "1"])
        .args(["--seconds", "0.3", "--warmup-seconds", "0.1"]);
    if json {
        command.arg("--json");
    }
    command.output().expect("run tc-bench")
}

#[test]
fn json_mode_prints_one_object_with_the_fdatasync_baseline() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let output = server_commit(dir.path(), true);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tc-bench failed: {stderr}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout}");
    let value: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    for key in REQUIRED_KEYS {
        assert!(value.get(key).is_some(), "missing {key}: {}", lines[0]);
    }
    assert_eq!(value["bench"], "server");
    assert_eq!(value["workload"], "server-commit");
    assert_eq!(value["system"], "tc");
    assert_eq!(value["writers"].as_u64(), Some(2));
    assert_eq!(value["sessions"].as_u64(), Some(1));
    assert!(value["ops"].as_u64().expect("ops") > 0, "{}", lines[0]);
    assert!(value["fdatasync_p50_us"].as_u64().expect("fdatasync") > 0);
    for key in ["server_cpu_us_per_op", "client_cpu_us_per_op"] {
        let us = value[key].as_f64().expect("a number");
        assert!(us.is_finite() && us >= 0.0, "{key}: {}", lines[0]);
    }
    let busy = value["machine_busy_pct"].as_f64().expect("a number");
    assert!((0.0..=100.0).contains(&busy), "{}", lines[0]);
    assert!(stderr.contains("fdatasync: p50"), "progress goes to stderr");
}

#[test]
fn the_table_has_an_fdatasync_column() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let output = server_commit(dir.path(), false);
    assert!(
        output.status.success(),
        "tc-bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(header.contains("fdatasync p50 us"), "{stdout}");
    assert!(header.contains("server CPU us/op"), "{stdout}");
    let row = lines.next().expect("the tc row");
    assert!(row.starts_with("tc "), "{stdout}");
}
