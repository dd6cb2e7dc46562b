#![no_main]
//! What tc-client decodes from the server's bytes: a `ServerMessage`
//! (protobuf), then inside it object images, pushed transactions and class
//! definitions. Never panics.

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tc_heap_store::ClassDef;
use tc_heap_store::dna::Transaction;
use tc_heap_store::model::Object;
use tc_protocol::ServerMessage;
use tc_protocol::server_message::Body;

fuzz_target!(|input: &[u8]| {
    let Ok(message) = ServerMessage::decode(input) else { return };
    match &message.body {
        Some(Body::Objects(objects)) => {
            for data in &objects.objects {
                if let Ok(object) = Object::decode(&data.body) {
                    assert_eq!(Object::decode(&object.to_bytes()).expect("round trip").to_bytes(), object.to_bytes());
                }
            }
        }
        Some(Body::Push(push)) => {
            let _ = Transaction::decode(&push.transaction);
        }
        Some(Body::ClassData(data)) => {
            let _ = ClassDef::from_bytes(&data.definition);
        }
        _ => {}
    }
});
