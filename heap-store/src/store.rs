//! The store: the handle the server uses. Commits transactions through the
//! sequencer and the WAL into the heap; checkpoints, cleans and collects
//! garbage; recovers on open.
//!
//! Data dir layout: `wal/` (tc-wal), `segments/` (data segments),
//! `objects.tbl` (object table), `CHECKPOINT` (checkpoint record).
//!
//! Commit pipeline: decode → check and submit to the WAL in one critical
//! section (sequencer lock; LSNs known in advance) → wait until durable →
//! apply every durable record in LSN order (heap lock) → return the LSN.
//! Readers see only applied, hence durable, state.
//!
//! Locks, always taken in this order: maintenance → sequencer → heap →
//! pending. A failed WAL append poisons the store (later changes fail with
//! the cause; reads go on); restarting recovers from disk.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tc_wal::{AppendSlot, PendingAppend, Wal, WalConfig};

use crate::cache::{CacheStats, Snapshot};
use crate::checkpoint::Checkpoint;
use crate::datafile::{DataFiles, SegmentWriter};
use crate::dna::Transaction;
use crate::error::{Rejection, Result, StoreError};
use crate::heap::{ApplyError, ENTRY_DELETED, Heap, ImageToRead, Lookup};
use crate::model::{ClassDef, ClassId, ObjectId};
use crate::records::StoreRecord;
use crate::replay::{REPLAY_THREADS_MAX, replay};
use crate::sequencer::{DELETED, Sequencer};
use crate::table::{ObjectTable, TABLE_FILE_NAME, TableEntry};
use tc_wal::Lsn;

pub const WAL_DIR: &str = "wal";
pub const SEGMENTS_DIR: &str = "segments";

/// Most ids one `allocate_ids` call hands out.
pub const ID_BLOCK_MAX: u64 = 1 << 24;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub wal: WalConfig,
    /// A data segment is closed once it holds this many bytes.
    pub data_segment_bytes: u64,
    /// Budget of the object cache (approximate in-memory bytes).
    pub cache_bytes: usize,
    /// Checkpoint once this many WAL bytes were written since the last one.
    pub checkpoint_wal_bytes: u64,
    /// Checkpoint at least this often while there are changes.
    pub checkpoint_interval: Duration,
    /// The cleaner rewrites data segments whose live bytes are below this
    /// fraction of their size.
    pub cleaner_live_fraction: f64,
    pub max_transaction_bytes: usize,
    /// Run checkpoints and the cleaner on a background thread.
    pub background_maintenance: bool,
    /// Threads replaying the WAL at open, each applying the changes to its
    /// share of the objects (at most `REPLAY_THREADS_MAX`).
    pub replay_threads: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            wal: WalConfig::default(),
            data_segment_bytes: 64 << 20,
            cache_bytes: 256 << 20,
            checkpoint_wal_bytes: 256 << 20,
            checkpoint_interval: Duration::from_secs(60),
            cleaner_live_fraction: 0.5,
            max_transaction_bytes: 1 << 20,
            background_maintenance: true,
            replay_threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(REPLAY_THREADS_MAX),
        }
    }
}

/// A transaction that has its place in the log (`Store::begin_commit`);
/// `Store::finish_commit` waits until it is durable and applied. Dropping
/// it does not cancel the commit.
#[must_use = "a commit is acknowledged only once `finish_commit` returns"]
pub struct CommitTicket {
    lsn: Lsn,
    pending: PendingAppend,
    objects: Vec<ObjectId>,
}

impl CommitTicket {
    /// The transaction's LSN (known before it is durable).
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The objects the transaction changes or creates, in DNA order.
    pub fn objects(&self) -> &[ObjectId] {
        &self.objects
    }
}

/// What `Store::open` found.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    pub checkpoint_lsn: Lsn,
    pub replayed_records: u64,
    pub replayed_bytes: u64,
    pub replay_time: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    pub lsn: Lsn,
    pub images_written: usize,
    pub image_bytes: u64,
    pub wal_segments_retired: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub segments_cleaned: usize,
    pub images_moved: usize,
    pub bytes_moved: u64,
    pub bytes_freed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub reachable: u64,
    pub deleted: u64,
}

#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub cache: CacheStats,
    pub applied_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
    pub wal: tc_wal::WalStats,
    pub data_segments: usize,
    pub data_live_bytes: u64,
}

/// A record submitted to the WAL, waiting to be applied in LSN order.
struct Pending {
    lsn: Lsn,
    end: Lsn,
    record: StoreRecord,
}

/// State of checkpoints and the cleaner (one at a time).
struct Maintenance {
    writer: Option<SegmentWriter>,
    next_segment: u32,
    checkpoint_lsn: Lsn,
    checkpoint_at: Instant,
}

struct Inner {
    dir: PathBuf,
    files: Arc<DataFiles>,
    config: StoreConfig,
    wal: Wal,
    maintenance: Mutex<Maintenance>,
    sequencer: Mutex<Sequencer>,
    heap: Mutex<Heap>,
    pending: Mutex<VecDeque<Pending>>,
    poisoned: OnceLock<StoreError>,
    /// `heap.applied_end`, readable without the heap lock.
    applied_end: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The durable object store. Share it between threads by reference or `Arc`.
pub struct Store {
    inner: Arc<Inner>,
    report: OpenReport,
    background: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens (or creates) the store in `dir` and recovers: loads the
    /// checkpoint and the object table, then replays the WAL from the
    /// checkpoint LSN. A damaged data dir is refused with the place named.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
        let found = Checkpoint::read(&dir)?;
        // Replay reads every record from the checkpoint on and checks each
        // frame, so the WAL need not read those segments first as well.
        let wal = match &found {
            Some(checkpoint) => {
                Wal::open_to_read_from(dir.join(WAL_DIR), config.wal.clone(), checkpoint.lsn)?
            }
            None => Wal::open(dir.join(WAL_DIR), config.wal.clone())?,
        };
        let checkpoint = check_or_create_checkpoint(&dir, &wal, found)?;
        let table = ObjectTable::open(dir.join(TABLE_FILE_NAME))?;
        let files = Arc::new(DataFiles::open_dir(dir.join(SEGMENTS_DIR))?);
        let mut heap = Heap::new(table, Arc::clone(&files), config.cache_bytes);
        heap.classes = checkpoint.classes.iter().cloned().map(Arc::new).collect();
        heap.roots = checkpoint.roots.iter().cloned().collect();
        heap.next_id = checkpoint.next_id.max(1);
        heap.applied_end = checkpoint.lsn;
        let mut class_of = Vec::new();
        load_table(&mut heap, &files, &mut class_of)?;
        let started = Instant::now();
        let replayed = replay(
            &wal,
            &mut heap,
            &mut class_of,
            checkpoint.lsn,
            config.replay_threads,
        )?;
        let (replayed_records, replayed_bytes) = (replayed.records, replayed.bytes);
        let report = OpenReport {
            checkpoint_lsn: checkpoint.lsn,
            replayed_records,
            replayed_bytes,
            replay_time: started.elapsed(),
        };
        let sequencer = Sequencer {
            classes: heap.classes.clone(),
            class_ids: heap
                .classes
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), ClassId(i as u32 + 1)))
                .collect(),
            roots: heap.roots.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            next_id: heap.next_id,
            class_of,
            list_len: Default::default(),
            next_lsn: wal.durable_lsn(),
        };
        assert_eq!(
            heap.applied_end,
            wal.durable_lsn(),
            "replay reached the end of the WAL"
        );
        let next_segment = files
            .segment_ids()
            .into_iter()
            .max()
            .map_or(1, |max| max + 1)
            .max(checkpoint.next_segment.max(1));
        tracing::info!(
            dir = %dir.display(),
            checkpoint_lsn = %checkpoint.lsn,
            replayed_records,
            replayed_bytes,
            replay_ms = report.replay_time.as_millis() as u64,
            "store open"
        );
        let applied_end = AtomicU64::new(heap.applied_end.0);
        let inner = Arc::new(Inner {
            dir,
            files,
            wal,
            maintenance: Mutex::new(Maintenance {
                writer: None,
                next_segment,
                checkpoint_lsn: checkpoint.lsn,
                checkpoint_at: Instant::now(),
            }),
            sequencer: Mutex::new(sequencer),
            heap: Mutex::new(heap),
            pending: Mutex::new(VecDeque::new()),
            poisoned: OnceLock::new(),
            applied_end,
            stop: Mutex::new(false),
            wake: Condvar::new(),
            config,
        });
        let background = inner.config.background_maintenance.then(|| {
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("tc-store-maintenance".into())
                .spawn(move || maintenance_loop(weak))
                .expect("spawn the maintenance thread")
        });
        Ok(Store {
            inner,
            report,
            background,
        })
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Validates and commits one encoded transaction; returns its LSN once
    /// it is durable and applied. A rejected transaction writes nothing.
    pub fn commit(&self, tx_bytes: impl Into<Bytes>) -> Result<Lsn> {
        let (tx, bytes) = self.prepare(tx_bytes.into())?;
        let (lsn, ticket) = self.sequence(tx, bytes, None)?;
        let durable = ticket.wait();
        self.inner.finish(lsn, durable)
    }

    /// `commit` for async callers (a tokio task): waits for room in the WAL
    /// queue and for durability without blocking the thread, and reads
    /// changed objects that are not cached on tokio's blocking pool. The
    /// checks and the apply take the store's locks briefly, as in `commit`.
    pub async fn commit_async(&self, tx_bytes: impl Into<Bytes>) -> Result<Lsn> {
        let ticket = self.begin_commit(tx_bytes).await?;
        self.finish_commit(ticket).await
    }

    /// The first half of `commit_async`: checks the transaction and gives
    /// it its place in the log. Transactions begun one after the other (each
    /// awaited before the next begins) are in the log in that order, so a
    /// caller that begins them in its clients' order keeps their order
    /// while it waits for durability concurrently. Waits only for room in
    /// the WAL's queue.
    pub async fn begin_commit(&self, tx_bytes: impl Into<Bytes>) -> Result<CommitTicket> {
        let bytes = tx_bytes.into();
        let tx = self.decode_checked(&bytes)?;
        self.fault_in_async(&tx).await?;
        let objects = tx.dnas.iter().map(|dna| dna.object).collect();
        let slot = self.inner.wal.reserve().await?;
        let (lsn, pending) = self.sequence(tx, bytes, Some(slot))?;
        Ok(CommitTicket {
            lsn,
            pending,
            objects,
        })
    }

    /// The second half of `commit_async`: waits until the transaction of
    /// `ticket` is durable and applied; returns its LSN.
    pub async fn finish_commit(&self, ticket: CommitTicket) -> Result<Lsn> {
        let durable = ticket.pending.wait_async().await;
        self.inner.finish(ticket.lsn, durable)
    }

    /// Size check and decode; faults the changed objects in (outside the
    /// sequencer): an unreadable image fails this transaction, not the
    /// heap, and the apply after the WAL finds them cached.
    fn prepare(&self, bytes: Bytes) -> Result<(Transaction, Bytes)> {
        let tx = self.decode_checked(&bytes)?;
        for id in self.uncached_objects(&tx) {
            self.get(id)?;
        }
        Ok((tx, bytes))
    }

    /// The existing objects `tx` changes that are not in the cache now.
    fn uncached_objects(&self, tx: &Transaction) -> Vec<ObjectId> {
        let heap = lock(&self.inner.heap);
        tx.dnas
            .iter()
            .filter(|dna| dna.new_class.is_none() && !heap.is_cached(dna.object))
            .map(|dna| dna.object)
            .collect()
    }

    fn decode_checked(&self, bytes: &[u8]) -> Result<Transaction> {
        let max = self
            .inner
            .config
            .max_transaction_bytes
            .min(self.inner.config.wal.max_record_bytes as usize);
        if bytes.len() > max {
            return Err(Rejection::TooLarge {
                len: bytes.len(),
                max,
            }
            .into());
        }
        Ok(Transaction::decode(bytes).map_err(Rejection::Malformed)?)
    }

    /// `prepare`'s faulting for async callers: the changed objects that are
    /// not cached are read from the data segments on a blocking thread, so
    /// a cache miss (a disk read) never stalls the async worker.
    async fn fault_in_async(&self, tx: &Transaction) -> Result<()> {
        let missing = self.uncached_objects(tx);
        if missing.is_empty() {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let faulted = tokio::task::spawn_blocking(move || {
            missing
                .into_iter()
                .try_for_each(|id| inner.get(id).map(drop))
        })
        .await;
        match faulted {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Checks `tx` and submits it to the WAL, in one critical section.
    fn sequence(
        &self,
        tx: Transaction,
        bytes: Bytes,
        slot: Option<AppendSlot>,
    ) -> Result<(Lsn, PendingAppend)> {
        let mut seq = lock(&self.inner.sequencer);
        self.inner.check_not_poisoned()?;
        let effects = seq.check(&tx, |id| self.inner.list_len_from_heap(id))?;
        let submitted =
            self.inner
                .submit_via(&mut seq, StoreRecord::Transaction(tx), bytes, slot)?;
        seq.record(effects);
        Ok(submitted)
    }

    /// Hands out `n` fresh object ids, durably: never handed out again,
    /// even after a crash.
    pub fn allocate_ids(&self, n: u64) -> Result<Range<u64>> {
        if n == 0 || n > ID_BLOCK_MAX {
            return Err(Rejection::BadIdRequest {
                requested: n,
                reason: "ask for 1 to 2^24 ids",
            }
            .into());
        }
        let (range, lsn, ticket) = {
            let mut seq = lock(&self.inner.sequencer);
            self.inner.check_not_poisoned()?;
            let first = seq.next_id;
            let end = first.checked_add(n).filter(|e| *e < u64::MAX / 2).ok_or(
                Rejection::BadIdRequest {
                    requested: n,
                    reason: "the id space is exhausted",
                },
            )?;
            let record = StoreRecord::IdBlock {
                first: ObjectId(first),
                end: ObjectId(end),
            };
            let payload = Bytes::from(record.encode());
            let (lsn, ticket) = self.inner.submit(&mut seq, record, payload)?;
            seq.next_id = end;
            (first..end, lsn, ticket)
        };
        self.inner.finish(lsn, ticket.wait())?;
        Ok(range)
    }

    /// Registers a class (idempotent for an identical definition) and
    /// returns its id once the registration is durable.
    pub fn register_class(&self, def: &ClassDef) -> Result<ClassId> {
        if let Some(problem) = def.problem() {
            return Err(Rejection::BadClass(problem).into());
        }
        let (id, lsn, ticket) = {
            let mut seq = lock(&self.inner.sequencer);
            self.inner.check_not_poisoned()?;
            if let Some(&existing) = seq.class_ids.get(&def.name) {
                let same = seq.class(existing).is_some_and(|known| **known == *def);
                if !same {
                    return Err(Rejection::ClassConflict {
                        name: def.name.clone(),
                        existing,
                    }
                    .into());
                }
                let submitted_end = seq.next_lsn;
                drop(seq);
                self.inner.wait_applied(submitted_end)?;
                return Ok(existing);
            }
            let id = ClassId(seq.classes.len() as u32 + 1);
            let record = StoreRecord::Class(id, def.clone());
            let payload = Bytes::from(record.encode());
            let (lsn, ticket) = self.inner.submit(&mut seq, record, payload)?;
            seq.classes.push(Arc::new(def.clone()));
            seq.class_ids.insert(def.name.clone(), id);
            (id, lsn, ticket)
        };
        self.inner.finish(lsn, ticket.wait())?;
        Ok(id)
    }

    /// The current (durable) state of an object, or `None` if it does not
    /// exist (never created, or deleted). A missing image is read from its
    /// data segment without holding the heap lock.
    pub fn get(&self, id: ObjectId) -> Result<Option<Snapshot>> {
        self.inner.get(id)
    }

    /// `get` in two steps, for callers that must not block on the disk:
    /// `Ready` if the cache or the object table answers at once (the
    /// object is cached, deleted or was never created), else the image to
    /// read (`ImageRead::finish`, which may block).
    pub fn get_or_read(&self, id: ObjectId) -> Result<Got> {
        self.inner.get_or_read(id)
    }

    pub fn root(&self, name: &str) -> Option<ObjectId> {
        lock(&self.inner.heap).roots.get(name).copied()
    }

    pub fn roots(&self) -> Vec<(String, ObjectId)> {
        lock(&self.inner.heap)
            .roots
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn class(&self, id: ClassId) -> Option<Arc<ClassDef>> {
        lock(&self.inner.heap).class(id).cloned()
    }

    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        let heap = lock(&self.inner.heap);
        heap.classes
            .iter()
            .position(|c| c.name == name)
            .map(|i| ClassId(i as u32 + 1))
    }

    pub fn classes(&self) -> Vec<Arc<ClassDef>> {
        lock(&self.inner.heap).classes.clone()
    }

    pub fn stats(&self) -> StoreStats {
        let maintenance_lsn = lock(&self.inner.maintenance).checkpoint_lsn;
        let heap = lock(&self.inner.heap);
        StoreStats {
            cache: heap.stats(),
            applied_lsn: heap.applied_end,
            checkpoint_lsn: maintenance_lsn,
            wal: self.inner.wal.stats(),
            data_segments: heap.files.segment_ids().len(),
            data_live_bytes: heap.live_bytes.values().sum(),
        }
    }

    /// Writes every dirty object to a data segment, flushes the object
    /// table, records the checkpoint LSN and drops the WAL below it.
    pub fn checkpoint(&self) -> Result<CheckpointReport> {
        self.inner.checkpoint()
    }

    /// Moves the live images out of data segments that are mostly dead and
    /// deletes those segments.
    pub fn clean(&self) -> Result<CleanReport> {
        self.inner.clean()
    }

    /// Deletes, durably, every object not reachable from the roots or from
    /// `held` (objects clients still hold). Stops commits while it marks.
    pub fn collect_garbage(&self, held: &[ObjectId]) -> Result<GcReport> {
        self.inner.collect_garbage(held)
    }

    /// Why the store stopped accepting changes, if it did: a failed WAL
    /// append (I/O error, full disk) or a damaged image found while
    /// applying. Reads go on; changes fail until the store is reopened,
    /// which replays exactly what is durable.
    pub fn failure(&self) -> Option<StoreError> {
        self.inner.poisoned.get().cloned()
    }

    /// Stops maintenance, checkpoints and closes: the next open replays
    /// nothing.
    pub fn close(mut self) -> Result<()> {
        self.stop_background();
        if self.inner.poisoned.get().is_none() {
            self.inner.checkpoint()?;
        }
        Ok(())
    }

    fn stop_background(&mut self) {
        *lock(&self.inner.stop) = true;
        self.inner.wake.notify_all();
        if let Some(thread) = self.background.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("open_report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// What `Store::get_or_read` found.
pub enum Got {
    Ready(Option<Snapshot>),
    Read(ImageRead),
}

/// An object whose image is not cached: `finish` reads and checks it
/// outside the heap lock (a disk read must not stall commits and other
/// readers), then caches it if the table still points at it; if the
/// object changed meanwhile, or the read failed (the image may have
/// moved), the lookup is made again under the lock, which reports a real
/// failure with its place.
pub struct ImageRead {
    id: ObjectId,
    to_read: ImageToRead,
    inner: Arc<Inner>,
}

impl ImageRead {
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Reads the image (blocking) and returns the object as `get` would.
    pub fn finish(self) -> Result<Option<Snapshot>> {
        let ImageRead { id, to_read, inner } = self;
        if let Ok(object) = to_read.read()
            && let Some(found) = lock(&inner.heap).install_read(to_read, object)?
        {
            return Ok(Some(found));
        }
        lock(&inner.heap).get(id)
    }
}

/// Table entries a checkpoint installs per turn on the heap lock.
const INSTALL_BATCH: usize = 1024;
/// Dirty objects a checkpoint takes per turn on the heap lock.
const SNAPSHOT_BATCH: usize = 4096;
/// How long a checkpoint leaves the heap lock between turns
/// (`let_waiters_in`).
const CHECKPOINT_TURN_PAUSE: Duration = Duration::from_micros(50);

impl Inner {
    fn get_or_read(self: &Arc<Self>, id: ObjectId) -> Result<Got> {
        Ok(match lock(&self.heap).lookup(id)? {
            Lookup::Answer(found) => Got::Ready(found),
            Lookup::Read(to_read) => Got::Read(ImageRead {
                id,
                to_read,
                inner: Arc::clone(self),
            }),
        })
    }

    /// `Store::get`.
    fn get(self: &Arc<Self>, id: ObjectId) -> Result<Option<Snapshot>> {
        match self.get_or_read(id)? {
            Got::Ready(found) => Ok(found),
            Got::Read(read) => read.finish(),
        }
    }

    fn check_not_poisoned(&self) -> Result<()> {
        match self.poisoned.get() {
            Some(cause) => Err(StoreError::Poisoned(Arc::new(cause.clone()))),
            None => Ok(()),
        }
    }

    fn poison(&self, cause: StoreError) -> StoreError {
        let first = self.poisoned.get_or_init(|| {
            tracing::error!(
                %cause,
                "the store stops accepting changes (reads go on); reopen it \
                 (restart tc-server) to recover: everything acknowledged is durable"
            );
            cause.clone()
        });
        StoreError::Poisoned(Arc::new(first.clone()))
    }

    /// Submits a record to the WAL in sequencer order; the caller holds the
    /// sequencer lock. Returns the record's LSN (known in advance).
    fn submit(
        &self,
        seq: &mut Sequencer,
        record: StoreRecord,
        payload: Bytes,
    ) -> Result<(Lsn, PendingAppend)> {
        self.submit_via(seq, record, payload, None)
    }

    /// `submit` through a reserved queue slot (never blocks) or, without
    /// one, waiting for room in the queue.
    fn submit_via(
        &self,
        seq: &mut Sequencer,
        record: StoreRecord,
        payload: Bytes,
        slot: Option<AppendSlot>,
    ) -> Result<(Lsn, PendingAppend)> {
        let lsn = seq.next_lsn;
        let end = Lsn(lsn.0 + tc_wal::format::frame_bytes(payload.len()));
        let ticket = match slot {
            Some(slot) => slot.submit(record.kind(), payload)?,
            None => self.wal.submit(record.kind(), payload)?,
        };
        seq.next_lsn = end;
        lock(&self.pending).push_back(Pending { lsn, end, record });
        Ok((lsn, ticket))
    }

    /// Once a submitted record is durable (`durable` is what the WAL said),
    /// applies everything durable up to and including it, unless another
    /// committer already did.
    fn finish(&self, lsn: Lsn, durable: tc_wal::Result<Lsn>) -> Result<Lsn> {
        match durable {
            Ok(durable) => assert_eq!(
                durable, lsn,
                "the WAL gave a record another LSN than the sequencer expected"
            ),
            Err(e) => return Err(self.poison(e.into())),
        }
        if self.applied_end.load(Ordering::Acquire) <= lsn.0 {
            self.apply_durable(Some(lsn))?;
        }
        Ok(lsn)
    }

    /// Applies, in LSN order, every submitted record that is durable.
    /// With `through`, that record must be among them. A record that cannot
    /// be applied (an image that turned unreadable since it was checked)
    /// poisons the store: the heap can no longer follow the WAL.
    fn apply_durable(&self, through: Option<Lsn>) -> Result<()> {
        let mut heap = lock(&self.heap);
        loop {
            self.check_not_poisoned()?;
            if through.is_some_and(|lsn| heap.applied_end > lsn) {
                return Ok(());
            }
            let durable = self.wal.durable_lsn();
            let next = {
                let mut pending = lock(&self.pending);
                match pending.front() {
                    Some(p) if p.end <= durable => pending.pop_front(),
                    _ => None,
                }
            };
            match next {
                Some(p) => match heap.apply(p.lsn, p.end, &p.record) {
                    Ok(()) => self.applied_end.store(p.end.0, Ordering::Release),
                    Err(ApplyError::Damaged(cause)) => return Err(self.poison(cause)),
                    Err(ApplyError::Mismatch(why)) => {
                        panic!("the checked record at lsn {} does not apply: {why}", p.lsn)
                    }
                },
                None => {
                    assert!(through.is_none(), "a durable record was not pending");
                    return Ok(());
                }
            }
        }
    }

    /// Waits until everything submitted before `end` is applied.
    fn wait_applied(&self, end: Lsn) -> Result<()> {
        // Every record below `end` was submitted, so once the WAL says they
        // are durable, applying what is durable applies them all.
        let durable = self.wal.wait_durable(end, Duration::from_secs(60));
        self.apply_durable(None)?;
        if durable < end || self.applied_end.load(Ordering::Acquire) < end.0 {
            self.check_not_poisoned()?;
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn list_len_from_heap(&self, id: ObjectId) -> u32 {
        match lock(&self.heap).get(id) {
            Ok(Some(s)) => s.object.len() as u32,
            // The sequencer saw the object exist; a read failure here is
            // damage the next read reports. Zero refuses index operations.
            _ => 0,
        }
    }

    fn checkpoint(&self) -> Result<CheckpointReport> {
        let mut m = lock(&self.maintenance);
        self.check_not_poisoned()?;
        self.apply_durable(None)?;
        let (lsn, dirty_ids, classes, roots, next_id) = {
            let heap = lock(&self.heap);
            let dirty = heap.dirty_ids();
            let classes: Vec<ClassDef> = heap.classes.iter().map(|c| (**c).clone()).collect();
            let roots: Vec<(String, ObjectId)> =
                heap.roots.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (heap.applied_end, dirty, classes, roots, heap.next_id)
        };
        // Taken a batch per turn on the heap lock, so commits interleave.
        // An object changed since `lsn` is taken with those changes too:
        // its image carries its version, and replay from `lsn` skips the
        // changes at or below it. Objects first changed after `lsn` are
        // not dirty in `dirty_ids` and need not be written.
        let mut dirty = Vec::with_capacity(dirty_ids.len());
        for batch in dirty_ids.chunks(SNAPSHOT_BATCH) {
            dirty.extend(lock(&self.heap).dirty_objects(batch));
            let_waiters_in();
        }
        // Encoded without the heap lock: commits and readers go on (an
        // object changed meanwhile is copied on write, once).
        dirty.sort_unstable_by_key(|d| d.id);
        let images: Vec<Vec<u8>> = dirty.iter().map(|d| d.object.to_bytes()).collect();
        let mut report = CheckpointReport {
            lsn,
            ..Default::default()
        };
        if images.is_empty() && lsn == m.checkpoint_lsn {
            return Ok(report);
        }
        let written = self.write_images(
            &mut m,
            dirty
                .iter()
                .zip(&images)
                .map(|(d, body)| (d.id, d.version, body.as_slice())),
        )?;
        // Installed a batch per turn on the heap lock: each entry points at
        // an fsynced image, so the others may interleave.
        let installs = dirty.iter().zip(written);
        for batch in installs.collect::<Vec<_>>().chunks(INSTALL_BATCH) {
            let mut heap = lock(&self.heap);
            for (d, (segment, offset, length)) in batch {
                let entry = TableEntry {
                    version: d.version,
                    segment: *segment,
                    offset: *offset,
                    length: *length,
                    class: d.object.class,
                    flags: 0,
                };
                heap.install(d.id, entry, None)?;
                report.image_bytes += u64::from(*length);
            }
            drop(heap);
            let_waiters_in();
        }
        drop(dirty);
        // Synced without the heap lock (commits go on meanwhile).
        let table_sync = lock(&self.heap).table.sync_handle();
        table_sync.flush()?;
        lock(&self.heap).evict_all_over_budget();
        report.images_written = images.len();
        Checkpoint {
            lsn,
            next_id,
            next_segment: m.next_segment,
            classes,
            roots,
        }
        .write(&self.dir)?;
        report.wal_segments_retired = self.wal.truncate_before(lsn)?;
        m.checkpoint_lsn = lsn;
        m.checkpoint_at = Instant::now();
        tracing::debug!(?report, "checkpoint");
        Ok(report)
    }

    /// Appends images to the current data segment (rolling to new ones as
    /// they fill) and fsyncs them. Returns (segment, offset, length) each.
    /// After a failure the next call starts a new segment (what was written
    /// is unreferenced; the cleaner deletes it).
    fn write_images<'a>(
        &self,
        m: &mut Maintenance,
        images: impl Iterator<Item = (ObjectId, Lsn, &'a [u8])>,
    ) -> Result<Vec<(u32, u32, u32)>> {
        let written = self.append_images(m, images);
        if written.is_err() {
            m.writer = None;
        }
        written
    }

    fn append_images<'a>(
        &self,
        m: &mut Maintenance,
        images: impl Iterator<Item = (ObjectId, Lsn, &'a [u8])>,
    ) -> Result<Vec<(u32, u32, u32)>> {
        let mut out = Vec::new();
        for (id, version, body) in images {
            let record_bytes = 24 + body.len() as u64;
            let full = m.writer.as_ref().is_some_and(|w| {
                w.len_bytes() > 32 && w.len_bytes() + record_bytes > self.config.data_segment_bytes
            });
            if full {
                let mut old = m.writer.take().expect("checked above");
                old.sync()?;
            }
            if m.writer.is_none() {
                let segment = m.next_segment;
                m.writer = Some(self.files.create_segment(segment)?);
                m.next_segment += 1;
            }
            let writer = m.writer.as_mut().expect("just ensured");
            let (offset, length) = writer.append(id, version, body)?;
            out.push((writer.segment_id(), offset, length));
        }
        if let Some(writer) = m.writer.as_mut() {
            writer.sync()?;
        }
        Ok(out)
    }

    fn clean(&self) -> Result<CleanReport> {
        let mut m = lock(&self.maintenance);
        self.check_not_poisoned()?;
        let active = m.writer.as_ref().map(|w| w.segment_id());
        let candidates: Vec<(u32, u64)> = {
            let heap = lock(&self.heap);
            let mut out = Vec::new();
            for segment in heap.files.segment_ids() {
                if Some(segment) == active {
                    continue;
                }
                let size = heap.files.file_len(segment)?.saturating_sub(32);
                let live = heap.live_bytes.get(&segment).copied().unwrap_or(0);
                if (live as f64) < self.config.cleaner_live_fraction * size as f64 || live == 0 {
                    out.push((segment, size));
                }
            }
            out
        };
        let mut report = CleanReport::default();
        for (segment, size) in candidates {
            // A torn tail is fine only if no live image lies in it: the
            // live images found must account for every live byte.
            let (scanned, _end) = self.files.scan_all(segment)?;
            // Which images the table still points at, and the live bytes
            // it counts here, in one hold (a delete changes both). The
            // scan, outside the lock, read and CRC-checked each image.
            let live: Vec<_> = {
                let heap = lock(&self.heap);
                let mut live = Vec::new();
                for image in scanned {
                    let here = heap.table.get(image.object)?.is_some_and(|e| {
                        e.flags & ENTRY_DELETED == 0
                            && e.segment == segment
                            && e.offset == image.offset
                    });
                    if here {
                        live.push(image);
                    }
                }
                let found: u64 = live.iter().map(|i| u64::from(i.record_bytes)).sum();
                let expected = heap.live_bytes.get(&segment).copied().unwrap_or(0);
                if found != expected {
                    return Err(StoreError::corrupt(
                        self.files.segment_path(segment),
                        None,
                        format!(
                            "the object table counts {expected} live bytes here but only {found} were found; not cleaning it"
                        ),
                    ));
                }
                live
            };
            let written = self.write_images(
                &mut m,
                live.iter()
                    .map(|i| (i.object, i.version, i.body.as_slice())),
            )?;
            // Installed a batch per turn on the heap lock, as a checkpoint
            // does; an entry that moved or was deleted meanwhile is left.
            let moves: Vec<_> = live.iter().zip(written).collect();
            for batch in moves.chunks(INSTALL_BATCH) {
                let mut heap = lock(&self.heap);
                for (image, (new_segment, offset, length)) in batch {
                    let class = heap
                        .table
                        .get(image.object)?
                        .map(|e| e.class)
                        .unwrap_or_default();
                    let entry = TableEntry {
                        version: image.version,
                        segment: *new_segment,
                        offset: *offset,
                        length: *length,
                        class,
                        flags: 0,
                    };
                    if heap.install(image.object, entry, Some((segment, image.offset)))? {
                        report.images_moved += 1;
                        report.bytes_moved += u64::from(*length);
                    }
                }
                drop(heap);
                let_waiters_in();
            }
            let table_sync = lock(&self.heap).table.sync_handle();
            table_sync.flush()?;
            lock(&self.heap).live_bytes.remove(&segment);
            self.files.delete(segment)?;
            report.segments_cleaned += 1;
            report.bytes_freed += size;
        }
        if report.segments_cleaned > 0 {
            tracing::debug!(?report, "cleaned data segments");
        }
        Ok(report)
    }

    fn collect_garbage(&self, held: &[ObjectId]) -> Result<GcReport> {
        let mut seq = lock(&self.sequencer);
        self.check_not_poisoned()?;
        // Everything submitted must be applied before marking.
        self.wait_applied(seq.next_lsn)?;
        let mut marked = vec![false; seq.class_of.len()];
        let mut stack: Vec<ObjectId> = Vec::new();
        let mut heap = lock(&self.heap);
        stack.extend(heap.roots.values().copied());
        stack.extend(
            held.iter()
                .copied()
                .filter(|id| seq.class_of(*id).is_some()),
        );
        let mut reachable = 0u64;
        while let Some(id) = stack.pop() {
            let Some(mark) = marked.get_mut(id.0 as usize) else {
                continue;
            };
            if *mark {
                continue;
            }
            *mark = true;
            reachable += 1;
            if let Some(snapshot) = heap.get(id)? {
                snapshot.object.references(&mut |to| stack.push(to));
            }
        }
        drop(heap);
        let dead: Vec<ObjectId> = (1..seq.class_of.len())
            .filter(|&i| !marked[i] && seq.class_of(ObjectId(i as u64)).is_some())
            .map(|i| ObjectId(i as u64))
            .collect();
        let mut tickets = Vec::new();
        for chunk in dead.chunks(65_536) {
            let record = StoreRecord::Delete(chunk.to_vec());
            let payload = Bytes::from(record.encode());
            tickets.push(self.submit(&mut seq, record, payload)?);
            for id in chunk {
                seq.set_class_of(*id, DELETED);
                seq.list_len.remove(id);
            }
        }
        drop(seq);
        for (lsn, ticket) in tickets {
            self.finish(lsn, ticket.wait())?;
        }
        Ok(GcReport {
            reachable,
            deleted: dead.len() as u64,
        })
    }

    /// Whether a checkpoint is due (size, age or a cache full of dirt).
    fn checkpoint_due(&self) -> bool {
        let (lsn, at) = {
            let m = lock(&self.maintenance);
            (m.checkpoint_lsn, m.checkpoint_at)
        };
        let written = self.wal.durable_lsn().0.saturating_sub(lsn.0);
        written >= self.config.checkpoint_wal_bytes
            || (written > 0 && at.elapsed() >= self.config.checkpoint_interval)
            || lock(&self.heap).needs_checkpoint()
    }
}

fn maintenance_loop(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        {
            let stop = lock(&inner.stop);
            if *stop {
                return;
            }
            let (stop, _) = inner
                .wake
                .wait_timeout(stop, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
        }
        if inner.poisoned.get().is_some() || !inner.checkpoint_due() {
            continue;
        }
        match inner.checkpoint() {
            Ok(_) => {
                if let Err(e) = inner.clean() {
                    tracing::error!(error = %e, "cleaner failed; it will retry");
                }
            }
            Err(e) => tracing::error!(error = %e, "checkpoint failed; it will retry"),
        }
    }
}

/// The checkpoint `found` in `dir`, checked against the WAL, or a fresh
/// one for a new data dir.
fn check_or_create_checkpoint(
    dir: &Path,
    wal: &Wal,
    found: Option<Checkpoint>,
) -> Result<Checkpoint> {
    let path = dir.join(crate::checkpoint::CHECKPOINT_FILE);
    let checkpoint = match found {
        Some(c) => c,
        None => {
            if wal.durable_lsn() > Lsn(0) || dir.join(TABLE_FILE_NAME).exists() {
                return Err(StoreError::corrupt(
                    path,
                    None,
                    "missing, but the data dir has a WAL or an object table",
                ));
            }
            let fresh = Checkpoint {
                lsn: Lsn(0),
                next_id: 1,
                next_segment: 1,
                classes: Vec::new(),
                roots: Vec::new(),
            };
            fresh.write(dir)?;
            fresh
        }
    };
    if checkpoint.lsn < wal.first_lsn() || checkpoint.lsn > wal.durable_lsn() {
        return Err(StoreError::corrupt(
            path,
            None,
            format!(
                "checkpoint lsn {} lies outside the WAL ({} to {})",
                checkpoint.lsn,
                wal.first_lsn(),
                wal.durable_lsn()
            ),
        ));
    }
    Ok(checkpoint)
}

/// Loads classes of existing objects and live bytes per segment from the
/// object table, checking that each entry's segment exists.
fn load_table(heap: &mut Heap, files: &DataFiles, class_of: &mut Vec<u32>) -> Result<()> {
    let segments: std::collections::HashSet<u32> = files.segment_ids().into_iter().collect();
    let mut entries = Vec::new();
    for (id, entry) in heap.table.iter() {
        entries.push((id, entry?));
    }
    for (id, entry) in entries {
        let index = id.0 as usize;
        if index >= class_of.len() {
            class_of.resize((index + 1).next_power_of_two(), 0);
        }
        if entry.flags & ENTRY_DELETED != 0 {
            class_of[index] = DELETED;
            continue;
        }
        if !segments.contains(&entry.segment) {
            return Err(StoreError::corrupt(
                heap.table.path(),
                Some(
                    crate::table::TABLE_HEADER_BYTES as u64
                        + id.0 * crate::table::TABLE_ENTRY_BYTES as u64,
                ),
                format!(
                    "entry of {id} points at data segment {}, which does not exist",
                    entry.segment
                ),
            ));
        }
        if heap.class(entry.class).is_none() {
            return Err(StoreError::corrupt(
                heap.table.path(),
                Some(
                    crate::table::TABLE_HEADER_BYTES as u64
                        + id.0 * crate::table::TABLE_ENTRY_BYTES as u64,
                ),
                format!("entry of {id} names unknown {}", entry.class),
            ));
        }
        class_of[index] = entry.class.0;
        *heap.live_bytes.entry(entry.segment).or_default() += u64::from(entry.length);
    }
    Ok(())
}

/// Between two turns of a checkpoint on the heap lock: lets the commits
/// waiting for it in. `std`'s `Mutex` lets the thread that releases it
/// take it straight back, so without a pause the commits waited for all
/// the turns (`write-amp` with ~160,000 dirty objects per checkpoint: the
/// longest commit 59–274 ms, with this 26–30 ms).
fn let_waiters_in() {
    std::thread::sleep(CHECKPOINT_TURN_PAUSE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dna::{Dna, LockRef};
    use crate::model::{FieldKind, ScalarKind, Value};

    fn set(id: ObjectId, seq: u64, value: i32, class: Option<ClassId>) -> Vec<u8> {
        let dna = match class {
            Some(class) => Dna::new_object(id, class),
            None => Dna::update(id),
        };
        Transaction {
            client: 1,
            seq,
            lock: LockRef::None,
            roots: Vec::new(),
            dnas: vec![dna.field(0, Value::Int(value))],
        }
        .encode()
    }

    fn evicted(store: &Store, id: ObjectId) -> bool {
        let mut heap = lock(&store.inner.heap);
        heap.evict_all_over_budget();
        heap.evict_all_over_budget();
        !heap.is_cached(id)
    }

    /// The race `ImageRead::finish` guards against, made to happen: an image read
    /// outside the lock is superseded (a commit, a checkpoint writing the
    /// newer image, an eviction) before it is installed. It must not be
    /// cached; the next read sees the newer state.
    #[test]
    fn an_image_read_outside_the_lock_is_not_cached_once_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            background_maintenance: false,
            cache_bytes: 1,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        let class = store
            .register_class(&ClassDef::plain(
                "demo.Counter",
                &[("n", FieldKind::Scalar(ScalarKind::Int))],
            ))
            .unwrap();
        let id = ObjectId(store.allocate_ids(1).unwrap().start);
        store.commit(set(id, 1, 1, Some(class))).unwrap();
        store.checkpoint().unwrap();
        assert!(evicted(&store, id));
        let Lookup::Read(to_read) = lock(&store.inner.heap).lookup(id).unwrap() else {
            panic!("an evicted object must be read from its segment");
        };
        let old = to_read.read().unwrap();
        store.commit(set(id, 2, 2, None)).unwrap();
        store.checkpoint().unwrap();
        assert!(evicted(&store, id));
        let installed = lock(&store.inner.heap).install_read(to_read, old).unwrap();
        assert!(installed.is_none(), "a superseded image was cached");
        let now = store.get(id).unwrap().unwrap();
        assert_eq!(now.object.field(0), Some(&Value::Int(2)));
    }
}
