//! Model-based property test: random rounds of appends (single and grouped
//! writes), each followed by a simulated crash (the writes that were in
//! flight torn: truncated, zeroed or garbled from a random offset; or no
//! damage) and a reopen. After every reopen the log must hold exactly a
//! prefix of what was written, containing every acknowledged record. The
//! writes a real crash could have caught in flight are those from the last
//! record's `inflight_lsn` on (the oldest write not yet durable when the last
//! write was submitted); everything before it had been acknowledged.
//!
//! A second property damages a byte before that point: open must then
//! refuse and name the segment file, never silently drop synced records.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use proptest::prelude::*;
use tc_wal::{Backend, Lsn, Record, Wal, WalConfig, WalError};

#[derive(Clone, Debug)]
enum Damage {
    None,
    /// Cut the file at this fraction of the last write (then recovery must
    /// cope with a short segment file).
    Truncate(f64),
    /// Zero from this fraction of the last write to its end.
    Zero(f64),
    /// Overwrite from this fraction of the last write with pseudo-random bytes.
    Garble(f64, u64),
}

#[derive(Clone, Debug)]
struct Round {
    /// Payload sizes; appended concurrently when `grouped` (one write holds
    /// several records), else one at a time.
    sizes: Vec<usize>,
    grouped: bool,
    damage: Damage,
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        (0.0..1.0f64).prop_map(Damage::Truncate),
        (0.0..1.0f64).prop_map(Damage::Zero),
        (0.0..1.0f64, any::<u64>()).prop_map(|(f, s)| Damage::Garble(f, s)),
    ]
}

fn round() -> impl Strategy<Value = Round> {
    (
        prop::collection::vec(0usize..3000, 1..12),
        any::<bool>(),
        damage(),
    )
        .prop_map(|(sizes, grouped, damage)| Round {
            sizes,
            grouped,
            damage,
        })
}

fn config(backend: Backend) -> WalConfig {
    WalConfig {
        segment_bytes: 32 << 10,
        // Pipelined io_uring writes: the harder case for recovery.
        writes_in_flight: 2,
        ..common::small_config(backend)
    }
}

fn append_round(wal: &Wal, round: &Round, counter: &mut u64) {
    let payloads: Vec<Vec<u8>> = round
        .sizes
        .iter()
        .map(|&len| {
            *counter += 1;
            common::payload(*counter, len)
        })
        .collect();
    if round.grouped {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut appends = tokio::task::JoinSet::new();
            for payload in payloads {
                let wal = wal.clone();
                appends.spawn(async move { wal.append_async(1, payload).await });
            }
            while let Some(result) = appends.join_next().await {
                result.expect("join").expect("append");
            }
        });
    } else {
        for payload in payloads {
            wal.append(1, payload).expect("append");
        }
    }
}

/// File offset of `lsn` in the segment file that holds it.
fn locate(dir: &Path, lsn: Lsn) -> (std::path::PathBuf, u64) {
    let segment = common::segment_files(dir)
        .into_iter()
        .rev()
        .find(|p| {
            let first =
                u64::from_str_radix(p.file_stem().expect("stem").to_str().expect("utf8"), 16)
                    .expect("hex name");
            first <= lsn.0
        })
        .expect("segment holding lsn");
    let first = u64::from_str_radix(
        segment.file_stem().expect("stem").to_str().expect("utf8"),
        16,
    )
    .expect("hex name");
    (
        segment,
        tc_wal::format::SEGMENT_HEADER_BYTES as u64 + lsn.0 - first,
    )
}

fn apply(dir: &Path, in_flight_from: Lsn, end: Lsn, damage: &Damage) -> Lsn {
    let span = end.0 - in_flight_from.0;
    let at = |fraction: f64| Lsn(in_flight_from.0 + (span as f64 * fraction) as u64);
    let (from, path_offset) = match damage {
        Damage::None => return end,
        Damage::Truncate(f) | Damage::Zero(f) | Damage::Garble(f, _) => {
            let from = at(*f);
            (
                from,
                locate(dir, in_flight_from).1 + (from.0 - in_flight_from.0),
            )
        }
    };
    let (path, _) = locate(dir, in_flight_from);
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open segment");
    let len = (end.0 - from.0) as usize;
    match damage {
        Damage::None => unreachable!(),
        Damage::Truncate(_) => file.set_len(path_offset).expect("truncate"),
        Damage::Zero(_) => file.write_all_at(&vec![0; len], path_offset).expect("zero"),
        Damage::Garble(_, seed) => file
            .write_all_at(&common::payload(*seed, len), path_offset)
            .expect("garble"),
    }
    from
}

fn check_round_trip(backend: Backend, rounds: &[Round]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model: Vec<Record> = Vec::new();
    let mut counter = 0u64;
    for round in rounds {
        {
            let wal = Wal::open(dir.path(), config(backend)).expect("open");
            append_round(&wal, round, &mut counter);
        }
        // Everything written, as the log holds it before the crash.
        let written = {
            let wal = Wal::open(dir.path(), config(backend)).expect("open");
            common::read_all(&wal)
        };
        prop_assert!(written.starts_with(&model), "earlier records changed");
        let last = written.last().expect("at least one record");
        let damaged_from = apply(dir.path(), last.inflight_lsn, last.end_lsn(), &round.damage);
        let wal = Wal::open(dir.path(), config(backend)).expect("reopen after simulated crash");
        let recovered = common::read_all(&wal);
        prop_assert!(
            written.starts_with(&recovered),
            "recovered log is not a prefix of what was written"
        );
        let acked = written.iter().filter(|r| r.lsn < last.inflight_lsn).count();
        let untouched = written
            .iter()
            .filter(|r| r.end_lsn() <= damaged_from)
            .count();
        prop_assert!(recovered.len() >= acked, "an acknowledged record was lost");
        prop_assert!(
            recovered.len() >= untouched,
            "an undamaged record was dropped"
        );
        if matches!(round.damage, Damage::None) {
            prop_assert_eq!(recovered.len(), written.len());
        }
        prop_assert_eq!(
            wal.durable_lsn(),
            recovered
                .last()
                .map(|r| r.end_lsn())
                .unwrap_or(wal.first_lsn())
        );
        model = recovered;
    }
    Ok(())
}

fn check_corruption_detected(
    backend: Backend,
    rounds: &[Round],
    pick: f64,
    bit: u8,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut counter = 0u64;
    {
        let wal = Wal::open(dir.path(), config(backend)).expect("open");
        for round in rounds {
            append_round(&wal, round, &mut counter);
        }
    }
    let written = common::read_all(&Wal::open(dir.path(), config(backend)).expect("open"));
    let in_flight_from = written.last().expect("records").inflight_lsn;
    let synced: Vec<&Record> = written.iter().filter(|r| r.lsn < in_flight_from).collect();
    prop_assume!(!synced.is_empty());
    let victim = synced[((synced.len() - 1) as f64 * pick) as usize];
    let victim_len = victim.end_lsn().0 - victim.lsn.0;
    let lsn = Lsn(victim.lsn.0 + ((victim_len - 1) as f64 * pick) as u64);
    let (path, offset) = locate(dir.path(), lsn);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open segment");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= 1 << (bit % 8);
    file.write_all_at(&byte, offset).expect("flip");
    drop(file);
    match Wal::open(dir.path(), config(backend)) {
        Ok(_) => prop_assert!(
            false,
            "flipped bit at {}:{offset} (lsn {lsn}) went unnoticed",
            path.display()
        ),
        Err(err) => {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let shown = err.to_string();
            prop_assert!(
                matches!(
                    err,
                    WalError::Corrupt { .. }
                        | WalError::DamagedBeforeNextSegment { .. }
                        | WalError::Gap { .. }
                ),
                "unexpected error kind: {shown}"
            );
            prop_assert!(shown.contains(&name), "error does not name {name}: {shown}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn crash_with_writes_in_flight_keeps_an_acknowledged_prefix(rounds in prop::collection::vec(round(), 1..8)) {
        for backend in common::backends() {
            check_round_trip(backend, &rounds)?;
        }
    }

    #[test]
    fn damage_to_a_synced_record_refuses_open(
        rounds in prop::collection::vec(round(), 2..6),
        pick in 0.0..1.0f64,
        bit in any::<u8>(),
    ) {
        check_corruption_detected(Backend::Portable, &rounds, pick, bit)?;
    }
}
