//! One client session: the handshake, then every request on its stream.
//!
//! Owns: validating each message before it touches the store or the locks,
//! the per-session bound on requests in flight, the commit pipeline
//! (commit → push to the other holders → ack → only then free the lock),
//! the heartbeat timeout, the session's set of held objects.
//! Not: lock rules (`locks.rs`), shared state (`server.rs`).
//! Invariants: every request with a reply gets exactly one reply (its
//! answer or an `Error`) while the session lives; a lock released with a
//! transaction is free only after that transaction is durable, applied and
//! pushed; messages to the client go through one bounded queue, and a
//! client that lets it fill is disconnected rather than buffered without
//! bound.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tc_heap_store::{
    ClassDef, CommitTicket, Got, ImageRead, ObjectId, Rejection, Snapshot, StoreError,
};
use tc_protocol::client_message::Body as In;
use tc_protocol::server_message::Body as Out;
use tc_protocol::{
    ClassData, ClassRegistered, ClientMessage, Committed, ErrorCode, Granted, IdBlock, Limits,
    MAX_CLASS_DEFINITION_BYTES, MAX_CLIENT_NAME_BYTES, MAX_DROP_IDS, MAX_FETCH_IDS, MAX_NAME_BYTES,
    Notified, ObjectData, Objects, PROTOCOL_VERSION, Push, Recall, Released, Root, ServerMessage,
    WaitDone, Welcome, lock_key,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::locks::{Effect, LockError, LockKey, LockMode, RequestId, SessionId, WaitOutcome};
use crate::server::{Shared, lock};

type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

/// A refused request: the code and message sent back to the client.
struct Refusal(ErrorCode, String);

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal(code, message.into())
    }
}

impl From<LockError> for Refusal {
    fn from(err: LockError) -> Refusal {
        let code = match err {
            LockError::NotHeld { .. } => ErrorCode::NotHeld,
            LockError::UpgradeNotSupported { .. } => ErrorCode::UpgradeNotSupported,
            LockError::AlreadyRequested { .. } => ErrorCode::Duplicate,
            LockError::TooManyRequests { .. } => ErrorCode::TooManyRequests,
        };
        Refusal(code, err.to_string())
    }
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Refusal {
        let code = match &err {
            StoreError::Rejected(Rejection::TooLarge { .. }) => ErrorCode::TooLarge,
            StoreError::Rejected(Rejection::Malformed(_)) => ErrorCode::Malformed,
            StoreError::Rejected(Rejection::UnknownClass(_)) => ErrorCode::UnknownClass,
            StoreError::Rejected(Rejection::UnknownObject(_)) => ErrorCode::UnknownObject,
            StoreError::Rejected(_) => ErrorCode::Rejected,
            _ => ErrorCode::Unavailable,
        };
        Refusal(code, err.to_string())
    }
}

/// What the server keeps about a live session.
pub struct SessionHandle {
    pub id: SessionId,
    pub client_id: u64,
    outbound: Outbound,
    closed: AtomicBool,
    close_signal: Notify,
    /// Objects this session holds (pushed changes go to it).
    held: Mutex<HashSet<ObjectId>>,
    /// This session's waits not answered yet.
    waits: Mutex<std::collections::HashMap<RequestId, PendingWait>>,
    /// Transactions this session sent that are not finished yet, for
    /// ordering releases after them.
    unfinished: Mutex<Unfinished>,
    commit_finished: Notify,
}

/// A session's transactions by the order it sent them: the numbers of
/// those begun (given a place in the log) and not yet finished (durable
/// and pushed, or failed).
#[derive(Default)]
struct Unfinished {
    begun: u64,
    open: std::collections::BTreeSet<u64>,
}

/// Marks a begun transaction finished when dropped (after its commit
/// finished, or if its future is dropped at session end).
struct Finishing {
    session: Arc<SessionHandle>,
    number: u64,
}

impl Drop for Finishing {
    fn drop(&mut self) {
        lock(&self.session.unfinished).open.remove(&self.number);
        self.session.commit_finished.notify_waiters();
    }
}

/// A wait not answered yet.
struct PendingWait {
    /// LSN of the transaction committed with it (echoed in `WaitDone`).
    lsn: u64,
    /// Its timeout, cancelled when the wait ends first, so waits with long
    /// timeouts that are notified leave no sleeping task behind.
    timer: Option<tokio::task::AbortHandle>,
}

impl SessionHandle {
    /// Queues a message for the client; a client whose queue is full is
    /// too slow to keep and is disconnected.
    pub fn send(&self, message: ServerMessage) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(err) = self.outbound.try_send(Ok(message)) {
            if let mpsc::error::TrySendError::Full(_) = err {
                warn!(
                    session = self.id,
                    "client does not read its messages; disconnecting it"
                );
            }
            self.close();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.close_signal.notify_one();
    }

    fn reply(&self, request: u64, body: Out) {
        self.send(ServerMessage::new(request, body));
    }

    /// Sends a finished request's reply or refusal (no reply: nothing).
    fn answer(&self, request: u64, outcome: Result<Option<Out>, Refusal>) {
        match outcome {
            Ok(Some(body)) => self.reply(request, body),
            Ok(None) => {}
            Err(refusal) => self.refuse(request, refusal),
        }
    }

    fn refuse(&self, request: u64, refusal: Refusal) {
        debug!(session = self.id, request, code = ?refusal.0, message = %refusal.1, "request refused");
        self.send(ServerMessage::error(request, refusal.0, refusal.1, false));
    }

    /// Sends what a lock change means for this session.
    pub fn deliver(&self, effect: Effect) {
        match effect {
            Effect::Granted {
                thread,
                lock,
                mode,
                greedy,
                request,
                ..
            } => self.reply(
                request,
                Out::Granted(Granted {
                    lock: Some(wire_key(&lock)),
                    thread,
                    mode: wire_mode(mode) as i32,
                    greedy,
                }),
            ),
            Effect::Recall { lock, .. } => self.reply(
                0,
                Out::Recall(Recall {
                    lock: Some(wire_key(&lock)),
                }),
            ),
            Effect::WaitDone {
                request, outcome, ..
            } => {
                let wait = self.pending_waits().remove(&request);
                let lsn = wait.map_or(0, |wait| {
                    wait.timer.inspect(tokio::task::AbortHandle::abort);
                    wait.lsn
                });
                self.reply(
                    request,
                    Out::WaitDone(WaitDone {
                        notified: outcome == WaitOutcome::Notified,
                        lsn,
                    }),
                )
            }
        }
    }

    /// Records a transaction of this session that just got its place in
    /// the log; it counts as unfinished until the guard is dropped.
    fn commit_begun(self: &Arc<Self>) -> Finishing {
        let mut unfinished = lock(&self.unfinished);
        let number = unfinished.begun;
        unfinished.begun += 1;
        unfinished.open.insert(number);
        Finishing {
            session: self.clone(),
            number,
        }
    }

    /// How many transactions this session has begun so far.
    fn commits_begun(&self) -> u64 {
        lock(&self.unfinished).begun
    }

    /// Waits until the first `count` transactions this session began are
    /// finished: durable, applied and pushed to the sessions that hold
    /// their objects (or failed).
    async fn commits_finished(&self, count: u64) {
        loop {
            let finished = self.commit_finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let first_open = lock(&self.unfinished).open.first().copied();
            if first_open.is_none_or(|number| number >= count) {
                return;
            }
            finished.await;
        }
    }

    fn pending_waits(&self) -> MutexGuard<'_, std::collections::HashMap<RequestId, PendingWait>> {
        lock(&self.waits)
    }

    /// Cancels the timers of this session's waits (the session ended: the
    /// lock manager dropped its waiters).
    pub fn cancel_wait_timers(&self) {
        for (_, wait) in self.pending_waits().drain() {
            wait.timer.inspect(tokio::task::AbortHandle::abort);
        }
    }

    fn hold(&self, shared: &Shared, id: ObjectId) {
        if shared.holders.add(id, self.id) {
            lock(&self.held).insert(id);
        }
    }

    fn drop_held(&self, shared: &Shared, id: ObjectId) {
        if lock(&self.held).remove(&id) {
            shared.holders.remove(id, self.id);
        }
    }

    pub fn take_held(&self) -> Vec<ObjectId> {
        lock(&self.held).drain().collect()
    }
}

fn wire_key(key: &LockKey) -> tc_protocol::LockKey {
    match key {
        LockKey::Object(id) => tc_protocol::LockKey::object(*id),
        LockKey::Named(name) => tc_protocol::LockKey::named(name.clone()),
    }
}

fn wire_mode(mode: LockMode) -> tc_protocol::LockMode {
    match mode {
        LockMode::Read => tc_protocol::LockMode::Read,
        LockMode::Write => tc_protocol::LockMode::Write,
    }
}

fn lock_key(key: Option<tc_protocol::LockKey>) -> Result<LockKey, Refusal> {
    match key.and_then(|k| k.key) {
        Some(lock_key::Key::Object(0)) => Err(Refusal::new(
            ErrorCode::Malformed,
            "lock on object 0 (null)",
        )),
        Some(lock_key::Key::Object(id)) => Ok(LockKey::Object(id)),
        Some(lock_key::Key::Name(name)) if name.len() > MAX_NAME_BYTES => Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("lock name of {} B exceeds {MAX_NAME_BYTES} B", name.len()),
        )),
        Some(lock_key::Key::Name(name)) => Ok(LockKey::Named(name)),
        None => Err(Refusal::new(
            ErrorCode::Malformed,
            "lock request without a lock key",
        )),
    }
}

fn lock_mode(mode: i32) -> Result<LockMode, Refusal> {
    match tc_protocol::LockMode::try_from(mode) {
        Ok(tc_protocol::LockMode::Read) => Ok(LockMode::Read),
        Ok(tc_protocol::LockMode::Write) => Ok(LockMode::Write),
        _ => Err(Refusal::new(
            ErrorCode::Malformed,
            format!("lock mode {mode} is not READ or WRITE"),
        )),
    }
}

/// Why a session ended when the server stops (the client is told so).
const SERVER_STOPPING: &str = "server stopping";

/// Runs one session to its end, then frees what it held.
pub async fn run(
    shared: Arc<Shared>,
    mut inbound: Streaming<ClientMessage>,
    outbound: Outbound,
    peer: Option<SocketAddr>,
) {
    let _running = RunningSession::enter(&shared);
    let Some(handle) = handshake(&shared, &mut inbound, &outbound, peer).await else {
        return;
    };
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight as usize));
    let mut commits = Commits::new();
    let mut stopping = shared.stopping();
    let timeout = shared.config.session_timeout();
    let mut deadline = tokio::time::Instant::now() + timeout;
    let end = loop {
        let message = tokio::select! {
            Some((request, outcome)) = commits.next(), if !commits.is_empty() => {
                handle.answer(request, outcome);
                continue;
            }
            message = tokio::time::timeout_at(deadline, inbound.message()) => message,
            () = handle.close_signal.notified() => break "closed by the server",
            _ = stopping.wait_for(|stop| *stop) => break SERVER_STOPPING,
        };
        deadline = tokio::time::Instant::now() + timeout;
        match message {
            Err(_) => {
                handle.send(ServerMessage::error(
                    0,
                    ErrorCode::Malformed,
                    format!(
                        "no message for {} ms (heartbeats stopped)",
                        timeout.as_millis()
                    ),
                    true,
                ));
                break "heartbeat timeout";
            }
            Ok(Ok(Some(message))) => {
                handle_message(&shared, &handle, &in_flight, &mut commits, message).await
            }
            Ok(Ok(None)) => break "client closed the stream",
            Ok(Err(status)) => {
                handle.send(ServerMessage::error(
                    0,
                    ErrorCode::Malformed,
                    status.message(),
                    true,
                ));
                break "bad stream";
            }
        }
        if handle.closed.load(Ordering::Acquire) {
            break "closed by the server";
        }
    };
    info!(
        session = handle.id,
        client = handle.client_id,
        reason = end,
        "session ending"
    );
    // Requests already accepted finish (their commits are acknowledged).
    while let Some((request, outcome)) = commits.next().await {
        handle.answer(request, outcome);
    }
    let _all = in_flight
        .acquire_many(shared.config.max_in_flight)
        .await
        .expect("the semaphore is never closed");
    if end == SERVER_STOPPING {
        handle.send(ServerMessage::error(
            0,
            ErrorCode::Unavailable,
            SERVER_STOPPING,
            true,
        ));
    }
    shared.unregister(&handle);
}

/// Counts running session tasks so a stop can wait for them.
struct RunningSession(Arc<Shared>);

impl RunningSession {
    fn enter(shared: &Arc<Shared>) -> RunningSession {
        shared.running_sessions.fetch_add(1, Ordering::AcqRel);
        RunningSession(shared.clone())
    }
}

impl Drop for RunningSession {
    fn drop(&mut self) {
        if self.0.running_sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.sessions_ended.notify_waiters();
        }
    }
}

/// Waits (up to `limit`) until no session task runs.
pub async fn wait_all_ended(shared: &Shared, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ended = shared.sessions_ended.notified();
        if shared.running_sessions.load(Ordering::Acquire) == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, ended).await.is_err() {
            warn!("sessions still running after {} s", limit.as_secs());
            return;
        }
    }
}

async fn handshake(
    shared: &Arc<Shared>,
    inbound: &mut Streaming<ClientMessage>,
    outbound: &Outbound,
    peer: Option<SocketAddr>,
) -> Option<Arc<SessionHandle>> {
    let refuse = |code, message: String| {
        warn!(?peer, %message, "handshake refused");
        let _ = outbound.try_send(Ok(ServerMessage::error(0, code, message, true)));
        None
    };
    let first = tokio::time::timeout(shared.config.session_timeout(), inbound.message()).await;
    let (request, hello) = match first {
        Ok(Ok(Some(ClientMessage {
            request,
            body: Some(In::Hello(hello)),
        }))) => (request, hello),
        Ok(Ok(Some(_))) => {
            return refuse(
                ErrorCode::Malformed,
                "the first message must be Hello".into(),
            );
        }
        Ok(Ok(None)) => return None,
        Ok(Err(status)) => return refuse(ErrorCode::Malformed, status.message().to_string()),
        Err(_) => {
            return refuse(
                ErrorCode::Malformed,
                "no Hello within the session timeout".into(),
            );
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        return refuse(
            ErrorCode::VersionMismatch,
            format!(
                "client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        );
    }
    if hello.client_name.len() > MAX_CLIENT_NAME_BYTES {
        return refuse(
            ErrorCode::TooLarge,
            format!("client name exceeds {MAX_CLIENT_NAME_BYTES} B"),
        );
    }
    let handle = shared.register(|id| SessionHandle {
        id,
        client_id: hello.client_id,
        outbound: outbound.clone(),
        closed: AtomicBool::new(false),
        close_signal: Notify::new(),
        held: Mutex::default(),
        waits: Mutex::default(),
        unfinished: Mutex::default(),
        commit_finished: Notify::new(),
    });
    shared.metrics.sessions_opened.inc();
    info!(session = handle.id, client = hello.client_id, name = %hello.client_name, ?peer, "session started");
    let config = &shared.config;
    handle.reply(
        request,
        Out::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            session: handle.id,
            epoch: shared.epoch,
            limits: Some(Limits {
                max_message_bytes: config.max_message_bytes,
                max_transaction_bytes: config.max_transaction_bytes,
                max_in_flight: config.max_in_flight,
                max_fetch_ids: MAX_FETCH_IDS as u32,
                heartbeat_interval_ms: config.heartbeat_interval_ms,
                session_timeout_ms: config.session_timeout_ms,
            }),
        }),
    );
    Some(handle)
}

/// A request's work after its in-order part: its reply, none (the reply
/// comes later, as a lock effect) or a refusal.
type Task =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<Out>, Refusal>> + Send>>;

/// A session's commits waiting to be durable, driven by the session task
/// itself rather than a task each: when one WAL write makes many commits
/// durable, each session wakes once and acknowledges all of its own.
type Commits = FuturesUnordered<
    std::pin::Pin<
        Box<dyn std::future::Future<Output = (u64, Result<Option<Out>, Refusal>)> + Send>,
    >,
>;

/// Answers what can be answered at once; what waits on the disk holds one
/// of the session's in-flight permits and goes into `commits` (a plain
/// commit) or a spawned task (everything else). A transaction gets its
/// place in the log here, in stream order (`begin_commit`), so the
/// commits of one session are in the log in the order it sent them, even
/// while their durability is awaited concurrently.
async fn handle_message(
    shared: &Arc<Shared>,
    handle: &Arc<SessionHandle>,
    in_flight: &Arc<Semaphore>,
    commits: &mut Commits,
    message: ClientMessage,
) {
    let request = message.request;
    let Some(body) = message.body else {
        return handle.refuse(
            request,
            Refusal::new(ErrorCode::Malformed, "message without a body"),
        );
    };
    let permit = || {
        let permit = in_flight.clone().try_acquire_owned().ok();
        if permit.is_none() {
            handle.refuse(
                request,
                Refusal::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "more than {} requests in flight",
                        shared.config.max_in_flight
                    ),
                ),
            );
        }
        permit
    };
    let spawn_with = |permit: OwnedSemaphorePermit, task: Task| {
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handle.answer(request, task.await);
        });
    };
    let spawn = |task: Task| {
        if let Some(permit) = permit() {
            spawn_with(permit, task);
        }
    };
    let (shared, session) = (shared.clone(), handle.clone());
    match body {
        In::Hello(_) => handle.refuse(
            request,
            Refusal::new(ErrorCode::Malformed, "Hello sent twice"),
        ),
        In::Heartbeat(beat) => handle.reply(0, Out::Heartbeat(beat)),
        In::Commit(commit) => {
            let Some(permit) = permit() else { return };
            match begin_commit(&shared, commit.transaction).await {
                Ok(begun) => {
                    // Counted now, in stream order, so a release that
                    // follows on the stream waits for it.
                    let finishing = handle.commit_begun();
                    commits.push(Box::pin(async move {
                        let _permit = permit;
                        let committed = finish_commit(&shared, &session, begun).await;
                        drop(finishing);
                        let outcome = committed.map(|lsn| Some(Out::Committed(Committed { lsn })));
                        (request, outcome)
                    }));
                }
                Err(refusal) => handle.refuse(request, refusal),
            }
        }
        In::Lock(lock) => {
            let outcome = (|| {
                let key = lock_key(lock.lock)?;
                let mode = lock_mode(lock.mode)?;
                shared.with_locks(|locks, effects| {
                    locks.request(
                        handle.id,
                        lock.thread,
                        key,
                        mode,
                        lock.greedy,
                        request,
                        effects,
                    )
                })?;
                Ok::<(), Refusal>(())
            })();
            if let Err(refusal) = outcome {
                handle.refuse(request, refusal);
            }
        }
        In::Release(release) => {
            let Some(permit) = permit() else { return };
            let key = match lock_key(release.lock) {
                Ok(key) if session_holds(&shared, handle, &key).is_some() => key,
                Ok(key) => {
                    let not_held = LockError::NotHeld {
                        lock: key,
                        session: handle.id,
                        thread: release.thread,
                    };
                    return handle.refuse(request, not_held.into());
                }
                Err(refusal) => return handle.refuse(request, refusal),
            };
            // The lock goes to the next holder only after every
            // transaction this session sent before the release is durable
            // and pushed, so a greedy holder can release right after its
            // last commit without waiting for the acknowledgement.
            let earlier = handle.commits_begun();
            let begun = if release.transaction.is_empty() {
                None
            } else {
                Some(begin_commit(&shared, release.transaction).await)
            };
            let finishing = matches!(begun, Some(Ok(_))).then(|| handle.commit_begun());
            spawn_with(
                permit,
                Box::pin(async move {
                    // The lock is released even if its transaction is
                    // refused: the monitor is exited either way; the client
                    // gets the refusal.
                    let committed = match begun {
                        None => Ok(0),
                        Some(Ok(begun)) => finish_commit(&shared, &session, begun).await,
                        Some(Err(refusal)) => Err(refusal),
                    };
                    drop(finishing);
                    session.commits_finished(earlier).await;
                    shared.with_locks(|locks, effects| {
                        locks.release(session.id, release.thread, key, effects)
                    })?;
                    let lsn = committed?;
                    Ok(Some(Out::Released(Released { lsn })))
                }),
            );
        }
        // Without a transaction the wait takes effect in stream order, so
        // a later request of this session (another thread taking the lock
        // the waiter gave up) is seen after it.
        In::Wait(wait) if wait.transaction.is_empty() => {
            let outcome = lock_key(wait.lock).and_then(|key| {
                start_wait(
                    &shared,
                    handle,
                    request,
                    key,
                    wait.thread,
                    wait.timeout_ms,
                    0,
                )
            });
            if let Err(refusal) = outcome {
                handle.refuse(request, refusal);
            }
        }
        In::Wait(wait) => {
            let Some(permit) = permit() else { return };
            let key = match lock_key(wait.lock) {
                Ok(key) if session_holds(&shared, handle, &key) == Some(LockMode::Write) => key,
                Ok(key) => {
                    let not_held = LockError::NotHeld {
                        lock: key,
                        session: handle.id,
                        thread: wait.thread,
                    };
                    return handle.refuse(request, not_held.into());
                }
                Err(refusal) => return handle.refuse(request, refusal),
            };
            let begun = match begin_commit(&shared, wait.transaction).await {
                Ok(begun) => begun,
                Err(refusal) => return handle.refuse(request, refusal),
            };
            let finishing = handle.commit_begun();
            spawn_with(
                permit,
                Box::pin(async move {
                    let committed = finish_commit(&shared, &session, begun).await;
                    drop(finishing);
                    let lsn = committed?;
                    start_wait(
                        &shared,
                        &session,
                        request,
                        key,
                        wait.thread,
                        wait.timeout_ms,
                        lsn,
                    )?;
                    // The reply (WaitDone) is a lock effect: sent at notify or timeout.
                    Ok(None)
                }),
            );
        }
        In::Notify(notify) => {
            let outcome = (|| {
                let key = lock_key(notify.lock)?;
                let woken = shared.with_locks(|locks, effects| {
                    locks.notify(handle.id, notify.thread, key, notify.all, effects)
                })?;
                Ok::<u32, Refusal>(woken as u32)
            })();
            match outcome {
                Ok(woken) => handle.reply(request, Out::Notified(Notified { woken })),
                Err(refusal) => handle.refuse(request, refusal),
            }
        }
        In::FetchObjects(fetch) => {
            if fetch.ids.len() > MAX_FETCH_IDS {
                return handle.refuse(
                    request,
                    Refusal::new(
                        ErrorCode::TooLarge,
                        format!(
                            "{} ids in one fetch; at most {MAX_FETCH_IDS}",
                            fetch.ids.len()
                        ),
                    ),
                );
            }
            let fetch = match start_fetch(&shared, handle, &fetch.ids) {
                Ok(fetch) => fetch,
                Err(refusal) => return handle.refuse(request, refusal),
            };
            if fetch.reads.is_empty() && fetch.items <= INLINE_ENCODE_ITEMS {
                let objects = fetch.finish(&shared, &session);
                return handle.answer(request, objects.map(|o| Some(Out::Objects(o))));
            }
            spawn(Box::pin(async move {
                let objects = tokio::task::spawn_blocking(move || fetch.finish(&shared, &session))
                    .await
                    .map_err(|err| Refusal::new(ErrorCode::Unavailable, err.to_string()))??;
                Ok(Some(Out::Objects(objects)))
            }))
        }
        In::DropObjects(drop) => {
            if drop.ids.len() > MAX_DROP_IDS {
                return handle.refuse(
                    request,
                    Refusal::new(
                        ErrorCode::TooLarge,
                        format!("{} ids in one drop; at most {MAX_DROP_IDS}", drop.ids.len()),
                    ),
                );
            }
            for id in drop.ids {
                handle.drop_held(&shared, ObjectId(id));
            }
        }
        In::AllocateIds(allocate) => spawn(Box::pin(async move {
            let store = shared.store.clone();
            let ids = tokio::task::spawn_blocking(move || store.allocate_ids(allocate.count))
                .await
                .map_err(|err| Refusal::new(ErrorCode::Unavailable, err.to_string()))??;
            Ok(Some(Out::IdBlock(IdBlock {
                first: ids.start,
                count: ids.end - ids.start,
            })))
        })),
        In::LookupRoot(root) => {
            if root.name.len() > MAX_NAME_BYTES {
                return handle.refuse(
                    request,
                    Refusal::new(
                        ErrorCode::TooLarge,
                        format!("root name exceeds {MAX_NAME_BYTES} B"),
                    ),
                );
            }
            let object = shared.store.root(&root.name).map_or(0, |id| id.0);
            handle.reply(request, Out::Root(Root { object }));
        }
        In::RegisterClass(register) => spawn(Box::pin(async move {
            if register.definition.len() > MAX_CLASS_DEFINITION_BYTES {
                return Err(Refusal::new(
                    ErrorCode::TooLarge,
                    format!("class definition exceeds {MAX_CLASS_DEFINITION_BYTES} B"),
                ));
            }
            let def = ClassDef::from_bytes(&register.definition).map_err(|err| {
                Refusal::new(ErrorCode::Malformed, format!("class definition: {err}"))
            })?;
            let store = shared.store.clone();
            let class = tokio::task::spawn_blocking(move || store.register_class(&def))
                .await
                .map_err(|err| Refusal::new(ErrorCode::Unavailable, err.to_string()))??;
            Ok(Some(Out::ClassRegistered(ClassRegistered {
                class_id: class.0,
            })))
        })),
        In::FetchClass(fetch) => match shared.store.class(tc_heap_store::ClassId(fetch.class_id)) {
            Some(def) => {
                handle.reply(
                    request,
                    Out::ClassData(ClassData {
                        class_id: fetch.class_id,
                        definition: def.to_bytes().into(),
                    }),
                );
            }
            None => handle.refuse(
                request,
                Refusal::new(
                    ErrorCode::UnknownClass,
                    format!("unknown class {}", fetch.class_id),
                ),
            ),
        },
    }
}

/// Puts the caller in the lock's wait set (giving the lock up) and arms
/// its timer; `WaitDone` follows as a lock effect.
fn start_wait(
    shared: &Arc<Shared>,
    session: &SessionHandle,
    request: RequestId,
    key: LockKey,
    thread: u64,
    timeout_ms: u64,
    lsn: u64,
) -> Result<(), Refusal> {
    let wait = PendingWait { lsn, timer: None };
    session.pending_waits().insert(request, wait);
    let token = shared
        .with_locks(|locks, effects| locks.wait(session.id, thread, key, request, effects))
        .inspect_err(|_| {
            session.pending_waits().remove(&request);
        })?;
    if timeout_ms > 0 {
        let shared = shared.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
            shared.with_locks(|locks, effects| locks.wait_timed_out(token, effects));
        })
        .abort_handle();
        match session.pending_waits().get_mut(&request) {
            Some(wait) => wait.timer = Some(timer),
            // Answered already (notified before the timer was armed).
            None => timer.abort(),
        }
    }
    Ok(())
}

fn session_holds(shared: &Shared, session: &SessionHandle, key: &LockKey) -> Option<LockMode> {
    shared.with_locks(|locks, _| locks.holds(session.id, key))
}

/// A transaction with its place in the log, not yet durable.
struct Begun {
    ticket: CommitTicket,
    transaction: Bytes,
    started: std::time::Instant,
}

/// Checks a transaction and gives it its place in the log (waiting only
/// for room in the WAL's queue).
async fn begin_commit(shared: &Shared, transaction: Bytes) -> Result<Begun, Refusal> {
    let started = std::time::Instant::now();
    match shared.store.begin_commit(transaction.clone()).await {
        Ok(ticket) => Ok(Begun {
            ticket,
            transaction,
            started,
        }),
        Err(err) => {
            shared.metrics.commit_refusals.inc();
            Err(err.into())
        }
    }
}

/// Waits until a begun transaction is durable and applied, then pushes it
/// to every other session holding one of its objects; returns its LSN. The
/// committing session holds every object it wrote from now on.
async fn finish_commit(
    shared: &Shared,
    session: &SessionHandle,
    begun: Begun,
) -> Result<u64, Refusal> {
    let Begun {
        ticket,
        transaction,
        started,
    } = begun;
    let objects = ticket.objects().to_vec();
    let lsn = match shared.store.finish_commit(ticket).await {
        Ok(lsn) => lsn.0,
        Err(err) => {
            shared.metrics.commit_refusals.inc();
            return Err(err.into());
        }
    };
    let mut targets = Vec::new();
    for &object in &objects {
        session.hold(shared, object);
        shared.holders.holders_of(object, session.id, &mut targets);
    }
    targets.sort_unstable();
    targets.dedup();
    for target in targets {
        if let Some(other) = shared.session(target) {
            other.send(ServerMessage::new(
                0,
                Out::Push(Push {
                    lsn,
                    transaction: transaction.clone(),
                }),
            ));
            shared.metrics.pushes.inc();
        }
    }
    shared.metrics.observe_commit(started.elapsed());
    Ok(lsn)
}

/// A fetch answered from the cache at once needs no blocking thread, as
/// long as encoding its objects is short: at most this many fields or
/// elements in all.
const INLINE_ENCODE_ITEMS: usize = 4096;

/// What a fetch found without reading the disk, and the images left to
/// read. The session holds every object from before its lookup, so a
/// change applied after it is pushed.
struct Fetch {
    found: Vec<(ObjectId, Snapshot)>,
    missing: Vec<u64>,
    reads: Vec<ImageRead>,
    /// Fields and elements of the objects found.
    items: usize,
}

fn start_fetch(shared: &Shared, session: &SessionHandle, ids: &[u64]) -> Result<Fetch, Refusal> {
    let mut fetch = Fetch {
        found: Vec::with_capacity(ids.len()),
        missing: Vec::new(),
        reads: Vec::new(),
        items: 0,
    };
    for &id in ids {
        let id = ObjectId(id);
        if id.0 == 0 {
            fetch.missing.push(0);
            continue;
        }
        session.hold(shared, id);
        match shared.store.get_or_read(id)? {
            Got::Ready(found) => fetch.add(shared, session, id, found),
            Got::Read(read) => fetch.reads.push(read),
        }
    }
    Ok(fetch)
}

impl Fetch {
    fn add(
        &mut self,
        shared: &Shared,
        session: &SessionHandle,
        id: ObjectId,
        found: Option<Snapshot>,
    ) {
        match found {
            Some(snapshot) => {
                self.items += snapshot.object.len();
                self.found.push((id, snapshot));
            }
            None => {
                session.drop_held(shared, id);
                self.missing.push(id.0);
            }
        }
    }

    /// Reads what is left to read (blocking) and encodes the reply.
    fn finish(mut self, shared: &Shared, session: &SessionHandle) -> Result<Objects, Refusal> {
        for read in std::mem::take(&mut self.reads) {
            let id = read.id();
            let found = read.finish()?;
            self.add(shared, session, id, found);
        }
        let objects = self
            .found
            .into_iter()
            .map(|(id, snapshot)| ObjectData {
                id: id.0,
                version: snapshot.version.0,
                body: snapshot.object.to_bytes().into(),
            })
            .collect();
        Ok(Objects {
            objects,
            missing: self.missing,
        })
    }
}
