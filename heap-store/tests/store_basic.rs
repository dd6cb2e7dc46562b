//! The store's behaviour through its public API on real files.

use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::model::{Body, LogicalOp};
use tc_heap_store::{
    ClassDef, ClassKind, FieldKind, ObjectId, Rejection, ScalarKind, Store, StoreConfig,
    StoreError, Value,
};

fn config() -> StoreConfig {
    StoreConfig {
        background_maintenance: false,
        ..StoreConfig::default()
    }
}

fn person() -> ClassDef {
    ClassDef::plain(
        "demo.Person",
        &[
            ("name", FieldKind::Scalar(ScalarKind::String)),
            ("age", FieldKind::Scalar(ScalarKind::Int)),
            ("friend", FieldKind::Scalar(ScalarKind::Reference)),
        ],
    )
}

fn array_list() -> ClassDef {
    ClassDef::collection("java.util.ArrayList", ClassKind::List)
}

fn tx(seq: u64, dnas: Vec<Dna>, roots: Vec<(&str, ObjectId)>) -> Vec<u8> {
    Transaction {
        client: 1,
        seq,
        lock: LockRef::None,
        roots: roots
            .into_iter()
            .map(|(n, id)| (n.to_string(), id))
            .collect(),
        dnas,
    }
    .encode()
}

fn rejection(err: StoreError) -> Rejection {
    match err {
        StoreError::Rejected(r) => r,
        other => panic!("expected a rejection, got {other}"),
    }
}

#[test]
fn commits_survive_reopen_with_and_without_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, list);
    {
        let store = Store::open(dir.path(), config()).unwrap();
        let class = store.register_class(&person()).unwrap();
        let list_class = store.register_class(&array_list()).unwrap();
        let ids = store.allocate_ids(10).unwrap();
        alice = ObjectId(ids.start);
        bob = ObjectId(ids.start + 1);
        list = ObjectId(ids.start + 2);
        store
            .commit(tx(
                1,
                vec![
                    Dna::new_object(alice, class)
                        .field(0, Value::String("alice".into()))
                        .field(2, Value::Reference(bob)),
                    Dna::new_object(bob, class).field(1, Value::Int(40)),
                    Dna::new_object(list, list_class)
                        .op(LogicalOp::ListAdd(Value::Int(1)))
                        .op(LogicalOp::ListAdd(Value::Reference(alice))),
                ],
                vec![("people", list)],
            ))
            .unwrap();
        store.checkpoint().unwrap();
        store
            .commit(tx(
                2,
                vec![
                    Dna::update(bob).field(1, Value::Int(41)),
                    Dna::update(list).op(LogicalOp::ListInsert(0, Value::Null)),
                ],
                vec![],
            ))
            .unwrap();
        // Dropped without close: the second commit is only in the WAL.
    }
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(store.open_report().replayed_records, 1);
    assert_eq!(store.root("people"), Some(list));
    let bob_now = store.get(bob).unwrap().expect("bob exists");
    assert_eq!(
        bob_now.object.body,
        Body::Fields(vec![Value::Null, Value::Int(41), Value::Null])
    );
    let list_now = store.get(list).unwrap().unwrap();
    assert_eq!(
        list_now.object.body,
        Body::List(vec![Value::Null, Value::Int(1), Value::Reference(alice)])
    );
    store.close().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    assert_eq!(
        store.open_report().replayed_records,
        0,
        "a clean close leaves nothing to replay"
    );
    assert_eq!(
        store.get(alice).unwrap().unwrap().object.body,
        Body::Fields(vec![
            Value::String("alice".into()),
            Value::Int(0),
            Value::Reference(bob)
        ])
    );
}

/// An object read with `get` is a snapshot: commits after it change the
/// stored object, not the image the reader holds; once no reader holds
/// it, the object is changed in place.
#[test]
fn a_snapshot_keeps_its_image_while_later_commits_change_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let class = store.register_class(&person()).unwrap();
    let bob = ObjectId(store.allocate_ids(1).unwrap().start);
    let age = |years| Value::Int(years);
    let fields = |years| Body::Fields(vec![Value::Null, age(years), Value::Null]);
    store
        .commit(tx(
            1,
            vec![Dna::new_object(bob, class).field(1, age(40))],
            vec![],
        ))
        .unwrap();
    let at_40 = store.get(bob).unwrap().unwrap();
    store
        .commit(tx(2, vec![Dna::update(bob).field(1, age(41))], vec![]))
        .unwrap();
    let at_41 = store.get(bob).unwrap().unwrap();
    assert_eq!(at_40.object.body, fields(40), "the earlier snapshot");
    assert_eq!(at_41.object.body, fields(41));
    drop((at_40, at_41));
    store
        .commit(tx(3, vec![Dna::update(bob).field(1, age(42))], vec![]))
        .unwrap();
    assert_eq!(store.get(bob).unwrap().unwrap().object.body, fields(42));
}

#[test]
fn transactions_in_format_v1_commit_and_replay_on_every_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let people: Vec<ObjectId>;
    {
        let store = Store::open(dir.path(), config()).unwrap();
        let class = store.register_class(&person()).unwrap();
        let ids = store.allocate_ids(5).unwrap();
        people = ids.map(ObjectId).collect();
        let create = Transaction {
            client: 1,
            seq: 1,
            lock: LockRef::None,
            roots: vec![("first".to_string(), people[0])],
            dnas: people
                .iter()
                .map(|&id| Dna::new_object(id, class).field(0, Value::String(format!("p{}", id.0))))
                .collect(),
        };
        store.commit(create.encode_v1()).unwrap();
        // Format v1 and v2 transactions interleave in one WAL.
        store
            .commit(tx(
                2,
                vec![Dna::update(people[1]).field(1, Value::Int(20))],
                vec![],
            ))
            .unwrap();
        let update = Transaction {
            seq: 3,
            roots: Vec::new(),
            dnas: people
                .iter()
                .map(|&id| Dna::update(id).field(2, Value::Reference(people[0])))
                .collect(),
            ..create
        };
        store.commit(update.encode_v1()).unwrap();
        // Dropped without close: all three are only in the WAL.
    }
    for replay_threads in [1, 2, 3] {
        let store = Store::open(
            dir.path(),
            StoreConfig {
                replay_threads,
                ..config()
            },
        )
        .unwrap();
        // The class, the id block and the three transactions.
        assert_eq!(store.open_report().replayed_records, 5);
        assert_eq!(store.root("first"), Some(people[0]));
        for &id in &people {
            let age = if id == people[1] { 20 } else { 0 };
            assert_eq!(
                store.get(id).unwrap().expect("replayed").object.body,
                Body::Fields(vec![
                    Value::String(format!("p{}", id.0)),
                    Value::Int(age),
                    Value::Reference(people[0]),
                ]),
                "{id} with {replay_threads} replay threads"
            );
        }
        // Dropped without close again, so the next open replays the same.
    }
}

/// Replay applies a shard's DNAs of a transaction in batches, their
/// objects prefetched first: a transaction of more DNAs than one batch
/// holds, on objects that are cached, faulted in from their images and
/// created by the same record, replays whole on every shard count.
#[test]
fn transactions_of_many_dnas_replay_whole_on_every_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new): (Vec<ObjectId>, Vec<ObjectId>);
    {
        let store = Store::open(dir.path(), config()).unwrap();
        let class = store.register_class(&person()).unwrap();
        old = store.allocate_ids(40).unwrap().map(ObjectId).collect();
        new = store.allocate_ids(40).unwrap().map(ObjectId).collect();
        let create = |ids: &[ObjectId]| -> Vec<Dna> {
            let name = |id: ObjectId| Value::String(format!("p{}", id.0));
            ids.iter()
                .map(|&id| Dna::new_object(id, class).field(0, name(id)))
                .collect()
        };
        store.commit(tx(1, create(&old), vec![])).unwrap();
        // Replay finds these as images, not in its cache.
        store.checkpoint().unwrap();
        let age = |ids: &[ObjectId], age: i32| -> Vec<Dna> {
            ids.iter()
                .map(|&id| Dna::update(id).field(1, Value::Int(age)))
                .collect()
        };
        // Faulted in, then cached, then created in the record that changes
        // the others.
        store.commit(tx(2, age(&old, 1), vec![])).unwrap();
        let mut mixed = age(&old, 2);
        mixed.extend(create(&new));
        store.commit(tx(3, mixed, vec![])).unwrap();
        let friends: Vec<Dna> = old
            .iter()
            .chain(&new)
            .zip(new.iter().chain(&old))
            .map(|(&id, &friend)| Dna::update(id).field(2, Value::Reference(friend)))
            .collect();
        store.commit(tx(4, friends, vec![])).unwrap();
        // Dropped without close: all but the first are only in the WAL.
    }
    for replay_threads in [1, 2, 3] {
        let config = StoreConfig {
            replay_threads,
            ..config()
        };
        let store = Store::open(dir.path(), config).unwrap();
        assert_eq!(store.open_report().replayed_records, 3);
        let pairs = old.iter().zip(&new).chain(new.iter().zip(&old));
        for (&id, &friend) in pairs {
            let age = if old.contains(&id) { 2 } else { 0 };
            assert_eq!(
                store.get(id).unwrap().expect("replayed").object.body,
                Body::Fields(vec![
                    Value::String(format!("p{}", id.0)),
                    Value::Int(age),
                    Value::Reference(friend),
                ]),
                "{id} with {replay_threads} replay threads"
            );
        }
    }
}

#[test]
fn bad_transactions_are_rejected_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    let class = store.register_class(&person()).unwrap();
    let ids = store.allocate_ids(4).unwrap();
    let a = ObjectId(ids.start);
    store
        .commit(tx(1, vec![Dna::new_object(a, class)], vec![]))
        .unwrap();
    let before = store.stats().wal.records;

    type Expect = fn(&Rejection) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (
            tx(
                2,
                vec![Dna::new_object(
                    ObjectId(ids.start + 1),
                    tc_heap_store::ClassId(99),
                )],
                vec![],
            ),
            |r| matches!(r, Rejection::UnknownClass(_)),
        ),
        (
            tx(2, vec![Dna::update(a).field(7, Value::Int(1))], vec![]),
            |r| matches!(r, Rejection::NoSuchSlot { slot: 7, .. }),
        ),
        (
            tx(
                2,
                vec![Dna::update(a).field(1, Value::String("x".into()))],
                vec![],
            ),
            |r| matches!(r, Rejection::WrongKind { slot: 1, .. }),
        ),
        (
            tx(
                2,
                vec![Dna::update(a).field(2, Value::Reference(ObjectId(ids.start + 3)))],
                vec![],
            ),
            |r| matches!(r, Rejection::DanglingReference { .. }),
        ),
        (tx(2, vec![Dna::new_object(a, class)], vec![]), |r| {
            matches!(r, Rejection::DuplicateObject(_))
        }),
        (
            tx(2, vec![Dna::new_object(ObjectId(1 << 40), class)], vec![]),
            |r| matches!(r, Rejection::UnallocatedId(_)),
        ),
        (
            tx(
                2,
                vec![Dna::update(ObjectId(ids.start + 2)).field(1, Value::Int(1))],
                vec![],
            ),
            |r| matches!(r, Rejection::UnknownObject(_)),
        ),
        (
            tx(
                2,
                vec![Dna::update(a).op(LogicalOp::ListAdd(Value::Null))],
                vec![],
            ),
            |r| matches!(r, Rejection::WrongOperation { .. }),
        ),
        (vec![1, 2, 3], |r| matches!(r, Rejection::Malformed(_))),
    ];
    for (bytes, expected) in cases {
        let r = rejection(store.commit(bytes).unwrap_err());
        assert!(expected(&r), "unexpected rejection: {r}");
    }
    assert_eq!(
        store.stats().wal.records,
        before,
        "a rejected transaction reached the WAL"
    );
    // The store carries on.
    store
        .commit(tx(3, vec![Dna::update(a).field(1, Value::Int(5))], vec![]))
        .unwrap();
}

#[test]
fn async_commits_from_many_tasks_are_all_durable_and_applied_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), config()).unwrap());
    let list_class = store.register_class(&array_list()).unwrap();
    let ids = store.allocate_ids(16).unwrap();
    let lists: Vec<ObjectId> = ids.map(ObjectId).collect();
    store
        .commit(tx(
            0,
            lists
                .iter()
                .map(|id| Dna::new_object(*id, list_class))
                .collect(),
            vec![],
        ))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let per_task = 50u64;
    runtime.block_on(async {
        let tasks: Vec<_> = lists
            .iter()
            .map(|&list| {
                let store = std::sync::Arc::clone(&store);
                tokio::spawn(async move {
                    let mut last = tc_heap_store::Lsn(0);
                    for i in 0..per_task {
                        let bytes = tx(
                            i + 1,
                            vec![Dna::update(list).op(LogicalOp::ListAdd(Value::Long(i as i64)))],
                            vec![],
                        );
                        let lsn = store.commit_async(bytes).await.unwrap();
                        assert!(lsn > last, "LSNs of one task's commits increase");
                        last = lsn;
                        // Read-your-writes: the commit is applied when it returns.
                        assert_eq!(store.get(list).unwrap().unwrap().object.len() as u64, i + 1);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    drop(runtime);
    let store = std::sync::Arc::try_unwrap(store).unwrap();
    drop(store);
    let store = Store::open(dir.path(), config()).unwrap();
    for list in lists {
        let expected: Vec<Value> = (0..per_task).map(|i| Value::Long(i as i64)).collect();
        assert_eq!(
            store.get(list).unwrap().unwrap().object.body,
            Body::List(expected)
        );
    }
}

/// With a cache far smaller than the heap, async commits to objects that
/// were evicted fault them back in (off the async worker, on tokio's
/// blocking pool) and apply on top of their durable images.
#[test]
fn async_commits_fault_evicted_objects_back_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        Store::open(
            dir.path(),
            StoreConfig {
                cache_bytes: 4096,
                ..config()
            },
        )
        .unwrap(),
    );
    let class = store.register_class(&person()).unwrap();
    let ids: Vec<ObjectId> = store.allocate_ids(200).unwrap().map(ObjectId).collect();
    let created = ids
        .iter()
        .map(|&id| {
            Dna::new_object(id, class)
                .field(0, Value::String(format!("person {}", id.0)))
                .field(1, Value::Int(0))
        })
        .collect();
    store.commit(tx(1, created, vec![])).unwrap();
    store.checkpoint().unwrap();
    assert!(
        store.stats().cache.objects < ids.len(),
        "the checkpoint let clean objects be evicted"
    );
    let misses_before = store.stats().cache.misses;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (n, &id) in ids.iter().enumerate() {
            let update = Dna::update(id).field(1, Value::Int(n as i32 + 1));
            store
                .commit_async(tx(2 + n as u64, vec![update], vec![]))
                .await
                .unwrap();
        }
    });
    assert!(
        store.stats().cache.misses > misses_before,
        "some commits had to fault their object in"
    );
    for (n, &id) in ids.iter().enumerate() {
        let object = store.get(id).unwrap().unwrap().object;
        assert_eq!(
            object.field(0),
            Some(&Value::String(format!("person {}", id.0)))
        );
        assert_eq!(object.field(1), Some(&Value::Int(n as i32 + 1)));
    }
}

/// Readers fault images in outside the heap lock while commits, checkpoints
/// and the cleaner move them: every read sees a whole transaction (both
/// fields of a pair written together agree) and never an older value than
/// one it saw before, and nothing fails.
#[test]
fn readers_racing_commits_checkpoints_and_the_cleaner_see_whole_changes() {
    const OBJECTS: usize = 64;
    const ROUNDS: i32 = 300;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            cache_bytes: 4096,
            data_segment_bytes: 16 << 10,
            ..config()
        },
    )
    .unwrap();
    let pair = ClassDef::plain(
        "demo.Pair",
        &[
            ("a", FieldKind::Scalar(ScalarKind::Int)),
            ("b", FieldKind::Scalar(ScalarKind::Int)),
        ],
    );
    let class = store.register_class(&pair).unwrap();
    let ids: Vec<ObjectId> = store
        .allocate_ids(OBJECTS as u64)
        .unwrap()
        .map(ObjectId)
        .collect();
    let created = ids.iter().map(|&id| Dna::new_object(id, class)).collect();
    store.commit(tx(1, created, vec![])).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..3)
            .map(|reader| {
                let (store, ids, done) = (&store, &ids, &done);
                scope.spawn(move || {
                    let mut seen = vec![0; OBJECTS];
                    let mut reads = 0u64;
                    let mut n = reader;
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        n = (n * 31 + 7) % OBJECTS;
                        let object = store.get(ids[n]).unwrap().unwrap().object;
                        let (Some(Value::Int(a)), Some(Value::Int(b))) =
                            (object.field(0), object.field(1))
                        else {
                            panic!("fields of {:?}: {object:?}", ids[n]);
                        };
                        assert_eq!(a, b, "half of a transaction visible in {:?}", ids[n]);
                        assert!(
                            *a >= seen[n],
                            "{:?} went back from {} to {a}",
                            ids[n],
                            seen[n]
                        );
                        seen[n] = *a;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for round in 1..=ROUNDS {
            let dnas = ids
                .iter()
                .filter(|id| id.0 % 3 == round as u64 % 3)
                .map(|&id| {
                    Dna::update(id)
                        .field(0, Value::Int(round))
                        .field(1, Value::Int(round))
                })
                .collect();
            store.commit(tx(1 + round as u64, dnas, vec![])).unwrap();
            if round % 10 == 0 {
                store.checkpoint().unwrap();
            }
            if round % 25 == 0 {
                store.clean().unwrap();
            }
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() > 0, "a reader never read");
        }
    });
    assert!(
        store.stats().cache.misses > 0,
        "reads had to fault images in"
    );
    for &id in &ids {
        let object = store.get(id).unwrap().unwrap().object;
        let last = (1..=ROUNDS)
            .rev()
            .find(|r| id.0 % 3 == *r as u64 % 3)
            .unwrap();
        assert_eq!(object.field(0), Some(&Value::Int(last)));
    }
}

/// With several shards, replay reads the WAL once for all of them, in
/// batches (128 KiB) that every shard takes in turn: a WAL of many
/// batches and several segments, with objects created, changed and named
/// as roots all along it, replays to the same heap on every shard count,
/// every change applied once (lists, one per shard, gain an element per
/// transaction).
#[test]
fn a_wal_of_many_batches_replays_whole_on_every_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = config();
        config.wal.segment_bytes = 1 << 20;
        config.wal.max_record_bytes = 64 << 10;
        config
    };
    let mut expected: std::collections::BTreeMap<ObjectId, (String, i32)> = Default::default();
    let mut roots = Vec::new();
    let lists: Vec<ObjectId>;
    {
        let store = Store::open(dir.path(), config()).unwrap();
        let class = store.register_class(&person()).unwrap();
        let list_class = store.register_class(&array_list()).unwrap();
        lists = store.allocate_ids(4).unwrap().map(ObjectId).collect();
        let mut ids: Vec<ObjectId> = store.allocate_ids(64).unwrap().map(ObjectId).collect();
        let created = (lists.iter().map(|&id| Dna::new_object(id, list_class)))
            .chain(ids.iter().map(|&id| Dna::new_object(id, class)))
            .collect();
        store.commit(tx(1, created, vec![])).unwrap();
        for &id in &ids {
            expected.insert(id, (String::new(), 0));
        }
        for seq in 2..700u64 {
            let mut dnas: Vec<Dna> = (0..8)
                .map(|k| {
                    let id = ids[(seq as usize * 8 + k * 7) % ids.len()];
                    let name = format!("{seq}-{k}-{:0>400}", id.0);
                    let age = seq as i32 * 10 + k as i32;
                    expected.insert(id, (name.clone(), age));
                    Dna::update(id)
                        .field(0, Value::String(name))
                        .field(1, Value::Int(age))
                })
                .collect();
            let list = lists[seq as usize % lists.len()];
            dnas.push(Dna::update(list).op(LogicalOp::ListAdd(Value::Long(seq as i64))));
            let mut named = vec![];
            if seq % 100 == 0 {
                let id = ObjectId(store.allocate_ids(1).unwrap().start);
                let name = format!("new at {seq}");
                dnas.push(Dna::new_object(id, class).field(0, Value::String(name.clone())));
                expected.insert(id, (name, 0));
                ids.push(id);
                roots.push((format!("root {seq}"), id));
                named.push((roots.last().unwrap().0.as_str(), id));
            }
            store.commit(tx(seq, dnas, named)).unwrap();
        }
        // Dropped without close: everything is in the WAL only.
    }
    let wal_bytes: u64 = std::fs::read_dir(dir.path().join(tc_heap_store::WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        wal_bytes > 2 << 20,
        "{wal_bytes} WAL bytes: not many batches"
    );
    for replay_threads in 1..=4 {
        let config = StoreConfig {
            replay_threads,
            ..config()
        };
        let store = Store::open(dir.path(), config).unwrap();
        let report = store.open_report();
        assert!(
            report.replayed_bytes > 2 << 20,
            "{replay_threads} threads: {report:?}"
        );
        for (&id, (name, age)) in &expected {
            let got = store.get(id).unwrap().expect("replayed");
            let Body::Fields(fields) = &got.object.body else {
                panic!("{id} is not a plain object")
            };
            assert_eq!(
                fields[..2],
                [Value::String(name.clone()), Value::Int(*age)],
                "{id} with {replay_threads} replay threads"
            );
        }
        for (name, id) in &roots {
            assert_eq!(
                store.root(name),
                Some(*id),
                "{name}, {replay_threads} threads"
            );
        }
        for (k, &list) in lists.iter().enumerate() {
            let added = (2..700i64).filter(|seq| *seq as usize % lists.len() == k);
            assert_eq!(
                store.get(list).unwrap().expect("replayed").object.body,
                Body::List(added.map(Value::Long).collect()),
                "{list} with {replay_threads} replay threads"
            );
        }
    }
}
