//! Admin grants: admin power requested over HTTP (`POST /api-keys` with
//! role `admin` answers 202) waits here for a second, independent admin.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use shared::db;
use shared::domain::access::grants::{self, Approval};
use shared::ids::AdminGrantId;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, IdPath, JsonFields, QueryMap};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin-grants", get(list))
        .route("/admin-grants/{id}", get(read))
        .route("/admin-grants/{id}/approve", post(approve))
        .route("/admin-grants/{id}/reject", post(reject))
}

/// `GET /admin-grants?status=PENDING_APPROVAL` (admin, support), newest first.
async fn list(State(s): State<AppState>, Auth(who): Auth, q: QueryMap) -> ApiResult<impl IntoResponse> {
    let page = q.page()?;
    let mut conn = s.pool.acquire().await?;
    Ok(Json(grants::list(&mut conn, &who, q.get("status"), &page).await?))
}

async fn read(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<AdminGrantId>,
) -> ApiResult<impl IntoResponse> {
    let mut conn = s.pool.acquire().await?;
    Ok(Json(grants::get(&mut conn, &who, id).await?))
}

/// 200 with the approved grant (its `key_id`, never the secret). A grant
/// found past its time is marked EXPIRED (that stays) and refused.
#[tracing::instrument(skip_all)]
async fn approve(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<AdminGrantId>,
) -> ApiResult<impl IntoResponse> {
    let approval = db::serializable(&s.pool, &(who, id), |tx, (who, id)| {
        Box::pin(grants::approve(tx, who, *id, chrono::Utc::now()))
    })
    .await?;
    match approval {
        Approval::Approved(grant) => Ok(Json(grant)),
        Approval::Refused(problem) => Err(ApiError::from(problem)),
    }
}

/// 200 with the rejected grant (any admin; the requester may withdraw theirs).
#[tracing::instrument(skip_all)]
async fn reject(
    State(s): State<AppState>,
    Auth(who): Auth,
    IdPath(id): IdPath<AdminGrantId>,
    JsonFields(mut f): JsonFields,
) -> ApiResult<impl IntoResponse> {
    let note = f.opt_text("note", 500);
    f.finish()?;
    let args = (who, id, note);
    let out = db::serializable(&s.pool, &args, |tx, (who, id, note)| {
        Box::pin(grants::reject(tx, who, *id, note.as_deref(), chrono::Utc::now()))
    })
    .await?;
    Ok(Json(out))
}
