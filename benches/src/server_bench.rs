//! Network workloads against tc-server, and the same logical workloads
//! against Redis and PostgreSQL in the same invocation (`--vs`).
//!
//! Owns: `server-commit` (each writer updates its own object under its own
//! lock), `counter` (every writer increments one shared counter under one
//! cluster lock), `read` (writers fault random objects in); writers spread
//! over sessions; the rows and their ratios to the baselines.
//! Not: starting Redis/PostgreSQL or their clients (`baselines.rs`).
//! Each writer has exactly one operation outstanding; an operation counts
//! if it started inside the measured window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tc_client::{Client, ClientConfig, LockKey, LockMode};
use tc_heap_store::dna::{Dna, LockRef, Transaction};
use tc_heap_store::{ClassDef, ClassId, FieldKind, ObjectId, ScalarKind, Value};
use tc_server::{Server, ServerConfig};

use crate::baselines::{self, Baseline, BaselineServer, Workload};
use crate::cpu::{CpuSample, CpuUse, ServerParty};
use crate::fsync_probe;
use crate::report::{self, LatencySummary};

#[derive(Debug, thiserror::Error)]
pub enum ServerBenchError {
    #[error("tc-server: {0}")]
    Server(#[from] tc_server::ServerError),
    #[error("tc client: {0}")]
    Client(#[from] tc_client::ClientError),
    #[error(transparent)]
    Baseline(Box<baselines::BaselineError>),
    #[error("{0}")]
    Setup(String),
    #[error("counter check failed: {increments} increments acknowledged, counter is {value}")]
    LostIncrements { increments: u64, value: i64 },
}

impl From<baselines::BaselineError> for ServerBenchError {
    fn from(err: baselines::BaselineError) -> Self {
        ServerBenchError::Baseline(Box::new(err))
    }
}

#[derive(Debug, Args, Clone)]
pub struct ServerBenchArgs {
    /// Application threads, each with one operation outstanding.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// tc sessions the writers are spread over (like JVMs).
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup_seconds: f64,
    /// Bytes of payload each write carries.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Also run the workload against these, started by the harness.
    #[arg(long, value_delimiter = ',')]
    pub vs: Vec<Baseline>,
    /// Measure a running tc-server instead of starting one in-process.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Settings of the in-process server (TOML, as for tc-server --config);
    /// its address and data dir are the bench's own.
    #[arg(long, value_name = "FILE")]
    pub server_config: Option<std::path::PathBuf>,
    /// Ask for plain locks instead of greedy ones.
    #[arg(long)]
    pub no_greedy: bool,
    /// One JSON object per run instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcWorkload {
    ServerCommit,
    Counter,
    Read,
}

impl TcWorkload {
    fn name(self) -> &'static str {
        match self {
            TcWorkload::ServerCommit => "server-commit",
            TcWorkload::Counter => "counter",
            TcWorkload::Read => "read",
        }
    }

    fn baseline(self) -> Workload {
        match self {
            TcWorkload::ServerCommit => Workload::Commit,
            TcWorkload::Counter => Workload::Counter,
            TcWorkload::Read => Workload::Read,
        }
    }
}

/// One run. Serialized as one JSON line.
#[derive(Clone, Debug, Serialize)]
pub struct ServerRow {
    /// Always "server".
    pub bench: &'static str,
    pub workload: &'static str,
    /// "tc", "redis" or "postgres".
    pub system: &'static str,
    pub writers: usize,
    /// tc sessions; for a baseline, its connections (= writers).
    pub sessions: usize,
    pub value_bytes: usize,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// WAL records per fdatasync in the measured window (in-process tc
    /// server only): how well group commit gathers the writers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_per_fsync: Option<f64>,
    /// p50 of `pwrite` + `fdatasync` on the server's disk, measured just
    /// before the run (in-process tc server only): what the one-writer
    /// latency target is relative to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fdatasync_p50_us: Option<u64>,
    /// CPU time per operation over the measured window (`cpu`): the
    /// server's (tc in-process, or the baseline's processes; absent with
    /// `--addr`) and the bench's client threads'.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_op: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu_us_per_op: Option<f64>,
    /// Share of the machine's CPU time that was busy in the window, %.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_busy_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_vs_redis: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_vs_postgres: Option<f64>,
}

impl ServerRow {
    /// The counts and latencies of one measured window; the optional
    /// figures start absent.
    fn measured(
        workload: TcWorkload,
        system: &'static str,
        args: &ServerBenchArgs,
        sessions: usize,
        seconds: f64,
        ops: u64,
        latency: &Histogram<u64>,
    ) -> ServerRow {
        let summary = LatencySummary::of(latency);
        ServerRow {
            bench: "server",
            workload: workload.name(),
            system,
            writers: args.writers,
            sessions,
            value_bytes: args.value_bytes,
            seconds,
            ops,
            ops_per_sec: ops as f64 / seconds,
            p50_us: summary.p50_us,
            p99_us: summary.p99_us,
            p999_us: summary.p999_us,
            max_us: summary.max_us,
            records_per_fsync: None,
            fdatasync_p50_us: None,
            server_cpu_us_per_op: None,
            client_cpu_us_per_op: None,
            machine_busy_pct: None,
            ratio_vs_redis: None,
            ratio_vs_postgres: None,
        }
    }

    fn with_cpu(self, cpu: Option<CpuUse>) -> ServerRow {
        ServerRow {
            server_cpu_us_per_op: cpu.and_then(|c| c.server_us_per_op),
            client_cpu_us_per_op: cpu.map(|c| c.client_us_per_op),
            machine_busy_pct: cpu.map(|c| c.machine_busy * 100.0),
            ..self
        }
    }
}

pub fn run(workload: TcWorkload, args: &ServerBenchArgs) -> Result<(), ServerBenchError> {
    if args.writers == 0 || args.sessions == 0 || args.sessions > args.writers {
        return Err(ServerBenchError::Setup(
            "--writers and --sessions must be at least 1, and sessions at most writers".into(),
        ));
    }
    let client_runtime = runtime("clients")?;
    let tc = match args.addr {
        Some(addr) => client_runtime.block_on(measure_tc(workload, args, addr, None))?,
        None => {
            let dir = tempfile::Builder::new()
                .prefix("tc-bench-server")
                .tempdir_in(".")
                .map_err(|err| ServerBenchError::Setup(format!("temp dir: {err}")))?;
            let base = match &args.server_config {
                Some(path) => ServerConfig::from_file(path)
                    .map_err(|err| ServerBenchError::Setup(err.to_string()))?,
                None => ServerConfig::default(),
            };
            let server_runtime = base
                .runtime("tc-bench-server")
                .map_err(|err| ServerBenchError::Setup(format!("tokio runtime: {err}")))?;
            let config = ServerConfig {
                listen: "127.0.0.1:0".parse().expect("constant address"),
                metrics_listen: None,
                data_dir: dir.path().join("data"),
                ..base
            };
            let fdatasync = fsync_probe::measure(dir.path())
                .map_err(|err| ServerBenchError::Setup(format!("fdatasync probe: {err}")))?;
            eprintln!(
                "fdatasync: p50 {} us, p99 {} us ({} samples)",
                fdatasync.p50_us, fdatasync.p99_us, fdatasync.count
            );
            let server = server_runtime.block_on(Server::bind(config))?;
            let addr = server.local_addr();
            let store = server.shared().store.clone();
            eprintln!(
                "tc-server in-process on {addr}, data in {}",
                dir.path().display()
            );
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = server_runtime.spawn(server.run(async move {
                let _ = stopped.await;
            }));
            let result = client_runtime.block_on(measure_tc(workload, args, addr, Some(store)));
            let _ = stop.send(());
            server_runtime
                .block_on(serving)
                .map_err(|err| ServerBenchError::Setup(format!("server task: {err}")))??;
            ServerRow {
                fdatasync_p50_us: Some(fdatasync.p50_us),
                ..result?
            }
        }
    };
    let mut rows = vec![tc];
    for &kind in &args.vs {
        let server = BaselineServer::start(kind)?;
        eprintln!("{} on {}: {}", kind, server.addr(), workload.name());
        let run = client_runtime.block_on(baselines::run(
            &server,
            workload.baseline(),
            args.writers,
            args.value_bytes,
            Duration::from_secs_f64(args.warmup_seconds),
            Duration::from_secs_f64(args.seconds),
        ))?;
        rows.push(
            ServerRow::measured(
                workload,
                kind.as_str(),
                args,
                args.writers,
                run.elapsed.as_secs_f64(),
                run.ops,
                &run.latency,
            )
            .with_cpu(run.cpu),
        );
    }
    let ratio = |system: &str| {
        rows.iter()
            .find(|row| row.system == system)
            .map(|row| rows[0].ops_per_sec / row.ops_per_sec)
    };
    let (vs_redis, vs_postgres) = (ratio("redis"), ratio("postgres"));
    rows[0].ratio_vs_redis = vs_redis;
    rows[0].ratio_vs_postgres = vs_postgres;
    if args.json {
        for row in &rows {
            println!("{}", report::to_json_line(row));
        }
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, ServerBenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(format!("tc-bench-{name}"))
        .build()
        .map_err(|err| ServerBenchError::Setup(format!("tokio runtime: {err}")))
}

pub fn table(rows: &[ServerRow]) -> String {
    const HEADER: [&str; 15] = [
        "system",
        "workload",
        "writers",
        "sessions",
        "ops/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "max us",
        "rec/fsync",
        "fdatasync p50 us",
        "server CPU us/op",
        "client CPU us/op",
        "busy %",
        "ratio",
    ];
    let ratio = |row: &ServerRow| {
        let mut parts = Vec::new();
        if let Some(r) = row.ratio_vs_redis {
            parts.push(format!("{r:.2}x redis"));
        }
        if let Some(r) = row.ratio_vs_postgres {
            parts.push(format!("{r:.2}x postgres"));
        }
        parts.join(", ")
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.system.to_string(),
                row.workload.to_string(),
                row.writers.to_string(),
                row.sessions.to_string(),
                format!("{:.0}", row.ops_per_sec),
                row.p50_us.to_string(),
                row.p99_us.to_string(),
                row.p999_us.to_string(),
                row.max_us.to_string(),
                row.records_per_fsync
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.1}")),
                row.fdatasync_p50_us
                    .map_or_else(|| "-".to_string(), |us| us.to_string()),
                one_decimal(row.server_cpu_us_per_op),
                one_decimal(row.client_cpu_us_per_op),
                row.machine_busy_pct
                    .map_or_else(|| "-".to_string(), |pct| format!("{pct:.0}")),
                ratio(row),
            ]
        })
        .collect();
    report::render_table(&HEADER, &cells)
}

fn one_decimal(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

fn bench_class() -> ClassDef {
    ClassDef::plain(
        "bench.Cell",
        &[
            ("value", FieldKind::Scalar(ScalarKind::Long)),
            ("payload", FieldKind::Scalar(ScalarKind::String)),
        ],
    )
}

struct Setup {
    clients: Vec<Client>,
    class: ClassId,
}

async fn connect(args: &ServerBenchArgs, addr: SocketAddr) -> Result<Setup, ServerBenchError> {
    let mut clients = Vec::new();
    for n in 0..args.sessions {
        let mut config = ClientConfig::new(addr, 0x7c_0000 + n as u64);
        config.name = format!("tc-bench {n}");
        config.greedy_locks = !args.no_greedy;
        clients.push(Client::connect(config).await?);
    }
    let class = clients[0].register_class(&bench_class()).await?;
    Ok(Setup { clients, class })
}

/// Creates `n` objects of the bench class, in transactions of at most 1000.
async fn create_objects(
    client: &Client,
    class: ClassId,
    n: usize,
) -> Result<Vec<ObjectId>, ServerBenchError> {
    let ids = client.allocate_ids(n as u64).await?;
    let ids: Vec<ObjectId> = ids.map(ObjectId).collect();
    for chunk in ids.chunks(1000) {
        let tx = Transaction {
            client: client.client_id(),
            seq: client.next_seq(),
            lock: LockRef::None,
            roots: vec![],
            dnas: chunk.iter().map(|&id| Dna::new_object(id, class)).collect(),
        };
        client.commit(tx.encode()).await?;
    }
    Ok(ids)
}

fn update(client: &Client, id: ObjectId, value: i64, payload: &str) -> Vec<u8> {
    Transaction {
        client: client.client_id(),
        seq: client.next_seq(),
        lock: LockRef::Object(id),
        roots: vec![],
        dnas: vec![
            Dna::update(id)
                .field(0, Value::Long(value))
                .field(1, Value::String(payload.to_string())),
        ],
    }
    .encode()
}

/// Per-writer results of the measured window.
struct WriterResult {
    ops: u64,
    latency: Histogram<u64>,
}

async fn measure_tc(
    workload: TcWorkload,
    args: &ServerBenchArgs,
    addr: SocketAddr,
    in_process_store: Option<Arc<tc_heap_store::Store>>,
) -> Result<ServerRow, ServerBenchError> {
    let setup = connect(args, addr).await?;
    let objects = match workload {
        TcWorkload::ServerCommit => {
            create_objects(&setup.clients[0], setup.class, args.writers).await?
        }
        TcWorkload::Counter => create_objects(&setup.clients[0], setup.class, 1).await?,
        TcWorkload::Read => {
            create_objects(
                &setup.clients[0],
                setup.class,
                baselines::READ_KEYS as usize,
            )
            .await?
        }
    };
    let payload: Arc<str> = "x".repeat(args.value_bytes).into();
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup_seconds);
    let window_end = window_start + Duration::from_secs_f64(args.seconds);
    let increments = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let client = setup.clients[writer % args.sessions].clone();
        let objects = objects.clone();
        let payload = payload.clone();
        let increments = increments.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = WriterResult {
                ops: 0,
                latency: report::latency_histogram(),
            };
            let mut rng = crate::store_common::Rng::new(writer as u64 + 1);
            let thread = writer as u64 + 1;
            loop {
                let began = Instant::now();
                if began >= window_end {
                    return Ok::<_, ServerBenchError>(result);
                }
                match workload {
                    TcWorkload::ServerCommit => {
                        let id = objects[writer];
                        let key = LockKey::Object(id.0);
                        client.lock(&key, thread, LockMode::Write).await?;
                        let tx = update(&client, id, began.elapsed().as_nanos() as i64, &payload);
                        client.unlock(&key, thread, tx).await?;
                    }
                    TcWorkload::Counter => {
                        let id = objects[0];
                        let key = LockKey::Object(id.0);
                        client.lock(&key, thread, LockMode::Write).await?;
                        let value = match client
                            .object(id)
                            .await?
                            .and_then(|c| c.object.field(0).cloned())
                        {
                            Some(Value::Long(v)) => v,
                            other => {
                                return Err(ServerBenchError::Setup(format!(
                                    "counter holds {other:?}"
                                )));
                            }
                        };
                        let tx = update(&client, id, value + 1, &payload);
                        client.unlock(&key, thread, tx).await?;
                        increments.fetch_add(1, Ordering::Relaxed);
                    }
                    TcWorkload::Read => {
                        let id = objects[rng.below(objects.len() as u64) as usize];
                        client.fetch(&[id]).await?;
                    }
                }
                if began >= window_start {
                    result.ops += 1;
                    report::record_latency(&mut result.latency, began.elapsed());
                }
            }
        }));
    }
    let party = match in_process_store {
        Some(_) => ServerParty::InProcess,
        None => ServerParty::Elsewhere,
    };
    tokio::time::sleep_until(window_start.into()).await;
    let wal_before = in_process_store.as_ref().map(|store| store.stats().wal);
    let cpu_before = CpuSample::take(party);
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_after = CpuSample::take(party);
    let wal_after = in_process_store.as_ref().map(|store| store.stats().wal);
    let records_per_fsync = match (wal_before, wal_after) {
        (Some(before), Some(after)) => {
            let syncs = after.syncs - before.syncs;
            (syncs > 0).then(|| (after.records - before.records) as f64 / syncs as f64)
        }
        _ => None,
    };
    let mut ops = 0;
    let mut latency = report::latency_histogram();
    for task in tasks {
        let result = task
            .await
            .map_err(|err| ServerBenchError::Setup(format!("writer task: {err}")))??;
        ops += result.ops;
        latency.add(&result.latency).expect("same histogram bounds");
    }
    if workload == TcWorkload::Counter {
        let reader = &setup.clients[0];
        reader.fetch(&objects).await?;
        let value = match reader
            .object(objects[0])
            .await?
            .and_then(|c| c.object.field(0).cloned())
        {
            Some(Value::Long(v)) => v,
            _ => -1,
        };
        let increments = increments.load(Ordering::Relaxed);
        if value != increments as i64 {
            return Err(ServerBenchError::LostIncrements { increments, value });
        }
    }
    let cpu = cpu_before
        .zip(cpu_after)
        .and_then(|(before, after)| after.since(&before, ops));
    Ok(ServerRow {
        records_per_fsync,
        ..ServerRow::measured(
            workload,
            "tc",
            args,
            args.sessions,
            args.seconds,
            ops,
            &latency,
        )
    }
    .with_cpu(cpu))
}
