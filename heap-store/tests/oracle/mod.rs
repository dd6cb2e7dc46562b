//! The oracle for the transaction decoders, shared by the proptest
//! `decoder_random_bytes.rs` (normal test suite) and the cargo-fuzz target
//! `fuzz/fuzz_targets/dna_transaction.rs` (which includes this file by
//! path), so both check the same thing: the streaming `TransactionReader`
//! that replay uses accepts exactly what `Transaction::decode` accepts,
//! also when it skips the items of some DNAs (as replay does for an object
//! that already has the change), and finds as many DNAs; passing over
//! whole DNAs (as a replay shard does for other shards' objects) finds the
//! same DNAs in whatever `decode` accepts; and reading every DNA's body
//! later, through a `DnaReader` taken before passing over it (as a replay
//! shard does to prefetch a batch of objects before applying their
//! changes) or rebuilt from the DNA's `DnaPlace` (as replay's shared
//! reading hands DNAs to the shards), accepts exactly what `decode`
//! accepts and reads what it builds.
#![allow(dead_code)]

use tc_heap_store::codec::DecodeError;
use tc_heap_store::dna::{Dna, DnaReader, Transaction, TransactionReader};

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

/// Walks `bytes` passing over every other DNA with `skip_rest_of_dna`, as
/// a replay shard does for other shards' objects; returns the objects of
/// the DNAs it read in full.
fn walk_passing_over(bytes: &[u8]) -> Result<Vec<u64>, DecodeError> {
    let (_, mut reader) = TransactionReader::new(bytes)?;
    let mut read = Vec::new();
    let mut index = 0;
    while let Some(start) = reader.next_dna()? {
        if index % 2 == 0 {
            reader.skip_rest_of_dna()?;
        } else {
            while reader.next_field()?.is_some() {}
            while reader.next_op()?.is_some() {}
            read.push(start.object.0);
        }
        index += 1;
    }
    Ok(read)
}

/// Walks `bytes` taking a `DnaReader` of each DNA (for every other DNA,
/// its `DnaPlace`, turned back into a reader) and passing over it, then
/// reads every DNA's body through its reader, in order; returns the DNAs.
fn walk_deferring(bytes: &[u8]) -> Result<Vec<Dna>, DecodeError> {
    let (_, mut reader) = TransactionReader::new(bytes)?;
    let mut deferred: Vec<(Dna, DnaReader<'_>)> = Vec::new();
    while let Some(start) = reader.next_dna()? {
        let dna = Dna {
            object: start.object,
            new_class: start.new_class,
            fields: Vec::new(),
            ops: Vec::new(),
        };
        let body = if deferred.len().is_multiple_of(2) {
            reader.dna_reader()
        } else {
            reader.dna_place().reader(bytes)
        };
        deferred.push((dna, body));
        reader.skip_rest_of_dna()?;
    }
    let mut dnas = Vec::new();
    for (mut dna, mut body) in deferred {
        while let Some(field) = body.next_field()? {
            dna.fields.push(field);
        }
        while let Some(op) = body.next_op()? {
            dna.ops.push(op);
        }
        body.finish()?;
        dnas.push(dna);
    }
    Ok(dnas)
}

/// Decodes `bytes` both ways and panics if they disagree. Passing over
/// DNAs checks less (a v2 DNA passed over is not decoded), so it may
/// accept what `decode` refuses, but never the other way round, and on
/// what `decode` accepts it finds the same DNAs.
pub fn check_reader_agrees(bytes: &[u8]) {
    let decoded = Transaction::decode(bytes);
    match (&decoded, walk_skipping(bytes)) {
        (Ok(tx), Ok(dnas)) => assert_eq!(tx.dnas.len(), dnas, "DNA count"),
        (Err(_), Err(_)) => {}
        (decoded, walked) => panic!("decode gave {decoded:?} but the reader {walked:?}"),
    }
    match (&decoded, walk_deferring(bytes)) {
        (Ok(tx), Ok(dnas)) => assert_eq!(tx.dnas, dnas, "reading DNAs later"),
        (Err(_), Err(_)) => {}
        (decoded, walked) => panic!("decode gave {decoded:?} but reading later {walked:?}"),
    }
    let passed = walk_passing_over(bytes);
    if let Ok(tx) = &decoded {
        let read: Vec<u64> = tx
            .dnas
            .iter()
            .skip(1)
            .step_by(2)
            .map(|d| d.object.0)
            .collect();
        assert_eq!(passed.as_ref().ok(), Some(&read), "passing over DNAs");
    }
}
