#![no_main]
//! The store's WAL record decoders (`docs/formats/dna.md`): a transaction
//! (DNA) and the other record kinds, on arbitrary bytes. Never panics;
//! whatever decodes re-encodes (in format v2 and in v1) to something that
//! decodes to the same value; the streaming reader replay uses agrees with
//! `decode` (the oracle shared with the normal test suite).

use libfuzzer_sys::fuzz_target;
use tc_heap_store::dna::Transaction;
use tc_heap_store::records::StoreRecord;

#[path = "../../heap-store/tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|input: &[u8]| {
    let Some((&kind, payload)) = input.split_first() else { return };
    oracle::check_reader_agrees(payload);
    if let Ok(tx) = Transaction::decode(payload) {
        let again = Transaction::decode(&tx.encode()).expect("an encoded transaction decodes");
        assert_eq!(again, tx, "transaction round trip");
        let v1 = Transaction::decode(&tx.encode_v1()).expect("a transaction in format v1 decodes");
        assert_eq!(v1, tx, "transaction round trip through format v1");
    }
    if let Ok(record) = StoreRecord::decode(kind % 6, payload) {
        assert_eq!(record.kind(), kind % 6);
        let again = StoreRecord::decode(record.kind(), &record.encode()).expect("an encoded record decodes");
        assert_eq!(again, record, "record round trip");
    }
});
