//! The `recovery` workload: how fast `Store::open` replays the WAL.
//!
//! Owns: the `recovery` arguments, the store directory (fresh, removed at
//! the end), filling the WAL, the simulated crash and the timed opens.
//! Not: recovery itself (`tc-heap-store`), printing (`report.rs`).
//! Steps: (1) create `--objects` `bench.Plain8` objects and checkpoint;
//! (2) `--committers` threads commit update transactions (`--objects-per-tx`
//! random objects, `--fields` random fields each) until the WAL holds
//! `--wal-bytes` since that checkpoint; no other checkpoint happens
//! (`background_maintenance = false`, `checkpoint_wal_bytes` and
//! `checkpoint_interval` at their maximum); (3) drop the store without
//! `close` (a crash: every acknowledged commit is durable, none is in a data
//! segment); (4) per `--page-cache` state, time `Store::open` and read its
//! `open_report()`, then drop it again without `close` so the next open
//! replays the same WAL. `cold` first asks the kernel to drop the store's
//! files from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)` on every
//! file of the store directory, which it does for clean pages); `warm`
//! opens with whatever the previous open left cached.
//! MB/s is 10^6 bytes per second of `replay_time` (the replay loop only);
//! `open_seconds` is the whole `Store::open` (WAL open and verification,
//! object table load, replay).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use tc_heap_store::{ObjectId, Store, StoreConfig};

use crate::report;
use crate::store_common::{
    self, Creation, FieldRange, IdSpace, Rng, StoreBenchError, io_err, plain8_class, store_err,
    store_err_with,
};
use crate::wal_bench::BenchDir;

#[derive(Debug, Args)]
pub struct RecoveryArgs {
    /// WAL bytes to fill after the checkpoint (suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "1GiB", value_parser = store_common::parse_bytes)]
    pub wal_bytes: u64,
    /// Objects the transactions update (created and checkpointed first).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub objects: u64,
    /// Objects each transaction updates (distinct, random).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub objects_per_tx: u64,
    /// Fields written per object: a count or a range (uniform), of 8.
    #[arg(long, default_value = "1-8", value_parser = store_common::parse_field_range)]
    pub fields: FieldRange,
    /// Threads committing while the WAL fills (group commit).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub committers: u32,
    /// Page-cache states to open in, comma-separated, in order.
    #[arg(long, value_delimiter = ',', default_value = "cold,warm")]
    pub page_cache: Vec<PageCache>,
    /// Replay threads to open with, comma-separated: each page-cache state
    /// is opened once per count, in turn. Default: the store's default
    /// (one per CPU).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=64))]
    pub replay_threads: Vec<u32>,
    /// Print one JSON object per open on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directory for the store (a fresh subdirectory, removed at the end).
    /// Default: a temporary directory under the current directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PageCache {
    Cold,
    Warm,
}

impl PageCache {
    fn name(self) -> &'static str {
        match self {
            PageCache::Cold => "cold",
            PageCache::Warm => "warm",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RecoveryRow {
    pub bench: &'static str,
    pub workload: &'static str,
    pub page_cache: &'static str,
    pub wal_bytes_target: u64,
    pub objects: u64,
    pub objects_per_tx: u64,
    pub fields_min: u32,
    pub fields_max: u32,
    pub committers: u32,
    pub replay_threads: usize,
    /// Transactions committed while filling, and how long that took.
    pub fill_transactions: u64,
    pub fill_seconds: f64,
    /// From `Store::open_report()`.
    pub replayed_records: u64,
    pub replayed_bytes: u64,
    pub mean_record_bytes: f64,
    pub replay_seconds: f64,
    pub replay_mb_per_sec: f64,
    /// Wall time of the whole `Store::open`.
    pub open_seconds: f64,
    pub open_mb_per_sec: f64,
}

pub fn run(args: &RecoveryArgs) -> Result<(), StoreBenchError> {
    report::print_rows(args.json, |on_row| run_all(args, on_row), table)
}

pub fn table(rows: &[RecoveryRow]) -> String {
    const HEADER: [&str; 9] = [
        "page cache",
        "threads",
        "replayed MiB",
        "records",
        "record B",
        "replay s",
        "replay MB/s",
        "open s",
        "open MB/s",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.page_cache.to_string(),
                r.replay_threads.to_string(),
                store_common::mib(r.replayed_bytes),
                r.replayed_records.to_string(),
                format!("{:.1}", r.mean_record_bytes),
                format!("{:.2}", r.replay_seconds),
                format!("{:.0}", r.replay_mb_per_sec),
                format!("{:.2}", r.open_seconds),
                format!("{:.0}", r.open_mb_per_sec),
            ]
        })
        .collect();
    report::render_table(&HEADER, &cells)
}

fn no_checkpoint_config() -> StoreConfig {
    StoreConfig {
        checkpoint_wal_bytes: u64::MAX,
        checkpoint_interval: Duration::from_secs(u64::from(u32::MAX)),
        background_maintenance: false,
        ..StoreConfig::default()
    }
}

pub fn run_all(
    args: &RecoveryArgs,
    on_row: &mut dyn FnMut(&RecoveryRow),
) -> Result<Vec<RecoveryRow>, StoreBenchError> {
    if args.objects_per_tx > args.objects {
        return Err(StoreBenchError::Other(format!(
            "--objects-per-tx {} exceeds --objects {}",
            args.objects_per_tx, args.objects
        )));
    }
    let bench_dir = BenchDir::new(args.dir.as_deref())?;
    let store_dir = tempfile::Builder::new()
        .prefix("recovery-")
        .tempdir_in(bench_dir.path())
        .map_err(io_err(bench_dir.path()))?;
    eprintln!(
        "recovery: filling {} MiB of WAL in {}",
        store_common::mib(args.wal_bytes),
        store_dir.path().display()
    );
    let (fill_transactions, fill_seconds) = fill(args, store_dir.path())?;
    eprintln!("  filled in {fill_seconds:.1} s ({fill_transactions} transactions); crashed");

    let thread_counts: Vec<usize> = if args.replay_threads.is_empty() {
        vec![StoreConfig::default().replay_threads]
    } else {
        args.replay_threads.iter().map(|&n| n as usize).collect()
    };
    let opens = args
        .page_cache
        .iter()
        .flat_map(|&state| thread_counts.iter().map(move |&threads| (state, threads)));
    let mut rows = Vec::new();
    for (state, replay_threads) in opens {
        if state == PageCache::Cold {
            drop_from_page_cache(store_dir.path())?;
        }
        let config = StoreConfig {
            replay_threads,
            ..no_checkpoint_config()
        };
        let started = Instant::now();
        let store =
            Store::open(store_dir.path(), config).map_err(store_err("recovering the store"))?;
        let open_seconds = started.elapsed().as_secs_f64();
        let report = store.open_report().clone();
        // Crash again: the next open replays the same WAL.
        drop(store);
        let replay_seconds = report.replay_time.as_secs_f64();
        let per_sec = |seconds: f64| {
            if seconds > 0.0 {
                report.replayed_bytes as f64 / seconds / 1e6
            } else {
                0.0
            }
        };
        let row = RecoveryRow {
            bench: "recovery",
            workload: "recovery",
            page_cache: state.name(),
            wal_bytes_target: args.wal_bytes,
            objects: args.objects,
            objects_per_tx: args.objects_per_tx,
            fields_min: args.fields.min,
            fields_max: args.fields.max,
            committers: args.committers,
            replay_threads,
            fill_transactions,
            fill_seconds,
            replayed_records: report.replayed_records,
            replayed_bytes: report.replayed_bytes,
            mean_record_bytes: if report.replayed_records == 0 {
                0.0
            } else {
                report.replayed_bytes as f64 / report.replayed_records as f64
            },
            replay_seconds,
            replay_mb_per_sec: per_sec(replay_seconds),
            open_seconds,
            open_mb_per_sec: per_sec(open_seconds),
        };
        eprintln!(
            "  {} open, {} threads: replayed {} records, {} MiB in {:.2} s ({:.0} MB/s); open {:.2} s",
            row.page_cache,
            row.replay_threads,
            row.replayed_records,
            store_common::mib(row.replayed_bytes),
            row.replay_seconds,
            row.replay_mb_per_sec,
            row.open_seconds
        );
        on_row(&row);
        rows.push(row);
    }
    drop(store_dir);
    Ok(rows)
}

/// Creates the objects, checkpoints, then commits until `--wal-bytes` lie
/// in the WAL after the checkpoint. Returns (transactions, seconds).
fn fill(args: &RecoveryArgs, dir: &Path) -> Result<(u64, f64), StoreBenchError> {
    let store = Store::open(dir, no_checkpoint_config()).map_err(store_err("opening the store"))?;
    let class = store
        .register_class(&plain8_class())
        .map_err(store_err("registering the class"))?;
    let ids = store_common::create_objects(
        &store,
        &Creation {
            class,
            count: args.objects,
            per_tx: 1000,
            checkpoint_every: 0,
            label: "recovery",
        },
    )?;
    let checkpoint = store
        .checkpoint()
        .map_err(store_err("checkpoint before filling"))?;
    let base = checkpoint.lsn.0;
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let results: Vec<Result<u64, StoreBenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.committers)
            .map(|index| {
                let (store, ids, stop) = (&store, &ids, &stop);
                std::thread::Builder::new()
                    .name(format!("filler-{index}"))
                    .spawn_scoped(scope, move || {
                        let result = fill_loop(store, ids, args, u64::from(index), stop);
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        result
                    })
                    .expect("spawn a committer thread")
            })
            .collect();
        let mut last_progress = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            let written = store.stats().applied_lsn.0.saturating_sub(base);
            if written >= args.wal_bytes {
                stop.store(true, Ordering::Relaxed);
            } else if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                eprintln!(
                    "  recovery: {} of {} MiB written ({:.1} MB/s)",
                    store_common::mib(written),
                    store_common::mib(args.wal_bytes),
                    written as f64 / started.elapsed().as_secs_f64() / 1e6
                );
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("a committer thread panicked"))
            .collect()
    });
    let fill_seconds = started.elapsed().as_secs_f64();
    let mut transactions = 0;
    for result in results {
        transactions += result?;
    }
    let stats = store.stats();
    if stats.checkpoint_lsn.0 != base {
        return Err(StoreBenchError::Other(format!(
            "a checkpoint happened while filling (lsn {} after {base}); replay would be short",
            stats.checkpoint_lsn
        )));
    }
    // The crash: no close, so no checkpoint; everything acknowledged is in
    // the WAL only.
    drop(store);
    Ok((transactions, fill_seconds))
}

fn fill_loop(
    store: &Store,
    ids: &IdSpace,
    args: &RecoveryArgs,
    index: u64,
    stop: &AtomicBool,
) -> Result<u64, StoreBenchError> {
    let mut rng = Rng::new(0xF111 + index);
    let mut slots = Vec::with_capacity(8);
    let mut objects: Vec<ObjectId> = Vec::with_capacity(args.objects_per_tx as usize);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        objects.clear();
        while (objects.len() as u64) < args.objects_per_tx {
            let id = ids.random(&mut rng);
            if !objects.contains(&id) {
                objects.push(id);
            }
        }
        seq += 1;
        let tx = store_common::multi_update_tx(
            index + 1,
            seq,
            &objects,
            args.fields,
            &mut rng,
            &mut slots,
        );
        store
            .commit(tx)
            .map_err(store_err_with(|| format!("filler {index} commit")))?;
    }
    Ok(seq)
}

/// Asks the kernel to drop every file under `dir` from the page cache
/// (clean pages only; the store's files are all synced).
fn drop_from_page_cache(dir: &Path) -> Result<(), StoreBenchError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            drop_from_page_cache(&path)?;
        } else if kind.is_file() {
            let file = std::fs::File::open(&path).map_err(io_err(&path))?;
            // SAFETY: a plain syscall on a file descriptor we own.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc != 0 {
                return Err(StoreBenchError::Io {
                    path,
                    source: std::io::Error::from_raw_os_error(rc),
                });
            }
        }
    }
    Ok(())
}
