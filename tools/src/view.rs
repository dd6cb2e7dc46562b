//! A read-only view of a data dir's heap, for the offline tools: the
//! checkpoint, the WAL records after it, the object table and the data
//! segments, and each object's current state computed from them.
//!
//! Owns: loading those parts without writing (structural problems go into
//! an `FsckReport` as they are found), the catalog (classes, roots, id
//! high-water mark) as of the end of the log, and replaying the WAL onto
//! one object at a time.
//! Not: the deep checks of every image and reference (`fsck.rs`), printing
//! (`dump.rs`).
//!
//! Replay rules, the same as the store's (`tc_heap_store` `heap.rs`):
//! a change at LSN `l` applies to an object only if `l` is newer than the
//! object's version (its table entry's version, or the LSN of the last
//! change applied); a DNA with a class creates a missing object with
//! default values, then its field writes and logical operations apply in
//! order; a Delete record leaves a tombstone at its LSN; a change to a
//! deleted or missing object is refused. Each object's state depends only
//! on its own changes and the classes, so one object can be replayed alone.
//! The store's apply code is private, so this module applies DNAs itself
//! with `Object::set_field` and `Object::apply`, after checking every
//! precondition those two assert (they panic on a bad slot or operation).
//!
//! Invariants: never writes to the data dir (no `Store::open`, no
//! `Wal::open`, the table is mapped read-only, `DataFiles::open_dir` is
//! called only on an existing directory); holds a shared `flock` on
//! `wal/LOCK` while it lives, so a server cannot start meanwhile and the
//! view refuses to load while one runs; never panics on bad bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use tc_heap_store::checkpoint::{CHECKPOINT_FILE, Checkpoint};
use tc_heap_store::datafile::DataFiles;
use tc_heap_store::dna::Dna;
use tc_heap_store::model::{Body, Object};
use tc_heap_store::records::StoreRecord;
use tc_heap_store::table::{
    ObjectTable, TABLE_ENTRY_BYTES, TABLE_FILE_NAME, TABLE_HEADER_BYTES, TableEntry,
};
use tc_heap_store::{
    ClassDef, ClassId, ENTRY_DELETED, Lsn, ObjectId, SEGMENTS_DIR, StoreError, WAL_DIR,
};

use crate::error::ToolError;
use crate::fsck::{Finding, FsckReport};
use crate::walscan::{self, SegmentDamage, WalFile};

/// Where a class or root binding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Checkpoint,
    /// A WAL record after the checkpoint, at this LSN.
    Wal(Lsn),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassInfo {
    pub id: ClassId,
    pub def: ClassDef,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    pub name: String,
    pub object: ObjectId,
    pub source: Source,
}

/// A decoded WAL record from the checkpoint on.
#[derive(Debug, Clone)]
pub struct WalRecord {
    pub lsn: Lsn,
    pub end: Lsn,
    /// Index into `HeapView::wal_files`.
    pub file: usize,
    /// File offset of the frame.
    pub offset: u64,
    pub record: StoreRecord,
}

/// One change to one object, in a WAL record after the checkpoint.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// `records[record]` is a transaction; its DNA number `dna`.
    Dna { record: usize, dna: usize },
    /// `records[record]` is a Delete record naming the object.
    Delete { record: usize },
}

impl Event {
    fn record(&self) -> usize {
        match *self {
            Event::Dna { record, .. } | Event::Delete { record } => record,
        }
    }
}

/// What the WAL directory held, in summary.
#[derive(Debug, Clone, Default)]
pub struct WalSummary {
    pub segment_files: usize,
    pub spare_files: usize,
    /// LSN of the first record of the first segment.
    pub first_lsn: Lsn,
    /// End of the last valid record found.
    pub end_lsn: Lsn,
    /// End of the replayed run: the records from the checkpoint on, each
    /// starting where the previous one ended. Equals `end_lsn` unless the
    /// log has a hole after the checkpoint.
    pub replay_end: Lsn,
    /// Valid records in every segment (also after damage).
    pub records: u64,
    /// Bytes of those records (frames), which is also their LSN span.
    pub record_bytes: u64,
    /// Valid records after the checkpoint that lie after a hole in the log
    /// (not replayed).
    pub records_not_replayed: u64,
}

/// An object's state as of the end of the log.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Never created (no entry, no creation in the WAL).
    Missing,
    /// Deleted at this LSN.
    Deleted(Lsn),
    /// Exists; `object` is `None` when only existence was asked for.
    Live {
        object: Option<Object>,
        version: Lsn,
    },
    /// Cannot tell: its table entry or image is damaged (reported apart).
    Unknown,
}

/// Where replay of one object starts.
#[derive(Debug, Clone)]
pub enum Base {
    Missing,
    Deleted(Lsn),
    /// A live table entry at `version`, with its image when it was read.
    Present {
        object: Option<Object>,
        version: Lsn,
    },
    Unknown,
}

/// The result of replaying one object.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub state: State,
    /// WAL changes (DNAs, deletes) applied on top of the base.
    pub changes_applied: usize,
    /// The live table entry the base came from, if any.
    pub entry: Option<TableEntry>,
}

pub struct HeapView {
    pub root: PathBuf,
    pub checkpoint: Option<Checkpoint>,
    /// Replay starts here: the checkpoint LSN (or the first LSN of the log
    /// when the checkpoint is unusable).
    pub replay_from: Lsn,
    pub classes: Vec<ClassInfo>,
    /// Sorted by name; the first binding of a name wins (as in the store).
    pub roots: Vec<RootInfo>,
    /// The first id never handed out, as of the end of the log.
    pub next_id: u64,
    pub wal: WalSummary,
    pub wal_files: Vec<PathBuf>,
    pub records: Vec<WalRecord>,
    pub table: Option<ObjectTable>,
    pub files: Option<DataFiles>,
    events: HashMap<ObjectId, Vec<Event>>,
    _lock: Option<File>,
}

impl std::fmt::Debug for HeapView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapView")
            .field("root", &self.root)
            .field("replay_from", &self.replay_from)
            .field("classes", &self.classes.len())
            .field("roots", &self.roots.len())
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

/// Offset of `id`'s slot in the object table.
pub fn table_slot_offset(id: ObjectId) -> u64 {
    (TABLE_HEADER_BYTES as u64).saturating_add(id.0.saturating_mul(TABLE_ENTRY_BYTES as u64))
}

impl HeapView {
    /// Loads the view of the data dir at `root`, reporting every structural
    /// problem found on the way into `report`. Fails (a tool failure, not a
    /// finding) only if `root` is not a directory, cannot be listed, or a
    /// server holds it.
    pub fn load(root: &Path, report: &mut FsckReport) -> Result<HeapView, ToolError> {
        if !root.is_dir() {
            return Err(ToolError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        fs::read_dir(root).map_err(|e| ToolError::io("list", root, e))?;
        let lock = lock_shared(&root.join(WAL_DIR).join(walscan::LOCK_FILE))?;
        let mut view = HeapView {
            root: root.to_path_buf(),
            checkpoint: None,
            replay_from: Lsn(0),
            classes: Vec::new(),
            roots: Vec::new(),
            next_id: 1,
            wal: WalSummary::default(),
            wal_files: Vec::new(),
            records: Vec::new(),
            table: None,
            files: None,
            events: HashMap::new(),
            _lock: lock,
        };
        view.load_checkpoint(report);
        view.load_wal(report);
        view.apply_catalog(report);
        view.load_table(report);
        view.load_data_files(report);
        Ok(view)
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.root.join(WAL_DIR)
    }

    pub fn segments_dir(&self) -> PathBuf {
        self.root.join(SEGMENTS_DIR)
    }

    pub fn table_path(&self) -> PathBuf {
        self.root.join(TABLE_FILE_NAME)
    }

    pub fn class(&self, id: ClassId) -> Option<&ClassInfo> {
        (id.0 as usize)
            .checked_sub(1)
            .and_then(|i| self.classes.get(i))
    }

    pub fn class_by_name(&self, name: &str) -> Option<&ClassInfo> {
        self.classes.iter().find(|c| c.def.name == name)
    }

    pub fn root(&self, name: &str) -> Option<&RootInfo> {
        self.roots.iter().find(|r| r.name == name)
    }

    /// A finding placed at a WAL record.
    pub fn at_record(&self, record: &WalRecord, what: impl Into<String>) -> Finding {
        let mut f = Finding::new(what).offset(record.offset).lsn(record.lsn);
        if let Some(path) = self.wal_files.get(record.file) {
            f = f.file(path);
        }
        f
    }

    /// Ids that WAL records after the checkpoint change, in id order.
    pub fn wal_objects(&self) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> = self.events.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Number of WAL changes (DNAs, deletes) naming `id` after the checkpoint.
    pub fn wal_change_count(&self, id: ObjectId) -> usize {
        self.events.get(&id).map_or(0, Vec::len)
    }

    /// The first WAL record after the checkpoint that changes `id`.
    pub fn first_change(&self, id: ObjectId) -> Option<&WalRecord> {
        let event = self.events.get(&id)?.first()?;
        self.records.get(event.record())
    }

    /// The last WAL record after the checkpoint that changes `id`.
    pub fn last_change(&self, id: ObjectId) -> Option<&WalRecord> {
        let event = self.events.get(&id)?.last()?;
        self.records.get(event.record())
    }

    /// The class of `id` as far as the table entry (live or tombstone) or
    /// its creation in the WAL says, without reading an image.
    pub fn class_of(&self, id: ObjectId) -> Option<ClassId> {
        if let Ok(Some(entry)) = self.entry(id)
            && entry.class.0 != 0
        {
            return Some(entry.class);
        }
        self.events.get(&id)?.iter().find_map(|event| match *event {
            Event::Dna { record, dna } => match &self.records.get(record)?.record {
                StoreRecord::Transaction(tx) => tx.dnas.get(dna)?.new_class,
                _ => None,
            },
            Event::Delete { .. } => None,
        })
    }

    /// The record after the checkpoint that starts at `lsn`.
    pub fn record_at(&self, lsn: Lsn) -> Option<&WalRecord> {
        let index = self.records.binary_search_by_key(&lsn, |r| r.lsn).ok()?;
        self.records.get(index)
    }

    /// The table entry of `id` (`Ok(None)`: no entry, or no table).
    pub fn entry(&self, id: ObjectId) -> Result<Option<TableEntry>, StoreError> {
        match &self.table {
            Some(table) => table.get(id),
            None => Ok(None),
        }
    }

    /// Where replay of `id` starts, from its table entry; the image is read
    /// only if `with_image`. Damage is not reported here (`fsck` reports it
    /// while checking the table); it makes the base `Unknown`.
    pub fn base(&self, id: ObjectId, with_image: bool) -> (Base, Option<TableEntry>) {
        match self.entry(id) {
            Err(_) => (Base::Unknown, None),
            Ok(None) if self.table.is_none() => (Base::Unknown, None),
            Ok(None) => (Base::Missing, None),
            Ok(Some(e)) if e.flags & ENTRY_DELETED != 0 => (Base::Deleted(e.version), None),
            Ok(Some(e)) if !with_image => (
                Base::Present {
                    object: None,
                    version: e.version,
                },
                Some(e),
            ),
            Ok(Some(e)) => {
                let mut sink = Vec::new();
                match self.read_image(id, &e, &mut sink) {
                    Some(object) if sink.is_empty() => (
                        Base::Present {
                            object: Some(object),
                            version: e.version,
                        },
                        Some(e),
                    ),
                    _ => (Base::Unknown, Some(e)),
                }
            }
        }
    }

    /// Reads, verifies and decodes the image a live entry points at,
    /// reporting every problem into `sink`: the image record (segment,
    /// CRC, length, object id), its version, the body's encoding, its
    /// class against the entry's, the class being known and the object
    /// fitting it. Returns the object whenever its body decodes.
    pub fn read_image(
        &self,
        id: ObjectId,
        entry: &TableEntry,
        sink: &mut Vec<Finding>,
    ) -> Option<Object> {
        let Some(files) = &self.files else {
            return None;
        };
        let segment_path = files.segment_path(entry.segment);
        let at = || {
            Finding::new("")
                .file(&segment_path)
                .offset(u64::from(entry.offset))
                .object(id)
        };
        let image = match files.read_image(entry.segment, entry.offset, entry.length, id) {
            Ok(image) => image,
            Err(e) => {
                sink.push(Finding::from_store_error(&e).object(id));
                return None;
            }
        };
        if image.version != entry.version {
            sink.push(at().what(format!(
                "image of {id} has version {} but its object table entry says {}",
                image.version, entry.version
            )));
        }
        let object = match Object::decode(&image.body) {
            Ok(object) => object,
            Err(e) => {
                sink.push(at().what(format!("image body of {id} does not decode: {e}")));
                return None;
            }
        };
        if object.class != entry.class {
            sink.push(at().what(format!(
                "image of {id} is of {} but its object table entry says {}",
                object.class, entry.class
            )));
        }
        match self.class(object.class) {
            None => sink.push(at().what(format!(
                "image of {id} is of {}, which is neither in the checkpoint nor registered in the WAL after it",
                object.class
            ))),
            Some(class) => {
                if let Some(problem) = object.check_against(&class.def) {
                    sink.push(at().what(format!(
                        "image of {id} does not fit its class {}: {problem}",
                        class.def.name
                    )));
                }
            }
        }
        Some(object)
    }

    /// `id`'s state as of the end of the log: its image (if `with_content`)
    /// with the WAL's changes after the checkpoint applied. Problems of the
    /// WAL changes go into `sink`; problems of the entry or image do not
    /// (they make the state `Unknown`).
    pub fn object(&self, id: ObjectId, with_content: bool, sink: &mut Vec<Finding>) -> Replayed {
        let (base, entry) = self.base(id, with_content);
        let mut replayed = self.replay(id, base, sink);
        replayed.entry = entry;
        replayed
    }

    /// Whether `id` exists at the end of the log (existence only: no image
    /// is read). `None`: cannot tell (damaged entry).
    pub fn exists(&self, id: ObjectId) -> Option<bool> {
        let mut sink = Vec::new();
        match self.object(id, false, &mut sink).state {
            State::Live { .. } => Some(true),
            State::Missing | State::Deleted(_) => Some(false),
            State::Unknown => None,
        }
    }

    /// Applies the WAL's changes to `id` on top of `base`, with the store's
    /// rules (module doc). A change that cannot apply is reported into
    /// `sink` and skipped.
    pub fn replay(&self, id: ObjectId, base: Base, sink: &mut Vec<Finding>) -> Replayed {
        let mut state = match base {
            Base::Missing => State::Missing,
            Base::Deleted(lsn) => State::Deleted(lsn),
            Base::Present { object, version } => State::Live { object, version },
            Base::Unknown => State::Unknown,
        };
        let mut changes_applied = 0;
        let Some(events) = self.events.get(&id) else {
            return Replayed {
                state,
                changes_applied,
                entry: None,
            };
        };
        for event in events {
            let Some(record) = self.records.get(event.record()) else {
                continue;
            };
            let lsn = record.lsn;
            let version = match &state {
                State::Live { version, .. } => Some(*version),
                State::Deleted(version) => Some(*version),
                State::Missing | State::Unknown => None,
            };
            if version.is_some_and(|v| v >= lsn) {
                continue;
            }
            let dna = match *event {
                Event::Delete { .. } => {
                    state = State::Deleted(lsn);
                    changes_applied += 1;
                    continue;
                }
                Event::Dna { dna, .. } => match &record.record {
                    StoreRecord::Transaction(tx) => match tx.dnas.get(dna) {
                        Some(dna) => dna,
                        None => continue,
                    },
                    _ => continue,
                },
            };
            let problem = |what: String| self.at_record(record, what).object(id);
            match (&mut state, dna.new_class) {
                (State::Unknown, _) => continue,
                (State::Missing, Some(class)) => {
                    let Some(info) = self.class(class) else {
                        sink.push(problem(format!("{id} created with unknown {class}")));
                        continue;
                    };
                    if let Source::Wal(registered) = info.source
                        && registered >= lsn
                    {
                        sink.push(problem(format!(
                            "{id} created with {class}, which is registered only later, at lsn {registered}"
                        )));
                    }
                    state = State::Live {
                        object: Some(Object::new(class, &info.def)),
                        version: lsn,
                    };
                }
                (State::Live { .. }, None) => {}
                (State::Missing, None) => {
                    sink.push(problem(format!("change to {id}, which does not exist")));
                    continue;
                }
                (State::Deleted(at), _) => {
                    sink.push(problem(format!("change to {id}, deleted at lsn {at}")));
                    continue;
                }
                (State::Live { .. }, Some(_)) => {
                    sink.push(problem(format!("{id} created twice")));
                    continue;
                }
            }
            let State::Live { object, version } = &mut state else {
                continue;
            };
            if let Some(current) = object {
                match self.apply_dna(current, dna) {
                    Ok(next) => *current = next,
                    Err(why) => {
                        sink.push(problem(format!("{id}: {why}")));
                        continue;
                    }
                }
            }
            *version = lsn;
            changes_applied += 1;
        }
        Replayed {
            state,
            changes_applied,
            entry: None,
        }
    }

    /// `object` with `dna`'s field writes and operations applied, or why
    /// they cannot apply (checked before calling `set_field` / `apply`,
    /// which panic on what they were not meant to see).
    fn apply_dna(&self, object: &Object, dna: &Dna) -> Result<Object, String> {
        let Some(info) = self.class(object.class) else {
            return Err(format!("unknown {}", object.class));
        };
        let def = &info.def;
        let mut next = object.clone();
        for (slot, value) in &dna.fields {
            let field = def
                .fields
                .get(*slot as usize)
                .ok_or_else(|| format!("{} has no slot {slot}", def.name))?;
            if !value.fits(field.kind) {
                return Err(format!(
                    "slot {slot} ({}) cannot hold {}",
                    field.name,
                    value.kind_name()
                ));
            }
            match &next.body {
                Body::Fields(values) if (*slot as usize) < values.len() => {}
                _ => {
                    return Err(format!(
                        "field write to slot {slot} of a {} with {} values",
                        next.kind().name(),
                        next.len()
                    ));
                }
            }
            next.set_field(*slot, value.clone());
        }
        for op in &dna.ops {
            next.check_op(op)?;
            next.apply(op);
        }
        Ok(next)
    }

    fn load_checkpoint(&mut self, report: &mut FsckReport) {
        let path = self.root.join(CHECKPOINT_FILE);
        match Checkpoint::read(&self.root) {
            Ok(Some(checkpoint)) => {
                report.counts.checkpoint_lsn = Some(checkpoint.lsn.0);
                self.checkpoint = Some(checkpoint);
            }
            Ok(None) => report.problem(Finding::new(
                "missing: every opened data dir has a checkpoint (replaying the whole WAL instead)",
            )
            .file(&path)),
            Err(e) => report.problem(
                Finding::from_store_error(&e)
                    .file(&path)
                    .what_prefix("does not decode (replaying the whole WAL instead): "),
            ),
        }
        let tmp = self.root.join("CHECKPOINT.tmp");
        if tmp.exists() {
            report.note(
                Finding::new("left over from a checkpoint write a crash interrupted; ignored")
                    .file(&tmp),
            );
        }
        if let Some(checkpoint) = &self.checkpoint {
            self.classes = checkpoint
                .classes
                .iter()
                .enumerate()
                .map(|(i, def)| ClassInfo {
                    id: ClassId(i as u32 + 1),
                    def: def.clone(),
                    source: Source::Checkpoint,
                })
                .collect();
            let mut roots = BTreeMap::new();
            for (name, object) in &checkpoint.roots {
                roots.entry(name.clone()).or_insert(RootInfo {
                    name: name.clone(),
                    object: *object,
                    source: Source::Checkpoint,
                });
            }
            self.roots = roots.into_values().collect();
            self.next_id = checkpoint.next_id.max(1);
            self.replay_from = checkpoint.lsn;
        }
    }

    fn load_wal(&mut self, report: &mut FsckReport) {
        let dir = self.wal_dir();
        if !dir.is_dir() {
            report.problem(Finding::new("missing: the WAL directory").file(&dir));
            return;
        }
        let listing = match walscan::list(&dir) {
            Ok(listing) => listing,
            Err(e) => {
                report.problem(Finding::new(format!("cannot list: {e}")).file(&dir));
                return;
            }
        };
        self.wal.segment_files = listing.segments.len();
        self.wal.spare_files = listing.spares.len();
        for path in &listing.misnamed {
            report.note(
                Finding::new(
                    "ends in .wal but is not named {first_lsn:016x}.wal; the WAL ignores it",
                )
                .file(path),
            );
        }
        for path in &listing.partials {
            report.note(
                Finding::new(
                    "a spare being zero-filled when the server stopped; deleted on the next open",
                )
                .file(path),
            );
        }
        if listing.segments.is_empty() {
            report.problem(Finding::new("no WAL segment files").file(&dir));
            return;
        }
        let count = listing.segments.len();
        // The replay run: records from the checkpoint on, each starting
        // where the previous ended. `None` until the checkpoint LSN is met.
        let mut replay_end: Option<Lsn> = None;
        let mut replay_stopped = false;
        let mut previous: Option<(PathBuf, Option<Lsn>)> = None;
        for (index, file) in listing.segments.iter().enumerate() {
            let read = walscan::read_segment(file);
            let is_last = index + 1 == count;
            let file_index = self.wal_files.len();
            self.wal_files.push(file.path.clone());
            report.counts.wal_file_bytes += read.file_bytes;
            for damage in &read.damage {
                report_segment_damage(report, file, damage, is_last);
            }
            let first = read.header.map_or(file.named_lsn, |h| h.first_lsn);
            if index == 0 {
                self.wal.first_lsn = first;
                if self.checkpoint.is_none() {
                    self.replay_from = first;
                }
            }
            // A segment that ends in damage says nothing about where the
            // next one should start (its damage is reported already).
            if let Some((previous_path, Some(end))) = &previous
                && *end != first
            {
                report.problem(
                    Finding::new(format!(
                        "gap in the WAL: the previous segment ({}) ends at lsn {end}, this one starts at lsn {first}",
                        previous_path.display()
                    ))
                    .file(&file.path)
                    .lsn(first),
                );
            }
            previous = Some((
                file.path.clone(),
                read.end_lsn.filter(|_| !read.has_torn_end()),
            ));
            for raw in &read.records {
                self.wal.records += 1;
                self.wal.record_bytes += raw.end.0 - raw.lsn.0;
                self.wal.end_lsn = self.wal.end_lsn.max(raw.end);
                if raw.lsn < self.replay_from && self.replay_from < raw.end {
                    report.problem(
                        Finding::new(format!(
                            "the checkpoint lsn {} falls inside the record at lsn {}",
                            self.replay_from, raw.lsn
                        ))
                        .file(&file.path)
                        .offset(raw.offset)
                        .lsn(raw.lsn),
                    );
                }
                if raw.lsn == self.replay_from || raw.end == self.replay_from {
                    replay_end.get_or_insert(self.replay_from);
                }
                if raw.lsn < self.replay_from {
                    continue;
                }
                if replay_stopped || replay_end != Some(raw.lsn) {
                    replay_stopped = true;
                    self.wal.records_not_replayed += 1;
                    continue;
                }
                replay_end = Some(raw.end);
                match StoreRecord::decode(raw.kind, &raw.payload) {
                    Ok(record) => self.records.push(WalRecord {
                        lsn: raw.lsn,
                        end: raw.end,
                        file: file_index,
                        offset: raw.offset,
                        record,
                    }),
                    Err(e) => report.problem(
                        Finding::new(format!(
                            "record of kind {} does not decode as a store record: payload {e}",
                            raw.kind
                        ))
                        .file(&file.path)
                        .offset(raw.offset)
                        .lsn(raw.lsn),
                    ),
                }
            }
        }
        if self.wal.records == 0 {
            self.wal.end_lsn = self.wal.first_lsn;
            if self.replay_from == self.wal.first_lsn {
                replay_end = Some(self.replay_from);
            }
        }
        self.wal.replay_end = replay_end.unwrap_or(self.replay_from);
        if self.wal.records_not_replayed > 0 {
            report.note(
                Finding::new(format!(
                    "{} valid records lie after a hole in the log at lsn {}; they were not replayed",
                    self.wal.records_not_replayed, self.wal.replay_end
                ))
                .file(&dir),
            );
        }
        if let Some(checkpoint) = &self.checkpoint {
            let path = self.root.join(CHECKPOINT_FILE);
            if checkpoint.lsn < self.wal.first_lsn || checkpoint.lsn > self.wal.end_lsn {
                report.problem(
                    Finding::new(format!(
                        "checkpoint lsn {} lies outside the WAL ({} to {})",
                        checkpoint.lsn, self.wal.first_lsn, self.wal.end_lsn
                    ))
                    .file(&path)
                    .lsn(checkpoint.lsn),
                );
            } else if replay_end.is_none() {
                report.problem(
                    Finding::new(format!(
                        "checkpoint lsn {} is not the start of a readable WAL record: the WAL after the checkpoint cannot be replayed",
                        checkpoint.lsn
                    ))
                    .file(&path)
                    .lsn(checkpoint.lsn),
                );
            }
        }
        report.counts.wal_segments = self.wal.segment_files as u64;
        report.counts.wal_spares = self.wal.spare_files as u64;
        report.counts.wal_records = self.wal.records;
        report.counts.wal_record_bytes = self.wal.record_bytes;
        report.counts.wal_first_lsn = Some(self.wal.first_lsn.0);
        report.counts.wal_end_lsn = Some(self.wal.end_lsn.0);
        report.counts.wal_replay_end_lsn = Some(self.wal.replay_end.0);
    }

    /// Applies the catalog effects of the records after the checkpoint
    /// (classes, id blocks, roots) and indexes their changes by object.
    fn apply_catalog(&mut self, report: &mut FsckReport) {
        report.counts.wal_records_replayed = self.records.len() as u64;
        let mut roots: BTreeMap<String, RootInfo> =
            self.roots.drain(..).map(|r| (r.name.clone(), r)).collect();
        let mut problems = Vec::new();
        for (index, record) in self.records.iter().enumerate() {
            match &record.record {
                StoreRecord::Class(id, def) => {
                    let expected = self.classes.len() as u32 + 1;
                    let known = (id.0 as usize)
                        .checked_sub(1)
                        .and_then(|i| self.classes.get(i));
                    match known {
                        Some(known) if known.def == *def => {}
                        Some(known) => problems.push((
                            index,
                            format!(
                                "{id} registered again with another definition ({} vs {})",
                                def.name, known.def.name
                            ),
                        )),
                        None if id.0 == expected => self.classes.push(ClassInfo {
                            id: *id,
                            def: def.clone(),
                            source: Source::Wal(record.lsn),
                        }),
                        None => problems.push((
                            index,
                            format!("{id} registered when class#{expected} was next"),
                        )),
                    }
                }
                StoreRecord::IdBlock { first, end } => {
                    if first.0 < self.next_id {
                        problems.push((
                            index,
                            format!(
                                "id block {}..{} overlaps ids already handed out (next id was {})",
                                first.0, end.0, self.next_id
                            ),
                        ));
                    }
                    self.next_id = self.next_id.max(end.0);
                }
                StoreRecord::Delete(ids) => {
                    for id in ids {
                        self.events
                            .entry(*id)
                            .or_default()
                            .push(Event::Delete { record: index });
                    }
                }
                StoreRecord::Transaction(tx) => {
                    for (dna_index, dna) in tx.dnas.iter().enumerate() {
                        self.events.entry(dna.object).or_default().push(Event::Dna {
                            record: index,
                            dna: dna_index,
                        });
                    }
                    for (name, id) in &tx.roots {
                        roots.entry(name.clone()).or_insert(RootInfo {
                            name: name.clone(),
                            object: *id,
                            source: Source::Wal(record.lsn),
                        });
                    }
                }
            }
        }
        for (index, what) in problems {
            if let Some(record) = self.records.get(index) {
                report.problem(self.at_record(record, what));
            }
        }
        self.roots = roots.into_values().collect();
    }

    fn load_table(&mut self, report: &mut FsckReport) {
        let path = self.table_path();
        if !path.exists() {
            report.problem(Finding::new("missing: the object table").file(&path));
            return;
        }
        match ObjectTable::open_read_only(&path) {
            Ok(table) => {
                report.counts.table_slots = table.slots();
                self.table = Some(table);
            }
            Err(e) => report.problem(Finding::from_store_error(&e).file(&path)),
        }
    }

    fn load_data_files(&mut self, report: &mut FsckReport) {
        let dir = self.segments_dir();
        // `DataFiles::open_dir` creates a missing directory: never call it
        // without one.
        if !dir.is_dir() {
            report.problem(Finding::new("missing: the data segment directory").file(&dir));
            return;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().ends_with(".partial") {
                    report.note(
                        Finding::new(
                            "a data segment whose creation a crash interrupted; replaced when that segment is created again",
                        )
                        .file(entry.path()),
                    );
                }
            }
        }
        match DataFiles::open_dir(&dir) {
            Ok(files) => self.files = Some(files),
            Err(e) => report
                .problem(Finding::from_store_error(&e).what_prefix("data segments not checked: ")),
        }
    }
}

/// Takes a shared `flock` on the WAL's lock file, if there is one, so that
/// a server cannot open the data dir while the tool reads it, and so that
/// the tool refuses to read while a server runs. Opening read-only and
/// locking change no byte and no mtime.
fn lock_shared(path: &Path) -> Result<Option<File>, ToolError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ToolError::io("open", path, e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(ToolError::InUse {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(ToolError::io("lock", path, e)),
    }
}

fn report_segment_damage(
    report: &mut FsckReport,
    file: &WalFile,
    damage: &SegmentDamage,
    is_last: bool,
) {
    let mut finding = Finding::new(damage.to_string()).file(&file.path);
    if let Some(offset) = damage.offset() {
        finding = finding.offset(offset);
    }
    if let Some(lsn) = damage.lsn() {
        finding = finding.lsn(lsn);
    }
    match damage {
        SegmentDamage::Torn { .. } if is_last => report.note(finding.what_suffix(
            "; at the end of the last segment: recovery discards it on the next open",
        )),
        SegmentDamage::Torn { .. } => {
            report.problem(finding.what_suffix(
                "; not in the last segment, so a write that had been synced is damaged",
            ))
        }
        _ => report.problem(finding),
    }
}
