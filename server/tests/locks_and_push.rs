//! Sessions over real TCP against a `tc-server` child process: coherence
//! and change push, wait/notify, read/write locks, reentrancy, fairness and
//! greedy recall.

mod common;

use std::time::Duration;

use common::*;
use tc_client::{Client, LockKey, LockMode};
use tc_model::dna::{Dna, LockRef, Transaction};
use tc_model::{ClassId, ObjectId, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_under_a_lock_is_pushed_to_holders_and_seen_after_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.client(1).await;
    let b = server.client(2).await;
    let (_, id) = create_counter(&a, "counter").await;
    assert_eq!(b.root("counter").await.unwrap(), Some(id));
    // B holds the object: A's change is pushed to it.
    assert_eq!(value_of(&b, id).await, 0);
    let key = LockKey::Object(id.0);
    a.lock(&key, 1, LockMode::Write).await.unwrap();
    let lsn = a
        .unlock(&key, 1, set_value(&a, id, 42, LockRef::Object(id)))
        .await
        .unwrap();
    assert!(lsn > 0);
    eventually("the push to reach B", || b.pushes_applied() >= 1).await;
    assert_eq!(value_of(&b, id).await, 42);
    // A reads its own change (and from now on holds a copy).
    assert_eq!(value_of(&a, id).await, 42);
    // B takes the lock (A's greedy hold is recalled) and sees the value.
    b.lock(&key, 7, LockMode::Write).await.unwrap();
    assert_eq!(value_of(&b, id).await, 42);
    b.unlock(&key, 7, set_value(&b, id, 43, LockRef::Object(id)))
        .await
        .unwrap();
    // A still holds the object, so B's change reaches A.
    eventually("the push to reach A", || a.pushes_applied() >= 1).await;
    assert_eq!(value_of(&a, id).await, 43);
    // A client that never held the object faults the latest version in.
    let c = server.client(3).await;
    assert_eq!(value_of(&c, id).await, 43);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_objects_are_no_longer_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.client(1).await;
    let b = server.client(2).await;
    let (_, id) = create_counter(&a, "counter").await;
    assert_eq!(value_of(&b, id).await, 0);
    b.drop_objects(&[id]).await.unwrap();
    a.commit(set_value(&a, id, 5, LockRef::None)).await.unwrap();
    // A later push to an object B holds proves the stream moved past it.
    let (_, other) = create_counter(&a, "other").await;
    assert_eq!(value_of(&b, other).await, 0);
    a.commit(set_value(&a, other, 9, LockRef::None))
        .await
        .unwrap();
    eventually("the push of the held object", || b.pushes_applied() >= 1).await;
    assert_eq!(b.pushes_applied(), 1, "the dropped object was pushed too");
    assert_eq!(value_of(&b, id).await, 5, "a re-fetch returns the latest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_notify_work_across_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.client(1).await;
    let b = server.client(2).await;
    let c = server.client(3).await;
    let key = LockKey::Named("queue".into());
    // Two waiters in two sessions.
    let mut waiters = Vec::new();
    for (client, thread) in [(a.clone(), 1), (b.clone(), 2)] {
        let key = key.clone();
        client.lock(&key, thread, LockMode::Write).await.unwrap();
        waiters.push(tokio::spawn(async move {
            let notified = client.wait(&key, thread, None, Vec::new()).await.unwrap();
            // The waiter holds the lock again when wait returns.
            client.unlock(&key, thread, Vec::new()).await.unwrap();
            notified
        }));
    }
    // notify wakes one waiter, notifyAll the rest.
    let mut woken = 0;
    let deadline = std::time::Instant::now() + DEADLINE;
    while woken == 0 {
        assert!(std::time::Instant::now() < deadline, "no waiter registered");
        c.lock(&key, 9, LockMode::Write).await.unwrap();
        woken = c.notify(&key, 9, false).await.unwrap();
        c.unlock(&key, 9, Vec::new()).await.unwrap();
    }
    assert_eq!(woken, 1);
    let mut all = 0;
    while all == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "second waiter never registered"
        );
        c.lock(&key, 9, LockMode::Write).await.unwrap();
        all = c.notify(&key, 9, true).await.unwrap();
        c.unlock(&key, 9, Vec::new()).await.unwrap();
    }
    assert_eq!(all, 1);
    for waiter in waiters {
        assert!(
            tokio::time::timeout(DEADLINE, waiter)
                .await
                .unwrap()
                .unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_wait_expires_and_reacquires_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.client(1).await;
    let b = server.plain_client(2).await;
    let key = LockKey::Named("timed".into());
    a.lock(&key, 1, LockMode::Write).await.unwrap();
    let started = std::time::Instant::now();
    let notified = a
        .wait(&key, 1, Some(Duration::from_millis(200)), Vec::new())
        .await
        .unwrap();
    assert!(!notified);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A holds the lock again: B must wait until A releases.
    let blocked = b.lock(&key, 1, LockMode::Write);
    tokio::pin!(blocked);
    assert!(stays_pending(&mut blocked).await);
    a.unlock(&key, 1, Vec::new()).await.unwrap();
    tokio::time::timeout(DEADLINE, blocked)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_locks_are_shared_and_write_locks_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.plain_client(1).await;
    let b = server.plain_client(2).await;
    let c = server.plain_client(3).await;
    let key = LockKey::Named("rw".into());
    a.lock(&key, 1, LockMode::Read).await.unwrap();
    tokio::time::timeout(DEADLINE, b.lock(&key, 1, LockMode::Read))
        .await
        .unwrap()
        .unwrap();
    let writer = c.lock(&key, 1, LockMode::Write);
    tokio::pin!(writer);
    assert!(stays_pending(&mut writer).await);
    a.unlock(&key, 1, Vec::new()).await.unwrap();
    assert!(
        stays_pending(&mut writer).await,
        "granted while B still reads"
    );
    b.unlock(&key, 1, Vec::new()).await.unwrap();
    tokio::time::timeout(DEADLINE, &mut writer)
        .await
        .unwrap()
        .unwrap();
    // Now readers wait for the writer.
    let reader = a.lock(&key, 1, LockMode::Read);
    tokio::pin!(reader);
    assert!(stays_pending(&mut reader).await);
    c.unlock(&key, 1, Vec::new()).await.unwrap();
    tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_reentrant_per_thread() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.plain_client(1).await;
    let b = server.plain_client(2).await;
    let key = LockKey::Object(77);
    a.lock(&key, 1, LockMode::Write).await.unwrap();
    a.lock(&key, 1, LockMode::Write).await.unwrap();
    let other = b.lock(&key, 1, LockMode::Write);
    tokio::pin!(other);
    a.unlock(&key, 1, Vec::new()).await.unwrap();
    assert!(
        stays_pending(&mut other).await,
        "granted after one of two unlocks"
    );
    a.unlock(&key, 1, Vec::new()).await.unwrap();
    tokio::time::timeout(DEADLINE, other)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_sessions_get_the_lock_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let holder = server.plain_client(100).await;
    let key = LockKey::Named("fifo".into());
    holder.lock(&key, 1, LockMode::Write).await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for n in 0..4u64 {
        let client = server.plain_client(n + 1).await;
        let (key, order) = (key.clone(), order.clone());
        let task = tokio::spawn(async move {
            client.lock(&key, 1, LockMode::Write).await.unwrap();
            order.lock().unwrap().push(n);
            client.unlock(&key, 1, Vec::new()).await.unwrap();
        });
        // Each request reaches the server's queue before the next is sent.
        eventually_queued(&server, n + 1).await;
        tasks.push(task);
    }
    holder.unlock(&key, 1, Vec::new()).await.unwrap();
    for task in tasks {
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

/// Waits until the server reports `n` queued lock requests.
async fn eventually_queued(server: &TestServer, n: u64) {
    let mut health = tc_protocol::tc_client::TcClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let reply = health
            .health(tc_protocol::HealthRequest {})
            .await
            .unwrap()
            .into_inner();
        if reply.queued_lock_requests >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "request {n} never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greedy_lock_stays_with_its_session_until_recalled() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.client(1).await;
    let b = server.client(2).await;
    let key = LockKey::Named("greedy".into());
    for _ in 0..3 {
        a.lock(&key, 1, LockMode::Write).await.unwrap();
        a.unlock(&key, 1, Vec::new()).await.unwrap();
    }
    assert_eq!(a.holds_at_server(&key), Some((LockMode::Write, true)));
    // While A's thread holds it, B's request recalls it; B gets it after A
    // unlocks.
    a.lock(&key, 1, LockMode::Write).await.unwrap();
    let b_lock = b.lock(&key, 1, LockMode::Write);
    tokio::pin!(b_lock);
    assert!(stays_pending(&mut b_lock).await);
    a.unlock(&key, 1, Vec::new()).await.unwrap();
    tokio::time::timeout(DEADLINE, &mut b_lock)
        .await
        .unwrap()
        .unwrap();
    eventually("A to give the lock up", || {
        a.holds_at_server(&key).is_none()
    })
    .await;
    b.unlock(&key, 1, Vec::new()).await.unwrap();
    // A asks again: B's greedy hold is recalled at once (no local holder).
    tokio::time::timeout(DEADLINE, a.lock(&key, 1, LockMode::Write))
        .await
        .unwrap()
        .unwrap();
    a.unlock(&key, 1, Vec::new()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_of_one_client_take_turns_on_a_greedy_lock() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let a = server.client(1).await;
    let (_, id) = create_counter(&a, "counter").await;
    let key = LockKey::Object(id.0);
    let mut tasks = Vec::new();
    for thread in 0..4u64 {
        let a = a.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                a.lock(&key, thread, LockMode::Write).await.unwrap();
                let value = value_of(&a, id).await;
                a.unlock(
                    &key,
                    thread,
                    set_value(&a, id, value + 1, LockRef::Object(id)),
                )
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let b = server.client(2).await;
    assert_eq!(value_of(&b, id).await, 100, "increments were lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_and_notify_between_threads_of_one_client_greedy_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    for client in [server.client(1).await, server.plain_client(2).await] {
        let key = LockKey::Named(format!("local {}", client.client_id()));
        client.lock(&key, 1, LockMode::Write).await.unwrap();
        let waiter = {
            let (client, key) = (client.clone(), key.clone());
            tokio::spawn(async move {
                let notified = client.wait(&key, 1, None, Vec::new()).await.unwrap();
                client.unlock(&key, 1, Vec::new()).await.unwrap();
                notified
            })
        };
        // Thread 2 of the same client notifies once the wait is registered.
        notify_one_once_waiting(&client, &key, 2).await;
        assert!(
            tokio::time::timeout(DEADLINE, waiter)
                .await
                .unwrap()
                .unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_counter_loses_no_increment_across_sessions_and_threads() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let setup = server.client(100).await;
    let (_, id) = create_counter(&setup, "shared").await;
    let key = LockKey::Object(id.0);
    let mut tasks = Vec::new();
    for session in 0..3u64 {
        // Greedy sessions pass the lock between their threads without
        // waiting for each commit, and give it back when recalled.
        let client = server.client(session + 1).await;
        for thread in 0..4u64 {
            let (client, key) = (client.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    client.lock(&key, thread, LockMode::Write).await.unwrap();
                    let value = value_of(&client, id).await;
                    let tx = set_value(&client, id, value + 1, LockRef::Object(id));
                    client.unlock(&key, thread, tx).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }
    let reader = server.client(200).await;
    assert_eq!(
        value_of(&reader, id).await,
        3 * 4 * 20,
        "increments were lost"
    );
}

/// Locking many objects once each (one monitor per object, as a JVM does)
/// must not grow the client: a released lock leaves no local state. A
/// greedy hold is state until the server recalls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lock_leaves_no_state_in_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let plain = server.plain_client(1).await;
    let greedy = server.client(2).await;
    for n in 0..200 {
        let key = LockKey::Named(format!("plain-{n}"));
        plain.lock(&key, 1, LockMode::Write).await.unwrap();
        plain.unlock(&key, 1, Vec::new()).await.unwrap();
    }
    assert_eq!(plain.locks_with_state(), 0);
    let greedy_keys: Vec<_> = (0..50)
        .map(|n| LockKey::Named(format!("greedy-{n}")))
        .collect();
    for key in &greedy_keys {
        greedy.lock(key, 1, LockMode::Write).await.unwrap();
        greedy.unlock(key, 1, Vec::new()).await.unwrap();
    }
    assert_eq!(greedy.locks_with_state(), greedy_keys.len());
    for key in &greedy_keys {
        tokio::time::timeout(DEADLINE, plain.lock(key, 1, LockMode::Write))
            .await
            .unwrap()
            .unwrap();
        plain.unlock(key, 1, Vec::new()).await.unwrap();
    }
    eventually("recalled holds to leave no state", || {
        greedy.locks_with_state() == 0
    })
    .await;
    assert_eq!(plain.locks_with_state(), 0);
    assert_eq!(greedy.holds_at_server(&greedy_keys[0]), None);
}

/// Objects evicted from the server's cache are read back from the data
/// segments when a client faults them in (on a blocking thread, not on the
/// session's); they arrive whole, and later changes to them are pushed to
/// that client like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_faulted_in_from_disk_arrive_whole_and_get_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tc.toml");
    std::fs::write(&config, "cache_bytes = 1048576\n").unwrap();
    let config = config.to_str().unwrap();
    let server = TestServer::start(
        &dir.path().join("data"),
        &["--config", config, "--metrics-listen", "127.0.0.1:0"],
    );
    let a = server.client(1).await;
    let class = a.register_class(&counter_class()).await.unwrap();
    // Each generation is ~1.8 MB in the cache. The second, committed after
    // a checkpoint made the first clean, evicts most of the first.
    let first = create_counters(&a, class, 5000).await;
    let mut admin = tc_protocol::tc_client::TcClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    admin
        .checkpoint(tc_protocol::CheckpointRequest {})
        .await
        .unwrap();
    create_counters(&a, class, 5000).await;
    let misses = || async { value(&server.metrics_text().await, "tc_cache_misses_total") };
    let misses_before = misses().await;

    let b = server.client(2).await;
    for chunk in first.chunks(1000) {
        b.fetch(chunk).await.unwrap();
    }
    let read_from_disk = misses().await - misses_before;
    assert!(
        read_from_disk >= 1000.0,
        "only {read_from_disk} of 5000 fetches missed the cache"
    );
    for (n, &id) in first.iter().enumerate() {
        let cached = b.object(id).await.unwrap().expect("fetched");
        assert_eq!(cached.object.field(0), Some(&Value::Long(n as i64)), "{id}");
        assert_eq!(
            cached.object.field(1),
            Some(&Value::String(note(n))),
            "{id}"
        );
    }

    let id = first[4321];
    let key = LockKey::Object(id.0);
    a.lock(&key, 1, LockMode::Write).await.unwrap();
    a.unlock(&key, 1, set_value(&a, id, -1, LockRef::Object(id)))
        .await
        .unwrap();
    eventually("the push to reach B", || b.pushes_applied() >= 1).await;
    assert_eq!(value_of(&b, id).await, -1);
}

fn note(n: usize) -> String {
    format!("{n:0>200}")
}

/// Creates `count` counters, the n-th with value n and note `note(n)`.
async fn create_counters(client: &Client, class: ClassId, count: usize) -> Vec<ObjectId> {
    let ids: Vec<ObjectId> = client
        .allocate_ids(count as u64)
        .await
        .unwrap()
        .map(ObjectId)
        .collect();
    for (chunk_index, chunk) in ids.chunks(1000).enumerate() {
        let dnas = chunk.iter().enumerate().map(|(i, &id)| {
            let n = chunk_index * 1000 + i;
            Dna::new_object(id, class)
                .field(0, Value::Long(n as i64))
                .field(1, Value::String(note(n)))
        });
        let tx = Transaction {
            client: client.client_id(),
            seq: client.next_seq(),
            lock: LockRef::None,
            roots: vec![],
            dnas: dnas.collect(),
        };
        client.commit(tx.encode()).await.unwrap();
    }
    ids
}

/// A session that wrote an object but never fetched it is pushed the
/// object's next change once; its client then tells the server to drop
/// the object, and no more of its changes go there, until the client
/// fetches it and holds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_drops_an_object_it_is_pushed_but_does_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let a = server.client(1).await;
    let b = server.client(2).await;
    // A creates the counter (so the server has A hold it) but never reads it.
    let (_, id) = create_counter(&a, "counter").await;
    let metrics = || async {
        let text = server.metrics_text().await;
        (
            value(&text, "tc_pushes_total"),
            value(&text, "tc_object_holdings"),
        )
    };
    let settles_at = |wanted: (f64, f64)| async move {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let now = metrics().await;
            if now == wanted {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "(pushes, holdings) stayed {now:?}, expected {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    b.commit(set_value(&b, id, 1, LockRef::None)).await.unwrap();
    // Pushed to A once; A drops it, so only B (which wrote it) holds it.
    settles_at((1.0, 1.0)).await;
    for v in 2..=6 {
        b.commit(set_value(&b, id, v, LockRef::None)).await.unwrap();
    }
    assert_eq!(metrics().await, (1.0, 1.0), "no more pushes to A");

    // A reads the counter: it holds it again and gets B's changes.
    assert_eq!(value_of(&a, id).await, 6);
    b.commit(set_value(&b, id, 7, LockRef::None)).await.unwrap();
    eventually("the push to reach A", || a.pushes_applied() >= 1).await;
    assert_eq!(value_of(&a, id).await, 7);
    assert_eq!(metrics().await, (2.0, 2.0));
}
