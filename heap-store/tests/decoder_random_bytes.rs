//! The store's decoders fed random and mutated bytes in the normal test
//! suite (the fuzz targets in `fuzz/` go further): transactions and the
//! other WAL records, object image bodies and the checkpoint file never
//! panic, and a single flipped byte or a truncation of a valid encoding is
//! an error or decodes to something that round-trips.
//!
//! `TC_PROPTEST_CASES` overrides the number of cases (default 4096).

mod oracle;

use proptest::prelude::*;
use tc_heap_store::checkpoint::Checkpoint;
use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::model::{Array, LogicalOp, Object};
use tc_heap_store::records::StoreRecord;
use tc_heap_store::{ClassDef, ClassId, ClassKind, FieldKind, Lsn, ObjectId, ScalarKind, Value};

fn cases() -> u32 {
    std::env::var("TC_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096)
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        any::<i8>().prop_map(Value::Byte),
        any::<u16>().prop_map(Value::Char),
        any::<i16>().prop_map(Value::Short),
        any::<i32>().prop_map(Value::Int),
        any::<i64>().prop_map(Value::Long),
        any::<f32>().prop_map(Value::Float),
        any::<f64>().prop_map(Value::Double),
        ".{0,12}".prop_map(Value::String),
        (1u64..1 << 40).prop_map(|id| Value::Reference(ObjectId(id))),
        prop::collection::vec(any::<i32>(), 0..6).prop_map(|v| Value::Array(Array::Int(v))),
        prop::collection::vec(prop::option::of(".{0,4}"), 0..4)
            .prop_map(|v| Value::Array(Array::String(v))),
        prop::collection::vec(0u64..100, 0..4)
            .prop_map(|v| Value::Array(Array::Reference(v.into_iter().map(ObjectId).collect()))),
    ]
}

fn op() -> impl Strategy<Value = LogicalOp> {
    prop_oneof![
        (value(), value()).prop_map(|(k, v)| LogicalOp::MapPut(k, v)),
        value().prop_map(LogicalOp::MapRemove),
        value().prop_map(LogicalOp::ListAdd),
        (any::<u32>(), value()).prop_map(|(i, v)| LogicalOp::ListInsert(i, v)),
        any::<u32>().prop_map(LogicalOp::ListRemoveAt),
        value().prop_map(LogicalOp::QueueOffer),
        Just(LogicalOp::QueuePoll),
        Just(LogicalOp::Clear),
    ]
}

fn transaction() -> impl Strategy<Value = Transaction> {
    let dna = (
        1u64..1000,
        prop::option::of(1u32..50),
        prop::collection::vec((0u32..20, value()), 0..4),
        prop::collection::vec(op(), 0..3),
    )
        .prop_map(|(id, class, fields, ops)| Dna {
            object: ObjectId(id),
            new_class: class.map(ClassId),
            fields,
            ops,
        });
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(dna, 0..4),
        prop::collection::vec(("[a-z]{1,6}", 1u64..1000), 0..2),
    )
        .prop_map(|(client, seq, mut dnas, roots)| {
            dnas.sort_by_key(|d| d.object);
            dnas.dedup_by_key(|d| d.object);
            Transaction {
                client,
                seq,
                lock: LockRef::Named("l".into()),
                roots: roots.into_iter().map(|(n, id)| (n, ObjectId(id))).collect(),
                dnas,
            }
        })
}

fn list_object() -> impl Strategy<Value = Object> {
    prop::collection::vec(value(), 0..8).prop_map(|values| {
        let mut object = Object::new(ClassId(3), &ClassDef::collection("L", ClassKind::List));
        values
            .into_iter()
            .for_each(|v| object.apply(&LogicalOp::ListAdd(v)));
        object
    })
}

/// Decodes `bytes` with every decoder; each must return, never panic.
fn decode_everything(bytes: &[u8]) {
    oracle::check_reader_agrees(bytes);
    for kind in 0..6 {
        let _ = StoreRecord::decode(kind, bytes);
    }
    if let Ok(object) = Object::decode(bytes) {
        assert_eq!(Object::decode(&object.to_bytes()).unwrap(), object);
    }
    let _ = Checkpoint::decode(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes);
    }

    #[test]
    fn transactions_round_trip_and_damage_is_an_error(tx in transaction(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let bytes = tx.encode();
        prop_assert_eq!(&Transaction::decode(&bytes).unwrap(), &tx);
        for len in 0..bytes.len() {
            prop_assert!(Transaction::decode(&bytes[..len]).is_err(), "a {}-byte prefix decoded", len);
        }
        let mut damaged = bytes.clone();
        let i = at.index(damaged.len());
        damaged[i] ^= flip;
        decode_everything(&damaged);
        if let Ok(other) = Transaction::decode(&damaged) {
            prop_assert_eq!(Transaction::decode(&other.encode()).unwrap(), other);
        }
    }

    #[test]
    fn object_images_round_trip_and_mutations_never_panic(object in list_object(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let bytes = object.to_bytes();
        prop_assert_eq!(&Object::decode(&bytes).unwrap(), &object);
        let mut damaged = bytes.clone();
        let i = at.index(damaged.len());
        damaged[i] ^= flip;
        decode_everything(&damaged);
        decode_everything(&bytes[..i]);
    }
}

#[test]
fn a_checkpoint_with_every_kind_of_class_round_trips() {
    let checkpoint = Checkpoint {
        lsn: Lsn(99),
        next_id: 7,
        next_segment: 2,
        classes: vec![
            ClassDef::plain("a", &[("x", FieldKind::Array(ScalarKind::Double))]),
            ClassDef::collection("m", ClassKind::Map),
        ],
        roots: vec![("r".into(), ObjectId(3))],
    };
    assert_eq!(
        Checkpoint::decode(&checkpoint.encode()).unwrap(),
        checkpoint
    );
}
