//! Payments: read one; re-drive a PENDING or ERROR one (admin).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::db;
use shared::domain::escrow::payouts::{self, PayoutV1};
use shared::ids::PaymentId;
use shared::jobs::JobKind;

use crate::error::ApiResult;
use crate::extract::{AdminOnly, Auth, IdPath, JobRequest};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/payments/{id}", get(read)).route("/payments/execute/{id}", post(execute))
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<PaymentId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(payouts::get_for(&mut conn, id, &who).await?))
}

/// Needs an `Idempotency-Key` like every job request; a replay under the
/// same key answers the first receipt. Two re-drives under
/// two keys are safe: the payout job drives a payment only from PENDING or
/// ERROR, and the PSP is called with the payment's own idempotency key.
async fn execute(State(s): State<AppState>, r: JobRequest<AdminOnly<()>, IdPath<PaymentId>>) -> ApiResult<Response> {
    let IdPath(id) = r.path;
    // A replay answers its first receipt, even once the payment has moved
    // on from the ERROR the first request found.
    let earlier = r.job.previous(&s).await?;
    let replayed = earlier
        .filter(|row| row.kind == JobKind::Payout.as_str())
        .and_then(|row| serde_json::from_value::<PayoutV1>(row.payload).ok())
        .filter(|p| p.payment_id == id);
    let payload = match replayed {
        Some(first) => first,
        None => PayoutV1::of(&db::serializable(&s.pool, &id, |tx, id| Box::pin(payouts::redrive(tx, *id))).await?),
    };
    r.job.submit(&s, JobKind::Payout, &payload).await
}
