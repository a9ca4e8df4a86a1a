//! `POST /psp/webhook`: verify the HMAC over `timestamp.raw_body` with any
//! configured secret, store the raw event and enqueue its job in one short
//! transaction, answer 200 at once. Nothing is stored for a refused call.
//! A bad signature or timestamp is a failed authentication: it spends the
//! client address's budget (`crate::limits`), and an address over it is
//! refused before the signature is even checked; a valid one spends
//! nothing. A signed body that names one key twice is refused too: the
//! worker and the PSP could read different values.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use shared::ErrorCode;
use shared::domain::psp::webhooks;
use shared::psp::signature;

use crate::error::{ApiError, ApiResult};
use crate::extract::ClientAddr;
use crate::extract::fields::{JsonError, parse_unique};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/psp/webhook", post(receive))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[tracing::instrument(skip_all)]
async fn receive(
    State(s): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let started = std::time::Instant::now();
    let attempt = s.limits.admit(addr, None).await?;
    let now = chrono::Utc::now().timestamp();
    let verified = signature::verify(
        &s.config.psp_webhook_secrets,
        header(&headers, signature::SIGNATURE_HEADER),
        header(&headers, signature::TIMESTAMP_HEADER),
        &body,
        now,
    );
    if let Err(code) = verified {
        attempt.failed("webhook").await;
        return Err(ApiError::problem(code, code.title()));
    }
    attempt.passed().await;
    if let Err(JsonError::Duplicate(key)) = parse_unique(&body) {
        return Err(ApiError::problem(
            ErrorCode::WebhookPayloadInvalid,
            format!("the key `{key}` is named twice in the event; each key may appear once"),
        ));
    }
    // The id comes from the signed body; a header that differs is refused,
    // and so is one that is not even text (it cannot equal the id).
    let header_id = match headers.get(signature::EVENT_ID_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().map(str::trim).map_err(|_| {
            ApiError::problem(ErrorCode::WebhookPayloadInvalid, "the X-PSP-Event-Id header is not text")
        })?),
    };
    let envelope = webhooks::envelope(&body, header_id)?;
    // Valid JSON is valid UTF-8 without raw U+0000: the text column holds it.
    let raw = String::from_utf8_lossy(&body).into_owned();
    // One statement, so one short step: the event and its job commit together.
    let received = shared::intake::webhook(&s.pool, &envelope, &raw).await?;
    if let Some((job_id, kind)) = received.job {
        crate::submit::push_soon(&s, kind, job_id);
    }
    metrics::histogram!("kobatela_webhook_ack_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(received))
}
