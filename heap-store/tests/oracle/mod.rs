//! The oracle for the transaction decoders, shared by the proptest
//! `decoder_random_bytes.rs` (normal test suite) and the cargo-fuzz target
//! `fuzz/fuzz_targets/dna_transaction.rs` (which includes this file by
//! path), so both check the same thing: the streaming `TransactionReader`
//! that replay uses accepts exactly what `Transaction::decode` accepts,
//! also when it skips the items of some DNAs (as replay does for an object
//! that already has the change), and finds as many DNAs.
#![allow(dead_code)]

use tc_heap_store::codec::DecodeError;
use tc_heap_store::dna::{Transaction, TransactionReader};

/// Walks `bytes` reading the items of every other DNA only; returns the
/// number of DNAs.
fn walk_skipping(bytes: &[u8]) -> Result<usize, DecodeError> {
    let (_, mut reader) = TransactionReader::new(bytes)?;
    let mut dnas = 0;
    while reader.next_dna()?.is_some() {
        if dnas % 2 == 0 {
            while reader.next_field()?.is_some() {}
            while reader.next_op()?.is_some() {}
        }
        dnas += 1;
    }
    Ok(dnas)
}

/// Decodes `bytes` both ways and panics if they disagree.
pub fn check_reader_agrees(bytes: &[u8]) {
    match (Transaction::decode(bytes), walk_skipping(bytes)) {
        (Ok(tx), Ok(dnas)) => assert_eq!(tx.dnas.len(), dnas, "DNA count"),
        (Err(_), Err(_)) => {}
        (decoded, walked) => panic!("decode gave {decoded:?} but the reader {walked:?}"),
    }
}
