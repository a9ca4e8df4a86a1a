//! `/health` (the process is up), `/ready` (Postgres and Redis answer),
//! `/metrics` (Prometheus text).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shared::jobs::{JobKind, stats};

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
        tokio::time::timeout(limit, shared::db::ping(&s.pool)),
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

/// Jobs the latency and outcome gauges look at: the most recent ones, read
/// backwards by id (no scan of the whole table per scrape).
const RECENT_JOBS: i64 = 2000;

/// Gauges read at scrape time, each by an index: queue depth per kind,
/// queued, running and dead jobs per kind (0 when none), and the outcomes
/// and latency of the most recent jobs; counters and histograms come from
/// the request path.
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    for kind in JobKind::ALL {
        if let Ok(stats) = s.queue.stats(*kind).await {
            metrics::gauge!("kobatela_queue_depth", "kind" => kind.as_str()).set(stats.length as f64);
        }
    }
    if let Ok(rows) = stats::open_and_dead(&s.pool).await {
        for kind in JobKind::ALL {
            for status in ["queued", "running", "dead"] {
                let n = rows.iter().find(|(k, st, _)| k == kind.as_str() && st == status).map_or(0, |r| r.2);
                metrics::gauge!("kobatela_jobs", "kind" => kind.as_str(), "status" => status).set(n as f64);
            }
        }
    }
    if let Ok(rows) = stats::recent(&s.pool, RECENT_JOBS).await {
        for (kind, status, n, p50, p99) in rows {
            metrics::gauge!("kobatela_jobs_recent", "kind" => kind.clone(), "status" => status.clone()).set(n as f64);
            if status == "succeeded" {
                let (p50, p99) = (p50.unwrap_or(0.0), p99.unwrap_or(0.0));
                metrics::gauge!("kobatela_job_latency_seconds", "kind" => kind.clone(), "quantile" => "0.5").set(p50);
                metrics::gauge!("kobatela_job_latency_seconds", "kind" => kind, "quantile" => "0.99").set(p99);
            }
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}
