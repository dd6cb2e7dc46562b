//! The heap: objects as of the last *applied* (durable) record, as a
//! bounded cache (`cache.rs`) over the data segments, located through the
//! object table.
//!
//! Owns: applying store records in LSN order (live and in recovery),
//! checking each change against its object's class, faulting objects in
//! from data segments, the applied catalog (classes, roots, id high-water
//! mark) and live bytes per data segment.
//! Not: deciding what may be appended (`sequencer.rs`), writing segments
//! and checkpoints (`store.rs`), reading the WAL in recovery
//! (`replay.rs`).
//! Invariants: a cached object is dirty iff it has changes that are not in
//! the image its table entry points at; a table entry points only at an
//! image that is already fsynced; a change at LSN `l` is applied to an
//! object only if `l` is newer than the object's version (which makes
//! replay exactly-once).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::cache::{Cache, CacheStats, DirtyObject, Snapshot, op_bytes_delta, value_bytes};
use crate::codec::DecodeError;
use crate::datafile::DataFiles;
use crate::dna::{DnaReader, DnaStart, Transaction, TransactionHeader, TransactionReader};
use crate::error::{Result, StoreError};
use crate::model::{ClassDef, ClassId, FieldDef, LogicalOp, Object, ObjectId, Value};
use crate::records::StoreRecord;
use crate::replay_feed::IndexedDna;
use crate::table::{ObjectTable, TableEntry};
use tc_wal::Lsn;

/// Table entry flag: the object was deleted at `version`.
pub const ENTRY_DELETED: u16 = 1;

pub(crate) struct Heap {
    pub table: ObjectTable,
    pub files: Arc<DataFiles>,
    pub classes: Vec<Arc<ClassDef>>,
    pub roots: BTreeMap<String, ObjectId>,
    pub next_id: u64,
    /// End of the last applied record: everything below is in this heap.
    pub applied_end: Lsn,
    /// Image bytes referenced by the table, per data segment.
    pub live_bytes: HashMap<u32, u64>,
    pub cache: Cache,
}

/// What applying a change reads besides the cache it applies to: the
/// classes, and the object table and data segments objects are faulted in
/// from. The heap's own, or a replay shard's (`replay.rs`).
pub(crate) struct HeapView<'a> {
    pub classes: &'a [Arc<ClassDef>],
    pub table: &'a ObjectTable,
    pub files: &'a DataFiles,
    /// Objects deleted by records applied so far whose tombstones are not
    /// in the table yet (a replay shard writes them after replay).
    pub deleted: Option<&'a foldhash::HashMap<ObjectId, Lsn>>,
}

/// The object a DNA changes, with its class, while the DNA's field
/// writes and operations are applied one by one (each checked first).
struct Changing<'h> {
    id: ObjectId,
    def: &'h ClassDef,
    object: &'h mut Object,
    /// Change of `approx_bytes(object)` so far.
    bytes_delta: isize,
}

impl Changing<'_> {
    #[inline(always)]
    fn write_field(&mut self, slot: u32, value: Value) -> Result<(), ApplyError> {
        let field = self.field(slot)?;
        if !value.fits(field.kind) {
            return Err(cannot_hold(self.id, slot, &value));
        }
        let added = value_bytes(&value) as isize;
        let old = self.object.set_field(slot, value);
        self.bytes_delta += added - value_bytes(&old) as isize;
        Ok(())
    }

    /// `write_field` with the value `body` reads next (its slot was
    /// `slot`), decoded straight into the field; replay's way. A value of
    /// the wrong kind is written before it is found wrong: the caller
    /// then fails the whole replay.
    #[inline(always)]
    fn read_field(
        &mut self,
        slot: u32,
        body: &mut DnaReader<'_>,
        undecodable: impl Fn(DecodeError) -> ApplyError,
    ) -> Result<(), ApplyError> {
        let kind = self.field(slot)?.kind;
        let place = self.object.field_mut(slot);
        let removed = value_bytes(place) as isize;
        body.value_into(place).map_err(undecodable)?;
        if !place.fits(kind) {
            return Err(cannot_hold(self.id, slot, place));
        }
        self.bytes_delta += value_bytes(place) as isize - removed;
        Ok(())
    }

    fn field(&self, slot: u32) -> Result<&FieldDef, ApplyError> {
        let id = self.id;
        self.def
            .fields
            .get(slot as usize)
            .ok_or_else(|| mismatch(format!("{id} has no slot {slot}")))
    }

    fn apply_op(&mut self, op: &LogicalOp) -> Result<(), ApplyError> {
        self.object
            .check_op(op)
            .map_err(|why| mismatch(format!("{}: {why}", self.id)))?;
        self.bytes_delta += op_bytes_delta(self.object, op);
        self.object.apply(op);
        Ok(())
    }
}

#[cold]
fn cannot_hold(id: ObjectId, slot: u32, value: &Value) -> ApplyError {
    mismatch(format!(
        "{id} slot {slot} cannot hold {}",
        value.kind_name()
    ))
}

/// Where an object stands in the heap.
enum Found {
    Missing,
    Deleted(Lsn),
    /// In the cache now, at this version and this index of `cache`.
    Present {
        version: Lsn,
        index: usize,
    },
}

impl Heap {
    pub fn new(table: ObjectTable, files: Arc<DataFiles>, budget_bytes: usize) -> Heap {
        Heap {
            table,
            files,
            classes: Vec::new(),
            roots: BTreeMap::new(),
            next_id: 1,
            applied_end: Lsn(0),
            live_bytes: HashMap::new(),
            cache: Cache::new(budget_bytes),
        }
    }

    pub fn class(&self, id: ClassId) -> Option<&Arc<ClassDef>> {
        class_def(&self.classes, id)
    }

    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Whether `id` is in the cache now (no fault, no clock mark).
    pub fn is_cached(&self, id: ObjectId) -> bool {
        self.cache.contains(id)
    }

    /// The cache, and what applying a change to it reads.
    fn parts(&mut self) -> (HeapView<'_>, &mut Cache) {
        let view = HeapView {
            classes: &self.classes,
            table: &self.table,
            files: &self.files,
            deleted: None,
        };
        (view, &mut self.cache)
    }

    /// The current state of `id`, faulting it in if needed.
    pub fn get(&mut self, id: ObjectId) -> Result<Option<Snapshot>> {
        let (view, cache) = self.parts();
        let found = match view.find(cache, id, None)? {
            Found::Present { index, .. } => Some(cache.snapshot_used(index)),
            Found::Missing | Found::Deleted(_) => None,
        };
        self.cache.evict_over_budget();
        Ok(found)
    }

    /// Where `id` stands for a reader: answered from the cache or the
    /// table (`Answer`), or an image to read first (`Read`, outside the
    /// heap lock, then `install_read`).
    pub fn lookup(&mut self, id: ObjectId) -> Result<Lookup> {
        if let Some(index) = self.cache.find(id, None) {
            return Ok(Lookup::Answer(Some(self.cache.snapshot_used(index))));
        }
        Ok(match self.table.get(id)? {
            None => Lookup::Answer(None),
            Some(entry) if entry.flags & ENTRY_DELETED != 0 => Lookup::Answer(None),
            Some(entry) => Lookup::Read(ImageToRead {
                id,
                entry,
                files: Arc::clone(&self.files),
                def: self.class(entry.class).cloned(),
            }),
        })
    }

    /// Caches an image read outside the lock and returns the object's
    /// state, unless the object changed meanwhile: the cached state if it
    /// was faulted in since; `None` if the table no longer points at that
    /// image (the caller looks again).
    pub fn install_read(&mut self, read: ImageToRead, object: Object) -> Result<Option<Snapshot>> {
        let id = read.id;
        let index = match self.cache.index_of(id) {
            Some(index) => index,
            None if self.table.get(id)? == Some(read.entry) => {
                self.cache.insert(id, object, read.entry.version, false)
            }
            None => return Ok(None),
        };
        let snapshot = self.cache.snapshot_used(index);
        self.cache.evict_over_budget();
        Ok(Some(snapshot))
    }

    /// A full eviction pass (after a checkpoint made objects clean).
    pub fn evict_all_over_budget(&mut self) {
        self.cache.evict_all_over_budget();
    }

    /// Whether dirty objects keep the cache over its budget (a checkpoint
    /// would let them go).
    pub fn needs_checkpoint(&self) -> bool {
        self.cache.needs_checkpoint()
    }

    /// Applies one record at `lsn` (ending at `end`). Live records were
    /// checked by the sequencer; in recovery a record that does not fit
    /// the state is reported as `Err(why)`.
    pub fn apply(&mut self, lsn: Lsn, end: Lsn, record: &StoreRecord) -> Result<(), ApplyError> {
        assert!(
            end > lsn && lsn >= self.applied_end,
            "apply out of order: {lsn} after {}",
            self.applied_end
        );
        match record {
            StoreRecord::Transaction(tx) => self.apply_transaction(lsn, tx)?,
            StoreRecord::Class(id, def) => register_class(&mut self.classes, *id, def)?,
            StoreRecord::IdBlock { end, .. } => self.next_id = self.next_id.max(end.0),
            StoreRecord::Delete(ids) => {
                for id in ids {
                    self.delete(*id, lsn).map_err(ApplyError::Damaged)?;
                }
            }
        }
        self.applied_end = end;
        self.cache.evict_over_budget();
        Ok(())
    }

    fn apply_transaction(&mut self, lsn: Lsn, tx: &Transaction) -> Result<(), ApplyError> {
        let (view, cache) = self.parts();
        for dna in &tx.dnas {
            let start = DnaStart {
                object: dna.object,
                new_class: dna.new_class,
            };
            view.change_object(cache, lsn, start, None, |object| {
                for (slot, value) in &dna.fields {
                    object.write_field(*slot, value.clone())?;
                }
                dna.ops.iter().try_for_each(|op| object.apply_op(op))
            })?;
        }
        for (name, id) in &tx.roots {
            self.roots.entry(name.clone()).or_insert(*id);
        }
        Ok(())
    }

    /// Deletes `id` at `lsn`: a tombstone in the table (written at once:
    /// the delete is durable) and out of the cache.
    pub fn delete(&mut self, id: ObjectId, lsn: Lsn) -> Result<()> {
        let entry = self.table.get(id)?;
        if entry.is_some_and(|e| e.version >= lsn) {
            return Ok(());
        }
        if let Some(old) = entry.filter(|e| e.flags & ENTRY_DELETED == 0) {
            self.release_bytes(old.segment, old.length);
        }
        let class = entry.map(|e| e.class).unwrap_or_default();
        self.table.set(
            id,
            &TableEntry {
                version: lsn,
                segment: 0,
                offset: 0,
                length: 0,
                class,
                flags: ENTRY_DELETED,
            },
        )?;
        self.cache.remove(id);
        Ok(())
    }

    fn release_bytes(&mut self, segment: u32, length: u32) {
        if let Some(live) = self.live_bytes.get_mut(&segment) {
            *live = live.saturating_sub(u64::from(length));
        }
    }

    /// The ids of every dirty object: what a checkpoint at `applied_end`
    /// must write (`dirty_objects`, a batch at a time).
    pub fn dirty_ids(&self) -> Vec<ObjectId> {
        self.cache.dirty_ids()
    }

    /// The objects among `ids` still dirty, shared, for a checkpoint to
    /// encode without the heap lock. They stay dirty until `install`ed at
    /// their version, so a checkpoint that fails half-way loses nothing.
    pub fn dirty_objects(&self, ids: &[ObjectId]) -> Vec<DirtyObject> {
        self.cache.dirty_objects(ids)
    }

    /// Points the table at an image now durable in a data segment. Returns
    /// false (and changes nothing) if the table already has a newer entry.
    pub fn install(
        &mut self,
        id: ObjectId,
        entry: TableEntry,
        only_if_at: Option<(u32, u32)>,
    ) -> Result<bool> {
        let old = self.table.get(id)?;
        if let Some(old) = old {
            let newer = old.version > entry.version;
            let moved =
                only_if_at.is_some_and(|(seg, off)| (old.segment, old.offset) != (seg, off));
            if newer || moved || (old.flags & ENTRY_DELETED != 0) {
                return Ok(false);
            }
            self.release_bytes(old.segment, old.length);
        }
        self.table.set(id, &entry)?;
        *self.live_bytes.entry(entry.segment).or_default() += u64::from(entry.length);
        self.cache.mark_clean_at(id, entry.version);
        Ok(true)
    }
}

impl HeapView<'_> {
    /// Where `id` stands, faulting it into `cache` if it is neither cached
    /// nor deleted. `hint`: the cache index `id` is likely at (checked).
    fn find(&self, cache: &mut Cache, id: ObjectId, hint: Option<usize>) -> Result<Found> {
        let index = match cache.find(id, hint) {
            Some(index) => index,
            None => {
                if let Some(&at) = self.deleted.and_then(|deleted| deleted.get(&id)) {
                    return Ok(Found::Deleted(at));
                }
                match self.table.get(id)? {
                    None => return Ok(Found::Missing),
                    Some(entry) if entry.flags & ENTRY_DELETED != 0 => {
                        return Ok(Found::Deleted(entry.version));
                    }
                    Some(entry) => {
                        let def = class_def(self.classes, entry.class).map(|def| &**def);
                        let object = read_entry_image(self.files, id, &entry, def)?;
                        cache.insert(id, object, entry.version, false)
                    }
                }
            }
        };
        Ok(Found::Present {
            version: cache.used(index).version,
            index,
        })
    }

    /// Applies one DNA's changes (made by `change`) to its object at
    /// `lsn`, creating the object first if the DNA does; does nothing if
    /// the object already has this change (replay). `hint`: as for `find`.
    fn change_object(
        &self,
        cache: &mut Cache,
        lsn: Lsn,
        start: DnaStart,
        hint: Option<usize>,
        change: impl FnOnce(&mut Changing<'_>) -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        let id = start.object;
        let index = match (
            self.find(cache, id, hint).map_err(ApplyError::Damaged)?,
            start.new_class,
        ) {
            (Found::Deleted(version), _) | (Found::Present { version, .. }, _)
                if version >= lsn =>
            {
                return Ok(());
            }
            (Found::Missing, Some(class)) => {
                let def = class_def(self.classes, class)
                    .ok_or_else(|| mismatch(format!("{id} created with unknown {class}")))?;
                cache.insert(id, Object::new(class, def), lsn, true)
            }
            (Found::Present { index, .. }, None) => index,
            (Found::Missing, None) => {
                return Err(mismatch(format!("change to {id}, which does not exist")));
            }
            (Found::Deleted(at), _) => {
                return Err(mismatch(format!("change to {id}, deleted at {at}")));
            }
            (Found::Present { .. }, Some(_)) => {
                return Err(mismatch(format!("{id} created twice")));
            }
        };
        let cached = cache.used(index);
        let class = cached.object.class;
        let def = class_def(self.classes, class)
            .ok_or_else(|| mismatch(format!("{id} has unknown {class}")))?;
        let mut changing = Changing {
            id,
            def,
            object: cached.object_mut(),
            bytes_delta: 0,
        };
        change(&mut changing)?;
        let bytes_delta = changing.bytes_delta;
        cache.changed(index, id, lsn, bytes_delta);
        Ok(())
    }

    /// Applies the DNAs of the transaction record `bytes` at `lsn` whose
    /// objects `mine` accepts, each decoded as it is applied (no
    /// `Transaction` is built); the others are passed over by their
    /// length. Calls `created` for each object it creates; returns the
    /// header (roots are the caller's). A record that fails to decode or
    /// apply may be left half-applied; recovery then refuses to open, so
    /// nobody sees it.
    ///
    /// The DNAs to apply are gathered up to `BATCH_DNAS_MAX` at a time and
    /// their objects prefetched (`prefetch_batch`) before any is applied.
    /// Format v1 has no DNA lengths, so there passing over a DNA decodes
    /// it, and a shard's own DNAs are decoded twice (only WALs written
    /// before v2 hold such records).
    pub fn replay_transaction(
        &self,
        cache: &mut Cache,
        lsn: Lsn,
        bytes: &[u8],
        mine: impl Fn(ObjectId) -> bool,
        mut created: impl FnMut(ObjectId, ClassId),
    ) -> Result<TransactionHeader, ApplyError> {
        // Report what decoding the whole transaction says: its first
        // error in byte order, whichever DNA it is in.
        let undecodable = |e| undecodable_record(bytes, e);
        let (header, mut reader) = TransactionReader::new(bytes).map_err(undecodable)?;
        let mut batch = Batch::default();
        while let Some(start) = reader.next_dna().map_err(undecodable)? {
            if mine(start.object) {
                let body = reader.dna_reader();
                self.gather(cache, lsn, bytes, &mut batch, start, body, &mut created)?;
            }
            reader.skip_rest_of_dna().map_err(undecodable)?;
        }
        self.apply_batch(cache, lsn, &mut batch, bytes)?;
        Ok(header)
    }

    /// `replay_transaction` for a record whose header and DNA starts were
    /// read already (by `replay_feed`, once for all shards): `dnas` are
    /// those of the record's DNAs to apply, in order.
    pub fn replay_indexed(
        &self,
        cache: &mut Cache,
        lsn: Lsn,
        bytes: &[u8],
        dnas: &[IndexedDna],
        mut created: impl FnMut(ObjectId, ClassId),
    ) -> Result<(), ApplyError> {
        let mut batch = Batch::default();
        for dna in dnas {
            let body = dna.place.reader(bytes);
            self.gather(cache, lsn, bytes, &mut batch, dna.start, body, &mut created)?;
        }
        self.apply_batch(cache, lsn, &mut batch, bytes)
    }

    /// Adds a DNA of the transaction record `bytes` to `batch`, applying
    /// the batch once it is full, and calls `created` if the DNA creates
    /// its object.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn gather<'b>(
        &self,
        cache: &mut Cache,
        lsn: Lsn,
        bytes: &[u8],
        batch: &mut Batch<'b>,
        start: DnaStart,
        body: DnaReader<'b>,
        created: &mut impl FnMut(ObjectId, ClassId),
    ) -> Result<(), ApplyError> {
        if let Some(class) = start.new_class {
            created(start.object, class);
        }
        batch.push(Pending {
            start,
            body,
            index: cache.likely_index_of(start.object),
        });
        if batch.is_full() {
            self.apply_batch(cache, lsn, batch, bytes)?;
        }
        Ok(())
    }

    /// Applies the DNAs of `batch` (and empties it).
    fn apply_batch(
        &self,
        cache: &mut Cache,
        lsn: Lsn,
        batch: &mut Batch<'_>,
        bytes: &[u8],
    ) -> Result<(), ApplyError> {
        let undecodable = |e| undecodable_record(bytes, e);
        prefetch_batch(cache, batch);
        for pending in batch.drain() {
            let Pending {
                start,
                mut body,
                index,
            } = pending;
            self.change_object(cache, lsn, start, index, |object| {
                while let Some(slot) = body.next_slot().map_err(&undecodable)? {
                    object.read_field(slot, &mut body, undecodable)?;
                }
                while let Some(op) = body.next_op().map_err(&undecodable)? {
                    object.apply_op(&op)?;
                }
                Ok(())
            })?;
            // Checked even if the object already had this change.
            body.finish().map_err(&undecodable)?;
        }
        Ok(())
    }
}

/// Starts loading the cached objects of `batch` into the CPU's caches
/// (their cache entries were started when the batch was gathered): first
/// every object, then every object's fields, so that their cache misses
/// overlap instead of following one another as the changes are applied.
/// With a heap larger than the CPU's caches this is most of a replay's
/// time.
fn prefetch_batch(cache: &Cache, batch: &Batch<'_>) {
    let indexes = || batch.pending().filter_map(|pending| pending.index);
    indexes().for_each(|index| cache.prefetch_object(index));
    indexes().for_each(|index| cache.prefetch_fields(index));
}

/// DNAs a replay shard gathers before applying them.
const BATCH_DNAS_MAX: usize = 16;

/// A DNA to apply: its start, a reader of its body and where its object
/// is likely to be in the cache (`Cache::likely_index_of`; `None`: not
/// cached), to prefetch it and to save the lookup when applying (checked
/// there). Measured without that saving: 2–5 % slower.
struct Pending<'a> {
    start: DnaStart,
    body: DnaReader<'a>,
    index: Option<usize>,
}

/// Up to `BATCH_DNAS_MAX` DNAs of one transaction to apply, in order.
#[derive(Default)]
struct Batch<'a> {
    pending: [Option<Pending<'a>>; BATCH_DNAS_MAX],
    len: usize,
}

impl<'a> Batch<'a> {
    fn is_full(&self) -> bool {
        self.len == BATCH_DNAS_MAX
    }

    fn push(&mut self, pending: Pending<'a>) {
        self.pending[self.len] = Some(pending);
        self.len += 1;
    }

    fn pending(&self) -> impl Iterator<Item = &Pending<'a>> {
        self.pending[..self.len].iter().flatten()
    }

    fn drain(&mut self) -> impl Iterator<Item = Pending<'a>> {
        let len = std::mem::take(&mut self.len);
        self.pending[..len].iter_mut().filter_map(Option::take)
    }
}

fn class_def(classes: &[Arc<ClassDef>], id: ClassId) -> Option<&Arc<ClassDef>> {
    (id.0 as usize).checked_sub(1).and_then(|i| classes.get(i))
}

/// Applies a class registration record to `classes`: the next id, or a
/// repeat of a known class with the same definition.
pub(crate) fn register_class(
    classes: &mut Vec<Arc<ClassDef>>,
    id: ClassId,
    def: &ClassDef,
) -> Result<(), ApplyError> {
    let expected = classes.len() as u32 + 1;
    match class_def(classes, id) {
        Some(known) if **known == *def => Ok(()),
        Some(_) => Err(mismatch(format!(
            "{id} registered twice with different definitions"
        ))),
        None if id.0 == expected => {
            classes.push(Arc::new(def.clone()));
            Ok(())
        }
        None => Err(mismatch(format!(
            "{id} registered when {expected} was next"
        ))),
    }
}

/// An image a reader must read to answer (see `Heap::lookup`).
pub(crate) struct ImageToRead {
    id: ObjectId,
    entry: TableEntry,
    files: Arc<DataFiles>,
    def: Option<Arc<ClassDef>>,
}

impl ImageToRead {
    /// Reads and checks it; needs no lock.
    pub fn read(&self) -> Result<Object> {
        read_entry_image(&self.files, self.id, &self.entry, self.def.as_deref())
    }
}

/// What `Heap::lookup` found.
pub(crate) enum Lookup {
    Answer(Option<Snapshot>),
    Read(ImageToRead),
}

/// Reads the image `entry` points at and checks it against the entry and
/// against `def`, the class the entry names (`None`: unknown, an error).
fn read_entry_image(
    files: &DataFiles,
    id: ObjectId,
    entry: &TableEntry,
    def: Option<&ClassDef>,
) -> Result<Object> {
    let image = files.read_image(entry.segment, entry.offset, entry.length, id)?;
    let place = |what: String| {
        StoreError::corrupt(
            files.segment_path(entry.segment),
            Some(u64::from(entry.offset)),
            format!("image of {id}: {what}"),
        )
    };
    if image.version != entry.version {
        return Err(place(format!(
            "version {} but the object table says {}",
            image.version, entry.version
        )));
    }
    let object = Object::decode(&image.body).map_err(|e| place(e.to_string()))?;
    if object.class != entry.class {
        return Err(place(format!(
            "class {} but the object table says {}",
            object.class, entry.class
        )));
    }
    let def = def.ok_or_else(|| place(format!("unknown {}", object.class)))?;
    if let Some(problem) = object.check_against(def) {
        return Err(place(problem));
    }
    Ok(object)
}

/// Why a record could not be applied.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// An image it needed could not be read (file and offset named).
    Damaged(StoreError),
    /// The record does not fit the state it applies to.
    Mismatch(String),
}

fn mismatch(why: String) -> ApplyError {
    ApplyError::Mismatch(why)
}

fn undecodable(e: crate::codec::DecodeError) -> ApplyError {
    ApplyError::Mismatch(e.to_string())
}

/// What replay reports for the transaction record `bytes`, which failed to
/// decode with `e`: the first error in byte order of decoding it whole,
/// whichever DNA that is in.
#[cold]
fn undecodable_record(bytes: &[u8], e: DecodeError) -> ApplyError {
    undecodable(Transaction::decode(bytes).err().unwrap_or(e))
}
