//! tc-server: the thin network layer that turns the object store into a
//! shared heap: sessions over one gRPC stream each, the commit pipeline
//! with change push, and cluster locks with wait/notify.
//!
//! Layout: `config` (settings), `server` (shared state, service, start and
//! stop), `session` (one client's protocol), `locks` (lock manager: a pure
//! state machine), `holders` (which session holds which object), `metrics` (the
//! Prometheus endpoint).
//! Protocol: `docs/protocol.md`; settings: `docs/configuration.md`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
mod holders;
pub mod locks;
mod metrics;
mod server;
mod session;

pub use config::{ConfigError, ServerConfig};
pub use server::{Server, ServerError, Shared};
