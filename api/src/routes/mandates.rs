//! Usage mandates: create, read, list, revoke, and the expiry job.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::ErrorCode;
use shared::db;
use shared::domain::spend::mandates::{self, MandateFilter, NewMandate};
use shared::ids::{CategoryId, MandateId, MerchantId, UserId};
use shared::jobs::JobKind;
use shared::principal::Role;

use crate::error::{ApiError, ApiResult};
use crate::extract::fields::got;
use crate::extract::{AdminOnly, Auth, IdPath, JobRequest, JsonFields, QueryMap};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/mandates", post(create).get(list))
        .route("/mandates/cleanup", post(cleanup))
        .route("/mandates/{id}", get(read))
        .route("/mandates/{id}/revoke", post(revoke))
}

#[tracing::instrument(skip_all)]
async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    who.require(&[Role::Admin, Role::Sender])?;
    let sender_id = f.req::<UserId>("sender_id");
    let beneficiary_id = f.req::<UserId>("beneficiary_id");
    let total = f.money("total_amount", "currency", &s.config.currencies);
    let allowed_merchant_id = f.opt::<MerchantId>("allowed_merchant_id");
    let allowed_category_id = f.opt::<CategoryId>("allowed_category_id");
    let expires_at = f.req::<chrono::DateTime<chrono::Utc>>("expires_at");
    f.finish()?;
    let new = NewMandate {
        sender_id: got(sender_id)?,
        beneficiary_id: got(beneficiary_id)?,
        total: got(total)?,
        allowed_merchant_id,
        allowed_category_id,
        expires_at: got(expires_at)?,
    };
    let m = db::serializable(&s.pool, &(who, new), |tx, (who, new)| Box::pin(mandates::create(tx, who, new))).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<MandateId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(mandates::get_for(&mut conn, id, &who).await?))
}

async fn list(State(s): State<AppState>, Auth(who): Auth, q: QueryMap) -> ApiResult<impl IntoResponse> {
    let page = q.page()?;
    let status = q.get("status").map(str::to_string);
    if status.as_deref().is_some_and(|st| !["ACTIVE", "CONSUMED", "EXPIRED", "REVOKED"].contains(&st)) {
        return Err(ApiError::field(
            ErrorCode::ValidationError,
            "status",
            "must be ACTIVE, CONSUMED, EXPIRED or REVOKED",
        ));
    }
    let filter = MandateFilter { sender_id: q.id("sender_id")?, beneficiary_id: q.id("beneficiary_id")?, status };
    let mut conn = s.pool.acquire().await?;
    Ok(Json(mandates::list_for(&mut conn, &who, &filter, &page).await?))
}

async fn revoke(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<MandateId>,
) -> ApiResult<impl IntoResponse> {
    let m = db::serializable(&s.pool, &(who, id), |tx, (who, id)| Box::pin(mandates::revoke(tx, who, *id))).await?;
    Ok(Json(m))
}

async fn cleanup(State(s): State<AppState>, r: JobRequest<AdminOnly<()>>) -> ApiResult<Response> {
    r.job.submit(&s, JobKind::MandateExpiry, &serde_json::json!({"requested": true})).await
}
