//! The client half of cluster locks.
//!
//! Owns: per lock, a local gate (a fair read/write lock) that the threads
//! of this process pass before the server is involved, the record of what
//! the session holds at the server (mode, greedy), and local
//! reentrancy per thread.
//! Invariants: a thread talks to the server about a lock only while it
//! holds that lock's gate and `server_op`, so the server never sees two
//! threads of this session race on one lock; the session's server hold is
//! released only when no local thread holds the gate (`Recall` takes the
//! gate in write mode first); under a greedy hold a thread's commit is put
//! on the stream before the next local thread gets the gate (the server
//! logs a session's commits in stream order); a release may follow them
//! at once (the server passes the lock on only after the session's
//! earlier commits are durable and pushed), but a wait, which the server
//! applies in stream order, goes only after every such commit is
//! acknowledged (`settle`), so the next holder elsewhere sees them all.
//! A lock's local state lives only while it is in use or held at the
//! server: an application that locks millions of objects once each keeps
//! no state for them (`forget_if_idle`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tc_protocol::client_message::Body as In;
use tc_protocol::server_message::Body as Out;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tracing::warn;

use crate::LockKey;
use crate::session::{Client, ClientError, Inner, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Read,
    Write,
}

impl LockMode {
    fn wire(self) -> i32 {
        match self {
            LockMode::Read => tc_protocol::LockMode::Read as i32,
            LockMode::Write => tc_protocol::LockMode::Write as i32,
        }
    }
}

enum Gate {
    Read(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

struct Holder {
    count: u32,
    mode: LockMode,
    _gate: Gate,
}

#[derive(Default)]
struct State {
    /// What the session holds at the server: mode, greedy.
    server: Option<(LockMode, bool)>,
    /// The thread id the server knows the hold by.
    server_thread: u64,
    holders: HashMap<u64, Holder>,
}

struct LocalLock {
    gate: Arc<RwLock<()>>,
    server_op: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// Commits made under a greedy hold that were sent but not yet
    /// acknowledged: the hold goes back to the server only once they are.
    unacked: std::sync::atomic::AtomicUsize,
    acked: tokio::sync::Notify,
}

impl LocalLock {
    /// Waits until every commit sent under this lock is acknowledged.
    async fn settle(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let acked = self.acked.notified();
            if self.unacked.load(Ordering::Acquire) == 0 {
                return;
            }
            acked.await;
        }
    }
}

#[derive(Default)]
pub(crate) struct LocalLocks {
    locks: Mutex<HashMap<LockKey, Arc<LocalLock>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LocalLocks {
    fn get(&self, key: &LockKey) -> Arc<LocalLock> {
        lock(&self.locks)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(LocalLock {
                    gate: Arc::new(RwLock::new(())),
                    server_op: tokio::sync::Mutex::new(()),
                    state: Mutex::default(),
                    unacked: std::sync::atomic::AtomicUsize::new(0),
                    acked: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    /// The local state of `key`, if there is any.
    fn find(&self, key: &LockKey) -> Option<Arc<LocalLock>> {
        lock(&self.locks).get(key).cloned()
    }

    /// Drops `key`'s local state if it is idle: no local holder, no hold at
    /// the server, no unacknowledged commit, and no other reference (a
    /// thread queued on the gate or in an operation holds one). Checked
    /// under the map's mutex, which `get` takes too, so nobody can pick the
    /// state up while it goes; a later `get` starts afresh.
    fn forget_if_idle(&self, key: &LockKey, local: Arc<LocalLock>) {
        use std::sync::atomic::Ordering;
        let mut locks = lock(&self.locks);
        let idle = {
            let state = lock(&local.state);
            state.server.is_none() && state.holders.is_empty()
        } && local.unacked.load(Ordering::Acquire) == 0;
        // Two references: the map's and `local`.
        if idle
            && Arc::strong_count(&local) == 2
            && locks
                .get(key)
                .is_some_and(|mapped| Arc::ptr_eq(mapped, &local))
        {
            locks.remove(key);
        }
    }

    /// How many locks have local state (held here or at the server, or in
    /// use by a thread).
    pub(crate) fn len(&self) -> usize {
        lock(&self.locks).len()
    }

    /// The server wants a greedy hold back: take the gate in write mode
    /// (after the local threads already queued for it, so a recall is fair
    /// to both sides) and release; the server orders the release after the
    /// commits sent under the hold.
    pub(crate) fn recalled(&self, inner: &Arc<Inner>, key: LockKey) {
        let local = self.get(&key);
        let inner = inner.clone();
        tokio::spawn(async move {
            let gate = local.gate.clone().write_owned().await;
            let op = local.server_op.lock().await;
            let (server, thread) = {
                let state = lock(&local.state);
                (state.server, state.server_thread)
            };
            if server.is_some_and(|(_, greedy)| greedy) {
                if let Err(err) = release_at_server(&inner, &key, thread, Bytes::new()).await {
                    warn!(?key, %err, "releasing a recalled lock failed");
                }
                lock(&local.state).server = None;
            }
            drop((op, gate));
            inner.locks.forget_if_idle(&key, local);
        });
    }
}

fn commit_body(transaction: &Bytes) -> In {
    In::Commit(tc_protocol::Commit {
        transaction: transaction.clone(),
    })
}

async fn release_at_server(
    inner: &Inner,
    key: &LockKey,
    thread: u64,
    transaction: Bytes,
) -> Result<u64> {
    let body = In::Release(tc_protocol::LockRelease {
        lock: Some(key.to_wire()),
        thread,
        transaction,
    });
    match inner.request(body).await? {
        Out::Released(released) => Ok(released.lsn),
        other => Err(ClientError::Protocol(format!("{other:?}"))),
    }
}

impl Client {
    /// Takes a lock for `thread` (reentrant per thread). Threads of this
    /// client take turns locally; the server is asked only when the
    /// session does not already hold the lock in a sufficient mode.
    pub async fn lock(&self, key: &LockKey, thread: u64, mode: LockMode) -> Result<()> {
        let local = self.inner.locks.get(key);
        {
            let mut state = lock(&local.state);
            if let Some(holder) = state.holders.get_mut(&thread) {
                if holder.mode == LockMode::Read && mode == LockMode::Write {
                    return Err(ClientError::Usage(format!(
                        "thread {thread} holds {key:?} for reading and asked to write: upgrade is not supported"
                    )));
                }
                holder.count += 1;
                return Ok(());
            }
        }
        let gate = match mode {
            LockMode::Read => Gate::Read(local.gate.clone().read_owned().await),
            LockMode::Write => Gate::Write(local.gate.clone().write_owned().await),
        };
        let op = local.server_op.lock().await;
        let held = lock(&local.state).server;
        let covered = matches!(
            (held, mode),
            (Some((LockMode::Write, _)), _) | (Some((LockMode::Read, _)), LockMode::Read)
        );
        if !covered {
            if held.is_some() {
                // A read hold and a writer: give it back, ask again.
                let thread_held = lock(&local.state).server_thread;
                release_at_server(&self.inner, key, thread_held, Bytes::new()).await?;
                lock(&local.state).server = None;
            }
            let greedy = self.inner.config.greedy_locks;
            let body = In::Lock(tc_protocol::LockRequest {
                lock: Some(key.to_wire()),
                thread,
                mode: mode.wire(),
                greedy,
            });
            match self.inner.request(body).await? {
                Out::Granted(granted) => {
                    let mut state = lock(&local.state);
                    state.server = Some((mode, granted.greedy));
                    state.server_thread = thread;
                }
                other => return Err(ClientError::Protocol(format!("{other:?}"))),
            }
        }
        drop(op);
        lock(&local.state).holders.insert(
            thread,
            Holder {
                count: 1,
                mode,
                _gate: gate,
            },
        );
        Ok(())
    }

    /// Releases `thread`'s hold; `transaction` (the changes made under the
    /// lock, may be empty) is committed first. Returns its LSN (0 if none).
    pub async fn unlock(
        &self,
        key: &LockKey,
        thread: u64,
        transaction: impl Into<Bytes>,
    ) -> Result<u64> {
        let transaction = transaction.into();
        let local = self.inner.locks.get(key);
        let last = {
            let mut state = lock(&local.state);
            let Some(holder) = state.holders.get_mut(&thread) else {
                return Err(ClientError::Usage(format!(
                    "thread {thread} does not hold {key:?}"
                )));
            };
            holder.count -= 1;
            holder.count == 0
        };
        if !last {
            return if transaction.is_empty() {
                Ok(0)
            } else {
                self.commit(transaction).await
            };
        }
        let op = local.server_op.lock().await;
        let (server, others, server_thread) = {
            let state = lock(&local.state);
            (state.server, state.holders.len() > 1, state.server_thread)
        };
        // A greedy hold stays even when recalled: the recall task queued on
        // the gate gives it back after the threads queued before it.
        let keep = server.is_some_and(|(_, greedy)| greedy);
        if (keep || others) && !transaction.is_empty() {
            // Still held here. The commit goes on the stream now (so it is
            // ordered before anything the next holder sends) and the next
            // local thread may go on before it is durable; this thread
            // waits for the acknowledgement without holding the lock.
            let reply = self.inner.start_request(commit_body(&transaction)).await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(err) => {
                    drop(op);
                    lock(&local.state).holders.remove(&thread);
                    return Err(err);
                }
            };
            let changed = self.inner.apply_sent(&transaction);
            local
                .unacked
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            drop(op);
            lock(&local.state).holders.remove(&thread);
            let acked = self.inner.await_commit(reply, &changed).await;
            local
                .unacked
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            local.acked.notify_waiters();
            self.inner.locks.forget_if_idle(key, local);
            return acked;
        }
        let result = if keep || others {
            // Still held here (greedily, or by other local readers).
            Ok(0)
        } else if server.is_some() {
            let released =
                release_at_server(&self.inner, key, server_thread, transaction.clone()).await;
            lock(&local.state).server = None;
            if released.is_ok() && !transaction.is_empty() {
                self.commit_applied(&transaction, *released.as_ref().unwrap_or(&0));
            }
            released
        } else {
            Err(ClientError::Protocol(format!(
                "{key:?} is held locally but not at the server"
            )))
        };
        drop(op);
        lock(&local.state).holders.remove(&thread);
        self.inner.locks.forget_if_idle(key, local);
        result
    }

    /// `Object.wait`: `thread` holds `key` for writing. Commits
    /// `transaction`, gives the lock up, waits for a notify (true) or the
    /// timeout (false), then takes the lock again with the same count.
    pub async fn wait(
        &self,
        key: &LockKey,
        thread: u64,
        timeout: Option<Duration>,
        transaction: impl Into<Bytes>,
    ) -> Result<bool> {
        let transaction = transaction.into();
        let local = self.inner.locks.get(key);
        match lock(&local.state).holders.get(&thread) {
            Some(holder) if holder.mode == LockMode::Write => {}
            _ => {
                return Err(ClientError::Usage(format!(
                    "thread {thread} does not hold {key:?} for writing"
                )));
            }
        }
        if !transaction.is_empty() {
            self.commit(transaction).await?;
        }
        let op = local.server_op.lock().await;
        local.settle().await;
        let server_thread = lock(&local.state).server_thread;
        let body = In::Wait(tc_protocol::Wait {
            lock: Some(key.to_wire()),
            thread: server_thread,
            timeout_ms: timeout.map_or(0, |t| (t.as_millis() as u64).max(1)),
            transaction: Bytes::new(),
        });
        // The server processes the wait before any later message of this
        // session, so local threads may go on once it is sent.
        let done = self.inner.start_request(body).await?;
        let holder = {
            let mut state = lock(&local.state);
            state.server = None;
            state.holders.remove(&thread)
        };
        drop(op);
        let count = holder.as_ref().map_or(1, |h| h.count);
        drop(holder);
        let notified = match done.await {
            Ok(Ok(Out::WaitDone(done))) => Ok(done.notified),
            Ok(Ok(other)) => Err(ClientError::Protocol(format!("{other:?}"))),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ClientError::Closed(self.inner.closed_reason())),
        };
        self.lock(key, thread, LockMode::Write).await?;
        if let Some(holder) = lock(&local.state).holders.get_mut(&thread) {
            holder.count = count;
        }
        notified
    }

    /// `Object.notify` / `notifyAll`: `thread` holds `key` for writing.
    /// Returns how many waiters were woken.
    pub async fn notify(&self, key: &LockKey, thread: u64, all: bool) -> Result<u32> {
        let local = self.inner.locks.get(key);
        let server_thread = {
            let state = lock(&local.state);
            match state.holders.get(&thread) {
                Some(holder) if holder.mode == LockMode::Write => state.server_thread,
                _ => {
                    return Err(ClientError::Usage(format!(
                        "thread {thread} does not hold {key:?} for writing"
                    )));
                }
            }
        };
        let body = In::Notify(tc_protocol::Notify {
            lock: Some(key.to_wire()),
            thread: server_thread,
            all,
        });
        match self.inner.request(body).await? {
            Out::Notified(notified) => Ok(notified.woken),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Whether this session holds `key` at the server (greedily or not).
    pub fn holds_at_server(&self, key: &LockKey) -> Option<(LockMode, bool)> {
        let local = self.inner.locks.find(key)?;
        lock(&local.state).server
    }

    /// How many locks this client keeps local state for: those a thread
    /// holds or waits for, and those the session holds at the server
    /// (greedy holds included). A lock fully released has none.
    pub fn locks_with_state(&self) -> usize {
        self.inner.locks.len()
    }
}
