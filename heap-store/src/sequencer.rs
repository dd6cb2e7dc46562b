//! The sequencer: decides, in WAL order, whether a change may be appended.
//!
//! Owns: the state every check needs, as of the last record *submitted* to
//! the WAL (which may be ahead of what is durable and applied): which ids
//! were handed out, which objects exist and their classes, list lengths,
//! root bindings, the registered classes, and the LSN the next record gets.
//! Not: object contents (`heap.rs`), files.
//! Invariants: checks and the WAL submit happen under one lock, so records
//! reach the WAL in the order they were checked and each record's LSN is
//! known before it is submitted (`next_lsn`); a rejected transaction
//! changes nothing here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::dna::Transaction;
use crate::error::Rejection;
use crate::model::{ClassDef, ClassId, ClassKind, LogicalOp, ObjectId, Value};
use tc_wal::Lsn;

/// `class_of` marker for an id whose object was deleted (ids are never reused).
pub(crate) const DELETED: u32 = u32::MAX;

pub(crate) struct Sequencer {
    pub classes: Vec<Arc<ClassDef>>,
    pub class_ids: HashMap<String, ClassId>,
    pub roots: HashMap<String, ObjectId>,
    /// The first id not handed out yet.
    pub next_id: u64,
    /// Class of each object by id: 0 none, `DELETED`, else the class id.
    pub class_of: Vec<u32>,
    /// Lengths of lists touched since open (others: read from the heap).
    pub list_len: HashMap<ObjectId, u32>,
    pub next_lsn: Lsn,
}

/// What a checked transaction will change here once it is submitted.
pub(crate) struct Effects {
    created: Vec<(ObjectId, ClassId)>,
    list_len: Vec<(ObjectId, u32)>,
    roots: Vec<(String, ObjectId)>,
}

impl Sequencer {
    pub fn class(&self, id: ClassId) -> Option<&Arc<ClassDef>> {
        (id.0 as usize)
            .checked_sub(1)
            .and_then(|i| self.classes.get(i))
    }

    /// The class of a live object.
    pub fn class_of(&self, id: ObjectId) -> Option<ClassId> {
        match self.class_of.get(id.0 as usize) {
            Some(&c) if c != 0 && c != DELETED => Some(ClassId(c)),
            _ => None,
        }
    }

    pub fn set_class_of(&mut self, id: ObjectId, class: u32) {
        let index = id.0 as usize;
        if index >= self.class_of.len() {
            self.class_of.resize((index + 1).next_power_of_two(), 0);
        }
        self.class_of[index] = class;
    }

    /// Checks `tx` against the current state. `list_len_now` gives the
    /// length of a list not touched since open (from the heap).
    pub fn check(
        &self,
        tx: &Transaction,
        mut list_len_now: impl FnMut(ObjectId) -> u32,
    ) -> Result<Effects, Rejection> {
        let mut created: HashMap<ObjectId, ClassId> = HashMap::new();
        for dna in &tx.dnas {
            if let Some(class) = dna.new_class {
                self.class(class).ok_or(Rejection::UnknownClass(class))?;
                if dna.object.0 >= self.next_id {
                    return Err(Rejection::UnallocatedId(dna.object));
                }
                if self
                    .class_of
                    .get(dna.object.0 as usize)
                    .is_some_and(|&c| c != 0)
                {
                    return Err(Rejection::DuplicateObject(dna.object));
                }
                created.insert(dna.object, class);
            }
        }
        let exists = |id: ObjectId| created.contains_key(&id) || self.class_of(id).is_some();
        let mut effects = Effects {
            created: created.iter().map(|(id, c)| (*id, *c)).collect(),
            list_len: Vec::new(),
            roots: Vec::new(),
        };
        for dna in &tx.dnas {
            let class = match dna.new_class {
                Some(class) => class,
                None => self
                    .class_of(dna.object)
                    .ok_or(Rejection::UnknownObject(dna.object))?,
            };
            let def = self.class(class).ok_or(Rejection::UnknownClass(class))?;
            let check_refs = |value: &Value| -> Result<(), Rejection> {
                let mut dangling = None;
                value.references(&mut |to| {
                    if dangling.is_none() && !exists(to) {
                        dangling = Some(to);
                    }
                });
                match dangling {
                    Some(to) => Err(Rejection::DanglingReference {
                        from: dna.object,
                        to,
                    }),
                    None => Ok(()),
                }
            };
            for (slot, value) in &dna.fields {
                let field = def
                    .fields
                    .get(*slot as usize)
                    .ok_or(Rejection::NoSuchSlot {
                        object: dna.object,
                        class,
                        slot: *slot,
                    })?;
                if !value.fits(field.kind) {
                    return Err(Rejection::WrongKind {
                        object: dna.object,
                        slot: *slot,
                        field: field.name.clone(),
                        expected: field.kind.to_string(),
                        got: value.kind_name(),
                    });
                }
                check_refs(value)?;
            }
            if dna.ops.is_empty() {
                continue;
            }
            let mut len = (def.kind == ClassKind::List).then(|| {
                if dna.new_class.is_some() {
                    0
                } else {
                    self.list_len
                        .get(&dna.object)
                        .copied()
                        .unwrap_or_else(|| list_len_now(dna.object))
                }
            });
            for op in &dna.ops {
                let applies = match op.target() {
                    None => def.kind != ClassKind::Plain,
                    Some(kind) => kind == def.kind,
                };
                if !applies {
                    return Err(Rejection::WrongOperation {
                        object: dna.object,
                        kind: def.kind.name(),
                        op: op.name(),
                    });
                }
                op.values().try_for_each(&check_refs)?;
                if let Some(len) = len.as_mut() {
                    *len = list_len_after(dna.object, *len, op)?;
                }
            }
            if let Some(len) = len {
                effects.list_len.push((dna.object, len));
            }
        }
        let mut names = HashSet::new();
        for (name, id) in &tx.roots {
            if !exists(*id) {
                return Err(Rejection::DanglingRoot {
                    name: name.clone(),
                    to: *id,
                });
            }
            let bound = self.roots.get(name).copied().or_else(|| {
                tx.roots
                    .iter()
                    .find(|(n, other)| n == name && other != id)
                    .map(|(_, other)| *other)
            });
            if let Some(bound) = bound.filter(|b| b != id) {
                return Err(Rejection::RootAlreadyBound {
                    name: name.clone(),
                    bound,
                    requested: *id,
                });
            }
            if names.insert(name) && !self.roots.contains_key(name) {
                effects.roots.push((name.clone(), *id));
            }
        }
        Ok(effects)
    }

    /// Records a checked transaction as submitted.
    pub fn record(&mut self, effects: Effects) {
        for (id, class) in effects.created {
            self.set_class_of(id, class.0);
        }
        for (id, len) in effects.list_len {
            self.list_len.insert(id, len);
        }
        for (name, id) in effects.roots {
            self.roots.insert(name, id);
        }
    }
}

/// A list's length after `op`, or why `op` is out of bounds.
fn list_len_after(object: ObjectId, len: u32, op: &LogicalOp) -> Result<u32, Rejection> {
    let out_of_bounds = |index: u32, len: u32| Rejection::IndexOutOfBounds {
        object,
        index: u64::from(index),
        len: u64::from(len),
    };
    match op {
        LogicalOp::ListAdd(_) => len.checked_add(1).ok_or(out_of_bounds(len, len)),
        LogicalOp::ListInsert(i, _) if *i <= len => {
            len.checked_add(1).ok_or(out_of_bounds(*i, len))
        }
        LogicalOp::ListSet(i, _) if *i < len => Ok(len),
        LogicalOp::ListRemoveAt(i) if *i < len => Ok(len - 1),
        LogicalOp::ListInsert(i, _) | LogicalOp::ListSet(i, _) | LogicalOp::ListRemoveAt(i) => {
            Err(out_of_bounds(*i, len))
        }
        LogicalOp::Clear => Ok(0),
        _ => Ok(len),
    }
}
