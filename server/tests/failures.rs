//! Processes that die: a client killed (or frozen) while holding a lock,
//! the server killed with kill -9 and restarted, a clean SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tc_client::{Client, ClientConfig, LockKey, LockMode};
use tc_model::ObjectId;
use tc_model::dna::LockRef;

const CHILD_ADDR: &str = "TC_TEST_CHILD_ADDR";

/// The child's side: run only when re-executed by a test below. Takes a
/// lock, says so on stdout, and holds it until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by other tests as a child process"]
async fn child_holds_lock() {
    let Ok(addr) = std::env::var(CHILD_ADDR) else {
        return;
    };
    let client = Client::connect(ClientConfig::new(addr, 999)).await.unwrap();
    let key = LockKey::Named("held".into());
    client.lock(&key, 1, LockMode::Write).await.unwrap();
    println!("LOCKED");
    std::future::pending::<()>().await;
}

fn spawn_lock_holder(server: &TestServer) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holds_lock", "--ignored", "--nocapture"])
        .env(CHILD_ADDR, server.addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (locked, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("LOCKED") {
                let _ = locked.send(());
            }
        }
    });
    rx.recv_timeout(DEADLINE).expect("the child took the lock");
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_loses_its_locks() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--session-timeout-ms",
            "2000",
            "--heartbeat-interval-ms",
            "200",
        ],
    );
    let mut child = spawn_lock_holder(&server);
    let other = server.plain_client(1).await;
    let key = LockKey::Named("held".into());
    let waiting = other.lock(&key, 1, LockMode::Write);
    tokio::pin!(waiting);
    assert!(
        stays_pending(&mut waiting).await,
        "granted while the child holds it"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_loses_its_locks_after_the_session_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--session-timeout-ms",
            "1000",
            "--heartbeat-interval-ms",
            "100",
        ],
    );
    let mut child = spawn_lock_holder(&server);
    let pid = child.id().to_string();
    // SIGSTOP: the TCP connection stays open, the heartbeats stop.
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let other = server.plain_client(1).await;
    let key = LockKey::Named("held".into());
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, other.lock(&key, 1, LockMode::Write))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "granted before the timeout"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_transaction_survives_a_server_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let writers = 4;
    let mut ids = Vec::new();
    let setup = server.client(100).await;
    for n in 0..writers {
        ids.push(create_counter(&setup, &format!("c{n}")).await.1);
    }
    // Writers commit until the server dies; each remembers its last ack.
    let (acked_tx, acked_rx) = tokio::sync::watch::channel(vec![0i64; writers]);
    let acked_tx = std::sync::Arc::new(acked_tx);
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().copied().enumerate() {
        let client = server.client(n as u64 + 1).await;
        let acked = acked_tx.clone();
        tasks.push(tokio::spawn(async move {
            let key = LockKey::Object(id.0);
            for value in 1.. {
                if client.lock(&key, 1, LockMode::Write).await.is_err() {
                    return;
                }
                let tx = set_value(&client, id, value, LockRef::Object(id));
                if client.unlock(&key, 1, tx).await.is_err() {
                    return;
                }
                acked.send_modify(|acks| acks[n] = value);
            }
        }));
    }
    let mut rx = acked_rx.clone();
    tokio::time::timeout(DEADLINE, rx.wait_for(|acks| acks.iter().all(|&v| v >= 50)))
        .await
        .unwrap()
        .unwrap();
    server.kill9();
    for task in tasks {
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }
    let acked = acked_rx.borrow().clone();
    let server = TestServer::start(dir.path(), &[]);
    let reader = server.client(200).await;
    for (n, id) in ids.iter().enumerate() {
        let value = value_of(&reader, *id).await;
        // The ack of `value + 1` may have been lost in flight, not more.
        assert!(
            value == acked[n] || value == acked[n] + 1,
            "counter {n}: acknowledged {}, found {value}",
            acked[n]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_so_a_restart_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = server.client(1).await;
    let (_, id) = create_counter(&client, "counter").await;
    for value in 1..=20 {
        client
            .commit(set_value(&client, id, value, LockRef::None))
            .await
            .unwrap();
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "exit status {status:?}: {log:#?}");
    assert!(
        log.iter()
            .any(|line| line.contains("store closed after a checkpoint")),
        "{log:#?}"
    );
    let server = TestServer::start(dir.path(), &[]);
    let replayed = server
        .log()
        .into_iter()
        .find(|line| line.contains("store open"))
        .expect("the store open line");
    assert!(replayed.contains("replayed_records=0"), "{replayed}");
    let client = server.client(2).await;
    assert_eq!(value_of(&client, id).await, 20);
    assert_eq!(client.root("counter").await.unwrap(), Some(ObjectId(id.0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_learns_its_server_died_and_reconnects_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let addr = server.addr;
    let client = server.client(42).await;
    let (_, id) = create_counter(&client, "counter").await;
    client
        .commit(set_value(&client, id, 7, LockRef::None))
        .await
        .unwrap();
    server.kill9();
    let reason = tokio::time::timeout(DEADLINE, client.closed())
        .await
        .expect("closed() resolves");
    assert!(!reason.is_empty());
    assert!(
        client
            .commit(set_value(&client, id, 8, LockRef::None))
            .await
            .is_err()
    );
    // The server comes back on the same address.
    let addr_arg = addr.to_string();
    let dir_path = dir.path().to_path_buf();
    let server = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tc-server"));
        command
            .args(["--listen", &addr_arg, "--no-metrics", "--data-dir"])
            .arg(&dir_path)
            .stderr(Stdio::null());
        command.spawn().unwrap()
    })
    .await
    .unwrap();
    let server = KillOnDrop(server);
    let deadline = Instant::now() + DEADLINE;
    let again = loop {
        match client.reconnect().await {
            Ok(again) => break again,
            Err(err) => assert!(Instant::now() < deadline, "no reconnect: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again.client_id(), 42);
    assert!(again.next_seq() > 2, "sequence numbers go on");
    assert_eq!(value_of(&again, id).await, 7);
    again
        .commit(set_value(&again, id, 8, LockRef::None))
        .await
        .unwrap();
    assert_eq!(value_of(&again, id).await, 8);
    drop(server);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
