//! The store's WAL records: what each `kind` byte means and the payloads
//! of the records that are not transactions (`docs/formats/dna.md`).
//!
//! Invariants: every change to the durable state is one of these records;
//! kinds are never reused; decoders never panic.

use crate::codec::{DecodeError, Reader, Writer};
use crate::dna::Transaction;
use crate::model::{ClassDef, ClassId, ObjectId};

/// A client transaction, the exact bytes the client encoded.
pub const KIND_TRANSACTION: u8 = 1;
/// A class registration: `|class id varint|class definition|`.
pub const KIND_CLASS: u8 = 2;
/// An id block handed out: `|first id varint|end id varint|` (end exclusive).
pub const KIND_ID_BLOCK: u8 = 3;
/// Objects found unreachable and deleted: `|count varint|{id varint}*|`.
pub const KIND_DELETE: u8 = 4;

/// A decoded store record.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreRecord {
    Transaction(Transaction),
    Class(ClassId, ClassDef),
    IdBlock { first: ObjectId, end: ObjectId },
    Delete(Vec<ObjectId>),
}

impl StoreRecord {
    pub fn kind(&self) -> u8 {
        match self {
            StoreRecord::Transaction(_) => KIND_TRANSACTION,
            StoreRecord::Class(..) => KIND_CLASS,
            StoreRecord::IdBlock { .. } => KIND_ID_BLOCK,
            StoreRecord::Delete(_) => KIND_DELETE,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            StoreRecord::Transaction(tx) => return tx.encode(),
            StoreRecord::Class(id, def) => {
                w.varint(u64::from(id.0));
                def.encode(&mut w);
            }
            StoreRecord::IdBlock { first, end } => {
                w.varint(first.0);
                w.varint(end.0);
            }
            StoreRecord::Delete(ids) => {
                w.varint(ids.len() as u64);
                ids.iter().for_each(|id| w.varint(id.0));
            }
        }
        w.into_bytes()
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<StoreRecord, DecodeError> {
        let mut r = Reader::new(payload);
        let record = match kind {
            KIND_TRANSACTION => return Transaction::decode(payload).map(StoreRecord::Transaction),
            KIND_CLASS => {
                let id = r.varint_max(u64::from(u32::MAX), "class id")?;
                if id == 0 {
                    return Err(r.error("class id 0"));
                }
                StoreRecord::Class(ClassId(id as u32), ClassDef::decode(&mut r)?)
            }
            KIND_ID_BLOCK => {
                let first = r.varint("first id")?;
                let end = r.varint("end id")?;
                if first == 0 || end <= first {
                    return Err(r.error(format!("id block {first}..{end} is empty or starts at 0")));
                }
                StoreRecord::IdBlock {
                    first: ObjectId(first),
                    end: ObjectId(end),
                }
            }
            KIND_DELETE => {
                let n = r.count(1, "deleted count")?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    match r.varint("deleted id")? {
                        0 => return Err(r.error("deleted id 0")),
                        id => ids.push(ObjectId(id)),
                    }
                }
                StoreRecord::Delete(ids)
            }
            other => {
                return Err(DecodeError::new(
                    0,
                    format!("unknown store record kind {other}"),
                ));
            }
        };
        r.finish("record")?;
        Ok(record)
    }
}
