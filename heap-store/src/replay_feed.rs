//! Replay's shared reading: the WAL from the checkpoint on, read, checked
//! and indexed once for all the replay shards, in batches that every
//! shard takes in LSN order.
//!
//! Owns: the WAL reader during replay, and the batches read that not every
//! shard has taken yet.
//! Invariants:
//! - One shard at a time reads (it holds the reader, taken out of the
//!   shared state while it reads and indexes a batch, in LSN order). A
//!   shard about to take a batch first reads the next ones not read yet,
//!   up to `READ_AHEAD`, if nobody is reading: reading is shared among
//!   the shards as they come, and a batch is usually read before a shard
//!   wants it.
//! - Every shard takes every batch, in order. At most `BATCHES_AHEAD_MAX`
//!   batches are kept (about 128 KiB of records each, plus their index);
//!   a batch is dropped once every shard has taken it, and kept for reuse
//!   (up to `SPARE_BATCHES_MAX`).
//! - A transaction record's index holds its header's roots, and every
//!   DNA's start and place (`IndexedDna`) is in the list of the shard that
//!   owns its object, in order: each shard goes through its own DNAs
//!   only. All of it is read by `TransactionReader` exactly as a shard
//!   reading the record alone would; a record whose walk fails has no
//!   index (and none of its DNAs is listed), and each shard then reads it
//!   alone, which reports the failure as before (`Shard::transaction`).
//! - The reader's error, if it fails, is handed to the first shard that
//!   gets past the last batch; the others end there without one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::dna::{DnaPlace, DnaStart, TransactionReader};
use crate::model::ObjectId;
use crate::records::KIND_TRANSACTION;
use crate::replay::Shards;
use bytes::Bytes;
use tc_wal::{Lsn, WalError, WalReader};

/// WAL bytes a batch holds at least (unless the WAL ends first).
const BATCH_BYTES: u64 = 128 << 10;

/// Batches kept at most: read, and not yet taken by every shard.
const BATCHES_AHEAD_MAX: usize = 16;

/// Batches taken by every shard kept for reuse, at most.
const SPARE_BATCHES_MAX: usize = 4;

/// A shard about to take batch `n` first reads batches up to `n +
/// READ_AHEAD` that nobody has read yet (if nobody is reading).
const READ_AHEAD: usize = 4;

/// How long a shard with nothing to do spins before it sleeps (`Feed::wait`).
const SPIN_MAX: Duration = Duration::from_micros(500);

/// A DNA of an indexed transaction: its start and where its body is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IndexedDna {
    pub start: DnaStart,
    pub place: DnaPlace,
    /// The transaction's place in its batch's `records`.
    record: u32,
}

/// Records read and checked, with their transactions indexed. A batch
/// every shard has taken is kept for reuse (`FeedState::spare`), as the
/// reader keeps the chunks its payloads are slices of: reading then
/// allocates nothing, and no shard frees what another allocated
/// (measured: with batches freed on whichever thread took them last, and
/// each chunk a new allocation, some opens spent 40 % more CPU and slept
/// ten times as often).
#[derive(Default)]
pub(crate) struct Batch {
    pub records: Vec<BatchRecord>,
    /// Per shard, the DNAs of the batch's indexed transactions whose
    /// objects it owns, in order (with one list of every DNA, which each
    /// shard filtered, the loop over it took 11 % of a shard's samples;
    /// 7 % with lists per shard).
    dnas: Vec<Vec<IndexedDna>>,
}

pub(crate) struct BatchRecord {
    pub lsn: Lsn,
    /// The next record's LSN.
    pub end: Lsn,
    pub kind: u8,
    /// A slice of the reader's chunk (which it reuses once no batch holds
    /// a payload of it, `WalReader`).
    pub payload: Bytes,
    /// For a transaction record that decodes: its roots and DNAs.
    pub index: Option<TransactionIndex>,
}

pub(crate) struct TransactionIndex {
    pub roots: Vec<(String, ObjectId)>,
}

/// A record of a batch as shard `shard` takes it: with its index and the
/// shard's own DNAs of it, if it is an indexed transaction.
pub(crate) type ShardRecord<'b> = (
    &'b BatchRecord,
    Option<(&'b TransactionIndex, &'b [IndexedDna])>,
);

impl Batch {
    /// The batch's records, each with shard `shard`'s DNAs of it.
    pub fn records_for(&self, shard: usize) -> impl Iterator<Item = ShardRecord<'_>> {
        let mut dnas = self.dnas.get(shard).map_or(&[][..], Vec::as_slice);
        self.records
            .iter()
            .enumerate()
            .map(move |(number, record)| {
                let index = record.index.as_ref().map(|index| {
                    let count = dnas
                        .iter()
                        .take_while(|dna| dna.record as usize == number)
                        .count();
                    let (of_record, rest) = dnas.split_at(count);
                    dnas = rest;
                    (index, of_record)
                });
                (record, index)
            })
    }

    fn clear(&mut self) {
        self.records.clear();
        self.dnas.iter_mut().for_each(Vec::clear);
    }
}

/// What a shard gets from the feed next.
pub(crate) enum Next {
    Batch(Arc<Batch>),
    /// The WAL ends here.
    End,
    /// Reading failed at this LSN (given to one shard only).
    Failed(Lsn, WalError),
}

pub(crate) struct Feed {
    state: Mutex<FeedState>,
    /// Signalled when a batch is added, a batch is dropped, or reading
    /// stops.
    changed: Condvar,
    /// Counts those changes, for a shard spinning on them (`wait`).
    changes: AtomicU64,
}

struct FeedState {
    /// `None` while a shard reads with it.
    reader: Option<WalReader>,
    /// Batches `first..first + batches.len()`.
    batches: VecDeque<Arc<Batch>>,
    first: usize,
    /// Per shard, the number of the next batch it takes.
    next: Vec<usize>,
    /// Set when the reader found the end of the WAL or failed.
    ended: bool,
    failure: Option<(Lsn, WalError)>,
    /// Shards in `Feed::wait`.
    waiting: usize,
    /// Batches every shard has taken, emptied, for reading into.
    spare: Vec<Batch>,
    shards: Shards,
}

impl FeedState {
    fn read_count(&self) -> usize {
        self.first + self.batches.len()
    }

    /// Whether one more batch may be read now.
    fn may_read(&self) -> bool {
        self.reader.is_some() && !self.ended && self.batches.len() < BATCHES_AHEAD_MAX
    }

    /// Drops the batches every shard has taken.
    fn drop_taken(&mut self) -> bool {
        let slowest = self.next.iter().copied().min().unwrap_or(0);
        let mut dropped = false;
        while self.first < slowest
            && let Some(batch) = self.batches.pop_front()
        {
            self.first += 1;
            dropped = true;
            // Not unique if a shard that left still holds it.
            if let Ok(mut batch) = Arc::try_unwrap(batch)
                && self.spare.len() < SPARE_BATCHES_MAX
            {
                batch.clear();
                self.spare.push(batch);
            }
        }
        dropped
    }
}

impl Feed {
    pub fn new(reader: WalReader, shards: Shards) -> Feed {
        Feed {
            state: Mutex::new(FeedState {
                reader: Some(reader),
                batches: VecDeque::new(),
                first: 0,
                next: vec![0; shards.count() as usize],
                ended: false,
                failure: None,
                waiting: 0,
                spare: Vec::new(),
                shards,
            }),
            changed: Condvar::new(),
            changes: AtomicU64::new(0),
        }
    }

    /// Shard `shard`'s next batch: one read already, or one this shard
    /// reads now, or one another shard is reading (waited for). Before
    /// taking batch `n` the shard reads those up to `n + READ_AHEAD` not
    /// read yet, if nobody is reading, so a batch is usually there before
    /// it is wanted.
    pub fn next(&self, shard: usize) -> Next {
        let mut state = self.lock();
        loop {
            let wanted = state.next[shard];
            if state.may_read() && wanted + READ_AHEAD >= state.read_count() {
                state = self.read_batch(state);
                continue;
            }
            if wanted < state.read_count() {
                let batch = Arc::clone(&state.batches[wanted - state.first]);
                state.next[shard] += 1;
                if state.drop_taken() {
                    self.announce();
                }
                return Next::Batch(batch);
            }
            if state.ended {
                return match state.failure.take() {
                    Some((lsn, error)) => Next::Failed(lsn, error),
                    None => Next::End,
                };
            }
            state = self.wait(state);
        }
    }

    /// Waits for a change to the state: first spinning for up to
    /// `SPIN_MAX` with the lock released, then asleep. The change awaited
    /// is usually a batch another shard is reading, which takes a tenth
    /// of a millisecond; falling asleep for it costs more (the kernel may
    /// wake this thread on the other shard's CPU and leave the two sharing
    /// it for a while).
    fn wait<'s>(&'s self, mut state: MutexGuard<'s, FeedState>) -> MutexGuard<'s, FeedState> {
        state.waiting += 1;
        let seen = self.changes.load(Ordering::Acquire);
        drop(state);
        let started = Instant::now();
        let mut spins = 0u32;
        while self.changes.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(128) && started.elapsed() > SPIN_MAX {
                break;
            }
        }
        let mut state = self.lock();
        if self.changes.load(Ordering::Acquire) == seen {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.waiting -= 1;
        state
    }

    /// Tells waiting shards the state changed (called with the lock held).
    fn announce(&self) {
        self.changes.fetch_add(1, Ordering::Release);
        self.changed.notify_all();
    }

    /// Reads one batch with the lock released, then adds it.
    fn read_batch<'s>(&'s self, mut state: MutexGuard<'s, FeedState>) -> MutexGuard<'s, FeedState> {
        let mut reader = state.reader.take().expect("may_read: the reader is there");
        let mut batch = state.spare.pop().unwrap_or_default();
        let shards = state.shards;
        drop(state);
        let end = read_batch(&mut reader, shards, &mut batch);
        let mut state = self.lock();
        state.reader = Some(reader);
        if !batch.records.is_empty() {
            state.batches.push_back(Arc::new(batch));
        }
        if let Some(failure) = end {
            state.ended = true;
            state.failure = failure;
        }
        self.announce();
        state
    }

    /// Takes shard `shard` out of the feed when the guard is dropped
    /// (however the shard stops), so the others no longer keep batches
    /// for it, nor wait for it to take them.
    pub fn leave_on_drop(&self, shard: usize) -> Leaving<'_> {
        Leaving { feed: self, shard }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads records into `batch` (empty) up to `BATCH_BYTES` and indexes
/// their transactions. Returns `Some` if reading ended: with the reader's
/// error, if it failed.
fn read_batch(
    reader: &mut WalReader,
    shards: Shards,
    batch: &mut Batch,
) -> Option<Option<(Lsn, WalError)>> {
    batch.dnas.resize_with(shards.count() as usize, Vec::new);
    let mut bytes = 0;
    while bytes < BATCH_BYTES {
        let at = reader.position();
        let record = match reader.try_next() {
            Ok(Some(record)) => record,
            Ok(None) => return Some(None),
            Err(e) => return Some(Some((at, e))),
        };
        let end = record.end_lsn();
        bytes += end.0 - record.lsn.0;
        let number = batch.records.len() as u32;
        let index = (record.kind == KIND_TRANSACTION)
            .then(|| index_transaction(&record.payload, number, shards, &mut batch.dnas))
            .flatten();
        batch.records.push(BatchRecord {
            lsn: record.lsn,
            end,
            kind: record.kind,
            payload: record.payload,
            index,
        });
    }
    None
}

/// Walks the transaction `bytes`, record `record` of its batch: its
/// roots, and each DNA's start and place added to the list of its
/// object's shard in `dnas`. `None` (and `dnas` as they were) if any of it
/// fails to decode.
fn index_transaction(
    bytes: &[u8],
    record: u32,
    shards: Shards,
    dnas: &mut [Vec<IndexedDna>],
) -> Option<TransactionIndex> {
    let walked = (|| {
        let (header, mut reader) = TransactionReader::new(bytes).ok()?;
        while let Some(start) = reader.next_dna().ok()? {
            let place = reader.dna_place();
            let owner = shards.owner(start.object) as usize;
            dnas[owner].push(IndexedDna {
                start,
                place,
                record,
            });
            reader.skip_rest_of_dna().ok()?;
        }
        Some(header.roots)
    })();
    match walked {
        Some(roots) => Some(TransactionIndex { roots }),
        None => {
            for list in dnas {
                while list.last().is_some_and(|dna| dna.record == record) {
                    list.pop();
                }
            }
            None
        }
    }
}

/// See `Feed::leave_on_drop`.
pub(crate) struct Leaving<'f> {
    feed: &'f Feed,
    shard: usize,
}

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        let mut state = self.feed.lock();
        state.next[self.shard] = usize::MAX;
        state.drop_taken();
        self.feed.announce();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use tc_wal::{Wal, WalConfig};

    impl Feed {
        /// Batches held now.
        fn held(&self) -> usize {
            self.lock().batches.len()
        }

        fn waiting(&self) -> usize {
            self.lock().waiting
        }
    }

    /// Every record's number, as a shard of the feed takes them; checks
    /// that the feed holds no more batches than allowed after each.
    fn take_all(feed: &Feed, shard: usize) -> Vec<u64> {
        let _leaving = feed.leave_on_drop(shard);
        let mut taken = Vec::new();
        loop {
            match feed.next(shard) {
                Next::Batch(batch) => {
                    taken.extend(batch.records.iter().map(|r| {
                        let number = r.payload.first_chunk::<8>().expect("8 bytes");
                        u64::from_le_bytes(*number)
                    }));
                    assert!(feed.held() <= BATCHES_AHEAD_MAX, "{} held", feed.held());
                }
                Next::End => return taken,
                Next::Failed(lsn, e) => panic!("reading failed at {lsn}: {e}"),
            }
        }
    }

    /// Two shards, one of which takes nothing until the other waits: the
    /// feed then holds `BATCHES_AHEAD_MAX` batches and never more; once
    /// the other starts, both take every record, in order, across WAL
    /// segments, and every batch is dropped.
    #[test]
    fn every_shard_takes_every_record_in_order_and_no_more_batches_are_held_than_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let config = WalConfig {
            segment_bytes: 1 << 20,
            max_record_bytes: 4 << 10,
            ..WalConfig::default()
        };
        let wal = Wal::open(dir.path(), config).unwrap();
        let record_bytes = 1000u64;
        let count = (BATCHES_AHEAD_MAX as u64 + 8) * BATCH_BYTES / record_bytes;
        let payload = |number: u64| {
            let mut payload = number.to_le_bytes().to_vec();
            payload.resize(record_bytes as usize, 0xab);
            payload
        };
        let first = wal.append(7, payload(0)).unwrap();
        let pending: Vec<_> = (1..count)
            .map(|number| wal.submit(7, payload(number)).unwrap())
            .collect();
        pending.into_iter().for_each(|p| {
            p.wait().unwrap();
        });
        let feed = Feed::new(wal.reader(first).unwrap(), Shards::new(2));
        let everything: Vec<u64> = (0..count).collect();
        std::thread::scope(|scope| {
            let ahead = scope.spawn(|| take_all(&feed, 0));
            let deadline = Instant::now() + Duration::from_secs(60);
            // The shard ahead waits for the other to take a batch, or ran
            // past the batches allowed (and panicked) or to the end.
            while feed.waiting() == 0 && !ahead.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "the shard ahead neither waits nor ends"
                );
                std::thread::yield_now();
            }
            assert!(!ahead.is_finished(), "a shard ran past the batches allowed");
            assert_eq!(feed.held(), BATCHES_AHEAD_MAX);
            assert_eq!(take_all(&feed, 1), everything);
            assert_eq!(ahead.join().unwrap(), everything);
        });
        assert_eq!(feed.held(), 0, "every batch taken by both is dropped");
    }
}
