//! The api's ops listener (`METRICS_ADDR`, never the public port): `GET
//! /metrics` renders what is in memory, and a background task samples the
//! gauges every few seconds (queues per kind from the job rows' partial
//! indexes and the streams, the last invariants run), so a scrape does no
//! I/O and a burst of scrapes costs Postgres nothing.
//!
//! Every kind is written on every sample, zeros included, so a gauge goes
//! back to 0 when its count does. When sampling fails the gauges are not
//! touched: they are dropped by the recorder once older than
//! `shared::telemetry::GAUGE_IDLE` (a missing series rather than a stale one), and
//! `kobatela_metrics_sample_age_seconds`, computed at scrape time, grows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use shared::jobs::{Queue, stats};
use sqlx::PgPool;

/// How often the sampler reads the queues and the invariants.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Installs the process's recorder: buckets, and gauges that vanish when
/// nothing writes them any more.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(shared::telemetry::LATENCY_BUCKETS)?
        .idle_timeout(MetricKindMask::GAUGE, Some(shared::telemetry::GAUGE_IDLE))
        .install_recorder()?;
    shared::telemetry::describe_metrics();
    Ok(handle)
}

/// What the listener and the sampler share.
pub struct Sampler {
    pool: PgPool,
    queue: Queue,
    handle: PrometheusHandle,
    /// A consumer silent for longer is not counted alive: three block
    /// periods (the bound the worker's `/health` uses) plus the worker's
    /// reporting period.
    alive_within_ms: u64,
    started: Instant,
    /// Milliseconds after `started` of the last complete sample (0: none yet).
    last_ok_ms: AtomicU64,
}

impl Sampler {
    pub fn new(pool: PgPool, queue: Queue, handle: PrometheusHandle, block: Duration) -> Arc<Self> {
        let alive_within_ms = u64::try_from(3 * block.as_millis() + 2_500).unwrap_or(u64::MAX);
        Arc::new(Self { pool, queue, handle, alive_within_ms, started: Instant::now(), last_ok_ms: AtomicU64::new(0) })
    }

    /// Binds `METRICS_ADDR`, serves it and starts the sampler, in the
    /// background; the bound address.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding METRICS_ADDR {addr}"))?;
        let bound = listener.local_addr()?;
        tokio::spawn(self.clone().run());
        let app = Router::new().route("/metrics", get(render)).with_state(self);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "api ops listener stopped");
            }
        });
        Ok(bound)
    }

    async fn run(self: Arc<Self>) {
        let mut failing = false;
        loop {
            match self.sample().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("metrics sampling recovered");
                    }
                    failing = false;
                    let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
                    self.last_ok_ms.store(ms, Ordering::Relaxed);
                }
                Err(e) => {
                    // Logged once per outage, not every tick.
                    if !failing {
                        tracing::warn!(error = %e, "metrics sampling failed; the gauges age out");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// One sample: every gauge of every kind, zeros included.
    async fn sample(&self) -> shared::Result<()> {
        let queues = stats::queues(&self.pool, &self.queue).await?;
        for q in &queues {
            let kind = q.kind;
            for (status, n) in [("queued", q.queued), ("running", q.running), ("dead", q.dead)] {
                metrics::gauge!("kobatela_jobs", "kind" => kind, "status" => status).set(n as f64);
            }
            metrics::gauge!("kobatela_queue_depth", "kind" => kind).set(q.stream_length as f64);
            metrics::gauge!("kobatela_queue_pending", "kind" => kind).set(q.pending as f64);
            metrics::gauge!("kobatela_queue_oldest_queued_seconds", "kind" => kind).set(q.oldest_queued_age_s);
            metrics::gauge!("kobatela_queue_consumers_alive", "kind" => kind)
                .set(q.consumers_alive(self.alive_within_ms) as f64);
        }
        let mut conn = self.pool.acquire().await?;
        if let Some(run) = shared::domain::ops::invariants::latest(&mut conn).await? {
            for inv in &run.invariants {
                metrics::gauge!("kobatela_invariant_violations", "invariant" => inv.name.clone())
                    .set(inv.violations as f64);
            }
            metrics::gauge!("kobatela_invariants_checked_at_seconds").set(run.checked_at.timestamp() as f64);
        }
        Ok(())
    }

    /// Seconds since the last complete sample (since start when none yet).
    fn sample_age(&self) -> f64 {
        let now = self.started.elapsed().as_millis() as f64;
        let last = self.last_ok_ms.load(Ordering::Relaxed) as f64;
        (now - last).max(0.0) / 1000.0
    }
}

async fn render(State(s): State<Arc<Sampler>>) -> impl IntoResponse {
    metrics::gauge!("kobatela_metrics_sample_age_seconds").set(s.sample_age());
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.handle.render())
}
