//! Shared by the tools' tests: a real data dir made with the real store,
//! running the built binaries, damaging files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::model::LogicalOp;
use tc_heap_store::table::{ObjectTable, TABLE_FILE_NAME, TableEntry};
use tc_heap_store::{
    Array, ClassDef, ClassKind, FieldKind, ObjectId, ScalarKind, Store, StoreConfig, Value,
};
use tc_wal::WalConfig;

/// Held while a child process is spawned and while a store closes.
///
/// The WAL's `LOCK` is an `flock` on an `O_CLOEXEC` descriptor. A child
/// forked by another test thread shares that descriptor until it execs, so
/// a store dropped in that window stays locked a moment longer, and a tool
/// started right after the drop sees the dir as held by a server (exit 2).
/// `spawn` returns only after the child exec'd, so holding this lock
/// around spawns and store drops closes the window.
pub static FORK_LOCK: Mutex<()> = Mutex::new(());

pub fn fork_lock() -> MutexGuard<'static, ()> {
    FORK_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn config() -> StoreConfig {
    StoreConfig {
        background_maintenance: false,
        wal: WalConfig {
            segment_bytes: 256 << 10,
            max_record_bytes: 64 << 10,
            ..WalConfig::default()
        },
        ..StoreConfig::default()
    }
}

pub fn person() -> ClassDef {
    ClassDef::plain(
        "demo.Person",
        &[
            ("name", FieldKind::Scalar(ScalarKind::String)),
            ("age", FieldKind::Scalar(ScalarKind::Int)),
            ("friend", FieldKind::Scalar(ScalarKind::Reference)),
            ("tags", FieldKind::Array(ScalarKind::String)),
        ],
    )
}

pub fn pet() -> ClassDef {
    ClassDef::plain(
        "demo.Pet",
        &[
            ("name", FieldKind::Scalar(ScalarKind::String)),
            ("owner", FieldKind::Scalar(ScalarKind::Reference)),
        ],
    )
}

fn tx(seq: u64, dnas: Vec<Dna>, roots: Vec<(&str, ObjectId)>) -> Vec<u8> {
    Transaction {
        client: 7,
        seq,
        lock: LockRef::Named("people-lock".into()),
        roots: roots
            .into_iter()
            .map(|(n, id)| (n.to_string(), id))
            .collect(),
        dnas,
    }
    .encode()
}

/// The ids of the fixture's objects.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub alice: ObjectId,
    pub bob: ObjectId,
    pub carol: ObjectId,
    pub list: ObjectId,
    pub map: ObjectId,
    pub dave: ObjectId,
    pub rex: ObjectId,
    /// Unreachable; collected (deleted) after the checkpoint.
    pub eve: ObjectId,
}

/// How the fixture's store ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Dropped after the last commit: the commits after the checkpoint are
    /// only in the WAL (the WAL itself closes cleanly).
    Drop,
    /// `Store::close`: a final checkpoint.
    Close,
}

/// A data dir with classes, objects (plain, list, map), roots, a
/// checkpoint, then more commits, a garbage collection (a Delete record and
/// a tombstone), a class registration and an id block only in the WAL.
pub fn make_data_dir(dir: &Path, end: End) -> Ids {
    let _no_fork = fork_lock();
    let store = Store::open(dir, config()).expect("open store");
    let person = store.register_class(&person()).expect("class");
    let list_class = store
        .register_class(&ClassDef::collection(
            "java.util.ArrayList",
            ClassKind::List,
        ))
        .expect("class");
    let map_class = store
        .register_class(&ClassDef::collection("java.util.HashMap", ClassKind::Map))
        .expect("class");
    let ids = store.allocate_ids(16).expect("ids");
    let id = |n: u64| ObjectId(ids.start + n);
    let ids = Ids {
        alice: id(0),
        bob: id(1),
        carol: id(2),
        list: id(3),
        map: id(4),
        dave: id(5),
        rex: id(6),
        eve: id(7),
    };
    store
        .commit(tx(
            1,
            vec![
                Dna::new_object(ids.alice, person)
                    .field(0, Value::String("alice".into()))
                    .field(2, Value::Reference(ids.bob))
                    .field(
                        3,
                        Value::Array(Array::String(vec![Some("admin".into()), None])),
                    ),
                Dna::new_object(ids.bob, person)
                    .field(0, Value::String("bob".into()))
                    .field(1, Value::Int(40)),
                Dna::new_object(ids.list, list_class)
                    .op(LogicalOp::ListAdd(Value::Int(1)))
                    .op(LogicalOp::ListAdd(Value::Reference(ids.alice))),
                Dna::new_object(ids.map, map_class).op(LogicalOp::MapPut(
                    Value::String("bob".into()),
                    Value::Reference(ids.bob),
                )),
            ],
            vec![("people", ids.list), ("index", ids.map)],
        ))
        .expect("commit 1");
    store
        .commit(tx(
            2,
            vec![
                Dna::new_object(ids.carol, person).field(0, Value::String("carol".into())),
                Dna::update(ids.bob).field(2, Value::Reference(ids.carol)),
            ],
            vec![],
        ))
        .expect("commit 2");
    store
        .commit(tx(
            3,
            vec![
                Dna::update(ids.carol).field(2, Value::Reference(ids.alice)),
                Dna::new_object(ids.eve, person).field(0, Value::String("eve".into())),
            ],
            vec![],
        ))
        .expect("commit 3");
    store.checkpoint().expect("checkpoint");
    // After the checkpoint: only in the WAL (unless closed).
    store
        .commit(tx(
            4,
            vec![
                Dna::update(ids.bob).field(1, Value::Int(41)),
                Dna::update(ids.list).op(LogicalOp::ListInsert(0, Value::Null)),
                Dna::new_object(ids.dave, person).field(0, Value::String("dave".into())),
            ],
            vec![("dave", ids.dave)],
        ))
        .expect("commit 4");
    let gc = store.collect_garbage(&[]).expect("gc");
    assert_eq!(gc.deleted, 1, "only eve is unreachable");
    let pet_class = store.register_class(&pet()).expect("class in the WAL");
    store.allocate_ids(8).expect("ids in the WAL");
    store
        .commit(tx(
            5,
            vec![
                Dna::new_object(ids.rex, pet_class)
                    .field(0, Value::String("rex".into()))
                    .field(1, Value::Reference(ids.dave)),
                Dna::update(ids.dave).field(2, Value::Reference(ids.alice)),
            ],
            vec![],
        ))
        .expect("commit 5");
    store
        .commit(tx(
            6,
            vec![Dna::update(ids.alice).field(1, Value::Int(30))],
            vec![],
        ))
        .expect("commit 6");
    match end {
        End::Drop => drop(store),
        End::Close => store.close().expect("close"),
    }
    ids
}

pub fn fsck_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tc-fsck")
}

pub fn dump_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tc-dump")
}

/// Runs a built binary; returns (exit code, stdout, stderr).
pub fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let child = {
        let _no_fork = fork_lock();
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the tool")
    };
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait for the tool");
    (
        status.code().expect("exited, not killed"),
        String::from_utf8(stdout).expect("utf-8 stdout"),
        String::from_utf8(stderr).expect("utf-8 stderr"),
    )
}

pub fn fsck(dir: &Path, json: bool) -> (i32, String, String) {
    let dir = dir.to_str().expect("utf-8 path");
    if json {
        run(fsck_bin(), &[dir, "--json"])
    } else {
        run(fsck_bin(), &[dir])
    }
}

pub fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open to damage");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= 0x5a;
    file.write_all_at(&byte, offset).expect("write byte");
}

pub fn table_entry(dir: &Path, id: ObjectId) -> TableEntry {
    ObjectTable::open_read_only(dir.join(TABLE_FILE_NAME))
        .expect("open table")
        .get(id)
        .expect("entry decodes")
        .expect("entry present")
}

pub fn wal_segment(dir: &Path) -> PathBuf {
    dir.join("wal").join("0000000000000000.wal")
}

/// Every file under `dir`: its bytes and mtime, by relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in fs::read_dir(&at).expect("list") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let meta = entry.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let bytes = if meta.is_file() {
                fs::read(&path).expect("read")
            } else {
                Vec::new()
            };
            let rel = path.strip_prefix(dir).expect("under dir").to_path_buf();
            out.insert(rel, (bytes, meta.modified().expect("mtime")));
        }
    }
    out
}

/// The lines of `text` that mention every one of `needles`.
pub fn lines_with<'a>(text: &'a str, needles: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}
