//! `Auth`: the principal behind `Authorization: Bearer <key>` (or
//! `X-API-Key`), with the key id recorded on the request's span so every
//! log line of the request carries it.
//!
//! In order, before any lookup (`crate::limits`, one step shared by every
//! replica): the client address over its budget of failed authentications
//! is refused (429), then the presented key over its budget of requests
//! (`RATE_LIMIT_PER_KEY`, 429); else the attempt is admitted. A missing or
//! overlong key, a key that failed a few seconds ago (the negative cache,
//! no lookup) or a key the database does not accept is a failed
//! authentication that spends the address's budget; a valid key spends
//! nothing there.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use shared::ErrorCode;
use shared::domain::access::keys as api_keys;
use shared::principal::Principal;

use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::state::AppState;

pub struct Auth(pub Principal);

fn invalid() -> ApiError {
    ApiError::problem(ErrorCode::AuthInvalid, "the API key is unknown, expired or revoked")
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let ClientAddr(addr) = ClientAddr::from_request_parts(parts, state).await?;
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let header_key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        let Some(secret) = bearer.or(header_key).filter(|s| !s.is_empty()) else {
            let attempt = state.limits.admit(addr, None).await?;
            attempt.failed("key").await;
            return Err(ApiError::problem(ErrorCode::AuthRequired, "send an API key as Authorization: Bearer <key>"));
        };
        if secret.len() > 256 {
            let attempt = state.limits.admit(addr, None).await?;
            attempt.failed("key").await;
            return Err(invalid());
        }
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // The address's budget and the key's, in one step before the lookup.
        let attempt = state.limits.admit(addr, Some(&hash)).await?;
        if state.limits.bad_keys.contains(&hash) {
            attempt.failed("key").await;
            return Err(invalid());
        }
        let principal = match api_keys::authenticate(&state.pool, secret).await {
            Ok(principal) => principal,
            Err(shared::Error::Problem(p)) if p.code == ErrorCode::AuthInvalid => {
                // A grant's key works once a second admin approves it: not
                // remembered as bad (a miss costs this one more query).
                if !api_keys::is_pending_grant(&state.pool, secret).await.unwrap_or(true) {
                    state.limits.bad_keys.insert(hash);
                }
                attempt.failed("key").await;
                return Err(p.into());
            }
            // Postgres away is not the client's failure: nothing is spent.
            Err(other) => {
                attempt.passed().await;
                return Err(other.into());
            }
        };
        attempt.passed().await;
        tracing::Span::current().record("key_id", tracing::field::display(principal.key_id));
        Ok(Auth(principal))
    }
}
