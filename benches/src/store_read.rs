//! The `store-read` workload: random `Store::get`s from R reader threads
//! against a store of N objects whose cache holds only a fraction of them.
//!
//! Owns: the `store-read` arguments, the store directory (fresh, removed at
//! the end), the load, the reopen with the small cache, the reader threads
//! and the measured windows.
//! Not: the store's cache policy (`tc-heap-store`), printing (`report.rs`).
//! Steps: (1) load N `bench.Plain8` objects (field 0 set), `--objects-per-tx`
//! per transaction, ids in blocks of `ID_BLOCK_MAX`, a checkpoint every
//! million objects, no background maintenance; (2) estimate the heap's
//! in-memory size: the cache's own accounting (`stats().cache.bytes`) if
//! every object is still cached, else N × the mean cached object's bytes
//! (`heap_bytes_method` says which); (3) close, reopen with `cache_bytes` =
//! `--cache-fraction` × that estimate; (4) fill the cache with random gets
//! until it holds its budget (at most 120 s); (5) for each reader count: a
//! warm-up, then a measured window of random gets, the cache's hit and miss
//! counters read at both edges. The same store serves every reader count,
//! so later runs start with a full cache too.
//! The data segments were just written, so the OS page cache likely holds
//! them: a miss costs a read from memory plus decoding, not a disk read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tc_heap_store::{SEGMENTS_DIR, Store, StoreConfig};

use crate::report::{self, LatencySummary};
use crate::store_common::{
    self, Creation, IdSpace, Rng, StoreBenchError, io_err, plain8_class, store_err, store_err_with,
};
use crate::wal_bench::{self, BenchDir, Window};

const READERS_MAX: u32 = 10_000;
const CHECKPOINT_EVERY_OBJECTS: u64 = 1_000_000;
/// Cache budget while loading (clean objects beyond it are evicted).
const LOAD_CACHE_BYTES: usize = 1 << 30;
const FILL_TIME_MAX: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct StoreReadArgs {
    /// Objects in the store.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub objects: u64,
    /// Cache budget as a fraction of the heap's estimated in-memory size.
    #[arg(long, default_value_t = 0.1, value_parser = store_common::parse_fraction)]
    pub cache_fraction: f64,
    /// Reader thread counts, comma-separated; one measured window each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(READERS_MAX)),
    )]
    pub readers: Vec<u32>,
    /// Measured seconds per reader count (after the warm-up).
    #[arg(long, default_value_t = 5.0, value_parser = wal_bench::parse_seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Warm-up seconds per reader count, excluded from every number.
    #[arg(long, default_value_t = 1.0, value_parser = wal_bench::parse_seconds, allow_negative_numbers = true)]
    pub warmup_seconds: f64,
    /// Objects created per transaction while loading.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub objects_per_tx: u64,
    /// Print one JSON object per reader count on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directory for the store (a fresh subdirectory, removed at the end).
    /// Default: a temporary directory under the current directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StoreReadRow {
    pub bench: &'static str,
    pub workload: &'static str,
    pub objects: u64,
    pub readers: u32,
    pub cache_fraction: f64,
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// The cache budget of the reopened store.
    pub cache_bytes: u64,
    /// Estimated in-memory size of all objects (the cache's accounting).
    pub heap_bytes_estimate: u64,
    /// `"cache.bytes"` (every object was cached after loading) or
    /// `"objects x mean cached object bytes"`.
    pub heap_bytes_method: &'static str,
    pub mean_object_bytes: f64,
    /// Gets started in the window (each returned the object).
    pub reads: u64,
    pub reads_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// `stats().cache` deltas over the window.
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub hit_rate: f64,
    /// Objects and bytes in the cache at the end of the window.
    pub cache_objects_end: u64,
    pub cache_bytes_end: u64,
    pub load_seconds: f64,
    /// Bytes of the data segments after loading.
    pub data_segment_bytes: u64,
    /// `Store::open` with the small cache (object table load).
    pub reopen_seconds: f64,
    /// Random gets spent filling the cache before the first window.
    pub fill_reads: u64,
    pub fill_seconds: f64,
}

pub fn run(args: &StoreReadArgs) -> Result<(), StoreBenchError> {
    report::print_rows(args.json, |on_row| run_all(args, on_row), table)
}

pub fn table(rows: &[StoreReadRow]) -> String {
    const HEADER: [&str; 9] = [
        "readers",
        "objects",
        "cache MiB",
        "reads/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "hit rate",
        "load s",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.readers.to_string(),
                r.objects.to_string(),
                store_common::mib(r.cache_bytes),
                format!("{:.0}", r.reads_per_sec),
                r.p50_us.to_string(),
                r.p99_us.to_string(),
                r.p999_us.to_string(),
                format!("{:.3}", r.hit_rate),
                format!("{:.1}", r.load_seconds),
            ]
        })
        .collect();
    report::render_table(&HEADER, &cells)
}

struct Loaded {
    ids: IdSpace,
    load_seconds: f64,
    heap_bytes: u64,
    method: &'static str,
    mean_object_bytes: f64,
}

pub fn run_all(
    args: &StoreReadArgs,
    on_row: &mut dyn FnMut(&StoreReadRow),
) -> Result<Vec<StoreReadRow>, StoreBenchError> {
    let bench_dir = BenchDir::new(args.dir.as_deref())?;
    let store_dir = tempfile::Builder::new()
        .prefix("store-read-")
        .tempdir_in(bench_dir.path())
        .map_err(io_err(bench_dir.path()))?;
    eprintln!(
        "store-read: loading {} objects into {}",
        args.objects,
        store_dir.path().display()
    );
    let loaded = load(args, store_dir.path())?;
    let data_segment_bytes = store_common::dir_bytes(&store_dir.path().join(SEGMENTS_DIR));
    let cache_bytes = ((loaded.heap_bytes as f64 * args.cache_fraction) as u64).max(1);
    eprintln!(
        "  loaded in {:.1} s; heap ~{} MiB ({}), data segments {} MiB; reopening with a {} MiB cache",
        loaded.load_seconds,
        store_common::mib(loaded.heap_bytes),
        loaded.method,
        store_common::mib(data_segment_bytes),
        store_common::mib(cache_bytes)
    );
    let config = StoreConfig {
        cache_bytes: cache_bytes as usize,
        background_maintenance: true,
        ..StoreConfig::default()
    };
    let opened = Instant::now();
    let store = Store::open(store_dir.path(), config).map_err(store_err("reopening the store"))?;
    let reopen_seconds = opened.elapsed().as_secs_f64();
    let (fill_reads, fill_seconds) = fill_cache(&store, &loaded.ids, cache_bytes)?;
    eprintln!(
        "  reopened in {reopen_seconds:.1} s; filled the cache with {fill_reads} random gets in {fill_seconds:.1} s"
    );

    let mut rows = Vec::new();
    for &readers in &args.readers {
        eprintln!(
            "running store-read: {readers} readers, {} s (+{} s warm-up)",
            args.seconds, args.warmup_seconds
        );
        let window = Window::starting_now(
            Duration::from_secs_f64(args.warmup_seconds),
            Duration::from_secs_f64(args.seconds),
        );
        let failed = AtomicBool::new(false);
        let (results, before, after) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..readers)
                .map(|index| {
                    let (store, ids, failed) = (&store, &loaded.ids, &failed);
                    let seed = (u64::from(readers) << 32) | u64::from(index);
                    std::thread::Builder::new()
                        .name(format!("reader-{index}"))
                        .spawn_scoped(scope, move || {
                            let result = read_loop(store, ids, seed, window);
                            if result.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                            result
                        })
                        .expect("spawn a reader thread")
                })
                .collect();
            store_common::sleep_until(window.measure_from);
            let before = store.stats().cache;
            store_common::sleep_until(window.until);
            let after = store.stats().cache;
            let results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("a reader thread panicked"))
                .collect();
            (results, before, after)
        });
        let mut histogram = report::latency_histogram();
        for result in results {
            histogram
                .add(&result?)
                .expect("histograms share their bounds");
        }
        let latency = LatencySummary::of(&histogram);
        let hits = after.hits - before.hits;
        let misses = after.misses - before.misses;
        let row = StoreReadRow {
            bench: "store-read",
            workload: "store-read",
            objects: args.objects,
            readers,
            cache_fraction: args.cache_fraction,
            seconds: args.seconds,
            warmup_seconds: args.warmup_seconds,
            cache_bytes,
            heap_bytes_estimate: loaded.heap_bytes,
            heap_bytes_method: loaded.method,
            mean_object_bytes: loaded.mean_object_bytes,
            reads: latency.count,
            reads_per_sec: latency.count as f64 / args.seconds,
            p50_us: latency.p50_us,
            p99_us: latency.p99_us,
            p999_us: latency.p999_us,
            max_us: latency.max_us,
            cache_hits: hits,
            cache_misses: misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            cache_objects_end: after.objects as u64,
            cache_bytes_end: after.bytes as u64,
            load_seconds: loaded.load_seconds,
            data_segment_bytes,
            reopen_seconds,
            fill_reads,
            fill_seconds,
        };
        eprintln!(
            "  {:.0} reads/s, p50 {} us, p99 {} us, hit rate {:.3}",
            row.reads_per_sec, row.p50_us, row.p99_us, row.hit_rate
        );
        on_row(&row);
        rows.push(row);
    }
    store.close().map_err(store_err("closing the store"))?;
    drop(store_dir);
    Ok(rows)
}

fn load(args: &StoreReadArgs, dir: &std::path::Path) -> Result<Loaded, StoreBenchError> {
    let config = StoreConfig {
        cache_bytes: LOAD_CACHE_BYTES,
        background_maintenance: false,
        ..StoreConfig::default()
    };
    let started = Instant::now();
    let store = Store::open(dir, config).map_err(store_err("opening the store"))?;
    let class = store
        .register_class(&plain8_class())
        .map_err(store_err("registering the class"))?;
    let ids = store_common::create_objects(
        &store,
        &Creation {
            class,
            count: args.objects,
            per_tx: args.objects_per_tx,
            checkpoint_every: CHECKPOINT_EVERY_OBJECTS,
            label: "store-read",
        },
    )?;
    store
        .checkpoint()
        .map_err(store_err("checkpoint after loading"))?;
    let cache = store.stats().cache;
    store.close().map_err(store_err("closing after loading"))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let mean_object_bytes = cache.bytes as f64 / (cache.objects.max(1)) as f64;
    let (heap_bytes, method) = if cache.objects as u64 >= args.objects {
        (cache.bytes as u64, "cache.bytes")
    } else {
        (
            (mean_object_bytes * args.objects as f64) as u64,
            "objects x mean cached object bytes",
        )
    };
    Ok(Loaded {
        ids,
        load_seconds,
        heap_bytes,
        method,
        mean_object_bytes,
    })
}

/// Random gets until the cache holds 95 % of its budget, at most
/// `FILL_TIME_MAX`. Returns (gets, seconds).
fn fill_cache(store: &Store, ids: &IdSpace, budget: u64) -> Result<(u64, f64), StoreBenchError> {
    let started = Instant::now();
    let mut rng = Rng::new(u64::MAX);
    let mut reads = 0u64;
    loop {
        for _ in 0..1000 {
            let id = ids.random(&mut rng);
            store
                .get(id)
                .map_err(store_err_with(|| format!("filling the cache: get {id}")))?;
        }
        reads += 1000;
        let cache = store.stats().cache;
        // With fewer objects than the budget holds, every object cached is full.
        let full = cache.bytes as f64 >= 0.95 * budget as f64 || cache.objects as u64 >= ids.len();
        if full || started.elapsed() >= FILL_TIME_MAX {
            return Ok((reads, started.elapsed().as_secs_f64()));
        }
    }
}

/// One reader: random gets until the window closes; returns the latencies
/// of those started inside it.
fn read_loop(
    store: &Store,
    ids: &IdSpace,
    seed: u64,
    window: Window,
) -> Result<Histogram<u64>, StoreBenchError> {
    let mut rng = Rng::new(seed);
    let mut histogram = report::latency_histogram();
    loop {
        let id = ids.random(&mut rng);
        let started = Instant::now();
        if started >= window.until {
            return Ok(histogram);
        }
        let found = store
            .get(id)
            .map_err(store_err_with(|| format!("get {id}")))?;
        if started >= window.measure_from {
            report::record_latency(&mut histogram, started.elapsed());
        }
        if found.is_none() {
            return Err(StoreBenchError::Other(format!(
                "get {id}: the object is missing"
            )));
        }
    }
}
