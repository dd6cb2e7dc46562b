#![no_main]
//! The body of a data-segment image (an object: class, kind, fields or
//! collection contents; `docs/formats/dna.md`) and the checkpoint file, on
//! arbitrary bytes. Never panics; what decodes round-trips.

use libfuzzer_sys::fuzz_target;
use tc_heap_store::checkpoint::Checkpoint;
use tc_heap_store::model::Object;

fuzz_target!(|input: &[u8]| {
    if let Ok(object) = Object::decode(input) {
        let again = Object::decode(&object.to_bytes()).expect("an encoded object decodes");
        assert_eq!(again, object, "object round trip");
    }
    if let Ok(checkpoint) = Checkpoint::decode(input) {
        assert_eq!(Checkpoint::decode(&checkpoint.encode()).expect("re-decodes"), checkpoint);
    }
});
