//! `tc-fsck`'s checks: everything in a data dir, every problem reported.
//!
//! Owns: what is checked, what counts as a problem (exit 1) and what is
//! only a note, the report (`FsckReport`) and its text and JSON forms.
//! Not: reading the files (`view.rs`, `walscan.rs`), the command line
//! (`src/bin/tc-fsck.rs`).
//!
//! Checks, in order (`docs/tools.md` lists them with examples):
//! 1. `CHECKPOINT` is there and decodes (magic, version, CRC).
//! 2. WAL: every segment's header and frames are valid, names match
//!    headers, segments follow each other without gaps, the checkpoint LSN
//!    is a record boundary within the log, every record from it on decodes
//!    as a store record and applies (classes, id blocks). A torn tail at
//!    the end of the last segment is a note (recovery discards it).
//! 3. Data segments scan without corruption; a torn tail is a note unless
//!    a table entry points at or past it.
//! 4. Object table: header, every entry's CRC, and for each live entry an
//!    existing segment and an image that verifies (CRC, object id, version)
//!    and decodes, of the entry's class, a known class, fitting it.
//! 5. Cross-links, as of the end of the log (images with the WAL applied):
//!    every reference and every root names an object that exists; every
//!    object id in the table and the WAL is below the next id to hand out.
//!
//! Invariant: never writes to the data dir (see `view.rs`); never panics on
//! bad bytes: every damage is a `Finding`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Serialize;
use tc_heap_store::{ENTRY_DELETED, Lsn, ObjectId, StoreError};

use crate::error::ToolError;
use crate::view::{Base, HeapView, Source, State, table_slot_offset};

/// One problem or note: what, and where (each part where it applies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Path of the file at fault.
    pub file: Option<String>,
    /// Byte offset in that file.
    pub offset: Option<u64>,
    pub lsn: Option<u64>,
    /// Object id.
    pub object: Option<u64>,
    pub what: String,
}

impl Finding {
    pub fn new(what: impl Into<String>) -> Finding {
        Finding {
            file: None,
            offset: None,
            lsn: None,
            object: None,
            what: what.into(),
        }
    }

    /// The file, offset and message of a store error.
    pub fn from_store_error(error: &StoreError) -> Finding {
        match error {
            StoreError::Corrupt { path, offset, what } => Finding {
                file: Some(path.display().to_string()),
                offset: *offset,
                lsn: None,
                object: None,
                what: what.clone(),
            },
            StoreError::Io { op, path, source } => {
                Finding::new(format!("{op}: {source}")).file(path)
            }
            other => Finding::new(other.to_string()),
        }
    }

    pub fn file(mut self, path: impl AsRef<Path>) -> Finding {
        self.file = Some(path.as_ref().display().to_string());
        self
    }

    pub fn offset(mut self, offset: u64) -> Finding {
        self.offset = Some(offset);
        self
    }

    pub fn lsn(mut self, lsn: Lsn) -> Finding {
        self.lsn = Some(lsn.0);
        self
    }

    pub fn object(mut self, id: ObjectId) -> Finding {
        self.object = Some(id.0);
        self
    }

    pub fn what(mut self, what: impl Into<String>) -> Finding {
        self.what = what.into();
        self
    }

    pub fn what_prefix(mut self, prefix: &str) -> Finding {
        self.what = format!("{prefix}{}", self.what);
        self
    }

    pub fn what_suffix(mut self, suffix: impl AsRef<str>) -> Finding {
        self.what.push_str(suffix.as_ref());
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = Vec::new();
        if let Some(file) = &self.file {
            place.push(file.clone());
        }
        if let Some(offset) = self.offset {
            place.push(format!("offset {offset}"));
        }
        if let Some(lsn) = self.lsn {
            place.push(format!("lsn {}", Lsn(lsn)));
        }
        if let Some(object) = self.object {
            place.push(format!("object {}", ObjectId(object)));
        }
        if place.is_empty() {
            f.write_str(&self.what)
        } else {
            write!(f, "{}: {}", place.join(", "), self.what)
        }
    }
}

/// What was checked, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub checkpoint_lsn: Option<u64>,
    pub checkpoint_classes: u64,
    pub checkpoint_roots: u64,
    pub wal_segments: u64,
    pub wal_spares: u64,
    pub wal_file_bytes: u64,
    pub wal_records: u64,
    pub wal_record_bytes: u64,
    pub wal_first_lsn: Option<u64>,
    /// End of the last valid record.
    pub wal_end_lsn: Option<u64>,
    /// End of the records replayed from the checkpoint (`wal_end_lsn`
    /// unless the log has a hole after the checkpoint).
    pub wal_replay_end_lsn: Option<u64>,
    /// Records from the checkpoint to the end of the log.
    pub wal_records_replayed: u64,
    pub data_segments: u64,
    pub data_file_bytes: u64,
    pub data_images: u64,
    pub data_image_bytes: u64,
    pub table_slots: u64,
    pub table_entries: u64,
    pub table_live_entries: u64,
    pub table_deleted_entries: u64,
    /// Objects that exist at the end of the log.
    pub objects_live: u64,
    pub objects_created_in_wal: u64,
    pub objects_deleted_in_wal: u64,
    pub references_checked: u64,
    pub classes: u64,
    pub roots: u64,
    pub next_id: u64,
}

/// The outcome of `check`: problems (the data dir is damaged or
/// inconsistent), notes (worth knowing, harmless), counts.
#[derive(Debug, Clone, Default)]
pub struct FsckReport {
    pub data_dir: String,
    pub problems: Vec<Finding>,
    pub notes: Vec<Finding>,
    pub counts: Counts,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn problem(&mut self, finding: Finding) {
        self.problems.push(finding);
    }

    pub fn note(&mut self, finding: Finding) {
        self.notes.push(finding);
    }

    /// `{"clean", "problems", "notes", "counts"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "clean": self.is_clean(),
            "problems": self.problems,
            "notes": self.notes,
            "counts": self.counts,
        })
    }

    /// The last line of the text report: `clean`, `1 problem`, `N problems`.
    pub fn verdict(&self) -> String {
        match self.problems.len() {
            0 => "clean".to_string(),
            1 => "1 problem".to_string(),
            n => format!("{n} problems"),
        }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let lsn = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| Lsn(v).to_string());
        writeln!(f, "tc-fsck {}", self.data_dir)?;
        writeln!(f, "checked:")?;
        match c.checkpoint_lsn {
            Some(at) => writeln!(
                f,
                "  checkpoint     lsn {}, {}, {}",
                Lsn(at),
                plural(c.checkpoint_classes, "class", "classes"),
                plural(c.checkpoint_roots, "root", "roots"),
            )?,
            None => writeln!(f, "  checkpoint     unusable")?,
        }
        writeln!(
            f,
            "  wal            {} (+{}), {} ({} B), log {} to {}, {} replayed from the checkpoint",
            plural(c.wal_segments, "segment", "segments"),
            plural(c.wal_spares, "spare", "spares"),
            plural(c.wal_records, "record", "records"),
            c.wal_record_bytes,
            lsn(c.wal_first_lsn),
            lsn(c.wal_end_lsn),
            plural(c.wal_records_replayed, "record", "records"),
        )?;
        writeln!(
            f,
            "  data segments  {}, {} ({} B in {} B of files)",
            plural(c.data_segments, "segment", "segments"),
            plural(c.data_images, "image", "images"),
            c.data_image_bytes,
            c.data_file_bytes,
        )?;
        writeln!(
            f,
            "  object table   {}, {} ({} live, {} deleted)",
            plural(c.table_slots, "slot", "slots"),
            plural(c.table_entries, "entry", "entries"),
            c.table_live_entries,
            c.table_deleted_entries,
        )?;
        writeln!(
            f,
            "  objects        {} live at the end of the log ({} created and {} deleted in the WAL), {}, {}, {}, next id {}",
            c.objects_live,
            c.objects_created_in_wal,
            c.objects_deleted_in_wal,
            plural(c.references_checked, "reference", "references"),
            plural(c.classes, "class", "classes"),
            plural(c.roots, "root", "roots"),
            c.next_id,
        )?;
        if !self.problems.is_empty() {
            writeln!(f, "problems:")?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
        }
        if !self.notes.is_empty() {
            writeln!(f, "notes:")?;
            for n in &self.notes {
                writeln!(f, "  {n}")?;
            }
        }
        writeln!(f, "{}", self.verdict())
    }
}

/// How the scan of a data segment ended.
#[derive(Debug, Clone)]
enum SegmentEnd {
    Clean,
    /// Torn tail at this offset (cause), and whether an entry points at or
    /// past it.
    Torn {
        offset: u64,
        cause: String,
        referenced: bool,
    },
    /// Corruption (reported) at this offset; or the segment is unusable.
    Damaged,
}

/// Checks the data dir at `root`. `Err` only when the tool cannot do its
/// work at all (not a directory, a server holds it); damage is in the report.
pub fn check(root: &Path) -> Result<FsckReport, ToolError> {
    let mut report = FsckReport {
        data_dir: root.display().to_string(),
        ..FsckReport::default()
    };
    let view = HeapView::load(root, &mut report)?;
    if let Some(checkpoint) = &view.checkpoint {
        report.counts.checkpoint_classes = checkpoint.classes.len() as u64;
        report.counts.checkpoint_roots = checkpoint.roots.len() as u64;
    }
    report.counts.classes = view.classes.len() as u64;
    report.counts.roots = view.roots.len() as u64;
    report.counts.next_id = view.next_id;
    let mut ends = check_data_segments(&view, &mut report);
    let checked_in_table = check_table(&view, &mut ends, &mut report);
    check_wal_objects(&view, &checked_in_table, &mut report);
    check_roots(&view, &mut report);
    for (segment, end) in &ends {
        if let SegmentEnd::Torn {
            offset,
            cause,
            referenced: false,
        } = end
            && let Some(files) = &view.files
        {
            report.note(
                Finding::new(format!(
                    "torn tail (an append a crash interrupted): {cause}; no object table entry points at or past it"
                ))
                .file(files.segment_path(*segment))
                .offset(*offset),
            );
        }
    }
    if view.checkpoint.is_none() {
        report.note(Finding::new(
            "without a checkpoint, classes, roots and ids before the oldest WAL record are unknown: checks that need them are partial, ids are not checked",
        ));
    }
    Ok(report)
}

fn check_data_segments(view: &HeapView, report: &mut FsckReport) -> HashMap<u32, SegmentEnd> {
    let mut ends = HashMap::new();
    let Some(files) = &view.files else {
        return ends;
    };
    for segment in files.segment_ids() {
        report.counts.data_segments += 1;
        match files.file_len(segment) {
            Ok(len) => report.counts.data_file_bytes += len,
            Err(e) => report.problem(Finding::from_store_error(&e)),
        }
        let mut scanner = match files.scan(segment) {
            Ok(scanner) => scanner,
            Err(e) => {
                report.problem(Finding::from_store_error(&e));
                ends.insert(segment, SegmentEnd::Damaged);
                continue;
            }
        };
        let mut end = None;
        for image in scanner.by_ref() {
            match image {
                Ok(image) => {
                    report.counts.data_images += 1;
                    report.counts.data_image_bytes += u64::from(image.record_bytes);
                }
                Err(e) => {
                    report.problem(Finding::from_store_error(&e));
                    report.note(
                        Finding::from_store_error(&e).what(
                            "the scan of this segment stops at the corruption: the images after it were checked only where the object table points",
                        ),
                    );
                    end = Some(SegmentEnd::Damaged);
                }
            }
        }
        let end = end.unwrap_or_else(|| match scanner.end() {
            Some(tc_heap_store::datafile::ScanEnd::Torn { offset, cause, .. }) => {
                SegmentEnd::Torn {
                    offset: *offset,
                    cause: cause.to_string(),
                    referenced: false,
                }
            }
            _ => SegmentEnd::Clean,
        });
        ends.insert(segment, end);
    }
    ends
}

/// Checks every table entry and the live objects it holds; returns the ids
/// with a live entry (whose WAL changes were replayed here).
fn check_table(
    view: &HeapView,
    ends: &mut HashMap<u32, SegmentEnd>,
    report: &mut FsckReport,
) -> HashSet<ObjectId> {
    let mut live_in_table = HashSet::new();
    let Some(table) = &view.table else {
        return live_in_table;
    };
    let table_path = view.table_path();
    let segments: HashSet<u32> = view
        .files
        .as_ref()
        .map(|f| f.segment_ids().into_iter().collect())
        .unwrap_or_default();
    for (id, entry) in table.iter() {
        report.counts.table_entries += 1;
        let slot = || {
            Finding::new("")
                .file(&table_path)
                .offset(table_slot_offset(id))
                .object(id)
        };
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                report.problem(Finding::from_store_error(&e).object(id));
                continue;
            }
        };
        check_id(view, id, slot, report);
        if entry.version >= view.wal.end_lsn && entry.version.0 > 0 {
            report.problem(slot().what(format!(
                "entry version {} is not the LSN of a record in the log (which ends at {}): the WAL lost records",
                entry.version, view.wal.end_lsn
            )));
        }
        if entry.flags & ENTRY_DELETED != 0 {
            report.counts.table_deleted_entries += 1;
            continue;
        }
        report.counts.table_live_entries += 1;
        live_in_table.insert(id);
        let mut image = None;
        if view.files.is_some() && !segments.contains(&entry.segment) {
            let path = view
                .segments_dir()
                .join(tc_heap_store::datafile::segment_file_name(entry.segment));
            report.problem(slot().what(format!(
                "entry of {id} points at data segment {} ({}), which does not exist",
                entry.segment,
                path.display()
            )));
        } else {
            if let Some(SegmentEnd::Torn {
                offset, referenced, ..
            }) = ends.get_mut(&entry.segment)
                && u64::from(entry.offset) + u64::from(entry.length) > *offset
            {
                *referenced = true;
                let path = view.files.as_ref().map(|f| f.segment_path(entry.segment));
                report.problem(
                    Finding::new(format!(
                        "the entry of {id} points at or past the torn tail at offset {offset} of this segment: an image the table relies on is incomplete"
                    ))
                    .file(path.unwrap_or_default())
                    .offset(u64::from(entry.offset))
                    .object(id),
                );
            }
            let mut sink = Vec::new();
            let object = view.read_image(id, &entry, &mut sink);
            image = object.filter(|_| sink.is_empty());
            for finding in sink {
                report.problem(finding);
            }
        }
        // The object as of the end of the log.
        let base = Base::Present {
            object: image,
            version: entry.version,
        };
        let mut sink = Vec::new();
        let replayed = view.replay(id, base, &mut sink);
        report.problems.extend(sink);
        match replayed.state {
            State::Live { object, .. } => {
                report.counts.objects_live += 1;
                if let Some(object) = object {
                    let place = view
                        .files
                        .as_ref()
                        .map(|f| {
                            Finding::new("")
                                .file(f.segment_path(entry.segment))
                                .offset(u64::from(entry.offset))
                        })
                        .unwrap_or_else(|| Finding::new(""))
                        .object(id);
                    let after = if replayed.changes_applied > 0 {
                        format!(
                            " (its image with {} WAL changes applied)",
                            replayed.changes_applied
                        )
                    } else {
                        String::new()
                    };
                    check_references(view, id, &object, &place, &after, report);
                }
            }
            State::Deleted(_) => report.counts.objects_deleted_in_wal += 1,
            State::Missing | State::Unknown => {}
        }
    }
    live_in_table
}

/// Objects the WAL changes that have no live table entry: created (or
/// deleted) after the checkpoint.
fn check_wal_objects(view: &HeapView, live_in_table: &HashSet<ObjectId>, report: &mut FsckReport) {
    for id in view.wal_objects() {
        if live_in_table.contains(&id) {
            continue;
        }
        let first_change = view.first_change(id);
        let at_first = || match first_change {
            Some(record) => view.at_record(record, "").object(id),
            None => Finding::new("").object(id),
        };
        if view.table.is_none() || view.entry(id).is_ok_and(|e| e.is_none()) {
            // Ids with a (deleted) entry were checked with the table.
            check_id(view, id, at_first, report);
        }
        let (base, _) = view.base(id, true);
        if matches!(base, Base::Unknown) {
            continue;
        }
        let was_missing = matches!(base, Base::Missing);
        let mut sink = Vec::new();
        let replayed = view.replay(id, base, &mut sink);
        report.problems.extend(sink);
        match replayed.state {
            State::Live { object, .. } => {
                report.counts.objects_live += 1;
                if was_missing {
                    report.counts.objects_created_in_wal += 1;
                }
                if let Some(object) = object {
                    let place = match view.last_change(id) {
                        Some(record) => view.at_record(record, "").object(id),
                        None => Finding::new("").object(id),
                    };
                    check_references(
                        view,
                        id,
                        &object,
                        &place,
                        " (as created and changed in the WAL)",
                        report,
                    );
                }
            }
            State::Deleted(_) if was_missing => {}
            State::Deleted(_) => report.counts.objects_deleted_in_wal += 1,
            State::Missing | State::Unknown => {}
        }
    }
}

fn check_references(
    view: &HeapView,
    id: ObjectId,
    object: &tc_heap_store::model::Object,
    place: &Finding,
    after: &str,
    report: &mut FsckReport,
) {
    let mut targets = Vec::new();
    object.references(&mut |to| targets.push(to));
    for to in targets {
        report.counts.references_checked += 1;
        if view.exists(to) == Some(false) {
            report.problem(
                place
                    .clone()
                    .what(format!("{id} references {to}, which does not exist{after}")),
            );
        }
    }
}

fn check_roots(view: &HeapView, report: &mut FsckReport) {
    for root in &view.roots {
        if view.exists(root.object) != Some(false) {
            continue;
        }
        let place = match root.source {
            Source::Checkpoint => {
                Finding::new("").file(view.root.join(tc_heap_store::checkpoint::CHECKPOINT_FILE))
            }
            Source::Wal(lsn) => match view.record_at(lsn) {
                Some(record) => view.at_record(record, ""),
                None => Finding::new("").lsn(lsn),
            },
        };
        report.problem(place.object(root.object).what(format!(
            "root {:?} references {}, which does not exist",
            root.name, root.object
        )));
    }
}

/// Every object id in the table and the WAL is below the next id to hand out.
fn check_id(
    view: &HeapView,
    id: ObjectId,
    place: impl FnOnce() -> Finding,
    report: &mut FsckReport,
) {
    if view.checkpoint.is_some() && id.0 >= view.next_id {
        report.problem(place().what(format!(
            "{id} is not below the next id to hand out ({}): ids could be handed out twice",
            view.next_id
        )));
    }
}
