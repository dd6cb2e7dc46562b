//! tc-protocol: the wire protocol between tc clients (the JVM agent, the
//! Rust client, the benchmarks) and tc-server, version 1.
//!
//! Owns: the messages of the session stream and the unary RPCs
//! (`proto/tc.proto`, compiled by `build.rs` without a system `protoc`),
//! the protocol version and the fixed bounds both sides check.
//! Not: what a transaction's bytes mean (tc-model, `docs/formats/dna.md`),
//! the bounds a server chooses at run time (sent in `Welcome.limits`).
//! The protocol is documented in `docs/protocol.md`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("tc.v1");
}

pub use generated::*;

/// The version this crate speaks; `Hello` and `Welcome` carry it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Most ids in one `FetchObjects`.
pub const MAX_FETCH_IDS: usize = 1024;
/// Most ids in one `DropObjects`.
pub const MAX_DROP_IDS: usize = 65_536;
/// Longest lock or root name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;
/// Longest client name in `Hello`, in bytes.
pub const MAX_CLIENT_NAME_BYTES: usize = 256;
/// Most bytes of an encoded class definition.
pub const MAX_CLASS_DEFINITION_BYTES: usize = 64 * 1024;

impl LockKey {
    pub fn object(id: u64) -> LockKey {
        LockKey {
            key: Some(lock_key::Key::Object(id)),
        }
    }

    pub fn named(name: impl Into<String>) -> LockKey {
        LockKey {
            key: Some(lock_key::Key::Name(name.into())),
        }
    }
}

impl ClientMessage {
    pub fn new(request: u64, body: client_message::Body) -> ClientMessage {
        ClientMessage {
            request,
            body: Some(body),
        }
    }
}

impl ServerMessage {
    pub fn new(request: u64, body: server_message::Body) -> ServerMessage {
        ServerMessage {
            request,
            body: Some(body),
        }
    }

    pub fn error(request: u64, code: ErrorCode, message: impl Into<String>, fatal: bool) -> Self {
        ServerMessage::new(
            request,
            server_message::Body::Error(Error {
                code: code as i32,
                message: message.into(),
                fatal,
            }),
        )
    }
}
