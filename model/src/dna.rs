//! Transactions and their DNA: the change encoding a client produces once
//! and the store appends to the WAL unchanged.
//!
//! Owns: the transaction format v1 (`docs/formats/dna.md`) and its
//! structural checks (version, tags, bounds, no repeated object).
//! Not: checks against the store's state (classes, slots, references:
//! `validate.rs`).
//! Invariants: `decode(encode(tx)) == tx`; `decode` never panics, never
//! allocates more than the input could hold and consumes every byte.

use crate::codec::{DecodeError, Reader, Writer};
use crate::model::{ClassId, LogicalOp, ObjectId, Value};

/// The only transaction format version so far.
pub const TX_FORMAT_VERSION: u8 = 1;

/// Bound on a root's name.
pub const ROOT_NAME_BYTES_MAX: usize = 4096;

/// The lock a transaction was made under (for the server's ordering; the
/// store records it and `tc-dump` shows it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockRef {
    None,
    Object(ObjectId),
    Named(String),
}

/// The changes to one object in one transaction: optionally its creation
/// (class), then field writes (slot → value) or logical operations, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dna {
    pub object: ObjectId,
    /// `Some(class)`: the object is new, with default values, before the
    /// writes and operations below apply.
    pub new_class: Option<ClassId>,
    pub fields: Vec<(u32, Value)>,
    pub ops: Vec<LogicalOp>,
}

impl Dna {
    pub fn new_object(object: ObjectId, class: ClassId) -> Dna {
        Dna {
            object,
            new_class: Some(class),
            fields: Vec::new(),
            ops: Vec::new(),
        }
    }

    pub fn update(object: ObjectId) -> Dna {
        Dna {
            object,
            new_class: None,
            fields: Vec::new(),
            ops: Vec::new(),
        }
    }

    pub fn field(mut self, slot: u32, value: Value) -> Dna {
        self.fields.push((slot, value));
        self
    }

    pub fn op(mut self, op: LogicalOp) -> Dna {
        self.ops.push(op);
        self
    }
}

/// One client transaction: applied atomically, identified by client id and
/// sequence number (unique per client, for deduplication on resend).
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    pub client: u64,
    pub seq: u64,
    pub lock: LockRef,
    pub roots: Vec<(String, ObjectId)>,
    pub dnas: Vec<Dna>,
}

const LOCK_NONE: u8 = 0;
const LOCK_OBJECT: u8 = 1;
const LOCK_NAMED: u8 = 2;
const DNA_FLAG_NEW: u8 = 1;

impl Transaction {
    /// Encoding v1:
    /// `|version u8 = 1|client varint|seq varint|lock|roots|dnas|`
    /// `lock  = |0| or |1 object varint| or |2 name str|`
    /// `roots = |count varint|{name str|object varint}*|`
    /// `dnas  = |count varint|{object varint|flags u8|class varint if new|`
    /// `        field count varint|{slot varint|value}*|op count varint|op*}*|`
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(TX_FORMAT_VERSION);
        w.varint(self.client);
        w.varint(self.seq);
        match &self.lock {
            LockRef::None => w.u8(LOCK_NONE),
            LockRef::Object(id) => {
                w.u8(LOCK_OBJECT);
                w.varint(id.0);
            }
            LockRef::Named(name) => {
                w.u8(LOCK_NAMED);
                w.str(name);
            }
        }
        w.varint(self.roots.len() as u64);
        for (name, id) in &self.roots {
            w.str(name);
            w.varint(id.0);
        }
        w.varint(self.dnas.len() as u64);
        for dna in &self.dnas {
            w.varint(dna.object.0);
            match dna.new_class {
                Some(class) => {
                    w.u8(DNA_FLAG_NEW);
                    w.varint(u64::from(class.0));
                }
                None => w.u8(0),
            }
            w.varint(dna.fields.len() as u64);
            for (slot, value) in &dna.fields {
                w.varint(u64::from(*slot));
                value.encode(&mut w);
            }
            w.varint(dna.ops.len() as u64);
            for op in &dna.ops {
                op.encode(&mut w);
            }
        }
        w.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Transaction, DecodeError> {
        use foldhash::HashSetExt;
        let mut r = Reader::new(bytes);
        let version = r.u8("format version")?;
        if version != TX_FORMAT_VERSION {
            return Err(DecodeError {
                offset: 0,
                what: format!(
                    "transaction format version {version}, this store reads {TX_FORMAT_VERSION}"
                ),
            });
        }
        let client = r.varint("client id")?;
        let seq = r.varint("sequence number")?;
        let lock = match r.u8("lock tag")? {
            LOCK_NONE => LockRef::None,
            LOCK_OBJECT => LockRef::Object(object_id(&mut r, "lock object")?),
            LOCK_NAMED => LockRef::Named(r.str("lock name")?.to_string()),
            other => return Err(r.error(format!("unknown lock tag {other}"))),
        };
        let root_count = r.count(2, "root count")?;
        let mut roots = Vec::with_capacity(root_count);
        for _ in 0..root_count {
            let at = r.position();
            let name = r.str("root name")?;
            if name.is_empty() || name.len() > ROOT_NAME_BYTES_MAX {
                return Err(DecodeError {
                    offset: at,
                    what: format!(
                        "a root name has 1 to {ROOT_NAME_BYTES_MAX} bytes, not {}",
                        name.len()
                    ),
                });
            }
            roots.push((name.to_string(), object_id(&mut r, "root object")?));
        }
        let dna_count = r.count(4, "DNA count")?;
        let mut dnas: Vec<Dna> = Vec::with_capacity(dna_count);
        let mut seen = foldhash::HashSet::with_capacity(dna_count);
        for _ in 0..dna_count {
            let at = r.position();
            let object = object_id(&mut r, "DNA object")?;
            if !seen.insert(object) {
                return Err(DecodeError {
                    offset: at,
                    what: format!("object {object} has two DNAs in one transaction"),
                });
            }
            let new_class = match r.u8("DNA flags")? {
                0 => None,
                DNA_FLAG_NEW => {
                    let class = r.varint_max(u64::from(u32::MAX), "class id")?;
                    if class == 0 {
                        return Err(r.error("class id 0"));
                    }
                    Some(ClassId(class as u32))
                }
                other => return Err(r.error(format!("unknown DNA flags {other:#x}"))),
            };
            let field_count = r.count(2, "field count")?;
            let mut fields = Vec::with_capacity(field_count);
            for _ in 0..field_count {
                let slot = r.varint_max(u64::from(u32::MAX), "slot")? as u32;
                fields.push((slot, Value::decode(&mut r)?));
            }
            let op_count = r.count(1, "operation count")?;
            let mut ops = Vec::with_capacity(op_count);
            for _ in 0..op_count {
                ops.push(LogicalOp::decode(&mut r)?);
            }
            dnas.push(Dna {
                object,
                new_class,
                fields,
                ops,
            });
        }
        r.finish("transaction")?;
        Ok(Transaction {
            client,
            seq,
            lock,
            roots,
            dnas,
        })
    }
}

fn object_id(r: &mut Reader<'_>, what: &str) -> Result<ObjectId, DecodeError> {
    let at = r.position();
    match r.varint(what)? {
        0 => Err(DecodeError {
            offset: at,
            what: format!("{what} is object 0 (null)"),
        }),
        id => Ok(ObjectId(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Array;

    fn sample() -> Transaction {
        Transaction {
            client: 7,
            seq: 42,
            lock: LockRef::Named("orders".into()),
            roots: vec![("main".into(), ObjectId(1))],
            dnas: vec![
                Dna::new_object(ObjectId(1), ClassId(1))
                    .field(0, Value::Int(-5))
                    .field(1, Value::String("héllo".into()))
                    .field(
                        2,
                        Value::Array(Array::Reference(vec![ObjectId(2), ObjectId::NULL])),
                    ),
                Dna::update(ObjectId(2))
                    .op(LogicalOp::MapPut(
                        Value::String("k".into()),
                        Value::Double(f64::NAN),
                    ))
                    .op(LogicalOp::ListInsert(3, Value::Null))
                    .op(LogicalOp::Clear),
            ],
        }
    }

    #[test]
    fn a_transaction_round_trips() {
        let tx = sample();
        assert_eq!(Transaction::decode(&tx.encode()).unwrap(), tx);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(
                Transaction::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn an_unknown_version_is_named() {
        let mut bytes = sample().encode();
        bytes[0] = 9;
        let err = Transaction::decode(&bytes).unwrap_err();
        assert!(err.what.contains("version 9"), "{err}");
    }

    #[test]
    fn two_dnas_for_one_object_are_refused() {
        let mut tx = sample();
        tx.dnas[1].object = ObjectId(1);
        let err = Transaction::decode(&tx.encode()).unwrap_err();
        assert!(err.what.contains("two DNAs"), "{err}");
    }
}
