//! `Idempotency-Key`: required on job endpoints, at most 255 characters of
//! visible ASCII. A key holding a control character (a tab: hyper refuses
//! the others before we see the request) or a byte beyond ASCII cannot be
//! read back the same by every client and log: refused with a problem.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use shared::ErrorCode;

use crate::error::ApiError;

pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get("idempotency-key") else {
            return Err(ApiError::problem(
                ErrorCode::IdempotencyKeyRequired,
                "send an Idempotency-Key header (at most 255 characters)",
            ));
        };
        let Some(key) = raw.to_str().ok().map(str::trim).filter(|k| !k.chars().any(|c| c.is_ascii_control())) else {
            return Err(ApiError::problem(
                ErrorCode::IdempotencyKeyRequired,
                "the Idempotency-Key header cannot be read: it holds a control character or a byte that is not visible ASCII",
            ));
        };
        if key.is_empty() {
            return Err(ApiError::problem(ErrorCode::IdempotencyKeyRequired, "the Idempotency-Key header is empty"));
        }
        if key.len() > 255 {
            return Err(ApiError::field(
                ErrorCode::ValidationError,
                "Idempotency-Key",
                "must be at most 255 characters",
            ));
        }
        Ok(IdempotencyKey(key.to_string()))
    }
}
