//! Real crash test of the object store: a child process commits
//! transactions from several threads, with background checkpoints, the
//! cleaner and garbage collection running, and prints each transaction's
//! (thread, seq) only after `commit` returned. The parent `kill -9`s it at
//! a random moment, reopens the store and checks, for every thread, that
//! every acknowledged transaction is visible exactly once and nothing
//! partial is: `last` is the last acknowledged seq or the one after it,
//! `total` is the sum 1..=last, the queue holds exactly the last 64 seqs
//! (a replayed offer/poll would break that), and the head node is the one
//! the last transaction of a multiple of 8 created. Then it closes the
//! store (a checkpoint). tc-fsck's checks must find the data dir clean
//! both right after the kill and after the close. 50 cycles on one data dir.
//!
//! `harness = false`: this binary is both parent and child
//! (`TC_STORE_CHILD_DIR`). Prints its seed; `TC_SEED=<n>` replays the kill
//! timings. `TC_CRASH_CYCLES` overrides 50.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::model::{Body, LogicalOp};
use tc_heap_store::{
    ClassDef, ClassKind, FieldKind, ObjectId, ScalarKind, Store, StoreConfig, Value,
};
use tc_wal::WalConfig;

const THREADS: u64 = 4;
const WINDOW: usize = 64;
const NODE_EVERY: u64 = 8;
// Track fields.
const LAST: u32 = 0;
const TOTAL: u32 = 1;
const HEAD: u32 = 2;
const WINDOW_REF: u32 = 3;
// Node fields.
const NODE_SEQ: u32 = 0;

fn main() {
    if let Ok(dir) = std::env::var("TC_STORE_CHILD_DIR") {
        child(Path::new(&dir));
        return;
    }
    let seed: u64 = match std::env::var("TC_SEED") {
        Ok(s) => s.parse().expect("TC_SEED is a number"),
        Err(_) => rand::rng().random(),
    };
    let cycles: u32 = std::env::var("TC_CRASH_CYCLES")
        .ok()
        .map(|s| s.parse().expect("TC_CRASH_CYCLES is a number"))
        .unwrap_or(50);
    println!("store_crash_kill9: seed {seed} (replay with TC_SEED={seed}), {cycles} cycles");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    set_up(dir.path());
    let mut acked = vec![0u64; THREADS as usize];
    let mut total_acked = 0u64;
    for cycle in 0..cycles {
        let delay = Duration::from_millis(rng.random_range(30..400));
        total_acked += run_child(dir.path(), delay, &mut acked);
        verify(dir.path(), &acked, cycle);
    }
    println!(
        "store_crash_kill9: {total_acked} acknowledged transactions over {cycles} kills, all present exactly once"
    );
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn crash_config() -> StoreConfig {
    StoreConfig {
        // Segments smaller than what 100 ms of commits write: some opens
        // find segments after the checkpoint that are not the last, which
        // the WAL's open leaves to replay's reader.
        wal: WalConfig {
            segment_bytes: 64 << 10,
            max_record_bytes: 16 << 10,
            ..WalConfig::default()
        },
        data_segment_bytes: 256 << 10,
        cache_bytes: 64 << 10,
        checkpoint_wal_bytes: 512 << 10,
        checkpoint_interval: Duration::from_millis(100),
        background_maintenance: true,
        max_transaction_bytes: 64 << 10,
        ..StoreConfig::default()
    }
}

fn quiet_config() -> StoreConfig {
    StoreConfig {
        background_maintenance: false,
        ..crash_config()
    }
}

fn track_class() -> ClassDef {
    ClassDef::plain(
        "test.Track",
        &[
            ("last", FieldKind::Scalar(ScalarKind::Long)),
            ("total", FieldKind::Scalar(ScalarKind::Long)),
            ("head", FieldKind::Scalar(ScalarKind::Reference)),
            ("window", FieldKind::Scalar(ScalarKind::Reference)),
        ],
    )
}

fn node_class() -> ClassDef {
    ClassDef::plain("test.Node", &[("seq", FieldKind::Scalar(ScalarKind::Long))])
}

fn window_class() -> ClassDef {
    ClassDef::collection("java.util.ArrayDeque", ClassKind::Queue)
}

fn set_up(dir: &Path) {
    let store = Store::open(dir, quiet_config()).expect("create the store");
    let track = store.register_class(&track_class()).unwrap();
    let window = store.register_class(&window_class()).unwrap();
    store.register_class(&node_class()).unwrap();
    let ids = store.allocate_ids(2 * THREADS).unwrap();
    let mut dnas = Vec::new();
    let mut roots = Vec::new();
    for t in 0..THREADS {
        let track_id = ObjectId(ids.start + 2 * t);
        let window_id = ObjectId(ids.start + 2 * t + 1);
        dnas.push(Dna::new_object(window_id, window));
        dnas.push(Dna::new_object(track_id, track).field(WINDOW_REF, Value::Reference(window_id)));
        roots.push((format!("track-{t}"), track_id));
    }
    let tx = Transaction {
        client: 0,
        seq: 0,
        lock: LockRef::None,
        roots,
        dnas,
    };
    store.commit(tx.encode()).unwrap();
    store.close().unwrap();
}

/// Runs one child until `delay` has passed, kills it with SIGKILL, and
/// raises `acked` to what it printed. Returns the number of acks read.
fn run_child(dir: &Path, delay: Duration, acked: &mut [u64]) -> u64 {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .env("TC_STORE_CHILD_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Start the clock once the child says it is committing. Committers may
    // acknowledge before "ready": keep those lines.
    let ready_by = Instant::now() + Duration::from_secs(60);
    let mut early = Vec::new();
    loop {
        let line = lines_rx
            .recv_timeout(ready_by.saturating_duration_since(Instant::now()))
            .expect("the child starts committing within 60 s");
        if line == "ready" {
            break;
        }
        early.push(line);
    }
    std::thread::sleep(delay);
    child.kill().expect("kill -9 the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread");
    let mut count = 0;
    for line in early.into_iter().chain(lines_rx.try_iter()) {
        let mut parts = line.split_whitespace();
        let (Some(t), Some(seq)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (t, seq): (usize, u64) = (t.parse().expect("thread"), seq.parse().expect("seq"));
        assert!(
            seq > acked[t],
            "thread {t} acknowledged {seq} after {}",
            acked[t]
        );
        acked[t] = seq;
        count += 1;
    }
    count
}

fn field(object: &tc_heap_store::model::Object, slot: u32) -> &Value {
    match &object.body {
        Body::Fields(fields) => &fields[slot as usize],
        other => panic!("not a plain object: {other:?}"),
    }
}

fn long(v: &Value) -> u64 {
    match v {
        Value::Long(n) => *n as u64,
        other => panic!("not a long: {other:?}"),
    }
}

fn reference(v: &Value) -> Option<ObjectId> {
    match v {
        Value::Reference(id) => Some(*id),
        Value::Null => None,
        other => panic!("not a reference: {other:?}"),
    }
}

fn verify(dir: &Path, acked: &[u64], cycle: u32) {
    fsck_clean(dir, cycle, "right after kill -9");
    let store = Store::open(dir, quiet_config())
        .unwrap_or_else(|e| panic!("cycle {cycle}: the store does not reopen after kill -9: {e}"));
    for (t, &acked) in acked.iter().enumerate() {
        let track_id = store.root(&format!("track-{t}")).expect("root");
        let track = store.get(track_id).unwrap().expect("track object").object;
        let last = long(field(&track, LAST));
        assert!(
            last == acked || last == acked + 1,
            "cycle {cycle}: thread {t} acknowledged up to {acked} but the store has {last}"
        );
        assert_eq!(
            long(field(&track, TOTAL)),
            last * (last + 1) / 2,
            "cycle {cycle}: thread {t} total"
        );
        let window_id = reference(field(&track, WINDOW_REF)).expect("window");
        let window = store.get(window_id).unwrap().expect("window object").object;
        let expected: VecDeque<Value> = (last.saturating_sub(WINDOW as u64 - 1).max(1)..=last)
            .map(|s| Value::Long(s as i64))
            .collect();
        assert_eq!(
            window.body,
            Body::Queue(expected),
            "cycle {cycle}: thread {t} window (exactly once)"
        );
        match reference(field(&track, HEAD)) {
            None => assert!(
                last < NODE_EVERY,
                "cycle {cycle}: thread {t} lost its head node"
            ),
            Some(head) => {
                let node = store
                    .get(head)
                    .unwrap()
                    .unwrap_or_else(|| panic!("cycle {cycle}: head {head} of thread {t} is gone"))
                    .object;
                assert_eq!(
                    long(field(&node, NODE_SEQ)),
                    last - last % NODE_EVERY,
                    "cycle {cycle}: head node"
                );
            }
        }
    }
    store
        .close()
        .unwrap_or_else(|e| panic!("cycle {cycle}: close: {e}"));
    fsck_clean(dir, cycle, "after a clean close");
}

/// tc-fsck's checks find no problem (notes, such as a torn tail, are fine).
fn fsck_clean(dir: &Path, cycle: u32, when: &str) {
    let report = tc_tools::fsck::check(dir)
        .unwrap_or_else(|e| panic!("cycle {cycle}: tc-fsck could not run {when}: {e}"));
    assert!(
        report.is_clean(),
        "cycle {cycle}: tc-fsck {when}:\n{report}"
    );
}

/// The child: commits from `THREADS` threads until killed.
fn child(dir: &Path) {
    let store = Arc::new(Store::open(dir, crash_config()).expect("child opens the store"));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let node = store.class_id("test.Node").expect("node class");
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let store = Arc::clone(&store);
        let out = Arc::clone(&out);
        threads.push(std::thread::spawn(move || {
            commit_loop(&store, t, node, &out)
        }));
    }
    {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(150));
                store.collect_garbage(&[]).expect("garbage collection");
            }
        });
    }
    writeln!(out.lock().unwrap(), "ready").unwrap();
    for thread in threads {
        thread.join().expect("committer");
    }
}

fn commit_loop(
    store: &Store,
    t: u64,
    node_class: tc_heap_store::ClassId,
    out: &Mutex<std::io::Stdout>,
) {
    let track_id = store.root(&format!("track-{t}")).expect("root");
    let track = store.get(track_id).unwrap().expect("track").object;
    let mut last = long(field(&track, LAST));
    let mut total = long(field(&track, TOTAL));
    let window_id = reference(field(&track, WINDOW_REF)).expect("window");
    let mut window_len = store.get(window_id).unwrap().expect("window").object.len();
    let mut ids = 0..0;
    loop {
        let seq = last + 1;
        total += seq;
        let mut track_dna = Dna::update(track_id)
            .field(LAST, Value::Long(seq as i64))
            .field(TOTAL, Value::Long(total as i64));
        let mut window_dna =
            Dna::update(window_id).op(LogicalOp::QueueOffer(Value::Long(seq as i64)));
        window_len += 1;
        if window_len > WINDOW {
            window_dna = window_dna.op(LogicalOp::QueuePoll);
            window_len -= 1;
        }
        let mut dnas = vec![window_dna];
        if seq.is_multiple_of(NODE_EVERY) {
            if ids.is_empty() {
                ids = store.allocate_ids(64).expect("ids");
            }
            let node = ObjectId(ids.next().expect("non-empty"));
            dnas.push(Dna::new_object(node, node_class).field(NODE_SEQ, Value::Long(seq as i64)));
            track_dna = track_dna.field(HEAD, Value::Reference(node));
        }
        dnas.push(track_dna);
        let tx = Transaction {
            client: t + 1,
            seq,
            lock: LockRef::Object(track_id),
            roots: vec![],
            dnas,
        };
        store.commit(tx.encode()).expect("commit");
        last = seq;
        let mut out = out.lock().unwrap();
        writeln!(out, "{t} {seq}").unwrap();
        out.flush().unwrap();
    }
}
