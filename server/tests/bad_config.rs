//! A bad settings file or flag stops `tc-server` before it starts: exit
//! code 2, a message naming the key and the expected form, and no data
//! directory created (nothing half-configured).

use std::process::{Command, Output};

fn tc_server(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tc-server"))
        .current_dir(dir)
        .args(["--listen", "127.0.0.1:0", "--no-metrics"])
        .args(args)
        .output()
        .expect("run tc-server")
}

fn assert_refused(output: &Output, dir: &std::path::Path, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "{name} not named: {stderr}");
    }
    assert!(
        !dir.join("tc-data").exists(),
        "a refused start created the data directory"
    );
}

#[test]
fn an_out_of_range_flag_is_refused_naming_the_key_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let output = tc_server(dir.path(), &["--worker-threads", "5000"]);
    assert_refused(&output, dir.path(), &["worker_threads", "1024"]);
}

#[test]
fn a_bad_settings_file_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tc.toml");
    std::fs::write(&file, "session_timeout_ms = \"soon\"\n").unwrap();
    let output = tc_server(dir.path(), &["--config", file.to_str().unwrap()]);
    assert_refused(&output, dir.path(), &["session_timeout_ms"]);

    std::fs::write(&file, "wal_segment_bytes = 12345\n").unwrap();
    let output = tc_server(dir.path(), &["--config", file.to_str().unwrap()]);
    assert_refused(
        &output,
        dir.path(),
        &["wal_segment_bytes", "multiple of 4096"],
    );

    std::fs::write(&file, "cache_megabytes = 10\n").unwrap();
    let output = tc_server(dir.path(), &["--config", file.to_str().unwrap()]);
    assert_refused(&output, dir.path(), &["cache_megabytes"]);
}
