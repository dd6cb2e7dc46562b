//! The running server: the state every session shares, the gRPC service,
//! start-up and the orderly stop.
//!
//! Owns: the store handle, the lock manager, the holder map, the table of
//! live sessions, the stop signal; delivering lock effects to sessions.
//! Not: one session's protocol (`session.rs`), settings (`config.rs`).
//! Invariants: lock state is changed only under `locks`, and the effects a
//! change produces are delivered after the mutex is released, in the order
//! produced; a stop finishes every commit already accepted, then
//! checkpoints, before `run` returns.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tc_heap_store::{Store, StoreError};
use tc_protocol::tc_server::{Tc, TcServer};
use tc_protocol::{
    CheckpointReply, CheckpointRequest, ClientMessage, HealthReply, HealthRequest,
    PROTOCOL_VERSION, ServerMessage,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::config::{ConfigError, ServerConfig};
use crate::holders::Holders;
use crate::locks::{
    Effect, LockCounters, LockKey, LockManager, LockManagerConfig, LockStats, SessionId,
};
use crate::metrics::{self, Metrics};
use crate::session::{self, SessionHandle};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the data dir {}: {source}", dir.display())]
    Store {
        dir: std::path::PathBuf,
        source: StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("closing the store: {0}")]
    Close(StoreError),
}

/// What every session shares.
pub struct Shared {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub config: ServerConfig,
    pub epoch: u64,
    pub holders: Holders,
    locks: Mutex<LockManager>,
    sessions: Mutex<HashMap<SessionId, Arc<SessionHandle>>>,
    next_session: AtomicU64,
    stopping: watch::Sender<bool>,
    /// Session tasks still running (including ones past their handshake's
    /// end, finishing in-flight requests).
    pub(crate) running_sessions: AtomicUsize,
    pub(crate) sessions_ended: tokio::sync::Notify,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Runs `f` on the lock manager, then delivers the effects it produced.
    pub fn with_locks<R>(&self, f: impl FnOnce(&mut LockManager, &mut Vec<Effect>) -> R) -> R {
        let mut effects = Vec::new();
        let result = f(&mut lock(&self.locks), &mut effects);
        self.deliver(effects);
        result
    }

    fn deliver(&self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let sessions = lock(&self.sessions);
        for effect in effects {
            let target = match &effect {
                Effect::Granted { session, .. }
                | Effect::Recall { session, .. }
                | Effect::WaitDone { session, .. } => *session,
            };
            match sessions.get(&target) {
                Some(handle) => handle.deliver(effect),
                None => warn!(
                    session = target,
                    ?effect,
                    "lock effect for a session that is gone"
                ),
            }
        }
    }

    pub fn session(&self, id: SessionId) -> Option<Arc<SessionHandle>> {
        lock(&self.sessions).get(&id).cloned()
    }

    pub fn register(&self, make: impl FnOnce(SessionId) -> SessionHandle) -> Arc<SessionHandle> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(make(id));
        lock(&self.sessions).insert(id, handle.clone());
        handle
    }

    /// Forgets a session: its locks, queued requests and waits are freed
    /// (and the next holders granted), its holdings dropped.
    pub fn unregister(&self, handle: &SessionHandle) {
        lock(&self.sessions).remove(&handle.id);
        self.with_locks(|locks, effects| locks.drop_session(handle.id, effects));
        handle.cancel_wait_timers();
        for id in handle.take_held() {
            self.holders.remove(id, handle.id);
        }
    }

    /// Lock statistics and the `n` most contended live locks.
    pub fn lock_stats(&self, n: usize) -> (LockStats, Vec<(LockKey, LockCounters)>) {
        let locks = lock(&self.locks);
        (locks.stats(), locks.hottest(n))
    }

    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }
}

struct Service {
    shared: Arc<Shared>,
}

type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

#[tonic::async_trait]
impl Tc for Service {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (outbound, receiver) = mpsc::channel(self.shared.config.session_send_queue as usize);
        tokio::spawn(session::run(self.shared.clone(), inbound, outbound, peer));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        let stopping = *self.shared.stopping.borrow();
        let locks = lock(&self.shared.locks).stats();
        let failure = self.shared.store.failure();
        let status = match (&failure, stopping) {
            (Some(_), _) => "failed",
            (None, true) => "stopping",
            (None, false) => "serving",
        };
        Ok(Response::new(HealthReply {
            status: status.to_string(),
            failure: failure.map(|cause| cause.to_string()).unwrap_or_default(),
            protocol_version: PROTOCOL_VERSION,
            epoch: self.shared.epoch,
            sessions: self.shared.session_count() as u64,
            applied_lsn: self.shared.store.stats().applied_lsn.0,
            queued_lock_requests: locks.queued as u64,
            live_locks: locks.locks_live as u64,
        }))
    }

    async fn checkpoint(
        &self,
        _: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointReply>, Status> {
        let store = self.shared.store.clone();
        let report = tokio::task::spawn_blocking(move || store.checkpoint())
            .await
            .map_err(|err| Status::internal(err.to_string()))?
            .map_err(|err| Status::unavailable(err.to_string()))?;
        Ok(Response::new(CheckpointReply {
            checkpoint_lsn: report.lsn.0,
            images_written: report.images_written as u64,
        }))
    }
}

/// A server bound to its address, its store open, not yet serving.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// Checks the settings, opens (and recovers) the store, binds the
    /// listener. Creates the data dir if absent.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate()?;
        let dir = config.data_dir.clone();
        let store_config = config.store_config();
        let epoch = store_config.wal.epoch;
        let store = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|err| ServerError::Store {
                dir: dir.clone(),
                source: StoreError::Io {
                    op: "create",
                    path: dir.clone(),
                    source: Arc::new(err),
                },
            })?;
            Store::open(&dir, store_config).map_err(|source| ServerError::Store { dir, source })
        })
        .await
        .expect("store open does not panic")?;
        let report = store.open_report().clone();
        info!(
            checkpoint_lsn = report.checkpoint_lsn.0,
            replayed_records = report.replayed_records,
            replay_ms = report.replay_time.as_millis() as u64,
            "store open"
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Listen { addr, source })?,
            ),
            None => None,
        };
        let locks = LockManager::new(LockManagerConfig {
            max_pending_per_session: config.max_in_flight as usize,
        });
        let shared = Arc::new(Shared {
            store: Arc::new(store),
            metrics: Arc::new(Metrics::new()),
            epoch,
            holders: Holders::new(),
            locks: Mutex::new(locks),
            sessions: Mutex::default(),
            next_session: AtomicU64::new(1),
            stopping: watch::channel(false).0,
            running_sessions: AtomicUsize::new(0),
            sessions_ended: tokio::sync::Notify::new(),
            config,
        });
        Ok(Server {
            shared,
            listener,
            metrics_listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `stop` completes, then stops in order: no new sessions,
    /// sessions end after their in-flight requests, a checkpoint, the store
    /// closed.
    pub async fn run(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let shared = self.shared;
        if let Some(listener) = self.metrics_listener {
            let mut stopping = shared.stopping();
            tokio::spawn(metrics::serve(
                listener,
                shared.metrics.clone(),
                Arc::downgrade(&shared),
                async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                },
            ));
        }
        let max_message = shared.config.max_message_bytes as usize;
        let service = TcServer::new(Service {
            shared: shared.clone(),
        })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message.max(64 << 20));
        let stop_sessions = shared.stopping.clone();
        let signal = async move {
            stop.await;
            info!("stopping: no new sessions; finishing in-flight requests");
            stop_sessions.send_replace(true);
        };
        let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            Box::pin(
                tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(Duration::from_secs(10)))
                    .tcp_nodelay(true)
                    // One stream carries a whole session: the default 64 KiB
                    // flow-control window would throttle it.
                    .initial_stream_window_size(Some(8 << 20))
                    .initial_connection_window_size(Some(8 << 20))
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        // Nagle off on every accepted socket: small replies
                        // must not wait for the peer's delayed ACK.
                        tonic::transport::server::TcpIncoming::from(self.listener)
                            .with_nodelay(Some(true)),
                        signal,
                    ),
            );
        serve.await?;
        session::wait_all_ended(&shared, Duration::from_secs(30)).await;
        close_store(shared).await
    }
}

/// Checkpoints and closes the store once no session task uses it.
async fn close_store(shared: Arc<Shared>) -> Result<(), ServerError> {
    let store = shared.store.clone();
    drop(shared);
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut store = store;
        loop {
            match Arc::try_unwrap(store) {
                Ok(store) => return store.close().map_err(ServerError::Close),
                Err(shared) if std::time::Instant::now() >= deadline => {
                    warn!("store still in use after 30 s; checkpointing without closing");
                    return shared.checkpoint().map(|_| ()).map_err(ServerError::Close);
                }
                Err(shared) => {
                    store = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    })
    .await
    .expect("store close does not panic")?;
    info!("store closed after a checkpoint");
    Ok(())
}
