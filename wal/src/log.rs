//! The `Wal` handle: open (lock, recover, start threads), append, read,
//! truncate, close.
//!
//! Owns: `WalConfig` and its validation, the state shared between the
//! writer thread, readers and handles (`Shared`).
//! Invariants: only the writer thread writes to segments; `durable_end` only
//! grows and every byte below it is durable; the last entry of `segments` is
//! the segment the writer appends to.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::device::{Backend, BackendChoice, Device};
use crate::error::{Result, WalError};
use crate::format::{self, Lsn, MAX_SEGMENT_BYTES, SEGMENT_HEADER_BYTES, SegmentHeader};
use crate::reader::WalReader;
use crate::recovery::{self, ActiveSegment, RecoveryReport, SegmentInfo};
use crate::segment;
use crate::spares::Spares;
use crate::writer::{Request, Writer};

const MAX_WRITES_IN_FLIGHT: usize = 64;

/// WAL settings. `Default` gives the production defaults.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Size of each segment file, pre-allocated (zero-filled). Default 64 MiB.
    pub segment_bytes: u64,
    /// Largest payload accepted by `append` and returned by readers. Default 4 MiB.
    pub max_record_bytes: u32,
    /// Appends that may wait for the writer before producers block. Default 4096.
    pub queue_capacity: usize,
    /// Most bytes the writer puts into one write + fdatasync. Default 4 MiB.
    pub max_write_bytes: usize,
    /// Backend selection. Default: io_uring, else portable.
    pub backend: BackendChoice,
    /// Writes (each one write + one fdatasync) the io_uring backend keeps in
    /// flight at once. The portable backend always has one. Default 1: on the
    /// reference VM a second write in flight did not raise throughput
    /// (`docs/benchmarks.md`); disks whose flushes overlap may gain from 2.
    pub writes_in_flight: usize,
    /// Spare segments kept zero-filled ahead of need. Default 1.
    pub spare_segments: usize,
    /// Epoch written into new segment headers (HA fencing). Default 0.
    pub epoch: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 << 20,
            max_record_bytes: 4 << 20,
            queue_capacity: 4096,
            max_write_bytes: 4 << 20,
            backend: BackendChoice::Auto,
            writes_in_flight: 1,
            spare_segments: 1,
            epoch: 0,
        }
    }
}

impl WalConfig {
    fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(WalError::InvalidConfig { field, reason });
        let largest_frame = format::frame_bytes(self.max_record_bytes as usize);
        if self.segment_bytes > MAX_SEGMENT_BYTES {
            return invalid(
                "segment_bytes",
                format!("must be at most {MAX_SEGMENT_BYTES}"),
            );
        }
        if self.segment_bytes < SEGMENT_HEADER_BYTES as u64 + largest_frame {
            return invalid(
                "segment_bytes",
                format!(
                    "({}) must hold the header ({SEGMENT_HEADER_BYTES} B) and one record of max_record_bytes ({largest_frame} B framed)",
                    self.segment_bytes
                ),
            );
        }
        if self.queue_capacity == 0 {
            return invalid("queue_capacity", "must be at least 1".into());
        }
        if !(1..=MAX_WRITES_IN_FLIGHT).contains(&self.writes_in_flight) {
            return invalid(
                "writes_in_flight",
                format!(
                    "({}) must be between 1 and {MAX_WRITES_IN_FLIGHT}",
                    self.writes_in_flight
                ),
            );
        }
        if self.max_write_bytes == 0 {
            return invalid("max_write_bytes", "must be at least 1".into());
        }
        Ok(())
    }

    fn write_buffer_bytes(&self) -> usize {
        self.max_write_bytes
            .max(format::frame_bytes(self.max_record_bytes as usize) as usize)
    }
}

/// Counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records: u64,
    /// Writes made durable; each is one write + one fdatasync.
    pub syncs: u64,
    pub bytes: u64,
    /// Rollovers that found no spare ready and zero-filled one on the spot.
    pub spare_misses: u64,
}

pub(crate) struct Shared {
    pub dir: PathBuf,
    pub max_record_bytes: u32,
    durable: Mutex<Lsn>,
    durable_changed: Condvar,
    durable_watch: watch::Sender<Lsn>,
    segments: Mutex<Vec<SegmentInfo>>,
    closed: AtomicBool,
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes: AtomicU64,
}

impl Shared {
    pub fn durable_end(&self) -> Lsn {
        *lock(&self.durable)
    }

    pub fn publish_durable(&self, end: Lsn) {
        let mut durable = lock(&self.durable);
        assert!(
            end >= *durable,
            "durable end went back: {end} < {}",
            *durable
        );
        *durable = end;
        drop(durable);
        self.durable_changed.notify_all();
        self.durable_watch.send_replace(end);
    }

    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = lock(&self.durable);
        self.durable_changed.notify_all();
        self.durable_watch.send_modify(|_| {});
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Blocks until the durable end passes `lsn`, the WAL closes or `timeout`
    /// runs out; returns the durable end.
    pub fn wait_durable_past(&self, lsn: Lsn, timeout: Duration) -> Lsn {
        let guard = lock(&self.durable);
        let (guard, _) = self
            .durable_changed
            .wait_timeout_while(guard, timeout, |end| *end <= lsn && !self.is_closed())
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.durable_watch.subscribe()
    }

    pub fn segments(&self) -> MutexGuard<'_, Vec<SegmentInfo>> {
        lock(&self.segments)
    }

    pub fn first_lsn(&self) -> Lsn {
        self.segments()
            .first()
            .map(|s| s.first_lsn)
            .unwrap_or_default()
    }

    /// Called by the writer after installing a new segment.
    pub fn push_segment(&self, info: SegmentInfo) {
        self.segments().push(info);
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn make_request(
    kind: u8,
    payload: Bytes,
    max_record_bytes: u32,
) -> Result<(Request, oneshot::Receiver<Result<Lsn>>)> {
    if kind == 0 {
        return Err(WalError::ReservedKind);
    }
    if payload.len() > max_record_bytes as usize {
        return Err(WalError::RecordTooLarge {
            len: payload.len(),
            max: max_record_bytes,
        });
    }
    let (done, wait) = oneshot::channel();
    Ok((
        Request {
            kind,
            payload,
            done,
        },
        wait,
    ))
}

/// A reserved place in the WAL's queue (`Wal::reserve`).
#[must_use = "a reserved slot holds a place in the queue until used or dropped"]
pub struct AppendSlot {
    permit: mpsc::OwnedPermit<Request>,
    max_record_bytes: u32,
}

impl AppendSlot {
    /// Queues a record in the reserved place, without blocking. Records get
    /// LSNs in the order of `submit` calls, as with `Wal::submit`.
    pub fn submit(self, kind: u8, payload: impl Into<Bytes>) -> Result<PendingAppend> {
        let (request, wait) = make_request(kind, payload.into(), self.max_record_bytes)?;
        self.permit.send(request);
        Ok(PendingAppend { wait })
    }
}

/// A queued append (`Wal::submit`): wait for its durable LSN.
#[must_use = "an append is acknowledged only by waiting for it"]
#[derive(Debug)]
pub struct PendingAppend {
    wait: oneshot::Receiver<Result<Lsn>>,
}

impl PendingAppend {
    /// Blocks until the record is durable; returns its LSN. Not from inside
    /// an async task (use `wait_async`).
    pub fn wait(self) -> Result<Lsn> {
        self.wait.blocking_recv().map_err(|_| WalError::Closed)?
    }

    pub async fn wait_async(self) -> Result<Lsn> {
        self.wait.await.map_err(|_| WalError::Closed)?
    }
}

/// A segmented write-ahead log. Cheap to clone; the writer stops (after
/// finishing every queued append) when the last clone is dropped or
/// `close` is called.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Option<mpsc::Sender<Request>>,
    shared: Arc<Shared>,
    spares: Arc<Spares>,
    writer_thread: Option<JoinHandle<()>>,
    allocator_thread: Option<JoinHandle<()>>,
    backend: Backend,
    report: RecoveryReport,
    truncate_lock: Mutex<()>,
    _lock_file: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
        self.spares.shutdown();
        if let Some(thread) = self.allocator_thread.take() {
            let _ = thread.join();
        }
        self.shared.mark_closed();
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`, recovering what is there.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal> {
        Wal::open_with(dir.as_ref(), config, None)
    }

    /// `open` for a caller that reads every record from `read_from` on
    /// right after (store replay): the segments that start at or after it,
    /// other than the last, are not read at open but left to that reader,
    /// which checks each frame as recovery would and fails on damage or a
    /// gap with the same errors. Saves reading them twice.
    pub fn open_to_read_from(
        dir: impl AsRef<Path>,
        config: WalConfig,
        read_from: Lsn,
    ) -> Result<Wal> {
        Wal::open_with(dir.as_ref(), config, Some(read_from))
    }

    fn open_with(dir: &Path, config: WalConfig, read_from: Option<Lsn>) -> Result<Wal> {
        config.validate()?;
        let dir = dir.to_owned();
        fs::create_dir_all(&dir).map_err(|e| WalError::io("creating directory", &dir, e))?;
        let lock_file = lock_dir(&dir)?;
        let spares = Arc::new(Spares::open(
            &dir,
            config.segment_bytes,
            config.spare_segments,
        )?);
        let (segments, active, report) = match recovery::recover(&dir, read_from)? {
            Some(recovered) => (recovered.segments, recovered.active, recovered.report),
            None => create_first_segment(&dir, &spares, &config)?,
        };
        let (device, fallback) = Device::open(
            config.backend,
            config.write_buffer_bytes(),
            config.writes_in_flight,
            config.segment_bytes,
        )
        .map_err(|e| WalError::io("setting up io_uring for", &dir, e))?;
        let backend = device.backend();
        match fallback {
            Some(reason) => tracing::warn!(
                "WAL {}: io_uring unavailable ({reason}); using pwrite + fdatasync",
                dir.display()
            ),
            None => tracing::info!(
                "WAL {}: backend {backend}, {}",
                dir.display(),
                device.write_method()
            ),
        }
        let end = active.next_lsn();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            max_record_bytes: config.max_record_bytes,
            durable: Mutex::new(end),
            durable_changed: Condvar::new(),
            durable_watch: watch::Sender::new(end),
            segments: Mutex::new(segments),
            closed: AtomicBool::new(false),
            records: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let (queue, requests) = mpsc::channel(config.queue_capacity);
        let writer = Writer::new(
            config.clone(),
            device,
            active,
            Arc::clone(&shared),
            Arc::clone(&spares),
            requests,
        );
        let writer_thread = std::thread::Builder::new()
            .name("tc-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| WalError::io("spawning writer thread for", &dir, e))?;
        let allocator = Arc::clone(&spares);
        let allocator_thread = std::thread::Builder::new()
            .name("tc-wal-spares".into())
            .spawn(move || allocator.run_allocator())
            .map_err(|e| WalError::io("spawning allocator thread for", &dir, e))?;
        Ok(Wal {
            inner: Arc::new(Inner {
                queue: Some(queue),
                shared,
                spares,
                writer_thread: Some(writer_thread),
                allocator_thread: Some(allocator_thread),
                backend,
                report,
                truncate_lock: Mutex::new(()),
                _lock_file: lock_file,
            }),
        })
    }

    fn request(
        &self,
        kind: u8,
        payload: Bytes,
    ) -> Result<(Request, oneshot::Receiver<Result<Lsn>>)> {
        make_request(kind, payload, self.inner.shared.max_record_bytes)
    }

    fn queue(&self) -> &mpsc::Sender<Request> {
        self.inner
            .queue
            .as_ref()
            .expect("queue lives as long as the handle")
    }

    /// Appends a record and blocks until it is durable; returns its LSN.
    /// Must not be called from inside an async task (use `append_async`).
    pub fn append(&self, kind: u8, payload: impl Into<Bytes>) -> Result<Lsn> {
        self.submit(kind, payload)?.wait()
    }

    /// Queues a record without waiting for it to be durable (blocking only
    /// while the queue is full). Records get LSNs in the order of the
    /// `submit` calls that returned, so a caller that serializes its calls
    /// knows each record's LSN in advance (`format::frame_bytes`). Must not
    /// be called from inside an async task.
    pub fn submit(&self, kind: u8, payload: impl Into<Bytes>) -> Result<PendingAppend> {
        let (request, wait) = self.request(kind, payload.into())?;
        self.queue()
            .blocking_send(request)
            .map_err(|_| WalError::Closed)?;
        Ok(PendingAppend { wait })
    }

    /// Reserves a place in the queue (waiting while it is full). Submitting
    /// through the slot never blocks, so an async caller can reserve first
    /// and then submit while holding a lock that orders its records.
    pub async fn reserve(&self) -> Result<AppendSlot> {
        let permit = self
            .queue()
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| WalError::Closed)?;
        Ok(AppendSlot {
            permit,
            max_record_bytes: self.inner.shared.max_record_bytes,
        })
    }

    /// Appends a record; resolves once it is durable, with its LSN.
    pub async fn append_async(&self, kind: u8, payload: impl Into<Bytes>) -> Result<Lsn> {
        let (request, wait) = self.request(kind, payload.into())?;
        self.queue()
            .send(request)
            .await
            .map_err(|_| WalError::Closed)?;
        wait.await.map_err(|_| WalError::Closed)?
    }

    /// End of the durable log: the LSN the next record will get once every
    /// queued append is done. Every record below it is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.inner.shared.durable_end()
    }

    /// Blocks until every record below `end` is durable, the WAL closes or
    /// `timeout` runs out; returns the durable end.
    pub fn wait_durable(&self, end: Lsn, timeout: Duration) -> Lsn {
        match end.0.checked_sub(1) {
            Some(before) => self.inner.shared.wait_durable_past(Lsn(before), timeout),
            None => self.durable_lsn(),
        }
    }

    /// LSN of the oldest record still in the log (after truncation).
    pub fn first_lsn(&self) -> Lsn {
        self.inner.shared.first_lsn()
    }

    /// A reader positioned at `from`, which must be a record boundary (or the
    /// durable end). It returns only durable records.
    pub fn reader(&self, from: Lsn) -> Result<WalReader> {
        WalReader::new(Arc::clone(&self.inner.shared), from)
    }

    /// Removes (or recycles as spares) every segment whose records all lie
    /// below `lsn`, durably. The active segment is never removed. Returns the
    /// number of segments retired.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        let _one_at_a_time = lock(&self.inner.truncate_lock);
        let retired: Vec<SegmentInfo> = {
            let segments = self.inner.shared.segments();
            let mut retire = 0;
            while retire + 1 < segments.len() && segments[retire + 1].first_lsn <= lsn {
                retire += 1;
            }
            segments[..retire].to_vec()
        };
        if retired.is_empty() {
            return Ok(0);
        }
        // Drop them from the list first so no reader opens them afterwards.
        self.inner.shared.segments().drain(..retired.len());
        for segment in &retired {
            self.inner.spares.recycle(&segment.path)?;
        }
        segment::sync_dir(&self.inner.shared.dir)?;
        Ok(retired.len())
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// What recovery found when this WAL was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    pub fn stats(&self) -> WalStats {
        let shared = &self.inner.shared;
        WalStats {
            records: shared.records.load(Ordering::Relaxed),
            syncs: shared.syncs.load(Ordering::Relaxed),
            bytes: shared.bytes.load(Ordering::Relaxed),
            spare_misses: self.inner.spares.misses.load(Ordering::Relaxed),
        }
    }

    /// Finishes every queued append and stops the writer. Other clones of
    /// this handle keep the WAL open; the last one to go closes it.
    pub fn close(self) {
        drop(self);
    }
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(segment::LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("opening lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(WalError::io("locking", &path, e)),
    }
}

fn create_first_segment(
    dir: &Path,
    spares: &Spares,
    config: &WalConfig,
) -> Result<(Vec<SegmentInfo>, ActiveSegment, RecoveryReport)> {
    let header = SegmentHeader {
        first_lsn: Lsn(0),
        epoch: config.epoch,
        segment_bytes: config.segment_bytes,
    };
    let spare = spares.take()?;
    let (file, path) = segment::install_segment(dir, &spare, &header)?;
    let active = ActiveSegment {
        file,
        first_lsn: header.first_lsn,
        capacity_bytes: config.segment_bytes,
        write_offset: SEGMENT_HEADER_BYTES as u64,
    };
    let report = RecoveryReport {
        segment_count: 1,
        epoch: config.epoch,
        ..RecoveryReport::default()
    };
    Ok((
        vec![SegmentInfo {
            first_lsn: header.first_lsn,
            path,
        }],
        active,
        report,
    ))
}
