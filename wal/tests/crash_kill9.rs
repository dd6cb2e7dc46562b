//! Real crash test: a child process appends as fast as it can from several
//! threads and prints each record's id and LSN only after `append` returned
//! (the record is durable). The parent `kill -9`s it at a random moment —
//! sometimes while it is still recovering — reopens the log and checks that
//! every printed record is there with the right bytes, that the log is
//! gap-free, and that each producer's records form an unbroken run (nothing
//! after a hole is visible). 20 cycles per backend on one directory, so each
//! cycle also recovers from the previous one's crash; cycles alternate one
//! and two writes in flight.
//!
//! `harness = false`: this binary is both parent and child (`TC_CHILD_DIR`).
//! Prints its seed; `TC_SEED=<n>` replays it. `TC_CRASH_CYCLES` overrides 20.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tc_wal::{Backend, Lsn, Wal};

const PRODUCERS: u32 = 6;
const RECORD_KIND: u8 = 7;
const ID_BYTES: usize = 16;

fn main() {
    if let Ok(dir) = std::env::var("TC_CHILD_DIR") {
        let backend: Backend = std::env::var("TC_CHILD_BACKEND")
            .expect("backend")
            .parse()
            .expect("backend name");
        let generation: u32 = std::env::var("TC_CHILD_GENERATION")
            .expect("generation")
            .parse()
            .expect("number");
        child(Path::new(&dir), backend, generation);
        return;
    }
    let seed: u64 = match std::env::var("TC_SEED") {
        Ok(s) => s.parse().expect("TC_SEED is a number"),
        Err(_) => rand::rng().random(),
    };
    let cycles: u32 = std::env::var("TC_CRASH_CYCLES")
        .ok()
        .map(|s| s.parse().expect("TC_CRASH_CYCLES is a number"))
        .unwrap_or(20);
    println!("crash_kill9: seed {seed} (replay with TC_SEED={seed}), {cycles} cycles per backend");
    let mut passed = 0;
    for backend in common::backends() {
        let mut rng = StdRng::seed_from_u64(seed ^ backend as u64);
        run_backend(backend, cycles, &mut rng);
        passed += 1;
    }
    println!("test result: ok. {passed} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

/// One record id: generation (child run), producer, index within producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct RecordId {
    generation: u32,
    producer: u32,
    index: u64,
}

fn record_bytes(id: RecordId) -> Vec<u8> {
    let len = ((id.index * 7 + u64::from(id.producer) * 13) % 300) as usize;
    let mut out = Vec::with_capacity(ID_BYTES + len);
    out.extend_from_slice(&id.generation.to_le_bytes());
    out.extend_from_slice(&id.producer.to_le_bytes());
    out.extend_from_slice(&id.index.to_le_bytes());
    let seed = (u64::from(id.generation) << 40) ^ (u64::from(id.producer) << 32) ^ id.index;
    out.extend(common::payload(seed, len));
    out
}

fn parse_record(payload: &[u8]) -> RecordId {
    assert!(payload.len() >= ID_BYTES, "record too short to hold an id");
    let id = RecordId {
        generation: u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes")),
        producer: u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes")),
        index: u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes")),
    };
    assert_eq!(
        payload,
        &record_bytes(id)[..],
        "record {id:?} has wrong bytes"
    );
    id
}

fn child(dir: &Path, backend: Backend, generation: u32) {
    // Alternate one and two writes in flight (the latter only matters for
    // io_uring): recovery must cope with either kind of crash.
    let config = tc_wal::WalConfig {
        writes_in_flight: 1 + (generation % 2) as usize,
        ..common::small_config(backend)
    };
    let wal = Wal::open(dir, config).expect("child open");
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|producer| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for index in 0.. {
                    let id = RecordId {
                        generation,
                        producer,
                        index,
                    };
                    let lsn = wal
                        .append(RECORD_KIND, record_bytes(id))
                        .expect("child append");
                    // Printed only once durable: the parent's ground truth.
                    println!("{generation} {producer} {index} {}", lsn.0);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("producer");
    }
}

fn run_backend(backend: Backend, cycles: u32, rng: &mut StdRng) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked: HashMap<RecordId, Lsn> = HashMap::new();
    for generation in 0..cycles {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env("TC_CHILD_DIR", dir.path())
            .env("TC_CHILD_BACKEND", backend.name())
            .env("TC_CHILD_GENERATION", generation.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Half the cycles die after a random number of acks, the others
        // after a random time (which may fall inside recovery).
        let kill_after_acks = rng.random_range(1..4000usize);
        let kill_after = Duration::from_micros(rng.random_range(0..150_000));
        let by_acks = rng.random_bool(0.5);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let mut lines = Vec::new();
        loop {
            if by_acks && lines.len() >= kill_after_acks {
                break;
            }
            if !by_acks && started.elapsed() >= kill_after {
                break;
            }
            assert!(Instant::now() < deadline, "child made no progress for 60 s");
            if let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(1)) {
                lines.push(line);
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap child");
        reader.join().expect("stdout reader");
        // Lines printed before the kill were acknowledged too.
        lines.extend(lines_rx.try_iter());
        for line in &lines {
            let mut fields = line.split(' ').map(|f| f.parse::<u64>().expect("number"));
            let id = RecordId {
                generation: fields.next().expect("generation") as u32,
                producer: fields.next().expect("producer") as u32,
                index: fields.next().expect("index"),
            };
            let lsn = Lsn(fields.next().expect("lsn"));
            assert!(acked.insert(id, lsn).is_none(), "{id:?} acknowledged twice");
        }
        verify(dir.path(), backend, &acked, generation);
    }
    println!(
        "crash_kill9: {backend}: {cycles} kill -9 cycles, {} acknowledged records all present",
        acked.len()
    );
}

fn verify(dir: &Path, backend: Backend, acked: &HashMap<RecordId, Lsn>, generation: u32) {
    let wal = Wal::open(dir, common::small_config(backend)).unwrap_or_else(|e| {
        panic!("{backend} cycle {generation}: reopen after kill -9 failed: {e}")
    });
    let mut reader = wal.reader(wal.first_lsn()).expect("reader");
    let mut found: HashMap<RecordId, Lsn> = HashMap::new();
    let mut runs: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut expected_lsn = wal.first_lsn();
    while let Some(record) = reader.try_next().expect("read back") {
        assert_eq!(record.lsn, expected_lsn, "gap in the log");
        expected_lsn = record.end_lsn();
        assert_eq!(record.kind, RECORD_KIND);
        let id = parse_record(&record.payload);
        // Each producer appends one record at a time, so its records must
        // appear as 0, 1, 2, ... with no hole and no duplicate.
        let next = runs.entry((id.generation, id.producer)).or_insert(0);
        assert_eq!(
            id.index, *next,
            "{backend} cycle {generation}: record after a hole: {id:?}"
        );
        *next += 1;
        found.insert(id, record.lsn);
    }
    assert_eq!(expected_lsn, wal.durable_lsn());
    for (id, lsn) in acked {
        assert_eq!(
            found.get(id),
            Some(lsn),
            "{backend} cycle {generation}: acknowledged record {id:?} at lsn {lsn} lost"
        );
    }
}
