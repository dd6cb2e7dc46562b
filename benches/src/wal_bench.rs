//! The `wal` workload: N producer tasks, each looping
//! `wal.append_async(1, payload).await`, against a fresh WAL per run.
//!
//! Owns: the `wal` arguments, the bench directory (given or temporary), one
//! fresh WAL directory per run (removed after the run), the tokio runtime
//! (multi-thread, 2 workers) and the measured window.
//! Not: the WAL itself, the disk baseline (`fsync_probe.rs`), printing
//! (`report.rs`).
//! Window: producers start together; appends started during the warm-up
//! are not measured; an append is measured if it started inside the window
//! `[warm-up end, warm-up end + seconds)`, and no append starts after it.
//! `WalStats` are read at both window edges; their delta gives
//! records per fsync.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use tc_wal::{Backend, BackendChoice, Wal, WalConfig, WalError, WalStats};
use tempfile::TempDir;

use crate::fsync_probe;
use crate::report::{self, LatencySummary, WalRow};

const RECORD_KIND: u8 = 1;
const WORKER_THREAD_COUNT: usize = 2;
const PRODUCERS_MAX: u32 = 100_000;
const RECORD_BYTES_MAX: u32 = 4 << 20;

#[derive(Debug, Args)]
pub struct WalArgs {
    /// Producer counts to run, comma-separated; each is one run per backend.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64,256",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(PRODUCERS_MAX)),
    )]
    pub producers: Vec<u32>,
    /// WAL backends to run, comma-separated.
    #[arg(
        long = "backend",
        value_delimiter = ',',
        default_value = "uring,portable"
    )]
    pub backend: Vec<BackendArg>,
    /// Payload bytes of each record.
    #[arg(
        long,
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(RECORD_BYTES_MAX)),
    )]
    pub record_bytes: u32,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Warm-up seconds per round, excluded from every number.
    #[arg(long, default_value_t = 0.5, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub warmup_seconds: f64,
    /// Rounds each run is split into, the backends taking turns round by
    /// round at each producer count, so both meet the same disk: its
    /// fdatasync latency drifts by tens of percent within minutes here.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Writes the io_uring backend keeps in flight (`WalConfig::writes_in_flight`;
    /// the portable backend always has one). Default: the WAL's default.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writes_in_flight: Option<u32>,
    /// Print one JSON object per run on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directory for the WALs (each run gets a fresh subdirectory, removed
    /// after the run). Default: a temporary directory under the current
    /// directory, so on the real disk rather than tmpfs.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A backend name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Uring,
    Portable,
}

impl BackendArg {
    pub(crate) fn backend(self) -> Backend {
        match self {
            BackendArg::Uring => Backend::Uring,
            BackendArg::Portable => Backend::Portable,
        }
    }
}

impl WalArgs {
    pub fn backends(&self) -> Vec<Backend> {
        self.backend.iter().map(|b| b.backend()).collect()
    }
}

pub(crate) fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text} must be above 0 and at most 86400"));
    }
    Ok(seconds)
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("fdatasync probe in {}: {source}", path.display())]
    Probe { path: PathBuf, source: io::Error },
    #[error("starting the tokio runtime: {0}")]
    Runtime(io::Error),
    #[error("WAL run ({backend}, {producers} producers): {source}")]
    Wal {
        backend: Backend,
        producers: u32,
        source: WalError,
    },
    #[error("WAL opened with backend {got} but {wanted} was asked for")]
    WrongBackend { wanted: Backend, got: Backend },
    #[error("a producer task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("no run could be made: every requested backend is unavailable")]
    NothingRan,
}

/// Runs every (backend, producers) combination and prints the results.
pub fn run(args: &WalArgs) -> Result<(), BenchError> {
    report::print_rows(args.json, |on_row| run_all(args, on_row), report::table)
}

/// Runs every combination, calling `on_row` as each finishes; returns the
/// rows. Skips a backend the machine lacks (io_uring), failing only if no
/// run was made.
pub fn run_all(args: &WalArgs, on_row: &mut dyn FnMut(&WalRow)) -> Result<Vec<WalRow>, BenchError> {
    let bench_dir = BenchDir::new(args.dir.as_deref())?;
    let probe_dir = bench_dir.path();
    eprintln!(
        "measuring pwrite(64 B) + fdatasync in {}",
        probe_dir.display()
    );
    let fdatasync = fsync_probe::measure(probe_dir).map_err(|source| BenchError::Probe {
        path: probe_dir.to_owned(),
        source,
    })?;
    eprintln!(
        "fdatasync: p50 {} us, p99 {} us ({} samples)",
        fdatasync.p50_us, fdatasync.p99_us, fdatasync.count
    );
    let mut backends = Vec::new();
    for backend in args.backends() {
        match backend_available(backend) {
            Ok(()) => backends.push(backend),
            Err(reason) => eprintln!("skipping backend {backend}: {reason}"),
        }
    }
    let mut rows = Vec::new();
    for &producers in &args.producers {
        let mut runs: Vec<Measured> = backends.iter().map(|_| Measured::default()).collect();
        for round in 1..=args.rounds {
            for (backend, run) in backends.iter().zip(&mut runs) {
                eprintln!(
                    "running wal: backend {backend}, {producers} producers, {} B records, round {round} of {}: {} s (+{} s warm-up)",
                    args.record_bytes,
                    args.rounds,
                    args.seconds / f64::from(args.rounds),
                    args.warmup_seconds
                );
                let round = measure(args, bench_dir.path(), *backend, producers, args.rounds)?;
                run.add(round);
            }
        }
        for (backend, run) in backends.iter().zip(&runs) {
            let row = wal_row(args, *backend, producers, run, &fdatasync);
            eprintln!(
                "  {backend}: {:.0} records/s, p50 {} us, p99 {} us, {:.1} records/fsync",
                row.records_per_sec, row.p50_us, row.p99_us, row.records_per_fsync
            );
            on_row(&row);
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return Err(BenchError::NothingRan);
    }
    Ok(rows)
}

/// `Err(reason)` if the WAL cannot use `backend` on this machine.
pub(crate) fn backend_available(backend: Backend) -> Result<(), String> {
    match backend {
        Backend::Portable => Ok(()),
        Backend::Uring => io_uring::IoUring::new(8)
            .map(drop)
            .map_err(|err| format!("io_uring is unavailable on this machine ({err})")),
    }
}

/// Where the WALs live: the given directory, or a temporary one under the
/// current directory that is removed on drop.
pub(crate) enum BenchDir {
    Given(PathBuf),
    Temporary(TempDir),
}

impl BenchDir {
    pub(crate) fn new(given: Option<&Path>) -> Result<BenchDir, BenchError> {
        let dir_error = |path: &Path| {
            let path = path.to_owned();
            move |source| BenchError::Dir { path, source }
        };
        match given {
            Some(path) => {
                std::fs::create_dir_all(path).map_err(dir_error(path))?;
                Ok(BenchDir::Given(path.to_owned()))
            }
            None => {
                let here = std::env::current_dir().map_err(dir_error(Path::new(".")))?;
                let temporary = tempfile::Builder::new()
                    .prefix(".tc-bench-")
                    .tempdir_in(&here)
                    .map_err(dir_error(&here))?;
                Ok(BenchDir::Temporary(temporary))
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            BenchDir::Given(path) => path,
            BenchDir::Temporary(dir) => dir.path(),
        }
    }
}

/// What one or more rounds of a run measured.
pub(crate) struct Measured {
    pub histogram: Histogram<u64>,
    pub stats: WalStats,
    pub seconds: f64,
}

impl Default for Measured {
    fn default() -> Measured {
        Measured {
            histogram: report::latency_histogram(),
            stats: WalStats::default(),
            seconds: 0.0,
        }
    }
}

impl Measured {
    pub(crate) fn add(&mut self, round: Measured) {
        self.histogram
            .add(&round.histogram)
            .expect("histograms share their bounds");
        self.stats = WalStats {
            records: self.stats.records + round.stats.records,
            syncs: self.stats.syncs + round.stats.syncs,
            bytes: self.stats.bytes + round.stats.bytes,
            spare_misses: self.stats.spare_misses + round.stats.spare_misses,
        };
        self.seconds += round.seconds;
    }
}

/// One round of a run: `producers` tasks on `backend`, a warm-up, then
/// `seconds / rounds` measured, in a fresh WAL directory under `bench_dir`
/// (removed afterwards). `store-commit` calls this for its raw-WAL
/// baseline (`ratio_vs_wal`).
pub(crate) fn measure(
    args: &WalArgs,
    bench_dir: &Path,
    backend: Backend,
    producers: u32,
    rounds: u32,
) -> Result<Measured, BenchError> {
    let wal_error = |source| BenchError::Wal {
        backend,
        producers,
        source,
    };
    let wal_dir = tempfile::Builder::new()
        .prefix(&format!("wal-{backend}-p{producers}-"))
        .tempdir_in(bench_dir)
        .map_err(|source| BenchError::Dir {
            path: bench_dir.to_owned(),
            source,
        })?;
    let defaults = WalConfig::default();
    let config = WalConfig {
        backend: BackendChoice::Only(backend),
        writes_in_flight: args
            .writes_in_flight
            .map_or(defaults.writes_in_flight, |n| n as usize),
        ..defaults
    };
    let wal = Wal::open(wal_dir.path(), config).map_err(wal_error)?;
    if wal.backend() != backend {
        return Err(BenchError::WrongBackend {
            wanted: backend,
            got: wal.backend(),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREAD_COUNT)
        .enable_time()
        .build()
        .map_err(BenchError::Runtime)?;
    let payload = Bytes::from(vec![0x5Au8; args.record_bytes as usize]);
    let seconds = args.seconds / f64::from(rounds);
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let measured = Duration::from_secs_f64(seconds);

    let (histogram, stats) = runtime.block_on(async {
        let window = Window::starting_now(warmup, measured);
        let tasks: Vec<_> = (0..producers)
            .map(|_| tokio::spawn(produce(wal.clone(), payload.clone(), window)))
            .collect();
        tokio::time::sleep_until(window.measure_from.into()).await;
        let stats_before = wal.stats();
        tokio::time::sleep_until(window.until.into()).await;
        let stats_after = wal.stats();
        let mut histogram = report::latency_histogram();
        for task in tasks {
            let task_histogram = task.await.map_err(BenchError::Task)?.map_err(wal_error)?;
            histogram
                .add(&task_histogram)
                .expect("histograms share their bounds");
        }
        Ok::<_, BenchError>((histogram, stats_since(stats_before, stats_after)))
    })?;
    drop(runtime);
    wal.close();
    drop(wal_dir);
    Ok(Measured {
        histogram,
        stats,
        seconds,
    })
}

fn wal_row(
    args: &WalArgs,
    backend: Backend,
    producers: u32,
    run: &Measured,
    fdatasync: &LatencySummary,
) -> WalRow {
    let latency = LatencySummary::of(&run.histogram);
    let records_per_fsync = if run.stats.syncs == 0 {
        0.0
    } else {
        run.stats.records as f64 / run.stats.syncs as f64
    };
    WalRow {
        bench: "wal",
        workload: "wal",
        backend: backend.name(),
        producers,
        record_bytes: args.record_bytes,
        seconds: run.seconds,
        warmup_seconds: args.warmup_seconds,
        records: latency.count,
        records_per_sec: latency.count as f64 / run.seconds,
        p50_us: latency.p50_us,
        p99_us: latency.p99_us,
        p999_us: latency.p999_us,
        max_us: latency.max_us,
        records_per_fsync,
        syncs: run.stats.syncs,
        fdatasync_p50_us: fdatasync.p50_us,
        fdatasync_p99_us: fdatasync.p99_us,
        spare_misses: run.stats.spare_misses,
    }
}

/// The warm-up end and the end of a measured window (shared by workloads).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub measure_from: Instant,
    pub until: Instant,
}

impl Window {
    /// A window starting now: `warmup` unmeasured, then `measured`.
    pub(crate) fn starting_now(warmup: Duration, measured: Duration) -> Window {
        let start = Instant::now();
        Window {
            measure_from: start + warmup,
            until: start + warmup + measured,
        }
    }
}

/// One producer: appends until the window closes; returns the latencies of
/// the appends it started inside the measured window.
async fn produce(wal: Wal, payload: Bytes, window: Window) -> Result<Histogram<u64>, WalError> {
    let mut histogram = report::latency_histogram();
    loop {
        let started = Instant::now();
        if started >= window.until {
            return Ok(histogram);
        }
        wal.append_async(RECORD_KIND, payload.clone()).await?;
        if started >= window.measure_from {
            report::record_latency(&mut histogram, started.elapsed());
        }
    }
}

fn stats_since(before: WalStats, after: WalStats) -> WalStats {
    WalStats {
        records: after.records - before.records,
        syncs: after.syncs - before.syncs,
        bytes: after.bytes - before.bytes,
        spare_misses: after.spare_misses - before.spare_misses,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_portable_run_makes_durable_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = WalArgs {
            producers: vec![4],
            backend: vec![BackendArg::Portable],
            record_bytes: 64,
            seconds: 0.3,
            warmup_seconds: 0.1,
            rounds: 1,
            writes_in_flight: None,
            json: true,
            dir: Some(dir.path().to_owned()),
        };
        let mut seen = 0;
        let rows = run_all(&args, &mut |_| seen += 1).expect("run");
        assert_eq!(seen, 1);
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.backend, "portable");
        assert_eq!(row.producers, 4);
        assert!(row.records > 0);
        assert!(row.syncs > 0);
        assert!(row.records_per_fsync >= 1.0);
        // At most one append per producer is in flight, so a sync covers at
        // most 4 records (plus slack: the two counters are read separately).
        assert!(row.records_per_fsync <= 4.5, "{row:?}");
        assert!(row.p50_us <= row.p99_us && row.p99_us <= row.p999_us);
        // Run directories are removed; only the given directory stays.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
