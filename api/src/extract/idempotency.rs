//! `Idempotency-Key`: required on job endpoints, at most 255 characters.

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
        let key = raw.to_str().map(str::trim).unwrap_or("");
        if key.is_empty() {
            return Err(ApiError::problem(
                ErrorCode::IdempotencyKeyRequired,
                "the Idempotency-Key header is empty or not visible ASCII",
            ));
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
