//! The tools never modify a data dir: every file's bytes and mtime are the
//! same after `tc-fsck` and every `tc-dump` subcommand, healthy or damaged;
//! and they refuse to run while a server (a `Store`) holds the dir.

mod common;

use std::fs;

use common::{End, dump_bin, flip_byte, fsck, make_data_dir, run, snapshot, wal_segment};

fn run_every_tool(dir: &std::path::Path, object: &str) {
    let d = dir.to_str().expect("utf-8");
    let _ = fsck(dir, false);
    let _ = fsck(dir, true);
    for args in [
        &[d, "roots"][..],
        &[d, "classes"][..],
        &[d, "object", object][..],
        &[d, "graph", "people"][..],
        &[d, "wal"][..],
        &[d, "--json", "roots"][..],
        &[d, "--json", "classes"][..],
        &[d, "--json", "object", object][..],
        &[d, "--json", "graph", "people", "--depth", "2"][..],
        &[d, "--json", "wal", "--from", "0x10", "--limit", "3"][..],
    ] {
        let (code, _, err) = run(dump_bin(), args);
        assert!(code == 0 || code == 1 || code == 2, "{args:?}: {err}");
    }
    // Also the library, in this process.
    tc_tools::check(dir).expect("check");
}

#[test]
fn fsck_and_dump_change_no_byte_and_no_mtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = make_data_dir(dir.path(), End::Drop);
    let object = ids.bob.0.to_string();
    let before = snapshot(dir.path());
    assert!(before.len() >= 8, "{:?}", before.keys());
    run_every_tool(dir.path(), &object);
    assert!(snapshot(dir.path()) == before, "a healthy dir changed");

    // Damaged, with a torn tail at the end of the WAL (which recovery
    // would zero): still untouched.
    let records = {
        let read = tc_tools::walscan::read_segment(&tc_tools::walscan::WalFile {
            path: wal_segment(dir.path()),
            named_lsn: tc_heap_store::Lsn(0),
        });
        read.records
    };
    let last = records.last().expect("records");
    flip_byte(&wal_segment(dir.path()), last.offset + 30);
    flip_byte(&dir.path().join("objects.tbl"), 64 + ids.carol.0 * 32 + 1);
    let before = snapshot(dir.path());
    run_every_tool(dir.path(), &object);
    assert!(snapshot(dir.path()) == before, "a damaged dir changed");
}

#[test]
fn a_missing_segments_dir_is_reported_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_data_dir(dir.path(), End::Drop);
    fs::remove_dir_all(dir.path().join("segments")).expect("rm");
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("missing: the data segment directory"), "{out}");
    assert!(
        !dir.path().join("segments").exists(),
        "fsck created segments/"
    );
}

#[test]
fn the_tools_refuse_a_dir_a_server_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_data_dir(dir.path(), End::Close);
    let store = tc_heap_store::Store::open(dir.path(), common::config()).expect("open");
    let (code, _, err) = fsck(dir.path(), false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("locked"), "{err}");
    let (code, _, err) = run(dump_bin(), &[dir.path().to_str().expect("utf-8"), "roots"]);
    assert_eq!(code, 2, "{err}");
    {
        let _no_fork = common::fork_lock();
        drop(store);
    }
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
}
