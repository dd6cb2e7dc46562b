//! tc-client: a session with tc-server, for the JVM agent and the
//! benchmarks.
//!
//! Owns: the session stream (handshake, request ids, heartbeats), the
//! cache of objects this client holds (faulted in, kept coherent by pushed
//! changes), and the client half of cluster locks: one local gate per lock
//! so the threads of this process take turns, and greedy holds kept until
//! the server recalls them.
//! Not: building transactions (tc-model), reconnecting (a reconnect is a
//! new `Client` with the same `client_id`; HA adds resend).
//! Invariants: at most one thread of this client talks to the server about
//! a given lock at a time (`LocalLock::server_op`); a cached object's
//! version is the LSN of the last change in it, and a pushed change is
//! applied only if newer; a greedy hold is released to the server only when
//! no local thread holds the lock.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod locks;
mod session;

pub use locks::LockMode;
pub use session::{Client, ClientConfig, ClientError, Result};
pub use tc_protocol::ErrorCode;

/// A lock: the monitor of a shared object or a named lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockKey {
    Object(u64),
    Named(String),
}

impl LockKey {
    fn to_wire(&self) -> tc_protocol::LockKey {
        match self {
            LockKey::Object(id) => tc_protocol::LockKey::object(*id),
            LockKey::Named(name) => tc_protocol::LockKey::named(name.clone()),
        }
    }

    fn from_wire(key: Option<tc_protocol::LockKey>) -> Option<LockKey> {
        match key?.key? {
            tc_protocol::lock_key::Key::Object(id) => Some(LockKey::Object(id)),
            tc_protocol::lock_key::Key::Name(name) => Some(LockKey::Named(name)),
        }
    }
}
