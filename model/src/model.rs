//! The object model: ids, classes, values, objects and the logical
//! operations of collections, with their byte encodings (shared by DNA,
//! object images and the checkpoint file; see `docs/formats/dna.md`).
//!
//! Owns: what a value, a class and an object are, which value fits which
//! field, how a logical operation changes a collection.
//! Not: validation against the store's state (`validate.rs`), files.
//! Invariants: `ObjectId(0)` is null and never names an object; class ids
//! start at 1; a plain object's `Body::Fields` has exactly one value per
//! field of its class, each fitting the field's kind; decoders never panic
//! and never allocate more than the input could hold.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};

use indexmap::{IndexMap, IndexSet};

use crate::codec::{DecodeError, Reader, Writer};

/// An object's identity, the same in every JVM. Dense; 0 is null.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub u64);

impl ObjectId {
    pub const NULL: ObjectId = ObjectId(0);

    pub fn is_null(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// A registered class. Ids start at 1, in registration order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u32);

impl fmt::Display for ClassId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "class#{}", self.0)
    }
}

/// The kind of a scalar value; also the element kind of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ScalarKind {
    Boolean = 1,
    Byte = 2,
    Char = 3,
    Short = 4,
    Int = 5,
    Long = 6,
    Float = 7,
    Double = 8,
    String = 9,
    Reference = 10,
}

impl ScalarKind {
    pub const ALL: [ScalarKind; 10] = [
        ScalarKind::Boolean,
        ScalarKind::Byte,
        ScalarKind::Char,
        ScalarKind::Short,
        ScalarKind::Int,
        ScalarKind::Long,
        ScalarKind::Float,
        ScalarKind::Double,
        ScalarKind::String,
        ScalarKind::Reference,
    ];

    #[inline]
    fn from_code(code: u8) -> Option<ScalarKind> {
        let index = usize::from(code).checked_sub(1)?;
        ScalarKind::ALL.get(index).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            ScalarKind::Boolean => "boolean",
            ScalarKind::Byte => "byte",
            ScalarKind::Char => "char",
            ScalarKind::Short => "short",
            ScalarKind::Int => "int",
            ScalarKind::Long => "long",
            ScalarKind::Float => "float",
            ScalarKind::Double => "double",
            ScalarKind::String => "string",
            ScalarKind::Reference => "reference",
        }
    }
}

/// The declared kind of a field: a scalar or an array of scalars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldKind {
    Scalar(ScalarKind),
    Array(ScalarKind),
}

const ARRAY_FLAG: u8 = 0x40;

impl FieldKind {
    /// One byte: the scalar code, with 0x40 set for arrays.
    pub fn code(self) -> u8 {
        match self {
            FieldKind::Scalar(k) => k as u8,
            FieldKind::Array(k) => ARRAY_FLAG | k as u8,
        }
    }

    #[inline]
    pub fn from_code(code: u8) -> Option<FieldKind> {
        if code & ARRAY_FLAG != 0 {
            ScalarKind::from_code(code & !ARRAY_FLAG).map(FieldKind::Array)
        } else {
            ScalarKind::from_code(code).map(FieldKind::Scalar)
        }
    }

    /// The value a field of this kind holds in a new object.
    pub fn default_value(self) -> Value {
        match self {
            FieldKind::Scalar(ScalarKind::Boolean) => Value::Boolean(false),
            FieldKind::Scalar(ScalarKind::Byte) => Value::Byte(0),
            FieldKind::Scalar(ScalarKind::Char) => Value::Char(0),
            FieldKind::Scalar(ScalarKind::Short) => Value::Short(0),
            FieldKind::Scalar(ScalarKind::Int) => Value::Int(0),
            FieldKind::Scalar(ScalarKind::Long) => Value::Long(0),
            FieldKind::Scalar(ScalarKind::Float) => Value::Float(0.0),
            FieldKind::Scalar(ScalarKind::Double) => Value::Double(0.0),
            _ => Value::Null,
        }
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldKind::Scalar(k) => f.write_str(k.name()),
            FieldKind::Array(k) => write!(f, "{}[]", k.name()),
        }
    }
}

/// What kind of object a class makes: plain fields, or a logical collection
/// changed only by logical operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ClassKind {
    Plain = 0,
    Map = 1,
    List = 2,
    Set = 3,
    Queue = 4,
}

impl ClassKind {
    pub fn from_code(code: u8) -> Option<ClassKind> {
        [
            ClassKind::Plain,
            ClassKind::Map,
            ClassKind::List,
            ClassKind::Set,
            ClassKind::Queue,
        ]
        .into_iter()
        .find(|k| *k as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ClassKind::Plain => "plain object",
            ClassKind::Map => "map",
            ClassKind::List => "list",
            ClassKind::Set => "set",
            ClassKind::Queue => "queue",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldDef {
    pub name: String,
    pub kind: FieldKind,
}

/// A class as registered: its name, kind and fields in slot order.
/// Collections have no fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClassDef {
    pub name: String,
    pub kind: ClassKind,
    pub fields: Vec<FieldDef>,
}

/// Bounds that keep one class definition reasonable.
pub const CLASS_NAME_BYTES_MAX: usize = 4096;
pub const CLASS_FIELDS_MAX: usize = 65_535;

impl ClassDef {
    pub fn plain(name: &str, fields: &[(&str, FieldKind)]) -> ClassDef {
        ClassDef {
            name: name.to_string(),
            kind: ClassKind::Plain,
            fields: fields
                .iter()
                .map(|(n, k)| FieldDef {
                    name: n.to_string(),
                    kind: *k,
                })
                .collect(),
        }
    }

    pub fn collection(name: &str, kind: ClassKind) -> ClassDef {
        ClassDef {
            name: name.to_string(),
            kind,
            fields: Vec::new(),
        }
    }

    /// Why this definition cannot be registered, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.name.is_empty() || self.name.len() > CLASS_NAME_BYTES_MAX {
            return Some(format!(
                "a class name has 1 to {CLASS_NAME_BYTES_MAX} bytes, not {}",
                self.name.len()
            ));
        }
        if self.kind != ClassKind::Plain && !self.fields.is_empty() {
            return Some(format!("a {} class has no fields", self.kind.name()));
        }
        if self.fields.len() > CLASS_FIELDS_MAX {
            return Some(format!("more than {CLASS_FIELDS_MAX} fields"));
        }
        let mut names = std::collections::HashSet::new();
        for field in &self.fields {
            if field.name.is_empty() || field.name.len() > CLASS_NAME_BYTES_MAX {
                return Some("a field name has 1 to 4096 bytes".to_string());
            }
            if !names.insert(&field.name) {
                return Some(format!("field {:?} appears twice", field.name));
            }
        }
        None
    }

    /// `|name str|kind u8|field count varint|{name str|kind u8}*|`
    pub fn encode(&self, w: &mut Writer) {
        w.str(&self.name);
        w.u8(self.kind as u8);
        w.varint(self.fields.len() as u64);
        for field in &self.fields {
            w.str(&field.name);
            w.u8(field.kind.code());
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<ClassDef, DecodeError> {
        let name = r.str("class name")?.to_string();
        let code = r.u8("class kind")?;
        let kind = ClassKind::from_code(code)
            .ok_or_else(|| r.error(format!("unknown class kind {code}")))?;
        let count = r.count(2, "field count")?;
        let mut fields = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.str("field name")?.to_string();
            let code = r.u8("field kind")?;
            let kind = FieldKind::from_code(code)
                .ok_or_else(|| r.error(format!("unknown field kind {code:#x}")))?;
            fields.push(FieldDef { name, kind });
        }
        let def = ClassDef { name, kind, fields };
        if let Some(problem) = def.problem() {
            return Err(r.error(format!("invalid class definition: {problem}")));
        }
        Ok(def)
    }

    /// The definition alone, as sent over the network.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }

    /// Decodes a definition that must use every byte.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClassDef, DecodeError> {
        let mut r = Reader::new(bytes);
        let def = ClassDef::decode(&mut r)?;
        r.finish("class definition")?;
        Ok(def)
    }
}

/// An array value. String elements may be null; reference elements use
/// `ObjectId::NULL` for null.
#[derive(Clone, Debug)]
pub enum Array {
    Boolean(Vec<bool>),
    Byte(Vec<i8>),
    Char(Vec<u16>),
    Short(Vec<i16>),
    Int(Vec<i32>),
    Long(Vec<i64>),
    Float(Vec<f32>),
    Double(Vec<f64>),
    String(Vec<Option<String>>),
    Reference(Vec<ObjectId>),
}

/// A field value or a collection element. Floats compare and hash by their
/// bits, so a value can be a map key and `NaN == NaN` as in `Float.equals`.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Boolean(bool),
    Byte(i8),
    Char(u16),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    String(String),
    Reference(ObjectId),
    Array(Array),
}

impl Array {
    pub fn kind(&self) -> ScalarKind {
        match self {
            Array::Boolean(_) => ScalarKind::Boolean,
            Array::Byte(_) => ScalarKind::Byte,
            Array::Char(_) => ScalarKind::Char,
            Array::Short(_) => ScalarKind::Short,
            Array::Int(_) => ScalarKind::Int,
            Array::Long(_) => ScalarKind::Long,
            Array::Float(_) => ScalarKind::Float,
            Array::Double(_) => ScalarKind::Double,
            Array::String(_) => ScalarKind::String,
            Array::Reference(_) => ScalarKind::Reference,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::Boolean(v) => v.len(),
            Array::Byte(v) => v.len(),
            Array::Char(v) => v.len(),
            Array::Short(v) => v.len(),
            Array::Int(v) => v.len(),
            Array::Long(v) => v.len(),
            Array::Float(v) => v.len(),
            Array::Double(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Reference(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Array {
    fn eq(&self, other: &Array) -> bool {
        match (self, other) {
            (Array::Boolean(a), Array::Boolean(b)) => a == b,
            (Array::Byte(a), Array::Byte(b)) => a == b,
            (Array::Char(a), Array::Char(b)) => a == b,
            (Array::Short(a), Array::Short(b)) => a == b,
            (Array::Int(a), Array::Int(b)) => a == b,
            (Array::Long(a), Array::Long(b)) => a == b,
            (Array::Float(a), Array::Float(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Array::Double(a), Array::Double(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Array::String(a), Array::String(b)) => a == b,
            (Array::Reference(a), Array::Reference(b)) => a == b,
            _ => false,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Boolean(a), Value::Boolean(b)) => a == b,
            (Value::Byte(a), Value::Byte(b)) => a == b,
            (Value::Char(a), Value::Char(b)) => a == b,
            (Value::Short(a), Value::Short(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Long(a), Value::Long(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Double(a), Value::Double(b)) => a.to_bits() == b.to_bits(),
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Reference(a), Value::Reference(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Equal values hash equally: the tag and a cheap summary suffice.
        state.write_u8(self.tag());
        match self {
            Value::Null => {}
            Value::Boolean(v) => v.hash(state),
            Value::Byte(v) => v.hash(state),
            Value::Char(v) => v.hash(state),
            Value::Short(v) => v.hash(state),
            Value::Int(v) => v.hash(state),
            Value::Long(v) => v.hash(state),
            Value::Float(v) => v.to_bits().hash(state),
            Value::Double(v) => v.to_bits().hash(state),
            Value::String(v) => v.hash(state),
            Value::Reference(v) => v.hash(state),
            Value::Array(a) => a.len().hash(state),
        }
    }
}

const TAG_NULL: u8 = 0;

impl Value {
    /// The wire tag: 0 null, the scalar code, or 0x40 | element code.
    fn tag(&self) -> u8 {
        match self {
            Value::Null => TAG_NULL,
            Value::Boolean(_) => ScalarKind::Boolean as u8,
            Value::Byte(_) => ScalarKind::Byte as u8,
            Value::Char(_) => ScalarKind::Char as u8,
            Value::Short(_) => ScalarKind::Short as u8,
            Value::Int(_) => ScalarKind::Int as u8,
            Value::Long(_) => ScalarKind::Long as u8,
            Value::Float(_) => ScalarKind::Float as u8,
            Value::Double(_) => ScalarKind::Double as u8,
            Value::String(_) => ScalarKind::String as u8,
            Value::Reference(_) => ScalarKind::Reference as u8,
            Value::Array(a) => ARRAY_FLAG | a.kind() as u8,
        }
    }

    /// The kind this value has, or `None` for null.
    #[inline]
    pub fn kind(&self) -> Option<FieldKind> {
        match self {
            Value::Null => None,
            Value::Array(a) => Some(FieldKind::Array(a.kind())),
            other => ScalarKind::from_code(other.tag()).map(FieldKind::Scalar),
        }
    }

    /// Whether a field of `kind` may hold this value (null fits strings,
    /// references and arrays; a primitive field cannot be null).
    #[inline]
    pub fn fits(&self, kind: FieldKind) -> bool {
        match self.kind() {
            None => !matches!(
                kind,
                FieldKind::Scalar(k) if k != ScalarKind::String && k != ScalarKind::Reference
            ),
            Some(own) => own == kind,
        }
    }

    pub fn kind_name(&self) -> String {
        self.kind()
            .map_or_else(|| "null".to_string(), |k| k.to_string())
    }

    /// Every object this value references (non-null).
    pub fn references(&self, out: &mut impl FnMut(ObjectId)) {
        match self {
            Value::Reference(id) => out(*id),
            Value::Array(Array::Reference(ids)) => ids
                .iter()
                .filter(|id| !id.is_null())
                .for_each(|id| out(*id)),
            _ => {}
        }
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.tag());
        match self {
            Value::Null => {}
            Value::Boolean(v) => w.u8(u8::from(*v)),
            Value::Byte(v) => w.u8(*v as u8),
            Value::Char(v) => w.varint(u64::from(*v)),
            Value::Short(v) => w.zigzag(i64::from(*v)),
            Value::Int(v) => w.zigzag(i64::from(*v)),
            Value::Long(v) => w.zigzag(*v),
            Value::Float(v) => w.u32_le(v.to_bits()),
            Value::Double(v) => w.u64_le(v.to_bits()),
            Value::String(v) => w.str(v),
            Value::Reference(id) => w.varint(id.0),
            Value::Array(a) => encode_array(a, w),
        }
    }

    #[inline]
    pub fn decode(r: &mut Reader<'_>) -> Result<Value, DecodeError> {
        let start = r.position();
        let tag = r.u8("value tag")?;
        if tag == TAG_NULL {
            return Ok(Value::Null);
        }
        let Some(kind) = FieldKind::from_code(tag) else {
            return Err(DecodeError::new(
                start,
                format!("unknown value tag {tag:#x}"),
            ));
        };
        match kind {
            FieldKind::Scalar(k) => decode_scalar(k, r),
            FieldKind::Array(k) => decode_array(k, r).map(Value::Array),
        }
    }
}

#[inline]
fn decode_scalar(kind: ScalarKind, r: &mut Reader<'_>) -> Result<Value, DecodeError> {
    Ok(match kind {
        ScalarKind::Boolean => match r.u8("boolean")? {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            other => return Err(r.error(format!("boolean byte {other}, not 0 or 1"))),
        },
        ScalarKind::Byte => Value::Byte(r.u8("byte")? as i8),
        ScalarKind::Char => Value::Char(r.varint_max(u64::from(u16::MAX), "char")? as u16),
        ScalarKind::Short => Value::Short(zigzag_in::<i16>(r, "short")?),
        ScalarKind::Int => Value::Int(zigzag_in::<i32>(r, "int")?),
        ScalarKind::Long => Value::Long(r.zigzag("long")?),
        ScalarKind::Float => Value::Float(f32::from_bits(r.u32_le("float")?)),
        ScalarKind::Double => Value::Double(f64::from_bits(r.u64_le("double")?)),
        ScalarKind::String => Value::String(r.str("string")?.to_string()),
        ScalarKind::Reference => {
            let id = r.varint("reference")?;
            if id == 0 {
                return Err(r.error("a reference to object 0 (null is tag 0)"));
            }
            Value::Reference(ObjectId(id))
        }
    })
}

fn zigzag_in<T: TryFrom<i64>>(r: &mut Reader<'_>, what: &str) -> Result<T, DecodeError> {
    let v = r.zigzag(what)?;
    T::try_from(v).map_err(|_| r.error(format!("{what}: {v} out of range")))
}

/// `|len varint|elements|`: booleans and bytes one byte each, chars
/// varints, shorts/ints/longs zigzag varints, floats/doubles LE bits,
/// strings `0` (null) or `1 str`, references varints (0 = null).
fn encode_array(a: &Array, w: &mut Writer) {
    w.varint(a.len() as u64);
    match a {
        Array::Boolean(v) => v.iter().for_each(|x| w.u8(u8::from(*x))),
        Array::Byte(v) => v.iter().for_each(|x| w.u8(*x as u8)),
        Array::Char(v) => v.iter().for_each(|x| w.varint(u64::from(*x))),
        Array::Short(v) => v.iter().for_each(|x| w.zigzag(i64::from(*x))),
        Array::Int(v) => v.iter().for_each(|x| w.zigzag(i64::from(*x))),
        Array::Long(v) => v.iter().for_each(|x| w.zigzag(*x)),
        Array::Float(v) => v.iter().for_each(|x| w.u32_le(x.to_bits())),
        Array::Double(v) => v.iter().for_each(|x| w.u64_le(x.to_bits())),
        Array::String(v) => v.iter().for_each(|x| match x {
            None => w.u8(0),
            Some(s) => {
                w.u8(1);
                w.str(s);
            }
        }),
        Array::Reference(v) => v.iter().for_each(|x| w.varint(x.0)),
    }
}

fn decode_array(kind: ScalarKind, r: &mut Reader<'_>) -> Result<Array, DecodeError> {
    let min_bytes = match kind {
        ScalarKind::Float => 4,
        ScalarKind::Double => 8,
        _ => 1,
    };
    let n = r.count(min_bytes, "array length")?;
    fn collect<T>(
        n: usize,
        r: &mut Reader<'_>,
        mut one: impl FnMut(&mut Reader<'_>) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(one(r)?);
        }
        Ok(out)
    }
    Ok(match kind {
        ScalarKind::Boolean => Array::Boolean(collect(n, r, |r| match r.u8("boolean")? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(r.error(format!("boolean byte {other}, not 0 or 1"))),
        })?),
        ScalarKind::Byte => Array::Byte(collect(n, r, |r| Ok(r.u8("byte")? as i8))?),
        ScalarKind::Char => Array::Char(collect(n, r, |r| {
            Ok(r.varint_max(u64::from(u16::MAX), "char")? as u16)
        })?),
        ScalarKind::Short => Array::Short(collect(n, r, |r| zigzag_in(r, "short"))?),
        ScalarKind::Int => Array::Int(collect(n, r, |r| zigzag_in(r, "int"))?),
        ScalarKind::Long => Array::Long(collect(n, r, |r| r.zigzag("long"))?),
        ScalarKind::Float => {
            Array::Float(collect(n, r, |r| Ok(f32::from_bits(r.u32_le("float")?)))?)
        }
        ScalarKind::Double => {
            Array::Double(collect(n, r, |r| Ok(f64::from_bits(r.u64_le("double")?)))?)
        }
        ScalarKind::String => Array::String(collect(n, r, |r| match r.u8("string presence")? {
            0 => Ok(None),
            1 => Ok(Some(r.str("string")?.to_string())),
            other => Err(r.error(format!("string presence byte {other}, not 0 or 1"))),
        })?),
        ScalarKind::Reference => {
            Array::Reference(collect(n, r, |r| Ok(ObjectId(r.varint("reference")?)))?)
        }
    })
}

/// A change to a logical collection. Applied in order; index operations
/// are checked against the length before the transaction is accepted.
#[derive(Clone, Debug, PartialEq)]
pub enum LogicalOp {
    MapPut(Value, Value),
    MapRemove(Value),
    ListAdd(Value),
    ListInsert(u32, Value),
    ListSet(u32, Value),
    ListRemoveAt(u32),
    SetAdd(Value),
    SetRemove(Value),
    QueueOffer(Value),
    QueuePoll,
    /// Empties any collection.
    Clear,
}

/// Operation codes on the wire (`docs/formats/dna.md`); never reused.
mod op_code {
    pub const MAP_PUT: u8 = 1;
    pub const MAP_REMOVE: u8 = 2;
    pub const LIST_ADD: u8 = 3;
    pub const LIST_INSERT: u8 = 4;
    pub const LIST_SET: u8 = 5;
    pub const LIST_REMOVE_AT: u8 = 6;
    pub const SET_ADD: u8 = 7;
    pub const SET_REMOVE: u8 = 8;
    pub const QUEUE_OFFER: u8 = 9;
    pub const QUEUE_POLL: u8 = 10;
    pub const CLEAR: u8 = 11;
}

impl LogicalOp {
    pub fn name(&self) -> &'static str {
        match self {
            LogicalOp::MapPut(..) => "map put",
            LogicalOp::MapRemove(_) => "map remove",
            LogicalOp::ListAdd(_) => "list add",
            LogicalOp::ListInsert(..) => "list insert",
            LogicalOp::ListSet(..) => "list set",
            LogicalOp::ListRemoveAt(_) => "list remove",
            LogicalOp::SetAdd(_) => "set add",
            LogicalOp::SetRemove(_) => "set remove",
            LogicalOp::QueueOffer(_) => "queue offer",
            LogicalOp::QueuePoll => "queue poll",
            LogicalOp::Clear => "clear",
        }
    }

    /// The collection kind this operation applies to (`None`: any).
    pub fn target(&self) -> Option<ClassKind> {
        match self {
            LogicalOp::MapPut(..) | LogicalOp::MapRemove(_) => Some(ClassKind::Map),
            LogicalOp::ListAdd(_)
            | LogicalOp::ListInsert(..)
            | LogicalOp::ListSet(..)
            | LogicalOp::ListRemoveAt(_) => Some(ClassKind::List),
            LogicalOp::SetAdd(_) | LogicalOp::SetRemove(_) => Some(ClassKind::Set),
            LogicalOp::QueueOffer(_) | LogicalOp::QueuePoll => Some(ClassKind::Queue),
            LogicalOp::Clear => None,
        }
    }

    /// The values this operation stores or looks up.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        let (a, b) = match self {
            LogicalOp::MapPut(k, v) => (Some(k), Some(v)),
            LogicalOp::MapRemove(v)
            | LogicalOp::ListAdd(v)
            | LogicalOp::ListInsert(_, v)
            | LogicalOp::ListSet(_, v)
            | LogicalOp::SetAdd(v)
            | LogicalOp::SetRemove(v)
            | LogicalOp::QueueOffer(v) => (Some(v), None),
            LogicalOp::ListRemoveAt(_) | LogicalOp::QueuePoll | LogicalOp::Clear => (None, None),
        };
        a.into_iter().chain(b)
    }

    /// `|code u8|operands|`: values as `Value`, indexes as varints.
    pub fn encode(&self, w: &mut Writer) {
        use op_code::*;
        match self {
            LogicalOp::MapPut(k, v) => {
                w.u8(MAP_PUT);
                k.encode(w);
                v.encode(w);
            }
            LogicalOp::MapRemove(k) => {
                w.u8(MAP_REMOVE);
                k.encode(w);
            }
            LogicalOp::ListAdd(v) => {
                w.u8(LIST_ADD);
                v.encode(w);
            }
            LogicalOp::ListInsert(i, v) => {
                w.u8(LIST_INSERT);
                w.varint(u64::from(*i));
                v.encode(w);
            }
            LogicalOp::ListSet(i, v) => {
                w.u8(LIST_SET);
                w.varint(u64::from(*i));
                v.encode(w);
            }
            LogicalOp::ListRemoveAt(i) => {
                w.u8(LIST_REMOVE_AT);
                w.varint(u64::from(*i));
            }
            LogicalOp::SetAdd(v) => {
                w.u8(SET_ADD);
                v.encode(w);
            }
            LogicalOp::SetRemove(v) => {
                w.u8(SET_REMOVE);
                v.encode(w);
            }
            LogicalOp::QueueOffer(v) => {
                w.u8(QUEUE_OFFER);
                v.encode(w);
            }
            LogicalOp::QueuePoll => w.u8(QUEUE_POLL),
            LogicalOp::Clear => w.u8(CLEAR),
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<LogicalOp, DecodeError> {
        use op_code::*;
        let index =
            |r: &mut Reader<'_>| r.varint_max(u64::from(u32::MAX), "index").map(|i| i as u32);
        Ok(match r.u8("operation code")? {
            MAP_PUT => LogicalOp::MapPut(Value::decode(r)?, Value::decode(r)?),
            MAP_REMOVE => LogicalOp::MapRemove(Value::decode(r)?),
            LIST_ADD => LogicalOp::ListAdd(Value::decode(r)?),
            LIST_INSERT => LogicalOp::ListInsert(index(r)?, Value::decode(r)?),
            LIST_SET => LogicalOp::ListSet(index(r)?, Value::decode(r)?),
            LIST_REMOVE_AT => LogicalOp::ListRemoveAt(index(r)?),
            SET_ADD => LogicalOp::SetAdd(Value::decode(r)?),
            SET_REMOVE => LogicalOp::SetRemove(Value::decode(r)?),
            QUEUE_OFFER => LogicalOp::QueueOffer(Value::decode(r)?),
            QUEUE_POLL => LogicalOp::QueuePoll,
            CLEAR => LogicalOp::Clear,
            other => return Err(r.error(format!("unknown operation code {other}"))),
        })
    }
}

/// An object's state: a class and a body of the class's kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub class: ClassId,
    pub body: Body,
}

/// Fields in slot order, or a logical collection's contents. Maps and sets
/// keep an order that depends only on the operations applied (so every
/// replay of the same operations gives the same image).
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Fields(Vec<Value>),
    Map(IndexMap<Value, Value>),
    List(Vec<Value>),
    Set(IndexSet<Value>),
    Queue(VecDeque<Value>),
}

impl Object {
    /// A new object of `class`: default field values or an empty collection.
    pub fn new(class: ClassId, def: &ClassDef) -> Object {
        let body = match def.kind {
            ClassKind::Plain => {
                Body::Fields(def.fields.iter().map(|f| f.kind.default_value()).collect())
            }
            ClassKind::Map => Body::Map(IndexMap::new()),
            ClassKind::List => Body::List(Vec::new()),
            ClassKind::Set => Body::Set(IndexSet::new()),
            ClassKind::Queue => Body::Queue(VecDeque::new()),
        };
        Object { class, body }
    }

    pub fn kind(&self) -> ClassKind {
        match self.body {
            Body::Fields(_) => ClassKind::Plain,
            Body::Map(_) => ClassKind::Map,
            Body::List(_) => ClassKind::List,
            Body::Set(_) => ClassKind::Set,
            Body::Queue(_) => ClassKind::Queue,
        }
    }

    /// Number of elements of a collection; fields of a plain object.
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Fields(v) | Body::List(v) => v.len(),
            Body::Map(m) => m.len(),
            Body::Set(s) => s.len(),
            Body::Queue(q) => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A plain object's field at `slot`; `None` for a collection or a slot
    /// past the end.
    pub fn field(&self, slot: u32) -> Option<&Value> {
        match &self.body {
            Body::Fields(fields) => fields.get(slot as usize),
            _ => None,
        }
    }

    /// Sets a field and returns its old value. The caller checked slot
    /// and kind (validation).
    #[inline]
    pub fn set_field(&mut self, slot: u32, value: Value) -> Value {
        std::mem::replace(self.field_mut(slot), value)
    }

    /// The field in `slot`. The caller checked the slot (validation).
    #[inline]
    pub fn field_mut(&mut self, slot: u32) -> &mut Value {
        let kind = self.kind();
        match &mut self.body {
            Body::Fields(fields) => fields
                .get_mut(slot as usize)
                .expect("validated slot within the class"),
            _ => panic!(
                "field write on a {}: validation let it through",
                kind.name()
            ),
        }
    }

    /// Why `op` cannot apply to this object, if it cannot: it must target
    /// the object's kind (`clear` any collection) and list indexes must be
    /// in bounds. `apply` requires this to hold.
    pub fn check_op(&self, op: &LogicalOp) -> Result<(), String> {
        let applies = match op.target() {
            None => self.kind() != ClassKind::Plain,
            Some(kind) => kind == self.kind(),
        };
        if !applies {
            return Err(format!("{} on a {}", op.name(), self.kind().name()));
        }
        if let Body::List(list) = &self.body {
            let len = list.len();
            let bad = match op {
                LogicalOp::ListInsert(i, _) => *i as usize > len,
                LogicalOp::ListSet(i, _) | LogicalOp::ListRemoveAt(i) => *i as usize >= len,
                _ => false,
            };
            if bad {
                return Err(format!("{} out of bounds for length {len}", op.name()));
            }
        }
        Ok(())
    }

    /// Applies a logical operation. The caller checked that it targets this
    /// kind and that indexes are in bounds (`check_op`).
    pub fn apply(&mut self, op: &LogicalOp) {
        match (&mut self.body, op) {
            (Body::Map(m), LogicalOp::MapPut(k, v)) => {
                m.insert(k.clone(), v.clone());
            }
            (Body::Map(m), LogicalOp::MapRemove(k)) => {
                m.swap_remove(k);
            }
            (Body::List(l), LogicalOp::ListAdd(v)) => l.push(v.clone()),
            (Body::List(l), LogicalOp::ListInsert(i, v)) => l.insert(*i as usize, v.clone()),
            (Body::List(l), LogicalOp::ListSet(i, v)) => l[*i as usize] = v.clone(),
            (Body::List(l), LogicalOp::ListRemoveAt(i)) => {
                l.remove(*i as usize);
            }
            (Body::Set(s), LogicalOp::SetAdd(v)) => {
                s.insert(v.clone());
            }
            (Body::Set(s), LogicalOp::SetRemove(v)) => {
                s.swap_remove(v);
            }
            (Body::Queue(q), LogicalOp::QueueOffer(v)) => q.push_back(v.clone()),
            (Body::Queue(q), LogicalOp::QueuePoll) => {
                q.pop_front();
            }
            (Body::Map(m), LogicalOp::Clear) => m.clear(),
            (Body::List(l), LogicalOp::Clear) => l.clear(),
            (Body::Set(s), LogicalOp::Clear) => s.clear(),
            (Body::Queue(q), LogicalOp::Clear) => q.clear(),
            (_, op) => panic!(
                "{} on a {}: validation let it through",
                op.name(),
                self.kind().name()
            ),
        }
    }

    /// Every object this one references.
    pub fn references(&self, out: &mut impl FnMut(ObjectId)) {
        match &self.body {
            Body::Fields(v) | Body::List(v) => v.iter().for_each(|x| x.references(out)),
            Body::Map(m) => m.iter().for_each(|(k, v)| {
                k.references(out);
                v.references(out);
            }),
            Body::Set(s) => s.iter().for_each(|x| x.references(out)),
            Body::Queue(q) => q.iter().for_each(|x| x.references(out)),
        }
    }

    /// Image body v1: `|class varint|kind u8|count varint|items|` where
    /// items are values (fields, list, set, queue) or key-value pairs (map).
    pub fn encode(&self, w: &mut Writer) {
        w.varint(u64::from(self.class.0));
        w.u8(self.kind() as u8);
        w.varint(self.len() as u64);
        match &self.body {
            Body::Fields(v) | Body::List(v) => v.iter().for_each(|x| x.encode(w)),
            Body::Map(m) => m.iter().for_each(|(k, v)| {
                k.encode(w);
                v.encode(w);
            }),
            Body::Set(s) => s.iter().for_each(|x| x.encode(w)),
            Body::Queue(q) => q.iter().for_each(|x| x.encode(w)),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }

    /// Decodes an image body. Structural checks only (the class's field
    /// kinds are checked by `check_against`).
    pub fn decode(bytes: &[u8]) -> Result<Object, DecodeError> {
        let mut r = Reader::new(bytes);
        let class = r.varint_max(u64::from(u32::MAX), "class id")?;
        if class == 0 {
            return Err(r.error("class id 0"));
        }
        let class = ClassId(class as u32);
        let code = r.u8("object kind")?;
        let kind = ClassKind::from_code(code)
            .ok_or_else(|| r.error(format!("unknown object kind {code}")))?;
        let min_item = if kind == ClassKind::Map { 2 } else { 1 };
        let n = r.count(min_item, "element count")?;
        let values = |r: &mut Reader<'_>| -> Result<Vec<Value>, DecodeError> {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(Value::decode(r)?);
            }
            Ok(out)
        };
        let body = match kind {
            ClassKind::Plain => Body::Fields(values(&mut r)?),
            ClassKind::List => Body::List(values(&mut r)?),
            ClassKind::Queue => Body::Queue(values(&mut r)?.into()),
            ClassKind::Set => {
                let mut set = IndexSet::with_capacity(n);
                for _ in 0..n {
                    let at = r.position();
                    if !set.insert(Value::decode(&mut r)?) {
                        return Err(DecodeError::new(at, "a set element appears twice"));
                    }
                }
                Body::Set(set)
            }
            ClassKind::Map => {
                let mut map = IndexMap::with_capacity(n);
                for _ in 0..n {
                    let at = r.position();
                    let key = Value::decode(&mut r)?;
                    let value = Value::decode(&mut r)?;
                    if map.insert(key, value).is_some() {
                        return Err(DecodeError::new(at, "a map key appears twice"));
                    }
                }
                Body::Map(map)
            }
        };
        r.finish("object image")?;
        Ok(Object { class, body })
    }

    /// Why this object does not fit its class definition, if it does not.
    pub fn check_against(&self, def: &ClassDef) -> Option<String> {
        if self.kind() != def.kind {
            return Some(format!(
                "is a {} but {} makes a {}",
                self.kind().name(),
                def.name,
                def.kind.name()
            ));
        }
        if let Body::Fields(values) = &self.body {
            if values.len() != def.fields.len() {
                return Some(format!(
                    "has {} fields, {} declares {}",
                    values.len(),
                    def.name,
                    def.fields.len()
                ));
            }
            for (slot, (value, field)) in values.iter().zip(&def.fields).enumerate() {
                if !value.fits(field.kind) {
                    return Some(format!(
                        "slot {slot} ({}) holds {}, not {}",
                        field.name,
                        value.kind_name(),
                        field.kind
                    ));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_kind_code_reads_back_and_no_other_byte_does() {
        let kinds: Vec<FieldKind> = ScalarKind::ALL
            .iter()
            .flat_map(|&k| [FieldKind::Scalar(k), FieldKind::Array(k)])
            .collect();
        for byte in 0..=u8::MAX {
            let expected = kinds.iter().copied().find(|k| k.code() == byte);
            assert_eq!(FieldKind::from_code(byte), expected, "code {byte:#x}");
        }
    }
}
