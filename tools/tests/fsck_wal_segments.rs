//! A WAL of several segments (some retired by a checkpoint) is read across
//! segment boundaries and is clean; a missing middle segment is a gap,
//! named with both files.

mod common;

use std::fs;

use common::{fsck, lines_with};
use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::{ClassDef, FieldKind, ObjectId, ScalarKind, Store, StoreConfig, Value};
use tc_wal::WalConfig;

fn small_segments() -> StoreConfig {
    StoreConfig {
        background_maintenance: false,
        wal: WalConfig {
            segment_bytes: 4096,
            max_record_bytes: 1024,
            ..WalConfig::default()
        },
        ..StoreConfig::default()
    }
}

/// A linked list of `n` nodes under root "head", one commit per node, with
/// a checkpoint half way.
fn make_chain(dir: &std::path::Path, n: u64) {
    let _no_fork = common::fork_lock();
    let store = Store::open(dir, small_segments()).expect("open");
    let node = store
        .register_class(&ClassDef::plain(
            "demo.Node",
            &[
                ("value", FieldKind::Scalar(ScalarKind::Long)),
                ("next", FieldKind::Scalar(ScalarKind::Reference)),
            ],
        ))
        .expect("class");
    let ids = store.allocate_ids(n).expect("ids");
    let mut previous = None;
    for i in 0..n {
        let id = ObjectId(ids.start + i);
        let mut dna = Dna::new_object(id, node).field(0, Value::Long(i as i64 * 1000));
        if let Some(p) = previous {
            dna = dna.field(1, Value::Reference(p));
        }
        let roots = if i == 0 {
            vec![("head".to_string(), id)]
        } else {
            vec![]
        };
        store
            .commit(
                Transaction {
                    client: 1,
                    seq: i + 1,
                    lock: LockRef::Object(id),
                    roots,
                    dnas: vec![dna],
                }
                .encode(),
            )
            .expect("commit");
        previous = Some(id);
        if i == n / 2 {
            store.checkpoint().expect("checkpoint");
        }
    }
}

fn wal_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = fs::read_dir(dir.join("wal"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    out.sort();
    out
}

#[test]
fn a_wal_of_several_segments_is_clean_and_a_missing_one_is_a_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_chain(dir.path(), 300);
    let segments = wal_segments(dir.path());
    assert!(segments.len() >= 3, "{segments:?}");
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let report = tc_tools::check(dir.path()).expect("check");
    assert_eq!(report.counts.wal_segments, segments.len() as u64);
    assert!(report.counts.wal_records_replayed >= 149, "{report}");
    assert_eq!(report.counts.objects_live, 300, "{report}");
    assert_eq!(report.counts.references_checked, 299, "{report}");

    let middle = &segments[segments.len() / 2];
    let after = &segments[segments.len() / 2 + 1];
    fs::remove_file(middle).expect("rm");
    let (code, out, err) = fsck(dir.path(), false);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let after_name = after
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        !lines_with(&out, &["gap in the WAL", &after_name]).is_empty(),
        "{out}"
    );
}
