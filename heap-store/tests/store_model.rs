//! Model-based property test of the store: random transactions (new
//! objects, field writes, logical map/list/queue operations, new roots),
//! rejected transactions, checkpoints, cleaner runs, garbage collection and
//! simulated crashes (the store dropped without a clean close, sometimes
//! with a torn write left at the end of the WAL; the reopen replays with 1
//! to 4 threads), compared after every reopen with an in-memory model: every acknowledged transaction is there
//! exactly once and nothing else is.
//!
//! `TC_PROPTEST_CASES` overrides the number of cases (default 32).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use proptest::prelude::*;
use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::model::{LogicalOp, Object};
use tc_heap_store::{
    ClassDef, ClassId, ClassKind, FieldKind, ObjectId, ScalarKind, Store, StoreConfig, StoreError,
    Value,
};

#[derive(Clone, Debug)]
enum Step {
    /// A transaction of up to 4 changes, each chosen by its numbers.
    Commit(Vec<(u8, u64, u64)>),
    /// A transaction that must be rejected (dangling reference).
    Bad(u64),
    Checkpoint,
    Clean,
    Collect,
    Crash {
        torn_tail: bool,
        /// Threads the reopen replays the WAL with.
        replay_threads: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::collection::vec((any::<u8>(), any::<u64>(), any::<u64>()), 1..5).prop_map(Step::Commit),
        1 => any::<u64>().prop_map(Step::Bad),
        2 => Just(Step::Checkpoint),
        1 => Just(Step::Clean),
        1 => Just(Step::Collect),
        2 => (any::<bool>(), 1..=4usize).prop_map(|(torn_tail, replay_threads)| Step::Crash {
            torn_tail,
            replay_threads,
        }),
    ]
}

fn config() -> StoreConfig {
    StoreConfig {
        background_maintenance: false,
        // Tiny: images spread over many segments, the cache evicts.
        data_segment_bytes: 512,
        cache_bytes: 2048,
        cleaner_live_fraction: 0.9,
        ..StoreConfig::default()
    }
}

struct Classes {
    node: ClassId,
    map: ClassId,
    list: ClassId,
    queue: ClassId,
}

#[derive(Default, Clone, PartialEq, Debug)]
struct Model {
    objects: BTreeMap<ObjectId, Object>,
    roots: BTreeMap<String, ObjectId>,
}

impl Model {
    fn pick(&self, n: u64, kind: ClassKind) -> Option<ObjectId> {
        let of_kind: Vec<ObjectId> = self
            .objects
            .iter()
            .filter(|(_, o)| o.kind() == kind)
            .map(|(id, _)| *id)
            .collect();
        (!of_kind.is_empty()).then(|| of_kind[(n % of_kind.len() as u64) as usize])
    }

    fn any_object(&self, n: u64) -> Option<ObjectId> {
        let ids: Vec<ObjectId> = self.objects.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[(n % ids.len() as u64) as usize])
    }

    fn reachable(&self) -> HashSet<ObjectId> {
        let mut seen = HashSet::new();
        let mut stack: Vec<ObjectId> = self.roots.values().copied().collect();
        while let Some(id) = stack.pop() {
            if let Some(o) = self.objects.get(&id).filter(|_| seen.insert(id)) {
                o.references(&mut |to| stack.push(to));
            }
        }
        seen
    }
}

fn node_def() -> ClassDef {
    ClassDef::plain(
        "t.Node",
        &[
            ("n", FieldKind::Scalar(ScalarKind::Int)),
            ("s", FieldKind::Scalar(ScalarKind::String)),
            ("next", FieldKind::Scalar(ScalarKind::Reference)),
            ("data", FieldKind::Array(ScalarKind::Long)),
        ],
    )
}

fn value(n: u64, model: &Model, created: &[ObjectId]) -> Value {
    match n % 5 {
        0 => Value::Int(n as i32),
        1 => Value::String(format!("v{}", n % 97)),
        2 => match model.any_object(n / 5).or(created.first().copied()) {
            Some(id) => Value::Reference(id),
            None => Value::Null,
        },
        3 => Value::Double((n % 1000) as f64 / 8.0),
        _ => Value::Null,
    }
}

/// Builds a valid transaction from the step's numbers, applying it to a
/// copy of the model; returns (transaction, model after it).
fn build(
    changes: &[(u8, u64, u64)],
    model: &Model,
    classes: &Classes,
    ids: &mut std::ops::Range<u64>,
    seq: u64,
) -> (Transaction, Model) {
    let mut after = model.clone();
    let mut dnas: Vec<Dna> = Vec::new();
    let mut created = Vec::new();
    let mut touched = HashSet::new();
    let mut roots = Vec::new();
    for &(what, a, b) in changes {
        let pick = |kind| model.pick(a, kind).filter(|id| !touched.contains(id));
        let dna = match what % 8 {
            0 | 1 => {
                let id = ObjectId(ids.next().expect("enough ids"));
                let (class, def) = match b % 4 {
                    0 => (classes.map, ClassDef::collection("t.Map", ClassKind::Map)),
                    1 => (
                        classes.list,
                        ClassDef::collection("t.List", ClassKind::List),
                    ),
                    2 => (
                        classes.queue,
                        ClassDef::collection("t.Queue", ClassKind::Queue),
                    ),
                    _ => (classes.node, node_def()),
                };
                let mut dna = Dna::new_object(id, class);
                let mut object = Object::new(class, &def);
                if def.kind == ClassKind::Plain {
                    let v = Value::Int(b as i32);
                    object.set_field(0, v.clone());
                    dna = dna.field(0, v);
                }
                after.objects.insert(id, object);
                created.push(id);
                if a % 3 == 0 {
                    roots.push((format!("root{}", a % 7), id));
                }
                dna
            }
            2 | 3 => {
                let Some(id) = pick(ClassKind::Plain) else {
                    continue;
                };
                let (slot, v) = match b % 4 {
                    0 => (0, Value::Int(b as i32)),
                    1 => (1, Value::String(format!("s{}", b % 1000))),
                    2 => (2, value((b % 1_000_000) * 5 + 2, model, &created)),
                    _ => (2, Value::Null),
                };
                after
                    .objects
                    .get_mut(&id)
                    .unwrap()
                    .set_field(slot, v.clone());
                Dna::update(id).field(slot, v)
            }
            4 => {
                let Some(id) = pick(ClassKind::Map) else {
                    continue;
                };
                let op = match b % 4 {
                    0 | 1 => {
                        LogicalOp::MapPut(Value::Int((b % 13) as i32), value(b, model, &created))
                    }
                    2 => LogicalOp::MapRemove(Value::Int((b % 13) as i32)),
                    _ => LogicalOp::Clear,
                };
                after.objects.get_mut(&id).unwrap().apply(&op);
                Dna::update(id).op(op)
            }
            5 | 6 => {
                let Some(id) = pick(ClassKind::List) else {
                    continue;
                };
                let len = after.objects[&id].len() as u32;
                let op = match (b % 5, len) {
                    (0, _) | (_, 0) => LogicalOp::ListAdd(value(b, model, &created)),
                    (1, _) => LogicalOp::ListInsert(
                        (b % u64::from(len + 1)) as u32,
                        Value::Long(b as i64),
                    ),
                    (2, _) => LogicalOp::ListSet((b % u64::from(len)) as u32, Value::Int(1)),
                    (3, _) => LogicalOp::ListRemoveAt((b % u64::from(len)) as u32),
                    _ => LogicalOp::Clear,
                };
                after.objects.get_mut(&id).unwrap().apply(&op);
                Dna::update(id).op(op)
            }
            _ => {
                let Some(id) = pick(ClassKind::Queue) else {
                    continue;
                };
                let op = if b % 3 == 0 {
                    LogicalOp::QueuePoll
                } else {
                    LogicalOp::QueueOffer(Value::Int(b as i32))
                };
                after.objects.get_mut(&id).unwrap().apply(&op);
                Dna::update(id).op(op)
            }
        };
        touched.insert(dna.object);
        dnas.push(dna);
    }
    roots.retain(|(name, _)| !model.roots.contains_key(name));
    roots.dedup_by(|a, b| a.0 == b.0);
    for (name, id) in &roots {
        after.roots.insert(name.clone(), *id);
    }
    let tx = Transaction {
        client: 9,
        seq,
        lock: LockRef::None,
        roots,
        dnas,
    };
    (tx, after)
}

fn check(
    store: &Store,
    model: &Model,
    everything: &HashSet<ObjectId>,
) -> Result<(), TestCaseError> {
    for id in everything {
        let got = store
            .get(*id)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            got.map(|s| (*s.object).clone()),
            model.objects.get(id).cloned(),
            "object {}",
            id
        );
    }
    let roots: BTreeMap<String, ObjectId> = store.roots().into_iter().collect();
    prop_assert_eq!(&roots, &model.roots);
    Ok(())
}

/// Writes garbage where the next WAL record would go (a torn write of a
/// record that was never acknowledged). `end` is the durable end LSN.
fn tear_wal_tail(dir: &Path, end: u64, noise: u64) {
    use std::os::unix::fs::FileExt;
    let wal = dir.join(tc_heap_store::WAL_DIR);
    let mut segments: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&wal)
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
    let (first_lsn, last) = segments.last().expect("a WAL segment");
    let offset = tc_wal::format::SEGMENT_HEADER_BYTES as u64 + end - first_lsn;
    let garbage: Vec<u8> = (0..40).map(|i| (noise >> (i % 8)) as u8 | 1).collect();
    let file = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    if offset + garbage.len() as u64 <= file.metadata().unwrap().len() {
        file.write_all_at(&garbage, offset).unwrap();
    }
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), config()).unwrap();
    let classes = Classes {
        node: store.register_class(&node_def()).unwrap(),
        map: store
            .register_class(&ClassDef::collection("t.Map", ClassKind::Map))
            .unwrap(),
        list: store
            .register_class(&ClassDef::collection("t.List", ClassKind::List))
            .unwrap(),
        queue: store
            .register_class(&ClassDef::collection("t.Queue", ClassKind::Queue))
            .unwrap(),
    };
    let mut ids = store.allocate_ids(1000).unwrap();
    let mut model = Model::default();
    let mut everything = HashSet::new();
    for (seq, step) in steps.into_iter().enumerate() {
        match step {
            Step::Commit(changes) => {
                let (tx, after) = build(&changes, &model, &classes, &mut ids, seq as u64);
                if tx.dnas.is_empty() {
                    continue;
                }
                everything.extend(tx.dnas.iter().map(|d| d.object));
                store
                    .commit(tx.encode())
                    .map_err(|e| TestCaseError::fail(format!("commit: {e}")))?;
                model = after;
            }
            Step::Bad(n) => {
                let Some(id) = model.pick(n, ClassKind::Plain) else {
                    continue;
                };
                let tx = Transaction {
                    client: 9,
                    seq: seq as u64,
                    lock: LockRef::None,
                    roots: vec![],
                    dnas: vec![
                        Dna::update(id)
                            .field(0, Value::Int(-1))
                            .field(2, Value::Reference(ObjectId(1 << 30))),
                    ],
                };
                prop_assert!(matches!(
                    store.commit(tx.encode()),
                    Err(StoreError::Rejected(_))
                ));
            }
            Step::Checkpoint => {
                store
                    .checkpoint()
                    .map_err(|e| TestCaseError::fail(format!("checkpoint: {e}")))?;
            }
            Step::Clean => {
                store
                    .clean()
                    .map_err(|e| TestCaseError::fail(format!("clean: {e}")))?;
            }
            Step::Collect => {
                let report = store
                    .collect_garbage(&[])
                    .map_err(|e| TestCaseError::fail(format!("gc: {e}")))?;
                let live = model.reachable();
                let before = model.objects.len();
                model.objects.retain(|id, _| live.contains(id));
                prop_assert_eq!(report.deleted as usize, before - model.objects.len());
            }
            Step::Crash {
                torn_tail,
                replay_threads,
            } => {
                let end = store.stats().applied_lsn.0;
                drop(store);
                if torn_tail {
                    tear_wal_tail(dir.path(), end, seq as u64 * 7919);
                }
                let config = StoreConfig {
                    replay_threads,
                    ..config()
                };
                store = Store::open(dir.path(), config)
                    .map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
                check(&store, &model, &everything)?;
            }
        }
    }
    check(&store, &model, &everything)?;
    store.close().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    prop_assert_eq!(store.open_report().replayed_records, 0);
    check(&store, &model, &everything)
}

fn cases() -> u32 {
    std::env::var("TC_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_store_matches_the_model_across_crashes(steps in prop::collection::vec(step(), 1..60)) {
        run(steps)?;
    }
}
