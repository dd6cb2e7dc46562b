//! End to end against real servers: each baseline server starts, runs each
//! workload for about a second with 4 writers (the counter check included),
//! and after drop its processes are gone, its port is free and its
//! directory is removed.
//!
//! Ignored by default: on a fresh machine it installs Debian's
//! `redis-server` and `postgresql` with apt-get (as root), and it takes
//! about 15 s. Run it with
//! `cargo test -p tc-bench --release --test baselines -- --ignored`.
//!
//! tc-bench is a binary crate, so this test compiles its `baselines.rs`
//! (and the `report.rs` and `cpu.rs` it uses) in by path.

#[allow(dead_code)]
#[path = "../src/baselines.rs"]
mod baselines;
#[allow(dead_code)]
#[path = "../src/cpu.rs"]
mod cpu;
#[allow(dead_code)]
#[path = "../src/report.rs"]
mod report;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use baselines::{Baseline, BaselineServer, Workload};

const WRITERS: usize = 4;
const VALUE_BYTES: usize = 64;

/// Every process of the server: the pid, and for PostgreSQL every backend
/// and auxiliary process it lists in `pg_stat_activity`.
async fn server_pids(server: &BaselineServer) -> Vec<i32> {
    let pid = i32::try_from(server.pid().expect("running")).expect("pid fits");
    let mut pids = vec![pid];
    if server.kind() == Baseline::Postgres {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(server.addr().port())
            .user("tcbench")
            .dbname("postgres");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        let driver = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        pids.extend(rows.iter().map(|row| row.get::<_, i32>(0)));
        drop(client);
        let _ = driver.await;
    }
    pids
}

fn is_alive(pid: i32) -> bool {
    // Zombies still answer kill(0); a reaped process does not.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
    status.is_ok_and(|text| !text.lines().any(|line| line.starts_with("State:\tZ")))
}

async fn exercise(kind: Baseline) {
    let server = BaselineServer::start(kind).unwrap_or_else(|err| panic!("start {kind}: {err}"));
    assert_eq!(server.kind(), kind);
    assert!(server.addr().ip().is_loopback(), "{:?}", server.addr());
    eprintln!("{server:?}");
    for workload in [Workload::Commit, Workload::Counter, Workload::Read] {
        let run = baselines::run(
            &server,
            workload,
            WRITERS,
            VALUE_BYTES,
            Duration::from_millis(200),
            Duration::from_secs(1),
        )
        .await
        .unwrap_or_else(|err| panic!("{kind} {workload}: {err}"));
        eprintln!(
            "{kind} {workload}: {} ops in {:?}, p50 {} us",
            run.ops,
            run.elapsed,
            run.latency.value_at_quantile(0.5)
        );
        assert!(run.ops > 0, "{kind} {workload}: no operation");
        assert_eq!(run.latency.len(), run.ops, "one latency per measured op");
        assert_eq!(run.elapsed, Duration::from_secs(1));
    }
    let addr = server.addr();
    let dir: PathBuf = server.dir().to_owned();
    let pids = server_pids(&server).await;
    if kind == Baseline::Postgres {
        assert!(pids.len() >= 3, "postmaster and its auxiliaries: {pids:?}");
    }
    assert!(pids.iter().all(|&pid| is_alive(pid)), "{pids:?}");
    drop(server);
    for pid in &pids {
        assert!(
            !is_alive(*pid),
            "{kind}: process {pid} still alive after drop"
        );
    }
    TcpListener::bind(addr).unwrap_or_else(|err| panic!("{kind}: port {addr} not free: {err}"));
    assert!(!dir.exists(), "{kind}: {} not removed", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts real servers, installs them with apt-get if missing: run with --ignored"]
async fn redis_runs_every_workload_and_stops_cleanly() {
    exercise(Baseline::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts real servers, installs them with apt-get if missing: run with --ignored"]
async fn postgres_runs_every_workload_and_stops_cleanly() {
    exercise(Baseline::Postgres).await;
}

/// The counter check must fail loudly: run the counter workload while
/// another client adds 1000 to the counter.
#[test]
#[ignore = "starts real servers, installs them with apt-get if missing: run with --ignored"]
fn counter_check_rejects_a_tampered_counter() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = BaselineServer::start(Baseline::Redis).expect("start redis");
    let addr = server.addr();
    let tamper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let client = redis::Client::open(format!("redis://{addr}/")).expect("client");
        let mut connection = client.get_connection().expect("connect");
        redis::cmd("INCRBY")
            .arg("counter")
            .arg(1000)
            .query::<i64>(&mut connection)
            .expect("INCRBY");
    });
    let result = runtime.block_on(baselines::run(
        &server,
        Workload::Counter,
        WRITERS,
        VALUE_BYTES,
        Duration::ZERO,
        Duration::from_secs(1),
    ));
    tamper.join().expect("tamper thread");
    let err = result.expect_err("a counter 1000 too high must fail the run");
    let message = err.to_string();
    assert!(message.contains("counter"), "{message}");
    assert!(message.contains("expected"), "{message}");
}
