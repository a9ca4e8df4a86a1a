//! The one place errors become HTTP: `application/problem+json` with our
//! `code`. A 5xx says `INTERNAL` and the request id; the cause goes to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shared::{Error, ErrorCode, FieldError, Problem};

#[derive(Debug)]
pub enum ApiError {
    Shared(Error),
    /// `429 RATE_LIMITED` with `Retry-After`: a key over its rate, or an
    /// address over its budget of failed authentications.
    RateLimited {
        retry_after_secs: u64,
        detail: &'static str,
    },
}

/// Put on a response whose request found Postgres unreachable: the
/// breaker (`crate::breaker`) opens at once instead of waiting for its probe.
#[derive(Debug, Clone, Copy)]
pub struct PostgresUnavailable;

/// How long a client should wait before retrying a `503`: about what the
/// breaker's probe needs to see Postgres back.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

pub type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::Shared(e)
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::Shared(Error::Problem(p))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Shared(Error::Db(e))
    }
}

impl ApiError {
    pub fn problem(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError::Shared(Error::problem(code, detail))
    }

    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> Self {
        Problem::fields(code, vec![FieldError::new(field, message)]).into()
    }
}

/// Renders a problem body with its status. Every problem is `no-store`
/// (it may name a key's prefix, a user, an amount), and every `503` says
/// when to retry.
pub fn problem_response(p: &Problem) -> Response {
    let status = StatusCode::from_u16(p.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    problem_body(status, p.to_json())
}

/// A problem body (already JSON, perhaps with fields of its own) as a
/// response of `status`, with the headers every problem carries.
pub fn problem_body(status: StatusCode, body: serde_json::Value) -> Response {
    let mut res = (status, body.to_string()).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS));
    }
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Shared(Error::Problem(p)) => problem_response(&p),
            ApiError::RateLimited { retry_after_secs, detail } => {
                let mut res = problem_response(&Problem::new(ErrorCode::RateLimited, detail));
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
                res
            }
            ApiError::Shared(other) => {
                // The request id is on the span; the cause chain goes to the log only.
                tracing::error!(error = %other, "request failed");
                let code = if other.is_unavailable() { ErrorCode::Unavailable } else { ErrorCode::Internal };
                let detail = if code == ErrorCode::Unavailable {
                    "a backing service is unavailable; retry later"
                } else {
                    "internal error; see the request id in X-Request-Id"
                };
                let mut res = problem_response(&Problem::new(code, detail));
                if matches!(other, Error::Db(_)) && code == ErrorCode::Unavailable {
                    res.extensions_mut().insert(PostgresUnavailable);
                }
                res
            }
        }
    }
}
