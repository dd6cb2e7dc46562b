//! How values, objects and logical operations are printed, as text and as
//! JSON.
//!
//! Text: strings quoted (Rust escapes), chars in single quotes, references
//! `@id`, `null`, arrays `[a, b, ...]` (the first `ARRAY_TEXT_ITEMS_MAX`
//! elements, then how many more). JSON: scalars as JSON scalars (non-finite
//! floats as the strings "NaN", "inf", "-inf"), references as
//! `{"ref": id}`, chars as one-character strings (or `{"char": code}` for
//! a lone surrogate), arrays as JSON arrays, in full.

use serde_json::{Value as Json, json};
use tc_heap_store::model::{Array, Body, LogicalOp, Object};
use tc_heap_store::{ClassDef, ObjectId, Value};

/// Elements of an array printed in text before `... (N more)`.
pub const ARRAY_TEXT_ITEMS_MAX: usize = 32;

pub fn char_text(c: u16) -> String {
    match char::from_u32(u32::from(c)) {
        Some(ch) => format!("{ch:?}"),
        None => format!("'\\u{{{c:04x}}}'"),
    }
}

fn list_text<T>(items: &[T], one: impl Fn(&T) -> String) -> String {
    let mut parts: Vec<String> = items.iter().take(ARRAY_TEXT_ITEMS_MAX).map(one).collect();
    if items.len() > ARRAY_TEXT_ITEMS_MAX {
        parts.push(format!("... ({} more)", items.len() - ARRAY_TEXT_ITEMS_MAX));
    }
    format!("[{}]", parts.join(", "))
}

pub fn value_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Boolean(v) => v.to_string(),
        Value::Byte(v) => v.to_string(),
        Value::Char(v) => char_text(*v),
        Value::Short(v) => v.to_string(),
        Value::Int(v) => v.to_string(),
        Value::Long(v) => v.to_string(),
        Value::Float(v) => format!("{v:?}"),
        Value::Double(v) => format!("{v:?}"),
        Value::String(v) => format!("{v:?}"),
        Value::Reference(id) => id.to_string(),
        Value::Array(a) => array_text(a),
    }
}

pub fn array_text(array: &Array) -> String {
    match array {
        Array::Boolean(v) => list_text(v, |x| x.to_string()),
        Array::Byte(v) => list_text(v, |x| x.to_string()),
        Array::Char(v) => list_text(v, |x| char_text(*x)),
        Array::Short(v) => list_text(v, |x| x.to_string()),
        Array::Int(v) => list_text(v, |x| x.to_string()),
        Array::Long(v) => list_text(v, |x| x.to_string()),
        Array::Float(v) => list_text(v, |x| format!("{x:?}")),
        Array::Double(v) => list_text(v, |x| format!("{x:?}")),
        Array::String(v) => list_text(v, |x| match x {
            Some(s) => format!("{s:?}"),
            None => "null".to_string(),
        }),
        Array::Reference(v) => list_text(v, |x| {
            if x.is_null() {
                "null".to_string()
            } else {
                x.to_string()
            }
        }),
    }
}

fn float_json(v: f64) -> Json {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

fn char_json(c: u16) -> Json {
    match char::from_u32(u32::from(c)) {
        Some(ch) => json!(ch.to_string()),
        None => json!({ "char": c }),
    }
}

pub fn ref_json(id: ObjectId) -> Json {
    if id.is_null() {
        Json::Null
    } else {
        json!({ "ref": id.0 })
    }
}

pub fn value_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(v) => json!(v),
        Value::Byte(v) => json!(v),
        Value::Char(v) => char_json(*v),
        Value::Short(v) => json!(v),
        Value::Int(v) => json!(v),
        Value::Long(v) => json!(v),
        Value::Float(v) => float_json(f64::from(*v)),
        Value::Double(v) => float_json(*v),
        Value::String(v) => json!(v),
        Value::Reference(id) => ref_json(*id),
        Value::Array(a) => array_json(a),
    }
}

pub fn array_json(array: &Array) -> Json {
    let items: Vec<Json> = match array {
        Array::Boolean(v) => v.iter().map(|x| json!(x)).collect(),
        Array::Byte(v) => v.iter().map(|x| json!(x)).collect(),
        Array::Char(v) => v.iter().map(|x| char_json(*x)).collect(),
        Array::Short(v) => v.iter().map(|x| json!(x)).collect(),
        Array::Int(v) => v.iter().map(|x| json!(x)).collect(),
        Array::Long(v) => v.iter().map(|x| json!(x)).collect(),
        Array::Float(v) => v.iter().map(|x| float_json(f64::from(*x))).collect(),
        Array::Double(v) => v.iter().map(|x| float_json(*x)).collect(),
        Array::String(v) => v.iter().map(|x| json!(x)).collect(),
        Array::Reference(v) => v.iter().map(|x| ref_json(*x)).collect(),
    };
    Json::Array(items)
}

pub fn op_text(op: &LogicalOp) -> String {
    match op {
        LogicalOp::MapPut(k, v) => format!("put {} => {}", value_text(k), value_text(v)),
        LogicalOp::MapRemove(k) => format!("remove {}", value_text(k)),
        LogicalOp::ListAdd(v) => format!("add {}", value_text(v)),
        LogicalOp::ListInsert(i, v) => format!("insert [{i}] {}", value_text(v)),
        LogicalOp::ListSet(i, v) => format!("set [{i}] {}", value_text(v)),
        LogicalOp::ListRemoveAt(i) => format!("remove [{i}]"),
        LogicalOp::SetAdd(v) => format!("add {}", value_text(v)),
        LogicalOp::SetRemove(v) => format!("remove {}", value_text(v)),
        LogicalOp::QueueOffer(v) => format!("offer {}", value_text(v)),
        LogicalOp::QueuePoll => "poll".to_string(),
        LogicalOp::Clear => "clear".to_string(),
    }
}

pub fn op_json(op: &LogicalOp) -> Json {
    let name = op.name();
    match op {
        LogicalOp::MapPut(k, v) => {
            json!({ "op": name, "key": value_json(k), "value": value_json(v) })
        }
        LogicalOp::MapRemove(k) => json!({ "op": name, "key": value_json(k) }),
        LogicalOp::ListInsert(i, v) | LogicalOp::ListSet(i, v) => {
            json!({ "op": name, "index": i, "value": value_json(v) })
        }
        LogicalOp::ListRemoveAt(i) => json!({ "op": name, "index": i }),
        LogicalOp::ListAdd(v)
        | LogicalOp::SetAdd(v)
        | LogicalOp::SetRemove(v)
        | LogicalOp::QueueOffer(v) => json!({ "op": name, "value": value_json(v) }),
        LogicalOp::QueuePoll | LogicalOp::Clear => json!({ "op": name }),
    }
}

/// An object's contents as text lines (without indentation): fields by
/// name (or by slot when the class does not say), or collection elements.
pub fn body_lines(object: &Object, def: Option<&ClassDef>) -> Vec<String> {
    match &object.body {
        Body::Fields(values) => values
            .iter()
            .enumerate()
            .map(|(slot, v)| format!("{} = {}", field_name(def, slot), value_text(v)))
            .collect(),
        Body::List(values) => values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("[{i}] {}", value_text(v)))
            .collect(),
        Body::Queue(values) => values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("[{i}] {}", value_text(v)))
            .collect(),
        Body::Set(values) => values.iter().map(value_text).collect(),
        Body::Map(map) => map
            .iter()
            .map(|(k, v)| format!("{} => {}", value_text(k), value_text(v)))
            .collect(),
    }
}

/// An object's contents as JSON: `{"fields": {name: value}}` for a plain
/// object, `{"elements": [...]}` for a list, queue or set,
/// `{"entries": [{"key", "value"}]}` for a map.
pub fn body_json(object: &Object, def: Option<&ClassDef>) -> Json {
    match &object.body {
        Body::Fields(values) => {
            let fields: serde_json::Map<String, Json> = values
                .iter()
                .enumerate()
                .map(|(slot, v)| (field_name(def, slot), value_json(v)))
                .collect();
            json!({ "fields": fields })
        }
        Body::List(values) => {
            json!({ "elements": values.iter().map(value_json).collect::<Vec<_>>() })
        }
        Body::Queue(values) => {
            json!({ "elements": values.iter().map(value_json).collect::<Vec<_>>() })
        }
        Body::Set(values) => {
            json!({ "elements": values.iter().map(value_json).collect::<Vec<_>>() })
        }
        Body::Map(map) => json!({
            "entries": map
                .iter()
                .map(|(k, v)| json!({ "key": value_json(k), "value": value_json(v) }))
                .collect::<Vec<_>>()
        }),
    }
}

/// The name of field `slot` of `def`, or `#slot` when unknown.
pub fn field_name(def: Option<&ClassDef>, slot: usize) -> String {
    def.and_then(|d| d.fields.get(slot))
        .map_or_else(|| format!("#{slot}"), |f| f.name.clone())
}

/// The references of an object, each with a label saying where it sits:
/// a field name, `[index]`, `{key}` (map value), `key` (map key) or
/// `elem` (set element).
pub fn labelled_references(object: &Object, def: Option<&ClassDef>) -> Vec<(String, ObjectId)> {
    let mut out = Vec::new();
    let mut push = |label: String, value: &Value| match value {
        Value::Reference(id) => out.push((label, *id)),
        Value::Array(Array::Reference(ids)) => {
            for (i, id) in ids.iter().enumerate().filter(|(_, id)| !id.is_null()) {
                out.push((format!("{label}[{i}]"), *id));
            }
        }
        _ => {}
    };
    match &object.body {
        Body::Fields(values) => {
            for (slot, v) in values.iter().enumerate() {
                push(field_name(def, slot), v);
            }
        }
        Body::List(values) => {
            for (i, v) in values.iter().enumerate() {
                push(format!("[{i}]"), v);
            }
        }
        Body::Queue(values) => {
            for (i, v) in values.iter().enumerate() {
                push(format!("[{i}]"), v);
            }
        }
        Body::Set(values) => {
            for v in values {
                push("element".to_string(), v);
            }
        }
        Body::Map(map) => {
            for (k, v) in map {
                push("key".to_string(), k);
                push(format!("{{{}}}", value_text(k)), v);
            }
        }
    }
    out
}
