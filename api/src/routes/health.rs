//! `/health` (the process is up), `/ready` (Postgres and Redis answer),
//! `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shared::jobs::JobKind;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics))
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Both checks run at once, each bounded, so the answer comes within a
/// second even when a peer hangs or is gone.
/// A 503 is a problem body (like every error we answer) that carries the
/// two fields too.
async fn ready(State(s): State<AppState>) -> axum::response::Response {
    let limit = std::time::Duration::from_millis(800);
    let (pg, redis) = tokio::join!(
        tokio::time::timeout(limit, sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&s.pool)),
        tokio::time::timeout(limit, s.queue.ping()),
    );
    let (pg, redis) = (pg.is_ok_and(|r| r.is_ok()), redis.is_ok_and(|r| r.is_ok()));
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let checks = json!({"postgres": word(pg), "redis": word(redis)});
    if pg && redis {
        return (StatusCode::OK, Json(checks)).into_response();
    }
    let down: Vec<&str> = [("postgres", pg), ("redis", redis)].iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    let problem =
        shared::Problem::new(shared::ErrorCode::Unavailable, format!("not ready: {} down", down.join(" and ")));
    let mut body = problem.to_json();
    if let (Some(map), Some(extra)) = (body.as_object_mut(), checks.as_object()) {
        map.extend(extra.clone());
    }
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, body.to_string()).into_response();
    res.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/problem+json"));
    res
}

/// Gauges read at scrape time: queue depth per kind and jobs per kind and
/// status (dead jobs included); counters and histograms come from the
/// request path.
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    for kind in JobKind::ALL {
        if let Ok(stats) = s.queue.stats(*kind).await {
            metrics::gauge!("kobatela_queue_depth", "kind" => kind.as_str()).set(stats.length as f64);
        }
    }
    let counts: Result<Vec<(String, String, i64)>, _> =
        sqlx::query_as("SELECT kind, status, count(*) FROM jobs GROUP BY kind, status").fetch_all(&s.pool).await;
    if let Ok(rows) = counts {
        for (kind, status, n) in rows {
            metrics::gauge!("kobatela_jobs", "kind" => kind, "status" => status).set(n as f64);
        }
    }
    // Job latency (created to finished) over the last five minutes, per kind:
    // the workers' own histograms live in their processes
    // (`WORKER_METRICS_ADDR`), this view needs no scrape of them.
    let latency: Result<Vec<(String, f64, f64, i64)>, _> = sqlx::query_as(
        "SELECT kind,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))::float8,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))::float8,
                count(*)
           FROM jobs WHERE finished_at > now() - interval '5 minutes' GROUP BY kind",
    )
    .fetch_all(&s.pool)
    .await;
    if let Ok(rows) = latency {
        for (kind, p50, p99, n) in rows {
            metrics::gauge!("kobatela_job_latency_seconds", "kind" => kind.clone(), "quantile" => "0.5").set(p50);
            metrics::gauge!("kobatela_job_latency_seconds", "kind" => kind.clone(), "quantile" => "0.99").set(p99);
            metrics::gauge!("kobatela_jobs_finished_5m", "kind" => kind).set(n as f64);
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
