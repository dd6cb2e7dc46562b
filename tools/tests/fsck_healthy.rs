//! A healthy data dir (objects, a checkpoint, more commits only in the WAL)
//! is clean, by the binary's text and JSON output and by the library.

mod common;

use common::{End, fsck, make_data_dir};

#[test]
fn a_healthy_dir_is_clean_with_wal_after_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_data_dir(dir.path(), End::Drop);
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.lines().last(), Some("clean"), "{out}");
    assert!(!out.contains("problems:"), "{out}");

    let report = tc_tools::check(dir.path()).expect("check");
    let c = &report.counts;
    assert!(report.is_clean(), "{report}");
    assert_eq!(c.wal_segments, 1, "{report}");
    assert!(c.wal_records_replayed >= 5, "{report}");
    assert_eq!(c.table_live_entries, 5, "{report}");
    assert_eq!(c.table_deleted_entries, 1, "{report}");
    assert_eq!(c.objects_live, 7, "{report}");
    assert_eq!(c.objects_created_in_wal, 2, "{report}");
    assert_eq!(c.classes, 4, "{report}");
    assert_eq!(c.checkpoint_classes, 3, "{report}");
    assert_eq!(c.roots, 3, "{report}");
    assert!(c.references_checked >= 7, "{report}");
    assert_eq!(c.data_segments, 1, "{report}");
    assert_eq!(c.data_images, 6, "{report}");

    let (code, out, err) = fsck(dir.path(), true);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(json["clean"], true, "{json}");
    assert_eq!(json["problems"].as_array().map(Vec::len), Some(0), "{json}");
    assert_eq!(json["counts"]["objects_live"], 7, "{json}");
}

#[test]
fn a_closed_dir_is_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_data_dir(dir.path(), End::Close);
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.lines().last(), Some("clean"), "{out}");
    let report = tc_tools::check(dir.path()).expect("check");
    assert_eq!(report.counts.wal_records_replayed, 0, "{report}");
    assert_eq!(report.counts.table_live_entries, 7, "{report}");
    assert_eq!(report.counts.table_deleted_entries, 1, "{report}");
    assert_eq!(report.counts.objects_live, 7, "{report}");
}

#[test]
fn a_missing_dir_is_a_tool_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = fsck(&dir.path().join("nope"), false);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("nope"), "{err}");
}
