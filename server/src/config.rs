//! The server's settings: defaults, the TOML file, and their checks.
//!
//! Owns: every setting's name, default and valid range
//! (`docs/configuration.md` lists them; keep the two in step), and what
//! is derived from them: the store's settings and the server's runtime.
//! Invariant: a `ServerConfig` that passed `validate` can start a server;
//! a bad file or value is an error naming the key and the expected form,
//! never a half-configured server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tc_heap_store::{Backend, BackendChoice, StoreConfig};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9510";
pub const DEFAULT_DATA_DIR: &str = "./tc-data";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the gRPC service.
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint; none to turn it off.
    pub metrics_listen: Option<SocketAddr>,
    /// The data directory (created if absent).
    pub data_dir: PathBuf,
    /// Clients send a heartbeat at least this often.
    pub heartbeat_interval_ms: u64,
    /// A session that sends nothing for this long is closed and its locks
    /// are freed.
    pub session_timeout_ms: u64,
    /// Requests one session may have in flight at once.
    pub max_in_flight: u32,
    /// Largest message a client may send, in bytes.
    pub max_message_bytes: u64,
    /// Largest transaction, in bytes.
    pub max_transaction_bytes: u64,
    /// Messages queued for a session that does not read them; beyond this
    /// the session is closed as too slow.
    pub session_send_queue: u32,
    /// Budget of the object cache, in bytes.
    pub cache_bytes: u64,
    /// Checkpoint after this many WAL bytes.
    pub checkpoint_wal_bytes: u64,
    /// Checkpoint at least this often while there are changes, in seconds.
    pub checkpoint_interval_secs: u64,
    /// Size of each WAL segment file, in bytes.
    pub wal_segment_bytes: u64,
    /// WAL writes (each one write + one fdatasync) kept in flight at once.
    pub wal_writes_in_flight: u32,
    /// How the WAL writes: `auto` (io_uring if the kernel allows it, else
    /// portable, and the log says why), `uring` (or refuse to start) or
    /// `portable` (`pwrite` + `fdatasync`).
    pub wal_backend: String,
    /// Threads running sessions and requests; 0 = one fewer than the CPUs
    /// (at least one), leaving a CPU to the WAL writer and disk work
    /// (`runtime_workers`).
    pub worker_threads: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("constant address"),
            metrics_listen: Some("127.0.0.1:9511".parse().expect("constant address")),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            heartbeat_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            max_in_flight: 4_096,
            max_message_bytes: 4 << 20,
            max_transaction_bytes: store.max_transaction_bytes as u64,
            session_send_queue: 65_536,
            cache_bytes: store.cache_bytes as u64,
            checkpoint_wal_bytes: store.checkpoint_wal_bytes,
            checkpoint_interval_secs: store.checkpoint_interval.as_secs(),
            wal_segment_bytes: store.wal.segment_bytes,
            wal_writes_in_flight: store.wal.writes_in_flight as u32,
            wal_backend: "auto".to_string(),
            worker_threads: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("setting `{key}` = {value}: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl ServerConfig {
    /// Reads a TOML file; settings it does not name keep their defaults.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ServerConfig::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<ServerConfig, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(
            key: &'static str,
            value: u64,
            ok: bool,
            expected: &'static str,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    value: value.to_string(),
                    expected,
                })
            }
        }
        let c = self;
        check(
            "heartbeat_interval_ms",
            c.heartbeat_interval_ms,
            (10..=600_000).contains(&c.heartbeat_interval_ms),
            "expected 10 to 600000 milliseconds",
        )?;
        check(
            "session_timeout_ms",
            c.session_timeout_ms,
            c.session_timeout_ms >= 2 * c.heartbeat_interval_ms
                && c.session_timeout_ms <= 3_600_000,
            "expected at least twice heartbeat_interval_ms and at most 3600000",
        )?;
        check(
            "max_in_flight",
            u64::from(c.max_in_flight),
            (1..=1_000_000).contains(&c.max_in_flight),
            "expected 1 to 1000000",
        )?;
        check(
            "max_transaction_bytes",
            c.max_transaction_bytes,
            (1024..=64 << 20).contains(&c.max_transaction_bytes),
            "expected 1 KiB to 64 MiB",
        )?;
        check(
            "max_message_bytes",
            c.max_message_bytes,
            c.max_message_bytes >= c.max_transaction_bytes + 1024
                && c.max_message_bytes <= 128 << 20,
            "expected at least max_transaction_bytes + 1024 and at most 128 MiB",
        )?;
        check(
            "session_send_queue",
            u64::from(c.session_send_queue),
            (16..=10_000_000).contains(&c.session_send_queue),
            "expected 16 to 10000000",
        )?;
        check(
            "cache_bytes",
            c.cache_bytes,
            c.cache_bytes >= 1 << 20,
            "expected at least 1 MiB",
        )?;
        check(
            "checkpoint_wal_bytes",
            c.checkpoint_wal_bytes,
            c.checkpoint_wal_bytes >= 1 << 20,
            "expected at least 1 MiB",
        )?;
        check(
            "checkpoint_interval_secs",
            c.checkpoint_interval_secs,
            c.checkpoint_interval_secs >= 1,
            "expected at least 1 second",
        )?;
        check(
            "wal_segment_bytes",
            c.wal_segment_bytes,
            (1 << 20..=1 << 30).contains(&c.wal_segment_bytes)
                && c.wal_segment_bytes.is_multiple_of(4096),
            "expected 1 MiB to 1 GiB, a multiple of 4096",
        )?;
        check(
            "wal_writes_in_flight",
            u64::from(c.wal_writes_in_flight),
            (1..=8).contains(&c.wal_writes_in_flight),
            "expected 1 to 8",
        )?;
        if c.wal_backend_choice().is_none() {
            return Err(ConfigError::Invalid {
                key: "wal_backend",
                value: format!("{:?}", c.wal_backend),
                expected: "expected \"auto\", \"uring\" or \"portable\"",
            });
        }
        check(
            "worker_threads",
            u64::from(c.worker_threads),
            c.worker_threads <= 1024,
            "expected 0 (one fewer than the CPUs) to 1024",
        )?;
        if c.wal_segment_bytes < 2 * u64::from(c.wal_record_bytes()) {
            return Err(ConfigError::Invalid {
                key: "wal_segment_bytes",
                value: c.wal_segment_bytes.to_string(),
                expected: "expected at least twice the larger of max_transaction_bytes and 1 MiB",
            });
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    /// The runtime's worker threads: `worker_threads`, or if 0 one fewer
    /// than the CPUs, at least one. A commit wakes the WAL writer thread and
    /// is woken by it; on two CPUs a second worker measured no faster for
    /// commits and 25 µs slower for a lone committer, its wake-ups crossing
    /// CPUs (`docs/benchmarks.md`).
    pub fn runtime_workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get() - 1)
                .max(1),
            n => n as usize,
        }
    }

    /// The tokio runtime to serve with (`runtime_workers` threads).
    pub fn runtime(&self, thread_name: &str) -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.runtime_workers())
            .thread_name(thread_name)
            .enable_all()
            .build()
    }

    /// `wal_backend` as the WAL takes it; `None` if it names no backend.
    fn wal_backend_choice(&self) -> Option<BackendChoice> {
        match self.wal_backend.as_str() {
            "auto" => Some(BackendChoice::Auto),
            name => name.parse::<Backend>().ok().map(BackendChoice::Only),
        }
    }

    /// Largest WAL record: a transaction with its record header, or a store
    /// record of up to 1 MiB (a batch of deletions).
    fn wal_record_bytes(&self) -> u32 {
        (self.max_transaction_bytes + 64).max(1 << 20) as u32
    }

    /// The store's settings derived from these.
    pub fn store_config(&self) -> StoreConfig {
        let mut store = StoreConfig {
            cache_bytes: self.cache_bytes as usize,
            checkpoint_wal_bytes: self.checkpoint_wal_bytes,
            checkpoint_interval: Duration::from_secs(self.checkpoint_interval_secs),
            max_transaction_bytes: self.max_transaction_bytes as usize,
            ..StoreConfig::default()
        };
        store.wal.segment_bytes = self.wal_segment_bytes;
        store.wal.writes_in_flight = self.wal_writes_in_flight as usize;
        store.wal.max_record_bytes = self.wal_record_bytes();
        store.wal.backend = self
            .wal_backend_choice()
            .expect("validate checked wal_backend");
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let config = ServerConfig::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9510");
        assert_eq!(config.data_dir, PathBuf::from("./tc-data"));
        config.validate().unwrap();
        assert_eq!(ServerConfig::from_toml("").unwrap(), config);
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let config =
            ServerConfig::from_toml("listen = \"127.0.0.1:7000\"\nsession_timeout_ms = 5000\n")
                .unwrap();
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.session_timeout_ms, 5000);
        assert_eq!(config.max_in_flight, ServerConfig::default().max_in_flight);
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let err = ServerConfig::from_toml("listne = \"127.0.0.1:7000\"\n").unwrap_err();
        assert!(err.contains("listne"), "{err}");
        let err = ServerConfig::from_toml("max_in_flight = \"many\"\n").unwrap_err();
        assert!(err.contains("max_in_flight"), "{err}");
        let err = ServerConfig::from_toml("listen = \"nowhere\"\n").unwrap_err();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_range() {
        let config = ServerConfig {
            session_timeout_ms: 100,
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("session_timeout_ms") && err.contains("twice"),
            "{err}"
        );
        let config = ServerConfig {
            wal_segment_bytes: 12345,
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("wal_segment_bytes"), "{err}");
        let config = ServerConfig {
            worker_threads: 5000,
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("worker_threads"), "{err}");
        let config = ServerConfig::from_toml("wal_backend = \"aio\"\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("wal_backend") && err.contains("\"aio\"") && err.contains("portable"),
            "{err}"
        );
    }

    #[test]
    fn wal_backend_reaches_the_store() {
        let backend = |text: &str| {
            let config = ServerConfig::from_toml(text).unwrap();
            config.validate().unwrap();
            config.store_config().wal.backend
        };
        assert_eq!(backend(""), BackendChoice::Auto);
        assert_eq!(
            backend("wal_backend = \"portable\"\n"),
            BackendChoice::Only(Backend::Portable)
        );
        assert_eq!(
            backend("wal_backend = \"uring\"\n"),
            BackendChoice::Only(Backend::Uring)
        );
    }

    #[test]
    fn worker_threads_default_to_one_fewer_than_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = ServerConfig::default();
        assert_eq!(config.runtime_workers(), (cpus - 1).max(1));
        let config = ServerConfig::from_toml("worker_threads = 3\n").unwrap();
        assert_eq!(config.runtime_workers(), 3);
    }
}
