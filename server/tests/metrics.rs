//! The Prometheus endpoint reports what the server did.

mod common;

use common::*;
use std::time::Duration;

use tc_client::{LockKey, LockMode};
use tc_model::dna::LockRef;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_commits_sessions_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let client = server.client(1).await;
    let (_, id) = create_counter(&client, "counter").await;
    for value in 1..=10 {
        client
            .commit(set_value(&client, id, value, LockRef::None))
            .await
            .unwrap();
    }
    let text = server.metrics_text().await;
    assert_eq!(value(&text, "tc_commits_total"), 11.0, "{text}");
    assert_eq!(value(&text, "tc_sessions"), 1.0);
    assert_eq!(value(&text, "tc_store_failed"), 0.0);
    assert_eq!(value(&text, "tc_commit_latency_seconds_count"), 11.0);
    assert!(value(&text, "tc_wal_fsyncs_total") >= 1.0);
    assert!(value(&text, "tc_wal_bytes_total") > 0.0);
    assert!(text.contains("tc_lock_contended_total"), "{text}");
    assert!(text.contains("tc_cache_hits_total"), "{text}");
}

/// A wait with a long timeout that is notified must not leave its timer
/// task sleeping until the timeout: a JVM calling `wait(60_000)` in a loop
/// would otherwise pile up tasks in the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notified_timed_waits_leave_no_timers_behind() {
    const WAITS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let waiter = server.plain_client(1).await;
    let notifier = server.plain_client(2).await;
    let key = LockKey::Named("timed".into());
    let tasks_before = value(&server.metrics_text().await, "tc_runtime_tasks");
    for _ in 0..WAITS {
        waiter.lock(&key, 1, LockMode::Write).await.unwrap();
        let waiting = {
            let (waiter, key) = (waiter.clone(), key.clone());
            tokio::spawn(async move {
                let hour = Some(Duration::from_secs(3600));
                waiter.wait(&key, 1, hour, Vec::new()).await.unwrap()
            })
        };
        notify_one_once_waiting(&notifier, &key, 2).await;
        let notified = tokio::time::timeout(DEADLINE, waiting).await.unwrap();
        assert!(notified.unwrap(), "the wait ended by notify");
        waiter.unlock(&key, 1, Vec::new()).await.unwrap();
    }
    // Cancelled timers go at once; allow a few tasks of other requests.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let tasks = value(&server.metrics_text().await, "tc_runtime_tasks");
        if tasks < tasks_before + 10.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{tasks} runtime tasks after {WAITS} notified waits, {tasks_before} before"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
