//! The Prometheus endpoint reports what the server did.

mod common;

use common::*;
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
