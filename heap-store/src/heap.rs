//! The heap: objects as of the last *applied* (durable) record, as a
//! bounded cache over the data segments, located through the object table.
//!
//! Owns: the cache of materialized objects (clock eviction of clean ones),
//! applying store records in LSN order (live and in recovery), faulting
//! objects in from data segments, the applied catalog (classes, roots, id
//! high-water mark) and live bytes per data segment.
//! Not: deciding what may be appended (`sequencer.rs`), writing segments
//! and checkpoints (`store.rs`).
//! Invariants: a cached object is dirty iff it has changes that are not in
//! the image its table entry points at; only clean objects are evicted; a
//! table entry points only at an image that is already fsynced; a change
//! at LSN `l` is applied to an object only if `l` is newer than the
//! object's version (which makes replay exactly-once).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use indexmap::IndexMap;

use crate::datafile::DataFiles;
use crate::dna::{DnaStart, Transaction, TransactionReader};
use crate::error::{Result, StoreError};
use crate::model::{ClassDef, ClassId, LogicalOp, Object, ObjectId, Value};
use crate::records::StoreRecord;
use crate::table::{ObjectTable, TableEntry};
use tc_wal::Lsn;

/// Cache entries one eviction pass looks at, plus two per object that
/// entered the cache since the last pass.
const EVICTION_STEPS_BASE: usize = 1024;

/// Table entry flag: the object was deleted at `version`.
pub const ENTRY_DELETED: u16 = 1;

/// A materialized object and what the cache knows about it.
struct Cached {
    object: Arc<Object>,
    /// LSN of the last change applied to it.
    version: Lsn,
    dirty: bool,
    bytes: usize,
    recently_used: bool,
}

/// An object as of some LSN, shared (copy-on-write) with the heap.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub object: Arc<Object>,
    /// LSN of the last change in it.
    pub version: Lsn,
}

/// A dirty object's image, taken for a checkpoint.
/// A dirty object as of a checkpoint: shared with the heap (copy on
/// write), so it is encoded outside the heap lock.
pub(crate) struct DirtyObject {
    pub id: ObjectId,
    pub version: Lsn,
    pub object: Arc<Object>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub objects: usize,
    pub bytes: usize,
    pub dirty_objects: usize,
    pub evictions: u64,
}

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
    /// Keyed by dense ids from our own allocator, so a fast non-keyed hash
    /// (foldhash) is safe: nobody outside chooses the keys' distribution
    /// beyond asking for ids.
    cache: IndexMap<ObjectId, Cached, foldhash::fast::RandomState>,
    dirty: foldhash::HashSet<ObjectId>,
    clock_hand: usize,
    inserted_since_eviction: usize,
    cached_bytes: usize,
    budget_bytes: usize,
    stats: CacheStats,
}

/// Rough in-memory size of an object, for the cache budget. Kept up to
/// date per change (`op_bytes_delta`, `value_bytes`), never recomputed
/// per change: that would cost a whole collection per map put.
fn approx_bytes(object: &Object) -> usize {
    use crate::model::Body;
    let values: usize = match &object.body {
        Body::Fields(v) | Body::List(v) => v.iter().map(value_bytes).sum(),
        Body::Map(m) => m.iter().map(|(k, v)| entry_bytes(k, v)).sum(),
        Body::Set(s) => s.iter().map(value_bytes).sum(),
        Body::Queue(q) => q.iter().map(value_bytes).sum(),
    };
    OBJECT_BYTES + values
}

/// An object's size without its values.
const OBJECT_BYTES: usize = 96;

fn value_bytes(v: &Value) -> usize {
    use crate::model::Array;
    32 + match v {
        Value::String(s) => s.len(),
        Value::Array(Array::Boolean(v)) => v.len(),
        Value::Array(Array::Byte(v)) => v.len(),
        Value::Array(Array::String(v)) => v
            .iter()
            .map(|s| 24 + s.as_ref().map_or(0, String::len))
            .sum(),
        Value::Array(a) => a.len() * 8,
        _ => 0,
    }
}

fn entry_bytes(key: &Value, value: &Value) -> usize {
    value_bytes(key) + value_bytes(value) + 16
}

/// How `approx_bytes(object)` changes when `op` is applied to it (which
/// `check_op` allowed).
fn op_bytes_delta(object: &Object, op: &LogicalOp) -> isize {
    use crate::model::Body;
    let size = |v: &Value| value_bytes(v) as isize;
    match (&object.body, op) {
        (Body::Map(m), LogicalOp::MapPut(k, v)) => match m.get(k) {
            Some(old) => size(v) - size(old),
            None => entry_bytes(k, v) as isize,
        },
        (Body::Map(m), LogicalOp::MapRemove(k)) => m
            .get_key_value(k)
            .map_or(0, |(k, v)| -(entry_bytes(k, v) as isize)),
        (Body::List(l), LogicalOp::ListSet(i, v)) => size(v) - size(&l[*i as usize]),
        (Body::List(l), LogicalOp::ListRemoveAt(i)) => -size(&l[*i as usize]),
        (Body::Set(s), LogicalOp::SetAdd(v)) if !s.contains(v) => size(v),
        (Body::Set(s), LogicalOp::SetRemove(v)) if s.contains(v) => -size(v),
        (Body::Queue(q), LogicalOp::QueuePoll) => q.front().map_or(0, |v| -size(v)),
        (_, LogicalOp::ListAdd(v) | LogicalOp::ListInsert(_, v) | LogicalOp::QueueOffer(v)) => {
            size(v)
        }
        (_, LogicalOp::Clear) => OBJECT_BYTES as isize - approx_bytes(object) as isize,
        _ => 0,
    }
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
    fn write_field(&mut self, slot: u32, value: Value) -> Result<(), ApplyError> {
        let id = self.id;
        let field = self
            .def
            .fields
            .get(slot as usize)
            .ok_or_else(|| mismatch(format!("{id} has no slot {slot}")))?;
        if !value.fits(field.kind) {
            return Err(mismatch(format!(
                "{id} slot {slot} cannot hold {}",
                value.kind_name()
            )));
        }
        let added = value_bytes(&value) as isize;
        let old = self.object.set_field(slot, value);
        self.bytes_delta += added - value_bytes(&old) as isize;
        Ok(())
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
            cache: IndexMap::default(),
            dirty: foldhash::HashSet::default(),
            clock_hand: 0,
            inserted_since_eviction: 0,
            cached_bytes: 0,
            budget_bytes,
            stats: CacheStats::default(),
        }
    }

    pub fn class(&self, id: ClassId) -> Option<&Arc<ClassDef>> {
        (id.0 as usize)
            .checked_sub(1)
            .and_then(|i| self.classes.get(i))
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            objects: self.cache.len(),
            bytes: self.cached_bytes,
            dirty_objects: self.dirty.len(),
            ..self.stats
        }
    }

    /// Whether `id` is in the cache now (no fault, no clock mark).
    pub fn is_cached(&self, id: ObjectId) -> bool {
        self.cache.contains_key(&id)
    }

    /// The current state of `id`, faulting it in if needed.
    pub fn get(&mut self, id: ObjectId) -> Result<Option<Snapshot>> {
        let found = match self.find(id)? {
            Found::Present { index, .. } => Some(self.snapshot_used(index)),
            Found::Missing | Found::Deleted(_) => None,
        };
        self.evict_over_budget();
        Ok(found)
    }

    /// The cached object at `index` of `cache`, marked recently used.
    fn snapshot_used(&mut self, index: usize) -> Snapshot {
        let (_, cached) = self.cache.get_index_mut(index).expect("a cache index");
        cached.recently_used = true;
        Snapshot {
            object: Arc::clone(&cached.object),
            version: cached.version,
        }
    }

    fn find(&mut self, id: ObjectId) -> Result<Found> {
        let index = match self.cache.get_index_of(&id) {
            Some(index) => {
                self.stats.hits += 1;
                index
            }
            None => {
                self.stats.misses += 1;
                match self.table.get(id)? {
                    None => return Ok(Found::Missing),
                    Some(entry) if entry.flags & ENTRY_DELETED != 0 => {
                        return Ok(Found::Deleted(entry.version));
                    }
                    Some(entry) => {
                        let object = self.read_image(id, &entry)?;
                        self.insert(id, object, entry.version, false)
                    }
                }
            }
        };
        let (_, cached) = self.cache.get_index_mut(index).expect("index just found");
        cached.recently_used = true;
        Ok(Found::Present {
            version: cached.version,
            index,
        })
    }

    /// Where `id` stands for a reader: answered from the cache or the
    /// table (`Answer`), or an image to read first (`Read`, outside the
    /// heap lock, then `install_read`).
    pub fn lookup(&mut self, id: ObjectId) -> Result<Lookup> {
        if let Some(index) = self.cache.get_index_of(&id) {
            self.stats.hits += 1;
            return Ok(Lookup::Answer(Some(self.snapshot_used(index))));
        }
        self.stats.misses += 1;
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
        let index = match self.cache.get_index_of(&id) {
            Some(index) => index,
            None if self.table.get(id)? == Some(read.entry) => {
                self.insert(id, object, read.entry.version, false)
            }
            None => return Ok(None),
        };
        let snapshot = self.snapshot_used(index);
        self.evict_over_budget();
        Ok(Some(snapshot))
    }

    /// Reads and checks the image a table entry points at.
    pub fn read_image(&self, id: ObjectId, entry: &TableEntry) -> Result<Object> {
        let def = self.class(entry.class).map(|def| &**def);
        read_entry_image(&self.files, id, entry, def)
    }
    /// Caches `id` (not cached yet) and returns its index in `cache`.
    fn insert(&mut self, id: ObjectId, object: Object, version: Lsn, dirty: bool) -> usize {
        self.inserted_since_eviction += 1;
        let bytes = approx_bytes(&object);
        self.cached_bytes += bytes;
        if dirty {
            self.dirty.insert(id);
        }
        let (index, old) = self.cache.insert_full(
            id,
            Cached {
                object: Arc::new(object),
                version,
                dirty,
                bytes,
                recently_used: true,
            },
        );
        assert!(old.is_none(), "{id} inserted into the cache twice");
        index
    }

    /// Evicts clean objects (clock order) until the cache fits its budget
    /// or only dirty and recently used objects are left.
    /// A full eviction pass (after a checkpoint made objects clean).
    pub fn evict_all_over_budget(&mut self) {
        self.inserted_since_eviction = self.cache.len();
        self.evict_over_budget();
    }

    pub fn evict_over_budget(&mut self) {
        // Bounded work per call, proportional to what entered the cache:
        // with the cache full of dirty objects this gives up quickly (a
        // checkpoint will make them clean, then `evict_all_over_budget`).
        let steps_max = EVICTION_STEPS_BASE + 2 * std::mem::take(&mut self.inserted_since_eviction);
        let mut steps = (2 * self.cache.len()).min(steps_max);
        while self.cached_bytes > self.budget_bytes && steps > 0 && !self.cache.is_empty() {
            steps -= 1;
            if self.clock_hand >= self.cache.len() {
                self.clock_hand = 0;
            }
            let (_, cached) = self
                .cache
                .get_index_mut(self.clock_hand)
                .expect("hand in range");
            if cached.dirty {
                self.clock_hand += 1;
            } else if cached.recently_used {
                cached.recently_used = false;
                self.clock_hand += 1;
            } else {
                let (_, gone) = self
                    .cache
                    .swap_remove_index(self.clock_hand)
                    .expect("hand in range");
                self.cached_bytes -= gone.bytes;
                self.stats.evictions += 1;
            }
        }
    }

    /// Whether dirty objects keep the cache over its budget (a checkpoint
    /// would let them go).
    pub fn needs_checkpoint(&self) -> bool {
        self.cached_bytes > self.budget_bytes && !self.dirty.is_empty()
    }

    /// Applies one record at `lsn` (ending at `end`). Live records were
    /// checked by the sequencer; in recovery a record that does not fit
    /// the state is reported as `Err(why)`.
    pub fn apply(&mut self, lsn: Lsn, end: Lsn, record: &StoreRecord) -> Result<(), ApplyError> {
        self.check_order(lsn, end);
        match record {
            StoreRecord::Transaction(tx) => self.apply_transaction(lsn, tx)?,
            StoreRecord::Class(id, def) => {
                let expected = self.classes.len() as u32 + 1;
                match self.class(*id) {
                    Some(known) if **known == *def => {}
                    Some(_) => {
                        return Err(mismatch(format!(
                            "{id} registered twice with different definitions"
                        )));
                    }
                    None if id.0 == expected => self.classes.push(Arc::new(def.clone())),
                    None => {
                        return Err(mismatch(format!(
                            "{id} registered when {expected} was next"
                        )));
                    }
                }
            }
            StoreRecord::IdBlock { end, .. } => self.next_id = self.next_id.max(end.0),
            StoreRecord::Delete(ids) => {
                for id in ids {
                    self.delete(*id, lsn).map_err(ApplyError::Damaged)?;
                }
            }
        }
        self.applied(end);
        Ok(())
    }

    fn check_order(&self, lsn: Lsn, end: Lsn) {
        assert!(
            end > lsn && lsn >= self.applied_end,
            "apply out of order: {lsn} after {}",
            self.applied_end
        );
    }

    /// Everything below `end` is applied.
    fn applied(&mut self, end: Lsn) {
        self.applied_end = end;
        self.evict_over_budget();
    }

    fn apply_transaction(&mut self, lsn: Lsn, tx: &Transaction) -> Result<(), ApplyError> {
        for dna in &tx.dnas {
            let start = DnaStart {
                object: dna.object,
                new_class: dna.new_class,
            };
            self.change_object(lsn, start, |object| {
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

    /// Replays the transaction record `bytes` at `lsn` (ending at `end`),
    /// applying each change as it is decoded: no `Transaction` is built.
    /// Calls `created` for each object the record creates. A record that
    /// fails to decode or apply may be left half-applied; recovery then
    /// refuses to open, so nobody sees that heap.
    pub fn replay_transaction(
        &mut self,
        lsn: Lsn,
        end: Lsn,
        bytes: &[u8],
        mut created: impl FnMut(ObjectId, ClassId),
    ) -> Result<(), ApplyError> {
        self.check_order(lsn, end);
        let (header, mut reader) = TransactionReader::new(bytes).map_err(undecodable)?;
        while let Some(start) = reader.next_dna().map_err(undecodable)? {
            if let Some(class) = start.new_class {
                created(start.object, class);
            }
            self.change_object(lsn, start, |object| {
                while let Some((slot, value)) = reader.next_field().map_err(undecodable)? {
                    object.write_field(slot, value)?;
                }
                while let Some(op) = reader.next_op().map_err(undecodable)? {
                    object.apply_op(&op)?;
                }
                Ok(())
            })?;
        }
        for (name, id) in header.roots {
            self.roots.entry(name).or_insert(id);
        }
        self.applied(end);
        Ok(())
    }

    /// Applies one DNA's changes (made by `change`) to its object at
    /// `lsn`, creating the object first if the DNA does; does nothing if
    /// the object already has this change (replay).
    fn change_object(
        &mut self,
        lsn: Lsn,
        start: DnaStart,
        change: impl FnOnce(&mut Changing<'_>) -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        let id = start.object;
        let index = match (self.find(id).map_err(ApplyError::Damaged)?, start.new_class) {
            (Found::Deleted(version), _) | (Found::Present { version, .. }, _)
                if version >= lsn =>
            {
                return Ok(());
            }
            (Found::Missing, Some(class)) => {
                let def = self
                    .class(class)
                    .ok_or_else(|| mismatch(format!("{id} created with unknown {class}")))?;
                let object = Object::new(class, def);
                self.insert(id, object, lsn, true)
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
        let (_, cached) = self
            .cache
            .get_index_mut(index)
            .expect("present or just inserted");
        let class = cached.object.class;
        let def = (class.0 as usize)
            .checked_sub(1)
            .and_then(|i| self.classes.get(i))
            .ok_or_else(|| mismatch(format!("{id} has unknown {class}")))?;
        let mut changing = Changing {
            id,
            def,
            object: Arc::make_mut(&mut cached.object),
            bytes_delta: 0,
        };
        change(&mut changing)?;
        let bytes = cached.bytes.checked_add_signed(changing.bytes_delta);
        let bytes = bytes.expect("an object's size stays positive");
        debug_assert_eq!(bytes, approx_bytes(&cached.object), "size of {id} drifted");
        self.cached_bytes = self.cached_bytes - cached.bytes + bytes;
        cached.bytes = bytes;
        cached.version = lsn;
        cached.recently_used = true;
        if !std::mem::replace(&mut cached.dirty, true) {
            self.dirty.insert(id);
        }
        Ok(())
    }

    /// Deletes `id` at `lsn`: a tombstone in the table (written at once:
    /// the delete is durable) and out of the cache.
    fn delete(&mut self, id: ObjectId, lsn: Lsn) -> Result<()> {
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
        if let Some(gone) = self.cache.swap_remove(&id) {
            self.cached_bytes -= gone.bytes;
        }
        self.dirty.remove(&id);
        Ok(())
    }

    fn release_bytes(&mut self, segment: u32, length: u32) {
        if let Some(live) = self.live_bytes.get_mut(&segment) {
            *live = live.saturating_sub(u64::from(length));
        }
    }

    /// Every dirty object, shared, for a checkpoint at `applied_end` to
    /// encode without the heap lock. They stay dirty until `install`ed at
    /// their version, so a checkpoint that fails half-way loses nothing.
    pub fn dirty_objects(&self) -> Vec<DirtyObject> {
        self.dirty
            .iter()
            .map(|&id| {
                let cached = &self.cache[&id];
                DirtyObject {
                    id,
                    version: cached.version,
                    object: Arc::clone(&cached.object),
                }
            })
            .collect()
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
        if let Some(cached) = self
            .cache
            .get_mut(&id)
            .filter(|c| c.version == entry.version)
        {
            cached.dirty = false;
            self.dirty.remove(&id);
        }
        Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Body, ClassKind};
    use proptest::prelude::*;

    /// Few distinct values, so puts and adds often hit existing entries.
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0..4i32).prop_map(Value::Int),
            "[ab]{0,3}".prop_map(Value::String),
            Just(Value::Null),
        ]
    }

    fn op() -> impl Strategy<Value = LogicalOp> {
        prop_oneof![
            (value(), value()).prop_map(|(k, v)| LogicalOp::MapPut(k, v)),
            value().prop_map(LogicalOp::MapRemove),
            value().prop_map(LogicalOp::ListAdd),
            (0..4u32, value()).prop_map(|(i, v)| LogicalOp::ListInsert(i, v)),
            (0..4u32, value()).prop_map(|(i, v)| LogicalOp::ListSet(i, v)),
            (0..4u32).prop_map(LogicalOp::ListRemoveAt),
            value().prop_map(LogicalOp::SetAdd),
            value().prop_map(LogicalOp::SetRemove),
            value().prop_map(LogicalOp::QueueOffer),
            Just(LogicalOp::QueuePoll),
            Just(LogicalOp::Clear),
        ]
    }

    fn empty(kind: ClassKind) -> Object {
        let body = match kind {
            ClassKind::Map => Body::Map(Default::default()),
            ClassKind::List => Body::List(Vec::new()),
            ClassKind::Set => Body::Set(Default::default()),
            ClassKind::Queue => Body::Queue(Default::default()),
            ClassKind::Plain => Body::Fields(vec![Value::Null; 4]),
        };
        Object {
            class: ClassId(1),
            body,
        }
    }

    proptest! {
        /// The cache's size of an object is kept per change; it must stay
        /// what recomputing it from scratch gives.
        #[test]
        fn sizes_kept_per_change_match_recomputed_ones(
            kind in prop_oneof![
                Just(ClassKind::Map),
                Just(ClassKind::List),
                Just(ClassKind::Set),
                Just(ClassKind::Queue),
            ],
            ops in proptest::collection::vec(op(), 1..60),
            writes in proptest::collection::vec((0..4u32, value()), 1..20),
        ) {
            let mut object = empty(kind);
            let mut size = approx_bytes(&object) as isize;
            for op in &ops {
                if object.check_op(op).is_ok() {
                    size += op_bytes_delta(&object, op);
                    object.apply(op);
                    prop_assert_eq!(size, approx_bytes(&object) as isize, "after {:?}", op);
                }
            }
            let mut plain = empty(ClassKind::Plain);
            let mut size = approx_bytes(&plain) as isize;
            for (slot, value) in writes {
                size += value_bytes(&value) as isize;
                size -= value_bytes(&plain.set_field(slot, value)) as isize;
                prop_assert_eq!(size, approx_bytes(&plain) as isize);
            }
        }
    }
}
