//! `tc-dump`'s subcommands: roots, classes, one object, the graph under a
//! root, WAL records; as text or JSON.
//!
//! Owns: what each subcommand prints and the `Found` outcome (exit 1 when
//! the object or root asked for does not exist).
//! Not: reading the data dir (`view.rs`, `walscan.rs`), value formatting
//! (`render.rs`).
//! Objects are shown as of the end of the log: the table image with the
//! WAL's changes after the checkpoint applied (`HeapView::object`).
//! Invariant: never writes to the data dir; output goes to the writer
//! given (stdout), warnings about damage to the caller (stderr).

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{Value as Json, json};
use tc_heap_store::dna::{LockRef, Transaction};
use tc_heap_store::model::{ClassKind, Object};
use tc_heap_store::records::StoreRecord;
use tc_heap_store::{ClassDef, ClassId, Lsn, ObjectId};

use crate::error::ToolError;
use crate::render;
use crate::view::{ClassInfo, HeapView, Source, State};
use crate::walscan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Whether what was asked for exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Yes,
    No,
}

fn io_error(e: io::Error) -> ToolError {
    ToolError::io("write", "<stdout>", e)
}

fn write_json(out: &mut dyn Write, value: &Json) -> Result<(), ToolError> {
    serde_json::to_writer(&mut *out, value).map_err(|e| io_error(e.into()))?;
    writeln!(out).map_err(io_error)
}

pub fn kind_short(kind: ClassKind) -> &'static str {
    match kind {
        ClassKind::Plain => "plain",
        ClassKind::Map => "map",
        ClassKind::List => "list",
        ClassKind::Set => "set",
        ClassKind::Queue => "queue",
    }
}

fn source_text(source: Source) -> String {
    match source {
        Source::Checkpoint => "checkpoint".to_string(),
        Source::Wal(lsn) => format!("wal lsn {lsn}"),
    }
}

fn source_json(source: Source) -> Json {
    match source {
        Source::Checkpoint => json!("checkpoint"),
        Source::Wal(lsn) => json!({ "wal_lsn": lsn.0 }),
    }
}

fn class_name(view: &HeapView, class: Option<ClassId>) -> String {
    match class {
        Some(class) => view
            .class(class)
            .map_or_else(|| format!("{class} (unknown)"), |c| c.def.name.clone()),
        None => "?".to_string(),
    }
}

fn class_json(info: &ClassInfo) -> Json {
    json!({
        "id": info.id.0,
        "name": info.def.name,
        "kind": kind_short(info.def.kind),
        "fields": info.def.fields.iter().enumerate().map(|(slot, f)| json!({
            "slot": slot,
            "name": f.name,
            "kind": f.kind.to_string(),
        })).collect::<Vec<_>>(),
        "source": source_json(info.source),
    })
}

/// `roots`: every root, its object and that object's class.
pub fn roots(view: &HeapView, format: Format, out: &mut dyn Write) -> Result<(), ToolError> {
    match format {
        Format::Json => {
            let roots: Vec<Json> = view
                .roots
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "object": r.object.0,
                        "class": view.class_of(r.object).and_then(|c| view.class(c)).map(|c| c.def.name.clone()),
                        "source": source_json(r.source),
                    })
                })
                .collect();
            write_json(out, &json!({ "roots": roots }))
        }
        Format::Text => {
            let width = view.roots.iter().map(|r| r.name.len()).max().unwrap_or(0);
            for r in &view.roots {
                writeln!(
                    out,
                    "{:width$}  {:<8} {}  ({})",
                    r.name,
                    r.object.to_string(),
                    class_name(view, view.class_of(r.object)),
                    source_text(r.source),
                )
                .map_err(io_error)?;
            }
            if view.roots.is_empty() {
                writeln!(out, "no roots").map_err(io_error)?;
            }
            Ok(())
        }
    }
}

/// `classes`: every class with its fields, slot by slot.
pub fn classes(view: &HeapView, format: Format, out: &mut dyn Write) -> Result<(), ToolError> {
    match format {
        Format::Json => {
            let classes: Vec<Json> = view.classes.iter().map(class_json).collect();
            write_json(out, &json!({ "classes": classes }))
        }
        Format::Text => {
            for c in &view.classes {
                writeln!(
                    out,
                    "{} {} ({}, {})",
                    c.id,
                    c.def.name,
                    c.def.kind.name(),
                    source_text(c.source)
                )
                .map_err(io_error)?;
                for (slot, field) in c.def.fields.iter().enumerate() {
                    writeln!(out, "  #{slot:<3} {} {}", field.name, field.kind)
                        .map_err(io_error)?;
                }
            }
            if view.classes.is_empty() {
                writeln!(out, "no classes").map_err(io_error)?;
            }
            Ok(())
        }
    }
}

/// The current state of `id`, or why it cannot be read.
fn current(
    view: &HeapView,
    id: ObjectId,
    warnings: &mut Vec<String>,
) -> Result<CurrentObject, ToolError> {
    let mut sink = Vec::new();
    let replayed = view.object(id, true, &mut sink);
    warnings.extend(sink.iter().map(|f| f.to_string()));
    match replayed.state {
        State::Missing => Ok(CurrentObject::Missing),
        State::Deleted(at) => Ok(CurrentObject::Deleted(at)),
        State::Live {
            object: Some(object),
            version,
        } => Ok(CurrentObject::Live {
            object,
            version,
            entry: replayed.entry,
            changes: replayed.changes_applied,
        }),
        State::Live { object: None, .. } | State::Unknown => {
            // Say why: the entry or the image is damaged.
            let mut why = Vec::new();
            match view.entry(id) {
                Err(e) => why.push(e.to_string()),
                Ok(Some(entry)) => {
                    let mut findings = Vec::new();
                    view.read_image(id, &entry, &mut findings);
                    why.extend(findings.iter().map(|f| f.to_string()));
                }
                Ok(None) => why.push("no object table".to_string()),
            }
            if why.is_empty() {
                why.push("its table entry or data segment is unusable".to_string());
            }
            Err(ToolError::Damaged(format!(
                "cannot read {id}: {} (run tc-fsck)",
                why.join("; ")
            )))
        }
    }
}

enum CurrentObject {
    Missing,
    Deleted(Lsn),
    Live {
        object: Object,
        version: Lsn,
        entry: Option<tc_heap_store::table::TableEntry>,
        changes: usize,
    },
}

/// `object ID`: one object as of the end of the log.
pub fn object(
    view: &HeapView,
    id: ObjectId,
    format: Format,
    out: &mut dyn Write,
    warnings: &mut Vec<String>,
) -> Result<Found, ToolError> {
    let current = current(view, id, warnings)?;
    let (object, version, entry, changes) = match current {
        CurrentObject::Missing => {
            match format {
                Format::Json => write_json(out, &json!({ "id": id.0, "state": "missing" }))?,
                Format::Text => writeln!(out, "{id} does not exist").map_err(io_error)?,
            }
            return Ok(Found::No);
        }
        CurrentObject::Deleted(at) => {
            match format {
                Format::Json => write_json(
                    out,
                    &json!({ "id": id.0, "state": "deleted", "deleted_lsn": at.0 }),
                )?,
                Format::Text => writeln!(out, "{id} was deleted at lsn {at}").map_err(io_error)?,
            }
            return Ok(Found::No);
        }
        CurrentObject::Live {
            object,
            version,
            entry,
            changes,
        } => (object, version, entry, changes),
    };
    let info = view.class(object.class);
    let def = info.map(|c| &c.def);
    let image = entry.and_then(|e| {
        view.files.as_ref().map(|f| {
            (
                f.segment_path(e.segment).display().to_string(),
                e.offset,
                e.version,
            )
        })
    });
    match format {
        Format::Json => {
            let mut doc = json!({
                "id": id.0,
                "state": "live",
                "class": { "id": object.class.0, "name": def.map(|d| d.name.clone()) },
                "kind": kind_short(object.kind()),
                "version": version.0,
                "image": image.as_ref().map(|(file, offset, v)| json!({
                    "file": file, "offset": offset, "version": v.0,
                })),
                "wal_changes_applied": changes,
            });
            if let (Json::Object(doc), Json::Object(body)) =
                (&mut doc, render::body_json(&object, def))
            {
                doc.extend(body);
            }
            write_json(out, &doc)?;
        }
        Format::Text => {
            writeln!(
                out,
                "{id} {} ({}, {}) version {version}",
                class_name(view, Some(object.class)),
                object.class,
                object.kind().name(),
            )
            .map_err(io_error)?;
            let origin = match &image {
                Some((file, offset, v)) => {
                    format!("image at {file} offset {offset} (version {v})")
                }
                None => "created in the WAL".to_string(),
            };
            writeln!(
                out,
                "  from: {origin}, {} WAL change{} applied",
                changes,
                if changes == 1 { "" } else { "s" }
            )
            .map_err(io_error)?;
            if object.kind() != ClassKind::Plain {
                let n = object.len();
                let s = if n == 1 { "" } else { "s" };
                writeln!(out, "  {n} element{s}").map_err(io_error)?;
            }
            for line in render::body_lines(&object, def) {
                writeln!(out, "  {line}").map_err(io_error)?;
            }
        }
    }
    Ok(Found::Yes)
}

/// `graph ROOT`: the objects reachable from a root, depth first, each
/// expanded once; `depth_max` limits how deep (the root is depth 0).
pub fn graph(
    view: &HeapView,
    root: &str,
    depth_max: Option<usize>,
    format: Format,
    out: &mut dyn Write,
    warnings: &mut Vec<String>,
) -> Result<Found, ToolError> {
    let Some(binding) = view.root(root) else {
        match format {
            Format::Json => write_json(out, &json!({ "root": root, "state": "missing" }))?,
            Format::Text => writeln!(out, "no root named {root:?}").map_err(io_error)?,
        }
        return Ok(Found::No);
    };
    let mut nodes: Vec<Json> = Vec::new();
    let mut seen: HashSet<ObjectId> = HashSet::new();
    // (label, object, depth, parent), popped in preorder.
    let mut stack: Vec<(String, ObjectId, usize, Option<ObjectId>)> =
        vec![(format!("root {root:?}"), binding.object, 0, None)];
    while let Some((label, id, depth, parent)) = stack.pop() {
        let indent = "  ".repeat(depth);
        if seen.contains(&id) {
            match format {
                Format::Json => nodes.push(json!({
                    "id": id.0, "via": label, "depth": depth, "parent": parent.map(|p| p.0), "state": "seen",
                })),
                Format::Text => {
                    writeln!(out, "{indent}{label} -> {id} (seen)").map_err(io_error)?
                }
            }
            continue;
        }
        let (state, object) = match current(view, id, warnings) {
            Ok(CurrentObject::Live { object, .. }) => ("live", Some(object)),
            Ok(CurrentObject::Missing) => ("missing", None),
            Ok(CurrentObject::Deleted(_)) => ("deleted", None),
            Err(e) => {
                warnings.push(e.to_string());
                ("unreadable", None)
            }
        };
        let Some(object) = object else {
            match format {
                Format::Json => nodes.push(json!({
                    "id": id.0, "via": label, "depth": depth, "parent": parent.map(|p| p.0), "state": state,
                })),
                Format::Text => {
                    writeln!(out, "{indent}{label} -> {id} ({state})").map_err(io_error)?
                }
            }
            continue;
        };
        let def = view.class(object.class).map(|c| &c.def);
        let references = render::labelled_references(&object, def);
        let cut = depth_max.is_some_and(|max| depth >= max) && !references.is_empty();
        let name = class_name(view, Some(object.class));
        match format {
            Format::Json => nodes.push(json!({
                "id": id.0,
                "via": label,
                "depth": depth,
                "parent": parent.map(|p| p.0),
                "state": if cut { "depth limit" } else { "live" },
                "class": name,
                "kind": kind_short(object.kind()),
                "references": references.len(),
            })),
            Format::Text => {
                let size = describe_size(&object, def);
                let more = if cut { " ... (depth limit)" } else { "" };
                writeln!(out, "{indent}{label}: {id} {name}{size}{more}").map_err(io_error)?;
            }
        }
        if cut {
            continue;
        }
        seen.insert(id);
        for (child_label, child) in references.into_iter().rev() {
            stack.push((child_label, child, depth + 1, Some(id)));
        }
    }
    if format == Format::Json {
        write_json(
            out,
            &json!({ "root": root, "object": binding.object.0, "nodes": nodes }),
        )?;
    }
    Ok(Found::Yes)
}

fn describe_size(object: &Object, _def: Option<&ClassDef>) -> String {
    match object.kind() {
        ClassKind::Plain => String::new(),
        kind => format!(
            " ({}, {} element{})",
            kind.name(),
            object.len(),
            if object.len() == 1 { "" } else { "s" }
        ),
    }
}

/// Tracks the class of objects while the WAL is read in LSN order, for
/// field names in `wal`.
struct ClassTracker<'a> {
    view: &'a HeapView,
    created: std::collections::HashMap<ObjectId, ClassId>,
}

impl ClassTracker<'_> {
    fn class_of(&self, id: ObjectId) -> Option<ClassId> {
        self.created
            .get(&id)
            .copied()
            .or_else(|| self.view.class_of(id))
    }
}

fn lock_text(lock: &LockRef) -> String {
    match lock {
        LockRef::None => "none".to_string(),
        LockRef::Object(id) => id.to_string(),
        LockRef::Named(name) => format!("{name:?}"),
    }
}

fn lock_json(lock: &LockRef) -> Json {
    match lock {
        LockRef::None => Json::Null,
        LockRef::Object(id) => json!({ "object": id.0 }),
        LockRef::Named(name) => json!({ "name": name }),
    }
}

fn transaction_text(tx: &Transaction, classes: &mut ClassTracker<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    let roots: Vec<String> = tx
        .roots
        .iter()
        .map(|(name, id)| format!("{name:?} = {id}"))
        .collect();
    lines.push(format!(
        "client {}, seq {}, lock {}, {} DNA{}{}",
        tx.client,
        tx.seq,
        lock_text(&tx.lock),
        tx.dnas.len(),
        if tx.dnas.len() == 1 { "" } else { "s" },
        if roots.is_empty() {
            String::new()
        } else {
            format!(", roots {}", roots.join(", "))
        }
    ));
    for dna in &tx.dnas {
        if let Some(class) = dna.new_class {
            classes.created.insert(dna.object, class);
        }
        let class = classes.class_of(dna.object);
        let def = class.and_then(|c| classes.view.class(c)).map(|c| &c.def);
        let head = match dna.new_class {
            Some(c) => format!(
                "  {} new {} ({c})",
                dna.object,
                class_name(classes.view, Some(c))
            ),
            None => format!("  {} {}", dna.object, class_name(classes.view, class)),
        };
        lines.push(head);
        for (slot, value) in &dna.fields {
            let name = def
                .and_then(|d| d.fields.get(*slot as usize))
                .map_or_else(String::new, |f| format!(" {}", f.name));
            lines.push(format!("    #{slot}{name} = {}", render::value_text(value)));
        }
        for op in &dna.ops {
            lines.push(format!("    {}", render::op_text(op)));
        }
    }
    lines
}

fn transaction_json(tx: &Transaction, classes: &mut ClassTracker<'_>) -> Json {
    let mut dnas = Vec::new();
    for dna in &tx.dnas {
        if let Some(class) = dna.new_class {
            classes.created.insert(dna.object, class);
        }
        let class = classes.class_of(dna.object);
        let def = class.and_then(|c| classes.view.class(c)).map(|c| &c.def);
        dnas.push(json!({
            "object": dna.object.0,
            "new_class": dna.new_class.map(|c| c.0),
            "class": class.and_then(|c| classes.view.class(c)).map(|c| c.def.name.clone()),
            "fields": dna.fields.iter().map(|(slot, value)| json!({
                "slot": slot,
                "name": def.and_then(|d| d.fields.get(*slot as usize)).map(|f| f.name.clone()),
                "value": render::value_json(value),
            })).collect::<Vec<_>>(),
            "ops": dna.ops.iter().map(render::op_json).collect::<Vec<_>>(),
        }));
    }
    json!({
        "client": tx.client,
        "seq": tx.seq,
        "lock": lock_json(&tx.lock),
        "roots": tx.roots.iter().map(|(name, id)| json!({ "name": name, "object": id.0 })).collect::<Vec<_>>(),
        "dnas": dnas,
    })
}

/// `wal`: the records of every segment from `from` on (at most `limit`),
/// decoded. Damage in a segment is a warning; the next segment is read.
pub fn wal(
    view: &HeapView,
    from: Lsn,
    limit: Option<u64>,
    format: Format,
    out: &mut dyn Write,
    warnings: &mut Vec<String>,
) -> Result<(), ToolError> {
    let dir = view.wal_dir();
    let listing = walscan::list(&dir).map_err(|e| ToolError::io("list", &dir, e))?;
    let mut classes = ClassTracker {
        view,
        created: Default::default(),
    };
    let mut printed = 0u64;
    for file in &listing.segments {
        if limit.is_some_and(|l| printed >= l) {
            break;
        }
        let read = walscan::read_segment(file);
        for damage in &read.damage {
            warnings.push(format!("{}: {damage}", file.path.display()));
        }
        for raw in &read.records {
            if limit.is_some_and(|l| printed >= l) {
                break;
            }
            let decoded = StoreRecord::decode(raw.kind, &raw.payload);
            // Creations before `from` still name classes for later records.
            if raw.lsn < from {
                if let Ok(StoreRecord::Transaction(tx)) = &decoded {
                    for dna in &tx.dnas {
                        if let Some(class) = dna.new_class {
                            classes.created.insert(dna.object, class);
                        }
                    }
                }
                continue;
            }
            printed += 1;
            let place = |kind: &str| format!("{:<10} {:<8}", raw.lsn.to_string(), kind);
            match format {
                Format::Json => {
                    let mut doc = json!({
                        "lsn": raw.lsn.0,
                        "end": raw.end.0,
                        "file": file.path.display().to_string(),
                        "offset": raw.offset,
                        "kind_code": raw.kind,
                    });
                    let body = match &decoded {
                        Err(e) => json!({ "kind": "undecodable", "error": e.to_string() }),
                        Ok(StoreRecord::Class(id, def)) => json!({
                            "kind": "class",
                            "class": class_json(&ClassInfo { id: *id, def: def.clone(), source: Source::Wal(raw.lsn) }),
                        }),
                        Ok(StoreRecord::IdBlock { first, end }) => {
                            json!({ "kind": "id block", "first": first.0, "end": end.0 })
                        }
                        Ok(StoreRecord::Delete(ids)) => json!({
                            "kind": "delete",
                            "objects": ids.iter().map(|id| id.0).collect::<Vec<_>>(),
                        }),
                        Ok(StoreRecord::Transaction(tx)) => json!({
                            "kind": "transaction",
                            "transaction": transaction_json(tx, &mut classes),
                        }),
                    };
                    if let (Json::Object(doc), Json::Object(body)) = (&mut doc, body) {
                        doc.extend(body);
                    }
                    write_json(out, &doc)?;
                }
                Format::Text => {
                    let lines = match &decoded {
                        Err(e) => vec![format!(
                            "{}kind {}, does not decode: {e}",
                            place("?"),
                            raw.kind
                        )],
                        Ok(StoreRecord::Class(id, def)) => {
                            let fields: Vec<String> = def
                                .fields
                                .iter()
                                .enumerate()
                                .map(|(slot, f)| format!("#{slot} {} {}", f.name, f.kind))
                                .collect();
                            vec![format!(
                                "{}{id} {} ({}){}",
                                place("class"),
                                def.name,
                                def.kind.name(),
                                if fields.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", fields.join(", "))
                                }
                            )]
                        }
                        Ok(StoreRecord::IdBlock { first, end }) => vec![format!(
                            "{}{first}..{end} ({} ids)",
                            place("ids"),
                            end.0.saturating_sub(first.0)
                        )],
                        Ok(StoreRecord::Delete(ids)) => {
                            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
                            vec![format!("{}{}", place("delete"), ids.join(", "))]
                        }
                        Ok(StoreRecord::Transaction(tx)) => {
                            let mut lines = transaction_text(tx, &mut classes);
                            if let Some(first) = lines.first_mut() {
                                *first = format!("{}{first}", place("tx"));
                            }
                            for line in lines.iter_mut().skip(1) {
                                *line = format!("{:20}{line}", "");
                            }
                            lines
                        }
                    };
                    for line in lines {
                        writeln!(out, "{line}").map_err(io_error)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses an LSN given as decimal or `0x` hex.
pub fn parse_lsn(text: &str) -> Result<Lsn, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed
        .map(Lsn)
        .map_err(|e| format!("{text:?} is not an LSN (decimal or 0x hex): {e}"))
}

/// Parses an object id given as `N` or `@N`.
pub fn parse_object_id(text: &str) -> Result<ObjectId, String> {
    text.strip_prefix('@')
        .unwrap_or(text)
        .parse()
        .map(ObjectId)
        .map_err(|e| format!("{text:?} is not an object id: {e}"))
}

/// Loads the view for a dump, turning its problems into warnings.
pub fn load(root: &Path, warnings: &mut Vec<String>) -> Result<HeapView, ToolError> {
    let mut report = crate::fsck::FsckReport::default();
    let view = HeapView::load(root, &mut report)?;
    warnings.extend(report.problems.iter().map(|p| p.to_string()));
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_ids_parse_in_both_spellings() {
        assert_eq!(parse_lsn("0x1c6"), Ok(Lsn(0x1c6)));
        assert_eq!(parse_lsn("454"), Ok(Lsn(454)));
        assert!(parse_lsn("0xzz").is_err());
        assert!(parse_lsn("-1").is_err());
        assert_eq!(parse_object_id("@42"), Ok(ObjectId(42)));
        assert_eq!(parse_object_id("42"), Ok(ObjectId(42)));
        assert!(parse_object_id("@").is_err());
    }
}
