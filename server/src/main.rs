//! `tc-server`: runs the server. With no arguments it serves on
//! 127.0.0.1:9510 with its data in `./tc-data`; `--config FILE` and flags
//! override (flags win over the file). SIGTERM or SIGINT stop it in order:
//! in-flight commits finish, a checkpoint is written, exit code 0.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tc_server::{Server, ServerConfig};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "tc-server",
    version,
    about = "tc: a durable, coherent heap shared by JVMs"
)]
struct Args {
    /// TOML settings file (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve on [default: 127.0.0.1:9510].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory, created if absent [default: ./tc-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the Prometheus /metrics endpoint [default: 127.0.0.1:9511].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_metrics")]
    metrics_listen: Option<SocketAddr>,
    /// Do not serve /metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Close a session that sends nothing for this long [default: 10000].
    #[arg(long, value_name = "MS")]
    session_timeout_ms: Option<u64>,
    /// Clients' heartbeat interval [default: 1000].
    #[arg(long, value_name = "MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Threads running sessions; 0 = one fewer than the CPUs [default: 0].
    #[arg(long, value_name = "N")]
    worker_threads: Option<u32>,
}

impl Args {
    fn config(&self) -> Result<ServerConfig, tc_server::ConfigError> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_file(path)?,
            None => ServerConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if self.no_metrics {
            config.metrics_listen = None;
        } else if let Some(addr) = self.metrics_listen {
            config.metrics_listen = Some(addr);
        }
        if let Some(ms) = self.session_timeout_ms {
            config.session_timeout_ms = ms;
        }
        if let Some(ms) = self.heartbeat_interval_ms {
            config.heartbeat_interval_ms = ms;
        }
        if let Some(n) = self.worker_threads {
            config.worker_threads = n;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match args.config() {
        Ok(config) => config,
        Err(err) => {
            error!("{err}");
            return ExitCode::from(2);
        }
    };
    info!(
        "tc-server starting: listen {}, data dir {}, worker threads: {}",
        config.listen,
        config.data_dir.display(),
        config.runtime_workers()
    );
    let runtime = match config.runtime("tc-server") {
        Ok(runtime) => runtime,
        Err(err) => {
            error!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => {
            info!("tc-server stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            error!("{err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServerConfig) -> Result<(), tc_server::ServerError> {
    let data_dir = config.data_dir.clone();
    let server = Server::bind(config).await?;
    info!(
        "serving on {}, data dir {}",
        server.local_addr(),
        data_dir.display()
    );
    server.run(stop_signal()).await
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop with kill -9 only");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
