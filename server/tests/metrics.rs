//! The Prometheus endpoint reports what the server did.

mod common;

use std::io::{Read, Write};

use common::*;
use tc_model::dna::LockRef;

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: tc\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
}

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_commits_sessions_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let mut addr = None;
    eventually("the metrics line", || {
        addr = server.metrics_addr();
        addr.is_some()
    })
    .await;
    let addr = addr.unwrap();
    let client = server.client(1).await;
    let (_, id) = create_counter(&client, "counter").await;
    for value in 1..=10 {
        client
            .commit(set_value(&client, id, value, LockRef::None))
            .await
            .unwrap();
    }
    let text = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert_eq!(value(&text, "tc_commits_total"), 11.0, "{text}");
    assert_eq!(value(&text, "tc_sessions"), 1.0);
    assert_eq!(value(&text, "tc_commit_latency_seconds_count"), 11.0);
    assert!(value(&text, "tc_wal_fsyncs_total") >= 1.0);
    assert!(value(&text, "tc_wal_bytes_total") > 0.0);
    assert!(text.contains("tc_lock_contended_total"), "{text}");
    assert!(text.contains("tc_cache_hits_total"), "{text}");
}
