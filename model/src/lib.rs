//! tc-model: what a shared object is and how a change to it is written
//! down. Used by the store (which persists and applies changes), the server,
//! the client library and the JVM agent (which encode them); it does no I/O.
//!
//! Layout: `codec` (varints, strings, fixed-offset integers), `model` (ids,
//! classes, values, objects, logical operations), `dna` (the transaction
//! encoding). Formats: `docs/formats/dna.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod dna;
pub mod model;

pub use dna::{Dna, DnaReader, DnaStart, Transaction, TransactionReader};
pub use model::{
    Array, ClassDef, ClassId, ClassKind, FieldDef, FieldKind, Object, ObjectId, ScalarKind, Value,
};
