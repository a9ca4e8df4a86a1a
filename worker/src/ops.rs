//! The worker's ops listener (`WORKER_METRICS_ADDR`): `/health`, which
//! answers 503 when a kind's consumer has not completed a poll of Redis
//! within three block periods, when one has held jobs for three leases and
//! finished none (`crate::progress`), or when Postgres does not answer;
//! and `/metrics`.
//! A background task samples each stream's length and pending count, so a
//! scrape does no I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use shared::jobs::Queue;
use shared::jobs::transport::ConsumerStatus;
use sqlx::PgPool;

#[derive(Clone)]
pub struct Ops {
    pub pool: PgPool,
    pub queue: Queue,
    pub statuses: Vec<Arc<ConsumerStatus>>,
    pub block: Duration,
    pub metrics: PrometheusHandle,
    /// `WORKER_NAME`: the consumer name in every kind's group.
    pub name: String,
    /// Jobs in flight and the last finish, per kind.
    pub progress: Arc<crate::progress::Progress>,
}

/// How often the streams are sampled and the consumers' polls reported.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How often reports of consumers gone for an hour are dropped (in samples).
const FORGET_EVERY_SAMPLES: u64 = 150;

impl Ops {
    /// Binds the listener (port 0: a free one) and serves it in the
    /// background; the address it listens on.
    pub async fn serve(self, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding WORKER_METRICS_ADDR {addr}"))?;
        let bound = listener.local_addr()?;
        tokio::spawn(self.clone().sample_streams());
        let app = axum::Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "worker ops listener stopped");
            }
        });
        Ok(bound)
    }

    /// Stream length and pending count per kind, every few seconds. A
    /// failed sample leaves the gauges as they were; the consumers' own
    /// liveness tells that Redis is gone.
    async fn sample_streams(self) {
        let mut samples: u64 = 0;
        loop {
            // Each consumer's last completed poll, for the api's liveness
            // view (`GET /ops/queues`, `kobatela_queue_consumers_alive`).
            let polls: Vec<(shared::jobs::JobKind, &str, i64)> = self
                .statuses
                .iter()
                .filter_map(|s| s.last_poll().map(|at| (s.kind, self.name.as_str(), at.timestamp_millis())))
                .collect();
            if let Err(e) = self.queue.report_polls(&polls).await {
                tracing::debug!(error = %e, "consumer polls not reported");
            }
            if samples.is_multiple_of(FORGET_EVERY_SAMPLES) {
                let before = chrono::Utc::now().timestamp_millis() - shared::jobs::stats::FORGET_CONSUMER_AFTER_MS;
                for status in &self.statuses {
                    let _ = self.queue.forget_polls_before(status.kind, before).await;
                }
            }
            samples += 1;
            for status in &self.statuses {
                let kind = status.kind.as_str();
                if let Ok(stats) = self.queue.stats(status.kind).await {
                    metrics::gauge!("kobatela_stream_length", "kind" => kind).set(stats.length as f64);
                    metrics::gauge!("kobatela_stream_pending", "kind" => kind).set(stats.pending as f64);
                }
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// A consumer is live when its last poll is at most three block periods old.
    fn consumer_is_live(&self, status: &ConsumerStatus) -> bool {
        let limit = 3 * self.block.as_millis() as i64;
        status.last_poll_age_ms().is_some_and(|age| age <= limit)
    }
}

async fn health(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let postgres =
        tokio::time::timeout(Duration::from_secs(1), sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&ops.pool))
            .await
            .is_ok_and(|r| r.is_ok());
    let mut all_working = true;
    let consumers: Vec<serde_json::Value> = ops
        .statuses
        .iter()
        .map(|s| {
            let progress = ops.progress.view(s.kind);
            let stuck = progress.as_ref().is_some_and(|p| p.stuck);
            all_working &= !stuck;
            json!({
                "kind": s.kind.as_str(),
                "last_poll_at": s.last_poll(),
                "last_poll_age_ms": s.last_poll_age_ms(),
                "live": ops.consumer_is_live(s),
                "in_flight": progress.as_ref().map(|p| p.in_flight),
                "last_finish_at": progress.as_ref().and_then(|p| p.last_finish_at),
                "waiting_ms": progress.as_ref().and_then(|p| p.waiting_ms),
                "stuck": stuck,
            })
        })
        .collect();
    let all_live = ops.statuses.iter().all(|s| ops.consumer_is_live(s));
    let ok = postgres && all_live && all_working;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if ok { "ok" } else { "unhealthy" },
        "postgres": if postgres { "ok" } else { "down" },
        "consumers": consumers,
    });
    (status, Json(body))
}

async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    for s in &ops.statuses {
        // Never polled reads as "as old as the process may be": a large value
        // an alert fires on, not a missing series.
        let age = s.last_poll_age_ms().map(|ms| ms as f64 / 1000.0).unwrap_or(f64::INFINITY);
        metrics::gauge!("kobatela_consumer_last_poll_seconds", "kind" => s.kind.as_str()).set(age);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], ops.metrics.render())
}
