//! The Kobatela HTTP API: thin handlers over `shared`. It authenticates,
//! validates, writes job rows and pushes them; it never runs a money rule.

pub mod batcher;
pub mod breaker;
pub mod error;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod ops_listener;
pub mod pusher;
pub mod routes;
pub mod state;
pub mod submit;
pub mod waiter;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use shared::{ErrorCode, Problem};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::problem_response;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let config = &state.config;
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(config.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok())))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderName::from_static("idempotency-key"),
            axum::http::HeaderName::from_static("prefer"),
            axum::http::HeaderName::from_static("x-api-key"),
        ]);
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request| {
            let request_id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %request_id, key_id = tracing::field::Empty)
        })
        .on_request(())
        .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
            let (status, latency_ms) = (res.status().as_u16(), latency.as_secs_f64() * 1000.0);
            // A refused flood must not become a flood of log lines (issue
            // #15: 97,282 of them in ten seconds): 429s are counted
            // (`kobatela_http_requests_total`, `kobatela_auth_throttled_total`)
            // and logged at debug; the throttle logs once when it starts.
            if status == 429 {
                tracing::debug!(status, latency_ms, "request done");
            } else {
                tracing::info!(status, latency_ms, "request done");
            }
        });
    // Routes that need no key and no database: never throttled, never
    // refused by the breaker.
    let public = Router::new()
        .merge(routes::health::router())
        .merge(routes::docs::router())
        .merge(routes::assets::router())
        .merge(routes::ops::console());
    // Every other route authenticates (a key, or the PSP's signature) and
    // needs Postgres: 503 at once while it is unreachable, and its answers,
    // which may hold keys or personal data, are never stored by a cache.
    let data = Router::new()
        .merge(routes::users::router())
        .merge(routes::api_keys::router())
        .merge(routes::admin_grants::router())
        .merge(routes::catalogue::router())
        .merge(routes::mandates::router())
        .merge(routes::purchases::router())
        .merge(routes::saka::router())
        .merge(routes::escrows::router())
        .merge(routes::payees::router())
        .merge(routes::proofs::router(config.proof_max_bytes))
        .merge(routes::payments::router())
        .merge(routes::webhooks::router())
        .merge(routes::transfers::router())
        .merge(routes::jobs::router())
        .merge(routes::audit::router())
        .merge(routes::ops::router())
        .route_layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), breaker::guard));
    public
        .merge(data)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(axum::Extension(extract::fields::BodyLimit(config.body_limit_bytes)))
        .layer(middleware::from_fn(record_metrics))
        .layer(cors)
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(40)))
        .layer(CatchPanicLayer::custom(|_| problem_response(&Problem::new(ErrorCode::Internal, "internal error"))))
        .layer(middleware::from_fn(problems_only))
        .layer(trace)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // On every answer, errors and timeouts included.
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    problem_response(&Problem::new(ErrorCode::NotFound, "no such route"))
}

async fn method_not_allowed() -> impl IntoResponse {
    problem_response(&Problem::new(ErrorCode::MethodNotAllowed, "method not allowed on this route"))
}

/// A safety net: an error answer that some layer wrote without our problem
/// body (a timeout, a framework rejection) is rewritten as one, so every
/// error a client sees is `application/problem+json` with a code.
async fn problems_only(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_problem = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::RequestTimeout,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        429 => ErrorCode::RateLimited,
        400..=499 => ErrorCode::ValidationError,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    tracing::warn!(status = status.as_u16(), "an error answer without a problem body was rewritten");
    let mut out = problem_response(&Problem::new(code, status.canonical_reason().unwrap_or("error")));
    if code == ErrorCode::ValidationError || code == ErrorCode::Internal {
        // Keep the original status: the code says what kind it is.
        *out.status_mut() = status;
    }
    // A 429 or 503 keeps the Retry-After its layer gave.
    if let Some(retry) = res.headers().get(header::RETRY_AFTER) {
        out.headers_mut().insert(header::RETRY_AFTER, retry.clone());
    }
    out
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("kobatela_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("kobatela_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}
