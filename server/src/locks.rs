//! Cluster lock manager: object monitors and named locks shared by every
//! session, with read/write modes, reentrancy, fair FIFO queues, wait sets
//! for `Object.wait`/`notify`/`notifyAll`, and greedy grants.
//!
//! Owns: who holds each lock, in which mode and how many times; the FIFO
//! queue of requests waiting for each lock; each lock's wait set; greedy
//! holds and whether they were recalled; per-lock contention counters and
//! cumulative totals; an index of the locks each session touches (so a dead
//! session is cleaned up without scanning every lock); the bound on what
//! one session may have pending.
//! Not: sending messages (every call appends the `Effect`s to send to a
//! caller-provided vector), timers (`wait` returns a `WaiterToken`; the
//! caller's timer calls `wait_timed_out`), sessions and their liveness (the
//! session layer calls `drop_session`), mutual exclusion (the caller makes
//! every call under one mutex). No I/O, no clocks, no async.
//!
//! Holder identity: a normal grant is held by one (session, thread) with a
//! reentrancy count. A greedy grant is held by the whole session: any of its
//! threads counts as the holder for re-requests, `release`, `wait` and
//! `notify` (its client library hands the lock between its own threads).
//! A (session, thread) is looked up as its own thread hold first, then as
//! its session's greedy hold.
//!
//! Wait and notify (Java's rule: a thread leaving `wait` competes for the
//! monitor like any other): `wait` releases the caller's Write hold
//! completely (the whole reentrancy count; under a greedy hold, the
//! session's whole greedy hold) and puts it at the tail of the lock's wait
//! set. `notify`/`notifyAll` take the first waiter (or all, in order) out of
//! the wait set and answer each at once with `WaitDone { Notified }`; the
//! timer's `wait_timed_out` answers a waiter still in the set with
//! `WaitDone { TimedOut }`. Nothing is queued on a woken waiter's behalf:
//! its client re-acquires the monitor with a new `request` (through its own
//! local gate, so that it competes fairly with the client's other threads),
//! which is queued, granted or makes a recall like any request.
//!
//! Greedy recall: a greedy holder that blocks the head of the queue gets
//! one `Recall` per grant, also when the grant itself is made with requests
//! left queued behind it, and also when the blocked head is a thread of the
//! holder's own session (it queued before the greedy grant and would
//! otherwise wait for ever). A queued request whose session meanwhile holds
//! the lock greedily joins that hold when it reaches the head, by the same
//! rule as an immediate re-request (any mode under Write, Read under Read).
//!
//! Limits: a session has at most `max_pending_per_session` queued requests
//! and waiters; a lock's queue is therefore bounded by the live sessions
//! (bounded by the session layer) times that. Granting or releasing costs
//! O(log holders) per grant plus the grants made; `drop_session` costs the
//! size of the locks the session touched, not of all locks.
//!
//! Invariants (the O(1) ones are asserted after every mutation of a lock):
//! - the holders of a lock are either any number of readers or exactly one
//!   writer identity, and a lock has at most one hold per identity;
//! - a request is either granted (a `Granted` effect, now or later), queued,
//!   or rejected with an error that changed nothing; it is never silently
//!   dropped. Only `drop_session` removes queued requests and waiters, those
//!   of the dead session;
//! - an accepted wait is answered by exactly one `WaitDone`, emitted by the
//!   `notify` or `wait_timed_out` call that takes it out of the wait set,
//!   unless its session dies first. A waiter holds nothing and has nothing
//!   queued, before and after its `WaitDone`;
//! - a queue is non-empty only while its head is blocked by the holders
//!   (whatever can be granted has been), and then every greedy holder has
//!   been sent exactly one `Recall` for its grant;
//! - a (session, thread) has at most one queued request or wait per lock;
//! - every hold, queued request and waiter belongs to a live session: the
//!   session index counts exactly them, and a session has at most
//!   `max_pending_per_session` queued requests + waiters;
//! - a lock entry with no holders, no queue and no waiters does not exist,
//!   so memory follows live use.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

/// A client session (one connected JVM).
pub type SessionId = u64;
/// A JVM thread id, unique within its session.
pub type ThreadId = u64;
/// The client's correlation id for a reply.
pub type RequestId = u64;

/// Default for `LockManagerConfig::max_pending_per_session`.
pub const MAX_PENDING_PER_SESSION_DEFAULT: usize = 10_000;

/// What a lock protects: a shared object's monitor or a named lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockKey {
    Object(u64),
    Named(String),
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKey::Object(id) => write!(f, "object {id}"),
            LockKey::Named(name) => write!(f, "named {name:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Read,
    Write,
}

/// How a wait ended. Either way the waiter does not hold the lock: its
/// client re-acquires it with a new request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    Notified,
    TimedOut,
}

/// Identifies one wait, for the caller's timer (`wait_timed_out`). Never
/// reused within one `LockManager`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WaiterToken(u64);

/// A message the caller must send.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// A lock request was granted (now or after queueing). `mode` is the
    /// mode asked for (a reentrant grant under a Write hold keeps the hold
    /// in Write); `greedy` says whether the session now holds it greedily.
    Granted {
        session: SessionId,
        thread: ThreadId,
        lock: LockKey,
        mode: LockMode,
        greedy: bool,
        request: RequestId,
    },
    /// Ask the session holding `lock` greedily to give it back (send
    /// Release when its local holders are done). Sent at most once per
    /// greedy grant.
    Recall { session: SessionId, lock: LockKey },
    /// A wait finished (notified or timed out): the waiter no longer waits
    /// and does not hold the lock; its client re-acquires it with a new
    /// request.
    WaitDone {
        session: SessionId,
        thread: ThreadId,
        lock: LockKey,
        request: RequestId,
        outcome: WaitOutcome,
    },
}

/// Why a call was refused. A refused call changed nothing and emitted
/// nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LockError {
    /// Release, wait or notify by a thread that does not hold the lock (in
    /// Write mode for wait and notify): Java's IllegalMonitorStateException.
    #[error(
        "session {session} thread {thread} does not hold {lock} (release needs a hold, wait and notify a write hold)"
    )]
    NotHeld {
        lock: LockKey,
        session: SessionId,
        thread: ThreadId,
    },
    /// A Read holder asked for Write. Refused (as Java's
    /// ReentrantReadWriteLock does) because two readers upgrading deadlock.
    #[error(
        "session {session} thread {thread} holds {lock} for read and asked for write: upgrading is not supported"
    )]
    UpgradeNotSupported {
        lock: LockKey,
        session: SessionId,
        thread: ThreadId,
    },
    /// The thread already has a queued request or a wait on this lock.
    #[error("session {session} thread {thread} already has a queued request or a wait on {lock}")]
    AlreadyRequested {
        lock: LockKey,
        session: SessionId,
        thread: ThreadId,
    },
    /// The session already has `limit` queued requests and waiters.
    #[error(
        "session {session} already has {limit} queued requests and waits (the limit): refused thread {thread} on {lock}"
    )]
    TooManyRequests {
        lock: LockKey,
        session: SessionId,
        thread: ThreadId,
        limit: usize,
    },
}

#[derive(Clone, Debug)]
pub struct LockManagerConfig {
    /// Queued requests + waiters one session may have over all locks.
    /// Immediate grants are not counted: they hold nothing in a queue.
    pub max_pending_per_session: usize,
}

impl Default for LockManagerConfig {
    fn default() -> Self {
        Self {
            max_pending_per_session: MAX_PENDING_PER_SESSION_DEFAULT,
        }
    }
}

/// Counters of one lock while its entry lives, or cumulative totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockCounters {
    /// Every grant (`Granted`, reentrant ones included).
    pub acquisitions: u64,
    /// Requests granted after queueing (a woken waiter's new request counts
    /// like any other).
    pub contended: u64,
    /// `Recall` effects emitted.
    pub recalls: u64,
}

/// A snapshot for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    pub locks_live: usize,
    /// Hold entries (a reader thread, a writer thread or a greedy session).
    pub holders: usize,
    pub queued: usize,
    pub waiters: usize,
    pub acquisitions_total: u64,
    pub contended_total: u64,
    pub recalls_total: u64,
}

/// Who holds a lock: one thread of a session, or (`thread: None`) the
/// whole session, greedily. Ordered by session first, so one session's
/// holds are one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Owner {
    session: SessionId,
    thread: Option<ThreadId>,
}

impl Owner {
    fn new(session: SessionId, thread: ThreadId, greedy: bool) -> Self {
        let thread = if greedy { None } else { Some(thread) };
        Self { session, thread }
    }

    fn is_greedy(self) -> bool {
        self.thread.is_none()
    }

    /// Every owner of `session`, for `BTreeMap::range`.
    fn all_of(session: SessionId) -> std::ops::RangeInclusive<Owner> {
        Owner {
            session,
            thread: None,
        }..=Owner {
            session,
            thread: Some(ThreadId::MAX),
        }
    }
}

#[derive(Debug)]
struct Hold {
    /// Reentrancy count, >= 1. For a greedy hold only informational (the
    /// client tracks its own reentrancy; a release drops the whole hold).
    count: u64,
    /// A `Recall` was sent for this (greedy) grant.
    recalled: bool,
}

/// A lock request waiting in a queue.
#[derive(Debug)]
struct Queued {
    session: SessionId,
    thread: ThreadId,
    request: RequestId,
    mode: LockMode,
    greedy: bool,
}

/// A thread in a wait set. It holds nothing; its `WaitDone` carries
/// `request`.
#[derive(Debug)]
struct Waiter {
    session: SessionId,
    thread: ThreadId,
    request: RequestId,
}

#[derive(Debug, Default)]
struct LockState {
    /// `None` iff `holders` is empty.
    mode: Option<LockMode>,
    holders: BTreeMap<Owner, Hold>,
    queue: VecDeque<Queued>,
    /// The wait set by token; tokens only grow, so this is arrival order.
    waiters: BTreeMap<u64, Waiter>,
    /// (session, thread) of every entry of `queue` and `waiters`.
    pending: HashSet<(SessionId, ThreadId)>,
    counters: LockCounters,
}

impl LockState {
    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_empty() && self.waiters.is_empty()
    }

    /// The hold that (session, thread) counts as: its own, else its
    /// session's greedy hold.
    fn holder_of(&self, session: SessionId, thread: ThreadId) -> Option<Owner> {
        let own = Owner::new(session, thread, false);
        if self.holders.contains_key(&own) {
            return Some(own);
        }
        let greedy = Owner::new(session, thread, true);
        self.holders.contains_key(&greedy).then_some(greedy)
    }

    fn insert_hold(&mut self, owner: Owner, mode: LockMode, count: u64) {
        assert!(
            compatible(self.mode, mode),
            "grant of {mode:?} over {:?}",
            self.mode
        );
        assert!(count >= 1);
        let previous = self.holders.insert(
            owner,
            Hold {
                count,
                recalled: false,
            },
        );
        assert!(previous.is_none(), "{owner:?} holds twice");
        self.mode = Some(mode);
    }

    fn remove_hold(&mut self, owner: Owner) -> Hold {
        let hold = self
            .holders
            .remove(&owner)
            .expect("removing a hold that exists");
        if self.holders.is_empty() {
            self.mode = None;
        }
        hold
    }

    fn count_acquisition(&mut self, totals: &mut LockCounters, contended: bool) {
        self.counters.acquisitions += 1;
        totals.acquisitions += 1;
        if contended {
            self.counters.contended += 1;
            totals.contended += 1;
        }
    }

    fn assert_invariants(&self, key: &LockKey) {
        assert_eq!(
            self.holders.is_empty(),
            self.mode.is_none(),
            "{key}: holders vs mode"
        );
        if self.mode == Some(LockMode::Write) {
            assert_eq!(self.holders.len(), 1, "{key}: several write holders");
        }
        if !self.queue.is_empty() {
            assert!(
                !self.holders.is_empty(),
                "{key}: a queue behind a free lock"
            );
        }
        assert_eq!(
            self.pending.len(),
            self.queue.len() + self.waiters.len(),
            "{key}: a thread queued or waiting twice"
        );
        debug_assert!(
            self.queue.is_empty()
                || self
                    .holders
                    .iter()
                    .all(|(owner, hold)| !owner.is_greedy() || hold.recalled),
            "{key}: a greedy holder blocks the queue and was not recalled"
        );
    }
}

fn compatible(held: Option<LockMode>, asked: LockMode) -> bool {
    match held {
        None => true,
        Some(LockMode::Read) => asked == LockMode::Read,
        Some(LockMode::Write) => false,
    }
}

#[derive(Debug, Default)]
struct SessionEntry {
    /// Per lock: this session's holds + queued requests + waiters there.
    refs: BTreeMap<LockKey, u64>,
    /// Queued requests + waiters over all locks.
    pending_count: usize,
}

/// The locks each live session touches. A session is in the index iff it
/// holds, queues for or waits on some lock.
#[derive(Debug, Default)]
struct SessionIndex {
    entries: HashMap<SessionId, SessionEntry>,
}

impl SessionIndex {
    fn add_ref(&mut self, session: SessionId, key: &LockKey) {
        let entry = self.entries.entry(session).or_default();
        match entry.refs.get_mut(key) {
            Some(refs) => *refs += 1,
            None => {
                entry.refs.insert(key.clone(), 1);
            }
        }
    }

    fn remove_ref(&mut self, session: SessionId, key: &LockKey) {
        let entry = self
            .entries
            .get_mut(&session)
            .expect("session in the index");
        let refs = entry
            .refs
            .get_mut(key)
            .expect("lock in the session's index");
        assert!(*refs >= 1);
        *refs -= 1;
        if *refs == 0 {
            entry.refs.remove(key);
            if entry.refs.is_empty() {
                assert_eq!(
                    entry.pending_count, 0,
                    "session {session}: pending without refs"
                );
                self.entries.remove(&session);
            }
        }
    }

    fn pending_count(&self, session: SessionId) -> usize {
        self.entries
            .get(&session)
            .map_or(0, |entry| entry.pending_count)
    }

    /// Call after `add_ref` (the entry must exist).
    fn add_pending(&mut self, session: SessionId) {
        let entry = self
            .entries
            .get_mut(&session)
            .expect("session in the index");
        entry.pending_count += 1;
    }

    /// Call before `remove_ref`.
    fn remove_pending(&mut self, session: SessionId) {
        let entry = self
            .entries
            .get_mut(&session)
            .expect("session in the index");
        assert!(entry.pending_count >= 1);
        entry.pending_count -= 1;
    }
}

/// How the head of a queue gets the lock.
enum Admit {
    /// As a new hold.
    New(Owner),
    /// Into its session's existing greedy hold (reentrant).
    Join(Owner),
}

/// Grants from the head of the queue while the head is compatible with the
/// holders (one Write, or a run of consecutive Reads), then recalls every
/// greedy holder that still blocks the queue and was not recalled yet.
/// The head's own session is recalled too: a thread of it queued before its
/// session's greedy grant would otherwise wait for ever.
fn settle(
    key: &LockKey,
    state: &mut LockState,
    sessions: &mut SessionIndex,
    totals: &mut LockCounters,
    effects: &mut Vec<Effect>,
) {
    while let Some(head) = state.queue.front() {
        let admit = match state.holder_of(head.session, head.thread) {
            Some(owner) => {
                // A queued thread never holds in its own name (it would
                // have been granted reentrantly instead of queueing).
                assert!(owner.is_greedy(), "{key}: queued thread also holds");
                if state.mode == Some(LockMode::Read) && head.mode == LockMode::Write {
                    break;
                }
                Admit::Join(owner)
            }
            None if compatible(state.mode, head.mode) => {
                Admit::New(Owner::new(head.session, head.thread, head.greedy))
            }
            None => break,
        };
        let head = state.queue.pop_front().expect("the head was just seen");
        let was_pending = state.pending.remove(&(head.session, head.thread));
        assert!(was_pending, "{key}: queued thread not in the pending set");
        sessions.remove_pending(head.session);
        let greedy = match admit {
            Admit::Join(owner) => {
                state.holders.get_mut(&owner).expect("joined hold").count += 1;
                sessions.remove_ref(head.session, key);
                true
            }
            Admit::New(owner) => {
                state.insert_hold(owner, head.mode, 1);
                owner.is_greedy()
            }
        };
        state.count_acquisition(totals, true);
        effects.push(Effect::Granted {
            session: head.session,
            thread: head.thread,
            lock: key.clone(),
            mode: head.mode,
            greedy,
            request: head.request,
        });
    }
    if state.queue.is_empty() {
        return;
    }
    for (owner, hold) in &mut state.holders {
        if owner.is_greedy() && !hold.recalled {
            hold.recalled = true;
            state.counters.recalls += 1;
            totals.recalls += 1;
            effects.push(Effect::Recall {
                session: owner.session,
                lock: key.clone(),
            });
        }
    }
}

/// Ends the wait of `waiter` (already taken out of `state`'s wait set and
/// of the token map): it is no longer pending and its session's reference
/// to the lock goes; its client is told at once.
fn end_wait(
    key: &LockKey,
    state: &mut LockState,
    sessions: &mut SessionIndex,
    waiter: Waiter,
    outcome: WaitOutcome,
    effects: &mut Vec<Effect>,
) {
    let was_pending = state.pending.remove(&(waiter.session, waiter.thread));
    assert!(was_pending, "{key}: waiter not in the pending set");
    sessions.remove_pending(waiter.session);
    sessions.remove_ref(waiter.session, key);
    effects.push(Effect::WaitDone {
        session: waiter.session,
        thread: waiter.thread,
        lock: key.clone(),
        request: waiter.request,
        outcome,
    });
}

/// Asserts the lock's invariants and removes its entry if it is idle.
fn finish(locks: &mut HashMap<LockKey, LockState>, key: &LockKey) {
    let state = locks.get(key).expect("finishing a live lock");
    state.assert_invariants(key);
    if state.is_idle() {
        assert!(state.pending.is_empty());
        locks.remove(key);
    }
}

/// The cluster's locks. See the module doc.
#[derive(Debug)]
pub struct LockManager {
    config: LockManagerConfig,
    locks: HashMap<LockKey, LockState>,
    sessions: SessionIndex,
    /// The lock of every token still in a wait set.
    tokens: HashMap<u64, LockKey>,
    token_next: u64,
    totals: LockCounters,
}

impl Default for LockManager {
    fn default() -> Self {
        Self::new(LockManagerConfig::default())
    }
}

impl LockManager {
    pub fn new(config: LockManagerConfig) -> Self {
        Self {
            config,
            locks: HashMap::new(),
            sessions: SessionIndex::default(),
            tokens: HashMap::new(),
            token_next: 0,
            totals: LockCounters::default(),
        }
    }

    /// Asks for `lock` in `mode` for (session, thread); `greedy` asks that
    /// the whole session keep it until recalled. Grants now (a `Granted`
    /// effect) if the thread already holds it (reentrant: any mode under
    /// Write, Read under Read) or if nobody is queued and the mode is
    /// compatible with the holders; otherwise queues it (FIFO; a Read
    /// behind a queued Write waits) and recalls greedy holders in the way.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request message's fields, by name"
    )]
    pub fn request(
        &mut self,
        session: SessionId,
        thread: ThreadId,
        lock: LockKey,
        mode: LockMode,
        greedy: bool,
        request: RequestId,
        effects: &mut Vec<Effect>,
    ) -> Result<(), LockError> {
        let Self {
            config,
            locks,
            sessions,
            totals,
            ..
        } = self;
        let Some(state) = locks.get_mut(&lock) else {
            // Nobody touches this lock: granted at once.
            let mut state = LockState::default();
            let owner = Owner::new(session, thread, greedy);
            state.insert_hold(owner, mode, 1);
            sessions.add_ref(session, &lock);
            state.count_acquisition(totals, false);
            effects.push(Effect::Granted {
                session,
                thread,
                lock: lock.clone(),
                mode,
                greedy,
                request,
            });
            state.assert_invariants(&lock);
            locks.insert(lock, state);
            return Ok(());
        };
        if state.pending.contains(&(session, thread)) {
            return Err(LockError::AlreadyRequested {
                lock,
                session,
                thread,
            });
        }
        if let Some(owner) = state.holder_of(session, thread) {
            if state.mode == Some(LockMode::Read) && mode == LockMode::Write {
                return Err(LockError::UpgradeNotSupported {
                    lock,
                    session,
                    thread,
                });
            }
            state.holders.get_mut(&owner).expect("holder").count += 1;
            state.count_acquisition(totals, false);
            effects.push(Effect::Granted {
                session,
                thread,
                lock: lock.clone(),
                mode,
                greedy: owner.is_greedy(),
                request,
            });
        } else if state.queue.is_empty() && compatible(state.mode, mode) {
            state.insert_hold(Owner::new(session, thread, greedy), mode, 1);
            sessions.add_ref(session, &lock);
            state.count_acquisition(totals, false);
            effects.push(Effect::Granted {
                session,
                thread,
                lock: lock.clone(),
                mode,
                greedy,
                request,
            });
        } else {
            let limit = config.max_pending_per_session;
            if sessions.pending_count(session) >= limit {
                return Err(LockError::TooManyRequests {
                    lock,
                    session,
                    thread,
                    limit,
                });
            }
            state.queue.push_back(Queued {
                session,
                thread,
                request,
                mode,
                greedy,
            });
            state.pending.insert((session, thread));
            sessions.add_ref(session, &lock);
            sessions.add_pending(session);
            let effects_before = effects.len();
            settle(&lock, state, sessions, totals, effects);
            // Only recalls: nothing became grantable by queueing.
            debug_assert!(
                effects
                    .iter()
                    .skip(effects_before)
                    .all(|effect| matches!(effect, Effect::Recall { .. }))
            );
        }
        finish(locks, &lock);
        Ok(())
    }

    /// Releases one hold of `lock` by (session, thread): a thread hold's
    /// count drops by one, a greedy hold is dropped whole. When the lock is
    /// no longer held by that identity, queued requests are granted.
    pub fn release(
        &mut self,
        session: SessionId,
        thread: ThreadId,
        lock: LockKey,
        effects: &mut Vec<Effect>,
    ) -> Result<(), LockError> {
        let Self {
            locks,
            sessions,
            totals,
            ..
        } = self;
        let owner = locks
            .get(&lock)
            .and_then(|state| state.holder_of(session, thread));
        let (Some(owner), Some(state)) = (owner, locks.get_mut(&lock)) else {
            return Err(LockError::NotHeld {
                lock,
                session,
                thread,
            });
        };
        let hold = state.holders.get_mut(&owner).expect("holder");
        let done = if owner.is_greedy() {
            true
        } else {
            hold.count -= 1;
            hold.count == 0
        };
        if done {
            state.remove_hold(owner);
            sessions.remove_ref(session, &lock);
            settle(&lock, state, sessions, totals, effects);
        }
        finish(locks, &lock);
        Ok(())
    }

    /// `Object.wait`: (session, thread) must hold `lock` in Write mode, by
    /// its own hold or its session's greedy hold. That hold is released
    /// completely (the whole count; a greedy hold for the whole session),
    /// the thread joins the tail of the wait set and queued requests are
    /// granted. `WaitDone` follows when it is notified or times out; it
    /// then holds nothing and its client sends a new request. The token is
    /// for the caller's timer.
    pub fn wait(
        &mut self,
        session: SessionId,
        thread: ThreadId,
        lock: LockKey,
        request: RequestId,
        effects: &mut Vec<Effect>,
    ) -> Result<WaiterToken, LockError> {
        let Self {
            config,
            locks,
            sessions,
            tokens,
            token_next,
            totals,
        } = self;
        let owner = locks
            .get(&lock)
            .filter(|state| state.mode == Some(LockMode::Write))
            .and_then(|state| state.holder_of(session, thread));
        let (Some(owner), Some(state)) = (owner, locks.get_mut(&lock)) else {
            return Err(LockError::NotHeld {
                lock,
                session,
                thread,
            });
        };
        if state.pending.contains(&(session, thread)) {
            // Possible only under a greedy hold: another thread of the
            // session holds while this one already waits.
            return Err(LockError::AlreadyRequested {
                lock: lock.clone(),
                session,
                thread,
            });
        }
        let limit = config.max_pending_per_session;
        if sessions.pending_count(session) >= limit {
            return Err(LockError::TooManyRequests {
                lock: lock.clone(),
                session,
                thread,
                limit,
            });
        }
        state.remove_hold(owner);
        let token = *token_next;
        *token_next += 1;
        state.waiters.insert(
            token,
            Waiter {
                session,
                thread,
                request,
            },
        );
        state.pending.insert((session, thread));
        // The hold's ref becomes the waiter's.
        sessions.add_pending(session);
        let previous = tokens.insert(token, lock.clone());
        assert!(previous.is_none(), "token {token} reused");
        settle(&lock, state, sessions, totals, effects);
        finish(locks, &lock);
        Ok(WaiterToken(token))
    }

    /// `notify` (`all`: `notifyAll`): (session, thread) must hold `lock` in
    /// Write mode. Takes the first waiter (or all, in order) out of the wait
    /// set and emits `WaitDone { outcome: Notified }` for each at once, in
    /// that order. The notifier keeps its hold and nothing is queued for the
    /// woken: each re-acquires with a new request. Returns how many woke.
    pub fn notify(
        &mut self,
        session: SessionId,
        thread: ThreadId,
        lock: LockKey,
        all: bool,
        effects: &mut Vec<Effect>,
    ) -> Result<usize, LockError> {
        let Self {
            locks,
            sessions,
            tokens,
            ..
        } = self;
        let held = locks
            .get(&lock)
            .filter(|state| state.mode == Some(LockMode::Write))
            .and_then(|state| state.holder_of(session, thread))
            .is_some();
        let (true, Some(state)) = (held, locks.get_mut(&lock)) else {
            return Err(LockError::NotHeld {
                lock,
                session,
                thread,
            });
        };
        let woken = if all {
            state.waiters.len()
        } else {
            state.waiters.len().min(1)
        };
        for _ in 0..woken {
            let (token, waiter) = state.waiters.pop_first().expect("counted waiter");
            let removed = tokens.remove(&token);
            assert!(removed.is_some(), "waiter {token} had no token");
            end_wait(
                &lock,
                state,
                sessions,
                waiter,
                WaitOutcome::Notified,
                effects,
            );
        }
        // The holders and the queue are unchanged: nothing to grant or
        // recall.
        finish(locks, &lock);
        Ok(woken)
    }

    /// The timer of a wait fired. If the waiter is still in the wait set it
    /// leaves it, `WaitDone { outcome: TimedOut }` is emitted at once and
    /// this returns true; if it was notified already or its session is
    /// gone, false and nothing is emitted.
    pub fn wait_timed_out(&mut self, token: WaiterToken, effects: &mut Vec<Effect>) -> bool {
        let Some(key) = self.tokens.remove(&token.0) else {
            return false;
        };
        let state = self.locks.get_mut(&key).expect("a waiter's lock is live");
        let waiter = state.waiters.remove(&token.0).expect("a token's waiter");
        end_wait(
            &key,
            state,
            &mut self.sessions,
            waiter,
            WaitOutcome::TimedOut,
            effects,
        );
        // The lock may now be idle (nobody held, queued or waited): its
        // entry goes.
        finish(&mut self.locks, &key);
        true
    }

    /// A dead session: removes its holds, queued requests and waiters on
    /// every lock it touched (and only those), then grants what can be.
    /// Unknown sessions are ignored.
    pub fn drop_session(&mut self, session: SessionId, effects: &mut Vec<Effect>) {
        let Self {
            locks,
            sessions,
            tokens,
            totals,
            ..
        } = self;
        let Some(entry) = sessions.entries.remove(&session) else {
            return;
        };
        let mut pending_removed = 0;
        for (key, &refs) in &entry.refs {
            let state = locks.get_mut(key).expect("the index names live locks");
            let owners: Vec<Owner> = state
                .holders
                .range(Owner::all_of(session))
                .map(|(owner, _)| *owner)
                .collect();
            for &owner in &owners {
                state.remove_hold(owner);
            }
            let queued_before = state.queue.len();
            state.queue.retain(|queued| queued.session != session);
            let queued_removed = queued_before - state.queue.len();
            let waiters_before = state.waiters.len();
            state.waiters.retain(|token, waiter| {
                let keep = waiter.session != session;
                if !keep {
                    let removed = tokens.remove(token);
                    assert!(removed.is_some(), "waiter {token} had no token");
                }
                keep
            });
            let waiters_removed = waiters_before - state.waiters.len();
            state
                .pending
                .retain(|&(pending_session, _)| pending_session != session);
            assert_eq!(
                owners.len() + queued_removed + waiters_removed,
                usize::try_from(refs).expect("refs fit in usize"),
                "{key}: session {session}'s index disagrees with the lock"
            );
            pending_removed += queued_removed + waiters_removed;
            settle(key, state, sessions, totals, effects);
            finish(locks, key);
        }
        assert_eq!(
            pending_removed, entry.pending_count,
            "session {session}'s pending count"
        );
    }

    /// The mode `session` holds `lock` in (through any thread or greedily).
    pub fn holds(&self, session: SessionId, lock: &LockKey) -> Option<LockMode> {
        let state = self.locks.get(lock)?;
        state.holders.range(Owner::all_of(session)).next()?;
        state.mode
    }

    /// Nothing is held, queued or waiting.
    pub fn is_idle(&self) -> bool {
        let idle = self.locks.is_empty();
        if idle {
            assert!(
                self.sessions.entries.is_empty(),
                "sessions indexed without locks"
            );
            assert!(self.tokens.is_empty(), "tokens without locks");
        }
        idle
    }

    pub fn stats(&self) -> LockStats {
        let mut stats = LockStats {
            locks_live: self.locks.len(),
            acquisitions_total: self.totals.acquisitions,
            contended_total: self.totals.contended,
            recalls_total: self.totals.recalls,
            ..LockStats::default()
        };
        for state in self.locks.values() {
            stats.holders += state.holders.len();
            stats.queued += state.queue.len();
            stats.waiters += state.waiters.len();
        }
        stats
    }

    /// Up to `n` live locks with the most contended acquisitions (ties by
    /// key), most contended first. Locks never contended are left out.
    /// Counters of a lock start again when its entry is removed while idle.
    pub fn hottest(&self, n: usize) -> Vec<(LockKey, LockCounters)> {
        let order = |a: &(&LockKey, LockCounters), b: &(&LockKey, LockCounters)| {
            b.1.contended.cmp(&a.1.contended).then_with(|| a.0.cmp(b.0))
        };
        let mut hot: Vec<(&LockKey, LockCounters)> = self
            .locks
            .iter()
            .filter(|(_, state)| state.counters.contended > 0)
            .map(|(key, state)| (key, state.counters))
            .collect();
        if n == 0 {
            return Vec::new();
        }
        if hot.len() > n {
            hot.select_nth_unstable_by(n - 1, order);
            hot.truncate(n);
        }
        hot.sort_unstable_by(order);
        hot.into_iter()
            .map(|(key, counters)| (key.clone(), counters))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockMode::{Read, Write};
    use proptest::prelude::*;

    const S1: SessionId = 1;
    const S2: SessionId = 2;
    const S3: SessionId = 3;
    const S4: SessionId = 4;
    const T1: ThreadId = 11;
    const T2: ThreadId = 12;

    fn obj(id: u64) -> LockKey {
        LockKey::Object(id)
    }

    fn granted(
        session: SessionId,
        thread: ThreadId,
        lock: &LockKey,
        mode: LockMode,
        greedy: bool,
        request: RequestId,
    ) -> Effect {
        Effect::Granted {
            session,
            thread,
            lock: lock.clone(),
            mode,
            greedy,
            request,
        }
    }

    fn recall(session: SessionId, lock: &LockKey) -> Effect {
        Effect::Recall {
            session,
            lock: lock.clone(),
        }
    }

    fn wait_done(
        session: SessionId,
        thread: ThreadId,
        lock: &LockKey,
        request: RequestId,
        outcome: WaitOutcome,
    ) -> Effect {
        Effect::WaitDone {
            session,
            thread,
            lock: lock.clone(),
            request,
            outcome,
        }
    }

    /// Every check that needs a full scan: the derived structures (pending
    /// sets, session index, tokens) agree with the locks, no idle entry is
    /// kept, each queue head is blocked, blocking greedy holders were
    /// recalled.
    fn check_invariants(m: &LockManager) {
        let mut refs: BTreeMap<(SessionId, LockKey), u64> = BTreeMap::new();
        let mut pending: BTreeMap<SessionId, usize> = BTreeMap::new();
        let mut waiter_count = 0;
        for (key, state) in &m.locks {
            state.assert_invariants(key);
            assert!(!state.is_idle(), "{key}: idle entry kept");
            for (owner, hold) in &state.holders {
                assert!(hold.count >= 1, "{key}: empty hold");
                *refs.entry((owner.session, key.clone())).or_default() += 1;
                if !state.queue.is_empty() && owner.is_greedy() {
                    assert!(
                        hold.recalled,
                        "{key}: greedy {owner:?} blocks and was not recalled"
                    );
                }
            }
            let mut identities = HashSet::new();
            for queued in &state.queue {
                assert!(
                    identities.insert((queued.session, queued.thread)),
                    "{key}: queued twice"
                );
                *refs.entry((queued.session, key.clone())).or_default() += 1;
                *pending.entry(queued.session).or_default() += 1;
            }
            for (token, waiter) in &state.waiters {
                assert!(
                    identities.insert((waiter.session, waiter.thread)),
                    "{key}: waits twice"
                );
                assert!(
                    !state
                        .holders
                        .contains_key(&Owner::new(waiter.session, waiter.thread, false)),
                    "{key}: a waiter holds"
                );
                assert_eq!(m.tokens.get(token), Some(key), "{key}: token {token}");
                assert!(*token < m.token_next);
                *refs.entry((waiter.session, key.clone())).or_default() += 1;
                *pending.entry(waiter.session).or_default() += 1;
                waiter_count += 1;
            }
            assert_eq!(identities, state.pending, "{key}: pending set");
            if let Some(head) = state.queue.front() {
                // The head must be blocked: settle would have granted it.
                let blocked = match state.holder_of(head.session, head.thread) {
                    Some(_) => state.mode == Some(Read) && head.mode == Write,
                    None => !compatible(state.mode, head.mode),
                };
                assert!(blocked, "{key}: grantable head left queued");
            }
        }
        assert_eq!(waiter_count, m.tokens.len(), "tokens of gone waiters");
        let mut indexed_refs = BTreeMap::new();
        let mut indexed_pending = BTreeMap::new();
        for (&session, entry) in &m.sessions.entries {
            assert!(
                !entry.refs.is_empty(),
                "session {session} indexed with nothing"
            );
            assert!(entry.pending_count <= m.config.max_pending_per_session);
            for (key, &count) in &entry.refs {
                indexed_refs.insert((session, key.clone()), count);
            }
            if entry.pending_count > 0 {
                indexed_pending.insert(session, entry.pending_count);
            }
        }
        assert_eq!(indexed_refs, refs, "session index refs");
        assert_eq!(indexed_pending, pending, "session index pending counts");
    }

    /// A canonical dump of all state, to check that refused calls change
    /// nothing.
    fn snapshot(m: &LockManager) -> String {
        let mut locks: Vec<_> = m.locks.iter().collect();
        locks.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::new();
        for (key, state) in locks {
            let mut pending: Vec<_> = state.pending.iter().collect();
            pending.sort();
            out += &format!(
                "{key}: {:?} {:?} {:?} {:?} {pending:?} {:?}\n",
                state.mode, state.holders, state.queue, state.waiters, state.counters
            );
        }
        let mut sessions: Vec<_> = m.sessions.entries.iter().collect();
        sessions.sort_by_key(|(session, _)| **session);
        let mut tokens: Vec<_> = m.tokens.iter().collect();
        tokens.sort();
        out += &format!("{sessions:?} {tokens:?} {} {:?}", m.token_next, m.totals);
        out
    }

    /// A manager plus helpers that check the invariants after every call
    /// and that refused calls emit nothing and change nothing.
    struct H {
        m: LockManager,
    }

    impl H {
        fn new() -> Self {
            Self::with_limit(MAX_PENDING_PER_SESSION_DEFAULT)
        }

        fn with_limit(limit: usize) -> Self {
            Self {
                m: LockManager::new(LockManagerConfig {
                    max_pending_per_session: limit,
                }),
            }
        }

        fn checked<T>(
            &mut self,
            call: impl FnOnce(&mut LockManager, &mut Vec<Effect>) -> Result<T, LockError>,
        ) -> Result<(T, Vec<Effect>), LockError> {
            let before = snapshot(&self.m);
            let mut effects = Vec::new();
            let result = call(&mut self.m, &mut effects);
            check_invariants(&self.m);
            match result {
                Ok(value) => Ok((value, effects)),
                Err(error) => {
                    assert!(effects.is_empty(), "{error}: effects {effects:?}");
                    assert_eq!(before, snapshot(&self.m), "{error}: state changed");
                    Err(error)
                }
            }
        }

        fn try_req(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
            mode: LockMode,
            greedy: bool,
            r: RequestId,
        ) -> Result<Vec<Effect>, LockError> {
            let lock = lock.clone();
            self.checked(|m, fx| m.request(s, t, lock, mode, greedy, r, fx))
                .map(|((), fx)| fx)
        }

        fn req(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
            mode: LockMode,
            r: RequestId,
        ) -> Vec<Effect> {
            self.try_req(s, t, lock, mode, false, r).expect("request")
        }

        fn greedy(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
            mode: LockMode,
            r: RequestId,
        ) -> Vec<Effect> {
            self.try_req(s, t, lock, mode, true, r)
                .expect("greedy request")
        }

        fn try_rel(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
        ) -> Result<Vec<Effect>, LockError> {
            self.checked(|m, fx| m.release(s, t, lock.clone(), fx))
                .map(|((), fx)| fx)
        }

        fn rel(&mut self, s: SessionId, t: ThreadId, lock: &LockKey) -> Vec<Effect> {
            self.try_rel(s, t, lock).expect("release")
        }

        fn try_wait(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
            r: RequestId,
        ) -> Result<(WaiterToken, Vec<Effect>), LockError> {
            self.checked(|m, fx| m.wait(s, t, lock.clone(), r, fx))
        }

        fn wait(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
            r: RequestId,
        ) -> (WaiterToken, Vec<Effect>) {
            self.try_wait(s, t, lock, r).expect("wait")
        }

        fn try_notify(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
            all: bool,
        ) -> Result<(usize, Vec<Effect>), LockError> {
            self.checked(|m, fx| m.notify(s, t, lock.clone(), all, fx))
        }

        /// How many woke, and the effects (only their `WaitDone`s: the
        /// notifier keeps the lock).
        fn notify(
            &mut self,
            s: SessionId,
            t: ThreadId,
            lock: &LockKey,
            all: bool,
        ) -> (usize, Vec<Effect>) {
            let (woken, fx) = self.try_notify(s, t, lock, all).expect("notify");
            assert_eq!(fx.len(), woken, "one WaitDone per woken waiter: {fx:?}");
            assert!(
                fx.iter().all(|effect| matches!(
                    effect,
                    Effect::WaitDone {
                        outcome: WaitOutcome::Notified,
                        ..
                    }
                )),
                "{fx:?}"
            );
            assert_eq!(self.m.holds(s, lock), Some(Write), "the notifier holds");
            (woken, fx)
        }

        fn timeout(&mut self, token: WaiterToken) -> (bool, Vec<Effect>) {
            let before = snapshot(&self.m);
            let mut fx = Vec::new();
            let fired = self.m.wait_timed_out(token, &mut fx);
            check_invariants(&self.m);
            if !fired {
                assert_eq!(fx, vec![]);
                assert_eq!(snapshot(&self.m), before, "a stale timer changed state");
            }
            (fired, fx)
        }

        fn drop_session(&mut self, s: SessionId) -> Vec<Effect> {
            let mut fx = Vec::new();
            self.m.drop_session(s, &mut fx);
            check_invariants(&self.m);
            fx
        }
    }

    // ------------------------------------------------------------ modes

    #[test]
    fn readers_share_and_a_writer_is_exclusive() {
        let mut h = H::new();
        let a = obj(1);
        assert_eq!(
            h.req(S1, T1, &a, Read, 1),
            vec![granted(S1, T1, &a, Read, false, 1)]
        );
        assert_eq!(
            h.req(S2, T1, &a, Read, 2),
            vec![granted(S2, T1, &a, Read, false, 2)]
        );
        assert_eq!(
            h.req(S3, T1, &a, Write, 3),
            vec![],
            "writer waits for the readers"
        );
        assert_eq!(h.m.holds(S3, &a), None);
        assert_eq!(h.rel(S1, T1, &a), vec![], "one reader still holds");
        assert_eq!(
            h.rel(S2, T1, &a),
            vec![granted(S3, T1, &a, Write, false, 3)]
        );
        assert_eq!(h.m.holds(S3, &a), Some(Write));
        assert_eq!(
            h.req(S1, T1, &a, Read, 4),
            vec![],
            "reader waits for the writer"
        );
        assert_eq!(
            h.req(S2, T1, &a, Write, 5),
            vec![],
            "writer waits for the writer"
        );
        assert_eq!(h.rel(S3, T1, &a), vec![granted(S1, T1, &a, Read, false, 4)]);
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 5)]
        );
    }

    #[test]
    fn two_threads_of_one_session_are_different_holders() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        assert_eq!(
            h.req(S1, T2, &a, Write, 2),
            vec![],
            "a thread is not its sibling"
        );
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S1, T2, &a, Write, false, 2)]
        );
    }

    #[test]
    fn reentrant_write_needs_as_many_releases_as_grants() {
        let mut h = H::new();
        let a = obj(1);
        assert_eq!(
            h.req(S1, T1, &a, Write, 1),
            vec![granted(S1, T1, &a, Write, false, 1)]
        );
        assert_eq!(
            h.req(S1, T1, &a, Write, 2),
            vec![granted(S1, T1, &a, Write, false, 2)]
        );
        assert_eq!(
            h.req(S1, T1, &a, Read, 3),
            vec![granted(S1, T1, &a, Read, false, 3)],
            "a writer may also ask for read"
        );
        assert_eq!(h.m.holds(S1, &a), Some(Write), "the hold stays write");
        assert_eq!(h.req(S2, T1, &a, Read, 4), vec![]);
        assert_eq!(h.rel(S1, T1, &a), vec![]);
        assert_eq!(h.rel(S1, T1, &a), vec![]);
        assert_eq!(h.m.holds(S1, &a), Some(Write));
        assert_eq!(h.rel(S1, T1, &a), vec![granted(S2, T1, &a, Read, false, 4)]);
        assert_eq!(h.m.holds(S1, &a), None);
        assert!(matches!(
            h.try_rel(S1, T1, &a),
            Err(LockError::NotHeld { .. })
        ));
    }

    #[test]
    fn reentrant_read_bypasses_a_queued_writer() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Read, 1);
        assert_eq!(h.req(S2, T1, &a, Write, 2), vec![]);
        assert_eq!(
            h.req(S1, T1, &a, Read, 3),
            vec![granted(S1, T1, &a, Read, false, 3)],
            "a holder re-entering must not queue behind a writer waiting for it"
        );
        assert_eq!(h.rel(S1, T1, &a), vec![]);
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 2)]
        );
    }

    #[test]
    fn upgrade_from_read_to_write_is_refused() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Read, 1);
        let error = h.try_req(S1, T1, &a, Write, false, 2).expect_err("upgrade");
        assert_eq!(
            error,
            LockError::UpgradeNotSupported {
                lock: a.clone(),
                session: S1,
                thread: T1,
            }
        );
        assert_eq!(h.m.holds(S1, &a), Some(Read));
        assert_eq!(h.rel(S1, T1, &a), vec![]);
        assert_eq!(h.m.holds(S1, &a), None, "the refused request did not count");
        assert!(h.m.is_idle());
    }

    // ------------------------------------------------------------ fairness

    #[test]
    fn queued_writers_are_granted_in_arrival_order() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S4, T1, &a, Write, 1);
        assert_eq!(h.req(S2, T1, &a, Write, 2), vec![]);
        assert_eq!(h.req(S1, T1, &a, Write, 3), vec![]);
        assert_eq!(h.req(S3, T1, &a, Write, 4), vec![]);
        assert_eq!(
            h.rel(S4, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 2)]
        );
        assert_eq!(
            h.rel(S2, T1, &a),
            vec![granted(S1, T1, &a, Write, false, 3)]
        );
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S3, T1, &a, Write, false, 4)]
        );
        assert_eq!(h.rel(S3, T1, &a), vec![]);
        assert!(h.m.is_idle());
    }

    #[test]
    fn a_reader_behind_a_queued_writer_waits() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Read, 1);
        assert_eq!(h.req(S2, T1, &a, Write, 2), vec![]);
        assert_eq!(
            h.req(S3, T1, &a, Read, 3),
            vec![],
            "compatible with the readers, but a writer is queued first"
        );
        assert_eq!(h.m.holds(S3, &a), None);
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 2)]
        );
        assert_eq!(h.rel(S2, T1, &a), vec![granted(S3, T1, &a, Read, false, 3)]);
    }

    #[test]
    fn consecutive_queued_reads_are_granted_together() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        h.req(S2, T1, &a, Read, 2);
        h.req(S3, T1, &a, Read, 3);
        h.req(S4, T1, &a, Write, 4);
        h.req(S1, T2, &a, Read, 5);
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![
                granted(S2, T1, &a, Read, false, 2),
                granted(S3, T1, &a, Read, false, 3),
            ],
            "the run of reads stops at the queued writer"
        );
        assert_eq!(h.rel(S2, T1, &a), vec![]);
        assert_eq!(
            h.rel(S3, T1, &a),
            vec![granted(S4, T1, &a, Write, false, 4)]
        );
        assert_eq!(h.rel(S4, T1, &a), vec![granted(S1, T2, &a, Read, false, 5)]);
    }

    #[test]
    fn a_thread_may_queue_on_one_lock_once() {
        let mut h = H::new();
        let (a, b) = (obj(1), obj(2));
        h.req(S1, T1, &a, Write, 1);
        h.req(S1, T1, &b, Write, 2);
        h.req(S2, T1, &a, Write, 3);
        let error = h.try_req(S2, T1, &a, Read, false, 4).expect_err("twice");
        assert_eq!(
            error,
            LockError::AlreadyRequested {
                lock: a.clone(),
                session: S2,
                thread: T1,
            }
        );
        assert_eq!(h.req(S2, T1, &b, Write, 5), vec![], "another lock is fine");
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 3)]
        );
    }

    // ------------------------------------------------------------ greedy

    #[test]
    fn greedy_holder_is_recalled_once_and_its_release_grants_the_next() {
        let mut h = H::new();
        let a = obj(1);
        assert_eq!(
            h.greedy(S1, T1, &a, Write, 1),
            vec![granted(S1, T1, &a, Write, true, 1)]
        );
        assert_eq!(h.req(S2, T1, &a, Write, 2), vec![recall(S1, &a)]);
        assert_eq!(
            h.req(S3, T1, &a, Read, 3),
            vec![],
            "no second recall for one grant"
        );
        assert_eq!(h.m.stats().recalls_total, 1);
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 2)]
        );
        assert_eq!(h.m.holds(S1, &a), None);
        // A new greedy grant is recalled again.
        assert_eq!(h.greedy(S1, T1, &a, Write, 4), vec![]);
        assert_eq!(h.rel(S2, T1, &a), vec![granted(S3, T1, &a, Read, false, 3)]);
        assert_eq!(h.rel(S3, T1, &a), vec![granted(S1, T1, &a, Write, true, 4)]);
        assert_eq!(h.req(S2, T1, &a, Read, 5), vec![recall(S1, &a)]);
        assert_eq!(h.m.stats().recalls_total, 2);
    }

    #[test]
    fn greedy_grant_with_requests_queued_behind_is_recalled_at_once() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        assert_eq!(h.greedy(S2, T1, &a, Write, 2), vec![]);
        assert_eq!(h.req(S3, T1, &a, Write, 3), vec![]);
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, true, 2), recall(S2, &a)]
        );
        assert_eq!(
            h.rel(S2, T1, &a),
            vec![granted(S3, T1, &a, Write, false, 3)]
        );
    }

    #[test]
    fn greedy_readers_are_all_recalled_for_a_writer_and_ordinary_readers_are_not() {
        let mut h = H::new();
        let a = obj(1);
        h.greedy(S2, T1, &a, Read, 1);
        h.req(S3, T1, &a, Read, 2);
        assert_eq!(
            h.greedy(S1, T1, &a, Read, 3),
            vec![granted(S1, T1, &a, Read, true, 3)],
            "greedy readers do not block readers"
        );
        assert_eq!(
            h.req(S4, T1, &a, Write, 4),
            vec![recall(S1, &a), recall(S2, &a)]
        );
        assert_eq!(h.rel(S1, T1, &a), vec![]);
        assert_eq!(
            h.rel(S2, T2, &a),
            vec![],
            "any thread of a greedy session releases"
        );
        assert_eq!(
            h.rel(S3, T1, &a),
            vec![granted(S4, T1, &a, Write, false, 4)]
        );
    }

    #[test]
    fn greedy_holders_other_threads_are_reentrant_and_one_release_drops_the_hold() {
        let mut h = H::new();
        let a = obj(1);
        h.greedy(S1, T1, &a, Write, 1);
        h.req(S2, T1, &a, Write, 2);
        assert_eq!(
            h.req(S1, T2, &a, Write, 3),
            vec![granted(S1, T2, &a, Write, true, 3)],
            "the session is the holder, even after a recall"
        );
        assert_eq!(
            h.req(S1, T2, &a, Read, 4),
            vec![granted(S1, T2, &a, Read, true, 4)]
        );
        assert_eq!(
            h.rel(S1, T2, &a),
            vec![granted(S2, T1, &a, Write, false, 2)],
            "a greedy release drops the whole hold whatever the count"
        );
        assert_eq!(h.m.holds(S1, &a), None);
        assert!(matches!(
            h.try_rel(S1, T1, &a),
            Err(LockError::NotHeld { .. })
        ));
    }

    #[test]
    fn greedy_read_holder_asking_write_from_another_thread_is_an_upgrade() {
        let mut h = H::new();
        let a = obj(1);
        h.greedy(S1, T1, &a, Read, 1);
        assert!(matches!(
            h.try_req(S1, T2, &a, Write, false, 2),
            Err(LockError::UpgradeNotSupported {
                session: S1,
                thread: T2,
                ..
            })
        ));
    }

    #[test]
    fn a_thread_queued_behind_its_own_sessions_greedy_read_makes_it_recalled() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S2, T1, &a, Write, 1);
        h.greedy(S1, T2, &a, Read, 2);
        h.req(S1, T1, &a, Write, 3);
        // S1 gets the lock greedily for reading; T1's write cannot join that
        // hold (it would be an upgrade), so S1 must give the lock back or
        // T1 waits for ever.
        assert_eq!(
            h.rel(S2, T1, &a),
            vec![granted(S1, T2, &a, Read, true, 2), recall(S1, &a)]
        );
        assert_eq!(
            h.rel(S1, T2, &a),
            vec![granted(S1, T1, &a, Write, false, 3)]
        );
    }

    #[test]
    fn a_queued_thread_joins_its_sessions_greedy_write_grant() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S2, T1, &a, Write, 1);
        h.greedy(S1, T2, &a, Write, 2);
        h.req(S1, T1, &a, Write, 3);
        h.req(S3, T1, &a, Write, 4);
        // Once S1 holds greedily, T1 is the holder identity too: reentrant.
        assert_eq!(
            h.rel(S2, T1, &a),
            vec![
                granted(S1, T2, &a, Write, true, 2),
                granted(S1, T1, &a, Write, true, 3),
                recall(S1, &a),
            ]
        );
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S3, T1, &a, Write, false, 4)]
        );
    }

    #[test]
    fn a_woken_waiters_new_request_recalls_the_greedy_notifier() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S2, T1, &a, Write, 1);
        h.wait(S2, T1, &a, 2);
        h.greedy(S1, T1, &a, Write, 3);
        assert_eq!(
            h.notify(S1, T2, &a, false),
            (1, vec![wait_done(S2, T1, &a, 2, WaitOutcome::Notified)]),
            "any thread of the greedy session notifies; no recall yet"
        );
        assert_eq!(
            h.req(S2, T1, &a, Write, 4),
            vec![recall(S1, &a)],
            "the woken waiter's request is blocked like any other"
        );
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 4)]
        );
    }

    // ------------------------------------------------------------ wait / notify

    #[test]
    fn wait_releases_the_lock_to_a_queued_writer() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        h.req(S2, T1, &a, Write, 2);
        let (_, fx) = h.wait(S1, T1, &a, 3);
        assert_eq!(fx, vec![granted(S2, T1, &a, Write, false, 2)]);
        assert_eq!(h.m.holds(S1, &a), None);
        assert_eq!(h.m.stats().waiters, 1);
    }

    #[test]
    fn a_woken_waiter_gets_wait_done_at_notify_and_its_new_request_waits_for_the_notifier() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        let (_, fx) = h.wait(S1, T1, &a, 2);
        assert_eq!(fx, vec![]);
        h.req(S2, T1, &a, Write, 3);
        h.req(S3, T1, &a, Write, 4);
        assert_eq!(
            h.notify(S2, T1, &a, false),
            (1, vec![wait_done(S1, T1, &a, 2, WaitOutcome::Notified)])
        );
        assert_eq!(h.m.holds(S1, &a), None, "woken, holding nothing");
        assert_eq!(h.m.stats().queued, 1, "nothing queued for the woken waiter");
        assert_eq!(
            h.req(S1, T1, &a, Write, 5),
            vec![],
            "the woken waiter's new request queues behind earlier requests"
        );
        assert_eq!(
            h.rel(S2, T1, &a),
            vec![granted(S3, T1, &a, Write, false, 4)]
        );
        assert_eq!(
            h.rel(S3, T1, &a),
            vec![granted(S1, T1, &a, Write, false, 5)]
        );
        assert_eq!(h.m.holds(S1, &a), Some(Write));
        let counters = h.m.hottest(1)[0].1;
        assert_eq!(
            (counters.acquisitions, counters.contended),
            (4, 2),
            "the new request counts like any request"
        );
    }

    /// Three waiters, in order S1, S2, S3; `S4` holds the lock at the end.
    fn three_waiters(h: &mut H, a: &LockKey) {
        for (session, request) in [(S1, 1), (S2, 2), (S3, 3)] {
            assert_eq!(
                h.req(session, T1, a, Write, request),
                vec![granted(session, T1, a, Write, false, request)]
            );
            h.wait(session, T1, a, 10 + request);
        }
        h.req(S4, T1, a, Write, 4);
    }

    #[test]
    fn notify_wakes_the_longest_waiting_thread_first() {
        let mut h = H::new();
        let a = obj(1);
        three_waiters(&mut h, &a);
        assert_eq!(
            h.notify(S4, T1, &a, false),
            (1, vec![wait_done(S1, T1, &a, 11, WaitOutcome::Notified)])
        );
        assert_eq!(
            h.notify(S4, T1, &a, false),
            (1, vec![wait_done(S2, T1, &a, 12, WaitOutcome::Notified)])
        );
        assert_eq!(h.m.stats().waiters, 1, "S3 was not notified");
        assert_eq!(h.rel(S4, T1, &a), vec![], "nobody queued");
        assert_eq!(
            h.req(S2, T1, &a, Write, 5),
            vec![granted(S2, T1, &a, Write, false, 5)]
        );
        assert_eq!(h.m.stats().waiters, 1);
    }

    #[test]
    fn notify_all_wakes_every_waiter_in_order() {
        let mut h = H::new();
        let a = obj(1);
        three_waiters(&mut h, &a);
        assert_eq!(
            h.notify(S4, T1, &a, true),
            (
                3,
                vec![
                    wait_done(S1, T1, &a, 11, WaitOutcome::Notified),
                    wait_done(S2, T1, &a, 12, WaitOutcome::Notified),
                    wait_done(S3, T1, &a, 13, WaitOutcome::Notified),
                ]
            )
        );
        assert_eq!(h.m.stats().waiters, 0);
        assert_eq!(h.m.stats().queued, 0, "nothing queued for the woken");
        // They compete again in the order their new requests arrive.
        for (session, request) in [(S3, 23), (S1, 21), (S2, 22)] {
            assert_eq!(h.req(session, T1, &a, Write, request), vec![]);
        }
        assert_eq!(
            h.rel(S4, T1, &a),
            vec![granted(S3, T1, &a, Write, false, 23)]
        );
        assert_eq!(
            h.rel(S3, T1, &a),
            vec![granted(S1, T1, &a, Write, false, 21)]
        );
        assert_eq!(
            h.notify(S1, T1, &a, true),
            (0, vec![]),
            "nobody left to wake"
        );
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 22)]
        );
        h.rel(S2, T1, &a);
        assert!(h.m.is_idle());
    }

    #[test]
    fn wait_releases_the_whole_reentrancy_count() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        h.req(S1, T1, &a, Write, 2);
        h.req(S2, T1, &a, Write, 3);
        let (_, fx) = h.wait(S1, T1, &a, 4);
        assert_eq!(fx, vec![granted(S2, T1, &a, Write, false, 3)]);
        assert_eq!(
            h.notify(S2, T1, &a, false),
            (1, vec![wait_done(S1, T1, &a, 4, WaitOutcome::Notified)])
        );
        h.req(S3, T1, &a, Read, 5);
        assert_eq!(h.req(S1, T1, &a, Write, 6), vec![]);
        assert_eq!(h.rel(S2, T1, &a), vec![granted(S3, T1, &a, Read, false, 5)]);
        assert_eq!(
            h.rel(S3, T1, &a),
            vec![granted(S1, T1, &a, Write, false, 6)]
        );
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![],
            "the new grant's count is one, not the count before the wait"
        );
        assert!(h.m.is_idle());
    }

    #[test]
    fn wait_under_a_greedy_hold_releases_the_sessions_whole_hold() {
        let mut h = H::new();
        let a = obj(1);
        h.greedy(S1, T1, &a, Write, 1);
        let (_, fx) = h.wait(S1, T2, &a, 2);
        assert_eq!(fx, vec![]);
        assert_eq!(h.m.holds(S1, &a), None, "the session holds nothing");
        assert_eq!(
            h.req(S2, T1, &a, Write, 3),
            vec![granted(S2, T1, &a, Write, false, 3)]
        );
        assert_eq!(
            h.notify(S2, T1, &a, false),
            (1, vec![wait_done(S1, T2, &a, 2, WaitOutcome::Notified)])
        );
        assert_eq!(h.greedy(S1, T2, &a, Write, 4), vec![]);
        assert_eq!(h.rel(S2, T1, &a), vec![granted(S1, T2, &a, Write, true, 4)]);
        assert_eq!(
            h.req(S1, T1, &a, Write, 5),
            vec![granted(S1, T1, &a, Write, true, 5)],
            "the session holds greedily again, by the new grant"
        );
        assert_eq!(h.rel(S1, T1, &a), vec![]);
        assert!(h.m.is_idle());
    }

    #[test]
    fn a_waiting_thread_cannot_wait_or_request_again_until_its_wait_done() {
        let mut h = H::new();
        let a = obj(1);
        h.greedy(S1, T1, &a, Write, 1);
        h.wait(S1, T1, &a, 2);
        h.greedy(S1, T2, &a, Write, 3);
        assert!(matches!(
            h.try_wait(S1, T1, &a, 4),
            Err(LockError::AlreadyRequested {
                session: S1,
                thread: T1,
                ..
            })
        ));
        assert!(matches!(
            h.try_req(S1, T1, &a, Write, true, 5),
            Err(LockError::AlreadyRequested {
                session: S1,
                thread: T1,
                ..
            })
        ));
        assert_eq!(
            h.notify(S1, T2, &a, false),
            (1, vec![wait_done(S1, T1, &a, 2, WaitOutcome::Notified)])
        );
        assert_eq!(
            h.try_req(S1, T1, &a, Write, true, 6),
            Ok(vec![granted(S1, T1, &a, Write, true, 6)]),
            "after WaitDone it requests like any thread (here: its session's greedy hold)"
        );
    }

    #[test]
    fn release_wait_and_notify_by_a_non_holder_are_refused() {
        let mut h = H::new();
        let (a, b, free) = (obj(1), obj(2), LockKey::Named("free".into()));
        h.req(S1, T1, &a, Write, 1);
        h.req(S2, T1, &a, Write, 2);
        h.req(S3, T1, &b, Read, 3);
        let not_held = |lock: &LockKey, session, thread| LockError::NotHeld {
            lock: lock.clone(),
            session,
            thread,
        };
        // `checked` asserts that each refusal emits and changes nothing.
        assert_eq!(h.try_rel(S1, T2, &a), Err(not_held(&a, S1, T2)));
        assert_eq!(h.try_rel(S2, T1, &a), Err(not_held(&a, S2, T1)));
        assert_eq!(h.try_rel(S1, T1, &free), Err(not_held(&free, S1, T1)));
        assert_eq!(
            h.try_wait(S2, T1, &a, 4).map(|_| ()),
            Err(not_held(&a, S2, T1))
        );
        assert_eq!(
            h.try_notify(S2, T1, &a, true).map(|_| ()),
            Err(not_held(&a, S2, T1))
        );
        assert_eq!(
            h.try_wait(S3, T1, &b, 5).map(|_| ()),
            Err(not_held(&b, S3, T1)),
            "a reader may not wait"
        );
        assert_eq!(
            h.try_notify(S3, T1, &b, false).map(|_| ()),
            Err(not_held(&b, S3, T1)),
            "a reader may not notify"
        );
        assert_eq!(
            h.try_wait(S1, T1, &free, 6).map(|_| ()),
            Err(not_held(&free, S1, T1))
        );
        assert_eq!(h.m.stats().locks_live, 2, "no entry made for the free lock");
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 2)]
        );
    }

    #[test]
    fn a_timed_out_waiter_gets_wait_done_at_once_and_may_request_again() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        let (token, _) = h.wait(S1, T1, &a, 2);
        h.req(S2, T1, &a, Write, 3);
        assert_eq!(
            h.timeout(token),
            (true, vec![wait_done(S1, T1, &a, 2, WaitOutcome::TimedOut)]),
            "at once, although S2 holds the lock"
        );
        assert_eq!(h.m.stats().waiters, 0);
        assert_eq!(h.m.holds(S1, &a), None);
        assert_eq!(
            h.notify(S2, T1, &a, false),
            (0, vec![]),
            "no longer in the wait set"
        );
        assert_eq!(h.req(S1, T1, &a, Write, 4), vec![]);
        assert_eq!(
            h.rel(S2, T1, &a),
            vec![granted(S1, T1, &a, Write, false, 4)]
        );
        assert_eq!(h.timeout(token), (false, vec![]), "fires once");
    }

    #[test]
    fn a_timed_out_waiter_on_a_free_lock_leaves_no_entry_behind() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        let (token, _) = h.wait(S1, T1, &a, 2);
        assert_eq!(h.m.stats().locks_live, 1, "the wait set keeps the entry");
        assert_eq!(
            h.timeout(token),
            (true, vec![wait_done(S1, T1, &a, 2, WaitOutcome::TimedOut)])
        );
        assert!(h.m.is_idle(), "nobody holds, queues or waits");
        assert_eq!(
            h.req(S1, T1, &a, Write, 3),
            vec![granted(S1, T1, &a, Write, false, 3)]
        );
    }

    #[test]
    fn wait_timed_out_after_notify_does_nothing() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S1, T1, &a, Write, 1);
        let (token, _) = h.wait(S1, T1, &a, 2);
        h.req(S2, T1, &a, Write, 3);
        assert_eq!(
            h.notify(S2, T1, &a, false),
            (1, vec![wait_done(S1, T1, &a, 2, WaitOutcome::Notified)])
        );
        // `timeout` checks that a stale timer changes nothing.
        assert_eq!(h.timeout(token), (false, vec![]));
        assert_eq!(h.rel(S2, T1, &a), vec![]);
        assert!(h.m.is_idle());
    }

    // ------------------------------------------------------------ dead sessions

    #[test]
    fn drop_session_frees_its_holds_for_the_next_in_queue() {
        let mut h = H::new();
        let (a, b) = (obj(1), LockKey::Named("b".into()));
        h.req(S1, T1, &a, Write, 1);
        h.req(S1, T1, &a, Write, 2);
        h.req(S1, T2, &b, Read, 3);
        h.req(S2, T1, &a, Write, 4);
        h.req(S3, T1, &b, Write, 5);
        assert_eq!(
            h.drop_session(S1),
            vec![
                granted(S2, T1, &a, Write, false, 4),
                granted(S3, T1, &b, Write, false, 5),
            ],
            "every lock of the session, whatever its count, in key order"
        );
        assert_eq!(h.m.holds(S1, &a), None);
        assert_eq!(h.m.holds(S1, &b), None);
        assert!(h.drop_session(S1).is_empty(), "dropping twice does nothing");
    }

    #[test]
    fn drop_session_removes_its_queued_requests_and_waiters() {
        let mut h = H::new();
        let a = obj(1);
        h.req(S2, T1, &a, Write, 1);
        let (token, _) = h.wait(S2, T1, &a, 2);
        h.req(S1, T1, &a, Write, 3);
        h.req(S2, T2, &a, Write, 4);
        h.req(S3, T1, &a, Write, 5);
        assert_eq!(h.drop_session(S2), vec![]);
        assert_eq!(
            h.notify(S1, T1, &a, true),
            (0, vec![]),
            "the dead waiter is gone"
        );
        assert_eq!(h.timeout(token), (false, vec![]));
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S3, T1, &a, Write, false, 5)],
            "the dead session's queued request was skipped"
        );
        h.rel(S3, T1, &a);
        assert!(h.m.is_idle());
    }

    #[test]
    fn drop_session_of_a_greedy_holder_grants_the_recalled_lock() {
        let mut h = H::new();
        let a = obj(1);
        h.greedy(S1, T1, &a, Write, 1);
        assert_eq!(h.req(S2, T1, &a, Write, 2), vec![recall(S1, &a)]);
        assert_eq!(
            h.drop_session(S1),
            vec![granted(S2, T1, &a, Write, false, 2)]
        );
    }

    // ------------------------------------------------------------ bounds, memory, stats

    #[test]
    fn pending_requests_and_waits_per_session_are_bounded() {
        let mut h = H::with_limit(2);
        let (a, b) = (obj(1), obj(2));
        h.req(S1, T1, &a, Write, 1);
        h.req(S2, T1, &a, Write, 2);
        h.req(S2, T2, &a, Write, 3);
        let too_many = h
            .try_req(S2, 13, &a, Read, false, 4)
            .expect_err("over the bound");
        assert_eq!(
            too_many,
            LockError::TooManyRequests {
                lock: a.clone(),
                session: S2,
                thread: 13,
                limit: 2,
            }
        );
        assert_eq!(
            h.req(S2, 13, &b, Write, 5),
            vec![granted(S2, 13, &b, Write, false, 5)],
            "an immediate grant queues nothing and is allowed"
        );
        assert!(matches!(
            h.try_wait(S2, 13, &b, 6),
            Err(LockError::TooManyRequests { limit: 2, .. })
        ));
        assert_eq!(
            h.req(S3, T1, &a, Write, 7),
            vec![],
            "the bound is per session"
        );
        assert_eq!(
            h.rel(S1, T1, &a),
            vec![granted(S2, T1, &a, Write, false, 2)]
        );
        assert!(h.try_wait(S2, 13, &b, 8).is_ok(), "room again");
    }

    #[test]
    fn idle_lock_entries_are_removed() {
        let mut h = H::new();
        let a = obj(1);
        for round in 0..3 {
            h.req(S1, T1, &a, Write, round);
            h.req(S2, T1, &LockKey::Named(format!("n{round}")), Read, round);
        }
        assert_eq!(h.m.stats().locks_live, 4);
        h.rel(S1, T1, &a);
        h.rel(S1, T1, &a);
        assert_eq!(h.m.stats().locks_live, 4);
        h.rel(S1, T1, &a);
        assert_eq!(h.m.stats().locks_live, 3);
        h.drop_session(S2);
        assert!(h.m.is_idle());
        assert_eq!(h.m.sessions.entries.len(), 0, "session index emptied too");
    }

    #[test]
    fn stats_count_contention_and_survive_entry_removal() {
        let mut h = H::new();
        let (a, b, c) = (obj(1), obj(2), obj(3));
        // a: two contended grants; b: one; c: none.
        h.greedy(S1, T1, &a, Write, 1);
        h.req(S2, T1, &a, Write, 2);
        h.req(S3, T1, &a, Write, 3);
        h.req(S1, T1, &b, Write, 4);
        h.req(S2, T2, &b, Read, 5);
        h.req(S1, T1, &c, Read, 6);
        h.req(S2, T2, &c, Read, 7);
        h.rel(S1, T1, &a);
        h.rel(S2, T1, &a);
        h.rel(S1, T1, &b);
        let stats = h.m.stats();
        assert_eq!(
            stats,
            LockStats {
                locks_live: 3,
                holders: 4,
                queued: 0,
                waiters: 0,
                acquisitions_total: 7,
                contended_total: 3,
                recalls_total: 1,
            }
        );
        let counters = |acquisitions, contended, recalls| LockCounters {
            acquisitions,
            contended,
            recalls,
        };
        assert_eq!(
            h.m.hottest(10),
            vec![
                (a.clone(), counters(3, 2, 1)),
                (b.clone(), counters(2, 1, 0))
            ],
            "most contended first; never-contended c left out"
        );
        assert_eq!(h.m.hottest(1), vec![(a.clone(), counters(3, 2, 1))]);
        assert_eq!(h.m.hottest(0), vec![]);
        for (session, thread, lock) in [(S3, T1, &a), (S2, T2, &b), (S1, T1, &c), (S2, T2, &c)] {
            h.rel(session, thread, lock);
        }
        let stats = h.m.stats();
        assert_eq!((stats.locks_live, stats.holders), (0, 0));
        assert_eq!(
            (
                stats.acquisitions_total,
                stats.contended_total,
                stats.recalls_total
            ),
            (7, 3, 1),
            "totals are cumulative"
        );
        assert_eq!(
            h.m.hottest(10),
            vec![],
            "per-lock counters go with the entry"
        );
    }

    #[test]
    fn errors_and_keys_name_the_lock_session_and_thread() {
        assert_eq!(obj(42).to_string(), "object 42");
        assert_eq!(LockKey::Named("x".into()).to_string(), "named \"x\"");
        let message = LockError::NotHeld {
            lock: obj(42),
            session: 7,
            thread: 9,
        }
        .to_string();
        assert_eq!(
            message,
            "session 7 thread 9 does not hold object 42 (release needs a hold, wait and notify a write hold)"
        );
        let message = LockError::TooManyRequests {
            lock: LockKey::Named("q".into()),
            session: 7,
            thread: 9,
            limit: 3,
        }
        .to_string();
        for part in ["named \"q\"", "session 7", "thread 9", "3"] {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }

    // ------------------------------------------------------------ model-based

    const SLOTS: usize = 3;
    const LIMIT: usize = 3;

    fn key_of(index: usize) -> LockKey {
        if index == 0 {
            obj(1)
        } else {
            LockKey::Named("n".into())
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Request {
            slot: usize,
            thread: ThreadId,
            lock: usize,
            write: bool,
            greedy: bool,
        },
        Release {
            slot: usize,
            thread: ThreadId,
            lock: usize,
        },
        Wait {
            slot: usize,
            thread: ThreadId,
            lock: usize,
        },
        Notify {
            slot: usize,
            thread: ThreadId,
            lock: usize,
            all: bool,
        },
        TimeOut {
            pick: usize,
        },
        /// Release, wait (`action` 1) or notify (2: one, 3: all) by a
        /// current holder, picked by `pick`: random ops rarely hit one.
        ByHolder {
            pick: usize,
            action: u8,
        },
        Drop {
            slot: usize,
        },
        /// A thread whose wait ended (picked by `pick`) asks for the lock
        /// again, in Write mode, as its client does after `WaitDone`.
        Reacquire {
            pick: usize,
            greedy: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = || (0..SLOTS, 1..3u64, 0..2usize);
        prop_oneof![
            6 => (who(), any::<bool>(), prop::bool::weighted(0.25)).prop_map(|((slot, thread, lock), write, greedy)| {
                Op::Request { slot, thread, lock, write, greedy }
            }),
            5 => who().prop_map(|(slot, thread, lock)| Op::Release { slot, thread, lock }),
            2 => who().prop_map(|(slot, thread, lock)| Op::Wait { slot, thread, lock }),
            2 => (who(), any::<bool>()).prop_map(|((slot, thread, lock), all)| {
                Op::Notify { slot, thread, lock, all }
            }),
            2 => any::<usize>().prop_map(|pick| Op::TimeOut { pick }),
            4 => (any::<usize>(), 0..4u8).prop_map(|(pick, action)| Op::ByHolder { pick, action }),
            1 => (0..SLOTS).prop_map(|slot| Op::Drop { slot }),
            3 => (any::<usize>(), prop::bool::weighted(0.25)).prop_map(|(pick, greedy)| Op::Reacquire { pick, greedy }),
        ]
    }

    /// The model: what the callers were promised. Every accepted request is
    /// outstanding until exactly one `Granted` answers it, every accepted
    /// wait until exactly one `WaitDone` does (emitted by the notify or
    /// timeout that ends it, in wait-set order), or its session dies.
    #[derive(Default)]
    struct Sim {
        m: LockManager,
        generation: [u64; SLOTS],
        request_next: RequestId,
        outstanding: BTreeMap<RequestId, (SessionId, ThreadId, LockKey)>,
        answered: HashSet<RequestId>,
        /// The request ids of accepted waits (answered or not).
        waits: HashSet<RequestId>,
        /// Per lock, the wait set in order.
        wait_sets: BTreeMap<LockKey, VecDeque<RequestId>>,
        /// (session, thread, lock index) whose wait ended and which have
        /// not asked for the lock again yet.
        woken: Vec<(SessionId, ThreadId, usize)>,
        timers: Vec<(WaiterToken, RequestId, LockKey)>,
        /// (session, lock) recalled for the current greedy grant.
        recalled: HashSet<(SessionId, LockKey)>,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                m: LockManager::new(LockManagerConfig {
                    max_pending_per_session: LIMIT,
                }),
                ..Self::default()
            }
        }

        fn session(&self, slot: usize) -> SessionId {
            slot as u64 + 1 + 100 * self.generation[slot]
        }

        fn pending_of(&self, session: SessionId) -> usize {
            self.outstanding
                .values()
                .filter(|(s, _, _)| *s == session)
                .count()
        }

        fn slot_of(&self, session: SessionId) -> Option<usize> {
            (0..SLOTS).find(|&slot| self.session(slot) == session)
        }

        /// The `WaitDone`s that end the waits `requests`, in order, and
        /// notes their threads for `Op::Reacquire`.
        fn wait_dones(&mut self, requests: &[RequestId], outcome: WaitOutcome) -> Vec<Effect> {
            let mut effects = Vec::new();
            for request in requests {
                let (session, thread, lock) = self.outstanding[request].clone();
                let index = (0..2).find(|&i| key_of(i) == lock).expect("a model key");
                self.woken.push((session, thread, index));
                effects.push(Effect::WaitDone {
                    session,
                    thread,
                    lock,
                    request: *request,
                    outcome,
                });
            }
            effects
        }

        fn has_pending(&self, session: SessionId, thread: ThreadId, lock: &LockKey) -> bool {
            self.outstanding
                .values()
                .any(|(s, t, l)| *s == session && *t == thread && l == lock)
        }

        fn answer(
            &mut self,
            request: RequestId,
            session: SessionId,
            thread: ThreadId,
            lock: &LockKey,
        ) {
            let promised = self
                .outstanding
                .remove(&request)
                .expect("answer to nothing outstanding");
            assert_eq!(
                promised,
                (session, thread, lock.clone()),
                "request {request}"
            );
            assert!(
                self.answered.insert(request),
                "request {request} answered twice"
            );
        }

        /// Checks the effects of one call; returns its recalls.
        fn absorb(&mut self, effects: Vec<Effect>) -> Vec<(SessionId, LockKey)> {
            let mut recalls = Vec::new();
            for effect in effects {
                match effect {
                    Effect::Granted {
                        session,
                        thread,
                        lock,
                        greedy,
                        request,
                        ..
                    } => {
                        assert!(!self.waits.contains(&request), "Granted for a wait");
                        self.answer(request, session, thread, &lock);
                        if greedy {
                            self.recalled.remove(&(session, lock));
                        }
                    }
                    Effect::WaitDone {
                        session,
                        thread,
                        lock,
                        request,
                        ..
                    } => {
                        assert!(self.waits.contains(&request), "WaitDone for a request");
                        self.answer(request, session, thread, &lock);
                        let holds = self.m.locks.get(&lock).is_some_and(|state| {
                            state
                                .holders
                                .contains_key(&Owner::new(session, thread, false))
                        });
                        assert!(!holds, "request {request}: a woken waiter holds");
                    }
                    Effect::Recall { session, lock } => {
                        let first = self.recalled.insert((session, lock.clone()));
                        assert!(first, "second Recall of {lock} to session {session}");
                        recalls.push((session, lock));
                    }
                }
            }
            recalls
        }

        fn step(&mut self, op: &Op) {
            if let Op::ByHolder { pick, action } = *op {
                let mut holders = Vec::new();
                for lock in 0..2 {
                    let Some(state) = self.m.locks.get(&key_of(lock)) else {
                        continue;
                    };
                    for owner in state.holders.keys() {
                        let slot = self.slot_of(owner.session);
                        let thread = owner.thread.unwrap_or(1 + (pick / 7 % 2) as u64);
                        holders.push((slot.expect("a live session"), thread, lock));
                    }
                }
                if holders.is_empty() {
                    return self.check(&[]);
                }
                let (slot, thread, lock) = holders[pick % holders.len()];
                let op = match action {
                    0 => Op::Release { slot, thread, lock },
                    1 => Op::Wait { slot, thread, lock },
                    _ => Op::Notify {
                        slot,
                        thread,
                        lock,
                        all: action == 3,
                    },
                };
                return self.step(&op);
            }
            if let Op::Reacquire { pick, greedy } = *op {
                if self.woken.is_empty() {
                    return self.check(&[]);
                }
                let (session, thread, lock) = self.woken.swap_remove(pick % self.woken.len());
                let slot = self
                    .slot_of(session)
                    .expect("woken threads of live sessions");
                return self.step(&Op::Request {
                    slot,
                    thread,
                    lock,
                    write: true,
                    greedy,
                });
            }
            let before = snapshot(&self.m);
            let mut expected_wait_dones = Vec::new();
            let mut fx = Vec::new();
            let refused = match *op {
                Op::Request {
                    slot,
                    thread,
                    lock,
                    write,
                    greedy,
                } => {
                    let (session, key) = (self.session(slot), key_of(lock));
                    let mode = if write { Write } else { Read };
                    let request = self.request_next;
                    self.request_next += 1;
                    let already = self.has_pending(session, thread, &key);
                    let pending = self.pending_of(session);
                    let held = self.m.holds(session, &key);
                    let result = self.m.request(
                        session,
                        thread,
                        key.clone(),
                        mode,
                        greedy,
                        request,
                        &mut fx,
                    );
                    match result {
                        Ok(()) => {
                            assert!(!already);
                            self.outstanding.insert(request, (session, thread, key));
                        }
                        Err(LockError::AlreadyRequested { .. }) => assert!(already),
                        Err(LockError::UpgradeNotSupported { .. }) => {
                            assert!(!already);
                            assert_eq!((held, mode), (Some(Read), Write));
                        }
                        Err(LockError::TooManyRequests { limit, .. }) => {
                            assert!(!already);
                            assert_eq!((pending, limit), (LIMIT, LIMIT));
                        }
                        Err(error) => panic!("request refused: {error}"),
                    }
                    result.err()
                }
                Op::Release { slot, thread, lock } => {
                    let (session, key) = (self.session(slot), key_of(lock));
                    let held = self.m.holds(session, &key);
                    let result = self.m.release(session, thread, key, &mut fx);
                    if result.is_ok() {
                        assert!(held.is_some(), "released a lock the session did not hold");
                    }
                    result.err()
                }
                Op::Wait { slot, thread, lock } => {
                    let (session, key) = (self.session(slot), key_of(lock));
                    let request = self.request_next;
                    self.request_next += 1;
                    let already = self.has_pending(session, thread, &key);
                    let pending = self.pending_of(session);
                    let held = self.m.holds(session, &key);
                    match self.m.wait(session, thread, key.clone(), request, &mut fx) {
                        Ok(token) => {
                            assert_eq!(held, Some(Write));
                            assert!(!already && pending < LIMIT);
                            // The waiter gave its hold up; its session may
                            // hold again only through a new greedy grant to
                            // another of its threads that was queued before.
                            let holder = self
                                .m
                                .locks
                                .get(&key)
                                .and_then(|state| state.holder_of(session, thread));
                            let regranted = fx.iter().any(|effect| match effect {
                                Effect::Granted {
                                    session: s,
                                    thread: t,
                                    ..
                                } => *s == session && *t != thread,
                                Effect::Recall { .. } | Effect::WaitDone { .. } => false,
                            });
                            let greedy = holder.is_some_and(|owner| owner.is_greedy());
                            assert!(
                                holder.is_none() || (greedy && regranted),
                                "the waiter still holds"
                            );
                            self.outstanding
                                .insert(request, (session, thread, key.clone()));
                            self.waits.insert(request);
                            self.wait_sets
                                .entry(key.clone())
                                .or_default()
                                .push_back(request);
                            self.timers.push((token, request, key));
                            None
                        }
                        Err(error) => {
                            match error {
                                LockError::NotHeld { .. } => {}
                                LockError::AlreadyRequested { .. } => assert!(already),
                                LockError::TooManyRequests { .. } => assert_eq!(pending, LIMIT),
                                LockError::UpgradeNotSupported { .. } => panic!("{error}"),
                            }
                            Some(error)
                        }
                    }
                }
                Op::Notify {
                    slot,
                    thread,
                    lock,
                    all,
                } => {
                    let (session, key) = (self.session(slot), key_of(lock));
                    match self.m.notify(session, thread, key.clone(), all, &mut fx) {
                        Ok(woken) => {
                            let set = self.wait_sets.entry(key).or_default();
                            let expected = if all { set.len() } else { set.len().min(1) };
                            assert_eq!(woken, expected);
                            let requests: Vec<RequestId> = set.drain(..woken).collect();
                            expected_wait_dones = self.wait_dones(&requests, WaitOutcome::Notified);
                            None
                        }
                        Err(error) => {
                            assert!(matches!(error, LockError::NotHeld { .. }), "{error}");
                            Some(error)
                        }
                    }
                }
                Op::TimeOut { pick } => {
                    if !self.timers.is_empty() {
                        let (token, request, key) = self.timers[pick % self.timers.len()].clone();
                        let set = self.wait_sets.entry(key).or_default();
                        let position = set.iter().position(|r| *r == request);
                        let fired = self.m.wait_timed_out(token, &mut fx);
                        assert_eq!(fired, position.is_some(), "request {request}");
                        if let Some(position) = position {
                            set.remove(position);
                            expected_wait_dones =
                                self.wait_dones(&[request], WaitOutcome::TimedOut);
                        } else {
                            assert_eq!(snapshot(&self.m), before);
                        }
                    }
                    None
                }
                Op::ByHolder { .. } | Op::Reacquire { .. } => unreachable!("translated above"),
                Op::Drop { slot } => {
                    let session = self.session(slot);
                    let gone: Vec<RequestId> = self
                        .outstanding
                        .iter()
                        .filter(|(_, (s, _, _))| *s == session)
                        .map(|(r, _)| *r)
                        .collect();
                    for request in &gone {
                        self.outstanding.remove(request);
                    }
                    self.woken.retain(|(s, _, _)| *s != session);
                    for set in self.wait_sets.values_mut() {
                        set.retain(|r| !gone.contains(r));
                    }
                    self.recalled.retain(|(s, _)| *s != session);
                    self.m.drop_session(session, &mut fx);
                    for index in 0..2 {
                        assert_eq!(self.m.holds(session, &key_of(index)), None);
                    }
                    self.generation[slot] += 1;
                    None
                }
            };
            if let Some(error) = refused {
                assert!(fx.is_empty(), "{error}: effects {fx:?}");
                assert_eq!(snapshot(&self.m), before, "{error}: state changed");
            }
            // Waits end only by notify and timeout, each answered at once,
            // in wait-set order, and those calls emit nothing else.
            let wait_dones: Vec<&Effect> = fx
                .iter()
                .filter(|effect| matches!(effect, Effect::WaitDone { .. }))
                .collect();
            if matches!(op, Op::Notify { .. } | Op::TimeOut { .. }) {
                assert_eq!(fx, expected_wait_dones, "{op:?}");
            } else {
                assert!(wait_dones.is_empty(), "{op:?}: {wait_dones:?}");
            }
            let recalls = self.absorb(fx);
            self.check(&recalls);
        }

        fn check(&mut self, recalls: &[(SessionId, LockKey)]) {
            check_invariants(&self.m);
            // No lost request: the outstanding ones are exactly those queued
            // or waiting, and none of them was also answered.
            let mut in_manager = BTreeMap::new();
            for (key, state) in &self.m.locks {
                let queued = state.queue.iter().map(|q| (q.request, q.session, q.thread));
                let waiting = state
                    .waiters
                    .values()
                    .map(|w| (w.request, w.session, w.thread));
                for (request, session, thread) in queued.chain(waiting) {
                    assert!(
                        !self.answered.contains(&request),
                        "request {request} answered and pending"
                    );
                    let twice = in_manager.insert(request, (session, thread, key.clone()));
                    assert!(twice.is_none(), "request {request} pending twice");
                }
                let waiting: Vec<RequestId> = state.waiters.values().map(|w| w.request).collect();
                let model: Vec<RequestId> = self
                    .wait_sets
                    .get(key)
                    .map(|set| set.iter().copied().collect())
                    .unwrap_or_default();
                assert_eq!(waiting, model, "{key}: wait set order");
            }
            assert_eq!(in_manager, self.outstanding, "outstanding requests");
            for set in self.wait_sets.values() {
                for request in set {
                    assert!(self.outstanding.contains_key(request));
                }
            }
            // Exclusive writer, across sessions.
            for index in 0..2 {
                let key = key_of(index);
                let modes: Vec<LockMode> = (0..SLOTS)
                    .filter_map(|slot| self.m.holds(self.session(slot), &key))
                    .collect();
                if modes.contains(&Write) {
                    assert_eq!(modes.len(), 1, "{key}: a writer shares the lock");
                }
            }
            // A recall goes to a greedy holder that blocks someone.
            let holds_greedily = |m: &LockManager, session: SessionId, key: &LockKey| {
                m.locks.get(key).is_some_and(|state| {
                    state.holders.contains_key(&Owner {
                        session,
                        thread: None,
                    })
                })
            };
            for (session, key) in recalls {
                assert!(
                    holds_greedily(&self.m, *session, key),
                    "recall to a non-holder"
                );
                assert!(
                    !self.m.locks[key].queue.is_empty(),
                    "recall with nobody waiting"
                );
            }
            let m = &self.m;
            self.recalled
                .retain(|(session, key)| holds_greedily(m, *session, key));
        }

        fn finish(&mut self) {
            for slot in 0..SLOTS {
                let session = self.session(slot);
                self.step(&Op::Drop { slot });
                assert_eq!(self.pending_of(session), 0);
            }
            assert!(self.m.is_idle(), "state left after every session died");
            assert!(self.outstanding.is_empty());
            assert!(self.woken.is_empty(), "woken threads of dead sessions");
            let stats = self.m.stats();
            assert_eq!((stats.holders, stats.queued, stats.waiters), (0, 0, 0));
        }
    }

    fn cases() -> u32 {
        std::env::var("TC_PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512)
    }

    proptest! {
        // Replay a failure with PROPTEST_RNG_SEED; the shrunk ops are printed.
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_operations_keep_every_promise(ops in prop::collection::vec(op(), 1..200)) {
            let mut sim = Sim::new();
            for op in &ops {
                sim.step(op);
            }
            sim.finish();
        }
    }

    #[test]
    fn sim_catches_a_lost_request() {
        // The model must be able to fail: forget a queued request behind
        // the manager's back and the next check notices.
        let mut sim = Sim::new();
        sim.step(&Op::Request {
            slot: 0,
            thread: 1,
            lock: 0,
            write: true,
            greedy: false,
        });
        sim.step(&Op::Request {
            slot: 1,
            thread: 1,
            lock: 0,
            write: true,
            greedy: false,
        });
        let state = sim.m.locks.get_mut(&key_of(0)).expect("live");
        let queued = state.queue.pop_front().expect("queued");
        state.pending.remove(&(queued.session, queued.thread));
        let entry = sim
            .m
            .sessions
            .entries
            .get_mut(&queued.session)
            .expect("indexed");
        entry.pending_count -= 1;
        entry.refs.clear();
        sim.m.sessions.entries.remove(&queued.session);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.check(&[])));
        let payload = caught.expect_err("a lost request went unnoticed");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("outstanding requests"), "{message}");
    }
}
