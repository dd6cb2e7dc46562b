//! The `write-amp` workload: bytes written per byte of transaction under a
//! steady update load with checkpoints and the cleaner running.
//!
//! Owns: the `write-amp` arguments, the store directory (fresh, removed at
//! the end), the committer threads, and a maintenance thread of its own that
//! plays the store's background maintenance so it can add up what each pass
//! wrote.
//! Not: checkpoint or cleaner policy (`tc-heap-store`), printing.
//! Steps: create `--objects` `bench.Plain8` objects, checkpoint (nothing
//! before this point is counted); then `--committers` threads commit for
//! `--seconds` transactions that each write `--fields` random fields of one
//! random object. The maintenance thread checks every 20 ms, as the store's
//! own background thread does every 50 ms: once the WAL holds
//! `--checkpoint-wal-bytes` past the last checkpoint it calls
//! `Store::checkpoint` and then `Store::clean`. After the committers stop,
//! one last checkpoint and clean run (counted), so every committed change
//! is in a data segment at the end.
//! Figures: logical = sum of encoded transaction bytes committed; WAL =
//! `stats().wal.bytes` delta (frames: payload + 28 B header; the disk writes
//! whole pages, see `device_write_bytes`); data = sum of
//! `CheckpointReport::image_bytes` + `CleanReport::bytes_moved` (image
//! records with their 24 B headers). Not in WAL + data: the object table
//! (mmap, msync'd at each checkpoint) and the checkpoint file. Beside them,
//! `device_write_bytes`: what the block device under the store directory
//! wrote over the same span (`/sys/dev/block/*/stat`), which adds page
//! granularity, the object table, WAL spare zero-filling, the filesystem's
//! journal, and every other process writing to that device.
//! (`/proc/self/io` `write_bytes` is no use here: on this kernel it counts
//! whole large folios each time a page is dirtied again, gigabytes for
//! megabytes written.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tc_heap_store::{SEGMENTS_DIR, Store, StoreConfig};

use crate::report;
use crate::store_common::{
    self, Creation, FieldRange, IdSpace, Rng, StoreBenchError, io_err, plain8_class, store_err,
    store_err_with,
};
use crate::wal_bench::{self, BenchDir};

const MAINTENANCE_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Args)]
pub struct WriteAmpArgs {
    /// Objects updated (created and checkpointed before measuring).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub objects: u64,
    /// Seconds of update load.
    #[arg(long, default_value_t = 10.0, value_parser = wal_bench::parse_seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Committer threads.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub committers: u32,
    /// Fields each transaction writes: a count or a range (uniform), of 8.
    #[arg(long, default_value = "1-8", value_parser = store_common::parse_field_range)]
    pub fields: FieldRange,
    /// Checkpoint once the WAL holds this many bytes past the last one.
    #[arg(long, default_value = "16MiB", value_parser = store_common::parse_bytes)]
    pub checkpoint_wal_bytes: u64,
    /// Data segment size (`StoreConfig::data_segment_bytes`); small, so
    /// segments close and the cleaner has work within seconds.
    #[arg(long, default_value = "4MiB", value_parser = store_common::parse_bytes)]
    pub data_segment_bytes: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Directory for the store (a fresh subdirectory, removed at the end).
    /// Default: a temporary directory under the current directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WriteAmpRow {
    pub bench: &'static str,
    pub workload: &'static str,
    pub objects: u64,
    pub committers: u32,
    pub fields_min: u32,
    pub fields_max: u32,
    pub seconds: f64,
    pub checkpoint_wal_bytes: u64,
    pub data_segment_bytes: u64,
    pub cleaner_live_fraction: f64,
    pub transactions: u64,
    pub tx_per_sec: f64,
    /// The longest single commit (checkpoints and cleaning included).
    pub longest_commit_us: u64,
    /// Sum of the encoded transactions committed.
    pub logical_bytes: u64,
    /// `stats().wal.bytes` delta (frames).
    pub wal_bytes: u64,
    /// `stats().wal.syncs` delta: write + fdatasync rounds.
    pub wal_syncs: u64,
    /// Image bytes written by checkpoints.
    pub checkpoint_image_bytes: u64,
    /// Image bytes the cleaner moved.
    pub cleaner_bytes: u64,
    /// checkpoint_image_bytes + cleaner_bytes.
    pub data_bytes: u64,
    pub data_bytes_method: &'static str,
    pub checkpoints: u64,
    pub images_written: u64,
    pub segments_cleaned: u64,
    pub cleaner_bytes_freed: u64,
    pub wal_amplification: f64,
    pub data_amplification: f64,
    /// (wal_bytes + data_bytes) / logical_bytes.
    pub write_amplification: f64,
    /// Bytes the block device under the store wrote over the same span
    /// (machine-wide, `/sys/dev/block/*/stat`; 0 if unknown).
    pub device_write_bytes: u64,
    pub device_write_amplification: f64,
    /// At the end: bytes of the data segment files and the live image
    /// bytes in them (space amplification = the ratio).
    pub segment_files_bytes_end: u64,
    pub data_live_bytes_end: u64,
}

pub fn run(args: &WriteAmpArgs) -> Result<(), StoreBenchError> {
    let run_all = |on_row: &mut dyn FnMut(&WriteAmpRow)| {
        let row = run_one(args)?;
        on_row(&row);
        Ok(vec![row])
    };
    report::print_rows(args.json, run_all, table)
}

pub fn table(rows: &[WriteAmpRow]) -> String {
    const HEADER: [&str; 11] = [
        "objects",
        "committers",
        "tx/s",
        "longest commit us",
        "logical MiB",
        "WAL MiB",
        "data MiB",
        "checkpoints",
        "cleaned",
        "(WAL+data)/logical",
        "device/logical",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.objects.to_string(),
                r.committers.to_string(),
                format!("{:.0}", r.tx_per_sec),
                r.longest_commit_us.to_string(),
                store_common::mib(r.logical_bytes),
                store_common::mib(r.wal_bytes),
                store_common::mib(r.data_bytes),
                r.checkpoints.to_string(),
                r.segments_cleaned.to_string(),
                format!("{:.2}", r.write_amplification),
                format!("{:.2}", r.device_write_amplification),
            ]
        })
        .collect();
    report::render_table(&HEADER, &cells)
}

/// What the maintenance passes wrote.
#[derive(Debug, Default)]
struct Maintained {
    checkpoints: u64,
    images_written: u64,
    image_bytes: u64,
    segments_cleaned: u64,
    bytes_moved: u64,
    bytes_freed: u64,
}

impl Maintained {
    /// One checkpoint and one cleaner pass.
    fn pass(&mut self, store: &Store) -> Result<(), StoreBenchError> {
        let checkpoint = store.checkpoint().map_err(store_err("checkpoint"))?;
        self.checkpoints += 1;
        self.images_written += checkpoint.images_written as u64;
        self.image_bytes += checkpoint.image_bytes;
        let clean = store.clean().map_err(store_err("cleaner"))?;
        self.segments_cleaned += clean.segments_cleaned as u64;
        self.bytes_moved += clean.bytes_moved;
        self.bytes_freed += clean.bytes_freed;
        Ok(())
    }
}

pub fn run_one(args: &WriteAmpArgs) -> Result<WriteAmpRow, StoreBenchError> {
    let bench_dir = BenchDir::new(args.dir.as_deref())?;
    let store_dir = tempfile::Builder::new()
        .prefix("write-amp-")
        .tempdir_in(bench_dir.path())
        .map_err(io_err(bench_dir.path()))?;
    let config = StoreConfig {
        checkpoint_wal_bytes: args.checkpoint_wal_bytes,
        data_segment_bytes: args.data_segment_bytes,
        background_maintenance: false,
        ..StoreConfig::default()
    };
    let cleaner_live_fraction = config.cleaner_live_fraction;
    let store = Store::open(store_dir.path(), config).map_err(store_err("opening the store"))?;
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
            label: "write-amp",
        },
    )?;
    store
        .checkpoint()
        .map_err(store_err("checkpoint before measuring"))?;
    eprintln!(
        "running write-amp: {} objects, {} committers, {} s, checkpoint every {} MiB of WAL, {} MiB data segments",
        args.objects,
        args.committers,
        args.seconds,
        store_common::mib(args.checkpoint_wal_bytes),
        store_common::mib(args.data_segment_bytes)
    );

    let before = store.stats();
    let device_before = store_common::device_write_bytes(store_dir.path());
    let stop = AtomicBool::new(false);
    let maintenance_stop = AtomicBool::new(false);
    let counters = Counters::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let (committed, maintained) = std::thread::scope(|scope| {
        let committers: Vec<_> = (0..args.committers)
            .map(|index| {
                let (store, ids, stop, counters) = (&store, &ids, &stop, &counters);
                std::thread::Builder::new()
                    .name(format!("committer-{index}"))
                    .spawn_scoped(scope, move || {
                        let result = update_loop(
                            store,
                            ids,
                            args.fields,
                            u64::from(index),
                            deadline,
                            stop,
                            counters,
                        );
                        if result.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        result
                    })
                    .expect("spawn a committer thread")
            })
            .collect();
        let maintenance = {
            let (store, stop) = (&store, &maintenance_stop);
            let threshold = args.checkpoint_wal_bytes;
            std::thread::Builder::new()
                .name("bench-maintenance".into())
                .spawn_scoped(scope, move || {
                    let mut maintained = Maintained::default();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(MAINTENANCE_POLL);
                        let stats = store.stats();
                        if stats.applied_lsn.0.saturating_sub(stats.checkpoint_lsn.0) >= threshold {
                            maintained.pass(store)?;
                        }
                    }
                    Ok::<_, StoreBenchError>(maintained)
                })
                .expect("spawn the maintenance thread")
        };
        let mut last_progress = Instant::now();
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                eprintln!(
                    "  write-amp: {} transactions, {} MiB logical",
                    counters.transactions.load(Ordering::Relaxed),
                    store_common::mib(counters.logical.load(Ordering::Relaxed))
                );
            }
        }
        let committed: Vec<_> = committers
            .into_iter()
            .map(|h| h.join().expect("a committer thread panicked"))
            .collect();
        maintenance_stop.store(true, Ordering::Relaxed);
        let maintained = maintenance.join().expect("the maintenance thread panicked");
        (committed, maintained)
    });
    let elapsed = started.elapsed().as_secs_f64();
    for result in committed {
        result?;
    }
    let mut maintained = maintained?;
    // Everything committed goes to a data segment: one last pass.
    maintained.pass(&store)?;
    let after = store.stats();
    let device_after = store_common::device_write_bytes(store_dir.path());
    let segment_files_bytes_end = store_common::dir_bytes(&store_dir.path().join(SEGMENTS_DIR));
    store.close().map_err(store_err("closing the store"))?;
    drop(store_dir);

    let logical_bytes = counters.logical.load(Ordering::Relaxed);
    let transactions = counters.transactions.load(Ordering::Relaxed);
    let wal_bytes = after.wal.bytes - before.wal.bytes;
    let data_bytes = maintained.image_bytes + maintained.bytes_moved;
    let device_write_bytes = match (device_before, device_after) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let ratio = |bytes: u64| {
        if logical_bytes == 0 {
            0.0
        } else {
            bytes as f64 / logical_bytes as f64
        }
    };
    let row = WriteAmpRow {
        bench: "write-amp",
        workload: "write-amp",
        objects: args.objects,
        committers: args.committers,
        fields_min: args.fields.min,
        fields_max: args.fields.max,
        seconds: args.seconds,
        checkpoint_wal_bytes: args.checkpoint_wal_bytes,
        data_segment_bytes: args.data_segment_bytes,
        cleaner_live_fraction,
        transactions,
        tx_per_sec: transactions as f64 / elapsed,
        longest_commit_us: counters.longest_commit_us.load(Ordering::Relaxed),
        logical_bytes,
        wal_bytes,
        wal_syncs: after.wal.syncs - before.wal.syncs,
        checkpoint_image_bytes: maintained.image_bytes,
        cleaner_bytes: maintained.bytes_moved,
        data_bytes,
        data_bytes_method: "sum of CheckpointReport.image_bytes + CleanReport.bytes_moved",
        checkpoints: maintained.checkpoints,
        images_written: maintained.images_written,
        segments_cleaned: maintained.segments_cleaned,
        cleaner_bytes_freed: maintained.bytes_freed,
        wal_amplification: ratio(wal_bytes),
        data_amplification: ratio(data_bytes),
        write_amplification: ratio(wal_bytes + data_bytes),
        device_write_bytes,
        device_write_amplification: ratio(device_write_bytes),
        segment_files_bytes_end,
        data_live_bytes_end: after.data_live_bytes,
    };
    eprintln!(
        "  {:.0} tx/s; logical {} MiB, WAL {} MiB, data {} MiB ({} checkpoints, {} segments cleaned); (WAL+data)/logical {:.2}",
        row.tx_per_sec,
        store_common::mib(row.logical_bytes),
        store_common::mib(row.wal_bytes),
        store_common::mib(row.data_bytes),
        row.checkpoints,
        row.segments_cleaned,
        row.write_amplification
    );
    Ok(row)
}

/// What the committers add up.
#[derive(Default)]
struct Counters {
    /// Encoded transaction bytes committed.
    logical: AtomicU64,
    transactions: AtomicU64,
    longest_commit_us: AtomicU64,
}

fn update_loop(
    store: &Store,
    ids: &IdSpace,
    fields: FieldRange,
    index: u64,
    deadline: Instant,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<(), StoreBenchError> {
    let mut rng = Rng::new(0xA3A3 + index);
    let mut slots = Vec::with_capacity(8);
    let client = index + 1;
    let mut seq = 0u64;
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let object = ids.random(&mut rng);
        fields.pick_slots(&mut rng, &mut slots);
        seq += 1;
        let tx = store_common::update_tx(client, seq, object, &slots, &mut rng);
        let len = tx.len() as u64;
        let started = Instant::now();
        store
            .commit(tx)
            .map_err(store_err_with(|| format!("committer {index} commit")))?;
        let took = started.elapsed().as_micros() as u64;
        counters
            .longest_commit_us
            .fetch_max(took, Ordering::Relaxed);
        counters.logical.fetch_add(len, Ordering::Relaxed);
        counters.transactions.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
