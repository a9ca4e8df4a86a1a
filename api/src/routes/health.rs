//! `/health` (the process is up), `/ready` (Postgres and Redis answer).
//! `/metrics` is on the ops listener (`METRICS_ADDR`), not here: see
//! `crate::ops_listener`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready))
}

async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Both checks run at once, each bounded, so the answer comes within a
/// second even when a peer hangs or is gone. The Postgres check is the one
/// the breaker's probe runs (`crate::breaker`).
/// A 503 is a problem body (like every error we answer) that carries the
/// two fields too.
async fn ready(State(s): State<AppState>) -> axum::response::Response {
    let (pg, redis) = tokio::join!(
        crate::breaker::postgres_answers(&s.pool),
        tokio::time::timeout(crate::breaker::PROBE_TIMEOUT, s.queue.ping()),
    );
    let redis = redis.is_ok_and(|r| r.is_ok());
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
    crate::error::problem_body(StatusCode::SERVICE_UNAVAILABLE, body)
}
