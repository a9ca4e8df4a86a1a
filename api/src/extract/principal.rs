//! `Auth`: the principal behind `Authorization: Bearer <key>` (or
//! `X-API-Key`), rate limited per key, with the key id recorded on the
//! request's span so every log line of the request carries it.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use shared::ErrorCode;
use shared::domain::access::keys as api_keys;
use shared::principal::Principal;

use crate::error::ApiError;
use crate::state::AppState;

pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let header_key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        let Some(secret) = bearer.or(header_key).filter(|s| !s.is_empty()) else {
            return Err(ApiError::problem(ErrorCode::AuthRequired, "send an API key as Authorization: Bearer <key>"));
        };
        if secret.len() > 256 {
            return Err(ApiError::problem(ErrorCode::AuthInvalid, "the API key is unknown, expired or revoked"));
        }
        let principal = api_keys::authenticate(&state.pool, secret).await?;
        tracing::Span::current().record("key_id", tracing::field::display(principal.key_id));
        if let Err(not_until) = state.limiter.check_key(&principal.key_id) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::RateLimited { retry_after_secs: wait.as_secs_f64().ceil() as u64 });
        }
        Ok(Auth(principal))
    }
}
