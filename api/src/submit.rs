//! Submitting a job: write the row (the receipt), push the id to Redis,
//! answer `202` with the receipt, or `200` with the final receipt when the
//! client asked to wait and the job ended in time.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::jobs::{JobKind, NewJob, record};
use shared::principal::Principal;

use crate::error::ApiResult;
use crate::state::AppState;

pub async fn submit(
    state: &AppState,
    who: &Principal,
    kind: JobKind,
    payload: &impl Serialize,
    idempotency_key: Option<String>,
    wait: Option<Duration>,
) -> ApiResult<Response> {
    let new = NewJob::new(kind, payload, who, idempotency_key)?;
    let kind = new.kind;
    let (row, created) = state.batcher.insert(new).await?;
    if created {
        metrics::counter!("kobatela_jobs_enqueued_total", "kind" => kind.as_str()).increment(1);
        // With the row's address, so the worker's transaction finds it by a TID scan.
        state.pusher.push(row.job_ref().unwrap_or_else(|| (kind, row.id).into()));
    }
    let row = match wait {
        Some(max) if !row.is_terminal() => state.waiter.wait(&state.pool, row.id, who, max).await?,
        _ => row,
    };
    Ok(receipt_response(&row, serde_json::Map::new()))
}

/// Pushes a committed job to Redis without holding the answer (see
/// [`crate::pusher`]).
pub fn push_soon(state: &AppState, kind: shared::jobs::JobKind, id: shared::ids::JobId) {
    state.pusher.push((kind, id).into());
}

pub fn receipt_response(row: &record::JobRow, extra: serde_json::Map<String, serde_json::Value>) -> Response {
    let status = if row.is_terminal() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let mut body = match serde_json::to_value(row.receipt()) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    body.extend(extra);
    let mut res = (status, Json(serde_json::Value::Object(body))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{}", row.id)) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}
