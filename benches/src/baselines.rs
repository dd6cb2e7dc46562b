//! Baselines: the same logical workloads as our server, run against real
//! Redis and PostgreSQL servers that this module starts itself.
//!
//! Owns: finding (and, as root, installing with apt-get) the server
//! binaries; one throwaway server per `BaselineServer` on 127.0.0.1 at an
//! OS-chosen free port, with its data in a fresh temporary directory; the
//! three workloads (`commit`, `counter`, `read`) over N client connections;
//! the `baseline` subcommand's arguments and rows.
//! Not: printing helpers and histograms (`report.rs`), our own server.
//! Invariants: a `BaselineServer` owns its process and its directory: drop
//! stops the process (and, for PostgreSQL, the postmaster's children) and
//! then removes the directory, also when `start` fails half-way or a panic
//! unwinds. Each writer has exactly one request outstanding; an operation
//! counts if it starts inside the measured window (`[warm-up end, warm-up
//! end + duration)`) and none starts after it. Every write is durable when
//! acknowledged (Redis `appendfsync always`, PostgreSQL `synchronous_commit
//! = on`, `fsync = on`).
//! Not handled: a SIGKILL of this process leaves the servers running (they
//! share its process group, so a terminal's Ctrl-C stops them too) and
//! their `tc-baseline-*` directories in the temp dir.

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tempfile::TempDir;

use crate::cpu::{CpuSample, CpuUse, ServerParty};
use crate::report::{self, LatencySummary};

/// Keys (Redis `k0`.., PostgreSQL rows `0`..) loaded before `read` runs.
pub const READ_KEYS: u32 = 10_000;
/// PostgreSQL superuser created by `initdb -U` (trust auth, no password).
const PG_USER: &str = "tcbench";
const PG_DATABASE: &str = "postgres";
/// PostgreSQL's `max_connections`: at least 200 (3 of them are reserved
/// for superusers by default, and `run` holds one control connection).
const PG_MAX_CONNECTIONS: u32 = 200;
const _: () = assert!(PG_MAX_CONNECTIONS >= 200);
pub const PG_WRITERS_MAX: usize = PG_MAX_CONNECTIONS as usize - 3 - 1;
const WRITERS_MAX: u32 = 10_000;
const VALUE_BYTES_MAX: u64 = 1 << 20;
/// Tries at a fresh port when another process took the chosen one first.
const PORT_ATTEMPTS: u32 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// A reply slower than this fails the run (redis-rs's default is 500 ms,
/// which an fsync stall can exceed).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const TAIL_BYTES_MAX: usize = 2048;
const LOAD_BATCH: u32 = 1000;
/// `statfs` magic of tmpfs, where fsync costs nothing.
const TMPFS_MAGIC: i64 = 0x0102_1994;

const PG_CREATE_KV: &str = "CREATE TABLE IF NOT EXISTS kv (k int PRIMARY KEY, v bytea NOT NULL)";
const PG_LOAD_KV: &str = "INSERT INTO kv (k, v) SELECT * FROM unnest($1::int[], $2::bytea[]) \
                          ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v";
const PG_CREATE_COUNTER: &str =
    "CREATE TABLE IF NOT EXISTS counter (id int PRIMARY KEY, n bigint NOT NULL)";
const PG_RESET_COUNTER: &str =
    "INSERT INTO counter (id, n) VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = 0";
const PG_READ_COUNTER: &str = "SELECT n FROM counter WHERE id = 1";
const PG_COMMIT: &str = "UPDATE kv SET v = $1 WHERE k = $2";
const PG_INCREMENT: &str = "UPDATE counter SET n = n + 1 WHERE id = 1";
const PG_READ: &str = "SELECT v FROM kv WHERE k = $1";

/// Serializes apt-get runs of this process (dpkg takes one lock).
static INSTALL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    Redis,
    Postgres,
}

impl Baseline {
    pub fn as_str(self) -> &'static str {
        match self {
            Baseline::Redis => "redis",
            Baseline::Postgres => "postgres",
        }
    }

    /// Debian package that provides the server.
    fn package(self) -> &'static str {
        match self {
            Baseline::Redis => "redis-server",
            Baseline::Postgres => "postgresql",
        }
    }
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One durable write per operation (`read`: one read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Each writer overwrites its own key / row with random bytes.
    Commit,
    /// All writers increment one shared counter.
    Counter,
    /// Each writer reads random keys among `READ_KEYS` loaded ones.
    Read,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Commit => "commit",
            Workload::Counter => "counter",
            Workload::Read => "read",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaselineError {
    #[error("{binary} not found (looked in {looked}); {remedy}")]
    Missing {
        binary: &'static str,
        looked: String,
        remedy: String,
    },
    #[error("`{command}` failed ({status}); stderr tail:\n{stderr_tail}")]
    Command {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(
        "PostgreSQL refuses to run as root and there is no `postgres` user to run it as: \
         install Debian's `postgresql` package (it creates that user) or run as a non-root user"
    )]
    NoPostgresUser,
    #[error("PostgreSQL binaries disagree: `{first}` vs `{second}`")]
    VersionMismatch { first: String, second: String },
    #[error("{kind} exited before accepting connections ({status}); log {log}:\n{log_tail}")]
    Exited {
        kind: Baseline,
        status: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error(
        "{kind} on {addr} not ready after {waited:?} (last probe: {last_probe}); log {log}:\n{log_tail}"
    )]
    NotReady {
        kind: Baseline,
        addr: SocketAddr,
        waited: Duration,
        last_probe: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("redis `{command}` failed: {source}")]
    Redis {
        command: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("postgres `{query}` failed: {detail}")]
    Postgres {
        query: String,
        detail: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{kind} {what}: found {found}, expected {expected}")]
    Check {
        kind: Baseline,
        what: String,
        found: String,
        expected: String,
    },
    #[error("{kind} accepts at most {writers_max} writers here, asked for {writers}")]
    TooManyWriters {
        kind: Baseline,
        writers: usize,
        writers_max: usize,
    },
    #[error("writer task failed: {0}")]
    Task(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BaselineError {
    move |source| BaselineError::Io {
        what: what.into(),
        source,
    }
}

fn redis_err(command: impl Into<String>) -> impl FnOnce(redis::RedisError) -> BaselineError {
    move |source| BaselineError::Redis {
        command: command.into(),
        source,
    }
}

/// tokio-postgres's `Display` says only "db error"; the detail is the cause.
fn pg_err(query: &str) -> impl FnOnce(tokio_postgres::Error) -> BaselineError + '_ {
    move |source| {
        let detail = match std::error::Error::source(&source) {
            Some(cause) => format!("{source}: {cause}"),
            None => source.to_string(),
        };
        BaselineError::Postgres {
            query: query.to_owned(),
            detail,
            source,
        }
    }
}

/// A running Redis or PostgreSQL server. Drop stops it and removes its
/// temporary directory.
pub struct BaselineServer {
    kind: Baseline,
    addr: SocketAddr,
    /// e.g. "redis 7.0.15", "postgres 15.18 (Debian 15.18-0+deb12u1)".
    version: String,
    /// `None` only before the first spawn and after `stop`.
    child: Option<Child>,
    log: PathBuf,
    /// Dropped after `Drop::drop` has stopped the process.
    dir: TempDir,
}

impl BaselineServer {
    /// Finds (as root: installs) the binaries, starts the server and waits
    /// until it accepts connections.
    pub fn start(kind: Baseline) -> Result<BaselineServer, BaselineError> {
        match kind {
            Baseline::Redis => start_redis(),
            Baseline::Postgres => start_postgres(),
        }
    }

    pub fn kind(&self) -> Baseline {
        self.kind
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The server's process id (for PostgreSQL, the postmaster).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temporary directory holding the data, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn new(kind: Baseline, version: String, dir: TempDir, log_name: &str) -> BaselineServer {
        let log = dir.path().join(log_name);
        BaselineServer {
            kind,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            version,
            child: None,
            log,
            dir,
        }
    }

    /// Spawns `command` (output to the log, which is truncated) at `port`
    /// and waits for it; `Ok(false)` if it could not bind the port.
    fn launch(&mut self, mut command: Command, port: u16) -> Result<bool, BaselineError> {
        assert!(self.child.is_none(), "one process per server");
        self.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log =
            File::create(&self.log).map_err(io_err(format!("create {}", self.log.display())))?;
        let log_err = log.try_clone().map_err(io_err("dup log file"))?;
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .current_dir(self.dir.path());
        let child = command.spawn().map_err(|source| BaselineError::Spawn {
            command: describe(&command),
            source,
        })?;
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => Ok(true),
            Err(BaselineError::Exited { log_tail, .. })
                if log_tail.contains("Address already in use") =>
            {
                self.stop();
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    fn wait_ready(&mut self) -> Result<(), BaselineError> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Some(status) = child.try_wait().map_err(io_err("wait for server"))? {
                self.child = None;
                return Err(BaselineError::Exited {
                    kind: self.kind,
                    status: status.to_string(),
                    log: self.log.clone(),
                    log_tail: tail_of_file(&self.log),
                });
            }
            let probe = match self.kind {
                Baseline::Redis => probe_redis(self.addr),
                Baseline::Postgres => probe_postgres(self.addr),
            };
            let last_probe = match probe {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if started.elapsed() >= READY_TIMEOUT {
                return Err(BaselineError::NotReady {
                    kind: self.kind,
                    addr: self.addr,
                    waited: started.elapsed(),
                    last_probe,
                    log: self.log.clone(),
                    log_tail: tail_of_file(&self.log),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Redis: SIGTERM (it stops its AOF-rewrite child, if any). PostgreSQL:
    /// SIGQUIT, immediate shutdown (the postmaster stops its children, no
    /// checkpoint: the data is thrown away). SIGKILL after `STOP_TIMEOUT`.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let signal = match self.kind {
            Baseline::Redis => libc::SIGTERM,
            Baseline::Postgres => libc::SIGQUIT,
        };
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: `pid` is our unreaped child, so it cannot name another process.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                _ => break,
            }
        }
        eprintln!(
            "{} (pid {pid}) did not stop within {STOP_TIMEOUT:?}; killing it",
            self.kind
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for BaselineServer {
    fn drop(&mut self) {
        self.stop();
        // `dir` (a TempDir) is removed when the fields drop, after this.
    }
}

impl fmt::Debug for BaselineServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaselineServer")
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("version", &self.version)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn start_redis() -> Result<BaselineServer, BaselineError> {
    let binary = ensure_installed(Baseline::Redis, find_redis)?;
    let version = redis_version(&binary)?;
    let mut server = BaselineServer::new(Baseline::Redis, version, temp_dir("redis")?, "redis.log");
    let conf = server.dir().join("redis.conf");
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        fs::write(&conf, redis_config(port, server.dir()))
            .map_err(io_err(format!("write {}", conf.display())))?;
        let mut command = Command::new(&binary);
        command.arg(&conf);
        if server.launch(command, port)? {
            return Ok(server);
        }
    }
    Err(port_race(&server))
}

/// Durable like our server: every write is fsynced before the reply.
/// Everything not listed is Redis's default.
fn redis_config(port: u16, dir: &Path) -> String {
    format!(
        "bind 127.0.0.1\nport {port}\ndir \"{}\"\ndaemonize no\nappendonly yes\n\
         appendfsync always\nsave \"\"\nlogfile \"\"\n",
        dir.display()
    )
}

/// `redis-server --version`: "Redis server v=7.0.15 sha=... " -> "redis 7.0.15".
fn redis_version(binary: &Path) -> Result<String, BaselineError> {
    let text = version_output(binary)?;
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .unwrap_or(text.trim());
    Ok(format!("redis {version}"))
}

/// Runs `initdb` and `postgres` as the `postgres` user when we are root
/// (they refuse root), with the directory chowned to it.
struct PgBinaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

fn start_postgres() -> Result<BaselineServer, BaselineError> {
    let binaries = ensure_installed(Baseline::Postgres, find_postgres)?;
    let version = postgres_version(&binaries)?;
    let run_as = if is_root() {
        Some(postgres_user()?)
    } else {
        None
    };
    let dir = temp_dir("postgres")?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(io_err(format!(
            "chown {} to postgres",
            dir.path().display()
        )))?;
    }
    let mut server = BaselineServer::new(Baseline::Postgres, version, dir, "postgres.log");
    let data = server.dir().join("data");
    let mut initdb = Command::new(&binaries.initdb);
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", PG_USER, "-A", "trust", "-E", "UTF8", "--locale=C"])
        // Only initdb's own final sync of the fresh files; the server runs
        // with fsync on.
        .arg("--no-sync")
        .current_dir(server.dir());
    as_user(&mut initdb, run_as);
    run_checked(initdb)?;
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        let mut command = Command::new(&binaries.postgres);
        command.arg("-D").arg(&data);
        for setting in postgres_settings(port, server.dir()) {
            command.arg("-c").arg(setting);
        }
        as_user(&mut command, run_as);
        if server.launch(command, port)? {
            return Ok(server);
        }
    }
    Err(port_race(&server))
}

/// Everything not listed is PostgreSQL's default (`initdb -A trust`: trust
/// authentication on loopback and the unix socket).
fn postgres_settings(port: u16, dir: &Path) -> Vec<String> {
    vec![
        format!("port={port}"),
        "listen_addresses=127.0.0.1".to_owned(),
        format!("unix_socket_directories={}", dir.display()),
        format!("max_connections={PG_MAX_CONNECTIONS}"),
        "synchronous_commit=on".to_owned(),
        "fsync=on".to_owned(),
    ]
}

/// `initdb` and `postgres` must be the same release (initdb checks too).
fn postgres_version(binaries: &PgBinaries) -> Result<String, BaselineError> {
    let server = version_output(&binaries.postgres)?;
    let initdb = version_output(&binaries.initdb)?;
    // "postgres (PostgreSQL) 15.18 (Debian ...)" -> "15.18 (Debian ...)".
    let release = |text: &str| {
        text.split_once("(PostgreSQL)")
            .map(|(_, release)| release.trim().to_owned())
    };
    match (release(&server), release(&initdb)) {
        (Some(a), Some(b)) if a == b => Ok(format!("postgres {a}")),
        _ => Err(BaselineError::VersionMismatch {
            first: format!("{}: {}", binaries.postgres.display(), server.trim()),
            second: format!("{}: {}", binaries.initdb.display(), initdb.trim()),
        }),
    }
}

fn as_user(command: &mut Command, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        // std also drops root's supplementary groups when it sets the uid.
        command.uid(uid).gid(gid);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `postgres` system user's (uid, gid), created by Debian's package.
fn postgres_user() -> Result<(u32, u32), BaselineError> {
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: `name` is NUL-terminated; the returned record is read at once,
    // before any other getpw* call could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(BaselineError::NoPostgresUser);
    }
    // SAFETY: non-null, points at libc's static passwd record.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok((uid, gid))
}

fn port_race(server: &BaselineServer) -> BaselineError {
    BaselineError::Exited {
        kind: server.kind,
        status: format!("port already in use at each of {PORT_ATTEMPTS} tries"),
        log: server.log.clone(),
        log_tail: tail_of_file(&server.log),
    }
}

/// A port the OS had free a moment ago (the server binds it next; `launch`
/// retries if another process took it in between).
fn free_port() -> Result<u16, BaselineError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("bind 127.0.0.1:0"))?;
    let port = listener.local_addr().map_err(io_err("local_addr"))?.port();
    Ok(port)
}

fn temp_dir(kind: &str) -> Result<TempDir, BaselineError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("tc-baseline-{kind}-"))
        .tempdir()
        .map_err(io_err(format!(
            "create a temporary directory in {}",
            std::env::temp_dir().display()
        )))?;
    if is_tmpfs(dir.path()) {
        eprintln!(
            "warning: {} is on tmpfs, where fsync costs nothing: set TMPDIR to a directory on the disk",
            dir.path().display()
        );
    }
    Ok(dir)
}

fn is_tmpfs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into `stat`; zeroed is a valid statfs.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated, `stat` is a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    let is_tmpfs = rc == 0 && stat.f_type as i64 == TMPFS_MAGIC;
    is_tmpfs
}

// ---- Finding and installing the binaries -------------------------------

const SEARCH_DIRS: [&str; 4] = ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"];

fn find_redis() -> Option<PathBuf> {
    find_executable("redis-server")
}

/// Debian's `/usr/lib/postgresql/<major>/bin` (newest major first), else
/// `initdb` on PATH with `postgres` beside its real path (initdb runs the
/// `postgres` next to itself). `pg_ctl` is not used: we run `postgres`
/// ourselves so that we own its process.
fn find_postgres() -> Option<PgBinaries> {
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    majors.sort_by_key(|&(major, _)| std::cmp::Reverse(major));
    for (_, bin) in majors {
        let (initdb, postgres) = (bin.join("initdb"), bin.join("postgres"));
        if is_executable(&initdb) && is_executable(&postgres) {
            return Some(PgBinaries { initdb, postgres });
        }
    }
    let initdb = fs::canonicalize(find_executable("initdb")?).ok()?;
    let postgres = initdb.with_file_name("postgres");
    is_executable(&postgres).then_some(PgBinaries { initdb, postgres })
}

fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SEARCH_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn where_looked(kind: Baseline) -> String {
    match kind {
        Baseline::Redis => format!("PATH and {}", SEARCH_DIRS.join(", ")),
        Baseline::Postgres => "/usr/lib/postgresql/*/bin, and PATH for initdb".to_owned(),
    }
}

fn binary_name(kind: Baseline) -> &'static str {
    match kind {
        Baseline::Redis => "redis-server",
        Baseline::Postgres => "PostgreSQL's initdb and postgres",
    }
}

/// `find()`, or as root `apt-get install -y <package>` then `find()`;
/// otherwise an error naming the package to install.
fn ensure_installed<T>(kind: Baseline, find: fn() -> Option<T>) -> Result<T, BaselineError> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let package = kind.package();
    if !is_root() {
        return Err(BaselineError::Missing {
            binary: binary_name(kind),
            looked: where_looked(kind),
            remedy: format!(
                "install it as root with `apt-get install -y {package}` (Debian/Ubuntu), \
                 or run tc-bench as root to have it installed"
            ),
        });
    }
    let _installing = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = find() {
        return Ok(found);
    }
    apt_install(package)?;
    find().ok_or_else(|| BaselineError::Missing {
        binary: binary_name(kind),
        looked: where_looked(kind),
        remedy: format!("even after `apt-get install -y {package}`"),
    })
}

fn apt_install(package: &str) -> Result<(), BaselineError> {
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        command
    };
    eprintln!("{package} is missing: running `apt-get install -y {package}`");
    if run_checked(apt(&["install", "-y", package])).is_ok() {
        return Ok(());
    }
    eprintln!("install failed: running `apt-get update`, then installing again");
    run_checked(apt(&["update"]))?;
    run_checked(apt(&["install", "-y", package]))?;
    Ok(())
}

/// Runs to completion; a non-zero exit is an error carrying stderr's tail.
fn run_checked(mut command: Command) -> Result<std::process::Output, BaselineError> {
    let output = command.output().map_err(|source| BaselineError::Spawn {
        command: describe(&command),
        source,
    })?;
    if !output.status.success() {
        let mut text = output.stderr.clone();
        if text.is_empty() {
            text.clone_from(&output.stdout);
        }
        return Err(BaselineError::Command {
            command: describe(&command),
            status: output.status.to_string(),
            stderr_tail: tail(&String::from_utf8_lossy(&text)),
        });
    }
    Ok(output)
}

fn version_output(binary: &Path) -> Result<String, BaselineError> {
    let mut command = Command::new(binary);
    command.arg("--version");
    let output = run_checked(command)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}

/// The last `TAIL_BYTES_MAX` bytes of `text`, from a line start.
fn tail(text: &str) -> String {
    let text = text.trim_end();
    if text.len() <= TAIL_BYTES_MAX {
        return text.to_owned();
    }
    let mut start = text.len() - TAIL_BYTES_MAX;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    cut.split_once('\n')
        .map_or(cut, |(_, rest)| rest)
        .to_owned()
}

fn tail_of_file(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes)),
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

// ---- Readiness probes (blocking, so `start` needs no runtime) ----------

fn probe_stream(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|err| err.to_string())?;
    Ok(stream)
}

/// `PING` answered `+PONG` (not `-LOADING`).
fn probe_redis(addr: SocketAddr) -> Result<(), String> {
    let mut stream = probe_stream(addr)?;
    stream
        .write_all(b"PING\r\n")
        .map_err(|err| format!("send PING: {err}"))?;
    let mut reply = [0u8; 64];
    let read = stream
        .read(&mut reply)
        .map_err(|err| format!("read PING reply: {err}"))?;
    let reply = String::from_utf8_lossy(&reply[..read]);
    if reply.starts_with("+PONG") {
        Ok(())
    } else {
        Err(format!("PING answered {:?}", reply.trim_end()))
    }
}

/// A protocol-3 startup as `PG_USER` reaches ReadyForQuery (not the
/// "database system is starting up" error).
fn probe_postgres(addr: SocketAddr) -> Result<(), String> {
    let mut stream = probe_stream(addr)?;
    let mut body = 196_608u32.to_be_bytes().to_vec(); // protocol 3.0
    for (key, value) in [("user", PG_USER), ("database", PG_DATABASE)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let length = u32::try_from(body.len() + 4).expect("short startup message");
    let mut message = length.to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    stream
        .write_all(&message)
        .map_err(|err| format!("send startup: {err}"))?;
    loop {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .map_err(|err| format!("read reply: {err}"))?;
        let length = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes"));
        let length = (length as usize).saturating_sub(4);
        if length > 1 << 20 {
            return Err(format!("implausible message length {length}"));
        }
        let mut payload = vec![0u8; length];
        stream
            .read_exact(&mut payload)
            .map_err(|err| format!("read reply: {err}"))?;
        match header[0] {
            b'Z' => {
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]); // Terminate
                return Ok(());
            }
            b'E' => return Err(pg_error_message(&payload)),
            b'R' if payload.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err("server asks for a password (expected trust)".to_owned());
            }
            _ => {}
        }
    }
}

/// The `M` (message) field of an ErrorResponse.
fn pg_error_message(payload: &[u8]) -> String {
    payload
        .split(|&byte| byte == 0)
        .find_map(|field| field.strip_prefix(b"M"))
        .map_or_else(
            || "error response".to_owned(),
            |message| String::from_utf8_lossy(message).into_owned(),
        )
}

// ---- Workloads ---------------------------------------------------------

/// One workload run: counts and latencies of the measured window only.
#[derive(Debug)]
pub struct BaselineRun {
    /// Operations started inside the measured window (each completed).
    pub ops: u64,
    /// The measured window.
    pub elapsed: Duration,
    /// Per-operation latency, µs (`report::latency_histogram`).
    pub latency: Histogram<u64>,
    /// CPU use in the measured window (the server's process tree and the
    /// bench's client threads); `None` where `/proc` cannot tell.
    pub cpu: Option<CpuUse>,
}

/// `writers` connections, each with exactly one request outstanding at a
/// time, for `warmup` then `duration` (only the measured window counts).
/// `counter` checks at the end that the counter equals the number of
/// completed increments (warm-up included).
pub async fn run(
    server: &BaselineServer,
    workload: Workload,
    writers: usize,
    value_bytes: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<BaselineRun, BaselineError> {
    assert!(writers >= 1, "at least one writer");
    assert!(value_bytes >= 1, "values of at least one byte");
    assert!(!duration.is_zero(), "a measured window");
    if server.kind == Baseline::Postgres && writers > PG_WRITERS_MAX {
        return Err(BaselineError::TooManyWriters {
            kind: server.kind,
            writers,
            writers_max: PG_WRITERS_MAX,
        });
    }
    let mut control = Session::connect(server, workload).await?;
    control.prepare(workload, writers, value_bytes).await?;
    let mut sessions = Vec::with_capacity(writers);
    for _ in 0..writers {
        sessions.push(Session::connect(server, workload).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let measure_start = Instant::now() + warmup;
    let window = Window {
        measure_start,
        end: measure_start + duration,
    };
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(writer, session)| {
            let stop = Arc::clone(&stop);
            tokio::spawn(writer_loop(
                session,
                writer,
                workload,
                value_bytes,
                window,
                stop,
            ))
        })
        .collect();
    let party = server.pid().map(ServerParty::ProcessTree);
    tokio::time::sleep_until(window.measure_start.into()).await;
    let cpu_before = party.and_then(CpuSample::take);
    tokio::time::sleep_until(window.end.into()).await;
    let cpu_after = party.and_then(CpuSample::take);
    let mut latency = report::latency_histogram();
    let (mut ops, mut completed) = (0u64, 0u64);
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(tally)) => {
                ops += tally.ops;
                completed += tally.completed;
                latency.add(&tally.latency).expect("same histogram bounds");
            }
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(join) => {
                stop.store(true, Ordering::Relaxed);
                first_error.get_or_insert(BaselineError::Task(join.to_string()));
            }
        }
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    if workload == Workload::Counter {
        let counter = control.counter().await?;
        if u64::try_from(counter).ok() != Some(completed) {
            return Err(BaselineError::Check {
                kind: server.kind,
                what: "counter after the run".to_owned(),
                found: counter.to_string(),
                expected: format!("{completed} (increments acknowledged)"),
            });
        }
    }
    Ok(BaselineRun {
        ops,
        elapsed: duration,
        latency,
        cpu: cpu_before
            .zip(cpu_after)
            .and_then(|(before, after)| after.since(&before, ops)),
    })
}

#[derive(Clone, Copy, Debug)]
struct Window {
    measure_start: Instant,
    end: Instant,
}

struct Tally {
    ops: u64,
    completed: u64,
    latency: Histogram<u64>,
}

async fn writer_loop(
    mut session: Session,
    writer: usize,
    workload: Workload,
    value_bytes: usize,
    window: Window,
    stop: Arc<AtomicBool>,
) -> Result<Tally, BaselineError> {
    let mut rng = Rng::new(writer as u64);
    let mut value = vec![0u8; value_bytes];
    let key = format!("k{writer}");
    let mut tally = Tally {
        ops: 0,
        completed: 0,
        latency: report::latency_histogram(),
    };
    loop {
        let started = Instant::now();
        if started >= window.end || stop.load(Ordering::Relaxed) {
            return Ok(tally);
        }
        let result = session
            .operate(workload, writer, &key, &mut rng, &mut value)
            .await;
        if let Err(err) = result {
            stop.store(true, Ordering::Relaxed);
            return Err(err);
        }
        tally.completed += 1;
        if started >= window.measure_start {
            tally.ops += 1;
            report::record_latency(&mut tally.latency, started.elapsed());
        }
    }
}

/// One client connection, with the statement its workload runs prepared.
enum Session {
    Redis {
        connection: redis::aio::MultiplexedConnection,
    },
    Postgres {
        client: tokio_postgres::Client,
        statement: tokio_postgres::Statement,
    },
}

impl Session {
    async fn connect(
        server: &BaselineServer,
        workload: Workload,
    ) -> Result<Session, BaselineError> {
        let addr = server.addr;
        match server.kind {
            Baseline::Redis => {
                let url = format!("redis://{addr}/");
                let client = redis::Client::open(url.as_str()).map_err(redis_err(url.clone()))?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(10)))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let connection = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(redis_err(format!("connect {url}")))?;
                Ok(Session::Redis { connection })
            }
            Baseline::Postgres => {
                let mut config = tokio_postgres::Config::new();
                config
                    .host(addr.ip().to_string())
                    .port(addr.port())
                    .user(PG_USER)
                    .dbname(PG_DATABASE)
                    .connect_timeout(Duration::from_secs(10));
                let connect = format!("connect {addr} as {PG_USER}");
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(pg_err(&connect))?;
                // Ends when `client` drops; errors reach the client's calls.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                if workload == Workload::Counter {
                    // The table must exist before the statement is prepared.
                    client
                        .batch_execute(PG_CREATE_COUNTER)
                        .await
                        .map_err(pg_err(PG_CREATE_COUNTER))?;
                } else {
                    client
                        .batch_execute(PG_CREATE_KV)
                        .await
                        .map_err(pg_err(PG_CREATE_KV))?;
                }
                let query = pg_statement(workload);
                let statement = client.prepare(query).await.map_err(pg_err(query))?;
                Ok(Session::Postgres { client, statement })
            }
        }
    }

    /// Loads what the workload reads or overwrites: keys / rows
    /// `0..max(READ_KEYS, writers)`, or the counter reset to 0.
    async fn prepare(
        &mut self,
        workload: Workload,
        writers: usize,
        value_bytes: usize,
    ) -> Result<(), BaselineError> {
        let keys = u32::try_from(writers).unwrap_or(u32::MAX).max(READ_KEYS);
        let mut rng = Rng::new(u64::MAX);
        match self {
            Session::Redis { connection } => {
                if workload == Workload::Counter {
                    return redis::cmd("SET")
                        .arg("counter")
                        .arg(0)
                        .query_async::<()>(connection)
                        .await
                        .map_err(redis_err("SET counter 0"));
                }
                for first in (0..keys).step_by(LOAD_BATCH as usize) {
                    let mut mset = redis::cmd("MSET");
                    for key in first..keys.min(first + LOAD_BATCH) {
                        let mut value = vec![0u8; value_bytes];
                        rng.fill(&mut value);
                        mset.arg(format!("k{key}")).arg(value);
                    }
                    mset.query_async::<()>(connection)
                        .await
                        .map_err(redis_err(format!("MSET k{first}..")))?;
                }
                Ok(())
            }
            Session::Postgres { client, .. } => {
                if workload == Workload::Counter {
                    return client
                        .batch_execute(PG_RESET_COUNTER)
                        .await
                        .map_err(pg_err(PG_RESET_COUNTER));
                }
                for first in (0..keys).step_by(LOAD_BATCH as usize) {
                    let last = keys.min(first + LOAD_BATCH);
                    let ks: Vec<i32> = (first..last).map(|k| k as i32).collect();
                    let vs: Vec<Vec<u8>> = ks
                        .iter()
                        .map(|_| {
                            let mut value = vec![0u8; value_bytes];
                            rng.fill(&mut value);
                            value
                        })
                        .collect();
                    client
                        .execute(PG_LOAD_KV, &[&ks, &vs])
                        .await
                        .map_err(pg_err(PG_LOAD_KV))?;
                }
                Ok(())
            }
        }
    }

    async fn counter(&mut self) -> Result<i64, BaselineError> {
        match self {
            Session::Redis { connection } => redis::cmd("GET")
                .arg("counter")
                .query_async::<i64>(connection)
                .await
                .map_err(redis_err("GET counter")),
            Session::Postgres { client, .. } => {
                let row = client
                    .query_one(PG_READ_COUNTER, &[])
                    .await
                    .map_err(pg_err(PG_READ_COUNTER))?;
                row.try_get::<_, i64>(0).map_err(pg_err(PG_READ_COUNTER))
            }
        }
    }

    /// One request, awaited: the only one outstanding on this connection.
    async fn operate(
        &mut self,
        workload: Workload,
        writer: usize,
        key: &str,
        rng: &mut Rng,
        value: &mut [u8],
    ) -> Result<(), BaselineError> {
        let kind = self.kind();
        let missing = |what: String| BaselineError::Check {
            kind,
            what,
            found: "nothing".to_owned(),
            expected: "a loaded key".to_owned(),
        };
        match (self, workload) {
            (Session::Redis { connection }, Workload::Commit) => {
                rng.fill(value);
                redis::cmd("SET")
                    .arg(key)
                    .arg(&*value)
                    .query_async::<()>(connection)
                    .await
                    .map_err(redis_err(format!("SET {key}")))
            }
            (Session::Redis { connection }, Workload::Counter) => redis::cmd("INCR")
                .arg("counter")
                .query_async::<i64>(connection)
                .await
                .map(drop)
                .map_err(redis_err("INCR counter")),
            (Session::Redis { connection }, Workload::Read) => {
                let read_key = format!("k{}", rng.below(READ_KEYS));
                let found = redis::cmd("GET")
                    .arg(&read_key)
                    .query_async::<Option<Vec<u8>>>(connection)
                    .await
                    .map_err(redis_err(format!("GET {read_key}")))?;
                found
                    .map(drop)
                    .ok_or_else(|| missing(format!("GET {read_key}")))
            }
            (Session::Postgres { client, statement }, Workload::Commit) => {
                rng.fill(value);
                let row = i32::try_from(writer).expect("writers fit i32");
                let value: &[u8] = value;
                let updated = client
                    .execute(statement, &[&value, &row])
                    .await
                    .map_err(pg_err(PG_COMMIT))?;
                expect_one_row(kind, updated, &format!("{PG_COMMIT} (k = {row})"))
            }
            (Session::Postgres { client, statement }, Workload::Counter) => {
                let updated = client
                    .execute(statement, &[])
                    .await
                    .map_err(pg_err(PG_INCREMENT))?;
                expect_one_row(kind, updated, PG_INCREMENT)
            }
            (Session::Postgres { client, statement }, Workload::Read) => {
                let row = rng.below(READ_KEYS) as i32;
                let found = client
                    .query_opt(statement, &[&row])
                    .await
                    .map_err(pg_err(PG_READ))?;
                found
                    .map(drop)
                    .ok_or_else(|| missing(format!("{PG_READ} (k = {row})")))
            }
        }
    }

    fn kind(&self) -> Baseline {
        match self {
            Session::Redis { .. } => Baseline::Redis,
            Session::Postgres { .. } => Baseline::Postgres,
        }
    }
}

fn pg_statement(workload: Workload) -> &'static str {
    match workload {
        Workload::Commit => PG_COMMIT,
        Workload::Counter => PG_INCREMENT,
        Workload::Read => PG_READ,
    }
}

fn expect_one_row(kind: Baseline, updated: u64, query: &str) -> Result<(), BaselineError> {
    if updated == 1 {
        return Ok(());
    }
    Err(BaselineError::Check {
        kind,
        what: format!("rows updated by `{query}`"),
        found: updated.to_string(),
        expected: "1".to_owned(),
    })
}

/// SplitMix64: cheap random values and keys, one per writer.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_5EED)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u32) -> u32 {
        assert!(n > 0);
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

// ---- The `baseline` subcommand -----------------------------------------

#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Server to start and measure: redis or postgres; repeat (or
    /// comma-separate) for several, run one after the other.
    #[arg(long, required = true, value_delimiter = ',')]
    pub against: Vec<Baseline>,
    /// Workloads, comma-separated or repeated; one run each.
    #[arg(long, value_delimiter = ',', default_value = "commit")]
    pub workload: Vec<Workload>,
    /// Client connection counts, comma-separated; one run each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "64",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(WRITERS_MAX)),
    )]
    pub writers: Vec<u32>,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub seconds: f64,
    /// Warm-up seconds per run, excluded from every number (0 for none).
    #[arg(long, default_value_t = 2.0, value_parser = parse_warmup_seconds, allow_negative_numbers = true)]
    pub warmup_seconds: f64,
    /// Bytes of each written value (`commit`) and of each loaded value.
    #[arg(
        long,
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=VALUE_BYTES_MAX),
    )]
    pub value_bytes: u64,
    /// Print one JSON object per run on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("{text} must be above 0 and at most 86400"));
    }
    Ok(seconds)
}

fn parse_warmup_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && (0.0..=86_400.0).contains(&seconds)) {
        return Err(format!("{text} must be between 0 and 86400"));
    }
    Ok(seconds)
}

/// One run: one server, one workload, one writer count. Serialized as one
/// JSON line; counts cover the measured window only.
#[derive(Clone, Debug, Serialize)]
pub struct BaselineRow {
    /// Always "baseline".
    pub bench: &'static str,
    pub workload: &'static str,
    pub baseline: &'static str,
    /// e.g. "redis 7.0.15".
    pub server_version: String,
    pub writers: u32,
    pub value_bytes: u64,
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl BaselineRow {
    fn of(
        server: &BaselineServer,
        workload: Workload,
        args: &BaselineArgs,
        writers: u32,
        run: &BaselineRun,
    ) -> BaselineRow {
        let summary = LatencySummary::of(&run.latency);
        BaselineRow {
            bench: "baseline",
            workload: workload.as_str(),
            baseline: server.kind().as_str(),
            server_version: server.version().to_owned(),
            writers,
            value_bytes: args.value_bytes,
            seconds: run.elapsed.as_secs_f64(),
            warmup_seconds: args.warmup_seconds,
            ops: run.ops,
            ops_per_sec: run.ops as f64 / run.elapsed.as_secs_f64(),
            p50_us: summary.p50_us,
            p99_us: summary.p99_us,
            p999_us: summary.p999_us,
            max_us: summary.max_us,
        }
    }
}

pub fn table(rows: &[BaselineRow]) -> String {
    const HEADER: [&str; 8] = [
        "baseline", "workload", "writers", "ops/s", "p50 us", "p99 us", "p999 us", "max us",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.baseline.to_owned(),
                row.workload.to_owned(),
                row.writers.to_string(),
                format!("{:.0}", row.ops_per_sec),
                row.p50_us.to_string(),
                row.p99_us.to_string(),
                row.p999_us.to_string(),
                row.max_us.to_string(),
            ]
        })
        .collect();
    report::render_table(&HEADER, &cells)
}

/// The subcommand: each server in turn, started once for all its runs and
/// stopped before the next starts.
pub fn run_bench(args: &BaselineArgs) -> Result<(), BaselineError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err("build the tokio runtime"))?;
    let mut rows = Vec::new();
    for &kind in &args.against {
        let server = BaselineServer::start(kind)?;
        eprintln!(
            "{} (pid {}) on {}, data in {}",
            server.version(),
            server.pid().unwrap_or(0),
            server.addr(),
            server.dir().display()
        );
        for &workload in &args.workload {
            for &writers in &args.writers {
                eprintln!(
                    "{kind} {workload}: {writers} writers, warm-up {} s, measuring {} s",
                    args.warmup_seconds, args.seconds
                );
                let result = runtime.block_on(run(
                    &server,
                    workload,
                    writers as usize,
                    args.value_bytes as usize,
                    Duration::from_secs_f64(args.warmup_seconds),
                    Duration::from_secs_f64(args.seconds),
                ))?;
                let row = BaselineRow::of(&server, workload, args, writers, &result);
                if args.json {
                    println!("{}", report::to_json_line(&row));
                }
                rows.push(row);
            }
        }
    }
    if !args.json {
        print!("{}", table(&rows));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(baseline: &'static str, workload: &'static str) -> BaselineRow {
        BaselineRow {
            bench: "baseline",
            workload,
            baseline,
            server_version: "redis 7.0.15".to_owned(),
            writers: 64,
            value_bytes: 64,
            seconds: 10.0,
            warmup_seconds: 2.0,
            ops: 700_004,
            ops_per_sec: 70_000.4,
            p50_us: 880,
            p99_us: 1900,
            p999_us: 4100,
            max_us: 12_000,
        }
    }

    #[test]
    fn names_are_the_command_line_values() {
        assert_eq!(Baseline::Redis.to_string(), "redis");
        assert_eq!(Baseline::Postgres.to_string(), "postgres");
        for workload in [Workload::Commit, Workload::Counter, Workload::Read] {
            let parsed = <Workload as clap::ValueEnum>::from_str(workload.as_str(), false);
            assert_eq!(parsed, Ok(workload));
        }
    }

    #[test]
    fn table_has_the_documented_columns_aligned() {
        let text = table(&[row("redis", "commit"), row("postgres", "counter")]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let header: Vec<&str> = lines[0]
            .split("  ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(
            header,
            [
                "baseline", "workload", "writers", "ops/s", "p50 us", "p99 us", "p999 us", "max us"
            ]
        );
        assert!(lines[1].starts_with("redis "));
        assert!(lines[1].contains(" 70000 "));
        assert!(lines[2].starts_with("postgres "));
        assert_eq!(lines[1].len(), lines[2].len(), "columns line up");
    }

    #[test]
    fn json_line_carries_the_documented_fields() {
        let line = report::to_json_line(&row("postgres", "read"));
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        for key in [
            "bench",
            "workload",
            "baseline",
            "writers",
            "value_bytes",
            "seconds",
            "ops",
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
        ] {
            assert!(value.get(key).is_some(), "missing {key}: {line}");
        }
        assert_eq!(value["bench"], "baseline");
        assert_eq!(value["baseline"], "postgres");
        assert_eq!(value["workload"], "read");
        assert_eq!(value["ops"], 700_004);
    }

    #[test]
    fn server_configs_are_durable_and_local() {
        let conf = redis_config(6400, Path::new("/tmp/x"));
        for line in [
            "bind 127.0.0.1",
            "port 6400",
            "dir \"/tmp/x\"",
            "appendonly yes",
            "appendfsync always",
            "save \"\"",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} missing in {conf}");
        }
        let settings = postgres_settings(5400, Path::new("/tmp/y"));
        for setting in [
            "port=5400",
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=/tmp/y",
            "synchronous_commit=on",
            "fsync=on",
        ] {
            assert!(settings.iter().any(|s| s == setting), "{setting} missing");
        }
    }

    #[test]
    fn tails_keep_the_end_from_a_line_start() {
        assert_eq!(tail("short\n"), "short");
        let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let cut = tail(&long);
        assert!(cut.len() <= TAIL_BYTES_MAX);
        assert!(cut.starts_with("line "), "{cut:.20}");
        assert!(cut.ends_with("line 999"));
    }

    #[test]
    fn postgres_error_responses_yield_their_message() {
        let payload = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0";
        assert_eq!(
            pg_error_message(payload),
            "the database system is starting up"
        );
    }

    #[test]
    fn rng_stays_in_range_and_fills_odd_lengths() {
        let mut rng = Rng::new(1);
        assert!((0..10_000).all(|_| rng.below(READ_KEYS) < READ_KEYS));
        let mut bytes = [0u8; 13];
        rng.fill(&mut bytes);
        assert!(bytes.iter().any(|&b| b != 0));
    }

    #[test]
    fn seconds_parse_and_bad_ones_are_rejected() {
        assert_eq!(parse_seconds("1.5"), Ok(1.5));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("x").is_err());
        assert_eq!(parse_warmup_seconds("0"), Ok(0.0));
        assert!(parse_warmup_seconds("-1").is_err());
    }
}
