//! The `store-commit` workload: N committer threads, each owning one
//! `bench.Plain8` object (created up front), each looping `Store::commit`
//! of a transaction that writes a random number of that object's fields.
//! Each run is split into `--rounds` rounds, alternating with rounds of the
//! raw WAL with the same number of producers and the first round's mean
//! encoded transaction size as its record size (the `wal` workload's own
//! `measure`), giving `ratio_vs_wal` from the same stretch of time.
//!
//! Owns: the `store-commit` arguments, one fresh store directory per run
//! (removed after it), the committer threads and the measured window.
//! Not: the WAL baseline's mechanics (`wal_bench.rs`), printing (`report.rs`).
//! Window: as in `wal`: a commit is measured if it starts inside
//! `[warm-up end, warm-up end + seconds)`; none starts after it. Store stats
//! are read at both edges.
//! Store: default `StoreConfig` with `background_maintenance = true` (the
//! production checkpoint settings) and the WAL backend forced to the one
//! the baseline uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::{ObjectId, Store, StoreConfig, StoreStats};
use tc_wal::{Backend, BackendChoice, WalConfig};

use crate::fsync_probe;
use crate::report::{self, LatencySummary};
use crate::store_common::{
    self, FieldRange, Rng, StoreBenchError, io_err, plain8_class, store_err, store_err_with,
};
use crate::wal_bench::{self, BackendArg, BenchDir, BenchError, WalArgs, Window};

const COMMITTERS_MAX: u32 = 10_000;

#[derive(Debug, Args)]
pub struct StoreCommitArgs {
    /// Committer thread counts, comma-separated; one run each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(COMMITTERS_MAX)),
    )]
    pub committers: Vec<u32>,
    /// Fields each transaction writes: a count or a range (uniform), of 8.
    #[arg(long, default_value = "1-8", value_parser = store_common::parse_field_range)]
    pub fields: FieldRange,
    /// Measured seconds per run (after the warm-up); the WAL baseline runs
    /// as long.
    #[arg(long, default_value_t = 5.0, value_parser = wal_bench::parse_seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Warm-up seconds per round, excluded from every number.
    #[arg(long, default_value_t = 1.0, value_parser = wal_bench::parse_seconds, allow_negative_numbers = true)]
    pub warmup_seconds: f64,
    /// Rounds each run is split into, the store and its raw-WAL baseline
    /// taking turns round by round, so both meet the same disk: its
    /// fdatasync latency drifts by tens of percent within minutes here.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// WAL backend of the store and of the baseline. Default: io_uring when
    /// available, else portable.
    #[arg(long)]
    pub backend: Option<BackendArg>,
    /// Run the committers as tokio tasks calling `commit_async` (as a
    /// server would) instead of threads calling `commit`.
    #[arg(long)]
    pub tasks: bool,
    /// Print one JSON object per run on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directory for the stores and WALs (each run gets a fresh
    /// subdirectory, removed after it). Default: a temporary directory under
    /// the current directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One store-commit run and its WAL baseline.
#[derive(Clone, Debug, Serialize)]
pub struct StoreCommitRow {
    pub bench: &'static str,
    pub workload: &'static str,
    pub backend: &'static str,
    pub committers: u32,
    /// "threads" (`commit`) or "tasks" (`commit_async` on tokio).
    pub mode: &'static str,
    pub fields_min: u32,
    pub fields_max: u32,
    pub seconds: f64,
    pub warmup_seconds: f64,
    /// Commits started in the window (each durable and applied).
    pub transactions: u64,
    pub tx_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Mean encoded transaction (WAL payload) size in the window.
    pub mean_tx_bytes: f64,
    /// WAL records / fdatasyncs in the window (group-commit batch size).
    pub wal_records_per_fsync: f64,
    pub wal_syncs: u64,
    /// Times the checkpoint LSN moved during the window (polled every 50 ms).
    pub checkpoints_in_window: u64,
    /// The raw WAL, same producers, record size = round(mean_tx_bytes).
    pub wal_record_bytes: u32,
    pub wal_records_per_sec: f64,
    pub wal_p50_us: u64,
    pub wal_p99_us: u64,
    pub wal_baseline_records_per_fsync: f64,
    /// tx_per_sec / wal_records_per_sec.
    pub ratio_vs_wal: f64,
    pub fdatasync_p50_us: u64,
    pub fdatasync_p99_us: u64,
}

pub fn run(args: &StoreCommitArgs) -> Result<(), StoreBenchError> {
    report::print_rows(args.json, |on_row| run_all(args, on_row), table)
}

pub fn run_all(
    args: &StoreCommitArgs,
    on_row: &mut dyn FnMut(&StoreCommitRow),
) -> Result<Vec<StoreCommitRow>, StoreBenchError> {
    let backend = store_common::choose_backend(args.backend)?;
    let bench_dir = BenchDir::new(args.dir.as_deref())?;
    eprintln!(
        "measuring pwrite(64 B) + fdatasync in {}",
        bench_dir.path().display()
    );
    let fdatasync = fsync_probe::measure(bench_dir.path()).map_err(|source| BenchError::Probe {
        path: bench_dir.path().to_owned(),
        source,
    })?;
    eprintln!(
        "fdatasync: p50 {} us, p99 {} us ({} samples)",
        fdatasync.p50_us, fdatasync.p99_us, fdatasync.count
    );
    let mut rows = Vec::new();
    for &committers in &args.committers {
        let round_seconds = args.seconds / f64::from(args.rounds);
        let mut store_run = StoreRun::default();
        let mut wal = wal_bench::Measured::default();
        let mut wal_args = None;
        for round in 1..=args.rounds {
            eprintln!(
                "running store-commit: backend {backend}, {committers} committers, fields {}-{}, round {round} of {}: {round_seconds} s (+{} s warm-up)",
                args.fields.min, args.fields.max, args.rounds, args.warmup_seconds
            );
            store_run.add(run_store(
                args,
                bench_dir.path(),
                backend,
                committers,
                round_seconds,
            )?);
            // The baseline's records are the size of the store's mean
            // transaction in the first round.
            let wal_args = wal_args.get_or_insert_with(|| WalArgs {
                producers: vec![committers],
                backend: vec![backend_arg(backend)],
                record_bytes: (store_run.mean_tx_bytes().round() as u32).max(1),
                seconds: args.seconds,
                warmup_seconds: args.warmup_seconds,
                rounds: args.rounds,
                writes_in_flight: None,
                json: args.json,
                dir: Some(bench_dir.path().to_owned()),
            });
            eprintln!(
                "running the raw WAL baseline: {committers} producers, {} B records, round {round} of {}",
                wal_args.record_bytes, args.rounds
            );
            wal.add(wal_bench::measure(
                wal_args,
                bench_dir.path(),
                backend,
                committers,
                args.rounds,
            )?);
        }
        let wal_record_bytes = wal_args.map_or(1, |a| a.record_bytes);
        let latency = LatencySummary::of(&store_run.histogram);
        let wal_latency = LatencySummary::of(&wal.histogram);
        let tx_per_sec = latency.count as f64 / store_run.seconds;
        let wal_records_per_sec = wal_latency.count as f64 / wal.seconds;
        eprintln!(
            "  store {tx_per_sec:.0} tx/s, p50 {} us, {:.1} records/fsync, mean tx {:.1} B; raw WAL {wal_records_per_sec:.0} records/s",
            latency.p50_us,
            store_run.records_per_fsync(),
            store_run.mean_tx_bytes()
        );
        let row = StoreCommitRow {
            bench: "store-commit",
            workload: "store-commit",
            backend: backend.name(),
            committers,
            mode: if args.tasks { "tasks" } else { "threads" },
            fields_min: args.fields.min,
            fields_max: args.fields.max,
            seconds: store_run.seconds,
            warmup_seconds: args.warmup_seconds,
            transactions: latency.count,
            tx_per_sec,
            p50_us: latency.p50_us,
            p99_us: latency.p99_us,
            p999_us: latency.p999_us,
            max_us: latency.max_us,
            mean_tx_bytes: store_run.mean_tx_bytes(),
            wal_records_per_fsync: store_run.records_per_fsync(),
            wal_syncs: store_run.syncs,
            checkpoints_in_window: store_run.checkpoints,
            wal_record_bytes,
            wal_records_per_sec,
            wal_p50_us: wal_latency.p50_us,
            wal_p99_us: wal_latency.p99_us,
            wal_baseline_records_per_fsync: if wal.stats.syncs == 0 {
                0.0
            } else {
                wal.stats.records as f64 / wal.stats.syncs as f64
            },
            ratio_vs_wal: if wal_records_per_sec > 0.0 {
                tx_per_sec / wal_records_per_sec
            } else {
                0.0
            },
            fdatasync_p50_us: fdatasync.p50_us,
            fdatasync_p99_us: fdatasync.p99_us,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

fn backend_arg(backend: Backend) -> BackendArg {
    match backend {
        Backend::Uring => BackendArg::Uring,
        Backend::Portable => BackendArg::Portable,
    }
}

pub fn table(rows: &[StoreCommitRow]) -> String {
    const HEADER: [&str; 11] = [
        "backend",
        "mode",
        "committers",
        "tx/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "records/fsync",
        "tx bytes",
        "wal records/s",
        "ratio vs wal",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.backend.to_string(),
                r.mode.to_string(),
                r.committers.to_string(),
                format!("{:.0}", r.tx_per_sec),
                r.p50_us.to_string(),
                r.p99_us.to_string(),
                r.p999_us.to_string(),
                format!("{:.1}", r.wal_records_per_fsync),
                format!("{:.1}", r.mean_tx_bytes),
                format!("{:.0}", r.wal_records_per_sec),
                format!("{:.2}", r.ratio_vs_wal),
            ]
        })
        .collect();
    report::render_table(&HEADER, &cells)
}

/// What one or more rounds of a store run measured.
struct StoreRun {
    histogram: Histogram<u64>,
    tx_bytes: u64,
    /// WAL records and syncs in the measured windows.
    records: u64,
    syncs: u64,
    checkpoints: u64,
    seconds: f64,
}

impl Default for StoreRun {
    fn default() -> StoreRun {
        StoreRun {
            histogram: report::latency_histogram(),
            tx_bytes: 0,
            records: 0,
            syncs: 0,
            checkpoints: 0,
            seconds: 0.0,
        }
    }
}

impl StoreRun {
    fn add(&mut self, round: StoreRun) {
        self.histogram
            .add(&round.histogram)
            .expect("histograms share their bounds");
        self.tx_bytes += round.tx_bytes;
        self.records += round.records;
        self.syncs += round.syncs;
        self.checkpoints += round.checkpoints;
        self.seconds += round.seconds;
    }

    fn mean_tx_bytes(&self) -> f64 {
        match self.histogram.len() {
            0 => 0.0,
            n => self.tx_bytes as f64 / n as f64,
        }
    }

    fn records_per_fsync(&self) -> f64 {
        match self.syncs {
            0 => 0.0,
            n => self.records as f64 / n as f64,
        }
    }
}

/// What one committer measured in the window.
struct Committed {
    histogram: Histogram<u64>,
    tx_bytes: u64,
}

fn run_store(
    args: &StoreCommitArgs,
    bench_dir: &Path,
    backend: Backend,
    committers: u32,
    seconds: f64,
) -> Result<StoreRun, StoreBenchError> {
    let store_dir = tempfile::Builder::new()
        .prefix(&format!("store-commit-c{committers}-"))
        .tempdir_in(bench_dir)
        .map_err(io_err(bench_dir))?;
    let config = StoreConfig {
        wal: WalConfig {
            backend: BackendChoice::Only(backend),
            ..WalConfig::default()
        },
        background_maintenance: true,
        ..StoreConfig::default()
    };
    let store = Store::open(store_dir.path(), config).map_err(store_err("opening the store"))?;
    let class = store
        .register_class(&plain8_class())
        .map_err(store_err("registering the class"))?;
    let ids = store
        .allocate_ids(u64::from(committers))
        .map_err(store_err("allocating ids"))?;
    let objects: Vec<ObjectId> = ids.map(ObjectId).collect();
    let create = Transaction {
        client: 1,
        seq: 1,
        lock: LockRef::None,
        roots: Vec::new(),
        dnas: objects
            .iter()
            .map(|&id| Dna::new_object(id, class))
            .collect(),
    };
    store
        .commit(create.encode())
        .map_err(store_err("creating the objects"))?;

    let window = Window::starting_now(
        Duration::from_secs_f64(args.warmup_seconds),
        Duration::from_secs_f64(seconds),
    );
    let failed = AtomicBool::new(false);
    let (results, before, after, checkpoints, store) = if args.tasks {
        let store = Arc::new(store);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(io_err(bench_dir))?;
        let handles: Vec<_> = objects
            .iter()
            .enumerate()
            .map(|(index, &object)| {
                runtime.spawn(commit_task(
                    Arc::clone(&store),
                    index as u64,
                    object,
                    args.fields,
                    window,
                ))
            })
            .collect();
        let (before, after, checkpoints) = watch_window(&store, window, &failed);
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| runtime.block_on(h).expect("a committer task panicked"))
            .collect();
        drop(runtime);
        let store = Arc::try_unwrap(store)
            .map_err(|_| ())
            .expect("every task has finished");
        (results, before, after, checkpoints, store)
    } else {
        let (results, before, after, checkpoints) = std::thread::scope(|scope| {
            let handles: Vec<_> = objects
                .iter()
                .enumerate()
                .map(|(index, &object)| {
                    let store = &store;
                    let failed = &failed;
                    let fields = args.fields;
                    std::thread::Builder::new()
                        .name(format!("committer-{index}"))
                        .spawn_scoped(scope, move || {
                            let result = commit_loop(store, index as u64, object, fields, window);
                            if result.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                            result
                        })
                        .expect("spawn a committer thread")
                })
                .collect();
            let (before, after, checkpoints) = watch_window(&store, window, &failed);
            let results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().expect("a committer thread panicked"))
                .collect();
            (results, before, after, checkpoints)
        });
        (results, before, after, checkpoints, store)
    };
    let mut histogram = report::latency_histogram();
    let mut tx_bytes = 0u64;
    for result in results {
        let committed = result?;
        histogram
            .add(&committed.histogram)
            .expect("histograms share their bounds");
        tx_bytes += committed.tx_bytes;
    }
    store.close().map_err(store_err("closing the store"))?;
    drop(store_dir);

    let (records, syncs) = wal_delta(&before, &after);
    Ok(StoreRun {
        histogram,
        tx_bytes,
        records,
        syncs,
        checkpoints,
        seconds,
    })
}

/// Waits out the window, counting checkpoints (polled every 50 ms); returns
/// the store's stats at the start and end of the measured part.
fn watch_window(
    store: &Store,
    window: Window,
    failed: &AtomicBool,
) -> (StoreStats, StoreStats, u64) {
    store_common::sleep_until(window.measure_from);
    let before = store.stats();
    let mut checkpoints = 0u64;
    let mut last_checkpoint = before.checkpoint_lsn;
    while Instant::now() < window.until && !failed.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(50).min(window.until.saturating_duration_since(Instant::now())),
        );
        let lsn = store.stats().checkpoint_lsn;
        if lsn != last_checkpoint {
            checkpoints += 1;
            last_checkpoint = lsn;
        }
    }
    (before, store.stats(), checkpoints)
}

fn wal_delta(before: &StoreStats, after: &StoreStats) -> (u64, u64) {
    (
        after.wal.records - before.wal.records,
        after.wal.syncs - before.wal.syncs,
    )
}

/// One committer's state: the transactions it commits and what it measured.
/// The transactions are encoded before the run, `TX_RING` of them cycled, as
/// the WAL baseline appends one payload made up front: both loops measure
/// the system under test, not a client building its next request.
struct Committer {
    window: Window,
    ring: Vec<Bytes>,
    next: usize,
    done: Committed,
}

/// Distinct transactions each committer encodes up front and cycles through.
const TX_RING: usize = 64;

impl Committer {
    fn new(index: u64, object: ObjectId, fields: FieldRange, window: Window) -> Committer {
        let mut rng = Rng::new(index + 1);
        let mut slots = Vec::with_capacity(8);
        let ring = (1..=TX_RING as u64)
            .map(|seq| {
                fields.pick_slots(&mut rng, &mut slots);
                Bytes::from(store_common::update_tx(
                    index + 1,
                    seq,
                    object,
                    &slots,
                    &mut rng,
                ))
            })
            .collect();
        Committer {
            window,
            ring,
            next: 0,
            done: Committed {
                histogram: report::latency_histogram(),
                tx_bytes: 0,
            },
        }
    }

    /// The next transaction and its start time, or `None` once the window
    /// has closed.
    fn next(&mut self) -> Option<(Bytes, Instant)> {
        let tx = self.ring[self.next].clone();
        self.next = (self.next + 1) % TX_RING;
        let started = Instant::now();
        (started < self.window.until).then_some((tx, started))
    }

    fn committed(&mut self, len: usize, started: Instant) {
        if started >= self.window.measure_from {
            report::record_latency(&mut self.done.histogram, started.elapsed());
            self.done.tx_bytes += len as u64;
        }
    }
}

/// One committer thread: commits updates of its own object until the
/// window closes; returns the latencies and bytes of those started inside it.
fn commit_loop(
    store: &Store,
    index: u64,
    object: ObjectId,
    fields: FieldRange,
    window: Window,
) -> Result<Committed, StoreBenchError> {
    let mut committer = Committer::new(index, object, fields, window);
    while let Some((tx, started)) = committer.next() {
        let len = tx.len();
        store
            .commit(tx)
            .map_err(store_err_with(|| format!("committer {index} commit")))?;
        committer.committed(len, started);
    }
    Ok(committer.done)
}

/// `commit_loop` as a tokio task calling `commit_async`.
async fn commit_task(
    store: Arc<Store>,
    index: u64,
    object: ObjectId,
    fields: FieldRange,
    window: Window,
) -> Result<Committed, StoreBenchError> {
    let mut committer = Committer::new(index, object, fields, window);
    while let Some((tx, started)) = committer.next() {
        let len = tx.len();
        store
            .commit_async(tx)
            .await
            .map_err(store_err_with(|| format!("committer {index} commit")))?;
        committer.committed(len, started);
    }
    Ok(committer.done)
}
