//! Transactions and their DNA: the change encoding a client produces once
//! and the store appends to the WAL unchanged.
//!
//! Owns: the transaction format v2, and reading v1 (`docs/formats/dna.md`),
//! and its structural checks (version, tags, bounds, DNA lengths, no
//! repeated object), made in one place: `TransactionReader` reads a
//! transaction one DNA at a time (replay applies as it reads, and passes
//! over other shards' DNAs), its `DnaReader` reads one DNA's body, now or
//! later (replay gathers a batch of them first), and `Transaction::decode`
//! is built on it.
//! Not: checks against the store's state (classes, slots, references:
//! `validate.rs`).
//! Invariants: `decode(encode(tx)) == tx`; `decode` never panics, never
//! allocates more than the input could hold and consumes every byte.

use crate::codec::{DecodeError, Reader, Writer};
use crate::model::{ClassId, LogicalOp, ObjectId, Value};

/// The transaction format version written (`docs/formats/dna.md`).
/// Version 1, which has no DNA lengths, is still read.
pub const TX_FORMAT_VERSION: u8 = 2;

/// Version 1: DNAs without a length.
const TX_FORMAT_V1: u8 = 1;

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
    /// Everything after the object id and the length (see
    /// `Transaction::encode`).
    fn encode_body(&self, w: &mut Writer) {
        match self.new_class {
            Some(class) => {
                w.u8(DNA_FLAG_NEW);
                w.varint(u64::from(class.0));
            }
            None => w.u8(0),
        }
        w.varint(self.fields.len() as u64);
        for (slot, value) in &self.fields {
            w.varint(u64::from(*slot));
            value.encode(w);
        }
        w.varint(self.ops.len() as u64);
        for op in &self.ops {
            op.encode(w);
        }
    }

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
    /// Encoding v2:
    /// `|version u8 = 2|client varint|seq varint|lock|roots|dnas|`
    /// `lock  = |0| or |1 object varint| or |2 name str|`
    /// `roots = |count varint|{name str|object varint}*|`
    /// `dnas  = |count varint|{object varint|body length varint|body}*|`
    /// `body  = |flags u8|class varint if new|`
    /// `        field count varint|{slot varint|value}*|op count varint|op*|`
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(true)
    }

    /// The transaction in format v1 (DNAs without lengths), which nothing
    /// writes any more and every reader still reads: for tests of that.
    pub fn encode_v1(&self) -> Vec<u8> {
        self.encode_with(false)
    }

    fn encode_with(&self, dna_lengths: bool) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.encoded_len_estimate());
        w.u8(if dna_lengths {
            TX_FORMAT_VERSION
        } else {
            TX_FORMAT_V1
        });
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
            if dna_lengths {
                w.length_prefixed(|w| dna.encode_body(w));
            } else {
                dna.encode_body(&mut w);
            }
        }
        w.into_bytes()
    }

    /// About the encoded size, for one allocation in `encode` in the usual
    /// case (scalar values); an underestimate only costs a reallocation.
    fn encoded_len_estimate(&self) -> usize {
        let dnas: usize = self
            .dnas
            .iter()
            .map(|dna| 17 + 11 * dna.fields.len() + 12 * dna.ops.len())
            .sum();
        let roots: usize = self.roots.iter().map(|(name, _)| name.len() + 12).sum();
        32 + dnas + roots
    }

    pub fn decode(bytes: &[u8]) -> Result<Transaction, DecodeError> {
        let (header, mut reader) = TransactionReader::new(bytes)?;
        let mut dnas: Vec<Dna> = Vec::with_capacity(reader.dnas_left());
        while let Some(start) = reader.next_dna()? {
            let mut fields = Vec::with_capacity(reader.fields_left());
            while let Some(field) = reader.next_field()? {
                fields.push(field);
            }
            let mut ops = Vec::new();
            while let Some(op) = reader.next_op()? {
                ops.push(op);
            }
            dnas.push(Dna {
                object: start.object,
                new_class: start.new_class,
                fields,
                ops,
            });
        }
        Ok(Transaction {
            client: header.client,
            seq: header.seq,
            lock: header.lock,
            roots: header.roots,
            dnas,
        })
    }
}

/// A transaction's fields before its DNAs.
#[derive(Clone, Debug, PartialEq)]
pub struct TransactionHeader {
    pub client: u64,
    pub seq: u64,
    pub lock: LockRef,
    pub roots: Vec<(String, ObjectId)>,
}

/// The start of one DNA: its object and, if it creates it, its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnaStart {
    pub object: ObjectId,
    pub new_class: Option<ClassId>,
}

/// Where a `TransactionReader` is within the current DNA.
#[derive(Clone, Copy, Debug)]
enum Within {
    /// Before the first DNA, or after the last item of one.
    Between,
    /// This many field writes are still to read, then the op count.
    Fields(usize),
    /// The slot of a field write was read, not its value; then this many
    /// field writes are still to read.
    FieldValue(usize),
    /// This many logical operations are still to read.
    Ops(usize),
}

/// DNA counts up to this are checked for repeated objects by a linear scan
/// of an inline array (no allocation for the usual small transaction).
const SEEN_SCAN_MAX: usize = 16;

/// Objects already seen in a transaction (each may have one DNA).
enum Seen {
    Few {
        ids: [ObjectId; SEEN_SCAN_MAX],
        len: usize,
    },
    Many(foldhash::HashSet<ObjectId>),
}

impl Seen {
    fn with_capacity(n: usize) -> Seen {
        use foldhash::HashSetExt;
        if n <= SEEN_SCAN_MAX {
            Seen::Few {
                ids: [ObjectId::NULL; SEEN_SCAN_MAX],
                len: 0,
            }
        } else {
            Seen::Many(foldhash::HashSet::with_capacity(n))
        }
    }

    /// False if `id` was seen before. At most the capacity given to
    /// `with_capacity` ids are inserted (one per DNA of the count read).
    fn insert(&mut self, id: ObjectId) -> bool {
        match self {
            Seen::Few { ids, len } => {
                if ids[..*len].contains(&id) {
                    return false;
                }
                ids[*len] = id;
                *len += 1;
                true
            }
            Seen::Many(ids) => ids.insert(id),
        }
    }
}

/// Reads an encoded transaction one DNA, field write and operation at a
/// time, without building it: replay applies each change as it is read.
/// Checks exactly what `Transaction::decode` checks, as it goes, so a
/// caller that applies before the end may have applied part of a
/// transaction that then fails to decode.
/// Items of a DNA that the caller does not read are read (and checked)
/// when it moves on to the next DNA; the last `next_dna` checks that
/// every byte was consumed.
pub struct TransactionReader<'a> {
    /// Positioned in the current DNA, or between DNAs.
    dna: DnaReader<'a>,
    dnas_left: usize,
    seen: Seen,
}

/// Reads one DNA's field writes and operations (after `next_dna` read its
/// object and class): the current DNA of a `TransactionReader`, or a copy
/// of it taken by `TransactionReader::dna_reader` to read later.
#[derive(Clone)]
pub struct DnaReader<'a> {
    r: Reader<'a>,
    within: Within,
    /// Format v2 or later: each DNA carries its length.
    dna_lengths: bool,
    /// The DNA's object and where its body ends (v2).
    object: ObjectId,
    end: usize,
}

/// Where a DNA just started by `TransactionReader::next_dna` is in its
/// transaction's bytes, and what its start said: a `DnaReader` without the
/// bytes. For keeping a DNA to read where its bytes cannot be borrowed
/// (replay indexes a record's DNAs on one thread and reads them on
/// others); `reader` gives the `DnaReader` back.
///
/// `repr(C)`, with `object` and `end` apart: a place is taken right after
/// `next_dna` stored those two in the reader one by one, and copying them
/// as one 16-byte load (which the compiler did when they were adjacent
/// here too) waited for the stores to reach the cache instead of taking
/// their values from the store buffer: half of indexing's time.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct DnaPlace {
    object: ObjectId,
    pos: usize,
    end: usize,
    fields: usize,
    dna_lengths: bool,
}

impl DnaPlace {
    /// The reader of the DNA, over `transaction`, the same bytes (other
    /// bytes read as garbage, with decode errors).
    pub fn reader(self, transaction: &[u8]) -> DnaReader<'_> {
        DnaReader {
            r: Reader::at(transaction, self.pos),
            within: Within::Fields(self.fields),
            dna_lengths: self.dna_lengths,
            object: self.object,
            end: self.end,
        }
    }
}

impl<'a> TransactionReader<'a> {
    /// Reads the header; the DNAs follow through `next_dna`.
    pub fn new(bytes: &'a [u8]) -> Result<(TransactionHeader, Self), DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("format version")?;
        if version != TX_FORMAT_VERSION && version != TX_FORMAT_V1 {
            return Err(DecodeError::new(
                0,
                format!(
                    "transaction format version {version}, this store reads {TX_FORMAT_V1} to {TX_FORMAT_VERSION}"
                ),
            ));
        }
        let dna_lengths = version >= 2;
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
                return Err(DecodeError::new(
                    at,
                    format!(
                        "a root name has 1 to {ROOT_NAME_BYTES_MAX} bytes, not {}",
                        name.len()
                    ),
                ));
            }
            roots.push((name.to_string(), object_id(&mut r, "root object")?));
        }
        // A DNA is at least an object, flags and two counts (and a length).
        let dnas_left = r.count(4 + usize::from(dna_lengths), "DNA count")?;
        let header = TransactionHeader {
            client,
            seq,
            lock,
            roots,
        };
        let reader = TransactionReader {
            dna: DnaReader {
                r,
                within: Within::Between,
                dna_lengths,
                object: ObjectId::NULL,
                end: 0,
            },
            dnas_left,
            seen: Seen::with_capacity(dnas_left),
        };
        Ok((header, reader))
    }

    /// DNAs not started yet (bounded by the bytes left, not trusted further).
    pub fn dnas_left(&self) -> usize {
        self.dnas_left
    }

    /// Field writes of the current DNA not read yet.
    pub fn fields_left(&self) -> usize {
        match self.dna.within {
            Within::Fields(n) => n,
            Within::FieldValue(n) => n + 1,
            Within::Between | Within::Ops(_) => 0,
        }
    }

    /// The next DNA's object and class, after reading what is left of the
    /// current one; `None` after the last (and every byte was consumed).
    #[inline]
    pub fn next_dna(&mut self) -> Result<Option<DnaStart>, DecodeError> {
        self.dna.finish()?;
        if self.dnas_left == 0 {
            self.dna.r.finish("transaction")?;
            return Ok(None);
        }
        self.dnas_left -= 1;
        let dna = &mut self.dna;
        let r = &mut dna.r;
        let at = r.position();
        let object = object_id(r, "DNA object")?;
        if !self.seen.insert(object) {
            return Err(DecodeError::new(
                at,
                format!("object {object} has two DNAs in one transaction"),
            ));
        }
        if dna.dna_lengths {
            let len = r.count(1, "DNA length")?;
            dna.object = object;
            dna.end = r.position() + len;
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
        dna.within = Within::Fields(r.count(2, "field count")?);
        Ok(Some(DnaStart { object, new_class }))
    }

    /// A reader of what is left of the current DNA, to read later (after
    /// this reader has moved on with `skip_rest_of_dna`): what checks the
    /// DNA's body is then that reader's, up to its `next_op` returning
    /// `None`.
    pub fn dna_reader(&self) -> DnaReader<'a> {
        self.dna.clone()
    }

    /// The place of the DNA `next_dna` just started (its fields not read
    /// yet), to read later (`DnaPlace::reader`).
    #[inline]
    pub fn dna_place(&self) -> DnaPlace {
        let dna = &self.dna;
        let Within::Fields(fields) = dna.within else {
            panic!(
                "dna_place is for a DNA just started, not after {:?}",
                dna.within
            );
        };
        DnaPlace {
            pos: dna.r.position(),
            fields,
            dna_lengths: dna.dna_lengths,
            object: dna.object,
            end: dna.end,
        }
    }

    /// Moves past what is left of the current DNA without decoding it (in
    /// v1, which has no DNA lengths, by decoding it): for a reader that
    /// leaves this DNA to somebody else, who decodes it in full.
    pub fn skip_rest_of_dna(&mut self) -> Result<(), DecodeError> {
        let dna = &mut self.dna;
        if !dna.dna_lengths || matches!(dna.within, Within::Between) {
            while dna.next_op()?.is_some() {}
            return Ok(());
        }
        let Some(left) = dna.end.checked_sub(dna.r.position()) else {
            return Err(dna.length_error());
        };
        dna.r.take(left, "DNA body")?;
        dna.within = Within::Between;
        Ok(())
    }

    /// The current DNA's next field write (slot, value); `None` after the
    /// last one.
    #[inline(always)]
    pub fn next_field(&mut self) -> Result<Option<(u32, Value)>, DecodeError> {
        self.dna.next_field()
    }

    /// The current DNA's next logical operation, after any field writes
    /// not read yet; `None` after the last one.
    pub fn next_op(&mut self) -> Result<Option<LogicalOp>, DecodeError> {
        self.dna.next_op()
    }
}

impl DnaReader<'_> {
    /// In v2, that the DNA just finished used exactly the bytes its length
    /// gave.
    fn check_end(&self) -> Result<(), DecodeError> {
        if self.dna_lengths && self.r.position() != self.end {
            return Err(self.length_error());
        }
        Ok(())
    }

    #[cold]
    fn length_error(&self) -> DecodeError {
        self.r.error(format!(
            "the DNA of object {} ends at byte {} of the transaction, not at {} as its length says",
            self.object,
            self.r.position(),
            self.end
        ))
    }

    /// The DNA's next field write (slot, value); `None` after the last
    /// one.
    #[inline(always)]
    pub fn next_field(&mut self) -> Result<Option<(u32, Value)>, DecodeError> {
        let Some(slot) = self.next_slot()? else {
            return Ok(None);
        };
        let mut value = Value::Null;
        self.value_into(&mut value)?;
        Ok(Some((slot, value)))
    }

    /// The slot of the DNA's next field write, whose value `value_into`
    /// reads next; `None` after the last one.
    #[inline(always)]
    pub fn next_slot(&mut self) -> Result<Option<u32>, DecodeError> {
        match self.within {
            Within::Fields(0) => {
                self.within = Within::Ops(self.r.count(1, "operation count")?);
                Ok(None)
            }
            Within::Fields(n) => {
                let slot = self.r.varint_max(u64::from(u32::MAX), "slot")? as u32;
                self.within = Within::FieldValue(n - 1);
                Ok(Some(slot))
            }
            Within::FieldValue(_) => panic!("next_slot before the value of the last slot was read"),
            Within::Between | Within::Ops(_) => Ok(None),
        }
    }

    /// Reads the value of the field write whose slot `next_slot` returned
    /// into `place` (unchanged on an error). Decoding into the place, not
    /// returning the value, lets replay write a field without copying the
    /// value through the stack (`next_field` returns it).
    #[inline(always)]
    pub fn value_into(&mut self, place: &mut Value) -> Result<(), DecodeError> {
        let Within::FieldValue(n) = self.within else {
            panic!("value_into without a slot read by next_slot");
        };
        let old = std::mem::replace(place, Value::decode(&mut self.r)?);
        // Dropping a value that owns nothing took a call per field write
        // (`drop_in_place::<Value>` is not inlined): 2 % of a replay.
        if matches!(old, Value::String(_) | Value::Array(_)) {
            drop(old);
        } else {
            std::mem::forget(old);
        }
        self.within = Within::Fields(n);
        Ok(())
    }

    /// Reads (and checks) whatever the caller did not read of the DNA.
    #[inline]
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        if matches!(self.within, Within::Between) {
            return Ok(());
        }
        while self.next_op()?.is_some() {}
        Ok(())
    }

    /// The DNA's next logical operation, after any field writes not read
    /// yet; `None` after the last one (and the DNA's end checked).
    pub fn next_op(&mut self) -> Result<Option<LogicalOp>, DecodeError> {
        loop {
            match self.within {
                Within::Between => return Ok(None),
                Within::Fields(_) => {
                    self.next_slot()?;
                }
                Within::FieldValue(_) => self.value_into(&mut Value::Null)?,
                Within::Ops(0) => {
                    self.within = Within::Between;
                    self.check_end()?;
                    return Ok(None);
                }
                Within::Ops(n) => {
                    let op = LogicalOp::decode(&mut self.r)?;
                    self.within = Within::Ops(n - 1);
                    return Ok(Some(op));
                }
            }
        }
    }
}

#[inline]
fn object_id(r: &mut Reader<'_>, what: &str) -> Result<ObjectId, DecodeError> {
    let at = r.position();
    match r.varint(what)? {
        0 => Err(DecodeError::new(at, format!("{what} is object 0 (null)"))),
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

    /// Every proper prefix of an encoded transaction fails to decode.
    fn assert_every_truncation_fails(bytes: &[u8]) {
        for len in 0..bytes.len() {
            assert!(
                Transaction::decode(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        assert_every_truncation_fails(&sample().encode());
    }

    #[test]
    fn an_unknown_version_is_named() {
        let mut bytes = sample().encode();
        bytes[0] = 9;
        let err = Transaction::decode(&bytes).unwrap_err();
        assert!(err.what().contains("version 9"), "{err}");
    }

    #[test]
    fn the_reader_yields_what_decode_builds() {
        let tx = sample();
        let bytes = tx.encode();
        let (header, mut reader) = TransactionReader::new(&bytes).unwrap();
        assert_eq!((header.client, header.seq), (7, 42));
        assert_eq!(header.lock, tx.lock);
        assert_eq!(header.roots, tx.roots);
        for dna in &tx.dnas {
            let start = reader.next_dna().unwrap().expect("a DNA");
            assert_eq!((start.object, start.new_class), (dna.object, dna.new_class));
            let mut fields = Vec::new();
            while let Some(field) = reader.next_field().unwrap() {
                fields.push(field);
            }
            assert_eq!(fields, dna.fields);
            let mut ops = Vec::new();
            while let Some(op) = reader.next_op().unwrap() {
                ops.push(op);
            }
            assert_eq!(ops, dna.ops);
        }
        assert_eq!(reader.next_dna().unwrap(), None);
    }

    #[test]
    fn the_reader_checks_the_items_a_caller_skips() {
        let bytes = sample().encode();
        let (_, mut reader) = TransactionReader::new(&bytes).unwrap();
        let starts = std::iter::from_fn(|| reader.next_dna().unwrap()).count();
        assert_eq!(starts, 2);
        // A damaged value inside a DNA nobody reads still fails, as does
        // a byte after the end.
        let mut damaged = bytes.clone();
        let tag_at = damaged.iter().position(|&b| b == b'h').unwrap() - 2;
        damaged[tag_at] = 0xEE;
        let (_, mut reader) = TransactionReader::new(&damaged).unwrap();
        let err = std::iter::from_fn(|| reader.next_dna().transpose())
            .find_map(Result::err)
            .expect("the damaged value is found");
        assert!(err.what().contains("value tag"), "{err}");
        let mut longer = bytes;
        longer.push(0);
        let (_, mut reader) = TransactionReader::new(&longer).unwrap();
        let err = std::iter::from_fn(|| reader.next_dna().transpose())
            .find_map(Result::err)
            .expect("the trailing byte is found");
        assert!(err.what().contains("trailing"), "{err}");
    }

    /// The sample with a DNA long enough for a two-byte length.
    fn sample_with_a_long_dna() -> Transaction {
        let mut tx = sample();
        tx.dnas
            .push(Dna::update(ObjectId(3)).field(0, Value::String("x".repeat(300))));
        tx
    }

    #[test]
    fn version_1_is_still_read() {
        let tx = sample_with_a_long_dna();
        let v1 = tx.encode_v1();
        assert_eq!(v1[0], 1);
        assert_eq!(
            v1.len() + tx.dnas.len() + 1,
            tx.encode().len(),
            "v2 adds the lengths"
        );
        assert_eq!(Transaction::decode(&v1).unwrap(), tx);
        assert_every_truncation_fails(&v1);
    }

    #[test]
    fn a_dna_whose_length_disagrees_with_its_contents_is_refused() {
        let tx = sample();
        let bytes = tx.encode();
        // The first DNA's length follows its one-byte object id.
        let header = Transaction {
            dnas: Vec::new(),
            ..tx.clone()
        }
        .encode()
        .len();
        let length_at = header + 1;
        for wrong in [bytes[length_at] - 1, bytes[length_at] + 1] {
            let mut damaged = bytes.clone();
            damaged[length_at] = wrong;
            let err = Transaction::decode(&damaged).unwrap_err();
            assert!(err.what().contains("as its length says"), "{err}");
        }
    }

    #[test]
    fn passing_over_a_dna_lands_where_reading_it_does() {
        let tx = sample_with_a_long_dna();
        for bytes in [tx.encode(), tx.encode_v1()] {
            for passed_over in 0..1u32 << tx.dnas.len() {
                let (_, mut reader) = TransactionReader::new(&bytes).unwrap();
                for (i, dna) in tx.dnas.iter().enumerate() {
                    let start = reader.next_dna().unwrap().expect("a DNA");
                    assert_eq!(start.object, dna.object);
                    if passed_over & (1 << i) != 0 {
                        reader.skip_rest_of_dna().unwrap();
                        continue;
                    }
                    let fields: Vec<_> =
                        std::iter::from_fn(|| reader.next_field().unwrap()).collect();
                    let ops: Vec<_> = std::iter::from_fn(|| reader.next_op().unwrap()).collect();
                    assert_eq!((&fields, &ops), (&dna.fields, &dna.ops), "DNA {i}");
                }
                assert_eq!(reader.next_dna().unwrap(), None, "mask {passed_over:b}");
            }
        }
    }

    #[test]
    fn repeated_objects_are_found_in_small_and_large_transactions() {
        for count in [1, 15, 16, 17, 40] {
            let mut tx = sample();
            tx.dnas = (1..=count).map(|i| Dna::update(ObjectId(i))).collect();
            assert!(Transaction::decode(&tx.encode()).is_ok(), "{count} DNAs");
            tx.dnas.push(Dna::update(ObjectId(count)));
            let err = Transaction::decode(&tx.encode()).unwrap_err();
            assert!(err.what().contains("two DNAs"), "{count} DNAs: {err}");
        }
    }

    #[test]
    fn two_dnas_for_one_object_are_refused() {
        let mut tx = sample();
        tx.dnas[1].object = ObjectId(1);
        let err = Transaction::decode(&tx.encode()).unwrap_err();
        assert!(err.what().contains("two DNAs"), "{err}");
    }
}
