//! The session: connect and handshake, requests and their replies, the
//! reader task (replies, pushes, recalls) and heartbeats, the object cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tc_model::{ClassDef, ClassId, Dna, Object, ObjectId, Transaction};
use tc_protocol::client_message::Body as In;
use tc_protocol::server_message::Body as Out;
use tc_protocol::tc_client::TcClient;
use tc_protocol::{ClientMessage, ErrorCode, Hello, PROTOCOL_VERSION, ServerMessage, Welcome};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::LockKey;
use crate::locks::LocalLocks;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server refused a request; the session goes on unless `fatal`.
    #[error("server refused ({code:?}): {message}")]
    Refused {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
    #[error("session closed: {0}")]
    Closed(String),
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("unexpected reply from the server: {0}")]
    Protocol(String),
    /// A local misuse, like unlocking a lock this thread does not hold.
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// HTTP/2 flow-control windows: one session stream carries every thread's
/// requests, so the default 64 KiB would throttle it.
const WINDOW_BYTES: u32 = 8 << 20;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` of the server.
    pub endpoint: String,
    /// Stays the same across reconnects of this process.
    pub client_id: u64,
    pub name: String,
    /// Keep locks until the server recalls them.
    pub greedy_locks: bool,
}

impl ClientConfig {
    pub fn new(addr: impl std::fmt::Display, client_id: u64) -> ClientConfig {
        ClientConfig {
            endpoint: format!("http://{addr}"),
            client_id,
            name: String::new(),
            greedy_locks: true,
        }
    }
}

/// An object this client holds, at a version.
#[derive(Clone, Debug, PartialEq)]
pub struct Cached {
    pub object: Object,
    pub version: u64,
}

#[derive(Default)]
struct ObjectCache {
    objects: HashMap<ObjectId, Cached>,
    /// Objects asked for and not arrived yet, with the pushes that came
    /// meanwhile (applied on arrival if newer than the image).
    fetching: HashMap<ObjectId, Vec<(u64, Arc<Transaction>)>>,
}

pub(crate) struct Inner {
    outbound: mpsc::Sender<ClientMessage>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Out>>>>,
    next_request: AtomicU64,
    next_seq: AtomicU64,
    pub(crate) config: ClientConfig,
    welcome: Welcome,
    cache: Mutex<ObjectCache>,
    pub(crate) locks: LocalLocks,
    closed: Mutex<Option<String>>,
    /// Signalled once when the session ends.
    ended: tokio::sync::watch::Sender<bool>,
    pushes_applied: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A session with tc-server. Cheap to clone; every clone is the same
/// session. The session ends when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl Client {
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let connect_error = |message: String| ClientError::Connect {
            addr: config.endpoint.clone(),
            message,
        };
        let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|err| connect_error(format!("bad endpoint: {err}")))?
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(WINDOW_BYTES))
            .initial_connection_window_size(Some(WINDOW_BYTES))
            .connect()
            .await
            .map_err(|err| connect_error(format!("{err:?}")))?;
        let mut grpc = TcClient::new(channel).max_decoding_message_size(256 << 20);
        let (outbound, receiver) = mpsc::channel(4096);
        outbound
            .send(ClientMessage::new(
                1,
                In::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    client_id: config.client_id,
                    client_name: config.name.clone(),
                }),
            ))
            .await
            .map_err(|_| connect_error("stream closed".into()))?;
        let mut inbound = grpc
            .session(ReceiverStream::new(receiver))
            .await
            .map_err(|status| connect_error(status.message().to_string()))?
            .into_inner();
        let welcome = match inbound.message().await {
            Ok(Some(ServerMessage {
                body: Some(Out::Welcome(welcome)),
                ..
            })) => welcome,
            Ok(Some(ServerMessage {
                body: Some(Out::Error(error)),
                ..
            })) => return Err(refusal(error)),
            Ok(other) => return Err(connect_error(format!("expected Welcome, got {other:?}"))),
            Err(status) => return Err(connect_error(status.message().to_string())),
        };
        let heartbeat = Duration::from_millis(
            welcome
                .limits
                .as_ref()
                .map_or(1000, |l| l.heartbeat_interval_ms)
                .max(10),
        );
        let inner = Arc::new(Inner {
            outbound,
            pending: Mutex::default(),
            next_request: AtomicU64::new(2),
            next_seq: AtomicU64::new(1),
            config,
            welcome,
            cache: Mutex::default(),
            locks: LocalLocks::default(),
            closed: Mutex::default(),
            ended: tokio::sync::watch::channel(false).0,
            pushes_applied: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let reason = loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break "the server ended the session".to_string(),
                    Err(status) => break format!("stream error: {}", status.message()),
                };
                let Some(inner) = weak.upgrade() else { return };
                inner.receive(message);
            };
            if let Some(inner) = weak.upgrade() {
                inner.close(reason);
            }
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner
                    .outbound
                    .send(ClientMessage::new(0, In::Heartbeat(Default::default())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Client { inner })
    }

    /// The server's id for this session.
    pub fn session_id(&self) -> u64 {
        self.inner.welcome.session
    }

    pub fn epoch(&self) -> u64 {
        self.inner.welcome.epoch
    }

    pub fn client_id(&self) -> u64 {
        self.inner.config.client_id
    }

    /// The next transaction sequence number of this client.
    pub fn next_seq(&self) -> u64 {
        self.inner.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Why the session ended, if it did.
    pub fn closed_reason(&self) -> Option<String> {
        lock(&self.inner.closed).clone()
    }

    /// Resolves when the session ends (the server went away, stopped, or
    /// closed it), with the reason: the hook for reconnecting (HA).
    pub async fn closed(&self) -> String {
        let mut ended = self.inner.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
        self.inner.closed_reason()
    }

    /// A new session with the same settings and the same client id;
    /// transaction sequence numbers go on from this one's. Objects and
    /// locks are not carried over: the caller re-fetches what it holds and
    /// re-takes its locks. (Resending unacknowledged transactions, and the
    /// server deduplicating them by client id and sequence, come with HA.)
    pub async fn reconnect(&self) -> Result<Client> {
        let client = Client::connect(self.inner.config.clone()).await?;
        let next = self.inner.next_seq.load(Ordering::Relaxed);
        client.inner.next_seq.store(next, Ordering::Relaxed);
        Ok(client)
    }

    /// Pushed changes applied to this client's objects so far.
    pub fn pushes_applied(&self) -> u64 {
        self.inner.pushes_applied.load(Ordering::Relaxed)
    }

    /// Sends a raw message and waits for its reply (for tests of the
    /// protocol itself; the methods below are the normal interface).
    pub async fn request_raw(&self, body: In) -> Result<Out> {
        self.inner.request(body).await
    }

    /// Commits an encoded transaction; returns its LSN once durable.
    pub async fn commit(&self, transaction: impl Into<Bytes>) -> Result<u64> {
        let transaction = transaction.into();
        match self
            .inner
            .request(In::Commit(tc_protocol::Commit {
                transaction: transaction.clone(),
            }))
            .await?
        {
            Out::Committed(committed) => {
                self.inner.apply_own(&transaction, committed.lsn);
                Ok(committed.lsn)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Applies this client's own transaction, committed at `lsn`, to its copies.
    pub(crate) fn commit_applied(&self, transaction: &[u8], lsn: u64) {
        self.inner.apply_own(transaction, lsn);
    }

    pub async fn allocate_ids(&self, count: u64) -> Result<std::ops::Range<u64>> {
        match self
            .inner
            .request(In::AllocateIds(tc_protocol::AllocateIds { count }))
            .await?
        {
            Out::IdBlock(block) => Ok(block.first..block.first + block.count),
            other => Err(unexpected(other)),
        }
    }

    pub async fn register_class(&self, def: &ClassDef) -> Result<ClassId> {
        let definition = def.to_bytes().into();
        match self
            .inner
            .request(In::RegisterClass(tc_protocol::RegisterClass { definition }))
            .await?
        {
            Out::ClassRegistered(registered) => Ok(ClassId(registered.class_id)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn class(&self, id: ClassId) -> Result<ClassDef> {
        match self
            .inner
            .request(In::FetchClass(tc_protocol::FetchClass { class_id: id.0 }))
            .await?
        {
            Out::ClassData(data) => ClassDef::from_bytes(&data.definition)
                .map_err(|err| ClientError::Protocol(format!("class {}: {err}", id.0))),
            other => Err(unexpected(other)),
        }
    }

    pub async fn root(&self, name: &str) -> Result<Option<ObjectId>> {
        match self
            .inner
            .request(In::LookupRoot(tc_protocol::LookupRoot {
                name: name.to_string(),
            }))
            .await?
        {
            Out::Root(root) => Ok((root.object != 0).then_some(ObjectId(root.object))),
            other => Err(unexpected(other)),
        }
    }

    /// The object as this client holds it, faulting it in from the server
    /// if needed; `None` if no such object exists.
    pub async fn object(&self, id: ObjectId) -> Result<Option<Cached>> {
        if let Some(cached) = lock(&self.inner.cache).objects.get(&id) {
            return Ok(Some(cached.clone()));
        }
        self.fetch(&[id]).await?;
        Ok(lock(&self.inner.cache).objects.get(&id).cloned())
    }

    /// Faults objects in (at most 1024); from then on the server pushes
    /// every change to them until they are dropped.
    pub async fn fetch(&self, ids: &[ObjectId]) -> Result<()> {
        {
            let mut cache = lock(&self.inner.cache);
            for id in ids {
                cache.fetching.entry(*id).or_default();
            }
        }
        let body = In::FetchObjects(tc_protocol::FetchObjects {
            ids: ids.iter().map(|id| id.0).collect(),
        });
        let reply = self.inner.request(body).await;
        let mut cache = lock(&self.inner.cache);
        let result = match reply {
            Ok(Out::Objects(objects)) => {
                for data in objects.objects {
                    let id = ObjectId(data.id);
                    let object = Object::decode(&data.body)
                        .map_err(|err| ClientError::Protocol(format!("object {id}: {err}")))?;
                    let mut cached = Cached {
                        object,
                        version: data.version,
                    };
                    for (lsn, tx) in cache.fetching.remove(&id).unwrap_or_default() {
                        apply_push(id, &mut cached, lsn, &tx);
                    }
                    // A push that arrived after the image is already in it.
                    if cache
                        .objects
                        .get(&id)
                        .is_none_or(|old| old.version < cached.version)
                    {
                        cache.objects.insert(id, cached);
                    }
                }
                Ok(())
            }
            Ok(other) => Err(unexpected(other)),
            Err(err) => Err(err),
        };
        for id in ids {
            cache.fetching.remove(id);
        }
        result
    }

    /// Forgets objects; the server stops pushing their changes here.
    pub async fn drop_objects(&self, ids: &[ObjectId]) -> Result<()> {
        {
            let mut cache = lock(&self.inner.cache);
            for id in ids {
                cache.objects.remove(id);
            }
        }
        let body = In::DropObjects(tc_protocol::DropObjects {
            ids: ids.iter().map(|id| id.0).collect(),
        });
        self.inner.send(0, body).await
    }
}

fn unexpected(body: Out) -> ClientError {
    ClientError::Protocol(format!("{body:?}"))
}

fn refusal(error: tc_protocol::Error) -> ClientError {
    ClientError::Refused {
        code: ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified),
        message: error.message,
        fatal: error.fatal,
    }
}

/// Applies one pushed transaction's change to `id`, if newer than the copy.
fn apply_push(id: ObjectId, cached: &mut Cached, lsn: u64, tx: &Transaction) -> bool {
    if lsn <= cached.version {
        return false;
    }
    let Some(dna) = tx.dnas.iter().find(|dna| dna.object == id) else {
        return false;
    };
    apply_dna(&mut cached.object, dna);
    cached.version = lsn;
    true
}

/// One DNA's field writes and logical operations (the server checked them;
/// anything that does not fit this copy is skipped rather than trusted).
fn apply_dna(object: &mut Object, dna: &Dna) {
    for (slot, value) in &dna.fields {
        if (*slot as usize) < object.len() && object.kind() == tc_model::ClassKind::Plain {
            object.set_field(*slot, value.clone());
        }
    }
    for op in &dna.ops {
        if object.check_op(op).is_ok() {
            object.apply(op);
        }
    }
}

impl Inner {
    pub(crate) async fn request(&self, body: In) -> Result<Out> {
        let (reply, receiver) = oneshot::channel();
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(request, reply);
        if let Err(err) = self.send(request, body).await {
            lock(&self.pending).remove(&request);
            return Err(err);
        }
        match receiver.await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Closed(self.closed_reason())),
        }
    }

    /// Sends a request and returns the receiver of its reply, without waiting.
    pub(crate) async fn start_request(&self, body: In) -> Result<oneshot::Receiver<Result<Out>>> {
        let (reply, receiver) = oneshot::channel();
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(request, reply);
        if let Err(err) = self.send(request, body).await {
            lock(&self.pending).remove(&request);
            return Err(err);
        }
        Ok(receiver)
    }

    pub(crate) fn closed_reason(&self) -> String {
        lock(&self.closed)
            .clone()
            .unwrap_or_else(|| "session ended".into())
    }

    async fn send(&self, request: u64, body: In) -> Result<()> {
        if let Some(reason) = lock(&self.closed).clone() {
            return Err(ClientError::Closed(reason));
        }
        self.outbound
            .send(ClientMessage::new(request, body))
            .await
            .map_err(|_| ClientError::Closed(self.closed_reason()))
    }

    fn close(&self, reason: String) {
        debug!(%reason, "session closed");
        lock(&self.closed).get_or_insert(reason.clone());
        for (_, reply) in lock(&self.pending).drain() {
            let _ = reply.send(Err(ClientError::Closed(reason.clone())));
        }
        self.ended.send_replace(true);
    }

    /// Handles one message from the server, in stream order.
    fn receive(self: &Arc<Self>, message: ServerMessage) {
        let Some(body) = message.body else {
            return warn!("server message without a body");
        };
        if message.request != 0 {
            let Some(reply) = lock(&self.pending).remove(&message.request) else {
                return warn!(request = message.request, "reply to no pending request");
            };
            let result = match body {
                Out::Error(error) => Err(refusal(error)),
                body => Ok(body),
            };
            let _ = reply.send(result);
            return;
        }
        match body {
            Out::Push(push) => self.receive_push(push.lsn, &push.transaction),
            Out::Recall(recall) => match LockKey::from_wire(recall.lock) {
                Some(key) => self.locks.recalled(self, key),
                None => warn!("recall without a lock key"),
            },
            Out::Heartbeat(_) => {}
            Out::Error(error) => {
                warn!(code = error.code, message = %error.message, "session error");
                if error.fatal {
                    self.close(error.message);
                }
            }
            other => warn!(?other, "unsolicited message"),
        }
    }

    /// Applies a pushed transaction to the copies this client holds. The
    /// server also pushes objects this client wrote but never fetched (it
    /// holds what a session commits): those it is told to drop, so it
    /// stops pushing them.
    fn receive_push(&self, lsn: u64, bytes: &[u8]) {
        let tx = match Transaction::decode(bytes) {
            Ok(tx) => Arc::new(tx),
            Err(err) => return warn!(lsn, %err, "undecodable push"),
        };
        let mut cache = lock(&self.cache);
        let cache = &mut *cache;
        let mut not_held = Vec::new();
        for dna in &tx.dnas {
            let fetching = match cache.fetching.get_mut(&dna.object) {
                Some(pending) => {
                    pending.push((lsn, tx.clone()));
                    true
                }
                None => false,
            };
            let applied = match cache.objects.get_mut(&dna.object) {
                Some(cached) => apply_push(dna.object, cached, lsn, &tx),
                None if fetching => false,
                None => {
                    not_held.push(dna.object.0);
                    false
                }
            };
            if applied {
                self.pushes_applied.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !not_held.is_empty() {
            // Queued under the cache lock: a fetch of one of them registers
            // (under the same lock) after this, so its request follows the
            // drop on the stream. If the queue is full, the next push of
            // the object tries again.
            let drop = In::DropObjects(tc_protocol::DropObjects { ids: not_held });
            let _ = self.outbound.try_send(ClientMessage::new(0, drop));
        }
    }

    /// This client's own transaction, just sent under a lock it holds:
    /// applied to its copies at once (the next local holder must see it);
    /// returns the copies it changed, whose versions `await_commit` sets.
    pub(crate) fn apply_sent(&self, bytes: &[u8]) -> Vec<ObjectId> {
        let mut cache = lock(&self.cache);
        let mut changed = Vec::new();
        if cache.objects.is_empty() {
            return changed;
        }
        if let Ok(tx) = Transaction::decode(bytes) {
            for dna in &tx.dnas {
                if let Some(cached) = cache.objects.get_mut(&dna.object) {
                    apply_dna(&mut cached.object, dna);
                    changed.push(dna.object);
                }
            }
        }
        changed
    }

    /// Waits for the reply to a commit sent with `start_request`. The
    /// copies `apply_sent` changed take its LSN as their version, or, if
    /// it was refused, are forgotten (they are fetched again when read).
    pub(crate) async fn await_commit(
        &self,
        reply: oneshot::Receiver<Result<Out>>,
        changed: &[ObjectId],
    ) -> Result<u64> {
        let lsn = match reply.await {
            Ok(Ok(Out::Committed(committed))) => Ok(committed.lsn),
            Ok(Ok(other)) => Err(unexpected(other)),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ClientError::Closed(self.closed_reason())),
        };
        let mut cache = lock(&self.cache);
        for id in changed {
            match lsn {
                Ok(lsn) => {
                    if let Some(cached) = cache.objects.get_mut(id) {
                        cached.version = cached.version.max(lsn);
                    }
                }
                Err(_) => {
                    cache.objects.remove(id);
                }
            }
        }
        lsn
    }

    /// This client's own committed transaction, applied to its copies.
    fn apply_own(&self, bytes: &[u8], lsn: u64) {
        let mut cache = lock(&self.cache);
        if cache.objects.is_empty() {
            return;
        }
        if let Ok(tx) = Transaction::decode(bytes) {
            for dna in &tx.dnas {
                if let Some(cached) = cache.objects.get_mut(&dna.object) {
                    apply_push(dna.object, cached, lsn, &tx);
                }
            }
        }
    }
}
