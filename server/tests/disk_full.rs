//! A full disk: commits fail with a clear error to their clients, reads go
//! on, and after space is freed and the server restarts every acknowledged
//! transaction is there. Needs root (it mounts a small tmpfs); elsewhere it
//! says so and passes without checking anything.

mod common;

use std::process::Command;

use common::*;
use tc_client::{ClientError, ErrorCode};
use tc_model::dna::{Dna, LockRef, Transaction};
use tc_model::{ObjectId, Value};

struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(dir: &std::path::Path, size: &str) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Sets the counter to `n` and creates object `fresh` holding 30 KB, so the
/// live data grows with every commit.
fn growing_tx(
    client: &tc_client::Client,
    class: tc_model::ClassId,
    id: ObjectId,
    fresh: ObjectId,
    n: i64,
) -> Vec<u8> {
    Transaction {
        client: client.client_id(),
        seq: client.next_seq(),
        lock: LockRef::None,
        roots: vec![],
        dnas: vec![
            Dna::update(id).field(0, Value::Long(n)),
            Dna::new_object(fresh, class)
                .field(0, Value::Long(n))
                .field(1, Value::String(format!("{n:>30000}"))),
        ],
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_commits_clearly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let Some(mount) = Mount::tmpfs(&data, "12m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the full-disk test did not run"
        );
        return;
    };
    let config = dir.path().join("tc.toml");
    std::fs::write(
        &config,
        "max_transaction_bytes = 65536\nmax_message_bytes = 1048576\nwal_segment_bytes = 2097152\n\
         checkpoint_wal_bytes = 1048576\n",
    )
    .unwrap();
    let server = TestServer::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let client = server.client(1).await;
    let (class, id) = create_counter(&client, "counter").await;
    let ids = client.allocate_ids(2000).await.unwrap();
    let fresh = |n: i64| ObjectId(ids.start + n as u64);
    let mut acked = 0;
    let refusal = loop {
        match client
            .commit(growing_tx(&client, class, id, fresh(acked + 1), acked + 1))
            .await
        {
            Ok(_) => acked += 1,
            Err(err) => break err,
        }
        assert!(acked < 1_999, "12 MiB never filled up");
    };
    match &refusal {
        ClientError::Refused {
            code,
            message,
            fatal,
        } => {
            assert_eq!(*code, ErrorCode::Unavailable, "{message}");
            assert!(!fatal, "the session must survive a full disk: {message}");
            eprintln!("after {acked} commits: {message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Health and /metrics tell the operator, with the cause.
    let mut health = tc_protocol::tc_client::TcClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let reply = health
        .health(tc_protocol::HealthRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, "failed");
    assert!(
        reply.failure.contains("No space left on device"),
        "{}",
        reply.failure
    );
    let metrics = server.metrics_text().await;
    assert_eq!(value(&metrics, "tc_store_failed"), 1.0);
    // Reads keep working, and show the last acknowledged change.
    let reader = server.client(2).await;
    assert_eq!(value_of(&reader, id).await, acked);
    assert_eq!(value_of(&reader, fresh(acked)).await, acked);
    assert!(
        client
            .commit(growing_tx(&client, class, id, fresh(1999), -1))
            .await
            .is_err()
    );
    // Space comes back; after a restart everything acknowledged is there.
    mount.resize("200m");
    server.kill9();
    let server = TestServer::start(&data, &["--config", config.to_str().unwrap()]);
    let client = server.client(3).await;
    assert_eq!(value_of(&client, id).await, acked);
    for n in 1..=acked {
        assert_eq!(
            value_of(&client, fresh(n)).await,
            n,
            "object {n} of {acked} acknowledged"
        );
    }
    client
        .commit(growing_tx(&client, class, id, fresh(acked + 1), acked + 1))
        .await
        .unwrap();
    drop(server);
    drop(mount);
}
