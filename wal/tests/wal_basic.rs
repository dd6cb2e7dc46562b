//! Append, read back, reopen, roll over, truncate, follow the tail: on both
//! backends.

mod common;

use std::time::{Duration, Instant};

use common::{backends, payload, read_all, segment_files, small_config};
use tc_wal::{Backend, Lsn, Wal, WalConfig, WalError};

#[test]
fn records_survive_reopen_in_order_across_segments() {
    for backend in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut written = Vec::new();
        {
            let wal = Wal::open(dir.path(), small_config(backend)).expect("open");
            assert_eq!(wal.backend(), backend);
            for i in 0..400u64 {
                let data = payload(i, (i as usize * 37) % 700);
                let lsn = wal.append(1 + (i % 3) as u8, data.clone()).expect("append");
                written.push((lsn, data));
            }
            assert!(wal.durable_lsn() > written.last().expect("some").0);
        }
        assert!(
            segment_files(dir.path()).len() > 2,
            "{backend}: expected several segments"
        );
        let wal = Wal::open(dir.path(), small_config(backend)).expect("reopen");
        let records = read_all(&wal);
        assert_eq!(records.len(), written.len(), "{backend}");
        for (i, (record, (lsn, data))) in records.iter().zip(&written).enumerate() {
            assert_eq!(record.lsn, *lsn, "{backend} record {i}");
            assert_eq!(record.kind, 1 + (i % 3) as u8);
            assert_eq!(&record.payload[..], &data[..]);
        }
        assert_eq!(wal.recovery_report().record_count, 400);
        assert!(wal.recovery_report().torn_tail.is_none());
        // LSN = byte position: each record starts where the previous ended.
        for pair in records.windows(2) {
            assert_eq!(pair[0].end_lsn(), pair[1].lsn);
        }
        // Appends after reopen continue the same stream.
        let next = wal.append(9, &b"after reopen"[..]).expect("append");
        assert_eq!(next, records.last().expect("some").end_lsn());
    }
}

#[test]
fn async_appends_are_group_committed() {
    for backend in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), small_config(backend)).expect("open");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let lsns = runtime.block_on(async {
            let tasks: Vec<_> = (0..200u64)
                .map(|i| {
                    let wal = wal.clone();
                    tokio::spawn(async move { wal.append_async(2, payload(i, 40)).await })
                })
                .collect();
            let mut lsns = Vec::new();
            for task in tasks {
                lsns.push(task.await.expect("join").expect("append"));
            }
            lsns
        });
        let mut sorted = lsns.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 200, "every append got its own LSN");
        let stats = wal.stats();
        assert_eq!(stats.records, 200);
        assert!(
            stats.syncs < 200,
            "{backend}: 200 concurrent appends took {} syncs",
            stats.syncs
        );
        assert_eq!(read_all(&wal).len(), 200);
    }
}

#[test]
fn uring_keeps_several_writes_in_flight_and_acks_in_order() {
    if !common::io_uring_available() {
        eprintln!("io_uring unavailable: pipelining not tested");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WalConfig {
        writes_in_flight: 2,
        ..small_config(tc_wal::Backend::Uring)
    };
    let wal = Wal::open(dir.path(), config).expect("open");
    // A write is submitted while another is in flight only when producers
    // keep up with the disk, which the scheduler decides (a busy machine
    // may serialize a round): produce rounds until one is seen, up to a
    // deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 1u64.. {
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let wal = wal.clone();
                std::thread::spawn(move || {
                    let mut last = Lsn(0);
                    for i in 0..50 {
                        let id = round * 100_000 + t * 1000 + i;
                        let lsn = wal.append(1, payload(id, 64)).expect("append");
                        assert!(lsn > last || i == 0, "a producer's LSNs increase");
                        // Acked means durable up to here, so the durable end is past it.
                        assert!(wal.durable_lsn() > lsn);
                        last = lsn;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("producer");
        }
        let records = read_all(&wal);
        assert_eq!(records.len() as u64, 800 * round);
        if records.iter().any(|r| r.inflight_lsn < r.write_lsn) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no write was submitted while another was in flight in {round} rounds"
        );
    }
}

#[test]
fn reader_follows_the_live_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small_config(backends()[0])).expect("open");
    let mut reader = wal.reader(wal.durable_lsn()).expect("reader");
    assert!(reader.try_next().expect("read").is_none());
    let writer = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            for i in 0..300u64 {
                wal.append(1, payload(i, 300)).expect("append");
            }
        })
    };
    let mut seen = 0u64;
    while seen < 300 {
        let record = reader
            .next_timeout(Duration::from_secs(30))
            .expect("read")
            .expect("a record within the deadline");
        assert!(
            record.end_lsn() <= wal.durable_lsn(),
            "reader returned a non-durable record"
        );
        assert_eq!(&record.payload[..], &payload(seen, 300)[..]);
        seen += 1;
    }
    writer.join().expect("writer");
}

#[test]
fn async_reader_wakes_on_new_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), small_config(backends()[0])).expect("open");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut reader = wal.reader(Lsn(0)).expect("reader");
        let wal2 = wal.clone();
        let writer = tokio::spawn(async move {
            for i in 0..50u64 {
                wal2.append_async(3, payload(i, 10)).await.expect("append");
            }
        });
        for i in 0..50u64 {
            let record = tokio::time::timeout(Duration::from_secs(30), reader.next())
                .await
                .expect("record before deadline")
                .expect("read");
            assert_eq!(&record.payload[..], &payload(i, 10)[..]);
        }
        writer.await.expect("writer");
    });
}

#[test]
fn truncate_retires_old_segments_and_readers_see_it() {
    for backend in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Wal::open(dir.path(), small_config(backend)).expect("open");
        let mut lsns = Vec::new();
        for i in 0..600u64 {
            lsns.push(wal.append(1, payload(i, 500)).expect("append"));
        }
        let before = segment_files(dir.path()).len();
        let cut = lsns[400];
        let retired = wal.truncate_before(cut).expect("truncate");
        assert!(retired > 0);
        assert_eq!(segment_files(dir.path()).len(), before - retired);
        assert!(wal.first_lsn() <= cut);
        assert!(matches!(
            wal.reader(Lsn(0)),
            Err(WalError::Truncated { .. })
        ));
        // Recycled spares are reused and the log stays readable after reopen.
        for i in 600..1200u64 {
            wal.append(1, payload(i, 500)).expect("append");
        }
        let first = wal.first_lsn();
        drop(wal);
        let wal = Wal::open(dir.path(), small_config(backend)).expect("reopen");
        assert_eq!(wal.first_lsn(), first);
        let records = read_all(&wal);
        let last = records.last().expect("records");
        assert_eq!(&last.payload[..], &payload(1199, 500)[..]);
        assert!(
            records.iter().any(|r| r.lsn == cut),
            "the record at the cut survives"
        );
    }
}

#[test]
fn bad_appends_are_refused_and_the_log_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config(backends()[0]);
    let wal = Wal::open(dir.path(), config.clone()).expect("open");
    let too_big = vec![0u8; config.max_record_bytes as usize + 1];
    assert!(matches!(
        wal.append(1, too_big),
        Err(WalError::RecordTooLarge { len, max }) if len == config.max_record_bytes as usize + 1 && max == config.max_record_bytes
    ));
    assert!(matches!(
        wal.append(0, &b"x"[..]),
        Err(WalError::ReservedKind)
    ));
    let exactly_max = vec![7u8; config.max_record_bytes as usize];
    let lsn = wal.append(1, exactly_max.clone()).expect("max-size record");
    let records = read_all(&wal);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].lsn, lsn);
    assert_eq!(records[0].payload.len(), exactly_max.len());
}

#[test]
fn lowering_the_record_limit_never_loses_records_and_readers_name_the_big_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = backends()[0];
    let big = {
        let wal = Wal::open(dir.path(), small_config(backend)).expect("open");
        wal.append(1, vec![1u8; 100]).expect("small");
        wal.append(1, vec![2u8; 4000]).expect("big")
    };
    let lowered = WalConfig {
        max_record_bytes: 1000,
        ..small_config(backend)
    };
    let wal = Wal::open(dir.path(), lowered).expect("recovery keeps records over the new limit");
    assert!(wal.recovery_report().torn_tail.is_none());
    assert_eq!(wal.recovery_report().record_count, 2);
    let mut reader = wal.reader(Lsn(0)).expect("reader");
    assert_eq!(
        reader
            .try_next()
            .expect("first")
            .expect("record")
            .payload
            .len(),
        100
    );
    let err = reader.try_next().expect_err("over the limit");
    assert!(
        matches!(err, WalError::StoredRecordTooLarge { lsn, len: 4000, max: 1000, .. } if lsn == big),
        "{err}"
    );
    drop(wal);
    let wal = Wal::open(dir.path(), small_config(backend)).expect("reopen with the old limit");
    assert_eq!(read_all(&wal).len(), 2);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Wal::open(dir.path(), WalConfig::default()).expect("open");
    let second = Wal::open(dir.path(), WalConfig::default());
    assert!(matches!(second, Err(WalError::Locked { .. })));
    drop(wal);
    Wal::open(dir.path(), WalConfig::default()).expect("open after the first closed");
}

#[test]
fn invalid_config_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WalConfig {
        segment_bytes: 1024,
        ..WalConfig::default()
    };
    let err = Wal::open(dir.path(), config).err().expect("refused");
    assert!(matches!(
        err,
        WalError::InvalidConfig {
            field: "segment_bytes",
            ..
        }
    ));
    assert!(err.to_string().contains("segment_bytes"));
}

/// A recycled segment keeps its old bytes. When the writer rolls over with
/// fewer bytes left than a frame header, those bytes are old data: they
/// must read as the end of the segment, not as a torn write before the
/// next segment (which would refuse to open).
#[test]
fn old_bytes_left_at_rollover_in_a_recycled_segment_are_not_damage() {
    for backend in common::backends() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 64 << 10,
            max_record_bytes: 8 << 10,
            spare_segments: 1,
            ..common::small_config(backend)
        };
        let capacity = (64 << 10) - tc_wal::format::SEGMENT_HEADER_BYTES;
        let wal = Wal::open(dir.path(), config.clone()).unwrap();
        // Phase 1: frames of 64 B fill segments exactly, to the last byte.
        let small = vec![0x5a; 64 - tc_wal::format::FRAME_HEADER_BYTES];
        let mut last = Lsn(0);
        for _ in 0..3 * capacity / 64 {
            last = wal.append(1, small.clone()).unwrap();
        }
        // Recycle everything before the last record's segment.
        wal.truncate_before(last).unwrap();
        // Phase 2: 16 frames of 4091 B leave 16 B of phase-1 bytes at the end
        // of each segment; three segments' worth reuses the recycled files.
        let big = vec![0xc3; 4091 - tc_wal::format::FRAME_HEADER_BYTES];
        assert_eq!((capacity - 16) % 4091, 0);
        let mut written = Vec::new();
        for _ in 0..3 * 16 {
            written.push(wal.append(2, big.clone()).unwrap());
        }
        drop(wal);
        let wal = Wal::open(dir.path(), config).unwrap_or_else(|e| {
            panic!("{backend:?}: reopen after rollover into recycled segments: {e}")
        });
        let mut reader = wal.reader(written[0]).unwrap();
        for lsn in &written {
            let record = reader.try_next().unwrap().expect("record");
            assert_eq!((record.lsn, record.payload.len()), (*lsn, big.len()));
        }
        assert!(reader.try_next().unwrap().is_none());
    }
}

/// Direct writes (the io_uring default) rewrite the first block of each
/// write with the bytes earlier writes left there, and pad the last with
/// zeros. Many small writes that share blocks, across reopens (where the
/// block's bytes come from the file, not memory), must keep every record
/// intact and never grow a segment past its size.
#[test]
fn small_writes_sharing_blocks_survive_reopens() {
    for backend in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = small_config(backend);
        let mut written = Vec::new();
        for round in 0..5u64 {
            let wal = Wal::open(dir.path(), config.clone()).expect("open");
            assert_eq!(
                read_all(&wal).len(),
                written.len(),
                "{backend} round {round}"
            );
            for i in 0..60u64 {
                let n = round * 1000 + i;
                // 1..300 B: several records per 4 KiB block, some spanning two.
                let data = payload(n, 1 + (n as usize * 53) % 300);
                let lsn = wal.append(1, data.clone()).expect("append");
                written.push((lsn, data));
            }
        }
        let wal = Wal::open(dir.path(), config.clone()).expect("reopen");
        let records = read_all(&wal);
        assert_eq!(records.len(), written.len(), "{backend}");
        for (record, (lsn, data)) in records.iter().zip(&written) {
            assert_eq!(record.lsn, *lsn, "{backend}");
            assert_eq!(&record.payload[..], &data[..], "{backend} record at {lsn}");
        }
        for file in segment_files(dir.path()) {
            let len = std::fs::metadata(&file).expect("stat").len();
            assert_eq!(len, config.segment_bytes, "{backend}: {}", file.display());
        }
    }
}

/// A record's payload shares the reader's read-ahead chunk: records kept
/// while the reader goes on through several chunks (some reused, some
/// pinned by a kept record) keep their bytes.
#[test]
fn records_kept_while_reading_on_keep_their_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WalConfig {
        segment_bytes: 8 << 20,
        max_record_bytes: 64 << 10,
        ..small_config(Backend::Portable)
    };
    let wal = Wal::open(dir.path(), config).expect("open");
    // About 1.5 MiB: several read-ahead chunks, records across their ends.
    let sizes = |i: u64| 1000 + (i as usize * 7919) % 9000;
    for i in 0..300u64 {
        wal.append(1, payload(i, sizes(i))).expect("append");
    }
    let mut reader = wal.reader(wal.first_lsn()).expect("reader");
    let mut kept = Vec::new();
    let mut read = 0u64;
    while let Some(record) = reader.try_next().expect("read") {
        assert_eq!(&record.payload[..], &payload(read, sizes(read))[..]);
        if read.is_multiple_of(7) {
            kept.push((read, record));
        }
        read += 1;
    }
    assert_eq!(read, 300);
    for (i, record) in kept {
        assert_eq!(&record.payload[..], &payload(i, sizes(i))[..], "record {i}");
    }
}
