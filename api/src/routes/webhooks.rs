//! `POST /psp/webhook`: verify the HMAC over `timestamp.raw_body` with any
//! configured secret, store the raw event and enqueue its job in one short
//! transaction, answer 200 at once. Nothing is stored for a refused call.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use shared::ErrorCode;
use shared::domain::webhooks;
use shared::psp::signature;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/psp/webhook", post(receive))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[tracing::instrument(skip_all)]
async fn receive(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<impl IntoResponse> {
    let started = std::time::Instant::now();
    let now = chrono::Utc::now().timestamp();
    signature::verify(
        &s.config.psp_webhook_secrets,
        header(&headers, signature::SIGNATURE_HEADER),
        header(&headers, signature::TIMESTAMP_HEADER),
        &body,
        now,
    )
    .map_err(|code| ApiError::problem(code, code.title()))?;
    let invalid = |why: &str| ApiError::problem(ErrorCode::WebhookPayloadInvalid, why.to_string());
    let payload: serde_json::Value = serde_json::from_slice(&body).map_err(|_| invalid("the body is not JSON"))?;
    if !payload.is_object() {
        return Err(invalid("the body is not a JSON object"));
    }
    let event_id = header(&headers, signature::EVENT_ID_HEADER)
        .map(str::to_string)
        .or_else(|| payload.get("id").and_then(|v| v.as_str()).map(str::to_string))
        .filter(|id| !id.is_empty() && id.len() <= 255)
        .ok_or_else(|| invalid("no event id (X-PSP-Event-Id header or body id)"))?;
    let event_type = payload.get("type").and_then(|v| v.as_str()).unwrap_or("unknown").to_string();
    let raw = String::from_utf8_lossy(&body).into_owned();
    // One statement, so one short step: the event and its job commit together.
    let received = webhooks::receive(&s.pool, &event_id, &event_type, &payload, &raw).await?;
    if let Some((job_id, kind)) = received.job {
        crate::submit::push_soon(&s, kind, job_id);
    }
    metrics::histogram!("kobatela_webhook_ack_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(received))
}
