//! The object cache: materialized objects by id, with what the heap knows
//! about each (version, dirty, approximate size), bounded by a byte budget.
//!
//! Owns: the cached objects and the array by id that finds them (`ById`),
//! the dirty set, size accounting (kept per change, never recomputed per
//! change), clock eviction of clean objects, the hit/miss counters and
//! prefetching objects into the CPU's caches for replay.
//! Not: where objects come from or how changes are checked (`heap.rs`).
//! Invariants: `dirty` holds exactly the ids of cached objects whose
//! `dirty` flag is set; `bytes` is the sum of the cached objects' sizes;
//! only clean objects are evicted; `ById::positions` points at exactly the
//! entries there are.

use std::sync::Arc;

use crate::model::{LogicalOp, Object, ObjectId, Value};
use crate::replay::Shards;
use tc_wal::Lsn;

/// Cache entries one eviction pass looks at, plus two per object that
/// entered the cache since the last pass.
const EVICTION_STEPS_BASE: usize = 1024;

/// A materialized object and what the cache knows about it.
pub(crate) struct Cached {
    pub object: Arc<Object>,
    /// LSN of the last change applied to it.
    pub version: Lsn,
    dirty: bool,
    pub bytes: usize,
    recently_used: bool,
}

impl Cached {
    /// The object, to change in place: copied first if a snapshot still
    /// shares it. Unshared (always so in replay), it is reached without
    /// the atomic read-modify-write `Arc::make_mut` costs.
    #[inline]
    pub fn object_mut(&mut self) -> &mut Object {
        if Arc::strong_count(&self.object) == 1 && Arc::weak_count(&self.object) == 0 {
            // Pairs with the release of a clone dropped on another thread,
            // so its reads of the object happen before the changes made here.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
            // SAFETY: no other `Arc` or `Weak` of this object exists (the
            // counts say so, and `&mut self` holds the only `Arc`, so none
            // can be made meanwhile): nothing else can reach it.
            unsafe { &mut *Arc::as_ptr(&self.object).cast_mut() }
        } else {
            Arc::make_mut(&mut self.object)
        }
    }
}

/// An object as of some LSN, shared (copy-on-write) with the heap.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub object: Arc<Object>,
    /// LSN of the last change in it.
    pub version: Lsn,
}

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

pub(crate) struct Cache {
    map: ById,
    dirty: foldhash::HashSet<ObjectId>,
    clock_hand: usize,
    inserted_since_eviction: usize,
    bytes: usize,
    budget_bytes: usize,
    stats: CacheStats,
}

impl Cache {
    pub fn new(budget_bytes: usize) -> Cache {
        Cache::for_shard(budget_bytes, Shards::new(1))
    }

    /// A cache for the objects of one replay shard of `shards`: those
    /// whose ids are equal modulo the shard count.
    pub fn for_shard(budget_bytes: usize, shards: Shards) -> Cache {
        Cache {
            map: ById::new(shards),
            dirty: foldhash::HashSet::default(),
            clock_hand: 0,
            inserted_since_eviction: 0,
            bytes: 0,
            budget_bytes,
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            objects: self.map.len(),
            bytes: self.bytes,
            dirty_objects: self.dirty.len(),
            ..self.stats
        }
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `id` is cached (no clock mark, not counted as a hit).
    pub fn contains(&self, id: ObjectId) -> bool {
        self.map.get_index_of(id).is_some()
    }

    /// Where `id` is, counted as a hit or a miss. `hint` (from
    /// `likely_index_of`) saves the lookup if `id` is at that index.
    pub fn find(&mut self, id: ObjectId, hint: Option<usize>) -> Option<usize> {
        let at_hint = hint.filter(|&i| self.map.get_index(i).is_some_and(|(key, _)| key == id));
        let index = at_hint.or_else(|| self.map.get_index_of(id));
        match index {
            Some(_) => self.stats.hits += 1,
            None => self.stats.misses += 1,
        }
        index
    }

    /// Where `id` is, if cached (not counted).
    pub fn index_of(&self, id: ObjectId) -> Option<usize> {
        self.map.get_index_of(id)
    }

    /// Where `id` would be if it is cached, without looking at the entry
    /// (so without waiting for it to load; in a replay shard's cache it
    /// may be another id's): `find` checks it. Starts loading the entry
    /// into the CPU's caches.
    pub fn likely_index_of(&self, id: ObjectId) -> Option<usize> {
        let index = self.map.likely_index_of(id)?;
        prefetch(
            self.map.entries.as_ptr().wrapping_add(index).cast(),
            size_of::<(ObjectId, Cached)>(),
        );
        Some(index)
    }

    /// Starts loading the object at `index` into the CPU's caches, so a
    /// change applied soon after does not wait on memory for it (a hint:
    /// changes nothing).
    pub fn prefetch_object(&self, index: usize) {
        if let Some((_, cached)) = self.map.get_index(index) {
            // An `Arc`'s two reference counts sit just before its value.
            let counts = 2 * size_of::<usize>();
            let object = Arc::as_ptr(&cached.object).cast::<u8>();
            prefetch(object.wrapping_sub(counts), counts + size_of::<Object>());
        }
    }

    /// Starts loading the fields of the object at `index`, as
    /// `prefetch_object` does the object.
    pub fn prefetch_fields(&self, index: usize) {
        use crate::model::Body;
        if let Some((_, cached)) = self.map.get_index(index)
            && let Body::Fields(fields) = &cached.object.body
        {
            prefetch(fields.as_ptr().cast(), size_of_val(fields.as_slice()));
        }
    }

    /// The entry at `index`, marked recently used.
    pub fn used(&mut self, index: usize) -> &mut Cached {
        let (_, cached) = self.map.get_index_mut(index);
        cached.recently_used = true;
        cached
    }

    /// The object at `index`, marked recently used.
    pub fn snapshot_used(&mut self, index: usize) -> Snapshot {
        let cached = self.used(index);
        Snapshot {
            object: Arc::clone(&cached.object),
            version: cached.version,
        }
    }

    /// Caches `id` (not cached yet) and returns its index.
    pub fn insert(&mut self, id: ObjectId, object: Object, version: Lsn, dirty: bool) -> usize {
        self.inserted_since_eviction += 1;
        let bytes = approx_bytes(&object);
        self.bytes += bytes;
        if dirty {
            self.dirty.insert(id);
        }
        self.map.insert(
            id,
            Cached {
                object: Arc::new(object),
                version,
                dirty,
                bytes,
                recently_used: true,
            },
        )
    }

    /// Records that the object at `index` (which is `id`) changed at `lsn`
    /// and its size by `bytes_delta`: it is now dirty at that version.
    pub fn changed(&mut self, index: usize, id: ObjectId, lsn: Lsn, bytes_delta: isize) {
        let (_, cached) = self.map.get_index_mut(index);
        let bytes = cached.bytes.checked_add_signed(bytes_delta);
        let bytes = bytes.expect("an object's size stays positive");
        debug_assert_eq!(bytes, approx_bytes(&cached.object), "size of {id} drifted");
        self.bytes = self.bytes - cached.bytes + bytes;
        cached.bytes = bytes;
        cached.version = lsn;
        cached.recently_used = true;
        if !std::mem::replace(&mut cached.dirty, true) {
            self.dirty.insert(id);
        }
    }

    /// Takes `id` out of the cache, dirty or not.
    pub fn remove(&mut self, id: ObjectId) {
        if let Some(index) = self.map.get_index_of(id) {
            let (_, gone) = self.map.swap_remove_index(index);
            self.bytes -= gone.bytes;
        }
        self.dirty.remove(&id);
    }

    /// Marks `id` clean if it is cached at `version` (its image at that
    /// version is durable).
    pub fn mark_clean_at(&mut self, id: ObjectId, version: Lsn) {
        let index = self.map.get_index_of(id);
        let cached = index.map(|index| self.map.get_index_mut(index).1);
        if let Some(cached) = cached.filter(|c| c.version == version) {
            cached.dirty = false;
            self.dirty.remove(&id);
        }
    }

    /// The ids of every dirty object.
    pub fn dirty_ids(&self) -> Vec<ObjectId> {
        self.dirty.iter().copied().collect()
    }

    /// The objects among `ids` that are dirty, shared.
    pub fn dirty_objects(&self, ids: &[ObjectId]) -> Vec<DirtyObject> {
        ids.iter()
            .filter(|id| self.dirty.contains(id))
            .map(|&id| {
                let index = self.map.get_index_of(id).expect("a dirty object is cached");
                let (_, cached) = self.map.get_index(index).expect("a cache index");
                DirtyObject {
                    id,
                    version: cached.version,
                    object: Arc::clone(&cached.object),
                }
            })
            .collect()
    }

    /// Whether dirty objects keep the cache over its budget (a checkpoint
    /// would let them go).
    pub fn needs_checkpoint(&self) -> bool {
        self.bytes > self.budget_bytes && !self.dirty.is_empty()
    }

    /// Moves every object of `other` (none of them cached here) into this
    /// cache, with its state; adds up the counters.
    pub fn absorb(&mut self, other: Cache) {
        self.map.entries.reserve(other.map.len());
        for (id, cached) in other.map.entries {
            self.bytes += cached.bytes;
            if cached.dirty {
                self.dirty.insert(id);
            }
            self.map.insert(id, cached);
        }
        self.inserted_since_eviction += other.inserted_since_eviction;
        self.stats.hits += other.stats.hits;
        self.stats.misses += other.stats.misses;
        self.stats.evictions += other.stats.evictions;
    }

    /// A full eviction pass (after a checkpoint made objects clean).
    pub fn evict_all_over_budget(&mut self) {
        self.inserted_since_eviction = self.map.len();
        self.evict_over_budget();
    }

    /// Evicts clean objects (clock order) until the cache fits its budget
    /// or only dirty and recently used objects are left.
    pub fn evict_over_budget(&mut self) {
        // Bounded work per call, proportional to what entered the cache:
        // with the cache full of dirty objects this gives up quickly (a
        // checkpoint will make them clean, then `evict_all_over_budget`).
        let steps_max = EVICTION_STEPS_BASE + 2 * std::mem::take(&mut self.inserted_since_eviction);
        let mut steps = (2 * self.map.len()).min(steps_max);
        while self.bytes > self.budget_bytes && steps > 0 && !self.map.is_empty() {
            steps -= 1;
            if self.clock_hand >= self.map.len() {
                self.clock_hand = 0;
            }
            let (_, cached) = self.map.get_index_mut(self.clock_hand);
            if cached.dirty {
                self.clock_hand += 1;
            } else if cached.recently_used {
                cached.recently_used = false;
                self.clock_hand += 1;
            } else {
                let (_, gone) = self.map.swap_remove_index(self.clock_hand);
                self.bytes -= gone.bytes;
                self.stats.evictions += 1;
            }
        }
    }
}

/// The cached objects, in clock order, found by id through an array
/// indexed by id (ids are dense: they come from the store's own allocator,
/// as the object table's entries do), which costs one load where a hash
/// table costs a hash and a probe.
struct ById {
    entries: Vec<(ObjectId, Cached)>,
    /// Per id: its index in `entries` plus one, or 0 if it is not cached.
    /// The ids of the same rank share a slot (`Shards::rank`: for `n`
    /// shards, the `n` ids from `k * n` on share slot `k`; a replay shard
    /// holds only one of them, see `Cache::for_shard`), so the id found in
    /// `entries` is compared with the one looked for.
    positions: Vec<u32>,
    shards: Shards,
}

impl ById {
    fn new(shards: Shards) -> ById {
        ById {
            entries: Vec::new(),
            positions: Vec::new(),
            shards,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn slot(&self, id: ObjectId) -> usize {
        usize::try_from(self.shards.rank(id)).expect("object ids fit in memory")
    }

    /// The index of `id`'s slot: `id`'s own or, in a cache that holds
    /// one id of each rank, that of another id sharing the slot.
    #[inline]
    fn likely_index_of(&self, id: ObjectId) -> Option<usize> {
        let position = *self.positions.get(self.slot(id))?;
        (position as usize).checked_sub(1)
    }

    #[inline]
    fn get_index_of(&self, id: ObjectId) -> Option<usize> {
        let index = self.likely_index_of(id)?;
        (self.entries[index].0 == id).then_some(index)
    }

    fn get_index(&self, index: usize) -> Option<(ObjectId, &Cached)> {
        self.entries.get(index).map(|(id, cached)| (*id, cached))
    }

    fn get_index_mut(&mut self, index: usize) -> (ObjectId, &mut Cached) {
        let (id, cached) = &mut self.entries[index];
        (*id, cached)
    }

    /// Adds `id` (not cached yet) and returns its index.
    fn insert(&mut self, id: ObjectId, cached: Cached) -> usize {
        let slot = self.slot(id);
        if slot >= self.positions.len() {
            let len = (slot + 1).max(self.positions.len() * 3 / 2);
            self.positions.resize(len, 0);
        }
        assert_eq!(self.positions[slot], 0, "{id} cached twice");
        let index = self.entries.len();
        self.entries.push((id, cached));
        self.positions[slot] = u32::try_from(index + 1).expect("fewer than 2^32 cached objects");
        index
    }

    /// Removes the entry at `index`, moving the last one into its place.
    fn swap_remove_index(&mut self, index: usize) -> (ObjectId, Cached) {
        let (id, cached) = self.entries.swap_remove(index);
        let slot = self.slot(id);
        self.positions[slot] = 0;
        if let Some(&(moved, _)) = self.entries.get(index) {
            let slot = self.slot(moved);
            self.positions[slot] = index as u32 + 1;
        }
        (id, cached)
    }
}

/// Asks the CPU to start loading the `bytes` bytes at `start` into its
/// caches. Only a hint: nothing is read or written, and any address will
/// do.
fn prefetch(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let end = start as usize + bytes;
        let mut line = start as usize & !63;
        while line < end {
            // SAFETY: a prefetch neither faults nor changes memory,
            // whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// Rough in-memory size of an object, for the cache budget. Kept up to
/// date per change (`op_bytes_delta`, `value_bytes`), never recomputed
/// per change: that would cost a whole collection per map put.
pub(crate) fn approx_bytes(object: &Object) -> usize {
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

pub(crate) fn value_bytes(v: &Value) -> usize {
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
pub(crate) fn op_bytes_delta(object: &Object, op: &LogicalOp) -> isize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Body, ClassId, ClassKind};
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
        /// The array by id finds exactly the objects a map of them holds,
        /// through inserts and removals (which move the last entry), also
        /// in a replay shard's cache, where ids of other shards share its
        /// slots and are looked for without being there.
        #[test]
        fn objects_are_found_by_id_as_in_a_map(
            shards in 1..6u64,
            steps in proptest::collection::vec((0..64u64, any::<bool>()), 1..200),
        ) {
            let mut by_id = ById::new(Shards::new(shards));
            let mut model = std::collections::HashMap::new();
            for (step, (n, insert)) in steps.into_iter().enumerate() {
                // Ids of this shard (shard 0) only are cached.
                let id = ObjectId(n * shards);
                match (by_id.get_index_of(id), insert) {
                    (None, true) => {
                        let cached = Cached {
                            object: Arc::new(empty(ClassKind::Plain)),
                            version: Lsn(step as u64),
                            dirty: false,
                            bytes: 0,
                            recently_used: false,
                        };
                        by_id.insert(id, cached);
                        model.insert(id, step as u64);
                    }
                    (Some(index), false) => {
                        let (removed, _) = by_id.swap_remove_index(index);
                        prop_assert_eq!(removed, id);
                        model.remove(&id);
                    }
                    _ => {}
                }
                prop_assert_eq!(by_id.len(), model.len());
                for n in 0..64 * shards + 1 {
                    let id = ObjectId(n);
                    let found = by_id.get_index_of(id).map(|index| {
                        let (at, cached) = by_id.get_index(index).expect("in range");
                        assert_eq!(at, id, "found at another object's index");
                        cached.version.0
                    });
                    prop_assert_eq!(found, model.get(&id).copied(), "{}", id);
                }
            }
        }

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
