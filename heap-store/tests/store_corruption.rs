//! Damage on real files: a flipped byte in the object table, in the WAL and
//! in a data segment is detected, with the file and offset named; nothing
//! panics, and damage to one object's image does not stop the others.

use std::path::{Path, PathBuf};

use tc_heap_store::datafile::segment_file_name;
use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::table::{ObjectTable, TABLE_ENTRY_BYTES, TABLE_FILE_NAME, TABLE_HEADER_BYTES};
use tc_heap_store::{
    ClassDef, FieldKind, Lsn, ObjectId, SEGMENTS_DIR, ScalarKind, Store, StoreConfig, StoreError,
    Value, WAL_DIR,
};

fn config() -> StoreConfig {
    StoreConfig {
        background_maintenance: false,
        ..StoreConfig::default()
    }
}

fn commit(store: &Store, seq: u64, dnas: Vec<Dna>) -> Lsn {
    let tx = Transaction {
        client: 1,
        seq,
        lock: LockRef::None,
        roots: vec![],
        dnas,
    };
    store.commit(tx.encode()).unwrap()
}

/// Three objects checkpointed into a data segment, then three updates only
/// in the WAL. Returns the ids and the checkpoint LSN.
fn populate(dir: &Path) -> (Vec<ObjectId>, Lsn) {
    let store = Store::open(dir, config()).unwrap();
    let class = store
        .register_class(&ClassDef::plain(
            "c.Item",
            &[
                ("n", FieldKind::Scalar(ScalarKind::Long)),
                ("label", FieldKind::Scalar(ScalarKind::String)),
            ],
        ))
        .unwrap();
    let ids: Vec<ObjectId> = store.allocate_ids(3).unwrap().map(ObjectId).collect();
    commit(
        &store,
        1,
        ids.iter()
            .map(|id| Dna::new_object(*id, class).field(1, Value::String(format!("item {}", id.0))))
            .collect(),
    );
    let checkpoint = store.checkpoint().unwrap().lsn;
    for (i, id) in ids.iter().enumerate() {
        commit(
            &store,
            2 + i as u64,
            vec![Dna::update(*id).field(0, Value::Long(i as i64 + 10))],
        );
    }
    (ids, checkpoint)
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn message(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Ok(v) => panic!("damage went unnoticed: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_flipped_byte_in_the_object_table_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = populate(dir.path());
    let entry = TABLE_HEADER_BYTES as u64 + ids[1].0 * TABLE_ENTRY_BYTES as u64;
    flip(&dir.path().join(TABLE_FILE_NAME), entry + 9);
    let msg = message(Store::open(dir.path(), config()));
    assert!(msg.contains(TABLE_FILE_NAME), "{msg}");
    assert!(msg.contains(&format!("offset {entry}")), "{msg}");
    flip(&dir.path().join(TABLE_FILE_NAME), entry + 9);
    Store::open(dir.path(), config()).expect("undoing the flip restores the store");
}

/// The WAL segment files with their first LSNs, in LSN order.
fn wal_segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut segments: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join(WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .map(|p| {
            (
                u64::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap(),
                p,
            )
        })
        .collect();
    segments.sort();
    segments
}

/// The WAL segment holding `lsn` and the file offset of `lsn` in it.
fn wal_place(dir: &Path, lsn: Lsn) -> (PathBuf, u64) {
    let (first, path) = wal_segments(dir)
        .into_iter()
        .rfind(|(first, _)| *first <= lsn.0)
        .unwrap();
    (
        path,
        tc_wal::format::SEGMENT_HEADER_BYTES as u64 + lsn.0 - first,
    )
}

/// Flips a byte in the payload of the WAL record at `lsn` (again: undoes
/// it); returns the record's segment and offset.
fn flip_wal_record(dir: &Path, lsn: Lsn) -> (PathBuf, u64) {
    let (path, offset) = wal_place(dir, lsn);
    flip(
        &path,
        offset + tc_wal::format::FRAME_HEADER_BYTES as u64 + 2,
    );
    (path, offset)
}

/// `msg` names the file of `path` and `offset`.
fn assert_names(msg: &str, path: &Path, offset: u64) {
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains(&format!("offset {offset}")), "{msg}");
}

#[test]
fn a_flipped_byte_in_the_wal_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_, checkpoint) = populate(dir.path());
    // Inside the payload of the first record after the checkpoint; two
    // more records follow it.
    let (path, offset) = flip_wal_record(dir.path(), checkpoint);
    let msg = message(Store::open(dir.path(), config()));
    assert_names(&msg, &path, offset);
}

/// The data segment file and offset of `id`'s image.
fn image_place(dir: &Path, id: ObjectId) -> (PathBuf, u64) {
    let entry = ObjectTable::open_read_only(dir.join(TABLE_FILE_NAME))
        .unwrap()
        .get(id)
        .unwrap()
        .expect("checkpointed");
    (
        dir.join(SEGMENTS_DIR)
            .join(segment_file_name(entry.segment)),
        u64::from(entry.offset),
    )
}

#[test]
fn a_damaged_image_that_replay_needs_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = populate(dir.path());
    let (segment, offset) = image_place(dir.path(), ids[1]);
    flip(&segment, offset + 26);
    let msg = message(Store::open(dir.path(), config()));
    assert_names(&msg, &segment, offset);
}

#[test]
fn a_flipped_byte_in_a_data_segment_fails_that_object_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = populate(dir.path());
    Store::open(dir.path(), config()).unwrap().close().unwrap();
    let entry = ObjectTable::open_read_only(dir.path().join(TABLE_FILE_NAME))
        .unwrap()
        .get(ids[0])
        .unwrap()
        .expect("checkpointed");
    let segment = dir
        .path()
        .join(SEGMENTS_DIR)
        .join(segment_file_name(entry.segment));
    flip(&segment, u64::from(entry.offset) + 26);

    let store = Store::open(dir.path(), config()).expect("images are read when needed");
    let msg = message(store.get(ids[0]));
    assert!(msg.contains(&segment_file_name(entry.segment)), "{msg}");
    assert!(msg.contains(&format!("offset {}", entry.offset)), "{msg}");
    // A change to the damaged object fails; nothing else stops.
    let msg = message(
        store.commit(
            Transaction {
                client: 1,
                seq: 9,
                lock: LockRef::None,
                roots: vec![],
                dnas: vec![Dna::update(ids[0]).field(0, Value::Long(1))],
            }
            .encode(),
        ),
    );
    assert!(msg.contains(&segment_file_name(entry.segment)), "{msg}");
    assert!(store.get(ids[2]).unwrap().is_some());
    commit(
        &store,
        10,
        vec![Dna::update(ids[2]).field(0, Value::Long(99))],
    );
    assert_eq!(
        store.get(ids[2]).unwrap().unwrap().object.body,
        tc_heap_store::model::Body::Fields(vec![
            Value::Long(99),
            Value::String(format!("item {}", ids[2].0))
        ])
    );
    // The async path (the server's) faults on a blocking thread and fails
    // the same way, before anything is logged; the store carries on.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let update = |seq, id, n| {
        Transaction {
            client: 1,
            seq,
            lock: LockRef::None,
            roots: vec![],
            dnas: vec![Dna::update(id).field(0, Value::Long(n))],
        }
        .encode()
    };
    let msg = message(runtime.block_on(store.commit_async(update(11, ids[0], 2))));
    assert!(msg.contains(&segment_file_name(entry.segment)), "{msg}");
    runtime
        .block_on(store.commit_async(update(12, ids[2], 100)))
        .expect("other objects still commit");
}

/// With the WAL in many segments, the open leaves the segments after the
/// checkpoint to replay's reader (they are not read twice); damage in one
/// of them is still refused at open, naming the file and the offset, with
/// one replay thread or several.
#[test]
fn a_flipped_byte_in_a_wal_segment_after_the_checkpoint_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = config();
        config.wal.segment_bytes = 64 << 10;
        config.wal.max_record_bytes = 8 << 10;
        config
    };
    let store = Store::open(dir.path(), config()).unwrap();
    let class = store
        .register_class(&ClassDef::plain(
            "c.Note",
            &[("text", FieldKind::Scalar(ScalarKind::String))],
        ))
        .unwrap();
    let id = ObjectId(store.allocate_ids(1).unwrap().start);
    commit(&store, 1, vec![Dna::new_object(id, class)]);
    let checkpoint = store.checkpoint().unwrap().lsn;
    // ~250 KB of updates after the checkpoint: four or more segments.
    let mut lsns = Vec::new();
    for seq in 2..1000u64 {
        let text = Value::String(format!("{seq:0>240}"));
        lsns.push(commit(&store, seq, vec![Dna::update(id).field(0, text)]));
    }
    drop(store);
    let segments = wal_segments(dir.path()).len();
    assert!(segments >= 4, "{segments} WAL segments");
    // A record in the second segment after the checkpoint's: neither the
    // checkpoint's segment nor the last.
    let (checkpoint_segment, _) = wal_place(dir.path(), checkpoint);
    let victim = lsns
        .iter()
        .copied()
        .filter(|lsn| wal_place(dir.path(), *lsn).0 != checkpoint_segment)
        .nth(50)
        .unwrap();
    let (path, offset) = flip_wal_record(dir.path(), victim);
    // One replay thread reads alone, several through a shared reader.
    for replay_threads in 1..=3 {
        let config = StoreConfig {
            replay_threads,
            ..config()
        };
        let msg = message(Store::open(dir.path(), config));
        assert_names(&msg, &path, offset);
    }
    flip_wal_record(dir.path(), victim);
    let store = Store::open(dir.path(), config()).expect("undoing the flip restores the store");
    let text = store.get(id).unwrap().unwrap().object.field(0).cloned();
    assert_eq!(text, Some(Value::String(format!("{:0>240}", 999))));
}

/// A durable WAL record that does not fit the store (it changes an object
/// that does not exist) is refused at open, naming its LSN. With two such
/// records the first is named, whatever the number of replay threads
/// (objects 1001 and 1002 belong to different shards, and the shard of
/// the second may get to its record first).
#[test]
fn the_first_record_that_does_not_fit_is_named_whatever_the_replay_threads() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let wal = tc_wal::Wal::open(dir.path().join(WAL_DIR), config().wal).unwrap();
    let orphan_update = |seq: u64, id: u64| {
        Transaction {
            client: 1,
            seq,
            lock: LockRef::None,
            roots: vec![],
            dnas: vec![Dna::update(ObjectId(id)).field(0, Value::Long(7))],
        }
        .encode()
    };
    let kind = tc_heap_store::records::KIND_TRANSACTION;
    let first = wal.append(kind, orphan_update(10, 1001)).unwrap();
    wal.append(kind, orphan_update(11, 1002)).unwrap();
    wal.close();

    let messages: Vec<String> = (1..=4)
        .map(|replay_threads| {
            let config = StoreConfig {
                replay_threads,
                ..config()
            };
            message(Store::open(dir.path(), config).map(|_| ()))
        })
        .collect();
    assert!(
        messages[0].contains(&format!("lsn {first}")) && messages[0].contains("1001"),
        "{}",
        messages[0]
    );
    assert!(messages.iter().all(|m| *m == messages[0]), "{messages:#?}");
}

/// A record that does not fit, with megabytes of good records before and
/// after it (many of the batches replay threads share): it is named,
/// whatever the number of replay threads, and the open ends.
#[test]
fn a_record_that_does_not_fit_amid_a_long_wal_is_named_whatever_the_replay_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = populate(dir.path());
    let wal = tc_wal::Wal::open(dir.path().join(WAL_DIR), config().wal).unwrap();
    let kind = tc_heap_store::records::KIND_TRANSACTION;
    let update = |seq: u64, id: ObjectId| {
        let label = Value::String(format!("{seq:0>1000}"));
        let dna = Dna::update(id).field(1, label);
        Transaction {
            client: 1,
            seq,
            lock: LockRef::None,
            roots: vec![],
            dnas: vec![dna],
        }
        .encode()
    };
    let mut seq = 10;
    let mut append_good = |n: u64| {
        let pending: Vec<_> = (0..n)
            .map(|_| {
                seq += 1;
                let id = ids[seq as usize % ids.len()];
                wal.submit(kind, update(seq, id)).unwrap()
            })
            .collect();
        for append in pending {
            append.wait().unwrap();
        }
    };
    append_good(2000);
    let bad = wal.append(kind, update(5000, ObjectId(1001))).unwrap();
    append_good(2000);
    wal.close();
    for replay_threads in 1..=4 {
        let config = StoreConfig {
            replay_threads,
            ..config()
        };
        let msg = message(Store::open(dir.path(), config).map(|_| ()));
        assert!(
            msg.contains(&format!("lsn {bad}")) && msg.contains("1001"),
            "{replay_threads} threads: {msg}"
        );
    }
}

/// A durable WAL record whose field write does not fit the object's class
/// (a value of the wrong kind, a slot the class lacks) is refused at open,
/// naming its LSN, the object and the slot, on every replay thread count.
#[test]
fn a_record_writing_a_field_its_class_does_not_have_is_refused_at_open() {
    let cases = [
        (
            0,
            Value::String("not a long".into()),
            "slot 0 cannot hold string",
        ),
        (1, Value::Long(5), "slot 1 cannot hold long"),
        (7, Value::Long(5), "has no slot 7"),
    ];
    for (slot, value, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (ids, _) = populate(dir.path());
        let wal = tc_wal::Wal::open(dir.path().join(WAL_DIR), config().wal).unwrap();
        let record = Transaction {
            client: 1,
            seq: 10,
            lock: LockRef::None,
            roots: vec![],
            // The good write first: the bad one fails the record after it
            // changed the object.
            dnas: vec![
                Dna::update(ids[1])
                    .field(0, Value::Long(99))
                    .field(slot, value.clone()),
            ],
        };
        let bad = wal
            .append(tc_heap_store::records::KIND_TRANSACTION, record.encode())
            .unwrap();
        wal.close();
        for replay_threads in 1..=3 {
            let config = StoreConfig {
                replay_threads,
                ..config()
            };
            let msg = message(Store::open(dir.path(), config).map(|_| ()));
            assert!(
                msg.contains(&format!("lsn {bad}"))
                    && msg.contains(&ids[1].to_string())
                    && msg.contains(problem),
                "{replay_threads} threads: {msg}"
            );
        }
    }
}
