//! The Prometheus endpoint: `GET /metrics` in the text exposition format.
//!
//! Owns: the server's own counters and the commit latency histogram
//! (updated on the hot path: atomics only), and the collector that reads
//! the store's, the WAL's and the lock manager's statistics at each scrape.
//! Not: what those statistics mean (their owners document them).
//! Metric names are an interface: add, never rename.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::server::Shared;

/// Locks listed one by one (the most contended ones).
const HOTTEST_LOCKS: usize = 20;

/// Counters and histograms the server updates as it works.
pub struct Metrics {
    pub commits: Counter,
    pub commit_refusals: Counter,
    pub pushes: Counter,
    pub sessions_opened: Counter,
    /// Seconds from a commit's arrival to its acknowledgement.
    pub commit_latency: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            commits: Counter::default(),
            commit_refusals: Counter::default(),
            pushes: Counter::default(),
            sessions_opened: Counter::default(),
            // 50 µs to ~1.6 s.
            commit_latency: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
        }
    }

    pub fn observe_commit(&self, took: Duration) {
        self.commits.inc();
        self.commit_latency.observe(took.as_secs_f64());
    }

    fn registry(self: &Arc<Self>, shared: Weak<Shared>) -> Registry {
        let mut registry = Registry::with_prefix("tc");
        registry.register(
            "commits",
            "Transactions committed (durable, applied, acknowledged)",
            self.commits.clone(),
        );
        registry.register(
            "commit_refusals",
            "Transactions refused (bad or over the limits) or failed",
            self.commit_refusals.clone(),
        );
        registry.register(
            "pushes",
            "Committed transactions pushed to sessions holding their objects",
            self.pushes.clone(),
        );
        registry.register(
            "sessions_opened",
            "Sessions that completed the handshake",
            self.sessions_opened.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "From a commit's arrival to its acknowledgement",
            self.commit_latency.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            shared,
            runtime: tokio::runtime::Handle::current(),
        }));
        registry
    }
}

/// Reads the state of the store and the locks at each scrape.
#[derive(Debug)]
struct StateCollector {
    shared: Weak<Shared>,
    runtime: tokio::runtime::Handle,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let e = &mut encoder;
        let store = shared.store.stats();
        let store_failed = shared.store.failure().is_some();
        gauge(
            e,
            "sessions",
            "Live sessions",
            shared.session_count() as i64,
        )?;
        gauge(
            e,
            "store_failed",
            "1 if the store stopped accepting changes (see the log; restart to recover)",
            i64::from(store_failed),
        )?;
        gauge(
            e,
            "runtime_tasks",
            "Tasks alive in the server's async runtime (sessions, commits, wait timers)",
            self.runtime.metrics().num_alive_tasks() as i64,
        )?;
        gauge(
            e,
            "applied_lsn",
            "Log position up to which everything is durable and applied",
            store.applied_lsn.0 as i64,
        )?;
        gauge(
            e,
            "checkpoint_lsn",
            "Log position of the last checkpoint",
            store.checkpoint_lsn.0 as i64,
        )?;
        counter(
            e,
            "wal_records",
            "Records written to the WAL",
            store.wal.records,
        )?;
        counter(e, "wal_bytes", "Bytes written to the WAL", store.wal.bytes)?;
        counter(
            e,
            "wal_fsyncs",
            "WAL writes made durable (one write + one fdatasync each)",
            store.wal.syncs,
        )?;
        gauge(
            e,
            "wal_bytes_since_checkpoint",
            "WAL bytes a restart would replay",
            (store.applied_lsn.0.saturating_sub(store.checkpoint_lsn.0)) as i64,
        )?;
        counter(
            e,
            "cache_hits",
            "Object reads served from the cache",
            store.cache.hits,
        )?;
        counter(
            e,
            "cache_misses",
            "Object reads that went to the data segments",
            store.cache.misses,
        )?;
        counter(
            e,
            "cache_evictions",
            "Objects evicted from the cache",
            store.cache.evictions,
        )?;
        gauge(
            e,
            "cache_bytes",
            "Approximate bytes of cached objects",
            store.cache.bytes as i64,
        )?;
        gauge(
            e,
            "cache_objects",
            "Cached objects",
            store.cache.objects as i64,
        )?;
        gauge(
            e,
            "cache_dirty_objects",
            "Objects changed since the last checkpoint",
            store.cache.dirty_objects as i64,
        )?;
        gauge(
            e,
            "data_segments",
            "Data segment files",
            store.data_segments as i64,
        )?;
        gauge(
            e,
            "data_live_bytes",
            "Bytes of live object images in the data segments",
            store.data_live_bytes as i64,
        )?;
        gauge(
            e,
            "object_holdings",
            "(object, session) pairs the server pushes changes for",
            shared.holders.len() as i64,
        )?;
        let (locks, hottest) = shared.lock_stats(HOTTEST_LOCKS);
        gauge(
            e,
            "locks_live",
            "Locks with a holder, a queue or waiters",
            locks.locks_live as i64,
        )?;
        gauge(e, "lock_holders", "Lock holds", locks.holders as i64)?;
        gauge(
            e,
            "lock_queued",
            "Lock requests waiting in queues",
            locks.queued as i64,
        )?;
        gauge(
            e,
            "lock_waiters",
            "Threads in Object.wait",
            locks.waiters as i64,
        )?;
        counter(
            e,
            "lock_acquisitions",
            "Lock grants",
            locks.acquisitions_total,
        )?;
        counter(
            e,
            "lock_contended",
            "Lock grants that had to wait in a queue",
            locks.contended_total,
        )?;
        counter(
            e,
            "lock_recalls",
            "Greedy locks recalled",
            locks.recalls_total,
        )?;
        let family = ConstCounter::new(0u64);
        let mut per_lock = e.encode_descriptor(
            "lock_contended_by_lock",
            "Contended grants of the most contended live locks",
            None,
            family.metric_type(),
        )?;
        for (key, counters) in hottest {
            let labels = vec![("lock".to_string(), key.to_string())];
            ConstCounter::new(counters.contended).encode(per_lock.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Serves `/metrics` on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shared: Weak<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let registry = Arc::new(metrics.registry(shared));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(_) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; charset=utf-8",
                        )],
                        "encoding the metrics failed\n".to_string(),
                    )
                        .into_response(),
                }
            }
        }),
    );
    if let Ok(addr) = listener.local_addr() {
        info!("metrics on http://{addr}/metrics");
    }
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!("metrics endpoint: {err}");
    }
}
