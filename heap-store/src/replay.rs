//! Recovery's replay: the WAL from the checkpoint on, applied to the heap
//! by shards of the objects working in parallel, one thread each.
//!
//! Owns: splitting the objects among the replay threads (object `id`
//! belongs to shard `id % shards`, `Shards`), each shard's pass over the
//! records, and folding their results into the heap.
//! Not: what a record does to an object (`heap.rs`); reading the WAL once
//! for several shards (`replay_feed.rs`).
//! Invariants:
//! - Every shard takes every record in LSN order and applies exactly the
//!   changes to its own objects, so each object gets its changes in LSN
//!   order, as in a serial replay. A lone shard reads the WAL itself;
//!   several share one reader (`replay_feed`), which checks each record's
//!   frame and walks each transaction's header and DNA starts once for
//!   all. Every shard checks every record's class registrations; it
//!   decodes only its own DNAs' bodies, so a DNA whose body does not
//!   decode or fit fails in the shard that owns its object. A transaction
//!   whose walk fails is read whole by every shard, as a lone shard reads
//!   it (format v2 passes over the other shards' DNAs by their length).
//! - A shard writes only its own cache and lists. Tombstones go into the
//!   object table after every shard has finished; until then a shard's
//!   own deletes answer `find` (`HeapView::deleted`).
//! - Roots and id blocks are taken from shard 0, class registrations from
//!   shard 0's copy (every shard keeps one, to check changes against).
//! - The failure reported is the first in LSN order (the one a serial
//!   replay would report): a shard stops early only at a record past a
//!   failure already found.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::Cache;
use crate::datafile::DataFiles;
use crate::error::{Result, StoreError};
use crate::heap::{ApplyError, Heap, HeapView, register_class};
use crate::model::{ClassDef, ClassId, ObjectId};
use crate::records::{KIND_TRANSACTION, StoreRecord};
use crate::replay_feed::{Feed, IndexedDna, Next, TransactionIndex};
use crate::sequencer::DELETED;
use crate::table::ObjectTable;
use tc_wal::{Lsn, Wal};

/// Replay threads at most, whatever the CPU count.
pub const REPLAY_THREADS_MAX: usize = 8;

/// What a replay read.
pub(crate) struct Replayed {
    pub records: u64,
    pub bytes: u64,
}

/// Applies every record from `from` to the end of the WAL to `heap`
/// (whose cache is empty) with `threads` shards, and records in
/// `class_of` the class of each object created and the deletion of each
/// object deleted.
pub(crate) fn replay(
    wal: &Wal,
    heap: &mut Heap,
    class_of: &mut Vec<u32>,
    from: Lsn,
    threads: usize,
) -> Result<Replayed> {
    assert!(heap.cache.is_empty(), "replay starts with an empty cache");
    let shards = Shards::new(threads.clamp(1, REPLAY_THREADS_MAX) as u64);
    let shard_budget = heap.cache.budget_bytes() / shards.count() as usize;
    let first_failure = AtomicU64::new(u64::MAX);
    // One shard reads alone; several share the reading (`replay_feed`).
    let feed = match shards.count() {
        1 => None,
        _ => Some(Feed::new(wal.reader(from)?, shards)),
    };
    let source = Source {
        wal,
        feed: feed.as_ref(),
        table: &heap.table,
        files: &heap.files,
        first_failure: &first_failure,
    };
    let new_shard = |index| Shard::new(index, shards, from, heap.classes.clone(), shard_budget);
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..shards.count())
            .map(|index| {
                let mut shard = new_shard(index);
                let spawned = std::thread::Builder::new()
                    .name(format!("tc-replay-{index}"))
                    .spawn_scoped(scope, move || {
                        let result = shard.run(&source);
                        (shard, result)
                    });
                spawned.map_err(|e| StoreError::io("start a replay thread for", wal.dir(), e))
            })
            .collect();
        let mut first = new_shard(0);
        let result = first.run(&source);
        let mut outcomes = vec![Ok((first, result))];
        outcomes.extend(others.into_iter().map(|spawned| {
            let handle = spawned?;
            Ok(handle.join().expect("a replay thread panicked"))
        }));
        outcomes
    });
    let mut shards = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::new();
    for outcome in outcomes {
        let (shard, result) = outcome?;
        if let Err(failure) = result {
            failures.push(failure);
        }
        shards.push(shard);
    }
    // Shard order breaks ties, so the same error is reported every time.
    if let Some(failure) = failures.into_iter().min_by_key(|f| f.lsn) {
        return Err(failure.error);
    }
    fold_into(heap, class_of, shards)
}

/// Adds the shards' results to the heap: shard 0's catalog, every
/// shard's cache, deletes and classes of created objects.
fn fold_into(heap: &mut Heap, class_of: &mut Vec<u32>, shards: Vec<Shard>) -> Result<Replayed> {
    let first = &shards[0];
    let replayed = Replayed {
        records: first.records,
        bytes: first.bytes,
    };
    heap.applied_end = first.end;
    heap.classes.clone_from(&first.classes);
    heap.next_id = heap.next_id.max(first.next_id);
    for (name, id) in &first.roots {
        heap.roots.entry(name.clone()).or_insert(*id);
    }
    for shard in shards {
        debug_assert_eq!(
            shard.end, heap.applied_end,
            "shards replay the same records"
        );
        heap.cache.absorb(shard.cache);
        for (id, class, replace) in shard.classes_of {
            set_class_of(class_of, id, class, replace);
        }
        for (id, lsn) in shard.deletes {
            heap.delete(id, lsn)?;
        }
    }
    heap.cache.evict_over_budget();
    Ok(replayed)
}

/// How object ids are split among `count` replay shards: id `i` belongs
/// to shard `i % count` and is that shard's `i / count`-th id (its slot in
/// the shard's cache, `Cache::for_shard`). With `count` a power of two, as
/// thread counts usually are, both are a mask and a shift instead of a
/// division (measured: 3 % of a two-shard replay, which divides twice for
/// a DNA of its own and once for another's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shards {
    count: u64,
    /// `log2(count)`, if `count` is a power of two.
    shift: Option<u32>,
}

impl Shards {
    pub fn new(count: u64) -> Shards {
        assert!(count > 0, "at least one shard");
        Shards {
            count,
            shift: count.is_power_of_two().then(|| count.trailing_zeros()),
        }
    }

    pub fn count(self) -> u64 {
        self.count
    }

    /// The shard that owns `id`.
    #[inline]
    pub fn owner(self, id: ObjectId) -> u64 {
        match self.shift {
            Some(_) => id.0 & (self.count - 1),
            None => id.0 % self.count,
        }
    }

    /// Which of its shard's ids `id` is: the ids of shard `k` are `k`,
    /// `k + count`, `k + 2 * count`, ... and have ranks 0, 1, 2, ...
    #[inline]
    pub fn rank(self, id: ObjectId) -> u64 {
        match self.shift {
            Some(shift) => id.0 >> shift,
            None => id.0 / self.count,
        }
    }
}

fn set_class_of(class_of: &mut Vec<u32>, id: ObjectId, class: u32, replace: bool) {
    let index = id.0 as usize;
    if index >= class_of.len() {
        class_of.resize((index + 1).next_power_of_two(), 0);
    }
    if replace || class_of[index] == 0 {
        class_of[index] = class;
    }
}

/// What every shard reads.
#[derive(Clone, Copy)]
struct Source<'a> {
    wal: &'a Wal,
    /// With several shards, the records read once for all of them.
    feed: Option<&'a Feed>,
    table: &'a ObjectTable,
    files: &'a DataFiles,
    /// LSN of the first failing record any shard found (`u64::MAX`: none).
    first_failure: &'a AtomicU64,
}

impl Source<'_> {
    /// Records a failure at `lsn`, so that every shard stops past it.
    fn fail(&self, lsn: Lsn, error: StoreError) -> Failure {
        self.first_failure.fetch_min(lsn.0, Ordering::Relaxed);
        Failure { lsn, error }
    }
}

type Outcome = Result<(Shard, std::result::Result<(), Failure>)>;

/// A record as a shard takes it, from its own reader or from a batch.
struct Taken<'a> {
    lsn: Lsn,
    /// The next record's LSN.
    end: Lsn,
    kind: u8,
    payload: &'a [u8],
}

/// Why a shard stopped, at which record.
struct Failure {
    lsn: Lsn,
    error: StoreError,
}

/// One replay thread's objects and what it found.
struct Shard {
    index: u64,
    shards: Shards,
    cache: Cache,
    classes: Vec<Arc<ClassDef>>,
    /// Deletes of its objects, in LSN order (for the table, afterwards),
    /// and the last of each object (for `find` meanwhile).
    deletes: Vec<(ObjectId, Lsn)>,
    deleted: foldhash::HashMap<ObjectId, Lsn>,
    /// For the sequencer: (object, class or `DELETED`, whether it replaces
    /// a class already known), in LSN order.
    classes_of: Vec<(ObjectId, u32, bool)>,
    /// Roots named by transactions, in LSN order (shard 0 only).
    roots: Vec<(String, ObjectId)>,
    next_id: u64,
    records: u64,
    bytes: u64,
    /// End of the last record read.
    end: Lsn,
}

impl Shard {
    fn new(
        index: u64,
        shards: Shards,
        from: Lsn,
        classes: Vec<Arc<ClassDef>>,
        budget: usize,
    ) -> Shard {
        Shard {
            index,
            shards,
            cache: Cache::for_shard(budget, shards),
            classes,
            deletes: Vec::new(),
            deleted: foldhash::HashMap::default(),
            classes_of: Vec::new(),
            roots: Vec::new(),
            next_id: 0,
            records: 0,
            bytes: 0,
            end: from,
        }
    }

    fn owns(&self, id: ObjectId) -> bool {
        self.shards.owner(id) == self.index
    }

    fn run(&mut self, source: &Source<'_>) -> std::result::Result<(), Failure> {
        match source.feed {
            Some(feed) => self.run_fed(source, feed),
            None => self.run_alone(source),
        }
    }

    /// Reads the WAL with its own reader.
    fn run_alone(&mut self, source: &Source<'_>) -> std::result::Result<(), Failure> {
        let mut reader = source
            .wal
            .reader(self.end)
            .map_err(|e| source.fail(self.end, e.into()))?;
        loop {
            match reader.try_next() {
                Ok(Some(record)) => {
                    let taken = Taken {
                        lsn: record.lsn,
                        end: record.end_lsn(),
                        kind: record.kind,
                        payload: &record.payload,
                    };
                    if !self.take(source, taken, None)? {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(source.fail(self.end, e.into())),
            }
        }
    }

    /// Takes the records the feed read.
    fn run_fed(&mut self, source: &Source<'_>, feed: &Feed) -> std::result::Result<(), Failure> {
        let shard = self.index as usize;
        let _leaving = feed.leave_on_drop(shard);
        loop {
            match feed.next(shard) {
                Next::Batch(batch) => {
                    for (record, index) in batch.records_for(shard) {
                        let taken = Taken {
                            lsn: record.lsn,
                            end: record.end,
                            kind: record.kind,
                            payload: &record.payload,
                        };
                        if !self.take(source, taken, index)? {
                            return Ok(());
                        }
                    }
                }
                Next::End => return Ok(()),
                Next::Failed(lsn, e) => return Err(source.fail(lsn, e.into())),
            }
        }
    }

    /// Applies `record` (with its index, if the feed made one); false if
    /// the replay stops before it (a shard failed at an earlier record).
    fn take(
        &mut self,
        source: &Source<'_>,
        record: Taken<'_>,
        index: Option<(&TransactionIndex, &[IndexedDna])>,
    ) -> std::result::Result<bool, Failure> {
        let (lsn, end) = (record.lsn, record.end);
        if lsn.0 > source.first_failure.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let applied = match record.kind {
            KIND_TRANSACTION => self.transaction(source, lsn, record.payload, index),
            kind => match StoreRecord::decode(kind, record.payload) {
                Ok(decoded) => self.other(source, lsn, decoded),
                Err(e) => Err(ApplyError::Mismatch(e.to_string())),
            },
        };
        if let Err(e) = applied {
            let error = match e {
                ApplyError::Damaged(cause) => cause,
                ApplyError::Mismatch(why) => StoreError::corrupt(
                    source.wal.dir(),
                    None,
                    format!("WAL record at lsn {lsn}: {why}"),
                ),
            };
            return Err(source.fail(lsn, error));
        }
        self.records += 1;
        self.bytes += end.0 - lsn.0;
        self.end = end;
        self.cache.evict_over_budget();
        Ok(true)
    }

    /// Applies a transaction record's changes to this shard's objects:
    /// with `index` (the feed's walk of it, and this shard's DNAs of it),
    /// only those DNAs' bodies are read.
    fn transaction(
        &mut self,
        source: &Source<'_>,
        lsn: Lsn,
        payload: &[u8],
        index: Option<(&TransactionIndex, &[IndexedDna])>,
    ) -> std::result::Result<(), ApplyError> {
        let view = HeapView {
            classes: &self.classes,
            table: source.table,
            files: source.files,
            deleted: Some(&self.deleted),
        };
        let (shard, shards) = (self.index, self.shards);
        let mine = |id| shards.owner(id) == shard;
        let classes_of = &mut self.classes_of;
        let created = |id, class: ClassId| classes_of.push((id, class.0, false));
        let cache = &mut self.cache;
        match index {
            Some((index, dnas)) => {
                view.replay_indexed(cache, lsn, payload, dnas, created)?;
                if shard == 0 {
                    self.roots.extend(index.roots.iter().cloned());
                }
            }
            None => {
                let header = view.replay_transaction(cache, lsn, payload, mine, created)?;
                if shard == 0 {
                    self.roots.extend(header.roots);
                }
            }
        }
        Ok(())
    }

    fn other(
        &mut self,
        source: &Source<'_>,
        lsn: Lsn,
        record: StoreRecord,
    ) -> std::result::Result<(), ApplyError> {
        match record {
            StoreRecord::Transaction(_) => {
                unreachable!("transaction records are replayed as they are decoded")
            }
            StoreRecord::Class(id, def) => register_class(&mut self.classes, id, &def)?,
            StoreRecord::IdBlock { end, .. } => self.next_id = self.next_id.max(end.0),
            StoreRecord::Delete(ids) => {
                for id in ids {
                    if self.owns(id) {
                        self.delete(source, id, lsn)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `Heap::delete` with the table write put off (see `fold_into`).
    fn delete(
        &mut self,
        source: &Source<'_>,
        id: ObjectId,
        lsn: Lsn,
    ) -> std::result::Result<(), ApplyError> {
        self.classes_of.push((id, DELETED, true));
        // The version `Heap::delete` would find in the table by now.
        let version = match self.deleted.get(&id) {
            Some(&deleted_at) => Some(deleted_at),
            None => source
                .table
                .get(id)
                .map_err(ApplyError::Damaged)?
                .map(|e| e.version),
        };
        if version.is_some_and(|v| v >= lsn) {
            return Ok(());
        }
        self.deletes.push((id, lsn));
        self.deleted.insert(id, lsn);
        self.cache.remove(id);
        Ok(())
    }
}
