#![no_main]
//! What tc-server decodes from a client's bytes: a `ClientMessage`
//! (protobuf), then inside it a transaction (DNA) and a class definition.
//! Never panics; whatever decodes re-encodes to the same value.

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tc_heap_store::ClassDef;
use tc_heap_store::dna::Transaction;
use tc_protocol::ClientMessage;
use tc_protocol::client_message::Body;

fuzz_target!(|input: &[u8]| {
    let Ok(message) = ClientMessage::decode(input) else { return };
    let again = ClientMessage::decode(message.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert_eq!(again, message);
    let transaction = match &message.body {
        Some(Body::Commit(commit)) => Some(&commit.transaction),
        Some(Body::Release(release)) => Some(&release.transaction),
        Some(Body::Wait(wait)) => Some(&wait.transaction),
        Some(Body::RegisterClass(register)) => {
            if let Ok(def) = ClassDef::from_bytes(&register.definition) {
                assert_eq!(ClassDef::from_bytes(&def.to_bytes()).expect("round trip"), def);
            }
            None
        }
        _ => None,
    };
    if let Some(Ok(tx)) = transaction.map(|bytes| Transaction::decode(bytes)) {
        assert_eq!(Transaction::decode(&tx.encode()).expect("round trip"), tx);
    }
});
