//! Payments: read one; re-drive a PENDING or ERROR one (admin).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::db;
use shared::domain::escrow::payouts::{self, PayoutV1};
use shared::ids::PaymentId;
use shared::jobs::JobKind;
use shared::principal::Role;

use crate::error::ApiResult;
use crate::extract::{Auth, IdPath, IdempotencyKey, PreferWait};
use crate::state::AppState;
use crate::submit::submit;

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

/// Needs an `Idempotency-Key` like every job request. Two re-drives under
/// two keys are safe: the payout job drives a payment only from PENDING or
/// ERROR, and the PSP is called with the payment's own idempotency key.
async fn execute(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<PaymentId>,
    IdempotencyKey(key): IdempotencyKey,
    PreferWait(wait): PreferWait,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin])?;
    let p = db::serializable(&s.pool, &id, |tx, id| Box::pin(payouts::redrive(tx, *id))).await?;
    submit(&s, &who, JobKind::Payout, &PayoutV1 { payment_id: p.id }, Some(key), wait).await
}
