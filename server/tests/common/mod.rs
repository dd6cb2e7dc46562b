//! A real `tc-server` child process on an OS-chosen 127.0.0.1 port, and
//! helpers for tests that talk to it over TCP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tc_client::{Client, ClientConfig};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct TestServer {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads the server's stderr into `log` until the server exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts `tc-server` on `dir` and waits for its "serving on" line.
    pub fn start(dir: &Path, extra: &[&str]) -> TestServer {
        let metrics = if extra.contains(&"--metrics-listen") {
            None
        } else {
            Some("--no-metrics")
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_tc-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(metrics)
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tc-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready, serving) = mpsc::channel();
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving on ").nth(1) {
                    let addr = rest
                        .split(',')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    let _ = ready.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = match serving.recv_timeout(DEADLINE) {
            Ok(addr) => addr.parse().expect("address in the serving line"),
            Err(_) => {
                let _ = child.kill();
                panic!("tc-server did not start: {:#?}", log.lock().unwrap());
            }
        };
        TestServer {
            child,
            addr,
            dir: dir.to_path_buf(),
            log,
            reader: Some(reader),
        }
    }

    pub async fn client(&self, client_id: u64) -> Client {
        Client::connect(ClientConfig::new(self.addr, client_id))
            .await
            .expect("connect")
    }

    pub async fn plain_client(&self, client_id: u64) -> Client {
        let mut config = ClientConfig::new(self.addr, client_id);
        config.greedy_locks = false;
        Client::connect(config).await.expect("connect")
    }

    /// The address of `/metrics`, from its log line.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.log().iter().find_map(|line| {
            let rest = line.split("metrics on http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        })
    }

    /// Waits for the `/metrics` log line, then scrapes the endpoint.
    pub async fn metrics_text(&self) -> String {
        let mut addr = None;
        eventually("the metrics line", || {
            addr = self.metrics_addr();
            addr.is_some()
        })
        .await;
        let addr = addr.expect("checked by eventually");
        tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .expect("scraping /metrics")
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (within the deadline).
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Its stderr is closed: the reader has every line once it ends.
                if let Some(reader) = self.reader.take() {
                    reader.join().expect("stderr reader");
                }
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tc-server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// As `thread` of `client`, notifies one waiter on `key` (taking and
/// releasing the lock each time) until a notify wakes one: the waiter may
/// not be waiting yet.
pub async fn notify_one_once_waiting(client: &Client, key: &tc_client::LockKey, thread: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        client
            .lock(key, thread, tc_client::LockMode::Write)
            .await
            .unwrap();
        let woken = client.notify(key, thread, false).await.unwrap();
        client.unlock(key, thread, Vec::new()).await.unwrap();
        if woken == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "nobody ever waited on {key:?}");
    }
}

/// Polls `condition` until it holds or the deadline passes.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether `future` is still pending after a short while (a lock request
/// that must stay blocked).
pub async fn stays_pending<F: std::future::Future>(future: F) -> bool {
    tokio::time::timeout(Duration::from_millis(300), future)
        .await
        .is_err()
}

use tc_model::dna::{Dna, LockRef, Transaction};
use tc_model::{ClassDef, ClassId, FieldKind, ObjectId, ScalarKind, Value};

/// A class `Counter { long value; String note }`.
pub fn counter_class() -> ClassDef {
    ClassDef::plain(
        "test.Counter",
        &[
            ("value", FieldKind::Scalar(ScalarKind::Long)),
            ("note", FieldKind::Scalar(ScalarKind::String)),
        ],
    )
}

/// Registers the counter class, creates one counter bound to `root`;
/// returns (class, object).
pub async fn create_counter(client: &Client, root: &str) -> (ClassId, ObjectId) {
    let class = client
        .register_class(&counter_class())
        .await
        .expect("register class");
    let id = ObjectId(client.allocate_ids(1).await.expect("ids").start);
    let tx = Transaction {
        client: client.client_id(),
        seq: client.next_seq(),
        lock: LockRef::None,
        roots: vec![(root.to_string(), id)],
        dnas: vec![Dna::new_object(id, class)],
    };
    client.commit(tx.encode()).await.expect("create counter");
    (class, id)
}

/// A transaction setting the counter's value, made under `lock`.
pub fn set_value(client: &Client, id: ObjectId, value: i64, lock: LockRef) -> Vec<u8> {
    Transaction {
        client: client.client_id(),
        seq: client.next_seq(),
        lock,
        roots: vec![],
        dnas: vec![Dna::update(id).field(0, Value::Long(value))],
    }
    .encode()
}

/// The counter's value as `client` holds it (faulting it in if needed).
pub async fn value_of(client: &Client, id: ObjectId) -> i64 {
    let cached = client
        .object(id)
        .await
        .expect("fetch")
        .expect("object exists");
    match cached.object.field(0) {
        Some(Value::Long(v)) => *v,
        other => panic!("counter value is {other:?}"),
    }
}

/// The text of `/metrics` at `addr`.
pub fn scrape(addr: std::net::SocketAddr) -> String {
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

/// The value of metric `name` in `text`.
pub fn value(text: &str, name: &str) -> f64 {
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
